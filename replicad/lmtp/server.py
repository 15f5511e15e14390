"""The LMTP listener: trio glue around :class:`~replicad.lmtp.protocol.LmtpConnection`.

The server binds every ``[lmtp] listen`` address (TCP, and unix sockets
created 0660), runs one task per session in its own nursery, and asks a
:class:`Delivery` -- the node's, :mod:`replicad.lmtp.delivery` -- the two
questions the state machine leaves open: is a recipient a known user
(at RCPT), and what became of each recipient's copy (after DATA).

Every read waits at most ``timeout`` seconds; a silent client then gets
``421 4.4.2`` and is disconnected (RFC 5321 §4.5.3.2).  Replies are written
when the input at hand has been processed (RFC 2920 §3: a pipelined group
gets its replies together), and before each delivery, which may wait for
the user's durability level.

Shutdown mirrors the admin socket (:class:`replicad.admin.server.AdminServer`):
:meth:`LmtpServer.drain` stops accepting and ends every session that is
waiting for the client (``421 4.3.2``; a message still arriving is
dropped, so nothing of it is saved and the MTA sends it again); a session
busy with a delivery finishes it, sends its replies, then gets the same
421.  The owner bounds that with its shutdown timeout.

Log lines carry the session id (``session=``), as do Dovecot's; message
bodies are never logged.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import trio

from replicad.errors import ReplicadError
from replicad.lmtp.protocol import (
    ConnectionClosed,
    DeliveryStatus,
    Event,
    Greeted,
    LmtpConfig,
    LmtpConnection,
    MailFrom,
    MessageComplete,
    MessageRefused,
    RcptAnswer,
    RcptTo,
    State,
    trace_headers,
)
from replicad.transport.unixsocket import (
    bind_unix_socket,
    clear_stale_socket,
    remove_socket_if_ours,
)

log = logging.getLogger("replicad.lmtp")

READ_CHUNK = 64 * 1024
DEFAULT_MAX_SESSIONS = 256
BACKLOG = 128
#: A reply that cannot be written within this is given up (the client is gone).
SEND_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What became of one recipient's copy: ``status`` decides the reply;
    ``mailbox`` and ``uid`` say where it was saved, ``error`` why not (logged)."""

    status: DeliveryStatus
    mailbox: str | None = None
    uid: int | None = None
    error: str | None = None


class Delivery(Protocol):
    """What the listener needs from the node."""

    async def known_user(self, user: str) -> bool:
        """Whether mail for ``user`` (already normalised) is accepted at RCPT.

        True/False decides 250 or 550 5.1.1; an exception is a failed lookup
        (451 4.3.0, the client tries again).
        """
        ...

    async def deliver(
        self,
        body: bytes,
        recipients: Sequence[tuple[str, str]],
        *,
        message_key: bytes | None = None,
    ) -> Sequence[DeliveryOutcome]:
        """Save ``body`` (trace headers in front) for each ``(user, mailbox)``.

        ``message_key`` names the message as the client sent it (a hash of
        the sender and the octets, without the trace headers, which change
        with the number of recipients): the same message delivered again to
        the same mailbox soon after is the MTA's retry, answered with the
        first copy (:func:`replicad.store.index.delivery_guid`).

        ``mailbox`` is the folder the address asked for (its ``+detail``) or
        INBOX; an implementation saves into INBOX when that folder does not
        exist.  Returns one outcome per recipient, in order, and never
        :attr:`~DeliveryStatus.SAVED` for a copy that is not stored at the
        user's durability level.  An exception counts as a temporary
        failure of every recipient.
        """
        ...


class DeliveryMetrics(Protocol):
    """Counters of deliveries (``replicad.metrics.NodeMetrics`` implements it)."""

    def lmtp_outcome(self, outcome: str, recipients: int = 1) -> None:
        """``outcome`` is ``saved``, ``tempfail`` or ``rejected``."""
        ...

    def lmtp_latency(self, seconds: float) -> None: ...


_OUTCOME_LABEL = {
    DeliveryStatus.SAVED: "saved",
    DeliveryStatus.DURABILITY: "tempfail",
    DeliveryStatus.STORE_FULL: "tempfail",
    DeliveryStatus.TEMPFAIL: "tempfail",
}


@dataclass(slots=True, eq=False)
class _Session:
    id: str
    peer: str
    read_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    reading: bool = False


