"""The command line end to end against a real ``replicad serve`` (docs/architecture.md §9).

Each test drives the node only through ``replicad`` subprocesses (and, for
the hostile-input checks of I9, a raw socket), the way an operator would.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import stat
import struct
from pathlib import Path

import msgpack

from replicad.admin.framing import FrameDecoder, decode_document
from tests.conftest import NodeProcess, free_port, run_cli

MESSAGE = (
    b"From: a@example.org\r\nTo: alice@example.net\r\nSubject: caf\xc3\xa9\r\n\r\n"
    b"line one\r\nbinary \x00\x01\xff and a lone LF\nend\r\n"
)


def save(node: NodeProcess, body: bytes, *extra: str, user: str = "alice") -> int:
    result = node.cli("save", "-u", user, *extra, input=body)
    assert result.returncode == 0, result.stderr.decode()
    return int(result.stdout)


def fetch_json(node: NodeProcess, fields: str, *query: str, user: str = "alice") -> list[dict]:
    result = node.cli("-f", "json", "fetch", "-u", user, fields, *query)
    assert result.returncode == 0, result.stderr.decode()
    rows: list[dict] = json.loads(result.stdout)
    return rows


def test_init_writes_config_and_refuses_to_overwrite(node_factory: type[NodeProcess]) -> None:
    n = node_factory()
    text = n.config.read_text()
    assert 'name = "n1"' in text and 'data_dir = "data"' in text
    # An empty passwd-file for `replicad user`, private to the node's user.
    assert "[auth]\n" in text and 'passwd_file = "users"' in text
    users = n.dir / "users"
    assert users.read_bytes() == b""
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    again = run_cli("init", n.dir, "--name", "n1")
    assert again.returncode == 65
    assert b"already exists" in again.stderr
    assert n.config.read_text() == text


def test_save_and_fetch_text_is_byte_identical(node: NodeProcess) -> None:
    uid = save(node, MESSAGE)
    assert uid == 1
    result = node.cli("fetch", "-u", "alice", "text", "mailbox", "INBOX", "uid", str(uid))
    assert result.returncode == 0, result.stderr
    assert result.stdout == MESSAGE


def test_save_json_prints_uid_and_guid(node: NodeProcess) -> None:
    result = node.cli(
        "-f", "json", "save", "-u", "alice", "--flags", "\\Seen $Label1", input=MESSAGE
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["uid"] == 1
    assert len(doc["guid"]) == 32 and doc["guid"] == doc["guid"].lower()
    [row] = fetch_json(node, "uid guid flags modseq size date", "mailbox", "INBOX", "all")
    assert row["guid"] == doc["guid"]
    assert row["flags"] == ["\\Seen", "$Label1"]
    assert row["size"] == len(MESSAGE)
    assert isinstance(row["modseq"], int) and row["modseq"] > 0
    assert row["date"].endswith("Z")


def test_formatters_table_tab_json(node: NodeProcess) -> None:
    save(node, MESSAGE, "--flags", "\\Seen \\Flagged")
    save(node, b"Subject: two\r\n\r\nbody\r\n")
    query = ("mailbox", "INBOX", "uid", "1:*")

    tab = node.cli("-f", "tab", "fetch", "-u", "alice", "uid flags size", *query)
    assert tab.returncode == 0, tab.stderr
    lines = tab.stdout.decode().splitlines()
    assert lines[0] == "uid\tflags\tsize"
    assert lines[1] == f"1\t\\Flagged \\Seen\t{len(MESSAGE)}"
    assert lines[2].startswith("2\t\t")

    table = node.cli("fetch", "-u", "alice", "uid flags", *query)
    assert table.returncode == 0, table.stderr
    header, first, second = table.stdout.decode().splitlines()
    assert header.split() == ["uid", "flags"]
    # Aligned: the flags column starts at the same offset on every line.
    assert header.index("flags") == first.index("\\Flagged")
    assert second.rstrip() == "2"

    rows = fetch_json(node, "uid flags", *query)
    assert rows == [{"uid": 1, "flags": ["\\Flagged", "\\Seen"]}, {"uid": 2, "flags": []}]


def test_flags_add_remove_replace(node: NodeProcess) -> None:
    for _ in range(3):
        save(node, MESSAGE)
    sel = ("mailbox", "INBOX", "uid", "1:2")
    assert node.cli("flags", "add", "-u", "alice", "\\Seen \\Flagged", *sel).returncode == 0
    assert node.cli("flags", "remove", "-u", "alice", "\\Flagged", *sel).returncode == 0
    r = node.cli("flags", "replace", "-u", "alice", "\\Answered kw", "mailbox", "INBOX", "uid", "3")
    assert r.returncode == 0, r.stderr
    rows = fetch_json(node, "uid flags", "mailbox", "INBOX")
    assert [r["flags"] for r in rows] == [["\\Seen"], ["\\Seen"], ["\\Answered", "kw"]]
    modseqs = [r["modseq"] for r in fetch_json(node, "modseq", "mailbox", "INBOX")]
    assert modseqs[2] > modseqs[0]
    bad = node.cli("flags", "add", "-u", "alice", "\\Bogus", *sel)
    assert bad.returncode == 65
    assert b"Bogus" in bad.stderr


def test_expunge_and_copy(node: NodeProcess) -> None:
    bodies = [MESSAGE + str(i).encode() for i in range(4)]
    for body in bodies:
        save(node, body)
    assert node.cli("mailbox", "create", "-u", "alice", "Archive").returncode == 0

    copied = node.cli(
        "-f", "json", "copy", "-u", "alice", "Archive", "mailbox", "INBOX", "uid", "2:3"
    )
    assert copied.returncode == 0, copied.stderr
    assert json.loads(copied.stdout) == [{"uid": 2, "dest_uid": 1}, {"uid": 3, "dest_uid": 2}]

    expunged = node.cli("expunge", "-u", "alice", "mailbox", "INBOX", "uid", "1,3")
    assert expunged.returncode == 0, expunged.stderr
    assert [r["uid"] for r in fetch_json(node, "uid", "mailbox", "INBOX")] == [2, 4]

    text = node.cli("fetch", "-u", "alice", "text", "mailbox", "Archive", "uid", "2")
    assert text.stdout == bodies[2]
    # An expunged UID is gone: fetching its text is "no such message".
    gone = node.cli("fetch", "-u", "alice", "text", "mailbox", "INBOX", "uid", "1")
    assert gone.returncode == 68
    # Expunge without a selection is refused rather than expunging everything.
    assert node.cli("expunge", "-u", "alice", "mailbox", "INBOX").returncode == 64


def test_mailbox_create_rename_delete_list_status(node: NodeProcess) -> None:
    # Work/2024 alone creates Work too (RFC 3501 §6.3.3).
    assert node.cli("mailbox", "create", "-u", "bob", "INBOX", "Work/2024").returncode == 0
    exists = node.cli("mailbox", "create", "-u", "bob", "Work")
    assert exists.returncode == 65

    rename = node.cli("mailbox", "rename", "-u", "bob", "Work", "Jobs")
    assert rename.returncode == 0, rename.stderr
    listed = node.cli("-f", "json", "mailbox", "list", "-u", "bob")
    assert sorted(r["mailbox"] for r in json.loads(listed.stdout)) == ["INBOX", "Jobs", "Jobs/2024"]

    save(node, MESSAGE, "-m", "Jobs/2024", user="bob")
    status = node.cli("-f", "json", "mailbox", "status", "-u", "bob", "Jobs/2024")
    assert status.returncode == 0, status.stderr
    [row] = json.loads(status.stdout)
    assert row["mailbox"] == "Jobs/2024"
    assert row["messages"] == 1 and row["uidnext"] == 2 and row["vsize"] == len(MESSAGE)
    assert set(row) == {
        "mailbox",
        "messages",
        "uidnext",
        "uidvalidity",
        "highestmodseq",
        "vsize",
        "guid",
    }

    some = node.cli("-f", "tab", "mailbox", "status", "-u", "bob", "messages uidnext", "Jobs/2024")
    assert some.stdout.decode().splitlines() == ["mailbox\tmessages\tuidnext", "Jobs/2024\t1\t2"]

    assert node.cli("mailbox", "delete", "-u", "bob", "Jobs/2024").returncode == 0
    missing = node.cli("mailbox", "status", "-u", "bob", "Jobs/2024")
    assert missing.returncode == 68
    assert b"Jobs/2024" in missing.stderr


def test_mailbox_subscribe_unsubscribe_and_subscriptions(node: NodeProcess) -> None:
    # Any name, existing or not (the IMAP subscription list, resync.md §10).
    added = node.cli("-f", "json", "mailbox", "subscribe", "-u", "dave", "Lists/x", "INBOX")
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout) == [
        {"mailbox": "Lists/x", "subscribed": True},
        {"mailbox": "INBOX", "subscribed": True},
    ]
    listed = node.cli("-f", "tab", "mailbox", "subscriptions", "-u", "dave")
    assert listed.stdout.decode().splitlines() == ["mailbox", "INBOX", "Lists/x"]
    assert node.cli("mailbox", "unsubscribe", "-u", "dave", "Lists/x").returncode == 0
    listed = node.cli("-f", "json", "mailbox", "subscriptions", "-u", "dave")
    assert json.loads(listed.stdout) == [{"mailbox": "INBOX"}]
    assert node.cli("mailbox", "subscribe", "-u", "dave", "a//b").returncode == 65


def test_exit_codes(node: NodeProcess) -> None:
    save(node, MESSAGE)
    cases = {
        64: [
            ("bogus-command",),
            ("save",),
            ("fetch", "-u", "alice", "uid nosuchfield", "mailbox", "INBOX"),
            ("fetch", "-u", "alice", "uid", "uid", "1"),
        ],
        65: [
            ("fetch", "-u", "alice", "uid", "mailbox", "INBOX", "uid", "1:x"),
            ("fetch", "-u", "alice", "uid", "mailbox", "INBOX", "uid", "0"),
        ],
        # EX_NOUSER for a user the store has no mailbox of (sysexits, pipe(8), doveadm).
        67: [
            ("mailbox", "list", "-u", "nobody"),
            ("mailbox", "status", "-u", "nobody", "INBOX"),
            ("fetch", "-u", "nobody", "uid", "mailbox", "INBOX"),
        ],
        # A missing mailbox or message of a user who exists.
        68: [
            ("fetch", "-u", "alice", "uid", "mailbox", "Nope"),
            ("mailbox", "status", "-u", "alice", "Nope"),
            ("fetch", "-u", "alice", "text", "mailbox", "INBOX", "uid", "99"),
        ],
    }
    for code, commands in cases.items():
        for args in commands:
            result = node.cli(*args)
            assert result.returncode == code, (args, result.stderr)
            assert result.stderr.strip(), args  # always a message saying why
    assert save(node, MESSAGE) == 2  # the node is still fine

    assert node.stop() == 0
    down = node.cli("fetch", "-u", "alice", "uid", "mailbox", "INBOX")
    assert down.returncode == 69
    assert str(node.socket).encode() in down.stderr


def test_bad_config_exits_65_naming_the_key(node_factory: type[NodeProcess]) -> None:
    n = node_factory()
    n.config.write_text(n.config.read_text().replace("map_size", "map_sise"))
    result = n.cli("mailbox", "list", "-u", "alice")
    assert result.returncode == 65
    assert b"node.map_sise" in result.stderr and b"did you mean node.map_size" in result.stderr


def test_admin_socket_is_0600_and_sigterm_exits_0(node: NodeProcess) -> None:
    mode = node.socket.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert node.stop(signal.SIGTERM) == 0
    assert not node.socket.exists()
    assert b"event=node.stopped" in node.log().encode()


def test_second_node_on_same_data_dir_is_refused(node: NodeProcess) -> None:
    result = run_cli("serve", "-c", node.config)
    assert result.returncode != 0
    assert b"in use by another replicad node" in result.stderr
    assert save(node, MESSAGE) == 1  # the first node is unaffected, socket included


def test_restart_after_kill_9_removes_stale_socket(node: NodeProcess) -> None:
    save(node, MESSAGE)
    node.kill9()
    assert node.socket.exists()  # left behind by the dead process
    node.start()
    assert save(node, MESSAGE) == 2


def _raw_exchange(path: os.PathLike[str], payload: bytes) -> tuple[object, bytes]:
    """Send raw bytes; return the first response and whatever followed (b"" = closed)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(os.fspath(path))
        s.sendall(payload)
        decoder = FrameDecoder(1 << 20)
        while (body := decoder.next_body()) is None:
            data = s.recv(65536)
            assert data, "connection closed without an error response"
            decoder.feed(data)
        rest = s.recv(65536)
        return decode_document(body), rest


