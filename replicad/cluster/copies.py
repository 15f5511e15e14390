"""Waiting for a write's copies, around the pure :class:`~replicad.cluster.durability.AckTracker`.

A master's write waits until its durability level's number of nodes hold
the change: this node, and peers whose cumulative ACK covers it without
refusing it.  A peer that becomes unreachable fails the waits that still
need it, so the client hears at once that the level cannot be met.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from replicad.cluster.durability import AckTracker, DurabilityLevel
from replicad.cluster.writeops import WRITE_DEADLINE
from replicad.errors import DurabilityError


class CopyWaits:
    """Writes waiting for their copies, by wait id."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.acks = AckTracker(me)
        self._events: dict[int, trio.Event] = {}
        self._failed: set[int] = set()

    async def wait(
        self, seq: int, level: DurabilityLevel, deadline: float = WRITE_DEADLINE
    ) -> None:
        """Until ``level.copies`` nodes hold log entry ``seq``; DurabilityError if
        they do not within ``deadline`` seconds or can no longer (the change
        stays on disk here either way)."""
        wid = self.acks.wait_for(seq, level.copies, frozenset({self.me}))
        if wid is None:
            return
        event = self._events[wid] = trio.Event()
        with trio.move_on_after(deadline) as scope:
            await event.wait()
        if scope.cancelled_caught:
            self.acks.cancel(wid)
            self._events.pop(wid, None)
        if scope.cancelled_caught or wid in self._failed:
            self._failed.discard(wid)
            raise DurabilityError(
                f"durability {level.name}: the change is on disk here but fewer than "
                f"{level.copies} nodes confirmed it; retry"
            )

    def acked(self, peer: str, seq: int, refused: frozenset[int]) -> None:
        """``peer`` holds every entry up to ``seq`` but those it ``refused``."""
        for wid in self.acks.acked(peer, seq, refused):
            event = self._events.pop(wid, None)
            if event is not None:
                event.set()

    def filled(self, peer: str, seqs: Iterable[int]) -> None:
        """``peer`` holds the entries ``seqs`` after all (a resync brought them)."""
        for wid in self.acks.filled(peer, seqs):
            event = self._events.pop(wid, None)
            if event is not None:
                event.set()

    def reachable(self, holders: frozenset[str]) -> None:
        """Only ``holders`` can still confirm: fail the waits that need others."""
        for wid in self.acks.unreachable(holders):
            self._failed.add(wid)
            event = self._events.pop(wid, None)
            if event is not None:
                event.set()
