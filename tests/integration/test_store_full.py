"""A full store: saves fail with exit 75 and a clear message, nothing earlier is lost,
and the node keeps serving reads (I7: the node stays up; the error is retryable)."""

from __future__ import annotations

import json
import os
import random
import re
import signal
from typing import Any

import pytest

from replicad.cli.cluster_cmd import create_cluster
from tests.conftest import NodeProcess, free_port
from tests.integration.test_cluster_replication import NODES, LocalCluster
from tests.integration.test_operations import add_metrics, http_get, scrape, until


def test_full_store_fails_saves_with_75_and_keeps_serving(node_factory: type[NodeProcess]) -> None:
    node = node_factory()
    node.set_option("node", "map_size", '"2MiB"')
    node.start()
    rng = random.Random(5)
    saved: dict[int, bytes] = {}
    failure = None
    for i in range(200):  # 2 MiB cannot hold 200 incompressible 64 KiB messages
        body = f"Subject: filler {i}\r\n\r\n".encode() + rng.randbytes(64 * 1024)
        result = node.cli("save", "-u", "alice", input=body)
        if result.returncode != 0:
            failure = result
            break
        saved[int(result.stdout)] = body
    assert failure is not None, "the store never filled up"
    assert failure.returncode == 75, failure.stderr
    assert b"full" in failure.stderr.lower()
    assert len(saved) >= 3

    # Earlier saves are intact and the node still answers reads.
    for uid in (min(saved), max(saved)):
        text = node.cli("fetch", "-u", "alice", "text", "mailbox", "INBOX", "uid", str(uid))
        assert text.returncode == 0 and text.stdout == saved[uid]
    status = node.cli("-f", "json", "mailbox", "status", "-u", "alice", "INBOX")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["messages"] == len(saved)
    listing = node.cli("-f", "json", "fetch", "-u", "alice", "uid", "mailbox", "INBOX")
    assert [r["uid"] for r in json.loads(listing.stdout)] == sorted(saved)

    # And it still shuts down cleanly.
    assert node.stop() == 0


def test_a_full_replica_degrades_serves_reads_and_catches_up_after_a_reload(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A 3-node cluster where n3's map ceiling is small (I1, I7): n3 fills up
    while n1 takes mail, and must not exit (under systemd that would be a
    restart loop): it serves reads, /health says why, and it catches up by
    itself once node.map_size is raised and reloaded with SIGHUP."""
    c = LocalCluster(tmp_path_factory.mktemp("full"))
    try:
        create_cluster(c.dir, len(NODES), None)
        port = free_port()
        add_metrics(c.config("n3"), port)
        config = c.config("n3")
        text = re.sub(r"^map_size = .*$", 'map_size = "2MiB"', config.read_text(), flags=re.M)
        config.write_text(text)
        c.up()
        c.wait_root()
        pid = c.running_pid("n3")
        rng = random.Random(7)
        count = 40  # 40 incompressible 64 KiB messages cannot fit in 2 MiB
        for i in range(count):
            body = f"Subject: big {i}\r\n\r\n".encode() + rng.randbytes(64 * 1024)
            result = c.on("n1", "save", "-u", "alice", input=body)
            assert result.returncode == 0, result.stderr

        def health() -> dict[str, Any]:
            status, body = http_get(port, "/health")
            document: dict[str, Any] = json.loads(body)
            document["http"] = status
            return document

        document = until(
            "n3 reports its store full",
            lambda: (
                (d := health())["status"] == "degraded"
                and any("store full" in r for r in d["reasons"])
                and d
            ),
            timeout=60,
        )
        assert document["http"] == 200
        assert scrape(port)[("replicad_store_full", ())] == 1
        # Still the same process, still serving reads.
        assert c.running_pid("n3") == pid
        held = c.json_on("n3", "mailbox", "status", "-u", "alice", "INBOX")[0]["messages"]
        assert 1 <= held < count
        # A write on n3 itself gets a clear temporary error.
        refused = c.on(
            "n3", "save", "-u", "bob", input=b"Subject: x\r\n\r\n" + rng.randbytes(65536)
        )
        assert refused.returncode == 75, refused.stderr
        assert c.running_pid("n3") == pid

        text = re.sub(r"^map_size = .*$", 'map_size = "256MiB"', config.read_text(), flags=re.M)
        config.write_text(text)
        os.kill(pid, signal.SIGHUP)
        c.wait_converged("alice", until=lambda s: len(s["INBOX"]["messages"]) == count)
        until("n3 healthy again", lambda: health()["status"] == "up", timeout=60)
        assert c.running_pid("n3") == pid
        assert "event=store-full" in (c.dir / "n3" / "replicad.log").read_text()
    finally:
        c.stop_all()
