"""The cluster runtime in one trio run: in-memory links, a mock clock, real LMDB.

The first slice of the deterministic simulator (docs/architecture.md §8): every node is a
real :class:`~replicad.cluster.runtime.ClusterNode` with a real store (run
inline, so a run replays exactly), wired through :class:`SimNetwork`.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from replicad.cluster import links, streams
from replicad.cluster.durability import DurabilityLevel
from replicad.cluster.runtime import WRITE_DEADLINE, ClusterNode, ClusterSettings, PeerAddress
from replicad.cluster.session import PeerSession
from replicad.cluster.writes import ClusterWrites
from replicad.errors import BadInputError, DurabilityError, ProtocolError, ReplicadError
from replicad.lmtp.delivery import NodeDelivery
from replicad.lmtp.protocol import DeliveryStatus
from replicad.lmtp.server import message_key
from replicad.protocol import commands as c
from replicad.store.clock import HybridClock
from replicad.store.mailstore import MailStore
from replicad.store.writer import InlineExecutor
from tests.sim.network import SimNetwork

NAMES = ("n1", "n2", "n3")


@dataclass
class SimNode:
    name: str
    store: MailStore
    node: ClusterNode
    writes: ClusterWrites


@asynccontextmanager
async def sim_cluster(
    tmp: Path,
    net: SimNetwork,
    settings: ClusterSettings | None = None,
    max_lag: int | None = None,
    map_sizes: dict[str, int] | None = None,
    clocks: dict[str, HybridClock] | None = None,
) -> AsyncIterator[dict[str, SimNode]]:
    async with AsyncExitStack() as stack:
        stores: dict[str, MailStore] = {}
        for name in NAMES:
            (tmp / name).mkdir()
            stores[name] = await stack.enter_async_context(
                MailStore.open(
                    tmp / name / "store",
                    map_size=(map_sizes or {}).get(name, 64 << 20),
                    clock=(clocks or {}).get(name),
                    executor=InlineExecutor(),
                    sync=False,
                    peers=tuple(p for p in NAMES if p != name),
                    **({"max_lag": max_lag} if max_lag is not None else {}),
                )
            )
        async with trio.open_nursery() as nursery:
            nodes: dict[str, SimNode] = {}
            for name in NAMES:
                node = ClusterNode(
                    name=name,
                    peers=tuple(PeerAddress(p, "sim", 0) for p in NAMES if p != name),
                    store=stores[name],
                    network=net.node(name),
                    data_dir=tmp / name,
                    settings=settings or ClusterSettings(compress=False),
                )
                await nursery.start(node.run)
                nodes[name] = SimNode(name, stores[name], node, ClusterWrites(node))
            try:
                yield nodes
            finally:
                nursery.cancel_scope.cancel()


async def wait_for(what: str, probe: Any, timeout: float = 60.0) -> None:
    with trio.move_on_after(timeout):
        while not await probe():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"simulated time ran out waiting for {what}")


def body(i: int) -> bytes:
    return f"Subject: sim {i}\r\n\r\nbody {i}\r\n".encode()


async def converged(nodes: dict[str, SimNode]) -> bool:
    states = [await n.store.logical_state() for n in nodes.values()]
    return all(s == states[0] for s in states) and bool(states[0])


async def test_writes_everywhere_converge_and_a_partitioned_node_catches_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:

        async def rooted() -> bool:
            roots = {n.node.election.root for n in nodes.values()}
            return len(roots) == 1 and None not in roots

        await wait_for("a root", rooted)
        uids = []
        for i, name in enumerate(NAMES * 3):
            appended = await nodes[name].writes.append("alice", "INBOX", body(i))
            uids.append(appended.uid)
        assert sorted(uids) == list(range(1, 10))  # I2: one master assigns them all
        await wait_for("convergence", lambda: converged(nodes))

        # n3 cut off: the others keep writing; n3 catches up after the heal.
        net.partition({"n1", "n2"}, {"n3"})
        for i in range(5):
            await nodes["n1"].writes.append("alice", "INBOX", body(100 + i))
        await trio.sleep(5)  # simulated: long enough for any change to have arrived
        cut_off = await nodes["n3"].store.mailbox_status("alice", "INBOX")
        assert cut_off.messages == 9  # nothing crossed the partition
        marks = {(m.peer, m.reason) for m in await nodes["n1"].store.resync_marks()}
        assert ("n3", "partition") in marks  # I7: recorded for the resync layer
        net.heal()
        await wait_for("n3 catching up", lambda: converged(nodes))
        status = await nodes["n3"].store.mailbox_status("alice", "INBOX")
        assert status.messages == 14 and status.uidnext == 15


async def test_a_peer_that_refuses_what_it_is_sent_never_stops_the_node(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """I9: n3 answers every change with a protocol error and closes the link
    (a peer of another protocol version does that).  n1 keeps redialling and
    streaming into links that die under it; it must survive, and keep serving
    n2, whatever task the dead link fails."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("links", lambda: linked(nodes))

        async def refuse(session: Any, burst: Any) -> None:
            # What a peer does with a frame it cannot decode: * BAD, close.
            session.link.connection.close("refused: another protocol version")
            await session.link.flush()
            raise ProtocolError("refused: another protocol version")

        nodes["n3"].node.streams.apply_burst = refuse  # type: ignore[method-assign]
        for i in range(40):
            await nodes["n1"].writes.append("alice", "INBOX", body(i))
            await trio.sleep(0.01)
        await trio.sleep(5)
        assert (await nodes["n2"].store.mailbox_status("alice", "INBOX")).messages == 40
        await nodes["n1"].writes.append("alice", "INBOX", body(99))
        await wait_for(
            "n2 still replicating",
            lambda: _messages(nodes["n2"], 41),
        )


