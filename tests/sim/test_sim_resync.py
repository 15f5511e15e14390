"""Split brain and its repair (W4, I2-I6) in the deterministic simulator.

Both sides of a partition write the same mailbox, each through its own
master; after the heal the resync layer (replicad.cluster.resync) must bring
every node to one state in which nothing acknowledged is lost.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from replicad.cluster import resync
from replicad.cluster.durability import DurabilityLevel
from replicad.cluster.masters import Granularity, master_key
from replicad.cluster.runtime import ClusterSettings
from replicad.errors import DurabilityError, ReplicadError
from replicad.store.index import AppendRequest
from replicad.store.schema import message_key
from replicad.uidset import UidSet
from tests.sim.harness import deterministic
from tests.sim.network import SimNetwork
from tests.sim.test_sim_catchup import peer_row
from tests.sim.test_sim_cluster import (
    NAMES,
    SimNode,
    body,
    converged,
    sim_cluster,
    wait_for,
)


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
        # The refused changes marked where the lineages split: incremental SYNCs.
        counts = [nodes[n].node.resync.status() for n in NAMES]
        assert sum(int(c["incremental"]) for c in counts) >= 1
        assert sum(int(c["fallbacks"]) for c in counts) == 0


async def rooted_and_linked(nodes: dict[str, SimNode]) -> bool:
    roots = {n.node.election.root for n in nodes.values()}
    linked = all(len(n.node.sessions) == len(NAMES) - 1 for n in nodes.values())
    return linked and len(roots) == 1 and None not in roots


async def test_the_expunged_uid_case_of_the_seed(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Seed 001's FIXME: one side expunged UID n, the other reused it (I2, I3)."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        for i in range(3):
            await nodes["n1"].writes.append("alice", "INBOX", body(i))
        await wait_for("convergence", lambda: converged(nodes))
        net.partition({"n1"}, {"n2", "n3"})
        await trio.sleep(12)
        gone = await nodes["n1"].writes.append("alice", "INBOX", body(10))
        await nodes["n1"].writes.expunge("alice", "INBOX", UidSet.of([gone.uid]))
        reused = await nodes["n2"].writes.append("alice", "INBOX", body(20))
        assert gone.uid == reused.uid == 4
        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
        infos = await nodes["n3"].store.fetch("alice", "INBOX", UidSet.parse("1:*"))
        by_guid = {i.guid: i.uid for i in infos}
        assert gone.guid not in by_guid  # the expunge holds
        assert by_guid[reused.guid] >= 5  # moved above every UID either side used
        assert 4 not in by_guid.values()  # UID 4 named two messages: retired (I2)


async def test_copies_made_on_both_sides_at_one_uid_are_two_instances(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """resync.md §4, copies are instances (I6): both sides of a partition MOVE
    one message into Archive at the same UID; one side then deletes its copy,
    the other keeps it.  The kept copy survives the heal; the deleted one
    stays deleted; the UID both sides gave out is retired (I2)."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        original = await nodes["n1"].writes.append("alice", "INBOX", body(1))
        [held] = await nodes["n1"].store.fetch("alice", "INBOX", UidSet.of([original.uid]))
        await nodes["n1"].writes.create_mailbox("alice", "Archive")
        await wait_for("convergence", lambda: converged(nodes))
        net.partition({"n1"}, {"n2", "n3"})
        await trio.sleep(12)
        moves = {}
        for side in ("n1", "n2"):
            writes = nodes[side].writes
            copied = await writes.copy("alice", "INBOX", UidSet.of([original.uid]), "Archive")
            await writes.expunge("alice", "INBOX", UidSet.of([original.uid]))
            [moves[side]] = copied.appended
        assert moves["n1"].uid == moves["n2"].uid == 1
        # A copy is an instance of its own: three GUIDs for one body.
        assert len({original.guid, moves["n1"].guid, moves["n2"].guid}) == 3
        await nodes["n1"].writes.expunge("alice", "Archive", UidSet.of([1]))
        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
        for name in NAMES:
            inbox = await nodes[name].store.fetch("alice", "INBOX", UidSet.parse("1:*"))
            archive = await nodes[name].store.fetch("alice", "Archive", UidSet.parse("1:*"))
            assert inbox == []
            assert [m.guid for m in archive] == [moves["n2"].guid], name
            assert archive[0].body_hash == held.body_hash  # the one body, shared
            assert archive[0].uid > 1  # UID 1 named two instances: retired (I2)


