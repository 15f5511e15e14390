"""An in-memory network for the deterministic cluster simulator (docs/architecture.md §8).

Nodes register a serve handler; a dial creates a ``trio.testing`` memory
stream pair, runs the accepting side's HELLO and handler in the *target*
node's nursery (so a crashed node takes its links with it), and the
dialling side's HELLO in the caller.  Identity is given, not proved: TLS
is what the real network adds, and it is tested over real sockets.

Faults: :meth:`SimNetwork.partition` cuts every link between two groups
(both ends see the stream break, as with a dead TCP connection) and makes
dials and probes across the cut fail until :meth:`heal`; :attr:`SimNetwork.delay`
holds every chunk that long before delivery (order kept); :meth:`drop`
breaks one link in the middle of a chunk, so the receiver gets part of a
frame and then EOF.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any

import trio
import trio.testing

from replicad.cluster.runtime import PeerAddress
from replicad.errors import UnreachableError
from replicad.protocol.connection import LinkConfig
from replicad.transport import Link, link_over

Handler = Callable[[Link], Awaitable[None]]


class _Wire:
    """One direction of a link: what is sent arrives ``net.delay`` later, in order."""

    def __init__(self, net: SimNetwork, pair: tuple[str, str] = ("", "")) -> None:
        self.net = net
        self.pair = pair  # (sender, receiver)
        self.send = trio.testing.MemorySendStream(send_all_hook=self._sent, close_hook=self._closed)
        self.receive = trio.testing.MemoryReceiveStream()
        self.queue: list[tuple[float, bytes]] = []  # (due, data); b"" is EOF
        self.wake = trio.Event()
        self.drop_next = False
        self.done = False  # the pump has ended: the direction is gone

    def cut(self) -> None:
        """Like a TCP connection killed in the middle: the receiver reads EOF
        now, and what was in flight or is still sent is lost."""
        self.queue.clear()
        self.queue.append((trio.current_time(), b""))
        self.send.close()
        self.wake.set()

    async def _sent(self) -> None:
        self._take()

    def _closed(self) -> None:
        if self.queue and not self.queue[-1][1]:
            return  # already cut
        self._take()
        self.queue.append((trio.current_time() + self.net.delay, b""))
        self.wake.set()

    def _take(self) -> None:
        try:
            data = self.send.get_data_nowait()
        except trio.WouldBlock:
            return
        if data:
            self.net.sent[self.pair] = self.net.sent.get(self.pair, 0) + len(data)
            self.queue.append((trio.current_time() + self.net.delay, data))
            self.wake.set()

    async def pump(self) -> None:
        try:
            await self._pump()
        finally:
            self.done = True

    async def _pump(self) -> None:
        try:
            while True:
                while not self.queue:
                    self.wake = trio.Event()
                    await self.wake.wait()
                due, data = self.queue.pop(0)
                if due > trio.current_time():
                    await trio.sleep_until(due)
                if not data:
                    self.receive.put_eof()
                    return
                if self.drop_next:
                    # Mid-frame: half the chunk, then the link is gone.
                    self.receive.put_data(data[: max(1, len(data) // 2)])
                    self.receive.put_eof()
                    return
                self.receive.put_data(data)
        except trio.ClosedResourceError:
            return  # the receiving end was closed (its node crashed)


class SimNetwork:
    """The network all simulated nodes share."""

    def __init__(self, cluster: str = "sim") -> None:
        self.cluster = cluster
        self._servers: dict[str, tuple[Handler, LinkConfig, trio.Nursery]] = {}
        self._cut: set[frozenset[str]] = set()
        self._wires: list[tuple[str, str, _Wire, _Wire]] = []
        #: Seconds every chunk takes to arrive (0: at once).
        self.delay = 0.0
        #: Octets sent, by (sender, receiver), over every link ever dialled.
        self.sent: dict[tuple[str, str], int] = {}
        #: Dials and reachability probes made, by (dialler, target).
        self.dials: dict[tuple[str, str], int] = {}
        self.probes: dict[tuple[str, str], int] = {}

    def node(self, name: str) -> NodeNetwork:
        return NodeNetwork(self, name)

    # -- faults --

    def partition(self, *groups: set[str]) -> None:
        """Cut every pair of nodes that are in different groups."""
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                for x in a:
                    for y in b:
                        self._cut.add(frozenset((x, y)))
        for x, y, w1, w2 in self._wires:
            if frozenset((x, y)) in self._cut:
                w1.cut()
                w2.cut()

    def heal(self) -> None:
        self._cut.clear()

    def drop(self, a: str, b: str) -> bool:
        """Break the link between ``a`` and ``b`` in the middle of its next chunk
        in each direction (the nodes redial at once).  False if there is none."""
        found = False
        for x, y, w1, w2 in self._wires:
            if {x, y} == {a, b}:
                w1.drop_next = w2.drop_next = True
                found = True
        return found

    def crashed(self, name: str) -> None:
        self._servers.pop(name, None)

    # -- links --

    def _reachable(self, me: str, peer: str) -> bool:
        return peer in self._servers and frozenset((me, peer)) not in self._cut

    async def probe(self, me: str, peer: PeerAddress) -> bool:
        """A TCP-level probe: answered if the peer runs and no cut is between."""
        self.probes[(me, peer.name)] = self.probes.get((me, peer.name), 0) + 1
        await trio.sleep(0.001)
        return self._reachable(me, peer.name)

    async def dial(self, me: str, peer: PeerAddress, config: LinkConfig) -> Link:
        self.dials[(me, peer.name)] = self.dials.get((me, peer.name), 0) + 1
        await trio.sleep(0.001)  # a dial takes time on any network
        target = self._servers.get(peer.name)
        if target is None or not self._reachable(me, peer.name):
            raise UnreachableError(f"sim: {peer.name} unreachable from {me}")
        handler, target_config, nursery = target
        out, back = _Wire(self, (me, peer.name)), _Wire(self, (peer.name, me))
        ours = trio.StapledStream(out.send, back.receive)
        theirs = trio.StapledStream(back.send, out.receive)
        self._wires = [w for w in self._wires if not (w[2].done and w[3].done)]
        self._wires.append((me, peer.name, out, back))
        nursery.start_soon(out.pump)
        nursery.start_soon(back.pump)

        async def accept() -> None:
            try:
                link = await link_over(theirs, me, target_config, is_client=False)
            except Exception:
                return
            await handler(link)

        nursery.start_soon(accept)
        return await link_over(ours, peer.name, config, is_client=True)


class NodeNetwork:
    """One node's view of the :class:`SimNetwork` (the runtime's ``Network``)."""

    def __init__(self, net: SimNetwork, name: str) -> None:
        self.net = net
        self.name = name
        self.cluster = net.cluster

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link:
        return await self.net.dial(self.name, peer, config)

    async def probe(self, peer: PeerAddress) -> bool:
        return await self.net.probe(self.name, peer)

    async def serve(
        self,
        handler: Handler,
        config: LinkConfig,
        known_peers: Collection[str],
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self.net._servers[self.name] = (handler, config, nursery)
            task_status.started([])
            try:
                await trio.sleep_forever()
            finally:
                self.net.crashed(self.name)
