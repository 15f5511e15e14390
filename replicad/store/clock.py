"""Hybrid logical clock for flag stamps and name claims (I5: per-flag
last-writer-wins).

A stamp is ``(wall milliseconds << 16) | counter``: it follows real time
when clocks agree, and never goes backwards on one node even when the wall
clock does, because :meth:`HybridClock.now` is strictly increasing and
:meth:`HybridClock.observe` pulls the clock past every stamp the node
applies from a peer.  So on a node, a flag change made after seeing another
change always carries the greater stamp (causality), and concurrent changes
on two sides of a partition are ordered by wall time, the "last writer wins"
the seed asks for.

Two rules keep a wrong wall clock from losing a client's change:

* **A write wins over what it replaces.**  A local write that replaces
  registers is stamped :meth:`HybridClock.after` the stamps it replaces, so
  a change a client made after seeing a state always wins over that state,
  whatever the wall clock says.  Without this, a node whose clock ran an
  hour ahead and was set right would stamp its next change an hour *below*
  the registers it wrote before, and that change would lose to them: the
  flag a client removed would stay set.
* **The clock survives restarts.**  The store persists the highest stamp it
  handed out or accepted in the transaction that used it
  (:meth:`HybridClock.high_water`; ``meta`` key ``clock``), and a restarted
  node starts above it, unless that is more than ``max_skew`` ahead of its
  wall clock (a clock that ran ahead and was set right; logged at error):
  it then starts at that bound, so its new changes are not refused too.
* **Skew from peers is bounded.**  A stamp more than ``max_skew`` seconds
  ahead of this node's wall clock is refused (:meth:`HybridClock.admits`):
  accepting it would drag this node's clock, and through it every node's,
  that far ahead.  The refused change is marked for resync and retried; it
  applies once the clocks agree again, and the operator is told why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

COUNTER_BITS: Final = 16
#: The largest stamp a node hands out or accepts: wall milliseconds below
#: 2**46 (the year 4199) leave headroom below msgpack's 63-bit signed range.
MAX_STAMP: Final = (1 << 62) - 1
#: Default bound on how far ahead of this node's wall clock a peer's stamp may be.
DEFAULT_MAX_SKEW: Final = 300.0


def wall_stamp(seconds: float) -> int:
    """The smallest stamp of the millisecond containing ``seconds``."""
    return int(seconds * 1000) << COUNTER_BITS


def stamp_seconds(stamp: int) -> float:
    """The wall time (seconds since the epoch) a stamp was made at."""
    return (stamp >> COUNTER_BITS) / 1000


class HybridClock:
    """Strictly increasing stamps, at least the wall time, above every stamp observed.

    ``wall`` is the wall clock (``time.time`` by default; the simulator gives
    each node its own, to run one ahead of the others).
    """

    def __init__(
        self,
        wall: Callable[[], float] | None = None,
        *,
        floor: int = 0,
        max_skew: float = DEFAULT_MAX_SKEW,
    ) -> None:
        self._wall = wall if wall is not None else time.time
        self._last = floor
        self.max_skew = max_skew

    @property
    def high_water(self) -> int:
        """The highest stamp handed out or observed: what must survive a restart."""
        return self._last

    def restore(self, floor: int) -> None:
        """Start above ``floor`` (the high-water mark persisted before a restart)."""
        self._last = max(self._last, floor)

    def now(self) -> int:
        self._last = max(wall_stamp(self._wall()), self._last + 1)
        return self._last

    def after(self, floor: int) -> int:
        """A new stamp that is also greater than ``floor`` (the stamps of the
        registers a write replaces).

        A ``floor`` ahead of the clock does not move the clock: it is a stamp
        from a wall clock that ran ahead (refused beyond ``max_skew`` from
        peers, so only this node's own, from before a clock step), and
        following it would stamp every later change ahead too.  Last writer
        wins per register, so a stamp only has to order the writes of the
        same register, which this does."""
        stamp = self.now()
        return stamp if stamp > floor else floor + 1

    def ceiling(self) -> int:
        """The highest stamp this node accepts now: ``max_skew`` ahead of its wall."""
        return min(MAX_STAMP, wall_stamp(self._wall() + self.max_skew))

    def admits(self, stamp: int) -> bool:
        """Whether a peer's ``stamp`` is within ``max_skew`` of this node's wall
        clock (and in range at all); see the module docstring."""
        return 0 <= stamp <= self.ceiling()

    def ahead_of_wall(self, stamp: int) -> float:
        """How many seconds ``stamp`` lies ahead of this node's wall clock."""
        return stamp_seconds(stamp) - self._wall()

    def observe(self, stamp: int) -> None:
        if stamp > self._last:
            self._last = stamp
