"""Streaming a master's change log to one peer: windowed, resumable, acknowledged.

The log and each peer's acknowledged position are durable (see
:mod:`replicad.store.changelog`); this is the in-memory half: what has been
sent on the current link.  A link that comes up resends from the last
acknowledgement, so a change lost with a dying link is sent again, and the
receiver's idempotent apply (:mod:`replicad.store.replica`) makes the
duplicates harmless.

**The window** is counted twice: at most ``window`` entries and at most
``window_bytes`` octets of bodies (:func:`replicad.cluster.changewire.body_bytes`)
are unacknowledged at a time, so a peer that stops reading is not buffered
without bound (I9): it just falls behind until the log's bound marks it for
resync.  A single change whose bodies exceed ``window_bytes`` is sent only
when nothing else is in flight, and then alone.

**Deadlock.** The receiver buffers the changes it has read but not applied
(``MAX_INBOX`` / ``MAX_INBOX_BYTES`` in :mod:`replicad.cluster.streams`) and
stops reading the link when that is full.  Everything in its inbox is
unacknowledged, so it is part of this window: with

    window <= receiver's inbox count  and  window_bytes <= receiver's inbox bytes

a sender that keeps to its window never fills the receiver's inbox, and the
receiver never stops reading.  That matters: a receiver that stops reading
also stops reading the ACKs of its own stream in the other direction; if
both directions did so at once, each side's ACK would wait behind a link
the other side no longer reads, and the link would stall for good.  The
oversized change that goes alone keeps the invariant too: nothing of this
stream is in the receiver's inbox then, and the inbox takes one change
when it holds no bodies.

**Batches.** What the pump reads from the store at once is bounded the same
way (``batch`` entries, ``batch_bytes`` of bodies, one larger change alone):
:meth:`next_range` says how much the store may return.

In steady state one change costs one frame on each link and acknowledgements
are cumulative, so they can be batched (I8).

This class is pure (no I/O): the runtime reports what it sent and what was
acknowledged, and asks what to read next.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: No byte bound (the default of the count-only constructor).
UNBOUNDED = 1 << 62


@dataclass(frozen=True, slots=True)
class SendRange:
    """Read the log after ``after``: up to ``limit`` entries whose bodies total
    at most ``max_bytes``; with ``alone``, the first entry is taken even if
    its bodies alone exceed ``max_bytes`` (nothing is in flight)."""

    after: int
    limit: int
    max_bytes: int = UNBOUNDED
    alone: bool = True


class OutboxStream:
    def __init__(
        self,
        peer: str,
        acked: int,
        *,
        window: int = 256,
        batch: int = 64,
        window_bytes: int = UNBOUNDED,
        batch_bytes: int = UNBOUNDED,
    ) -> None:
        if window < 1 or batch < 1 or window_bytes < 1 or batch_bytes < 1:
            raise ValueError("window and batch must be positive")
        self.peer = peer
        self.acked = acked
        self.sent = acked
        self.window = window
        self.batch = batch
        self.window_bytes = window_bytes
        self.batch_bytes = min(batch_bytes, window_bytes)
        self.link_up = False
        #: (seq, body octets) of every frame sent and not acknowledged, in order.
        self._frames: deque[tuple[int, int]] = deque()
        #: Body octets in flight, and the most there ever were (tests assert on it).
        self.bytes_in_flight = 0
        self.peak_bytes = 0

    def on_link_up(self) -> None:
        self.link_up = True
        self._forget()
        self.sent = self.acked  # resume where the peer's acknowledgement stopped

    def on_link_down(self) -> None:
        self.link_up = False
        self._forget()
        self.sent = self.acked

    def on_ack(self, seq: int) -> bool:
        """A cumulative acknowledgement; False if it is stale (already known)."""
        if seq <= self.acked:
            return False
        self.acked = seq
        self.sent = max(self.sent, seq)
        self._release(seq)
        return True

    def on_frame(self, seq: int, nbytes: int) -> None:
        """The frame of entry ``seq`` was queued on the link, carrying ``nbytes``
        of bodies (:func:`~replicad.cluster.changewire.body_bytes`)."""
        self._frames.append((seq, nbytes))
        self.bytes_in_flight += nbytes
        self.peak_bytes = max(self.peak_bytes, self.bytes_in_flight)

    def on_sent(self, last_seq: int) -> None:
        """Every entry up to ``last_seq`` was sent or skipped."""
        self.sent = max(self.sent, last_seq)

    def on_resync_jump(self, seq: int) -> None:
        """The log dropped this peer's backlog (overflow): continue from ``seq``."""
        self.acked = max(self.acked, seq)
        self.sent = max(self.sent, self.acked)
        self._release(self.acked)

    def next_range(self, head: int | None = None) -> SendRange | None:
        """What to read next (given the log head, if known), or None: idle,
        link down, or the window full in entries or in bytes."""
        if not self.link_up or (head is not None and self.sent >= head):
            return None
        room = self.window - (self.sent - self.acked)
        room_bytes = self.window_bytes - self.bytes_in_flight
        if room <= 0 or room_bytes <= 0:
            return None
        limit = min(room, self.batch)
        if head is not None:
            limit = min(limit, head - self.sent)
        return SendRange(
            self.sent, limit, min(room_bytes, self.batch_bytes), self.bytes_in_flight == 0
        )

    @property
    def depth(self) -> int:
        return self.sent - self.acked

    def _release(self, seq: int) -> None:
        frames = self._frames
        while frames and frames[0][0] <= seq:
            self.bytes_in_flight -= frames.popleft()[1]

    def _forget(self) -> None:
        self._frames.clear()
        self.bytes_in_flight = 0
