"""Mail in over LMTP against a real ``replicad serve`` (RFC 2033).

Messages are delivered with Python's ``smtplib.LMTP`` (which reads a single
reply after DATA, so multi-recipient deliveries read the per-recipient
replies themselves on a raw socket) and ``swaks`` (Debian's, required); they
are read back with ``replicad fetch ... text``: byte-identical to what was
sent but for the prepended trace headers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from replicad.config import load_config
from tests.conftest import NodeProcess, free_port, run_cli

SENDER = "sender@example.net"
# 8-bit octets, a lone LF, lines starting with dots, a line over 1,000 octets.
MESSAGE = (
    b"From: sender@example.net\r\nTo: alice@example.org\r\nSubject: caf\xc3\xa9\r\n\r\n"
    b"line one\r\n.a line with a leading dot\r\n..two dots\r\n.\r\n.."
    b"\r\n" + b"long " * 300 + b"\r\nand a lone LF\nend\r\n"
)
STORED = MESSAGE.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")  # the lone LF normalised


def lmtp_port(node: NodeProcess) -> int:
    section = load_config(node.config).lmtp
    assert section is not None and section.port is not None
    return section.port


def add_users(node: NodeProcess, *users: str) -> None:
    """Users in the node's passwd-file (who gets mail), each with a folder."""
    for user in users:
        added = node.cli("user", "add", user, "--password-stdin", input=b"secret\n")
        assert added.returncode == 0, added.stderr.decode()
        result = node.cli("mailbox", "create", "-u", user, "Archive")
        assert result.returncode == 0, result.stderr.decode()


def fetch_text(node: NodeProcess, user: str, mailbox: str = "INBOX", uid: int = 1) -> bytes:
    result = node.cli("fetch", "-u", user, "text", "mailbox", mailbox, "uid", str(uid))
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def count(node: NodeProcess, user: str, mailbox: str = "INBOX") -> int:
    result = node.cli("-f", "json", "mailbox", "status", "-u", user, mailbox)
    if result.returncode in (67, 68):  # no such user / no such mailbox
        return 0
    assert result.returncode == 0, result.stderr.decode()
    [row] = json.loads(result.stdout)
    return int(row["messages"])


