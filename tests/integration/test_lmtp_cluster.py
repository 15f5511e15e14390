"""LMTP into a real 3-node cluster at durability ``quorum`` (real processes).

Two of the three nodes are killed with SIGKILL: the survivor cannot reach
a majority, so its LMTP answers ``451 4.3.0`` after DATA and stores
nothing, on any node.  Once the two are back, the MTA's retry -- the same
transaction sent again -- is stored exactly once on every node.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from replicad.config import load_config
from tests.integration.test_cluster_replication import NODES, LocalCluster, peer_row
from tests.integration.test_lmtp import Raw

pytestmark = pytest.mark.slow

USER = "alice@example.org"
SENDER = "mta-test@example.net"


def body(subject: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {USER}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.net>\r\n\r\nbody of {subject}\r\n"
    ).encode()


def stored(subject: str) -> bytes:
    """What a single-recipient delivery of ``body(subject)`` stores."""
    return f"Return-Path: <{SENDER}>\r\nDelivered-To: {USER}\r\n".encode() + body(subject)


def lmtp_port(cluster: LocalCluster, node: str) -> int:
    section = load_config(cluster.config(node)).lmtp
    assert section is not None and section.port is not None
    return section.port


def deliver(cluster: LocalCluster, node: str, subject: str) -> str:
    """One LMTP transaction with one recipient; the reply after DATA."""
    client = Raw(lmtp_port(cluster, node))
    try:
        client.send(
            f"LHLO mta.example.net\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{USER}>\r\nDATA\r\n".encode()
        )
        replies = client.replies(4)
        assert [r[:3] for r in replies] == ["250", "250", "250", "354"], replies
        client.send(body(subject) + b".\r\n")
        [reply] = client.replies(1)
        client.send(b"QUIT\r\n")
        client.replies(1)
        return reply
    finally:
        client.close()


def texts(cluster: LocalCluster, node: str) -> list[bytes]:
    """Every message of the user's INBOX on ``node``, as stored, in UID order."""
    rows = cluster.json_on(node, "fetch", "-u", USER, "uid", "mailbox", "INBOX", "all")
    out = []
    for row in rows:
        result = cluster.cli(
            "-c",
            cluster.config(node),
            "fetch",
            "-u",
            USER,
            "text",
            "mailbox",
            "INBOX",
            "uid",
            str(row["uid"]),
        )
        assert result.returncode == 0, result.stderr.decode()
        out.append(result.stdout)
    return out


def status(cluster: LocalCluster, node: str) -> dict[str, Any]:
    [row] = cluster.json_on(node, "mailbox", "status", "-u", USER, "INBOX")
    assert isinstance(row, dict)
    return row


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("lc"))
    try:
        yield c
    finally:
        c.stop_all()


def test_quorum_lost_is_451_and_stores_nothing_then_the_retry_is_stored_once(
    cluster: LocalCluster,
) -> None:
    cluster.up("-n", "3")
    cluster.down()
    cluster.set_durability("quorum")
    for node in NODES:  # each node has its own passwd-file
        added = cluster.cli(
            "-c", cluster.config(node), "user", "add", USER, "--password-stdin", input=b"pw\n"
        )
        assert added.returncode == 0, added.stderr.decode()
    cluster.up()
    cluster.wait_root()

    # A first delivery through n1 makes n1 the master of the INBOX.
    assert deliver(cluster, "n1", "before").startswith("250 2.0.0 ")
    cluster.wait_converged(USER)

    for node in ("n2", "n3"):
        cluster.stop_node(node, signal.SIGKILL)
    cluster.wait_until(
        "n1 sees n2 and n3 down",
        lambda: (
            all(peer_row(cluster.status(), "n1", p)["link"] == "down" for p in ("n2", "n3")),
            cluster.status()["n1"]["peers"],
        ),
    )
    reply = deliver(cluster, "n1", "during")
    assert reply.startswith(f"451 4.3.0 <{USER}> "), reply
    assert texts(cluster, "n1") == [stored("before")]  # nothing written on the survivor

    cluster.up()  # restarts n2 and n3 with their data
    cluster.wait_root()
    state = cluster.wait_converged(USER)
    assert len(state["INBOX"]["messages"]) == 1  # and nothing came from elsewhere
    for node in NODES:
        assert texts(cluster, node) == [stored("before")], node

    # The MTA's retry of the deferred message.
    assert deliver(cluster, "n1", "during").startswith(f"250 2.0.0 <{USER}> Saved")
    cluster.wait_converged(USER, until=lambda s: len(s["INBOX"]["messages"]) == 2)
    for node in NODES:
        assert texts(cluster, node) == [stored("before"), stored("during")], node
        assert status(cluster, node)["messages"] == 2
    log = (cluster.dir / "n1" / "replicad.log").read_text()
    assert "event=lmtp.not_saved" in log and "status=durability" in log, json.dumps(
        log.splitlines()[-20:]
    )
