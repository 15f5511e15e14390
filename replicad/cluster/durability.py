"""Durability levels and the acknowledgements that satisfy them (I1, docs/architecture.md §6).

A level says how many nodes must have a change on disk before the client
is told it succeeded: ``local`` (1), ``quorum`` (a majority of the
configured nodes), ``all``, or a number.  A level is never silently
downgraded: if fewer nodes are reachable than the level needs, the write is
refused up front with a retryable :class:`~replicad.errors.DurabilityError`
(exit 75), and a write already waiting fails the same way when the nodes it
waits for become unreachable.

:class:`AckTracker` is pure: the runtime tells it which node has a change
(by log sequence number) on disk, and asks which waiting writes are done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from replicad.errors import ConfigError, DurabilityError


@dataclass(frozen=True, slots=True)
class DurabilityLevel:
    """``copies`` nodes must have the change on disk; ``name`` is how it was configured."""

    name: str
    copies: int

    @classmethod
    def parse(cls, value: str | int, cluster_size: int) -> DurabilityLevel:
        if cluster_size < 1:
            raise ValueError("cluster size must be positive")
        if isinstance(value, bool):
            raise ConfigError(f"durability must be local, quorum, all or a number, not {value!r}")
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            copies = int(value)
            if not 1 <= copies <= cluster_size:
                raise ConfigError(
                    f"durability {copies} is outside 1..{cluster_size} (the number of nodes)"
                )
            return cls(str(copies), copies)
        if value == "local":
            return cls("local", 1)
        if value == "quorum":
            return cls("quorum", cluster_size // 2 + 1)
        if value == "all":
            return cls("all", cluster_size)
        raise ConfigError(f"durability must be local, quorum, all or a number, not {value!r}")

    def check_reachable(self, reachable: int) -> None:
        """Refuse before writing if the level cannot be met (I7: clear, retryable)."""
        if reachable < self.copies:
            raise DurabilityError(
                f"durability {self.name} needs {self.copies} nodes on disk but only "
                f"{reachable} reachable; retry later or lower the level"
            )


@dataclass(slots=True)
class _Waiter:
    seq: int
    copies: int
    have: set[str] = field(default_factory=set)


class AckTracker:
    """Tracks which nodes hold which log sequence numbers of one master."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._acked: dict[str, int] = {}
        #: Entries a node's cumulative ACK covers but it does not hold (it
        #: refused them, or they were held back from it for a resync), until
        #: :meth:`filled`.  Kept while a wait may still ask about them.
        self._holes: dict[str, set[int]] = {}
        self._waiting: dict[int, _Waiter] = {}
        self._next_id = 0

    def _holds(self, node: str, seq: int) -> bool:
        return self._acked.get(node, 0) >= seq and seq not in self._holes.get(node, ())

    def wait_for(self, seq: int, copies: int, holders: frozenset[str]) -> int | None:
        """Register a write needing ``copies`` copies; None if ``holders`` already suffice.

        ``holders`` are nodes known to have the change on disk already (the
        master itself, and the node that forwarded the write when it applied
        the master's reply).
        """
        have = set(holders) | {n for n in self._acked if self._holds(n, seq)}
        if len(have) >= copies:
            return None
        self._next_id += 1
        self._waiting[self._next_id] = _Waiter(seq, copies, have)
        return self._next_id

    def acked(self, node: str, seq: int, refused: frozenset[int] = frozenset()) -> list[int]:
        """``node`` has everything up to ``seq`` on disk but the changes in
        ``refused`` (it could not apply them: they await a resync there, and
        are no copy, I1); returns the waits now satisfied."""
        if refused:
            self._holes.setdefault(node, set()).update(refused)
        if seq <= self._acked.get(node, 0):
            return []
        self._acked[node] = seq
        return self._recheck(node)

    def filled(self, node: str, seqs: Iterable[int]) -> list[int]:
        """``node`` now holds the entries ``seqs`` after all (a resync brought
        them); returns the waits now satisfied."""
        holes = self._holes.get(node)
        if holes is None:
            return []
        holes.difference_update(seqs)
        return self._recheck(node)

    def _recheck(self, node: str) -> list[int]:
        done = []
        for wid, waiter in self._waiting.items():
            if node not in waiter.have and self._holds(node, waiter.seq):
                waiter.have.add(node)
                if len(waiter.have) >= waiter.copies:
                    done.append(wid)
        for wid in done:
            del self._waiting[wid]
        # A hole below every wait is asked about again only by a later wait,
        # and a later wait is for the log's head then, at or above every
        # entry any node acknowledged so far: those below both go.
        floor = max(self._acked.values(), default=0)
        floor = min([floor, *(w.seq for w in self._waiting.values())])
        for holes in self._holes.values():
            holes.difference_update([s for s in holes if s < floor])
        return done

    def unreachable(self, reachable: frozenset[str]) -> list[int]:
        """Waits that can no longer be met with the nodes still reachable (to fail them)."""
        failed = []
        for wid, waiter in self._waiting.items():
            if len(waiter.have | reachable) < waiter.copies:
                failed.append(wid)
        for wid in failed:
            del self._waiting[wid]
        return failed

    def cancel(self, wid: int) -> None:
        self._waiting.pop(wid, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)
