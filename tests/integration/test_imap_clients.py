"""Outside IMAP clients against real nodes: IMAPClient's live test and mbsync.

* IMAPClient ships a live test suite (``python -m imapclient.livetest
  FILE.ini``) that creates, fills, searches, flags, moves and deletes its
  own folders on a real server.  It is run as is against a node; the exact
  multiset of its failing and erroring tests, and of its skip reasons, is
  pinned below with the reason for each.
* mbsync (Debian's ``isync``, installed by ``.ci/run``) runs a two-way sync
  of a 500-message corpus with flags between a local Maildir and a 2-node
  cluster: upload through n1, changes on both ends (the server side made
  through n2), a second sync, then a fresh Maildir pulled from n2.  Every
  end is checked message by message: text, flags, and nothing else.
"""

from __future__ import annotations

import collections
import imaplib
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from replicad.config import load_config
from tests.conftest import NodeProcess
from tests.integration.test_cluster_replication import LocalCluster
from tests.integration.test_imap import add_user, imap_port

pytestmark = pytest.mark.slow

PASSWORD = "secret"

# --------------------------------------------------------------------------
# IMAPClient's live test
# --------------------------------------------------------------------------

#: Every non-passing test of ``imapclient.livetest`` (imapclient 3.x) against a
#: node, as (outcome, test, class as unittest prints it), but for the timing
#: tests below.  Against Dovecot 2.3 these fail in the same way (they belong
#: to the suite), as do the two timing tests.
LIVETEST_OWN_FAILURES: collections.Counter[tuple[str, str, str]] = collections.Counter(
    {
        # assertSequenceEqual on IMAPClient's own Envelope dataclass, which has
        # no len(): the comparison itself raises, with UIDs and without.
        ("FAIL", "test_fetch", "createUidTestClass.<locals>.LiveTest"): 2,
        # Non-UID MOVE goes through imaplib's command table, which has no MOVE
        # ("Unknown IMAP4 command: 'move'"); the UID variant passes.
        ("ERROR", "test_move", "createUidTestClass.<locals>.LiveTest"): 1,
    }
)

#: Timing tests of the suite that assume a remote host: a 1 ms connect and a
#: 10 us read timeout usually succeed on loopback, so the expected
#: socket.timeout never comes (FAIL, as against Dovecot); on a loaded machine
#: the greeting's read may time out before the test's ``assertRaises`` (ERROR)
#: or the connect may (a pass).  Their outcome says nothing about the server.
LIVETEST_TIMING_TESTS = frozenset(
    {"test_small_connection_timeout_fail", "test_small_read_timeout_fail"}
)

#: Failures that are the server's, each to be removed here once fixed.
LIVETEST_SERVER_GAPS: collections.Counter[tuple[str, str, str]] = collections.Counter()

#: Why the suite skips what it skips: extensions replicad does not offer.
#: A skip for IDLE, NAMESPACE, UNSELECT, CONDSTORE or MOVE would mean a
#: capability went missing, so it must not appear here.
LIVETEST_SKIP_REASONS: collections.Counter[str] = collections.Counter(
    {
        "Server doesn't support XLIST": 1,  # Gmail's pre-SPECIAL-USE LIST
        "Server doesn't support ACL": 2,  # RFC 4314, not offered
        "Server doesn't support labels": 2,  # X-GM-EXT-1
        "Server doesn't support Gmail search": 2,  # X-GM-EXT-1
        "Server doesn't support SORT": 4,  # RFC 5256, not offered
        "Server doesn't support THREAD=REFERENCES": 4,  # RFC 5256, not offered
        "test instance not configured for UID operations": 1,  # by design of the suite
    }
)

_OUTCOME = re.compile(r"^(FAIL|ERROR): (\w+) \(__main__\.(\S+)\.\2\)$", re.MULTILINE)
_SKIP = re.compile(r"^\w+ \(\S+\) \.\.\. skipped (['\"])(.*)\1$", re.MULTILINE)
_RAN = re.compile(r"^Ran (\d+) tests? in ", re.MULTILINE)