def test_hostile_frames_get_an_error_and_a_closed_connection(node: NodeProcess) -> None:
    """I9: oversized, malformed and ill-shaped requests never take the node down."""
    oversized = struct.pack(">I", 0xFFFFFFF0)
    not_msgpack = struct.pack(">I", 3) + b"\xc1\xc1\xc1"
    not_a_request = struct.pack(">I", 1) + msgpack.packb(7)
    for payload in (oversized, not_msgpack, not_a_request):
        response, rest = _raw_exchange(node.socket, payload)
        assert isinstance(response, dict) and response["ok"] is False
        assert response["error"] == "ProtocolError", response
        assert rest == b""  # the node hung up
    # A well-formed request for an unknown operation: error, connection kept.
    with node.client() as client:
        try:
            client.call("no_such_op")
        except Exception as exc:
            assert "unknown operation" in str(exc)
        else:
            raise AssertionError("unknown op accepted")
        assert client.call("ping")["node"] == "n1"
    assert save(node, MESSAGE) == 1


def test_user_names_are_normalised_as_lmtp_does(node_factory: type[NodeProcess]) -> None:
    """``-u`` goes through ``[auth] username_format`` (%Lu by default), so
    ``Alice@Example.ORG`` and ``alice@example.org`` are one user."""
    node = node_factory()
    node.start()
    assert save(node, MESSAGE, user="Alice@Example.ORG") == 1
    assert save(node, MESSAGE, user="alice@example.org") == 2
    listed = node.cli("-f", "json", "mailbox", "list", "-u", "ALICE@EXAMPLE.ORG")
    assert json.loads(listed.stdout) == [{"mailbox": "INBOX"}]
    assert node.cli("mailbox", "create", "-u", "aLiCe@example.org", "Work").returncode == 0
    assert [
        r["uid"] for r in fetch_json(node, "uid", "mailbox", "INBOX", user="Alice@EXAMPLE.org")
    ] == [1, 2]
    with node.client() as client:
        assert client.call("list_users") == ["alice@example.org"]
    # %n keeps only the local part, as written.
    node.stop()
    node.set_option("auth", "username_format", '"%n"')
    node.start()
    assert save(node, MESSAGE, user="Bob@example.org") == 1
    with node.client() as client:
        assert client.call("list_users") == ["Bob", "alice@example.org"]
    only_domain = node.cli("mailbox", "list", "-u", "@example.org")
    assert only_domain.returncode == 65 and b"empty" in only_domain.stderr


