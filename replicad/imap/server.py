"""The IMAP listeners: trio glue around :class:`~replicad.imap.session.ImapSession`.

Binds every ``[imap] listen`` address (plain, STARTTLS offered when a
certificate is configured) and ``listen_tls`` address (implicit TLS, port
993's kind) and runs one task per connection in its own nursery.  The
operator's certificate (``tls_cert``/``tls_key``, not the cluster CA) is
loaded at start and again on :meth:`ImapServer.reload_tls` (SIGHUP);
connections already open keep theirs.

Per connection: octets read are fed to the session, which answers through
a buffered :class:`_StreamOutput` (flushed when the session has answered
everything at hand, so a 10,000-line FETCH is a few large writes).  A
second task waits on the store's commit watch and, while the client IDLEs,
pushes updates at once -- a change applied on this node reaches an idling
client within one commit.  The two never run session code at the same time
(one lock).

Limits (architecture.md §11): ``max_sessions_per_ip`` at accept and
``max_sessions_per_user`` at login (``* BYE`` then close);
``idle_timeout`` seconds of client silence, IDLE included, end the session
with ``* BYE`` (RFC 3501 §5.4); line and literal sizes are the parser's.
Log lines carry the session id and the user, never a password.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import ssl
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from replicad.errors import ConfigError, ReplicadError
from replicad.imap.commandtable import COMMANDS
from replicad.imap.mailaccess import MailAccess
from replicad.imap.parser import ParserLimits
from replicad.imap.responses import render_bye
from replicad.imap.session import ImapSession, Outcome, Phase, SessionSettings
from replicad.imap.updates import send_updates

log = logging.getLogger("replicad.imap")

#: Command names that become metric labels.
_KNOWN = frozenset(cls.__name__.upper() for cls in COMMANDS)

READ_CHUNK = 64 * 1024
FLUSH_AT = 256 * 1024
BACKLOG = 128
#: Output that cannot be written within this is given up (the client stopped reading).
SEND_TIMEOUT = 60.0
HANDSHAKE_TIMEOUT = 30.0


class CommandMetrics(Protocol):
    """Where the listeners report (:class:`~replicad.metrics.NodeMetrics`)."""

    def imap_command(self, command: str, result: str, seconds: float) -> None: ...

    def count_imap_sessions(self, count: Callable[[], int]) -> None: ...


@dataclass(frozen=True, slots=True)
class ImapListenConfig:
    """What the listeners need, from ``[imap]`` (:class:`~replicad.config.ImapSection`)."""

    tcp: tuple[tuple[str, int], ...] = ()
    tls_tcp: tuple[tuple[str, int], ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_line: int = 64 * 1024
    max_literal: int = 64 * 1024 * 1024
    max_sessions_per_user: int = 50
    max_sessions_per_ip: int = 200
    idle_timeout: float = 1800.0
    allow_plaintext_auth: bool = False


def client_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side context with the operator's certificate (TLS 1.2+)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"imap.tls_cert/imap.tls_key: cannot load {cert}, {key}: {exc}"
        ) from None
    return context


class _StreamOutput:
    """Buffers the session's output; :meth:`flush` writes it."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def send(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= FLUSH_AT:
            await self.flush()

    async def flush(self) -> None:
        if self._buffer:
            # Handed over as it is, not copied: the session writes to a new buffer.
            data, self._buffer = self._buffer, bytearray()
            with trio.fail_after(SEND_TIMEOUT):
                await self.stream.send_all(data)


