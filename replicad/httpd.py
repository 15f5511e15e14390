"""The node's HTTP listener (``[metrics] listen``): ``/metrics`` and ``/health``.

A deliberately tiny HTTP/1.1 server on trio, because all it ever answers is
two read-only resources to Prometheus and to load-balancer health checks:

* ``GET``/``HEAD`` only (405 otherwise, with ``Allow``); anything but the two
  paths is 404; a malformed request is 400, a head over
  :data:`MAX_REQUEST_HEAD` bytes is 431;
* one request per connection (``Connection: close``), so no keep-alive or
  pipelining state; a request head must arrive within :data:`READ_TIMEOUT`
  of the connection (a deadline for the whole head, so a client trickling
  one byte at a time is dropped as fast as a silent one) and the reply be
  taken within :data:`WRITE_TIMEOUT`;
* at most :data:`MAX_CONNECTIONS` at once, and idle connections (no
  complete request head yet) can never keep a monitor out: a connection
  arriving at the cap takes the place of the oldest idle one, which is
  closed; only when every connection is busy answering a request is the
  newcomer refused, at once (closed, not queued), so a probe fails fast
  and retries instead of timing out behind others;
* ``/metrics``: the Prometheus text format, or OpenMetrics when asked
  through ``Accept`` (prometheus-client's negotiation);
* ``/health``: JSON ``{"status": "up|degraded|down"}`` for anyone; the
  reasons and per-check details (:mod:`replicad.health`) only for a client
  on the loopback interface or one sending ``Authorization: Bearer TOKEN``
  with ``metrics.health_token``.  A wrong token is 401, not a silent
  summary, so a misconfigured monitor is noticed.  HTTP 503 when down,
  200 otherwise.

The token is compared in constant time and never logged.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from replicad.errors import ReplicadError
from replicad.health import Status, evaluate
from replicad.metrics import NodeMetrics
from replicad.observe import Observer

log = logging.getLogger("replicad.httpd")

MAX_REQUEST_HEAD = 8 * 1024
#: A monitor sends its whole request head in one packet as soon as it is
#: connected; two seconds is ample on any network that deserves monitoring.
READ_TIMEOUT = 2.0
WRITE_TIMEOUT = 10.0
MAX_CONNECTIONS = 32
READ_CHUNK = 4096

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, *, head_only: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


class HttpError(Exception):
    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.response = Response(status, (text + "\n").encode(), headers=headers or {})


def parse_head(head: bytes) -> Request:
    """The request line and headers of ``head`` (up to, not including, the blank line)."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request head is not ASCII") from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise HttpError(400, "malformed request line")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise HttpError(505, f"{version} is not supported; use HTTP/1.1")
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "malformed header line")
        headers[name.lower()] = value.strip()
    path = target.split("?", 1)[0]
    return Request(method, path, headers)


