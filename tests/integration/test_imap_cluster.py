"""IMAP on a real 3-node cluster (architecture.md §11, multi-node rules).

Mail delivered over LMTP on n1 is read over IMAP on n3; a client idling on
n3 is told of a message saved on n2 without asking (``* n EXISTS`` pushed
when the replicated change commits on n3), and of a flag set on n1 as
``* n FETCH (FLAGS …)``; a session's own write through n3 (whose mailbox
master is another node) is visible to it as soon as the tagged OK arrives.
"""

from __future__ import annotations

import imaplib
import socket
import time
from collections.abc import Iterator

import pytest

from replicad.config import load_config
from tests.integration.test_cluster_replication import NODES, LocalCluster
from tests.integration.test_lmtp_cluster import USER, deliver, stored

pytestmark = pytest.mark.slow

PASSWORD = "pw"


def imap_port(cluster: LocalCluster, node: str) -> int:
    section = load_config(cluster.config(node)).imap
    assert section is not None and section.port is not None
    return section.port


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("ic"))
    try:
        c.up("-n", "3")
        c.down()
        for node in NODES:  # each node has its own passwd-file
            added = c.cli(
                "-c", c.config(node), "user", "add", USER, "--password-stdin", input=b"pw\n"
            )
            assert added.returncode == 0, added.stderr.decode()
        c.up()
        c.wait_root()
        yield c
    finally:
        c.stop_all()


class Line:
    """A raw IMAP connection read line by line (to see unsolicited responses)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.reader = self.sock.makefile("rb")
        assert self.reader.readline().startswith(b"* OK")

    def command(self, text: str) -> list[bytes]:
        """Send ``tag text``; every line up to and including the tagged reply."""
        self.sock.sendall(b"t " + text.encode() + b"\r\n")
        lines = []
        while True:
            line = self.reader.readline()
            assert line, "connection closed"
            lines.append(line)
            if line.startswith(b"t "):
                assert line.startswith(b"t OK"), lines
                return lines

    def until(self, wanted: bytes, timeout: float) -> tuple[bytes, float]:
        started = time.monotonic()
        self.sock.settimeout(timeout)
        while True:
            line = self.reader.readline()
            if wanted in line:
                return line, time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def test_delivered_on_n1_read_on_n3_and_idle_sees_changes_from_other_nodes(
    cluster: LocalCluster,
) -> None:
    assert deliver(cluster, "n1", "hello").startswith("250 2.0.0 ")
    cluster.wait_converged(USER)

    client = imaplib.IMAP4("127.0.0.1", imap_port(cluster, "n3"), timeout=30)
    try:
        client.login(USER, PASSWORD)
        typ, data = client.select("INBOX")
        assert typ == "OK" and data == [b"1"]
        typ, data = client.fetch("1", "(BODY.PEEK[])")
        assert data[0][1] == stored("hello")
    finally:
        client.logout()

    idler = Line(imap_port(cluster, "n3"))
    try:
        idler.command(f"LOGIN {USER} {PASSWORD}")
        idler.command("SELECT INBOX")
        idler.sock.sendall(b"i IDLE\r\n")
        assert idler.reader.readline().startswith(b"+")
        cluster.save("n2", USER, "second")
        line, waited = idler.until(b"EXISTS", timeout=30)
        assert line == b"* 2 EXISTS\r\n"
        # Counted from the save's acknowledgement by its master (n2): the
        # change streams to n3 and the commit there wakes the idler.  A loaded
        # CI machine is slow; the bound catches a push that waits for a poll.
        assert waited < 5, waited
        flagged = cluster.on(
            "n1", "flags", "add", "-u", USER, "\\Flagged", "mailbox", "INBOX", "uid", "1"
        )
        assert flagged.returncode == 0, flagged.stderr.decode()
        line, waited = idler.until(b"FETCH", timeout=30)
        assert b"\\Flagged" in line and line.startswith(b"* 1 FETCH")
        assert waited < 5, waited
        idler.sock.sendall(b"DONE\r\n")
        line, _ = idler.until(b"i OK", timeout=10)
    finally:
        idler.close()


def test_a_write_through_a_replica_is_visible_to_the_session_at_once(
    cluster: LocalCluster,
) -> None:
    # n1 delivers first, so it masters the INBOX; the session is on n3.
    assert deliver(cluster, "n1", "first").startswith("250 2.0.0 ")
    cluster.wait_converged(USER)
    session = Line(imap_port(cluster, "n3"))
    try:
        session.command(f"LOGIN {USER} {PASSWORD}")
        session.command("SELECT INBOX")
        lines = session.command("STORE 1 +FLAGS (\\Seen)")
        assert any(b"\\Seen" in line for line in lines), lines
        lines = session.command("FETCH 1 FLAGS")
        assert any(b"\\Seen" in line for line in lines), lines
        message = b"Subject: appended on n3\r\n\r\nbody\r\n"
        session.sock.sendall(b"t APPEND INBOX {%d+}\r\n" % len(message) + message + b"\r\n")
        while not (line := session.reader.readline()).startswith(b"t "):
            pass
        assert line.startswith(b"t OK") and b"APPENDUID" in line, line
        # The session sees its own APPEND at once: the next NOOP shows it.
        lines = session.command("NOOP")
        lines += session.command("SEARCH ALL")
        assert b"* SEARCH 1 2\r\n" in lines, lines
    finally:
        session.close()


@pytest.fixture
def slow_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """3 nodes behind the fault proxy, SELECT allowed to wait 20 s."""
    c = LocalCluster(tmp_path_factory.mktemp("sc"))
    try:
        c.up("-n", "3", "--faults")
        c.down()
        for node in NODES:
            config = c.config(node)
            text = config.read_text()
            text = text.replace("[imap]\n", "[imap]\nselect_wait = 20\n", 1)
            config.write_text(text)
            added = c.cli(
                "-c", config, "user", "add", USER, "--password-stdin", input=b"pw\n"
            )
            assert added.returncode == 0, added.stderr.decode()
        c.up()
        c.wait_root()
        yield c
    finally:
        c.stop_all()


def test_select_waits_until_the_copy_holds_what_the_master_holds(
    slow_cluster: LocalCluster,
) -> None:
    cluster = slow_cluster
    assert deliver(cluster, "n1", "first").startswith("250 2.0.0 ")  # n1 masters INBOX
    cluster.wait_converged(USER)
    session = Line(imap_port(cluster, "n3"))
    try:
        session.command(f"LOGIN {USER} {PASSWORD}")
        lines = session.command("SELECT INBOX")
        assert b"* 1 EXISTS\r\n" in lines
        session.command("UNSELECT")
        # Every link now holds its data 2 s each way: the new message reaches
        # n3 about 2 s after the master (n1) has it.
        delayed = cluster.cli("cluster", "delay", cluster.dir, "2000")
        assert delayed.returncode == 0, delayed.stderr.decode()
        cluster.save("n1", USER, "second")
        started = time.monotonic()
        lines = session.command("SELECT INBOX")
        waited = time.monotonic() - started
        # Without the wait SELECT would answer at once from n3's copy: 1 EXISTS.
        assert b"* 2 EXISTS\r\n" in lines, (waited, lines)
    finally:
        session.close()
        cluster.cli("cluster", "delay", cluster.dir, "0")
