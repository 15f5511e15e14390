"""Where a node's links come from: TLS over TCP, or the simulator's in-memory network."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from typing import Any, Final, Protocol

import trio

from replicad.cluster.settings import PeerAddress
from replicad.protocol.connection import LinkConfig
from replicad.transport import Link, TlsContexts, open_link, serve_links
from replicad.transport.gate import HandshakeGate

#: A probe's TCP connect gives up after this long (a peer cut off by a
#: firewall that drops packets answers nothing at all).
PROBE_CONNECT_TIMEOUT_S: Final = 0.25
#: A connection that stays open and silent this long after it was accepted is
#: a live listener: a TLS server says nothing before the ClientHello, while a
#: cut path (a fault proxy, a firewall sending resets) closes it at once.
PROBE_GRACE_S: Final = 0.03
#: A probe's open connection is used by the next dial only if it is this fresh.
PROBE_REUSE_S: Final = 1.0


class Network(Protocol):
    """Where links come from: TLS over TCP (:class:`TlsNetwork`), or the
    simulator's in-memory network (tests/sim), which can partition nodes."""

    cluster: str

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link: ...

    async def probe(self, peer: PeerAddress) -> bool:
        """Cheaply: does ``peer``'s listener answer?  No TLS, nothing the peer
        logs; True is a sign of life (replicad.cluster.redial), not a link."""
        ...

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
        #: A probe's connection that found the peer alive, by peer: the next
        #: dial runs TLS over it, so the peer never sees a connection that
        #: closes without a handshake (and logs no refusal for it).
        self._probed: dict[str, tuple[trio.SocketStream, float]] = {}

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link:
        tcp = await self._take_probed(peer.name)
        return await open_link(
            peer.host, peer.port, peer.name, self.contexts, config=config, tcp=tcp
        )

    async def probe(self, peer: PeerAddress) -> bool:
        """A TCP connect to ``peer``'s address, alive if it is neither refused
        nor closed within :data:`PROBE_GRACE_S`; the open connection is kept
        for the next dial."""
        old = await self._take_probed(peer.name)
        if old is not None:
            await trio.aclose_forcefully(old)
        tcp: trio.SocketStream | None = None
        with trio.move_on_after(PROBE_CONNECT_TIMEOUT_S):
            try:
                tcp = await trio.open_tcp_stream(peer.host, peer.port)
            except OSError:
                return False
        if tcp is None:
            return False
        try:
            with trio.move_on_after(PROBE_GRACE_S):
                # Anything here (EOF, a reset, bytes) means no TLS server is
                # waiting for us behind this connection.
                await tcp.receive_some(1)
                await trio.aclose_forcefully(tcp)
                return False
        except (trio.BrokenResourceError, OSError):
            await trio.aclose_forcefully(tcp)
            return False
        self._probed[peer.name] = (tcp, trio.current_time())
        return True

    async def _take_probed(self, peer: str) -> trio.SocketStream | None:
        """The probe's open connection to ``peer`` if fresh (a stale one is closed)."""
        held = self._probed.pop(peer, None)
        if held is None:
            return None
        tcp, opened = held
        if trio.current_time() - opened > PROBE_REUSE_S:
            await trio.aclose_forcefully(tcp)
            return None
        return tcp

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
