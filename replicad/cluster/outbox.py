"""Streaming a master's change log to one peer: windowed, resumable, acknowledged.

The log and each peer's acknowledged position are durable (see
:mod:`replicad.store.changelog`); this is the in-memory half: what has been
sent on the current link.  A link that comes up resends from the last
acknowledgement, so a change lost with a dying link is sent again, and the
receiver's idempotent apply (:mod:`replicad.store.replica`) makes the
duplicates harmless.  At most ``window`` entries are unacknowledged at a
time: a peer that stops reading is not buffered without bound (I9), it just
falls behind until the log's bound marks it for resync.

In steady state one change costs one frame on each link and acknowledgements
are cumulative, so they can be batched (I8).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SendRange:
    """Read the log after ``after`` and send up to ``limit`` entries."""

    after: int
    limit: int


class OutboxStream:
    def __init__(self, peer: str, acked: int, *, window: int = 256, batch: int = 64) -> None:
        if window < 1 or batch < 1:
            raise ValueError("window and batch must be positive")
        self.peer = peer
        self.acked = acked
        self.sent = acked
        self.window = window
        self.batch = batch
        self.link_up = False

    def on_link_up(self) -> None:
        self.link_up = True
        self.sent = self.acked  # resume where the peer's acknowledgement stopped

    def on_link_down(self) -> None:
        self.link_up = False
        self.sent = self.acked

    def on_ack(self, seq: int) -> bool:
        """A cumulative acknowledgement; False if it is stale (already known)."""
        if seq <= self.acked:
            return False
        self.acked = seq
        self.sent = max(self.sent, seq)
        return True

    def on_sent(self, last_seq: int) -> None:
        self.sent = max(self.sent, last_seq)

    def on_resync_jump(self, seq: int) -> None:
        """The log dropped this peer's backlog (overflow): continue from ``seq``."""
        self.acked = max(self.acked, seq)
        self.sent = max(self.sent, self.acked)

    def next_range(self, head: int) -> SendRange | None:
        """What to send next given the log head, or None (idle, link down, window full)."""
        if not self.link_up or self.sent >= head:
            return None
        room = self.window - (self.sent - self.acked)
        if room <= 0:
            return None
        return SendRange(self.sent, min(room, self.batch, head - self.sent))

    @property
    def depth(self) -> int:
        return self.sent - self.acked
