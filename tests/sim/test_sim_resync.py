"""Split brain and its repair (W4, I2-I6) in the deterministic simulator.

Both sides of a partition write the same mailbox, each through its own
master; after the heal the resync layer (replicad.cluster.resync) must bring
every node to one state in which nothing acknowledged is lost.
"""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from replicad.uidset import UidSet
from tests.sim.network import SimNetwork
from tests.sim.test_sim_cluster import NAMES, body, converged, sim_cluster, wait_for


async def test_w4_partition_writes_on_both_sides_converge(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:

        async def rooted() -> bool:
            roots = {n.node.election.root for n in nodes.values()}
            linked = all(len(n.node.sessions) == len(NAMES) - 1 for n in nodes.values())
            return linked and len(roots) == 1 and None not in roots

        await wait_for("a root", rooted)
        before = []
        for i in range(10):
            before.append(await nodes["n1"].writes.append("alice", "INBOX", body(i)))
        # I5 example of the seed on UID 1: from (\Flagged) ...
        await nodes["n1"].writes.store_flags("alice", "INBOX", UidSet.of([1]), "add", ["\\Flagged"])
        await wait_for("convergence", lambda: converged(nodes))

        net.partition({"n1"}, {"n2", "n3"})
        await trio.sleep(12)  # both sides notice, the majority side elects its own root

        side_a = [
            await nodes["n1"].writes.append("alice", "INBOX", body(100 + i)) for i in range(5)
        ]
        side_b = [
            await nodes["n2"].writes.append("alice", "INBOX", body(200 + i)) for i in range(5)
        ]
        # ... +\Answered on one side, +\Seen -\Flagged on the other (later: wins per flag).
        await nodes["n1"].writes.store_flags(
            "alice", "INBOX", UidSet.of([1]), "add", ["\\Answered"]
        )
        await trio.sleep(1)
        await nodes["n3"].writes.store_flags("alice", "INBOX", UidSet.of([1]), "add", ["\\Seen"])
        await nodes["n3"].writes.store_flags(
            "alice", "INBOX", UidSet.of([1]), "remove", ["\\Flagged"]
        )
        # Conflicting flag changes on all ten old messages.
        await nodes["n1"].writes.store_flags(
            "alice", "INBOX", UidSet.of(range(2, 11)), "add", ["$A"]
        )
        await nodes["n2"].writes.store_flags(
            "alice", "INBOX", UidSet.of(range(2, 11)), "add", ["$B"]
        )
        # The same UIDs were handed out on both sides (I2 is at stake).
        assert [a.uid for a in side_a] == [b.uid for b in side_b] == list(range(11, 16))

        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)

        infos = await nodes["n1"].store.fetch("alice", "INBOX", UidSet.parse("1:*"))
        by_guid = {i.guid: i for i in infos}
        for saved in [*before, *side_a, *side_b]:
            assert saved.guid in by_guid, "I6: an acknowledged message was lost"
        assert len(infos) == 20
        # I2: both colliding messages of each UID moved above every UID used.
        for saved in [*side_a, *side_b]:
            assert by_guid[saved.guid].uid >= 16
        tombs = {uid for uid, _, _ in await nodes["n1"].store.tombstones("alice", "INBOX")}
        assert set(range(11, 16)) <= tombs
        # I5: the seed's example.
        assert by_guid[before[0].guid].flags == ("\\Answered", "\\Seen")
        for saved in before[1:]:
            assert set(by_guid[saved.guid].flags) == {"$A", "$B"}
        # Every node holds the same new UIDs (converged() compared whole states).
        for name in NAMES:
            status = await nodes[name].store.mailbox_status("alice", "INBOX")
            assert status.uidnext == 26 and status.messages == 20
