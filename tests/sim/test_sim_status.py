"""What a node tells of itself in its PING replies, as the status that
``replicad top`` reads shows it (protocol-spec/verbs.md PING)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from tests.sim.network import SimNetwork
from tests.sim.test_sim_cluster import sim_cluster, wait_for


async def test_each_node_s_imap_sessions_reach_its_peers_status(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        sessions = {"n1": 4, "n2": 7, "n3": 0}
        for name, node in nodes.items():
            node.node.imap_sessions = lambda n=sessions[name]: n

        async def told() -> bool:
            status = await nodes["n1"].node.status()
            peers = {p["name"]: p["imap_sessions"] for p in status["peers"]}
            return status["imap_sessions"] == 4 and peers == {"n2": 7, "n3": 0}

        await wait_for("the peers' session counts at n1", told)
        # A peer cut off is no longer heard from: its count is not shown.
        net.partition({"n1", "n2"}, {"n3"})

        async def forgotten() -> bool:
            status = await nodes["n1"].node.status()
            return {p["name"]: p["imap_sessions"] for p in status["peers"]}["n3"] is None

        await wait_for("n3's count gone once its link is", forgotten)
