"""A node behind on the log: ``cluster_status`` shows what it has left (cluster/catchup.py).

What ``replicator status -f json`` prints as ``catchup`` per peer is this
document's ``peers[].catchup``, computed by the node from its log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from replicad.cluster.runtime import ClusterSettings
from tests.sim.network import SimNetwork
from tests.sim.test_sim_cluster import SimNode, body, converged, sim_cluster, wait_for
from tests.sim.test_sim_reconnect import linked, rooted


def peer_row(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in status["peers"] if p["name"] == name)


async def test_a_peer_behind_shows_changes_and_bytes_left_until_caught_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net, settings=ClusterSettings(compress=False)) as nodes:
        await wait_for("a root", lambda: rooted(nodes))

        async def all_linked() -> bool:
            return linked(nodes)

        await wait_for("every link", all_linked)
        n1: SimNode = nodes["n1"]
        await n1.writes.append("alice", "INBOX", body(0))  # n1 masters INBOX from here on
        await wait_for("convergence", lambda: converged(nodes))
        assert peer_row(await n1.node.status(), "n3")["catchup"] is None  # nothing left

        net.partition({"n1", "n2"}, {"n3"})
        sizes = 0
        for i in range(1, 31):
            sizes += len(body(i))
            await n1.writes.append("alice", "INBOX", body(i))
        await trio.sleep(1)
        row = peer_row(await n1.node.status(), "n3")
        catchup = row["catchup"]
        assert catchup is not None and catchup["changes_left"] == row["outbox"] >= 30
        assert catchup["bytes_left"] == sizes and catchup["bytes_estimated"] is False
        assert peer_row(await n1.node.status(), "n2")["catchup"] is None

        net.heal()
        await wait_for("n3 caught up", lambda: converged(nodes))

        async def nothing_left() -> bool:
            return peer_row(await n1.node.status(), "n3")["catchup"] is None

        await wait_for("no catch-up left", nothing_left)
