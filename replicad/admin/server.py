"""The admin socket server: trio glue around :mod:`framing` and a request handler.

Every connection is a task in the server's nursery; requests on one
connection are answered in order, connections run concurrently.  A frame
that cannot be decoded (oversized, not msgpack, not a ``{op, args}`` map)
gets an error response and the connection is closed; the node and the other
connections carry on (I9).  A request that is well-formed but fails (bad
argument, no such mailbox, full store) gets an error response and the
connection stays usable.

Shutdown is two-phase so acknowledged work is never cut off mid-way:
:meth:`AdminServer.drain` stops accepting and closes connections that are
waiting for a request; connections busy with one finish it, send the reply,
then close.  The owner bounds that phase with a timeout and cancels the
rest (see ``replicad.node``).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import trio

from replicad.admin.framing import (
    FrameDecoder,
    decode_document,
    encode_frame,
    error_response,
    parse_request,
)
from replicad.errors import ProtocolError, TemporaryError

log = logging.getLogger("replicad.admin")

RequestHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]

READ_CHUNK = 256 * 1024
DEFAULT_MAX_CONNECTIONS = 512


class _Connection:
    __slots__ = ("busy", "read_scope")

    def __init__(self) -> None:
        self.read_scope = trio.CancelScope()
        self.busy = False


class AdminServer:
    """Serves ``handler`` on a listener until :meth:`drain` (or cancellation)."""

    def __init__(
        self,
        handler: RequestHandler,
        *,
        max_frame: int,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._handler = handler
        self._max_frame = max_frame
        self._max_connections = max_connections
        self._connections: set[_Connection] = set()
        self._accept_scope = trio.CancelScope()
        self._draining = False
        self.closed = trio.Event()  # set once every connection is done after drain()

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def run(
        self,
        listener: trio.abc.Listener[trio.SocketStream],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept connections until :meth:`drain`; return once they have all finished."""
        try:
            async with trio.open_nursery() as nursery:
                with self._accept_scope:
                    task_status.started()
                    while True:
                        stream = await listener.accept()
                        if len(self._connections) >= self._max_connections:
                            nursery.start_soon(self._refuse, stream)
                            continue
                        nursery.start_soon(self._serve_connection, stream)
                # Closing the listener here, before in-flight requests end, is
                # what "stop accepting" means to clients: new ones are refused.
                with trio.CancelScope(shield=True):
                    await listener.aclose()
        finally:
            self.closed.set()

    def drain(self) -> None:
        """Stop accepting; close idle connections; let busy ones finish their request."""
        self._draining = True
        self._accept_scope.cancel()
        for conn in self._connections:
            if not conn.busy:
                conn.read_scope.cancel()

    async def _refuse(self, stream: trio.SocketStream) -> None:
        async with stream:
            error = TemporaryError(f"too many admin connections (limit {self._max_connections})")
            log.warning("admin.refused", extra={"kv": {"reason": "too_many_connections"}})
            with (
                trio.move_on_after(5),
                suppress(trio.BrokenResourceError, trio.ClosedResourceError),
            ):
                await stream.send_all(encode_frame(error_response(error)))

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = _Connection()
        self._connections.add(conn)
        decoder = FrameDecoder(self._max_frame)
        try:
            async with stream:
                while not self._draining:
                    conn.read_scope = trio.CancelScope()
                    with conn.read_scope:
                        try:
                            body = await _read_frame(stream, decoder)
                        except ProtocolError as exc:
                            # Framing is lost (or the peer is hostile): answer, then hang up.
                            log.warning(
                                "admin.bad_frame",
                                extra={"kv": {"error": type(exc).__name__, "reason": str(exc)}},
                            )
                            await stream.send_all(encode_frame(error_response(exc)))
                            return
                    if conn.read_scope.cancelled_caught or body is None:
                        return
                    conn.busy = True
                    try:
                        op, args = parse_request(decode_document(body))
                    except ProtocolError as exc:
                        log.warning("admin.bad_request", extra={"kv": {"reason": str(exc)}})
                        await stream.send_all(encode_frame(error_response(exc)))
                        return
                    response = await self._handler(op, args)
                    await stream.send_all(encode_frame(response))
                    conn.busy = False
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The client went away (e.g. killed); nothing to answer.
            log.debug("admin.client_gone", extra={"kv": {"error": type(exc).__name__}})
        finally:
            self._connections.discard(conn)


async def _read_frame(stream: trio.SocketStream, decoder: FrameDecoder) -> bytes | None:
    """The next frame body, or None on a clean end of stream between frames."""
    while True:
        body = decoder.next_body()
        if body is not None:
            return body
        data = await stream.receive_some(min(decoder.missing(), READ_CHUNK))
        if not data:
            if decoder.buffered:
                raise ProtocolError("connection closed in the middle of a frame")
            return None
        decoder.feed(data)