class LmtpServer:
    """Serves LMTP on the configured addresses until :meth:`drain` (or cancellation)."""

    def __init__(
        self,
        delivery: Delivery,
        config: LmtpConfig,
        *,
        timeout: float,
        metrics: DeliveryMetrics | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        self._delivery = delivery
        self._config = config
        self._timeout = timeout
        self._metrics = metrics
        self._max_sessions = max_sessions
        self._sessions: set[_Session] = set()
        self._accept_scope = trio.CancelScope()
        self._draining = False
        self.closed = trio.Event()  # set once every session is over after drain()

    @property
    def session_count(self) -> int:
        return len(self._sessions)

    async def run(
        self,
        tcp: Sequence[tuple[str, int]],
        unix: Sequence[Path],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind every address, report started, serve until :meth:`drain` and
        every session is over; unix socket files are removed at the end."""
        listeners: list[trio.SocketListener] = []
        sockets: list[tuple[Path, int]] = []
        try:
            for host, port in tcp:
                listeners.extend(await _tcp_listeners(host, port))
            for path in unix:
                listener, inode = _unix_listener(path)
                listeners.append(listener)
                sockets.append((path, inode))
            log.info(
                "lmtp.listening",
                extra={"kv": {"addresses": ",".join(_listen_names(tcp, unix))}},
            )
            async with trio.open_nursery() as sessions:
                with self._accept_scope:
                    async with trio.open_nursery() as acceptors:
                        for listener in listeners:
                            acceptors.start_soon(self._accept, listener, sessions)
                        task_status.started()
                # Closed before the sessions end: new clients are refused at once.
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
        finally:
            for listener in listeners:
                with contextlib.suppress(Exception):
                    await listener.aclose()
            for path, inode in sockets:
                remove_socket_if_ours(path, inode)
            self.closed.set()

    def drain(self) -> None:
        """Stop accepting; end sessions waiting for the client; let deliveries finish."""
        self._draining = True
        self._accept_scope.cancel()
        for session in self._sessions:
            if session.reading:
                session.read_scope.cancel()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._serve, stream)

    async def _serve(self, stream: trio.SocketStream) -> None:
        session = _Session(secrets.token_hex(6), _peer_name(stream))
        conn = LmtpConnection(self._config)
        if len(self._sessions) >= self._max_sessions:
            log.warning(
                "lmtp.refused",
                extra={"kv": {"peer": session.peer, "reason": "too_many_sessions"}},
            )
            with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError, OSError):
                await stream.send_all(b"421 4.3.2 Too many connections, try again later\r\n")
            await stream.aclose()
            return
        kv = {"session": session.id}
        log.info("lmtp.connect", extra={"kv": {**kv, "peer": session.peer}})
        self._sessions.add(session)
        try:
            async with stream:
                await _send(stream, conn)
                while not conn.closed:
                    data = None if self._draining else await self._read(stream, session)
                    if data is None:  # drained, or the client was idle too long
                        closed = conn.shutdown() if self._draining else conn.timed_out()
                        if closed is not None:
                            self._log_closed(session, closed)
                        break
                    await self._handle(stream, conn, session, conn.receive_data(data))
                    await _send(stream, conn)
                await _send(stream, conn)
            reason = conn.close_reason or "closed"
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # The client went away while we were writing; a message not
            # completed is not delivered (the MTA sends it again).
            reason = f"connection lost ({type(exc).__name__})"
            if conn.state is State.DATA:
                reason += " inside DATA"
        except trio.TooSlowError:
            reason = "client not reading its replies"
        except Exception as exc:
            # A bug, not the client's doing: this session ends, the node serves on.
            log.exception("lmtp.internal_error", extra={"kv": {**kv, "error": type(exc).__name__}})
            reason = "internal error"
        finally:
            self._sessions.discard(session)
        log.info("lmtp.disconnect", extra={"kv": {**kv, "reason": reason}})

    async def _read(self, stream: trio.SocketStream, session: _Session) -> bytes | None:
        """The next bytes (``b""`` at end of stream), None on timeout or drain."""
        session.read_scope = trio.CancelScope()
        session.reading = True
        try:
            with session.read_scope, trio.move_on_after(self._timeout):
                return await stream.receive_some(READ_CHUNK)
            return None
        finally:
            session.reading = False

    async def _handle(
        self,
        stream: trio.SocketStream,
        conn: LmtpConnection,
        session: _Session,
        events: list[Event],
    ) -> None:
        kv = {"session": session.id}
        queue: deque[Event] = deque(events)
        while queue:
            event = queue.popleft()
            if isinstance(event, RcptTo):
                answer = await self._lookup(session, event)
                queue.extend(conn.answer_rcpt(answer))
            elif isinstance(event, MessageComplete):
                await _send(stream, conn)  # the RCPT replies before a delivery that may wait
                statuses = await self._deliver(session, event)
                queue.extend(conn.data_results(statuses))
            elif isinstance(event, MessageRefused):
                log.warning(
                    "lmtp.message_refused",
                    extra={
                        "kv": {
                            **kv,
                            "reply": event.reply,
                            "size": event.size,
                            "recipients": len(event.recipients),
                        }
                    },
                )
                self._count("rejected", len(event.recipients))
            elif isinstance(event, MailFrom):
                log.debug(
                    "lmtp.mail_from",
                    extra={"kv": {**kv, "sender": event.sender, "size": event.size}},
                )
            elif isinstance(event, Greeted):
                log.debug("lmtp.lhlo", extra={"kv": {**kv, "client": event.client}})
            elif isinstance(event, ConnectionClosed):
                self._log_closed(session, event)

    async def _lookup(self, session: _Session, event: RcptTo) -> RcptAnswer:
        recipient = event.recipient
        kv = {"session": session.id, "rcpt": recipient.address, "user": recipient.user}
        try:
            known = await self._delivery.known_user(recipient.user)
        except Exception as exc:
            log.warning(
                "lmtp.rcpt_lookup_failed",
                extra={"kv": {**kv, "error": type(exc).__name__, "reason": str(exc)}},
            )
            self._count("tempfail")
            return RcptAnswer.TEMPFAIL
        if not known:
            log.info("lmtp.rcpt_unknown", extra={"kv": kv})
            self._count("rejected")
            return RcptAnswer.UNKNOWN_USER
        return RcptAnswer.OK

    async def _deliver(self, session: _Session, message: MessageComplete) -> list[DeliveryStatus]:
        recipients = message.recipients
        body = trace_headers(message.sender, recipients) + message.body
        start = time.perf_counter()
        outcomes: Sequence[DeliveryOutcome]
        try:
            outcomes = await self._delivery.deliver(
                body,
                [(r.user, r.mailbox) for r in recipients],
                message_key=message_key(message.sender, message.body),
            )
            if len(outcomes) != len(recipients):
                raise ReplicadError(
                    f"{len(outcomes)} delivery outcomes for {len(recipients)} recipients"
                )
        except Exception as exc:
            log.exception(
                "lmtp.delivery_error",
                extra={"kv": {"session": session.id, "error": type(exc).__name__}},
            )
            outcomes = [DeliveryOutcome(DeliveryStatus.TEMPFAIL, error=str(exc))] * len(recipients)
        seconds = time.perf_counter() - start
        if self._metrics is not None:
            self._metrics.lmtp_latency(seconds)
        for recipient, outcome in zip(recipients, outcomes, strict=True):
            kv = {
                "session": session.id,
                "rcpt": recipient.address,
                "user": recipient.user,
                "size": len(body),
            }
            if outcome.status is DeliveryStatus.SAVED:
                log.info(
                    "lmtp.saved",
                    extra={"kv": {**kv, "mailbox": outcome.mailbox, "uid": outcome.uid}},
                )
            else:
                log.warning(
                    "lmtp.not_saved",
                    extra={"kv": {**kv, "status": outcome.status.value, "reason": outcome.error}},
                )
            self._count(_OUTCOME_LABEL[outcome.status])
        return [o.status for o in outcomes]

    def _count(self, outcome: str, recipients: int = 1) -> None:
        if self._metrics is not None and recipients:
            self._metrics.lmtp_outcome(outcome, recipients)

    def _log_closed(self, session: _Session, event: ConnectionClosed) -> None:
        if event.in_data:
            log.warning(
                "lmtp.aborted_in_data",
                extra={"kv": {"session": session.id, "reason": event.reason}},
            )


def message_key(sender: str, body: bytes) -> bytes:
    """What identifies a message as the MTA sends it: its retry sends the
    same sender and octets (the queue file), whatever the recipients."""
    h = hashlib.sha256(sender.encode("utf-8", "surrogateescape"))
    h.update(b"\0")
    h.update(body)
    return h.digest()


async def _send(stream: trio.SocketStream, conn: LmtpConnection) -> None:
    data = conn.data_to_send()
    if data:
        with trio.fail_after(SEND_TIMEOUT):
            await stream.send_all(data)


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return "unknown"
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "unix"


def _listen_names(tcp: Sequence[tuple[str, int]], unix: Sequence[Path]) -> list[str]:
    return [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in tcp] + [str(p) for p in unix]


async def _tcp_listeners(host: str, port: int) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
    except OSError as exc:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise ReplicadError(
            f"cannot listen for LMTP on {where} (lmtp.listen): {exc.strerror or exc}"
        ) from None


def _unix_listener(path: Path) -> tuple[trio.SocketListener, int]:
    """A listening unix socket at ``path``, mode 0660 (never wider), and its inode.

    A socket file left by a dead node is removed; a live one, or a file of
    another kind, makes the start fail.  0660: the MTA's user is given
    access through the group (e.g. ``postfix`` in group ``replicad``).
    """
    clear_stale_socket(path, "LMTP socket")
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o750)
    sock, inode = bind_unix_socket(path, mode=0o660, backlog=BACKLOG, what="LMTP socket")
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock)), inode
