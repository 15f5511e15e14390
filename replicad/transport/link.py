"""Links between nodes: mutually authenticated TLS plus the HELLO exchange (I9).

:func:`open_link` dials a peer, :func:`serve_links` accepts them. Either way
a :class:`Link` is handed out only after

1. a TLS 1.3 handshake in which both certificates chained to the cluster CA
   and name this cluster in their subject (:mod:`replicad.transport.channel`),
   and
2. the HELLO exchange of :class:`replicad.protocol.connection.Connection`:
   same protocol version, same cluster id, and a HELLO node id equal to the
   name in the peer's certificate.

Connection setup, TLS and HELLO together, has one deadline
(``handshake_timeout``): a peer that connects and says nothing is dropped.
Every refusal is logged as one ``event=link-refused`` line with a ``reason``
token (see :class:`~replicad.transport.tls.LinkRefusedError`; plus
``handshake-timeout``, ``version``, ``cluster``, ``hello-node``, ``self``,
``unknown-peer``, ``protocol``). The listener handles each connection in its
own task, so one slow or hostile peer never stalls the others.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Final, TypeVar

import trio

from replicad.errors import ProtocolError, UnreachableError
from replicad.protocol.connection import (
    CompressionStarted,
    Connection,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    LinkConfig,
    ReplyReceived,
)
from replicad.protocol.session import Hello
from replicad.transport.channel import (
    SecureChannel,
    accept_channel,
    connect_channel,
    format_remote,
)
from replicad.transport.gate import HandshakeGate
from replicad.transport.logfmt import log_event
from replicad.transport.tls import LinkRefusedError, TlsContexts

log = logging.getLogger("replicad.transport")

DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0
#: How long a refused peer is given to receive our ``* BAD reason`` line.
_GOODBYE_TIMEOUT: Final = 1.0
#: Read size: large enough that a 64 MiB frame is not assembled from 4 KiB bits.
RECEIVE_SIZE: Final = 256 * 1024

T = TypeVar("T")

# Connection reports HELLO mismatches as ProtocolError messages; these
# prefixes turn them into the stable reason tokens operators grep for.
_HELLO_REASONS: Final = (
    ("protocol version mismatch", "version"),
    ("cluster mismatch", "cluster"),
    ("peer claims our own node id", "self"),
    ("node id ", "hello-node"),
)


def _hello_reason(message: str) -> str:
    for prefix, reason in _HELLO_REASONS:
        if message.startswith(prefix):
            return reason
    return "protocol"


@dataclass(slots=True)
class LinkTraffic:
    """Bytes a link wrote and read since it came up (after HELLO), counted as
    the protocol sees them: compressed when zstd is on, before TLS.  A separate
    object so that an observer holding it still reads the final counts after
    the link is gone (replicad.metrics sums them per peer)."""

    sent: int = 0
    received: int = 0


class Link:
    """An established, authenticated link: a TLS stream driven by a Connection.

    One task may read (:meth:`next_event`) while others send.  Writes are
    serialised by a lock because the byte order of the (possibly zstd)
    stream must follow the order in which the connection queued frames;
    whoever holds the lock writes everything queued, including frames
    queued by other tasks while it was writing.  Sending awaits the
    socket, which is the backpressure: nothing buffers without bound here.

    Throughput comes from writing many frames at once (one zstd flush, one
    run of full TLS records, one ``send_all``): queue a batch with
    :meth:`queue` and write it with one :meth:`flush`.
    """

    def __init__(
        self, channel: SecureChannel, connection: Connection, pending: list[Event]
    ) -> None:
        assert connection.peer is not None
        self.channel = channel
        self.connection = connection
        self._pending = deque(pending)
        self._send_lock = trio.Lock()
        self.traffic = LinkTraffic()

    @property
    def peer(self) -> str:
        """The peer's node name, proved by its certificate and repeated in its HELLO."""
        return self.channel.peer

    @property
    def remote(self) -> str:
        return self.channel.remote

    @property
    def hello(self) -> Hello:
        assert self.connection.peer is not None
        return self.connection.peer

    @property
    def capabilities(self) -> frozenset[str]:
        """Capabilities both ends announced."""
        return self.connection.capabilities

    @property
    def has_pending_events(self) -> bool:
        """True if events already received wait for :meth:`next_event` (lets the
        caller batch cumulative acknowledgements over a burst)."""
        return bool(self._pending)

    async def flush(self) -> None:
        """Write everything the connection has queued, in queue order.

        Returns once the frames queued before the call are written: by this
        call, or by the task that was writing when it was made (this call
        waits for it).  Frames other tasks queue while a write is in
        progress go out in the next write of the same flush: one zstd
        flush, one run of TLS records and one ``send_all`` for a burst of
        frames instead of one per frame.  Nothing queued and nobody
        writing: returns at once, without a checkpoint.
        """
        lock = self._send_lock
        if not lock.locked():
            if not self.connection.has_data_to_send:
                return
            # Free lock: take it without the scheduler round trip that
            # ``async with`` costs; send_all below is the checkpoint.
            lock.acquire_nowait()
        else:
            await lock.acquire()
        try:
            while data := self.connection.data_to_send():
                await self.channel.stream.send_all(data)
                self.traffic.sent += len(data)
        finally:
            lock.release()

    def queue(self, queue: Callable[[Connection], T]) -> T:
        """Queue frames with ``queue(connection)`` without writing; :meth:`flush` writes."""
        return queue(self.connection)

    async def send(self, queue: Callable[[Connection], T]) -> T:
        """Queue frames with ``queue(connection)`` and write them.

        E.g. ``tag = await link.send(lambda c: c.send_command(Ping()))``.
        """
        result = queue(self.connection)
        await self.flush()
        return result

    async def next_event(self) -> Event:
        """The next protocol event; ConnectionClosed once the peer is gone.

        Before waiting for input, and after input produced answers of the
        connection's own, it writes what is queued -- so answers queued
        with :meth:`queue` go out once the events already received are
        handled -- unless another task is writing: that task writes it.
        Never waiting for that task is what keeps two nodes that both write
        a lot from blocking each other's reads.

        A protocol violation by the peer raises ProtocolError after our
        ``* BAD reason`` was sent (I9); the caller then closes the link.
        """
        pending = self._pending
        while not pending:
            if self.connection.close_reason is not None:
                return ConnectionClosed(self.connection.close_reason)
            if self.connection.has_data_to_send and not self._send_lock.locked():
                await self.flush()
            try:
                data = await self.channel.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""  # the link is gone, whoever closed it: report it closed
            self.traffic.received += len(data)
            try:
                pending.extend(self.connection.receive_data(bytes(data)))
            except ProtocolError:
                with trio.move_on_after(_GOODBYE_TIMEOUT):
                    await self.flush()
                raise
            # What the connection answered by itself (COMPRESS) goes out now,
            # not after the caller has handled the events just received.
            if self.connection.has_data_to_send and not self._send_lock.locked():
                await self.flush()
        return pending.popleft()

    async def start_compression(self) -> bool:
        """Switch both directions to zstd (dialling side only); False if refused.

        Events that arrive while waiting for the COMPRESS reply are kept for
        :meth:`next_event`.
        """
        tag = await self.send(lambda c: c.start_compression())
        held: list[Event] = []
        try:
            while True:
                event = await self.next_event()
                if isinstance(event, CompressionStarted):
                    continue
                if isinstance(event, ReplyReceived) and event.tag == tag:
                    return self.connection.compressing
                if isinstance(event, ConnectionClosed):
                    raise UnreachableError(f"link to {self.peer} closed: {event.reason}")
                held.append(event)
        finally:
            self._pending.extendleft(reversed(held))

    async def aclose(self) -> None:
        await self.channel.stream.aclose()