def test_imapclient_livetest_fails_only_where_the_suite_or_a_known_gap_does(
    node: NodeProcess, tmp_path: Path
) -> None:
    add_user(node, "livetest", PASSWORD)
    ini = tmp_path / "livetest.ini"
    ini.write_text(
        "[DEFAULT]\nhost = 127.0.0.1\n"
        f"port = {imap_port(node)}\nusername = livetest\npassword = {PASSWORD}\nssl = false\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "imapclient.livetest", str(ini), "-v"],
        capture_output=True,
        timeout=300,
        check=False,
    )
    report = result.stderr.decode(errors="replace")
    ran = _RAN.search(report)
    assert ran is not None, report + result.stdout.decode(errors="replace")
    assert int(ran.group(1)) >= 50, report  # the whole suite ran, not a stub of it

    outcomes = collections.Counter(
        (kind, name, cls.removesuffix(f".{name}"))
        for kind, name, cls in _OUTCOME.findall(report)
        if name not in LIVETEST_TIMING_TESTS
    )
    assert outcomes == LIVETEST_OWN_FAILURES + LIVETEST_SERVER_GAPS, report
    skips = collections.Counter(reason for _, reason in _SKIP.findall(report))
    assert skips == LIVETEST_SKIP_REASONS, report
    assert result.returncode == 1  # unittest's "some failed", never a crash


# --------------------------------------------------------------------------
# mbsync: a two-way Maildir <-> cluster sync
# --------------------------------------------------------------------------

USER = "sync"
CORPUS_SIZE = 500
#: The corpus' folders and how many of its messages each holds.
FOLDERS = {"INBOX": 450, "Archive": 50}
#: Maildir's flag letters (the "2," info of a file name) and IMAP's flags.
MAILDIR_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen"}
IMAP_LETTERS = {flag.lower(): letter for letter, flag in MAILDIR_FLAGS.items()}
#: The initial flags of message i are FLAG_CYCLE[i % len(FLAG_CYCLE)].
FLAG_CYCLE = ("", "S", "FS", "RS", "DS", "F", "S", "S")
#: How long replication between the two nodes may take; only bounds waiting.
CONVERGE = 30.0
#: Messages appended on the server side between the two syncs.
SERVER_APPEND_BASE = 2000
SERVER_APPENDS = frozenset(f"<c{SERVER_APPEND_BASE + n}@example.org>" for n in range(5))


@dataclass(frozen=True)
class Mail:
    """One message as an end holds it: its flag letters and its text (LF line ends)."""

    flags: frozenset[str]
    text: bytes


#: (folder, Message-ID) -> Mail
MailState = dict[tuple[str, str], Mail]


def corpus_message(i: int) -> bytes:
    """Message i of the corpus: small, distinct, deterministic."""
    lines = "".join(f"line {n} of message {i}\r\n" for n in range(1 + i % 7))
    return (
        f"From: Sender {i % 17} <s{i % 17}@example.org>\r\nTo: {USER}@example.net\r\n"
        f"Subject: corpus message {i}\r\nDate: Mon, 7 Dec 2026 10:{i // 60 % 60:02d}:{i % 60:02d}"
        f" +0000\r\nMessage-ID: <c{i}@example.org>\r\n\r\n{lines}"
    ).encode()


def message_id(text: bytes) -> str:
    found = re.search(rb"^Message-ID: (<[^>]+>)", text, re.MULTILINE | re.IGNORECASE)
    assert found is not None, text[:200]
    return found.group(1).decode()


def folder_of(i: int) -> str:
    return "INBOX" if i < FOLDERS["INBOX"] else "Archive"


def maildir_path(root: Path, folder: str) -> Path:
    return root / folder


def write_corpus(root: Path) -> MailState:
    """The corpus as Maildir files in cur/ with their flags; returns what was written."""
    state: MailState = {}
    for folder in FOLDERS:
        for sub in ("cur", "new", "tmp"):
            (maildir_path(root, folder) / sub).mkdir(parents=True)
    for i in range(CORPUS_SIZE):
        text, letters = corpus_message(i), FLAG_CYCLE[i % len(FLAG_CYCLE)]
        name = f"{1_700_000_000 + i}.c{i}.corpus:2,{letters}"
        (maildir_path(root, folder_of(i)) / "cur" / name).write_bytes(text)
        state[folder_of(i), message_id(text)] = Mail(frozenset(letters), lf(text))
    return state