def test_fetch_text_as_json_is_base64_and_tab_is_refused(node: NodeProcess) -> None:
    uid = save(node, MESSAGE)
    query = ("mailbox", "INBOX", "uid", str(uid))
    doc = node.cli("-f", "json", "fetch", "-u", "alice", "text", *query)
    assert doc.returncode == 0, doc.stderr
    parsed = json.loads(doc.stdout)
    assert parsed["uid"] == uid and base64.b64decode(parsed["text"]) == MESSAGE
    tab = node.cli("-f", "tab", "fetch", "-u", "alice", "text", *query)
    assert tab.returncode == 64 and b"-f json" in tab.stderr and not tab.stdout


def test_mailbox_status_takes_fields_before_or_after_the_name(node: NodeProcess) -> None:
    save(node, MESSAGE)
    before = node.cli("-f", "tab", "mailbox", "status", "-u", "alice", "messages uidnext", "INBOX")
    after = node.cli("-f", "tab", "mailbox", "status", "-u", "alice", "INBOX", "messages uidnext")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert before.stdout == after.stdout
    assert before.stdout.decode().splitlines() == ["mailbox\tmessages\tuidnext", "INBOX\t1\t2"]
    # A mailbox whose name is a field: the first word is FIELDS.
    assert node.cli("mailbox", "create", "-u", "alice", "messages").returncode == 0
    named = node.cli("-f", "tab", "mailbox", "status", "-u", "alice", "uidnext", "messages")
    assert named.stdout.decode().splitlines() == ["mailbox\tuidnext", "messages\t1"]


def test_init_says_a_node_without_peers_opens_no_peer_port(
    node_factory: type[NodeProcess], tmp_path: Path
) -> None:
    port = free_port()
    made = run_cli("init", tmp_path / "solo", "--name", "solo", "--port", str(port))
    assert made.returncode == 0, made.stderr
    listen = [line for line in made.stdout.decode().splitlines() if "listen:" in line]
    assert listen == [
        f"  listen:       127.0.0.1:{port} (node-to-node; not opened while the config "
        "has no [[peers]])"
    ]
    node = node_factory()
    node.start()
    peer_port = int(node.config.read_text().split("\nport = ")[1].split()[0])
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", peer_port)) != 0  # nothing listens there
