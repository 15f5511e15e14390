"""Hybrid logical clock for flag stamps (I5: per-flag last-writer-wins).

A stamp is ``(wall milliseconds << 16) | counter``: it follows real time
when clocks agree, and never goes backwards on one node even when the wall
clock does, because :meth:`HybridClock.now` is strictly increasing and
:meth:`HybridClock.observe` pulls the clock past every stamp the node
applies from a peer.  So on a node, a flag change made after seeing another
change always carries the greater stamp (causality), and concurrent changes
on two sides of a partition are ordered by wall time, the "last writer wins"
the seed asks for.  The clock is not persisted: after a restart the wall
clock has moved on, and the first stamps a node applies from its peers
re-establish the floor.
"""

from __future__ import annotations

import time
from typing import Final

COUNTER_BITS: Final = 16


def wall_stamp(seconds: float) -> int:
    """The smallest stamp of the millisecond containing ``seconds``."""
    return int(seconds * 1000) << COUNTER_BITS


class HybridClock:
    """Strictly increasing stamps, at least the wall time, above every stamp observed."""

    def __init__(self) -> None:
        self._last = 0

    def now(self) -> int:
        self._last = max(wall_stamp(time.time()), self._last + 1)
        return self._last

    def observe(self, stamp: int) -> None:
        if stamp > self._last:
            self._last = stamp
