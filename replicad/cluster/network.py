"""Where a node's links come from: TLS over TCP, or the simulator's in-memory network."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Protocol

import trio

from replicad.cluster.settings import PeerAddress
from replicad.protocol.connection import LinkConfig
from replicad.transport import Link, TlsContexts, open_link, serve_links
from replicad.transport.gate import HandshakeGate


class Network(Protocol):
    """Where links come from: TLS over TCP (:class:`TlsNetwork`), or the
    simulator's in-memory network (tests/sim), which can partition nodes."""

    cluster: str

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link: ...

    async def serve(
        self,
        handler: Callable[[Link], Awaitable[None]],
        config: LinkConfig,
        known_peers: Collection[str],
        task_status: trio.TaskStatus[Any],
    ) -> None: ...


class TlsNetwork:
    """Mutually authenticated TLS links (replicad.transport).

    :attr:`contexts` may be replaced while running (certificates reloaded
    on SIGHUP): every link dialled or accepted afterwards uses the new
    ones; links already up keep theirs.
    """

    def __init__(
        self, contexts: TlsContexts, listen: tuple[str, int], gate: HandshakeGate | None = None
    ) -> None:
        self.contexts = contexts
        self.cluster = contexts.cluster
        self.listen = listen
        self.gate = gate if gate is not None else HandshakeGate()

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link:
        return await open_link(peer.host, peer.port, peer.name, self.contexts, config=config)

    async def serve(
        self,
        handler: Callable[[Link], Awaitable[None]],
        config: LinkConfig,
        known_peers: Collection[str],
        task_status: trio.TaskStatus[Any],
    ) -> None:
        host, port = self.listen
        await serve_links(
            lambda: self.contexts,
            handler,
            host=host,
            port=port,
            config=config,
            known_peers=known_peers,
            gate=self.gate,
            task_status=task_status,
        )
