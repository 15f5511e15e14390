"""Mail out over IMAP against a real ``replicad serve`` (RFC 3501/9051).

Driven with Python's ``imaplib`` (an outside client): login, LIST, SELECT,
FETCH of flags, sizes, headers and whole messages, SEARCH, STORE, COPY,
MOVE, EXPUNGE, APPEND with APPENDUID, IDLE with a change made over another
connection, and what the CLI sees of it all.
"""

from __future__ import annotations

import imaplib
import re
import socket
import time

import pytest

from replicad.config import load_config
from tests.conftest import NodeProcess

MESSAGE = (
    b"From: Bob <bob@example.net>\r\nTo: alice@example.org\r\n"
    b"Subject: hello there\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <m1@example.net>\r\n\r\nfirst body line\r\nsecond\r\n"
)


def imap_port(node: NodeProcess) -> int:
    section = load_config(node.config).imap
    assert section is not None and section.port is not None
    return section.port


def add_user(node: NodeProcess, user: str = "alice", password: str = "secret") -> None:
    added = node.cli("user", "add", user, "--password-stdin", input=password.encode() + b"\n")
    assert added.returncode == 0, added.stderr.decode()


def save(node: NodeProcess, body: bytes, user: str = "alice", mailbox: str = "INBOX") -> int:
    result = node.cli("save", "-u", user, "-m", mailbox, input=body)
    assert result.returncode == 0, result.stderr.decode()
    return int(result.stdout)


def connect(node: NodeProcess, user: str = "alice", password: str = "secret") -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", imap_port(node), timeout=30)
    client.login(user, password)
    return client


@pytest.fixture
def alice(node: NodeProcess) -> NodeProcess:
    add_user(node)
    return node


def test_greeting_capabilities_and_bad_login(alice: NodeProcess) -> None:
    client = imaplib.IMAP4("127.0.0.1", imap_port(alice), timeout=30)
    try:
        assert b"IMAP4rev1" in client.welcome
        typ, caps = client.capability()
        assert typ == "OK" and b"AUTH=PLAIN" in caps[0]
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            client.login("alice", "wrong")
        client.login("ALICE", "secret")  # user names are normalised (%Lu)
        typ, caps = client.capability()
        assert b"UIDPLUS" in caps[0] and b"QRESYNC" in caps[0]
    finally:
        client.logout()


def test_select_fetch_search_store_and_expunge(alice: NodeProcess) -> None:
    for n in range(3):
        save(alice, MESSAGE.replace(b"first", b"message %d" % n))
    client = connect(alice)
    try:
        typ, data = client.select("INBOX")
        assert typ == "OK" and data == [b"3"]
        typ, data = client.fetch("1:3", "(UID FLAGS RFC822.SIZE)")
        assert typ == "OK"
        sizes = [int(m) for m in re.findall(rb"RFC822.SIZE (\d+)", b" ".join(data))]
        assert sizes == [len(MESSAGE) + len(b"message 0") - len(b"first")] * 3
        typ, data = client.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert data[0][1] == b"Subject: hello there\r\n\r\n"
        typ, data = client.fetch("2", "(BODY.PEEK[])")
        assert data[0][1] == MESSAGE.replace(b"first", b"message 1")
        typ, data = client.search(None, "BODY", '"message 2"')
        assert data == [b"3"]
        typ, data = client.search(None, "UNSEEN")
        assert data == [b"1 2 3"]
        typ, data = client.store("1", "+FLAGS", "(\\Seen \\Flagged)")
        assert typ == "OK" and b"\\Flagged" in data[0] and b"\\Seen" in data[0]
        typ, data = client.search(None, "UNSEEN")
        assert data == [b"2 3"]
        client.store("2", "+FLAGS.SILENT", "(\\Deleted)")
        typ, data = client.expunge()
        assert typ == "OK" and data == [b"2"]
        typ, data = client.uid("SEARCH", "ALL")
        assert data == [b"1 3"]
    finally:
        client.logout()
    # The CLI sees what the client did.
    listed = alice.cli("-f", "json", "fetch", "-u", "alice", "flags", "mailbox", "INBOX")
    assert b"\\\\Flagged" in listed.stdout and listed.stdout.count(b"\"flags\"") == 2


