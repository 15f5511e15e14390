"""One live link to a neighbour and what is bound to it (framing.md §5, verbs.md MBOX).

A :class:`PeerSession` is the per-link state every part of the runtime
shares: tagged requests and their replies, the MBOX ids bound in each
direction, the link's outbox cursor and its inbox of received changes.
The parts talk to it through :class:`~replicad.cluster.interfaces.Peer`.
Errors cross the wire as NO codes (verbs.md, "Errors"): :func:`no_code`
and :func:`error_from_no` are the two directions of that one table.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from replicad.cluster.changewire import MboxBinding
from replicad.cluster.outbox import OutboxStream
from replicad.cluster.streamgaps import StreamGaps
from replicad.cluster.writeops import WRITE_DEADLINE
from replicad.errors import (
    AlreadyExistsError,
    BadInputError,
    DurabilityError,
    MailboxDeletedError,
    NoSuchMailboxError,
    OutcomeUnknownError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
)
from replicad.protocol import commands as c
from replicad.protocol.connection import LinkStateError, ReplyReceived
from replicad.transport import Link

MAX_LAG_SAMPLES: Final = 1000  # per peer, for replication lag percentiles


def no_code(exc: ReplicadError) -> str:
    """The NO code that carries ``exc`` to the peer that asked."""
    if isinstance(exc, DurabilityError):
        return "DURABILITY"
    if isinstance(exc, UnreachableError):
        return "UNREACHABLE"
    if isinstance(exc, MailboxDeletedError):
        return "DELETED"
    if isinstance(exc, (NoSuchMailboxError,)) or exc.exit_code == 68:
        return "NONEXISTENT"
    if isinstance(exc, AlreadyExistsError):
        return "CONFLICT"
    if isinstance(exc, TemporaryError):
        return "TEMPFAIL"
    if isinstance(exc, BadInputError):
        return "BADINPUT"
    return "FAILED"


def error_from_no(code: str | None, text: str) -> ReplicadError:
    """The error a NO with ``code`` stands for, raised where the request was made."""
    if code == "DURABILITY":
        return DurabilityError(text)
    if code == "NONEXISTENT":
        return NoSuchMailboxError(text)
    if code == "DELETED":
        return MailboxDeletedError(text)
    if code == "CONFLICT":
        return AlreadyExistsError(text)
    if code in ("TEMPFAIL", "UNREACHABLE", "NOTMASTER"):
        return TemporaryError(text)
    if code == "BADINPUT":
        return BadInputError(text)
    return ReplicadError(text)


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    reply: ReplyReceived | None = None


class PeerSession:
    """One live link to a neighbour and what is bound to it."""

    def __init__(self, link: Link, outbox: OutboxStream) -> None:
        self.link = link
        self.peer = link.peer
        self.outbox = outbox
        self.in_ids: dict[int, MboxBinding] = {}
        self.out_ids: dict[tuple[str, str, bytes], int] = {}
        self.stream_ids: dict[bytes, int] = {}  # mailbox GUID -> id, for the change stream
        #: Which of this node's changes the stream holds back for a resync.
        self.gaps = StreamGaps()
        self.last_sent = outbox.acked  # log seq of the last change frame sent
        self.ack_dirty = trio.Event()  # acknowledged position not yet on disk
        self.lag: deque[float] = deque(maxlen=MAX_LAG_SAMPLES)  # write -> peer ack, s
        self.skip_to: dict[int, int] = {}  # ACK of seq s also covers skipped entries up to t
        self._next_out_id = 0
        self.pending: dict[str, _Pending] = {}
        self.window_freed = trio.Event()
        self.last_heard = trio.current_time()
        self.rtt: float | None = None
        #: IMAP sessions open on the peer, from its last PING reply (None: not yet).
        self.peer_imap_sessions: int | None = None
        self.applied_seq = 0
        self.acked_seq = 0
        self.cancel_scope = trio.CancelScope()
        self.closed = False
        #: Received changes waiting for the applier, with their body octets.
        self.inbox: deque[tuple[c.Change, int]] = deque()
        self.inbox_bytes = 0
        self.peak_inbox_bytes = 0  # the most there ever were (tests assert on it)
        self.inbox_ready = trio.Event()
        self.inbox_space = trio.Event()

    # -- sending --

    async def request(self, command: c.Command, *, timeout: float = WRITE_DEADLINE) -> Any:
        """Send ``command`` and return its OK payload; NO raises the matching error."""
        with trio.move_on_after(timeout) as scope:
            while not self.link.connection.can_send(command):
                if self.closed:
                    raise UnreachableError(f"link to {self.peer} closed")
                await self.window_freed.wait()
            if self.closed:
                raise UnreachableError(f"link to {self.peer} closed")
            try:
                tag = self.link.queue(lambda conn: conn.send_command(command))
            except LinkStateError:
                # Closed by what the reader just took in: nothing was sent.
                raise UnreachableError(f"link to {self.peer} closed") from None
            waiter = self.pending[tag] = _Pending()
            try:
                await self.link.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # Part of it, or all of it, may have reached the peer.
                raise OutcomeUnknownError(f"link to {self.peer} closed") from None
            await waiter.done.wait()
        if scope.cancelled_caught:
            raise TemporaryError(f"{command.VERB} to {self.peer}: no reply in {timeout:g}s")
        reply = waiter.reply
        if reply is None:
            raise OutcomeUnknownError(
                f"link to {self.peer} closed before {command.VERB} was answered"
            )
        if reply.status is c.Status.OK:
            return reply.payload
        raise error_from_no(reply.code, f"{self.peer}: {reply.text}")

    def mbox_id(self, user: str, name: str, guid: bytes) -> tuple[int, bool]:
        """Our id for the mailbox on this link, and whether it is new (send MBOX first)."""
        key = (user, name, guid)
        found = self.out_ids.get(key)
        if found is not None:
            return found, False
        if self._next_out_id > 65535:
            # Rebinding from 0 is allowed (verbs.md MBOX); forget the old bindings.
            self.out_ids.clear()
            self.stream_ids.clear()
            self._next_out_id = 0
        mid = self._next_out_id
        self._next_out_id += 1
        self.out_ids[key] = mid
        return mid, True

    async def send_mbox(self, mbox: c.Mbox) -> None:
        """Queue an MBOX binding; its reply is consumed, never awaited."""
        while not self.link.connection.can_send(mbox):
            if self.closed:
                raise UnreachableError(f"link to {self.peer} closed")
            await self.link.flush()
            await self.window_freed.wait()
        try:
            tag = self.link.queue(lambda conn: conn.send_command(mbox))
        except LinkStateError:
            raise UnreachableError(f"link to {self.peer} closed") from None
        self.pending[tag] = _Pending()

    async def send_untagged(self, data: c.Untagged) -> None:
        """Send an untagged frame; nothing if the link is closed already."""
        if self.closed:
            return
        try:
            self.link.queue(lambda conn: conn.send_untagged(data))
        except LinkStateError:
            return
        await self.link.flush()

    async def reply_ok(self, tag: str, payload: c.Record | None = None) -> None:
        if self.closed:
            return
        try:
            self.link.queue(lambda conn: conn.send_ok(tag, payload))
        except LinkStateError:
            return  # the link closed under us (the peer said goodbye): no one to answer
        await self.link.flush()

    async def reply_no(self, tag: str, code: str, text: str) -> None:
        if self.closed:
            return
        try:
            self.link.queue(lambda conn: conn.send_no(tag, code, text[:900]))
        except LinkStateError:
            return
        await self.link.flush()

    # -- receiving --

    def take_reply(self, event: ReplyReceived, *, frees_window: bool = True) -> None:
        """Hand a reply to the request waiting for it (if any is); a reply
        frees a place in the link's window of tagged commands."""
        waiter = self.pending.pop(event.tag, None)
        if frees_window:
            self.window_freed.set()
            self.window_freed = trio.Event()
        if waiter is not None:
            waiter.reply = event
            waiter.done.set()

    def fail_pending(self) -> None:
        self.closed = True
        for waiter in self.pending.values():
            waiter.done.set()
        self.pending.clear()
        self.window_freed.set()