def lf(text: bytes) -> bytes:
    """A message's text as compared across ends.

    mbsync stores Maildir files with LF line ends (IMAP carries CRLF), and
    adds an ``X-TUID`` header to what it uploads, to find the copy's UID.
    """
    return re.sub(rb"^X-TUID: [^\n]*\n", b"", text.replace(b"\r\n", b"\n"), flags=re.MULTILINE)


def maildir_files(root: Path, folder: str) -> Iterator[Path]:
    for sub in ("cur", "new"):
        yield from (maildir_path(root, folder) / sub).iterdir()


def maildir_state(root: Path) -> MailState:
    state: MailState = {}
    for folder in FOLDERS:
        for path in maildir_files(root, folder):
            info = path.name.rpartition(":2,")[2] if ":2," in path.name else ""
            text = path.read_bytes()
            key = (folder, message_id(text))
            assert key not in state, f"{key} twice in the Maildir"
            state[key] = Mail(frozenset(info), lf(text))
    return state


def maildir_file(root: Path, folder: str, mid: str) -> Path:
    [path] = [p for p in maildir_files(root, folder) if message_id(p.read_bytes()) == mid]
    return path


def set_maildir_flags(path: Path, letters: frozenset[str]) -> None:
    """Rename a Maildir file to carry ``letters`` (the info part, sorted as Maildir wants)."""
    base = path.name.partition(":2,")[0]
    path.rename(path.parent.parent / "cur" / f"{base}:2,{''.join(sorted(letters))}")


def imap_login(port: int) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    client.login(USER, PASSWORD)
    return client


def imap_messages(client: imaplib.IMAP4) -> dict[str, tuple[int, Mail]]:
    """Message-ID -> (UID, Mail) of the selected mailbox."""
    typ, data = client.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])")
    assert typ == "OK", data
    out: dict[str, tuple[int, Mail]] = {}
    items = [d for d in data if d is not None]
    for n, item in enumerate(items):
        if not isinstance(item, tuple):
            continue
        # FLAGS may come before the literal or after it, in the closing part.
        after = items[n + 1] if n + 1 < len(items) and isinstance(items[n + 1], bytes) else b""
        meta = item[0] + b" " + after
        uid = re.search(rb"UID (\d+)", meta)
        flags = re.search(rb"FLAGS \(([^)]*)\)", meta)
        assert uid is not None and flags is not None, meta
        letters = frozenset(
            IMAP_LETTERS[f.lower()] for f in flags.group(1).decode().split() if f != "\\Recent"
        )
        out[message_id(item[1])] = (int(uid.group(1)), Mail(letters, lf(item[1])))
    return out


def imap_state(port: int) -> MailState:
    client = imap_login(port)
    try:
        state: MailState = {}
        for folder in FOLDERS:
            typ, data = client.select(folder, readonly=True)
            assert typ == "OK", (folder, data)
            for mid, (_, mail) in imap_messages(client).items():
                state[folder, mid] = mail
        return state
    finally:
        client.logout()


def differences(actual: MailState, expected: MailState) -> list[str]:
    """A short, readable account of how two states differ (empty if equal)."""
    out = [f"missing {key}" for key in sorted(expected.keys() - actual.keys())]
    out += [f"unexpected {key}" for key in sorted(actual.keys() - expected.keys())]
    for key in sorted(expected.keys() & actual.keys()):
        want, got = expected[key], actual[key]
        if want.flags != got.flags:
            got_flags, want_flags = "".join(sorted(got.flags)), "".join(sorted(want.flags))
            out.append(f"{key}: flags {got_flags!r}, want {want_flags!r}")
        if want.text != got.text:
            out.append(f"{key}: text differs")
    return out[:20] + ([f"... {len(out) - 20} more"] if len(out) > 20 else [])