async def _say_goodbye(channel: SecureChannel, connection: Connection) -> None:
    """Best effort: let a refused peer read why, then close."""
    data = connection.data_to_send()
    with trio.move_on_after(_GOODBYE_TIMEOUT):
        try:
            if data:
                await channel.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    await trio.aclose_forcefully(channel.stream)


async def _exchange_hello(channel: SecureChannel, config: LinkConfig, *, is_client: bool) -> Link:
    """Send our HELLO, read the peer's, and hand back a READY link.

    ``expect_peer`` is the certificate's node name: a HELLO claiming another
    node id is refused (I9: identity comes from the certificate).
    """
    connection = Connection(config, is_client=is_client, expect_peer=channel.peer)
    stream = channel.stream
    # The dialler speaks first; the accepting side holds its HELLO back until
    # it has accepted the dialler's, so a dialler never sees a link come up
    # that is refused a moment later: it gets either our HELLO or `* BAD why`.
    our_hello = connection.data_to_send()
    try:
        if is_client:
            await stream.send_all(our_hello)
        while True:
            data = await stream.receive_some(RECEIVE_SIZE)
            try:
                events = connection.receive_data(bytes(data))
            except ProtocolError as exc:
                await _say_goodbye(channel, connection)
                raise LinkRefusedError(_hello_reason(exc.message), exc.message) from None
            for event in events:
                if isinstance(event, ConnectionClosed):
                    await trio.aclose_forcefully(stream)
                    raise LinkRefusedError(
                        "closed-by-peer", f"peer closed during HELLO: {event.reason}"
                    )
            for index, event in enumerate(events):
                if isinstance(event, HandshakeComplete):
                    if not is_client:
                        await stream.send_all(our_hello + connection.data_to_send())
                    return Link(channel, connection, events[index + 1 :])
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        # TLS 1.3: the server verifies our certificate after our side of the
        # handshake finished, so its refusal surfaces here, on first read.
        cause = exc.__cause__
        detail = getattr(cause, "reason", None) or str(cause or "connection lost")
        raise LinkRefusedError("tls-handshake", f"link broken during HELLO: {detail}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def link_over(
    stream: trio.abc.Stream, peer: str, config: LinkConfig, *, is_client: bool, remote: str = "-"
) -> Link:
    """HELLO over an already authenticated ``stream`` to node ``peer``.

    The network path authenticates with TLS first (:func:`open_link`,
    :func:`serve_links`); the deterministic simulator gives in-memory
    streams whose peer identity it knows, and calls this directly.
    """
    return await _exchange_hello(SecureChannel(stream, peer, remote), config, is_client=is_client)


