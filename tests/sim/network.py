"""An in-memory network for the deterministic cluster simulator (DESIGN §8).

Nodes register a serve handler; a dial creates a ``trio.testing`` memory
stream pair, runs the accepting side's HELLO and handler in the *target*
node's nursery (so a crashed node takes its links with it), and the
dialling side's HELLO in the caller.  Identity is given, not proved: TLS
is what the real network adds, and it is tested over real sockets.

Faults: :meth:`SimNetwork.partition` cuts every link between two groups
(both ends see the stream break, as with a dead TCP connection) and makes
dials across the cut fail until :meth:`heal`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from replicad.cluster.runtime import PeerAddress
from replicad.errors import UnreachableError
from replicad.protocol.connection import LinkConfig
from replicad.transport import Link, link_over

Handler = Callable[[Link], Awaitable[None]]


class SimNetwork:
    """The network all simulated nodes share."""

    def __init__(self, cluster: str = "sim") -> None:
        self.cluster = cluster
        self._servers: dict[str, tuple[Handler, LinkConfig, trio.Nursery]] = {}
        self._cut: set[frozenset[str]] = set()
        self._streams: list[tuple[str, str, trio.abc.Stream, trio.abc.Stream]] = []

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
        for x, y, s1, s2 in list(self._streams):
            if frozenset((x, y)) in self._cut:
                self._break(s1, s2)

    def heal(self) -> None:
        self._cut.clear()

    def crashed(self, name: str) -> None:
        self._servers.pop(name, None)

    @staticmethod
    def _break(*streams: trio.abc.Stream) -> None:
        for stream in streams:
            # Like a TCP connection killed in the middle: each end reads EOF,
            # and what it still sends is lost.
            stream.send_stream.close()  # type: ignore[attr-defined]

    # -- links --

    async def dial(self, me: str, peer: PeerAddress, config: LinkConfig) -> Link:
        await trio.sleep(0.001)  # a dial takes time on any network
        target = self._servers.get(peer.name)
        if target is None or frozenset((me, peer.name)) in self._cut:
            raise UnreachableError(f"sim: {peer.name} unreachable from {me}")
        handler, target_config, nursery = target
        ours, theirs = trio.testing.memory_stream_pair()
        self._streams.append((me, peer.name, ours, theirs))

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

    async def serve(
        self,
        handler: Handler,
        config: LinkConfig,
        known_peers: tuple[str, ...],
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self.net._servers[self.name] = (handler, config, nursery)
            task_status.started([])
            try:
                await trio.sleep_forever()
            finally:
                self.net.crashed(self.name)
