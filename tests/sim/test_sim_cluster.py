"""The cluster runtime in one trio run: in-memory links, a mock clock, real LMDB.

The first slice of the deterministic simulator (DESIGN §8): every node is a
real :class:`~replicad.cluster.runtime.ClusterNode` with a real store (run
inline, so a run replays exactly), wired through :class:`SimNetwork`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from replicad.cluster.runtime import ClusterNode, ClusterSettings, PeerAddress
from replicad.cluster.writes import ClusterWrites
from replicad.errors import ProtocolError
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
) -> AsyncIterator[dict[str, SimNode]]:
    async with AsyncExitStack() as stack:
        stores: dict[str, MailStore] = {}
        for name in NAMES:
            (tmp / name).mkdir()
            stores[name] = await stack.enter_async_context(
                MailStore.open(
                    tmp / name / "store",
                    map_size=64 << 20,
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

        nodes["n3"].node._apply_burst = refuse  # type: ignore[method-assign]
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
    return (await node.store.mailbox_status("alice", "INBOX")).messages == count


async def linked(nodes: dict[str, SimNode]) -> bool:
    return all(len(n.node.sessions) == len(NAMES) - 1 for n in nodes.values())