class Raw:
    """A raw LMTP client: pipelined writes, replies read as they come."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buffer = b""
        assert self.replies(1)[0].startswith("220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, n: int) -> list[str]:
        """The next ``n`` complete replies (multi-line replies joined)."""
        out: list[str] = []
        while len(out) < n:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {out}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            text = line.decode()
            if text[3:4] == "-":
                continue  # a continuation line; its last line ends the reply
            out.append(text)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def node(node_factory: type[NodeProcess]) -> NodeProcess:
    n = node_factory()
    metrics = free_port()
    with n.config.open("a") as fh:
        fh.write(f'\n[metrics]\nlisten = "127.0.0.1:{metrics}"\n')
    n.start()
    add_users(n, "alice@example.org", "bob", "carol@example.org")
    return n


def test_smtplib_single_recipient_reads_back_byte_identical(node: NodeProcess) -> None:
    with smtplib.LMTP("127.0.0.1", lmtp_port(node)) as client:
        code, features = client.ehlo("mta.example.net")  # smtplib.LMTP sends LHLO
        assert code == 250
        for extension in (b"PIPELINING", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SIZE"):
            assert extension in features
        refused = client.sendmail(
            SENDER, ["Alice@Example.ORG"], MESSAGE, mail_options=["BODY=8BITMIME"]
        )
        assert refused == {}
    expected = b"Return-Path: <sender@example.net>\r\nDelivered-To: Alice@Example.ORG\r\n"
    assert fetch_text(node, "alice@example.org") == expected + STORED


def test_unknown_user_is_550_at_rcpt(node: NodeProcess) -> None:
    with smtplib.LMTP("127.0.0.1", lmtp_port(node)) as client:
        client.ehlo("mta.example.net")
        with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
            client.sendmail(SENDER, ["nobody@example.org"], MESSAGE)
        code, text = info.value.recipients["nobody@example.org"]
        assert code == 550 and text.startswith(b"5.1.1 ")


def test_multi_recipient_replies_in_order_and_one_body(node: NodeProcess) -> None:
    add_users(node, "dave")
    assert node.cli("mailbox", "create", "-u", "bob", "Lists").returncode == 0
    client = Raw(lmtp_port(node))
    # One pipelined group (RFC 2920), up to DATA.
    client.send(
        b"LHLO mta.example.net\r\nMAIL FROM:<sender@example.net> SIZE=5000 BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.org>\r\nRCPT TO:<ghost@example.org>\r\n"
        b"RCPT TO:<bob+Lists>\r\nRCPT TO:<carol+nofolder@example.org>\r\nDATA\r\n"
    )
    replies = client.replies(7)
    assert [r[:9] for r in replies] == [
        "250 SIZE ",
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "250 2.1.5",
        "250 2.1.5",
        "354 Start",
    ]
    body = MESSAGE.replace(b"\r\n.", b"\r\n..")  # dot-stuffed, as an MTA sends it
    client.send(body + b".\r\n")
    assert client.replies(3) == [
        "250 2.0.0 <alice@example.org> Saved",
        "250 2.0.0 <bob+Lists> Saved",
        "250 2.0.0 <carol+nofolder@example.org> Saved",
    ]
    client.send(b"QUIT\r\n")
    assert client.replies(1)[0].startswith("221 2.0.0")
    client.close()
    # Several recipients: Return-Path only, the same octets for everyone.
    expected = b"Return-Path: <sender@example.net>\r\n" + STORED
    assert fetch_text(node, "alice@example.org") == expected
    assert fetch_text(node, "bob", "Lists") == expected  # the +detail folder exists
    assert fetch_text(node, "carol@example.org") == expected  # it does not: INBOX
    assert count(node, "bob") == 0
    metrics = _metrics(node)
    assert 'replicad_lmtp_deliveries_total{outcome="saved"} 3.0' in metrics
    assert 'replicad_lmtp_deliveries_total{outcome="rejected"} 1.0' in metrics
    assert "replicad_lmtp_delivery_seconds_count 1.0" in metrics


def test_connection_dropped_inside_data_saves_nothing(node: NodeProcess) -> None:
    client = Raw(lmtp_port(node))
    client.send(b"LHLO m\r\nMAIL FROM:<s@x>\r\nRCPT TO:<bob>\r\nDATA\r\n")
    assert client.replies(4)[-1].startswith("354 ")
    client.send(MESSAGE.replace(b"\r\n.", b"\r\n..")[:200])  # dot-stuffed, cut short
    client.close()
    deadline = time.monotonic() + 30
    while "event=lmtp.aborted_in_data" not in node.log():
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.05)
    assert count(node, "bob") == 0
    # The next delivery is the first message.
    with smtplib.LMTP("127.0.0.1", lmtp_port(node)) as lmtp:
        lmtp.sendmail(SENDER, ["bob"], MESSAGE)
    assert fetch_text(node, "bob").endswith(STORED)
    assert count(node, "bob") == 1


def test_limits_and_bad_input_on_the_wire(node: NodeProcess) -> None:
    client = Raw(lmtp_port(node))
    client.send(b"EHLO m\r\nMAIL FROM:<s@x>\r\nLHLO m\r\n")
    assert [r[:9] for r in client.replies(3)] == ["500 5.5.1", "503 5.5.1", "250 SIZE "]
    client.send(b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\nRCPT TO:<bob>\r\nVRFY bob\r\n")
    assert [r[:9] for r in client.replies(4)] == [
        "500 5.5.2",
        "250 2.0.0",
        "503 5.5.1",
        "252 2.5.0",
    ]
    client.send(b"MAIL FROM:<s@x> SIZE=999999999999\r\nMAIL FROM:<s@x>\r\nRCPT TO:<bob>\r\n")
    assert [r[:9] for r in client.replies(3)] == ["552 5.3.4", "250 2.1.0", "250 2.1.5"]
    client.send(b"DATA\r\nSubject: x\r\n\r\nNUL \x00 here\r\n.\r\nRSET\r\nQUIT\r\n")
    assert [r[:9] for r in client.replies(4)] == [
        "354 Start",
        "554 5.6.0",
        "250 2.0.0",
        "221 2.0.0",
    ]
    client.close()
    assert count(node, "bob") == 0


def test_idle_client_gets_421_and_is_disconnected(node_factory: type[NodeProcess]) -> None:
    n = node_factory()
    n.set_option("lmtp", "timeout", "1")
    n.start()
    client = Raw(lmtp_port(n))
    client.send(b"LHLO m\r\n")
    client.replies(1)
    started = time.monotonic()
    [reply] = client.replies(1)
    assert reply.startswith("421 4.4.2 ")
    assert 0.5 < time.monotonic() - started < 30
    assert client.sock.recv(100) == b""
    client.close()


def test_unix_socket_and_clean_sigterm(node_factory: type[NodeProcess]) -> None:
    n = node_factory()
    path = n.dir / "lmtp.sock"
    port = lmtp_port(n)
    n.set_option("lmtp", "listen", f'["127.0.0.1:{port}", "{path}"]')
    n.start()
    add_users(n, "alice")
    assert (os.stat(path).st_mode & 0o777) == 0o660
    with smtplib.LMTP(str(path)) as client:
        assert client.sendmail(SENDER, ["alice"], MESSAGE) == {}
    assert fetch_text(n, "alice").endswith(STORED)
    idle = Raw(port)  # an idle session is told the service is going away
    assert n.stop() == 0
    assert idle.replies(1)[0].startswith("421 4.3.2 ")
    idle.close()
    assert not path.exists()


def test_swaks_delivers_over_lmtp(node: NodeProcess, tmp_path: Path) -> None:
    # An outside client is part of the gate: .ci/run installs Debian's swaks.
    assert shutil.which("swaks"), "swaks is required: apt-get install swaks (.ci/run does)"
    message = tmp_path / "message.eml"
    message.write_bytes(MESSAGE.removesuffix(b"\r\n"))  # swaks ends the data with CRLF . CRLF
    result = subprocess.run(
        [
            "swaks",
            "--protocol",
            "LMTP",
            "--server",
            "127.0.0.1",
            "--port",
            str(lmtp_port(node)),
            "--from",
            SENDER,
            "--to",
            "alice@example.org,bob",
            "--data",
            str(message),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    out = result.stdout.decode()
    assert "250 2.0.0 <alice@example.org> Saved" in out
    assert "250 2.0.0 <bob> Saved" in out
    expected = b"Return-Path: <sender@example.net>\r\n" + STORED
    assert fetch_text(node, "alice@example.org") == expected
    assert fetch_text(node, "bob") == expected


def _metrics(node: NodeProcess) -> str:
    config = load_config(node.config)
    assert config.metrics is not None
    url = f"http://{config.metrics.address}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text: str = response.read().decode()
    return text


def test_sigterm_leaves_no_lmtp_session(node: NodeProcess) -> None:
    client = Raw(lmtp_port(node))
    client.send(b"LHLO m\r\nMAIL FROM:<s@x>\r\nRCPT TO:<bob>\r\nDATA\r\nhalf a mess")
    assert client.replies(4)[-1].startswith("354 ")
    os.kill(node.pid, signal.SIGTERM)
    assert client.replies(1)[0].startswith("421 4.3.2 ")
    # Waited for, not stopped: a second SIGTERM arriving after the node has
    # stopped reading signals would be delivered again as it exits (trio).
    assert node.proc is not None and node.proc.wait(timeout=60) == 0, node.log()
    client.close()
    node.start()
    assert count(node, "bob") == 0  # the message cut off by the shutdown was not saved


def test_unreachable_durability_level_is_451_for_that_recipient_only(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Two nodes, n2 killed: alice's level ("all") cannot be met, bob's ("local") can."""
    directory = tmp_path_factory.mktemp("dur")

    def cli(*args: str | Path) -> bytes:
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr.decode()
        return result.stdout

    n1 = NodeProcess(directory / "n1")
    try:
        cli("cluster", "up", "-n", "2", directory)
        for user in ("alice", "bob"):
            run_cli("-c", n1.config, "user", "add", user, "--password-stdin", input=b"pw\n")
            cli("-c", n1.config, "mailbox", "create", "-u", user, "Archive")
        with n1.config.open("a") as fh:
            fh.write('\n[cluster.durability]\nalice = "all"\n')
        cli("cluster", "kill", directory, "n2")
        cli("cluster", "restart", directory, "n1")
        client = Raw(lmtp_port(n1))
        client.send(b"LHLO m\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\nDATA\r\n")
        assert [r[:9] for r in client.replies(5)] == [
            "250 SIZE ",
            "250 2.1.0",
            "250 2.1.5",
            "250 2.1.5",
            "354 Start",
        ]
        client.send(MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        alice, bob = client.replies(2)
        assert alice.startswith("451 4.3.0 <alice> Durability level not reachable")
        assert bob == "250 2.0.0 <bob> Saved"
        client.close()
        assert count(n1, "alice") == 0  # nothing half-saved: the MTA keeps it and retries
        assert fetch_text(n1, "bob").endswith(STORED)
    finally:
        run_cli("cluster", "down", directory)