async def test_the_same_mailbox_created_on_both_sides_is_merged(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """INBOX created by the first delivery on each side: one mailbox after the
    heal, every message in it, under a UIDVALIDITY neither side had (I2, I6)."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        net.partition({"n1"}, {"n2", "n3"})
        await trio.sleep(12)
        a = [await nodes["n1"].writes.append("carol", "INBOX", body(i)) for i in range(3)]
        b = [await nodes["n3"].writes.append("carol", "INBOX", body(10 + i)) for i in range(2)]

        async def replicated() -> bool:
            try:
                status = await nodes["n2"].store.mailbox_status("carol", "INBOX")
            except ReplicadError:
                return False
            return status.messages == 2

        await wait_for("the majority side's copies", replicated)
        side_a = await nodes["n1"].store.mailbox_status("carol", "INBOX")
        side_b = await nodes["n2"].store.mailbox_status("carol", "INBOX")
        assert side_a.guid != side_b.guid
        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
        status = await nodes["n2"].store.mailbox_status("carol", "INBOX")
        assert status.guid in (side_a.guid, side_b.guid)
        assert status.uidvalidity > max(side_a.uidvalidity, side_b.uidvalidity)
        infos = await nodes["n2"].store.fetch("carol", "INBOX", UidSet.parse("1:*"))
        assert {i.guid for i in infos} == {x.guid for x in [*a, *b]}
        assert [m.name for m in await nodes["n1"].store.list_mailboxes("carol")] == ["INBOX"]


async def test_a_renamed_mailbox_keeps_the_other_side_s_writes(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        await nodes["n1"].writes.create_mailbox("alice", "Work")
        await nodes["n1"].writes.append("alice", "Work", body(1))
        await wait_for("convergence", lambda: converged(nodes))
        net.partition({"n1"}, {"n2", "n3"})
        await trio.sleep(12)
        await nodes["n1"].writes.rename_mailbox("alice", "Work", "Projects")
        written = await nodes["n2"].writes.append("alice", "Work", body(2))
        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
        infos = await nodes["n3"].store.fetch("alice", "Projects", UidSet.parse("1:*"))
        assert written.guid in {i.guid for i in infos}
        names = [m.name for m in await nodes["n3"].store.list_mailboxes("alice")]
        assert "Work" not in names


async def test_the_background_check_repairs_a_lost_mailbox_and_a_damaged_flag(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Seed goal 2: silent damage and manual edits, which leave no mark (I8)."""
    net = SimNetwork()
    settings = ClusterSettings(compress=False, verify_interval=5.0)
    async with sim_cluster(tmp_path, net, settings) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        await nodes["n1"].writes.create_mailbox("alice", "Work")
        for i in range(3):
            await nodes["n1"].writes.append("alice", "Work", body(i))
            await nodes["n1"].writes.append("alice", "INBOX", body(10 + i))
        await nodes["n1"].writes.store_flags("alice", "INBOX", UidSet.of([2]), "add", ["\\Seen"])
        await wait_for("convergence", lambda: converged(nodes))
        healthy = await nodes["n1"].store.logical_state()
        victim = nodes["n3"].store

        def damage(txn: Any) -> None:
            # By hand, behind replication's back: no change record, no mark,
            # and no record of a client's DELETE either (lost, not deleted).
            lost = victim.index._mailbox_guid(txn, "alice", "Work")
            victim.index.delete_mailbox(txn, "alice", "Work")
            txn.delete(lost, db=victim.index.dbs.deleted)
            guid = victim.index._mailbox_guid(txn, "alice", "INBOX")
            row = victim.index._message(txn, guid, 2)
            assert row is not None
            txn.put(
                message_key(guid, 2),
                replace(row, flags=("\\Deleted",)).encode(),
                db=victim.index.dbs.messages,
            )

        await victim.writer.submit(damage)
        assert not await converged(nodes)
        assert not await victim.resync_marks()
        await wait_for("the background check's repair", lambda: converged(nodes), timeout=60)
        repaired = await victim.fetch("alice", "INBOX", UidSet.of([2]))
        assert repaired[0].flags == ("\\Seen",)
        assert len(await victim.fetch("alice", "Work", UidSet.parse("1:*"))) == 3
        assert [m[:3] for m in await victim.logical_state()] == [m[:3] for m in healthy]


async def test_a_peer_whose_outbox_overflowed_is_resynced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """Its stream dropped changes (cluster.max_outbox) and resumed after them:
    the resync marks bring back what it missed (I4, I6)."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net, max_lag=10) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        for i in range(20):
            await nodes["n1"].writes.append("alice", "INBOX", body(i))
        await wait_for("convergence", lambda: converged(nodes))
        net.partition({"n1", "n2"}, {"n3"})
        await trio.sleep(12)
        for i in range(30):  # more than max_lag: n3's backlog is dropped
            await nodes["n1"].writes.store_flags(
                "alice", "INBOX", UidSet.of([1 + i % 20]), "add", [f"$K{i}"]
            )
        await nodes["n1"].writes.expunge("alice", "INBOX", UidSet.of([3]))
        reasons = {m.reason for n in ("n1", "n2") for m in await nodes[n].store.resync_marks()}
        assert "outbox-overflow" in reasons
        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
        status = await nodes["n3"].store.mailbox_status("alice", "INBOX")
        assert status.messages == 19
        # The overflow marks say from which modseq n3 missed changes: the
        # SYNCs were incremental, and their rest digests matched.
        counts = [nodes[n].node.resync.status() for n in NAMES]
        assert sum(int(c["incremental"]) for c in counts) >= 1
        assert sum(int(c["fallbacks"]) for c in counts) == 0


async def test_a_wrong_incremental_hint_falls_back_to_a_whole_sync(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A mark claims n3 may differ only above its HIGHESTMODSEQ, but its copy
    was damaged below it (by hand, no mark): the rest digest of the
    incremental SYNC differs, the master pulls the whole state, and the
    damage is repaired like any divergence."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        for i in range(5):
            await nodes["n1"].writes.append("alice", "INBOX", body(i))
        await nodes["n1"].writes.store_flags("alice", "INBOX", UidSet.of([2]), "add", ["\\Seen"])
        await wait_for("convergence", lambda: converged(nodes))
        key = master_key(Granularity.MAILBOX, "alice", "INBOX")
        master = nodes[await nodes["n3"].node.master_of(key, trio.current_time() + 10)]
        victim = nodes["n3"].store
        status = await victim.mailbox_status("alice", "INBOX")

        def damage(txn: Any) -> None:
            row = victim.index._message(txn, status.guid, 2)
            assert row is not None
            txn.put(
                message_key(status.guid, 2),
                replace(row, flags=("\\Deleted",)).encode(),
                db=victim.index.dbs.messages,
            )

        await victim.writer.submit(damage)
        await master.store.mark_resync(["n3"], status.guid, "conflict", status.highestmodseq + 1)
        await master.node.resync.scan_marks()
        await wait_for("the repair", lambda: converged(nodes), timeout=60)
        assert (await victim.fetch("alice", "INBOX", UidSet.of([2])))[0].flags == ("\\Seen",)
        counts = master.node.resync.status()
        assert (counts["incremental"], counts["fallbacks"]) == (0, 1)

        # Repaired, the same hint holds: an incremental SYNC, unless asked --full.
        status = await victim.mailbox_status("alice", "INBOX")
        done = int(master.node.resync.status()["done"])  # type: ignore[call-overload]

        async def no_marks() -> bool:
            return not await master.store.resync_marks()

        async def resynced(count: int) -> bool:
            return int(master.node.resync.status()["done"]) >= count  # type: ignore[call-overload]

        await master.store.mark_resync(["n3"], status.guid, "conflict", status.highestmodseq + 1)
        await master.node.sync(["alice"], "n3", full=True)
        await wait_for("the full resync", lambda: resynced(done + 1))
        counts = master.node.resync.status()
        assert (counts["incremental"], counts["fallbacks"]) == (0, 1)
        await wait_for("the mark cleared", lambda: no_marks())
        await master.store.mark_resync(["n3"], status.guid, "conflict", status.highestmodseq + 1)
        await master.node.resync.scan_marks()
        await wait_for("the incremental resync", lambda: no_marks())
        counts = master.node.resync.status()
        assert (counts["incremental"], counts["fallbacks"]) == (1, 1)


async def test_an_import_batch_replicates_without_resync(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A batch shares one modseq over a record per message: not another lineage."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        await nodes["n1"].writes.append("alice", "INBOX", body(0))
        # Through the master of alice/INBOX, so the batch is one transaction.
        key = master_key(Granularity.MAILBOX, "alice", "INBOX")
        master = await nodes["n1"].node.master_of(key, trio.current_time() + 5)
        items = [AppendRequest(body(i)) for i in range(1, 6)]
        appended = await nodes[master].writes.append_many("alice", "INBOX", items)
        assert len({a.modseq for a in appended}) == 1  # one modseq, five records
        await wait_for("convergence", lambda: converged(nodes))
        for node in nodes.values():
            assert await node.store.resync_marks() == []
            assert node.node.resync.merged_here == 0


async def test_a_large_resync_is_sent_in_several_updates(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bodies beyond one frame's worth go in further UPDATEs (a node that lost
    a big mailbox); the copy is complete after the last (resync.md §9)."""
    monkeypatch.setattr(resync, "UPDATE_BODY_BYTES", 3000)
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        big = [b"Subject: big\r\n\r\n" + bytes([65 + i]) * 1000 for i in range(12)]
        for data in big:
            await nodes["n1"].writes.append("alice", "INBOX", data)
        await wait_for("convergence", lambda: converged(nodes))
        key = master_key(Granularity.MAILBOX, "alice", "INBOX")
        master = await nodes["n1"].node.master_of(key, trio.current_time() + 5)
        victim = next(n for n in NAMES if n != master)

        def lose(txn: Any) -> None:  # by hand: no record, no mark
            store = nodes[victim].store
            store.index._drop_prefix(txn, store.index.dbs.messages, b"")  # all messages
            store.index._drop_prefix(txn, store.index.dbs.changes, b"")
            store.index._drop_prefix(txn, store.index.dbs.names, b"")
            store.index._drop_prefix(txn, store.index.dbs.mailboxes, b"")
            store.index._drop_prefix(txn, store.index.dbs.blobs, b"")  # and the bodies
            store.index._drop_prefix(txn, store.index.dbs.blob_refs, b"")

        await nodes[victim].store.writer.submit(lose)
        before = nodes[master].node.resync.updates_sent
        await nodes[master].node.sync(["alice"], victim)
        await wait_for("the resync", lambda: converged(nodes), timeout=60)
        assert nodes[master].node.resync.updates_sent - before >= 4  # 12 KB in 3 KB parts


#: The smallest frame limit a node may announce in HELLO (handshake.md).
SMALL_FRAME = 64 * 1024


async def _a_merge_of_big_bodies(nodes: dict[str, SimNode], net: SimNetwork) -> None:
    """Both sides of a partition write 120 KB of bodies to INBOX at the same
    UIDs: the master's merge after the heal puts the other side's messages
    and moves its own above the collisions, and the logged merge carries
    them to the follower that was not resynced."""
    await wait_for("a root", lambda: rooted_and_linked(nodes))
    for i in range(3):
        await nodes["n1"].writes.append("alice", "INBOX", body(i))
    await wait_for("convergence", lambda: converged(nodes))
    net.partition({"n1"}, {"n2", "n3"})
    await trio.sleep(12)
    for side, name in enumerate(("n1", "n2")):
        for i in range(6):
            # Incompressible (bodies cross the wire as the store keeps them).
            noise = random.Random(side * 100 + i).randbytes(20_000)
            data = b"Subject: big %d %d\r\n\r\n" % (side, i) + noise
            await nodes[name].writes.append("alice", "INBOX", data)
    net.heal()
    await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
    status = await nodes["n3"].store.mailbox_status("alice", "INBOX")
    assert status.messages == 15
    # Each UPDATE of a resync split in parts carries the bodies its part
    # needs, also those an earlier part released (a moved message's old UID
    # is tombstoned first): none is refused for a missing body.
    assert all(n.node.resync.failed == 0 for n in nodes.values())


def _small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every link at the smallest frame limit, UPDATEs and merge parts at half of it."""
    import functools

    from replicad.cluster import links
    from replicad.protocol.connection import LinkConfig
    from replicad.transport import link

    monkeypatch.setattr(links, "LinkConfig", functools.partial(LinkConfig, max_frame=SMALL_FRAME))
    # Reads within the decoder's bound of two frames' worth of input.
    monkeypatch.setattr(link, "RECEIVE_SIZE", SMALL_FRAME)
    monkeypatch.setattr(resync, "UPDATE_BODY_BYTES", SMALL_FRAME // 2)


async def test_a_logged_merge_above_the_frame_limit_reaches_every_follower(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge is logged in parts that each fit in a frame (resync.md §9):
    every follower applies them and no link fails on one (I4, I9)."""
    from replicad.model import planparts

    _small_frames(monkeypatch)
    monkeypatch.setattr(planparts, "PART_BYTES", SMALL_FRAME // 2)
    with deterministic(2, autojump_clock):  # a schedule whose merge needs a big frame
        net = SimNetwork()
        async with sim_cluster(tmp_path, net) as nodes:
            await _a_merge_of_big_bodies(nodes, net)
            assert sum(n.node.resync.merged_here for n in nodes.values()) >= 1
            assert all(n.node.stats["changes_oversized"] == 0 for n in nodes.values())


async def test_a_change_too_large_for_the_link_is_skipped_and_resynced(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change record whose frame exceeds the peer's limit (here: a merge
    logged whole) is never resent on every reconnect, which would stop that
    peer's stream for good (I9): the peer is marked for a resync, whose
    UPDATEs are bounded, and the stream goes on after it."""
    from replicad.model import planparts

    _small_frames(monkeypatch)
    monkeypatch.setattr(planparts, "PART_BYTES", 1 << 30)
    # A schedule whose merge needs a big frame (picked again when the links'
    # timing changed: the redial probes).
    with deterministic(1, autojump_clock):
        net = SimNetwork()
        async with sim_cluster(tmp_path, net) as nodes:
            await _a_merge_of_big_bodies(nodes, net)
            assert sum(n.node.stats["changes_oversized"] for n in nodes.values()) >= 1


async def test_an_overflowed_follower_is_brought_back_without_a_merge(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A follower whose backlog the log dropped is sent no later change of
    that mailbox until a resync closes the gap (streamgaps.py): its
    HIGHESTMODSEQ never passes entries it lacks, so the resync's UPDATE
    brings exactly what it lacks, the master's copy is not re-stamped (no
    merge logged to every follower), and each body crosses the network
    once.  Before, the three changes streamed after the heal made the
    master merge."""
    with deterministic(1, autojump_clock):
        net = SimNetwork()
        async with sim_cluster(tmp_path, net, max_lag=10) as nodes:
            await wait_for("a root", lambda: rooted_and_linked(nodes))
            await nodes["n1"].writes.append("alice", "INBOX", body(0))
            await wait_for("convergence", lambda: converged(nodes))
            key = master_key(Granularity.MAILBOX, "alice", "INBOX")
            master = await nodes["n1"].node.master_of(key, trio.current_time() + 5)
            victim, other = (n for n in NAMES if n != master)
            net.partition({master, other}, {victim})
            await trio.sleep(12)
            size = 0
            for i in range(30):  # more than max_lag: the victim's backlog is dropped
                # Incompressible: bodies cross the wire as the store keeps them.
                data = b"Subject: %d\r\n\r\n" % i + random.Random(i).randbytes(4000)
                size += len(data)
                await nodes[master].writes.append("alice", "INBOX", data)
            for i in range(3):  # within max_lag: streamed after the heal, above the rest
                await nodes[master].writes.append("alice", "INBOX", body(100 + i))
            await trio.sleep(5)
            row = peer_row(await nodes[master].node.status(), victim)
            assert row["catchup"]["mailboxes_to_resync"] >= 1  # replicator status says so
            net.sent.clear()
            net.heal()
            before = await nodes[master].store.mailbox_status("alice", "INBOX")
            await wait_for("convergence after the heal", lambda: converged(nodes), timeout=120)
            assert sum(n.node.resync.merged_here for n in nodes.values()) == 0
            after = await nodes[master].store.mailbox_status("alice", "INBOX")
            assert after.highestmodseq == before.highestmodseq  # nothing re-stamped
            assert nodes[master].node.stats["changes_held_back"] >= 1
            assert peer_row(await nodes[master].node.status(), victim)["catchup"] is None
            total = sum(net.sent.values())
            # 120 KB of bodies once, and the rest: states, digests, metadata.
            assert size < total < size + 40_000


async def test_a_change_held_back_for_a_gap_is_no_copy_for_durability(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """I1: a SAVE at level ``all`` into a mailbox whose copy on n3 has a gap
    is held back from n3 (streamgaps.py) while a SAVE of another mailbox is
    streamed and acknowledged; that ACK covers the held-back entry but is no
    copy of it.  So the first SAVE is reported durable only if n3 then holds
    the message (brought by the resync), else it fails, retryably."""
    settings = ClusterSettings(compress=False, durability=DurabilityLevel.parse("all", 3))
    with deterministic(3, autojump_clock):
        net = SimNetwork()
        async with sim_cluster(tmp_path, net, settings=settings) as nodes:
            await wait_for("a root", lambda: rooted_and_linked(nodes))
            n1 = nodes["n1"]
            await n1.writes.append("alice", "INBOX", body(0))  # n1 masters both
            await n1.writes.append("bob", "INBOX", body(1))
            await wait_for("convergence", lambda: converged(nodes))
            inbox = await n1.store.mailbox_status("alice", "INBOX")
            # The log dropped n3's backlog of alice's INBOX (as an overflow does).
            await n1.store.mark_resync(
                ["n3"], inbox.guid, "outbox-overflow", inbox.highestmodseq + 1
            )
            outcome: list[str] = []

            async def held() -> None:
                try:
                    saved = await n1.writes.append("alice", "INBOX", body(2))
                except DurabilityError:
                    outcome.append("refused")
                    return
                there = await nodes["n3"].store.mailbox_status("alice", "INBOX")
                outcome.append("on n3" if there.uidnext > saved.uid else "missing on n3")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(held)
                await trio.sleep(0)
                await n1.writes.append("bob", "INBOX", body(3))
            assert outcome in (["refused"], ["on n3"]), outcome
            assert n1.node.stats["changes_held_back"] >= 1
            await wait_for("convergence", lambda: converged(nodes))


async def test_a_sync_reply_above_the_budget_is_pulled_in_uid_ranges(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I9: no SYNC reply is collected past resync.SYNC_BUDGET (here 60 items,
    for a mailbox of 120 messages with flags on every one): the master drops
    it as it comes and pulls the peer's state again in UID ranges, checked by
    a last incremental SYNC's digest; the split brain is merged as usual."""
    budget = 60
    monkeypatch.setattr(resync, "SYNC_BUDGET", budget)
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        for i in range(120):
            await nodes["n1"].writes.append("alice", "INBOX", body(i))
        await wait_for("convergence", lambda: converged(nodes))
        net.partition({"n1"}, {"n2", "n3"})
        await trio.sleep(12)  # the majority side elects its own root
        for i in range(5):
            await nodes["n1"].writes.append("alice", "INBOX", body(200 + i))
            await nodes["n2"].writes.append("alice", "INBOX", body(300 + i))
        await nodes["n2"].writes.store_flags(
            "alice", "INBOX", UidSet.of(range(1, 121)), "add", ["$Seen-elsewhere"]
        )
        net.heal()
        await wait_for("convergence after the heal", lambda: converged(nodes), timeout=300)
        status = await nodes["n3"].store.mailbox_status("alice", "INBOX")
        assert status.messages == 130  # nothing lost (I6)
        flagged = await nodes["n1"].store.fetch("alice", "INBOX", UidSet.of(range(1, 121)))
        assert all("$Seen-elsewhere" in m.flags for m in flagged)
        resyncers = [nodes[n].node.resync for n in NAMES]
        assert sum(r.ranged for r in resyncers) >= 1
        assert max(r.peak_sync_items for r in resyncers) <= budget


async def test_sync_resyncs_only_what_differs_and_an_identical_cluster_costs_one_exchange(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """``sync`` without ``--full`` (I8): among 3,000 mailboxes, one with flags
    changed by hand, one lost and one extra on n3 are found by the digest
    descent and repaired; nothing else is resynced; once identical, a sync
    costs one digest exchange per peer and resyncs nothing."""
    net = SimNetwork()
    settings = ClusterSettings(compress=False, verify_interval=0)  # no background check
    async with sim_cluster(tmp_path, net, settings) as nodes:
        await wait_for("a root", lambda: rooted_and_linked(nodes))
        users = [f"user{i:04d}" for i in range(1000)]
        for user in users:
            await nodes["n1"].writes.append(user, "INBOX", body(1))
            for folder in ("Sent", "Archive"):
                await nodes["n1"].writes.create_mailbox(user, folder)
        await nodes["n1"].writes.store_flags("user0007", "INBOX", UidSet.of([1]), "add", ["\\Seen"])
        await wait_for("convergence", lambda: converged(nodes), timeout=300)
        victim = nodes["n3"]

        def damage(txn: Any) -> None:
            index = victim.store.index
            guid = index._mailbox_guid(txn, "user0007", "INBOX")
            row = index._message(txn, guid, 1)
            assert row is not None
            txn.put(
                message_key(guid, 1),
                replace(row, flags=(), marks=()).encode(),
                db=index.dbs.messages,
            )
            lost = index._mailbox_guid(txn, "user0300", "Archive")
            index.delete_mailbox(txn, "user0300", "Archive")
            txn.delete(lost, db=index.dbs.deleted)
            index.create_mailbox(txn, "user0500", "Extra")

        await victim.store.writer.submit(damage)
        assert not await converged(nodes)
        result = await victim.node.sync(None, None)
        assert result["compared"] == 3000
        assert result["different"] == 3
        assert result["queued_here"] + result["asked_masters"] + result["skipped"] <= 6
        assert result["round_trips"] <= 2 * 4  # DIGEST whole, groups, buckets, MAILBOXES
        await wait_for("the repair", lambda: converged(nodes), timeout=120)
        [info] = await victim.store.fetch("user0007", "INBOX", UidSet.of([1]))
        assert info.flags == ("\\Seen",)
        for node in nodes.values():
            names = [s.name for s in await node.store.list_mailboxes("user0500")]
            assert "Extra" in names
        again = await nodes["n1"].node.sync(None, None)
        assert again["different"] == 0
        assert again["queued_here"] == again["asked_masters"] == 0
        assert again["round_trips"] == 2  # one digest exchange with each peer