async def read_head(stream: trio.abc.ReceiveStream) -> bytes:
    """Bytes up to the blank line ending the request head; 431 past the bound."""
    buffer = bytearray()
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(buffer[:end])
        if len(buffer) > MAX_REQUEST_HEAD:
            raise HttpError(431, f"request head longer than {MAX_REQUEST_HEAD} bytes")
        data = await stream.receive_some(READ_CHUNK)
        if not data:
            raise HttpError(400, "connection closed before the end of the request head")
        buffer += data


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(eq=False, slots=True)
class _Slot:
    """One admitted connection.  ``scope`` is cancelled when it is evicted."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    released: bool = False
    evicted: bool = False


class HttpServer:
    """Serves ``/metrics`` and ``/health`` of one node; see the module docstring."""

    def __init__(
        self,
        metrics: NodeMetrics,
        observer: Observer,
        *,
        health_token: str | None = None,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.metrics = metrics
        self.observer = observer
        #: Replaced on SIGHUP (replicad.node), so a token can be rotated live.
        self.health_token = health_token
        self._max_connections = max_connections
        self._active = 0
        #: Admitted connections without a complete request head yet, oldest
        #: first (a dict as an ordered set): the ones a newcomer may evict.
        self._idle: dict[_Slot, None] = {}
        #: Idle connections closed to make room for a newer one (tests, logs).
        self.evicted = 0

    async def run(
        self,
        host: str,
        port: int,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0: a free port) and serve until cancelled."""
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise ReplicadError(
                f"cannot listen on metrics.listen {where}: {exc.strerror or exc}"
            ) from None
        log.info("httpd.listening", extra={"kv": {"address": where}})
        await trio.serve_listeners(self._connection, listeners, task_status=task_status)

    def _admit(self) -> _Slot | None:
        """A slot for a new connection, or None: refuse it.

        At the cap, the oldest idle connection gives up its slot: whoever
        holds sockets open without sending a request cannot starve a
        client that asks at once (a health probe).  Busy connections are
        bounded by the snapshot and :data:`WRITE_TIMEOUT`, so refusing a
        newcomer while all are busy lasts only that long.
        """
        if self._active >= self._max_connections:
            if not self._idle:
                return None
            victim = next(iter(self._idle))
            victim.evicted = True
            self._release(victim)
            victim.scope.cancel()
            self.evicted += 1
        self._active += 1
        slot = _Slot()
        self._idle[slot] = None
        return slot

    def _release(self, slot: _Slot) -> None:
        self._idle.pop(slot, None)
        if not slot.released:
            slot.released = True
            self._active -= 1

    async def _connection(self, stream: trio.SocketStream) -> None:
        slot = self._admit()
        if slot is None:
            await trio.aclose_forcefully(stream)
            return
        try:
            remote = _remote_host(stream)
            with slot.scope:
                response, head_only = await self._answer(stream, remote, slot)
                with trio.move_on_after(WRITE_TIMEOUT):
                    await stream.send_all(response.encode(head_only=head_only))
                    if response.status == 408:
                        return  # a client that never finished its request gets no grace
                    # Close gracefully: a close with unread input resets the
                    # connection, and the client could lose the response.
                    await stream.send_eof()
                    with trio.move_on_after(1.0):
                        while await stream.receive_some(READ_CHUNK):
                            pass
            if slot.evicted:
                log.debug("httpd.idle_evicted", extra={"kv": {"remote": remote}})
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away; nothing to answer
        finally:
            self._release(slot)
            await trio.aclose_forcefully(stream)

    async def _answer(
        self, stream: trio.SocketStream, remote: str, slot: _Slot
    ) -> tuple[Response, bool]:
        request: Request | None = None
        try:
            with trio.move_on_after(READ_TIMEOUT) as scope:
                request = parse_head(await read_head(stream))
            if scope.cancelled_caught or request is None:
                raise HttpError(408, f"no complete request within {READ_TIMEOUT:g}s")
            # A complete request: from now on this connection is busy, not idle.
            self._idle.pop(slot, None)
            response = await self._route(request, remote)
        except HttpError as exc:
            response = exc.response
        except ReplicadError as exc:
            log.warning("httpd.failed", extra={"kv": {"reason": str(exc)}})
            response = Response(500, b"internal error; see the node's log\n")
        log.debug(
            "httpd.request",
            extra={
                "kv": {
                    "remote": remote,
                    "method": request.method if request else "-",
                    "path": request.path if request else "-",
                    "status": response.status,
                }
            },
        )
        return response, request is not None and request.method == "HEAD"

    async def _route(self, request: Request, remote: str) -> Response:
        if request.path not in ("/metrics", "/health"):
            raise HttpError(404, f"no resource {request.path[:100]!r}; try /metrics or /health")
        if request.method not in ("GET", "HEAD"):
            raise HttpError(405, "only GET and HEAD are allowed", {"Allow": "GET, HEAD"})
        snapshot = await self.observer.snapshot()
        if request.path == "/metrics":
            body, content_type = self.metrics.render(snapshot, request.headers.get("accept", ""))
            return Response(200, body, content_type)
        health = evaluate(snapshot)
        document: dict[str, Any]
        if self._may_see_details(request, remote):
            document = {"node": snapshot.node, **health.details()}
        else:
            document = health.summary()
        body = (json.dumps(document, indent=1, sort_keys=True) + "\n").encode()
        status = 503 if health.status is Status.DOWN else 200
        return Response(status, body, "application/json")

    def _may_see_details(self, request: Request, remote: str) -> bool:
        auth = request.headers.get("authorization")
        if auth is None:
            return is_loopback(remote)
        scheme, _, given = auth.partition(" ")
        token = self.health_token
        if (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), token.encode())
        ):
            return True
        log.warning("httpd.unauthorized", extra={"kv": {"remote": remote}})
        raise HttpError(
            401, "wrong or unexpected health token", {"WWW-Authenticate": 'Bearer realm="replicad"'}
        )


def _remote_host(stream: trio.SocketStream) -> str:
    with contextlib.suppress(OSError):
        peer = stream.socket.getpeername()
        if isinstance(peer, tuple):
            return str(peer[0])
    return "-"