def wait_for_state(port: int, expected: MailState, what: str) -> None:
    """Poll a node until it holds exactly ``expected`` (replication is asynchronous)."""
    deadline = time.monotonic() + CONVERGE
    while True:
        diff = differences(imap_state(port), expected)
        if not diff or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert diff == [], what


def mbsync(rc: Path) -> None:
    result = subprocess.run(
        ["mbsync", "-c", str(rc), "-a"], capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def write_rc(path: Path, port: int, root: Path) -> Path:
    """A private mbsync configuration: every folder, both ways, flags and expunges."""
    path.write_text(
        f"IMAPAccount node\nHost 127.0.0.1\nPort {port}\nUser {USER}\nPass {PASSWORD}\n"
        "SSLType None\nAuthMechs LOGIN\n\n"
        "IMAPStore remote\nAccount node\n\n"
        f"MaildirStore local\nPath {root}/\nInbox {root}/INBOX\nSubFolders Verbatim\n\n"
        "Channel corpus\nFar :remote:\nNear :local:\nPatterns *\n"
        "Sync All\nCreate Both\nExpunge Both\nSyncState *\n"
    )
    return path


@pytest.fixture
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """A 2-node cluster (``cluster up``) with the sync user on both; IMAP ports of n1, n2."""
    assert shutil.which("mbsync"), "mbsync is required: apt-get install isync (.ci/run does)"
    cluster = LocalCluster(tmp_path_factory.mktemp("mb"))
    try:
        cluster.up("-n", "2")
        ports = []
        for name in ("n1", "n2"):
            added = cluster.cli(
                "-c",
                cluster.config(name),
                "user",
                "add",
                USER,
                "--password-stdin",
                input=PASSWORD.encode() + b"\n",
            )
            assert added.returncode == 0, added.stderr.decode()
            section = load_config(cluster.config(name)).imap
            assert section is not None and section.port is not None
            ports.append(section.port)
        yield ports[0], ports[1]
    finally:
        cluster.stop_all()


#: What happens to corpus message i between the two syncs, by i % CHANGE_CYCLE.
CHANGE_CYCLE = 25
MAILDIR_DELETES, MAILDIR_FLAGS_IT, MAILDIR_MARKS_UNREAD = 0, 1, 2
SERVER_EXPUNGES, SERVER_ANSWERS, SERVER_MARKS_UNREAD_UNFLAGGED = 3, 4, 5
BOTH_CHANGE = 6  # flagged in the Maildir and answered on the server: both kept


def corpus_key(i: int) -> tuple[str, str]:
    return folder_of(i), f"<c{i}@example.org>"


def change_the_maildir(root: Path, expected: MailState) -> None:
    """Deletions, flag changes and new mail in the Maildir; ``expected`` follows."""
    for i in range(CORPUS_SIZE):
        key, kind = corpus_key(i), i % CHANGE_CYCLE
        if kind not in (MAILDIR_DELETES, MAILDIR_FLAGS_IT, MAILDIR_MARKS_UNREAD, BOTH_CHANGE):
            continue
        path, old = maildir_file(root, *key), expected[key]
        if kind == MAILDIR_DELETES:
            path.unlink()
            del expected[key]
            continue
        flags = old.flags - {"S"} if kind == MAILDIR_MARKS_UNREAD else old.flags | {"F"}
        set_maildir_flags(path, flags)
        expected[key] = Mail(flags | ({"R"} if kind == BOTH_CHANGE else set()), old.text)
    for n in range(5):  # delivered locally, not read yet: in new/, no info part
        text = corpus_message(1000 + n)
        (root / "INBOX" / "new" / f"{1_800_000_000 + n}.n{n}.local").write_bytes(lf(text))
        expected["INBOX", message_id(text)] = Mail(frozenset(), lf(text))


def change_the_server(port: int, expected: MailState) -> None:
    """Expunges, flag changes and APPENDs over IMAP; ``expected`` follows."""
    stores = {
        SERVER_ANSWERS: ("+FLAGS.SILENT", "(\\Answered)"),
        BOTH_CHANGE: ("+FLAGS.SILENT", "(\\Answered)"),
        SERVER_MARKS_UNREAD_UNFLAGGED: ("-FLAGS.SILENT", "(\\Seen \\Flagged)"),
        SERVER_EXPUNGES: ("+FLAGS.SILENT", "(\\Deleted)"),
    }
    client = imap_login(port)
    try:
        for folder in FOLDERS:
            assert client.select(folder)[0] == "OK"
            uids = {mid: uid for mid, (uid, _) in imap_messages(client).items()}
            for i in range(CORPUS_SIZE):
                key, kind = corpus_key(i), i % CHANGE_CYCLE
                if key[0] != folder or kind not in stores:
                    continue
                typ, data = client.uid("STORE", str(uids[key[1]]), *stores[kind])
                assert typ == "OK", data
                old = expected[key]
                if kind == SERVER_EXPUNGES:
                    del expected[key]
                elif kind == SERVER_ANSWERS:
                    expected[key] = Mail(old.flags | {"R"}, old.text)
                elif kind == SERVER_MARKS_UNREAD_UNFLAGGED:
                    expected[key] = Mail(old.flags - {"S", "F"}, old.text)
            assert client.expunge()[0] == "OK"
        for n in range(5):  # new on the server, already read
            text = corpus_message(SERVER_APPEND_BASE + n)
            typ, data = client.append("Archive", "(\\Seen)", None, text)
            assert typ == "OK", data
            expected["Archive", message_id(text)] = Mail(frozenset("S"), lf(text))
    finally:
        client.logout()


def wait_for_server_changes(port: int) -> None:
    """Wait until ``port`` shows what ``change_the_server`` did through the other node."""
    deadline = time.monotonic() + CONVERGE
    while True:
        state = imap_state(port)
        pending = []
        for i in range(CORPUS_SIZE):
            key, kind = corpus_key(i), i % CHANGE_CYCLE
            mail = state.get(key)
            if (
                (kind == SERVER_EXPUNGES and mail is not None)
                or (kind in (SERVER_ANSWERS, BOTH_CHANGE) and mail and "R" not in mail.flags)
                or (kind == SERVER_MARKS_UNREAD_UNFLAGGED and mail and mail.flags & {"S", "F"})
            ):
                pending.append(i)
        appended = sum(1 for _, mid in state if mid in SERVER_APPENDS)
        if (not pending and appended == 5) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert (pending, appended) == ([], 5), "the other node's changes did not arrive"


def test_mbsync_two_way_sync_with_a_two_node_cluster(
    two_nodes: tuple[int, int], tmp_path: Path
) -> None:
    n1, n2 = two_nodes
    local = tmp_path / "mail"
    expected = write_corpus(local)
    rc = write_rc(tmp_path / "mbsyncrc", n1, local)

    # 1. Up: n1 ends with exactly the corpus, flags included; n2 follows.
    mbsync(rc)
    assert differences(imap_state(n1), expected) == []
    assert differences(maildir_state(local), expected) == []
    wait_for_state(n2, expected, "n2 after the first sync")

    # 2. Changes on both ends, the server's made through n2: the sync through
    #    n1 sees them by replication only.
    change_the_maildir(local, expected)
    change_the_server(n2, expected)
    removed = 2 * CORPUS_SIZE // CHANGE_CYCLE
    assert len(expected) == CORPUS_SIZE - removed + 10  # the changes were made

    # 3. The second sync meets in the middle, on both ends and on both nodes.
    wait_for_server_changes(n1)
    mbsync(rc)
    assert differences(maildir_state(local), expected) == []
    assert differences(imap_state(n1), expected) == []
    wait_for_state(n2, expected, "n2 after the second sync")

    # 4. A fresh Maildir pulled from n2 holds the same, and n2 is unchanged.
    fresh = tmp_path / "fresh"
    for folder in FOLDERS:
        for sub in ("cur", "new", "tmp"):
            (fresh / folder / sub).mkdir(parents=True)
    mbsync(write_rc(tmp_path / "fresh-rc", n2, fresh))
    assert differences(maildir_state(fresh), expected) == []
    assert differences(imap_state(n2), expected) == []
