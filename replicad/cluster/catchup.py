"""A peer catching up on this node's change log: what is left, how fast it goes, an ETA.

A node that was stopped (or cut off) while changes were written comes back
through its change stream: everything after its acknowledged cursor is
sent to it (verbs.md §4).  ``replicator status`` and ``replicad top`` show
that catch-up as messages and octets left and an estimated time to go
(architecture.md §9).

* *Left*: the log entries after the peer's cursor, and the octets of the
  messages they carry (RFC 5322 sizes as stored in the records, before
  compression; a backlog too long to read in full is extrapolated from
  the part read, and says so).
* *Rate*: entries acknowledged per second over the last
  :data:`RATE_WINDOW_S` (a sliding window of acknowledgement samples), so
  a stalled stream shows no ETA rather than a stale one.
* *ETA*: entries left / rate.
* *Mailboxes to resync*: those whose changes the log no longer holds for
  the peer (an outbox overflow, a change too large for the link): they come
  back through a resync each, not through the stream (resync.md §7).

Pure: time is an argument; the samples come from the stream's
acknowledgements (replicad.cluster.streams), the backlog's size from the
store (``MailStore.backlog_size``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

#: Log entries read at most to count a backlog's octets (the rest is
#: extrapolated): ``top`` asks every second, and a read of this many entries
#: takes a reader thread some tens of milliseconds.
BACKLOG_READ_LIMIT: Final = 5000
#: Acknowledgements older than this no longer count towards the rate.
RATE_WINDOW_S: Final = 10.0
#: Samples kept per peer at most (one per acknowledgement; the window bounds
#: them in time, this in memory).
MAX_SAMPLES: Final = 256


@dataclass(frozen=True, slots=True)
class BacklogSize:
    """What a peer has not acknowledged yet, as read from the log."""

    entries: int
    #: Message octets among the entries read.
    octets: int
    #: Entries read to count ``octets``: fewer than ``entries`` if the backlog
    #: was too long to read whole.
    read: int


@dataclass(frozen=True, slots=True)
class CatchUpProgress:
    """One peer's catch-up, as ``replicator status`` shows it."""

    changes_left: int
    bytes_left: int
    #: True if ``bytes_left`` was extrapolated from part of the backlog.
    bytes_estimated: bool
    #: Changes acknowledged per second lately; None if none in the window.
    changes_per_s: float | None
    #: Seconds until caught up at that rate; None without a rate.
    eta_s: float | None
    #: Mailboxes with a gap the resync layer closes (not in the log any more).
    mailboxes_to_resync: int = 0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CatchUpProgress:
        """The inverse of :meth:`to_json` (what ``cluster_status`` carries)."""
        return cls(
            changes_left=int(doc["changes_left"]),
            bytes_left=int(doc["bytes_left"]),
            bytes_estimated=bool(doc.get("bytes_estimated")),
            changes_per_s=doc.get("changes_per_s"),
            eta_s=doc.get("eta_s"),
            mailboxes_to_resync=int(doc.get("mailboxes_to_resync", 0)),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "changes_left": self.changes_left,
            "bytes_left": self.bytes_left,
            "bytes_estimated": self.bytes_estimated,
            "changes_per_s": self.changes_per_s,
            "eta_s": self.eta_s,
            "mailboxes_to_resync": self.mailboxes_to_resync,
        }


class AckRate:
    """The acknowledgement samples of one peer's stream, and the rate they give."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=MAX_SAMPLES)

    def acked(self, now: float, seq: int) -> None:
        """The peer acknowledged the log up to ``seq`` at ``now``."""
        self._samples.append((now, seq))

    def per_second(self, now: float) -> float | None:
        """Entries acknowledged per second over the last :data:`RATE_WINDOW_S`
        (up to ``now``); None if fewer than two samples fall in it."""
        recent = [(t, s) for t, s in self._samples if now - t <= RATE_WINDOW_S]
        if len(recent) < 2:
            return None
        (t0, s0), (t1, s1) = recent[0], recent[-1]
        if t1 <= t0 or s1 <= s0:
            return None
        # Up to now, not to the last sample: a stream that stopped slows down.
        return (s1 - s0) / max(now - t0, t1 - t0)


def progress(backlog: BacklogSize, rate: float | None, resyncs: int = 0) -> CatchUpProgress | None:
    """The catch-up of a peer with ``backlog`` left, going at ``rate`` entries
    per second, and ``resyncs`` mailboxes to resync; None if it has nothing left."""
    if backlog.entries <= 0 and resyncs <= 0:
        return None
    estimated = 0 < backlog.read < backlog.entries
    octets = backlog.octets
    if estimated:
        octets = round(backlog.octets * backlog.entries / backlog.read)
    eta = round(backlog.entries / rate, 1) if rate else None
    return CatchUpProgress(
        changes_left=backlog.entries,
        bytes_left=octets,
        bytes_estimated=estimated,
        changes_per_s=round(rate, 1) if rate else None,
        eta_s=eta,
        mailboxes_to_resync=max(0, resyncs),
    )


def describe(peer: str, p: CatchUpProgress) -> str:
    """The progress line: ``n3 catching up: 8123 changes, 131.2 MB left, 1020/s, ETA 8 s``."""
    size = _octets(p.bytes_left)
    rate = f"{p.changes_per_s:g} changes/s" if p.changes_per_s else "no progress lately"
    eta = f"ETA {_duration(p.eta_s)}" if p.eta_s is not None else "ETA unknown"
    about = "~" if p.bytes_estimated else ""
    gaps = p.mailboxes_to_resync
    resync = f", {gaps} mailbox{'es' if gaps != 1 else ''} to resync" if gaps else ""
    return (
        f"{peer} catching up: {p.changes_left} changes, {about}{size} left{resync}, {rate}, {eta}"
    )


def _octets(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"
