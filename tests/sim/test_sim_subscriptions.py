"""IMAP subscriptions across simulated nodes (resync.md §10): made on one
node, seen by an IMAP session on another; written on both sides of a
partition, converged after the heal (I4, I7); carried by a SUBSCRIPTIONS
exchange where the change stream could not (a dropped backlog, a register
only one node holds)."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from replicad.cluster.runtime import ClusterSettings
from replicad.imap.mailaccess import MailAccess
from replicad.store import subscriptions
from replicad.store.subscriptions import Register, SubscriptionEntry
from tests.sim.network import SimNetwork
from tests.sim.test_sim_cluster import NAMES, SimNode, sim_cluster, wait_for


async def rooted(nodes: dict[str, SimNode]) -> bool:
    roots = {n.node.election.root for n in nodes.values()}
    return len(roots) == 1 and None not in roots


async def registers(node: SimNode) -> list[SubscriptionEntry]:
    return await node.store.subscriptions.entries()


async def same_registers(nodes: dict[str, SimNode]) -> bool:
    tables = [await registers(n) for n in nodes.values()]
    return all(t == tables[0] for t in tables) and bool(tables[0])


async def test_a_subscription_made_on_one_node_is_listed_by_imap_on_another(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted(nodes))
        await nodes["n1"].writes.set_subscribed("alice", "Lists/never-created", True)
        n3 = nodes["n3"]
        imap = MailAccess(n3.store, n3.writes, None, catch_up=5.0)

        async def seen() -> bool:
            return await imap.subscriptions("alice") == {"Lists/never-created"}

        await wait_for("the subscription on n3", seen)
        # And the other way: an UNSUBSCRIBE through n3's IMAP reaches n1.
        await imap.subscribe("alice", "Lists/never-created", False)
        assert await imap.subscriptions("alice") == set()  # its own write, at once

        async def gone() -> bool:
            return await nodes["n1"].store.subscriptions.subscribed("alice") == set()

        await wait_for("the unsubscription on n1", gone)


async def test_subscriptions_on_both_sides_of_a_partition_converge_after_the_heal(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted(nodes))
        for name in ("Old", "Kept", "Both"):
            await nodes["n1"].writes.set_subscribed("alice", name, True)
        await wait_for("the first subscriptions everywhere", lambda: same_registers(nodes))

        net.partition({"n1", "n2"}, {"n3"})
        await trio.sleep(10)  # each side settles on a root of its own (I7)
        await nodes["n1"].writes.set_subscribed("alice", "Left", True)
        await nodes["n3"].writes.set_subscribed("alice", "Right", True)
        await nodes["n3"].writes.set_subscribed("alice", "Old", False)
        await nodes["n1"].writes.set_subscribed("alice", "Both", False)
        await trio.sleep(1)
        await nodes["n3"].writes.set_subscribed("alice", "Both", True)  # the later one wins
        assert "Right" not in await nodes["n1"].store.subscriptions.subscribed("alice")

        net.heal()
        await wait_for("convergence", lambda: same_registers(nodes))
        for node in nodes.values():
            assert await node.store.subscriptions.subscribed("alice") == {
                "Kept",
                "Left",
                "Right",
                "Both",
            }


async def test_a_dropped_backlog_is_made_good_by_a_push(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net, max_lag=3) as nodes:
        await wait_for("a root", lambda: rooted(nodes))
        net.partition({"n1", "n2"}, {"n3"})
        await trio.sleep(10)
        for n in range(8):
            await nodes["n1"].writes.set_subscribed("alice", f"box{n}", True)
        marks = await nodes["n1"].store.resync_marks()
        assert any(m.peer == "n3" and m.mailbox == subscriptions.SUBSCRIPTIONS_MARK for m in marks)
        net.heal()
        await wait_for("convergence", lambda: same_registers(nodes))
        assert len(await nodes["n3"].store.subscriptions.subscribed("alice")) == 8


async def test_anti_entropy_finds_a_register_no_change_carried(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    settings = ClusterSettings(compress=False, verify_interval=5.0)
    async with sim_cluster(tmp_path, net, settings=settings) as nodes:
        await wait_for("a root", lambda: rooted(nodes))
        await nodes["n1"].writes.set_subscribed("alice", "Shared", True)
        await wait_for("the first subscription everywhere", lambda: same_registers(nodes))
        # A register written into n2's store without a log entry (as a
        # store restored from an older backup would hold one).
        n2 = nodes["n2"].store
        stamp = n2.index.clock.now()
        hidden = SubscriptionEntry("alice", "Hidden", Register(stamp, True))
        await n2.writer.submit(lambda txn: subscriptions.adopt(n2._dbs, txn, hidden))
        await wait_for("anti-entropy", lambda: same_registers(nodes), timeout=60)
        for name in NAMES:
            subscribed = await nodes[name].store.subscriptions.subscribed("alice")
            assert subscribed == {"Shared", "Hidden"}
