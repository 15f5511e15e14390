"""Reconnecting after a heal, and not hammering a dead peer (cluster/redial.py, links.py).

A healed link is up again within a fraction of a second, however long the
partition lasted (the dialler's backoff has reached its cap by then); a
peer that is gone is dialled no more often than the backoff allows, the
reachability probes keeping watch in between.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from replicad.cluster.runtime import ClusterSettings
from tests.sim.network import SimNetwork
from tests.sim.test_sim_cluster import NAMES, SimNode, sim_cluster, wait_for

#: Target: a link up at most this long after the heal (simulated seconds).
RELINK_S = 0.25
SETTINGS = ClusterSettings(compress=False)


async def rooted(nodes: dict[str, SimNode]) -> bool:
    roots = {n.node.election.root for n in nodes.values()}
    return len(roots) == 1 and None not in roots


def linked(nodes: dict[str, SimNode]) -> bool:
    return all(set(n.node.sessions) == set(NAMES) - {n.name} for n in nodes.values())


def most_dials_allowed(seconds: float, settings: ClusterSettings) -> int:
    """Dials the backoff permits in ``seconds`` with every wait at its
    shortest (jitter 0.5), plus the first one."""
    dials, elapsed, delay = 1, 0.0, settings.backoff_min
    while True:
        elapsed += delay * 0.5
        if elapsed > seconds:
            return dials
        dials += 1
        delay = min(delay * 2, settings.backoff_max)


async def test_a_healed_partition_relinks_within_a_quarter_second(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net, settings=SETTINGS) as nodes:
        await wait_for("a root", lambda: rooted(nodes))
        await wait_for("every link", lambda: _linked_async(nodes))
        assert linked(nodes)
        for partition_s in (2.0, 12.0, 30.0):  # the backoff at its cap after the longer ones
            net.partition({"n1", "n2"}, {"n3"})
            await trio.sleep(partition_s)
            assert "n3" not in nodes["n1"].node.sessions
            net.heal()
            healed = trio.current_time()
            with trio.move_on_after(5.0):
                while not linked(nodes):
                    await trio.sleep(0.005)
            took = trio.current_time() - healed
            assert linked(nodes), f"not relinked 5 s after a {partition_s} s partition"
            assert took <= RELINK_S, f"relinked {took:.3f} s after a {partition_s} s partition"


async def test_a_dead_peer_is_dialled_no_more_than_the_backoff_allows(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net, settings=SETTINGS) as nodes:
        await wait_for("a root", lambda: rooted(nodes))
        await wait_for("every link", lambda: _linked_async(nodes))
        # n3 goes away: its listener is gone and its links cut (n3 dials nobody:
        # it sorts last).
        net.partition({"n1", "n2"}, {"n3"})
        net.crashed("n3")
        net.heal()
        before = dict(net.dials), dict(net.probes)
        window_s = 60.0
        await trio.sleep(window_s)
        for dialler in ("n1", "n2"):
            dials = net.dials.get((dialler, "n3"), 0) - before[0].get((dialler, "n3"), 0)
            probes = net.probes.get((dialler, "n3"), 0) - before[1].get((dialler, "n3"), 0)
            assert 1 <= dials <= most_dials_allowed(window_s, SETTINGS), (dialler, dials)
            # The probes kept watch in between, at about their interval.
            assert probes >= window_s / SETTINGS.probe_interval / 2, (dialler, probes)
        # The live pair never lost its link, and never dialled.
        assert "n2" in nodes["n1"].node.sessions


async def _linked_async(nodes: dict[str, SimNode]) -> bool:
    return linked(nodes)
