"""A full store: saves fail with exit 75 and a clear message, nothing earlier is lost,
and the node keeps serving reads (I7: the node stays up; the error is retryable)."""

from __future__ import annotations

import json
import random

from tests.conftest import NodeProcess


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