async def open_link(
    host: str,
    port: int,
    expected_node: str,
    contexts: TlsContexts,
    *,
    config: LinkConfig | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    tcp: trio.SocketStream | None = None,
) -> Link:
    """Dial ``expected_node`` at ``host:port``: TLS with the cluster CA, then HELLO.

    ``tcp``: a connection to ``host:port`` already open, used instead of a
    new one (:func:`~replicad.transport.channel.connect_channel`).

    Raises UnreachableError (exit 69) if the peer cannot be reached or does
    not complete the setup in time, LinkRefusedError (a ProtocolError) if
    it is not who we expected or speaks another cluster/version. Each
    failure is also logged with its reason.
    """
    config = config or LinkConfig(cluster=contexts.cluster, node=contexts.node)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        with trio.fail_after(handshake_timeout):
            channel = await connect_channel(host, port, expected_node, contexts, tcp=tcp)
            link = await _exchange_hello(channel, config, is_client=True)
    except trio.TooSlowError:
        log_event(
            log,
            logging.WARNING,
            "link-refused",
            side="client",
            peer=expected_node,
            remote=address,
            reason="handshake-timeout",
            detail=f"no complete handshake within {handshake_timeout:g}s",
        )
        raise UnreachableError(
            f"{expected_node} at {address} did not complete the handshake "
            f"within {handshake_timeout:g}s"
        ) from None
    except LinkRefusedError as exc:
        log_event(
            log,
            logging.WARNING,
            "link-refused",
            side="client",
            peer=expected_node,
            remote=address,
            reason=exc.reason,
            detail=exc.message,
        )
        raise
    log_event(
        log,
        logging.INFO,
        "link-up",
        side="client",
        peer=link.peer,
        remote=link.remote,
        version=link.hello.version,
        capabilities=",".join(sorted(link.capabilities)) or "-",
    )
    return link


LinkHandler = Callable[[Link], Awaitable[None]]
#: A listener refusing connections over its handshake caps logs at most
#: one line per this many seconds (with the running count).
REFUSAL_LOG_INTERVAL = 10.0


def _source_address(tcp: trio.SocketStream) -> str:
    try:
        peer = tcp.socket.getpeername()
    except OSError:
        return "?"
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


async def accept_link(
    tcp: trio.SocketStream,
    contexts: TlsContexts,
    handler: LinkHandler,
    *,
    config: LinkConfig,
    known_peers: Collection[str] | None,
    handshake_timeout: float,
    handshake_done: Callable[[], None] | None = None,
) -> None:
    """Set up one accepted connection and run ``handler`` on the link.

    Never raises for anything the peer did (I9): refusals and protocol
    violations are logged and the connection closed. Bugs in ``handler``
    do propagate, so that they are not silently swallowed.
    ``handshake_done`` is called once the handshake ended, either way
    (the listener's :class:`~replicad.transport.gate.HandshakeGate`).
    """
    remote = format_remote(tcp)
    try:
        link = await _accept_handshake(tcp, contexts, config, known_peers, handshake_timeout)
    finally:
        if handshake_done is not None:
            handshake_done()
    if link is None:
        return
    log_event(
        log,
        logging.INFO,
        "link-up",
        side="server",
        peer=link.peer,
        remote=remote,
        version=link.hello.version,
        capabilities=",".join(sorted(link.capabilities)) or "-",
    )
    await _run_handler(link, handler)