@dataclass(eq=False, slots=True)
class _Connection:
    id: str
    peer: str
    host: str
    session: ImapSession | None = None
    read_scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class ImapServer:
    """Serves IMAP on the configured addresses until :meth:`drain` (or cancellation)."""

    def __init__(
        self,
        access: MailAccess,
        config: ImapListenConfig,
        *,
        version: str = "",
        metrics: CommandMetrics | None = None,
    ) -> None:
        self._access = access
        self._metrics = metrics
        if metrics is not None:
            metrics.count_imap_sessions(lambda: len(self._connections))
        self._config = config
        self._version = version
        self._tls: ssl.SSLContext | None = None
        if config.tls_cert is not None and config.tls_key is not None:
            self._tls = client_tls_context(config.tls_cert, config.tls_key)
        self._connections: set[_Connection] = set()
        self._per_host: Counter[str] = Counter()
        self._per_user: Counter[str] = Counter()
        self._accept_scope = trio.CancelScope()
        self._draining = False
        self.closed = trio.Event()
        #: Per-command results, for /metrics: (command, result) -> count.
        self.commands: Counter[tuple[str, str]] = Counter()

    @property
    def session_count(self) -> int:
        return len(self._connections)

    def reload_tls(self) -> None:
        """Load the certificate again (SIGHUP); a bad file keeps the old one."""
        if self._config.tls_cert is None or self._config.tls_key is None:
            return
        try:
            self._tls = client_tls_context(self._config.tls_cert, self._config.tls_key)
        except ConfigError as exc:
            log.error("imap.tls_reload_failed", extra={"kv": {"error": str(exc)}})
            return
        log.info("imap.tls_reloaded", extra={"kv": {"cert": str(self._config.tls_cert)}})

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind every address, report started, serve until :meth:`drain`."""
        listeners: list[tuple[trio.SocketListener, bool]] = []
        try:
            for host, port in self._config.tcp:
                listeners.extend((lst, False) for lst in await _listen(host, port))
            for host, port in self._config.tls_tcp:
                listeners.extend((lst, True) for lst in await _listen(host, port))
            log.info("imap.listening", extra={"kv": {"addresses": _names(self._config)}})
            async with trio.open_nursery() as sessions:
                with self._accept_scope:
                    async with trio.open_nursery() as acceptors:
                        for listener, implicit in listeners:
                            acceptors.start_soon(self._accept, listener, implicit, sessions)
                        task_status.started()
                with trio.CancelScope(shield=True):
                    for listener, _ in listeners:
                        await listener.aclose()
        finally:
            for listener, _ in listeners:
                with contextlib.suppress(Exception):
                    await listener.aclose()
            self.closed.set()

    def drain(self) -> None:
        """Stop accepting; sessions waiting for their client get ``* BYE``."""
        self._draining = True
        self._accept_scope.cancel()
        for connection in self._connections:
            connection.read_scope.cancel()

    async def _accept(
        self, listener: trio.SocketListener, implicit: bool, nursery: trio.Nursery
    ) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._serve, stream, implicit)

    async def _serve(self, raw: trio.SocketStream, implicit: bool) -> None:
        peer, host = _peer(raw)
        connection = _Connection(secrets.token_hex(6), peer, host)
        kv = {"session": connection.id}
        if self._per_host[host] >= self._config.max_sessions_per_ip:
            log.warning("imap.refused", extra={"kv": {"peer": peer, "reason": "per_ip_limit"}})
            with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError, OSError):
                await raw.send_all(render_bye("Too many connections from your address"))
            await raw.aclose()
            return
        self._per_host[host] += 1
        self._connections.add(connection)
        log.info("imap.connect", extra={"kv": {**kv, "peer": peer, "tls": implicit}})
        reason = "closed"
        stream: trio.abc.Stream = raw
        try:
            if implicit:
                stream = await self._start_tls(raw)
            reason = await self._converse(connection, stream, secure=implicit)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            reason = f"connection lost ({type(exc).__name__})"
        except trio.TooSlowError:
            reason = "client not reading"
        except ssl.SSLError as exc:
            reason = f"TLS failed ({exc.reason})"
        except Exception as exc:
            log.exception("imap.internal_error", extra={"kv": {**kv, "error": type(exc).__name__}})
            reason = "internal error"
        finally:
            self._connections.discard(connection)
            self._per_host[host] -= 1
            if connection.session is not None and connection.session.user is not None:
                self._per_user[connection.session.user] -= 1
            with contextlib.suppress(Exception):
                await stream.aclose()
        user = connection.session.user if connection.session is not None else None
        log.info("imap.disconnect", extra={"kv": {**kv, "user": user, "reason": reason}})

    async def _start_tls(self, stream: trio.abc.Stream) -> trio.SSLStream[trio.abc.Stream]:
        assert self._tls is not None
        tls = trio.SSLStream(stream, self._tls, server_side=True)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await tls.do_handshake()
        return tls

    def _settings(self, connection: _Connection, secure: bool) -> SessionSettings:
        loopback = _is_loopback(connection.host)
        return SessionSettings(
            starttls=self._tls is not None and not secure,
            plaintext_auth=loopback or self._config.allow_plaintext_auth,
            limits=ParserLimits(
                max_line_bytes=self._config.max_line,
                max_literal_bytes=self._config.max_literal,
            ),
            version=self._version,
        )

    async def _converse(
        self, connection: _Connection, stream: trio.abc.Stream, *, secure: bool
    ) -> str:
        out = _StreamOutput(stream)
        session = ImapSession(
            self._access,
            out,
            self._settings(connection, secure),
            COMMANDS,
            secure=secure,
            session_id=connection.id,
            record=self._record,
        )
        connection.session = session
        lock = trio.Lock()
        if self._draining:
            await out.send(render_bye("Server shutting down"))
            await out.flush()
            return "draining"
        await session.greet()
        await out.flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._push_while_idle, session, out, lock)
            reason = await self._read_loop(connection, session, out, lock)
            nursery.cancel_scope.cancel()
        return reason

    async def _read_loop(
        self,
        connection: _Connection,
        session: ImapSession,
        out: _StreamOutput,
        lock: trio.Lock,
    ) -> str:
        while True:
            connection.read_scope = trio.CancelScope()
            data = None
            with connection.read_scope, trio.move_on_after(self._config.idle_timeout):
                data = await out.stream.receive_some(READ_CHUNK)
            if data is None:
                why = "Server shutting down" if self._draining else "Autologout; idle too long"
                await out.send(render_bye(why))
                await out.flush()
                return "drained" if self._draining else "idle timeout"
            if not data:
                return "client closed"
            async with lock:
                was_user = session.user
                session.receive(bytes(data))
                outcome = await session.process()
                if session.user is not None and was_user is None:
                    outcome = await self._admit_user(session, out) or outcome
                await out.flush()
            if outcome is Outcome.CLOSE:
                return "logout" if session.phase is Phase.LOGOUT else "closed by server"
            if outcome is Outcome.STARTTLS:
                if session.parser.buffered:
                    # RFC 3501 §6.2.1: nothing sent before the TLS handshake counts.
                    return "data pipelined after STARTTLS"
                out.stream = await self._start_tls(out.stream)
                session.tls_started()

    async def _admit_user(self, session: ImapSession, out: _StreamOutput) -> Outcome | None:
        assert session.user is not None
        self._per_user[session.user] += 1
        if self._per_user[session.user] > self._config.max_sessions_per_user:
            await out.send(render_bye("Too many sessions for this user"))
            return Outcome.CLOSE
        return None

    async def _push_while_idle(
        self, session: ImapSession, out: _StreamOutput, lock: trio.Lock
    ) -> None:
        watch = self._access.watch
        generation = watch.generation
        while True:
            generation = await watch.wait_past(generation)
            if session.idling is None or session.selected is None:
                continue
            async with lock:
                if session.idling is not None:
                    await send_updates(session, expunges=True)
                    await out.flush()

    def _record(self, command: str, result: str, seconds: float) -> None:
        if command not in _KNOWN:
            command = "UNKNOWN"  # a client cannot create metric series at will
        self.commands[(command, result)] += 1
        if self._metrics is not None:
            self._metrics.imap_command(command, result, seconds)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "unix"


def _peer(stream: trio.SocketStream) -> tuple[str, str]:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "unknown", "unknown"
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return (f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"), host
    return "unix", "unix"


def _names(config: ImapListenConfig) -> str:
    def one(host: str, port: int) -> str:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    plain = [one(h, p) for h, p in config.tcp]
    implicit = [one(h, p) + " (tls)" for h, p in config.tls_tcp]
    return ",".join(plain + implicit)


async def _listen(host: str, port: int) -> Sequence[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ReplicadError(
            f"cannot listen for IMAP on {where} (imap.listen): {exc.strerror or exc}"
        ) from None