async def _messages(node: SimNode, count: int) -> bool:
    try:
        return (await node.store.mailbox_status("alice", "INBOX")).messages == count
    except ReplicadError:
        return False


async def linked(nodes: dict[str, SimNode]) -> bool:
    return all(len(n.node.sessions) == len(NAMES) - 1 for n in nodes.values())


async def test_forged_routes_root_and_epoch_claims_change_nothing(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A node whose certificate is valid but which lies (protocol-spec/trust.md):
    n1 tells n3 it reaches n2 in 0 hops (n1 sorts before n2, so it would win
    the tie) and invents a node, claims an epoch near 2**63 and announces a
    root that is not a node of the cluster.  n3 keeps its direct route to
    n2, no invented node joins, its epoch does not jump, and the cluster goes
    on electing and replicating."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net) as nodes:
        await wait_for("links", lambda: linked(nodes))
        await wait_for("a root", lambda: _rooted(nodes))
        victim, liar = nodes["n3"].node, nodes["n1"].node
        epoch_before = victim.election.max_epoch
        session = liar.sessions["n3"]
        forged = c.Routes((c.Route("n1", 0), c.Route("n2", 0), c.Route("mallory", 1)))
        await session.send_untagged(forged)
        await session.send_untagged(c.Epoch((1 << 63) - 1, "n1"))
        await session.send_untagged(c.Epoch(epoch_before + 1, "mallory"))
        with contextlib.suppress(ReplicadError):
            await session.request(c.Root(epoch_before + 5_000_000, "n1"), timeout=5)
        with contextlib.suppress(ReplicadError):
            await session.request(c.Root(epoch_before + 1, "mallory"), timeout=5)
        await trio.sleep(2)
        assert victim.routing.next_hop("n2") == "n2"
        assert "mallory" not in victim.routing.reachable()
        assert "mallory" not in victim.election.order
        assert victim.election.max_epoch < epoch_before + 1_000_000
        # The cluster still works: a new root can be elected after the old
        # one goes, and writes replicate.
        net.partition({"n2", "n3"}, {"n1"})
        pair = {k: nodes[k] for k in ("n2", "n3")}
        await wait_for("a root for n2 and n3", lambda: _rooted(pair))
        await nodes["n3"].writes.append("alice", "INBOX", body(1))
        net.heal()
        await wait_for("convergence", lambda: converged(nodes))


async def _rooted(nodes: dict[str, SimNode]) -> bool:
    """Whether the nodes follow one root, and it is one of them."""
    roots = {n.node.election.root for n in nodes.values()}
    return len(roots) == 1 and roots <= set(nodes)


async def test_a_full_replica_pauses_and_catches_up_once_it_has_room(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A replica whose store is full (its map at node.map_size) does not exit:
    it acknowledges nothing it did not apply, keeps its links and serves
    reads, and applies everything once its ceiling is raised (I1, I7)."""
    net = SimNetwork()
    async with sim_cluster(tmp_path, net, map_sizes={"n3": 2 << 20}) as nodes:
        await wait_for("links", lambda: linked(nodes))
        n3 = nodes["n3"]
        await nodes["n1"].writes.append("alice", "INBOX", body(0))
        await wait_for("first copy", lambda: _messages(n3, 1))
        big = os.urandom(128 * 1024)  # incompressible: 24 of them overflow 2 MiB
        count = 24
        for i in range(count):
            await nodes["n1"].writes.append(
                "alice", "INBOX", b"Subject: big\r\n\r\n" + big + bytes([i])
            )
        await wait_for("n2 holding them", lambda: _messages(nodes["n2"], count + 1))
        await trio.sleep(10)
        assert n3.store.usage().full is not None
        assert "n1" in n3.node.sessions  # the link stays up
        status = await n3.store.mailbox_status("alice", "INBOX")
        assert 1 <= status.messages < count + 1  # reads still served
        # Nothing unapplied was acknowledged to n1.
        acked = n3.node.sessions["n1"].acked_seq
        head = await nodes["n1"].store.log_head()
        assert acked < head
        n3.store.set_map_ceiling(1 << 30)
        await wait_for("n3 catching up", lambda: _messages(n3, count + 1), timeout=120)
        assert n3.store.usage().full is None
        await wait_for("convergence", lambda: converged(nodes))


async def test_a_copy_a_peer_refused_is_no_copy_for_durability(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """I1: n1's wall clock runs an hour ahead, so n2 and n3 refuse its changes
    (cluster.max_clock_skew) and mark them for resync.  They still
    acknowledge the stream; a SAVE at level ``all`` must not be reported
    durable on their word (it was, before ACK named refused changes)."""
    net = SimNetwork()
    fast = HybridClock(lambda: time.time() + 3600)
    settings = ClusterSettings(compress=False, durability=DurabilityLevel.parse("all", 3))
    async with sim_cluster(tmp_path, net, settings=settings, clocks={"n1": fast}) as nodes:
        await wait_for("links", lambda: linked(nodes))
        await wait_for("a root", lambda: _rooted(nodes))
        # The master of alice's INBOX is the node that writes first: n1.
        try:
            await nodes["n1"].writes.append("alice", "INBOX", body(1))
        except DurabilityError:
            pass
        else:
            raise AssertionError("a save refused by both peers was reported durable at 'all'")
        for name in ("n2", "n3"):
            assert nodes[name].node.stats["changes_refused_skew"] >= 1
        # The resync brings the message over: it carries no flag, so no stamp
        # beyond the bound; nothing is lost (I6).
        await wait_for("convergence", lambda: converged(nodes))


async def test_catching_up_over_large_bodies_stays_within_the_byte_bounds(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I9: n3, cut off while n1 takes 200 incompressible 1 MiB messages,
    catches up after the heal.  With a 4 MiB inbox and window (2 MiB batches
    and bursts), the bodies buffered in any receiver's inbox and in flight
    in any sender's window never exceed 4 MiB (counts alone would have let
    1,024 changes, 200 MiB here, pile up), and everything converges."""
    budget = 4 << 20
    monkeypatch.setattr(streams, "MAX_INBOX_BYTES", budget)
    monkeypatch.setattr(links, "OUTBOX_WINDOW_BYTES", budget)
    monkeypatch.setattr(links, "OUTBOX_BATCH_BYTES", budget // 2)
    monkeypatch.setattr(streams, "APPLY_BURST_BYTES", budget // 2)
    sessions: list[PeerSession] = []

    class Recorded(PeerSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            sessions.append(self)

    monkeypatch.setattr(links, "PeerSession", Recorded)  # where links are made
    net = SimNetwork()
    count = 200
    sizes = dict.fromkeys(NAMES, 1 << 30)
    async with sim_cluster(tmp_path, net, map_sizes=sizes) as nodes:
        await wait_for("links", lambda: linked(nodes))
        await wait_for("a root", lambda: _rooted(nodes))
        await nodes["n1"].writes.append("alice", "INBOX", body(0))
        await wait_for("first copy", lambda: _messages(nodes["n3"], 1))
        net.partition({"n1", "n2"}, {"n3"})
        rng = random.Random(7)
        for i in range(count):
            data = b"Subject: attachment %d\r\n\r\n" % i + rng.randbytes(1 << 20)
            await nodes["n1"].writes.append("alice", "INBOX", data)
        net.heal()
        await wait_for("n3 catching up", lambda: _messages(nodes["n3"], count + 1), timeout=600)
        await wait_for("convergence", lambda: converged(nodes), timeout=600)
        last = await nodes["n3"].store.fetch_body("alice", "INBOX", count + 1)
        assert last.startswith(b"Subject: attachment %d\r\n" % (count - 1))
    inboxes = [s.peak_inbox_bytes for s in sessions]
    windows = [s.outbox.peak_bytes for s in sessions]
    assert max(inboxes) <= budget, inboxes
    assert max(windows) <= budget, windows
    # The bound was reached for, not merely unused: several bodies were in flight.
    assert max(windows) > 2 << 20, windows


async def test_a_damaged_epoch_file_stops_the_start_with_a_clear_error(tmp_path: Path) -> None:
    """Epochs fence stale roots and must never repeat: an epoch file that is
    not one number was damaged after its atomic write, and reading it as 0
    could reuse an epoch.  The node refuses to start and says what to do."""
    net = SimNetwork()
    async with MailStore.open(tmp_path / "store", executor=InlineExecutor(), sync=False) as store:

        def node() -> ClusterNode:
            return ClusterNode(
                name="n1",
                peers=(PeerAddress("n2", "sim", 0),),
                store=store,
                network=net.node("n1"),
                data_dir=tmp_path,
                settings=ClusterSettings(compress=False),
            )

        assert node().election.max_epoch == 0  # no file yet: a new node
        for damaged in ("", "12\x0034", "-3", "9" * 40):
            (tmp_path / "cluster-epoch").write_text(damaged)
            with pytest.raises(BadInputError, match=r"is damaged .* delete it and start again"):
                node()
        (tmp_path / "cluster-epoch").write_text("41\n")
        restarted = node()
        assert restarted.election.max_epoch == 41
        restarted.election.max_epoch = 42
        restarted.root.save_epoch()
        assert (tmp_path / "cluster-epoch").read_text() == "42\n"
        assert not (tmp_path / "cluster-epoch.tmp").exists()


async def test_a_delivery_retried_after_the_write_deadline_is_stored_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """At ``quorum`` the master writes the copy, but the confirmations come
    after the write deadline: LMTP answers 451 with the copy on the
    master's disk.  The MTA's retry -- the same message, through the master
    or through another node, with the master's memory of recent saves gone
    (as after a restart) -- is answered with that copy: one message."""
    net = SimNetwork()
    settings = ClusterSettings(compress=False, durability=DurabilityLevel.parse("quorum", 3))
    async with sim_cluster(tmp_path, net, settings=settings) as nodes:
        await wait_for("links", lambda: linked(nodes))
        await wait_for("a root", lambda: _rooted(nodes))
        lmtp = {
            name: NodeDelivery(n.store, n.writes, user_exists=n.store.has_user)
            for name, n in nodes.items()
        }
        # The master of alice's INBOX is the node that writes first: n1.
        [ok] = await lmtp["n1"].deliver(body(0), [("alice", "INBOX")])
        assert ok.status is DeliveryStatus.SAVED
        key = message_key("mta@example.net", body(1))

        net.delay = WRITE_DEADLINE + 5  # every confirmation comes too late
        [late] = await lmtp["n1"].deliver(body(1), [("alice", "INBOX")], message_key=key)
        assert late.status is DeliveryStatus.DURABILITY  # 451 4.3.0
        assert (await nodes["n1"].store.mailbox_status("alice", "INBOX")).messages == 2
        net.delay = 0.0
        await wait_for("convergence", lambda: converged(nodes))

        [again] = await lmtp["n1"].deliver(body(1), [("alice", "INBOX")], message_key=key)
        assert (again.status, again.uid) == (DeliveryStatus.SAVED, 2)
        nodes["n1"].node.writes.recent_saves.clear()  # found in the store's latest changes
        [forwarded] = await lmtp["n3"].deliver(body(1), [("alice", "INBOX")], message_key=key)
        assert (forwarded.status, forwarded.uid) == (DeliveryStatus.SAVED, 2)
        await wait_for("convergence", lambda: converged(nodes))
        for n in nodes.values():
            assert (await n.store.mailbox_status("alice", "INBOX")).messages == 2
            assert await n.store.fetch_body("alice", "INBOX", 2) == body(1)