def test_append_copy_move_and_folders(alice: NodeProcess) -> None:
    client = connect(alice)
    try:
        typ, data = client.create("Work/Projects")
        assert typ == "OK"
        typ, data = client.list()
        names = b" ".join(data)
        assert b'"Work"' in names and b'"Work/Projects"' in names and b"INBOX" in names
        typ, data = client.append("INBOX", "(\\Seen)", None, MESSAGE)
        assert typ == "OK"
        match = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
        assert match is not None and match.group(2) == b"1"
        client.select("INBOX")
        typ, data = client.copy("1", "Work")
        assert typ == "OK" and b"COPYUID" in data[0]
        typ, data = client._simple_command("MOVE", "1", "Work/Projects")  # RFC 6851
        assert typ == "OK"
        typ, data = client.status("Work", "(MESSAGES UIDNEXT UNSEEN)")
        assert b"MESSAGES 1" in data[0] and b"UNSEEN 0" in data[0]
        typ, data = client.status("INBOX", "(MESSAGES)")
        assert b"MESSAGES 0" in data[0]
        typ, data = client.append("Nowhere", None, None, MESSAGE)
        assert typ == "NO"
    except imaplib.IMAP4.error as exc:
        assert "TRYCREATE" in str(exc)
    finally:
        client.logout()


def test_idle_sees_a_message_saved_elsewhere_within_a_second(alice: NodeProcess) -> None:
    save(alice, MESSAGE)
    sock = socket.create_connection(("127.0.0.1", imap_port(alice)), timeout=10)
    try:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"a LOGIN alice secret\r\nb SELECT INBOX\r\nc IDLE\r\n")
        line = b""
        while not line.startswith(b"+"):
            line = reader.readline()
        started = time.monotonic()
        save(alice, MESSAGE)
        line = reader.readline()
        assert line == b"* 2 EXISTS\r\n"
        # The CLI's process start-up dominates; the push itself follows the commit.
        assert time.monotonic() - started < 10
        # \Recent for this session: the one it had and the new one (RFC 3501 §7.3.2).
        assert reader.readline() == b"* 2 RECENT\r\n"
        sock.sendall(b"DONE\r\nd LOGOUT\r\n")
        assert reader.readline().startswith(b"c OK")
    finally:
        sock.close()


def test_bad_syntax_keeps_the_session_and_wrong_state_is_refused(alice: NodeProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", imap_port(alice)), timeout=10)
    try:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(b"a FETCH 1 FLAGS\r\n")
        assert reader.readline().startswith(b"a BAD")
        sock.sendall(b"b LOGIN alice\r\n")
        assert reader.readline().startswith(b"b BAD")
        sock.sendall(b"c NOSUCHCOMMAND\r\n")
        assert reader.readline().startswith(b"c BAD")
        sock.sendall(b"d LOGIN alice secret\r\n")
        assert reader.readline().startswith(b"d OK")
    finally:
        sock.close()


def test_metrics_count_sessions_and_commands(node_factory: type[NodeProcess]) -> None:
    import urllib.request

    from tests.conftest import free_port

    node = node_factory()
    port = free_port()
    with node.config.open("a") as fh:
        fh.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    node.start()
    add_user(node)
    client = connect(node)
    try:
        client.select("INBOX")
        typ, data = client.select("Nowhere")
        assert typ == "NO" and b"NONEXISTENT" in data[0]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        client.logout()
    metrics = text.decode()
    assert "replicad_imap_sessions 1.0" in metrics
    assert 'replicad_imap_commands_total{command="SELECT",result="ok"} 1.0' in metrics
    assert 'replicad_imap_commands_total{command="SELECT",result="no"} 1.0' in metrics
    assert 'replicad_imap_commands_total{command="LOGIN",result="ok"} 1.0' in metrics


def test_passwords_never_reach_the_log(node_factory: type[NodeProcess]) -> None:
    import base64

    node = node_factory()
    node.set_option("node", "log_level", '"debug"')
    node.start()
    add_user(node, "alice", "Right-pw-7Hq2")
    client = imaplib.IMAP4("127.0.0.1", imap_port(node), timeout=30)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            client.login("alice", "Wrong-pw-9Zk4")
        plain = base64.b64encode(b"\0alice\0Right-pw-7Hq2").decode()
        typ, _ = client._simple_command("AUTHENTICATE", "PLAIN", plain)
        assert typ == "OK"
    finally:
        client.logout()
    node.stop()
    log = node.log()
    assert "imap.login" in log and "imap.auth_failed" in log  # the attempts are logged
    for secret in ("Right-pw-7Hq2", "Wrong-pw-9Zk4", plain):
        assert secret not in log