async def _accept_handshake(
    tcp: trio.SocketStream,
    contexts: TlsContexts,
    config: LinkConfig,
    known_peers: Collection[str] | None,
    handshake_timeout: float,
) -> Link | None:
    """TLS, the peer check and HELLO of an accepted connection; None (the
    connection closed, the refusal logged) if the peer failed any of them."""
    remote = format_remote(tcp)
    try:
        with trio.fail_after(handshake_timeout):
            channel = await accept_channel(tcp, contexts)
            if known_peers is not None and channel.peer not in known_peers:
                raise LinkRefusedError(
                    "unknown-peer", f"node {channel.peer!r} is not a configured peer"
                )
            link = await _exchange_hello(channel, config, is_client=False)
    except trio.TooSlowError:
        await trio.aclose_forcefully(tcp)
        log_event(
            log,
            logging.WARNING,
            "link-refused",
            side="server",
            remote=remote,
            reason="handshake-timeout",
            detail=f"no complete handshake within {handshake_timeout:g}s",
        )
        return None
    except LinkRefusedError as exc:
        await trio.aclose_forcefully(tcp)
        log_event(
            log,
            logging.WARNING,
            "link-refused",
            side="server",
            remote=remote,
            reason=exc.reason,
            detail=exc.message,
        )
        return None
    return link


async def _run_handler(link: Link, handler: LinkHandler) -> None:
    try:
        await handler(link)
    except ProtocolError as exc:
        log_event(
            log, logging.WARNING, "link-closed", peer=link.peer, reason="protocol", detail=str(exc)
        )
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log_event(log, logging.INFO, "link-closed", peer=link.peer, reason="connection-lost")
    else:
        log_event(log, logging.INFO, "link-closed", peer=link.peer, reason="done")
    finally:
        await trio.aclose_forcefully(link.channel.stream)


async def serve_links(
    contexts: TlsContexts | Callable[[], TlsContexts],
    handler: LinkHandler,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    config: LinkConfig | None = None,
    known_peers: Collection[str] | None = None,
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
    gate: HandshakeGate | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept links on ``host:port`` forever, each in its own task.

    ``task_status.started`` reports the listeners (port 0 picks a free port;
    read it from ``listeners[0].socket.getsockname()``). ``known_peers``
    restricts which certified nodes may connect (None: any node the CA
    certified). ``contexts`` may be a function returning the contexts in
    force, called for each new connection: certificates reloaded meanwhile
    then apply to new links, while established ones keep theirs.  ``gate``
    caps the handshakes in progress (a default one if None): a connection
    over a cap is closed before any TLS work (I9).  Runs until cancelled.
    """
    gate = gate if gate is not None else HandshakeGate()
    last_logged = -math.inf
    if isinstance(contexts, TlsContexts):
        fixed = contexts
        current: Callable[[], TlsContexts] = lambda: fixed  # noqa: E731
    else:
        current = contexts
    first = current()
    config = config or LinkConfig(cluster=first.cluster, node=first.node)
    if not math.isfinite(handshake_timeout) or handshake_timeout <= 0:
        raise ValueError("handshake_timeout must be a positive number of seconds")
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def per_connection(tcp: trio.SocketStream) -> None:
        nonlocal last_logged
        source = _source_address(tcp)
        if not gate.admit(source):
            await trio.aclose_forcefully(tcp)
            now = trio.current_time()
            if now - last_logged >= REFUSAL_LOG_INTERVAL:  # a flood logs a line, not a flood
                last_logged = now
                log_event(
                    log,
                    logging.WARNING,
                    "link-refused",
                    side="server",
                    remote=source,
                    reason="too-many-handshakes",
                    in_progress=gate.in_progress,
                    refused_total=gate.refused,
                )
            return
        await accept_link(
            tcp,
            current(),
            handler,
            config=config,
            known_peers=known_peers,
            handshake_timeout=handshake_timeout,
            handshake_done=lambda: gate.release(source),
        )

    # serve_listeners spawns each connection into its own task of its
    # internal nursery, owned by this call; cancelling us stops them all.
    await trio.serve_listeners(per_connection, listeners, task_status=task_status)
