"""One IMAP session's picture of its selected mailbox (pure, no I/O).

A client addresses messages by *message sequence number*, a position that
shifts whenever a message before it is expunged, so the server must keep,
per session, the numbering the client believes in and tell the client about
every change in an order that keeps both sides agreeing (RFC 3501 §7.4.1,
RFC 9051 §7.5.1):

- new messages are announced with ``* n EXISTS`` and take the next numbers;
- an expunge is announced with ``* n EXPUNGE`` (or ``* VANISHED uids`` once
  QRESYNC is enabled, RFC 7162 §3.2.10), and only when the session may send
  it: never while a FETCH, STORE or SEARCH by sequence number is answered,
  because the client would then read numbers that no longer mean what it
  thinks.  Until then the message keeps its number (a *pending* expunge);
- a flag change made anywhere in the cluster is ``* n FETCH (FLAGS …)``.

:class:`MailboxView` holds that numbering and turns the store's answer to
"what changed since modseq n" (:class:`~replicad.store.records.ChangeSet`)
into those untagged responses.  A UID that a conflict merge moved (I4) is,
to the view, exactly an expunge of the old UID plus a new message, which is
what architecture.md §11 promises clients.

It also upholds the "never backwards" rule of architecture.md §11: the
UIDNEXT and HIGHESTMODSEQ the session reports never drop below values it
already reported under the same UIDVALIDITY.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from replicad.store.records import ChangeSet, MessageInfo


@dataclass(frozen=True, slots=True)
class Exists:
    """``* n EXISTS``: the mailbox now holds ``count`` messages as the client numbers them."""

    count: int


@dataclass(frozen=True, slots=True)
class Expunged:
    """``* seq EXPUNGE`` for the message that had UID ``uid``; later numbers shift down."""

    seq: int
    uid: int


@dataclass(frozen=True, slots=True)
class Vanished:
    """``* VANISHED uids`` (QRESYNC): the UIDs are gone; numbering shifts as for EXPUNGE."""

    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class FlagsUpdate:
    """``* seq FETCH (UID uid FLAGS (…) [MODSEQ (m)])`` for a change made elsewhere."""

    seq: int
    uid: int
    flags: tuple[str, ...]
    modseq: int


@dataclass(frozen=True, slots=True)
class OutOfOrder:
    """A message appeared below a UID the client already knows.

    RFC 3501 §2.3.1.1 requires UIDs to ascend with sequence numbers, so the
    view cannot show it; the session must close the mailbox (as for a
    UIDVALIDITY change) so that the client selects it again and sees it.
    """

    uid: int


Update = Exists | Expunged | Vanished | FlagsUpdate | OutOfOrder


@dataclass(slots=True)
class _Entry:
    flags: tuple[str, ...]
    modseq: int
    expunged: bool = False


@dataclass(slots=True)
class MailboxView:
    """The numbering and the flags one session has been told about.

    Built from the mailbox's messages at SELECT time; afterwards only
    :meth:`refresh` (changes from the store) and :meth:`flush_expunges`
    (when the session may report them) change it.
    """

    uidvalidity: int
    uids: list[int]
    entries: dict[int, _Entry]
    #: Every change with a modseq up to here has been taken into the view.
    seen_modseq: int
    shown_uidnext: int
    shown_highestmodseq: int
    _pending: list[int] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        uidvalidity: int,
        messages: Iterable[MessageInfo],
        *,
        uidnext: int,
        highestmodseq: int,
        floor_uidnext: int = 0,
        floor_modseq: int = 0,
    ) -> MailboxView:
        """The view right after SELECT.

        ``floor_*`` are values the client was already shown (e.g. the modseq
        of a QRESYNC SELECT): reported values never go below them.
        """
        ordered = sorted(messages, key=lambda m: m.uid)
        return cls(
            uidvalidity=uidvalidity,
            uids=[m.uid for m in ordered],
            entries={m.uid: _Entry(m.flags, m.modseq) for m in ordered},
            seen_modseq=highestmodseq,
            shown_uidnext=max(uidnext, floor_uidnext),
            shown_highestmodseq=max(highestmodseq, floor_modseq),
        )

    # -- numbering ------------------------------------------------------------

    @property
    def exists(self) -> int:
        """How many messages the client believes the mailbox holds."""
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of ``uid`` as the client knows it, or None."""
        at = bisect_left(self.uids, uid)
        if at < len(self.uids) and self.uids[at] == uid:
            return at + 1
        return None

    def uid_at(self, seq: int) -> int:
        """The UID at sequence number ``seq`` (1-based); IndexError if out of range."""
        if not 1 <= seq <= len(self.uids):
            raise IndexError(seq)
        return self.uids[seq - 1]

    def is_expunged(self, uid: int) -> bool:
        """True for a message expunged in the store whose expunge is not yet reported."""
        entry = self.entries.get(uid)
        return entry is not None and entry.expunged

    def flags_of(self, uid: int) -> tuple[str, ...]:
        return self.entries[uid].flags

    def modseq_of(self, uid: int) -> int:
        return self.entries[uid].modseq

    def uids_in_range(self, low: int, high: int) -> list[int]:
        """UIDs of the view within ``low..high`` inclusive, ascending."""
        start = bisect_left(self.uids, low)
        out = []
        for uid in self.uids[start:]:
            if uid > high:
                break
            out.append(uid)
        return out

    @property
    def highest_uid(self) -> int:
        return self.uids[-1] if self.uids else 0

    # -- what the client is shown -----------------------------------------------

    def report_uidnext(self, uidnext: int) -> int:
        """UIDNEXT to show now: never lower than one shown before (architecture.md §11)."""
        self.shown_uidnext = max(self.shown_uidnext, uidnext, self.highest_uid + 1)
        return self.shown_uidnext

    def report_highestmodseq(self, highestmodseq: int) -> int:
        """HIGHESTMODSEQ to show now: never lower than one shown before."""
        self.shown_highestmodseq = max(self.shown_highestmodseq, highestmodseq)
        return self.shown_highestmodseq

    # -- changes -------------------------------------------------------------

    def note_own_flags(self, uid: int, flags: tuple[str, ...], modseq: int) -> None:
        """This session changed the flags itself (its STORE answer already said so)."""
        entry = self.entries.get(uid)
        if entry is not None and not entry.expunged:
            entry.flags = flags
            entry.modseq = max(entry.modseq, modseq)

    def refresh(self, changes: ChangeSet) -> list[Update]:
        """Take in what changed since :attr:`seen_modseq`; return EXISTS and FETCH updates.

        ``changes`` must answer ``changes_since(seen_modseq)`` for this mailbox
        under the view's UIDVALIDITY.  Expunges are only recorded as pending:
        :meth:`flush_expunges` reports them when the session may.
        """
        updates: list[Update] = []
        for uid in changes.vanished:
            entry = self.entries.get(uid)
            if entry is not None and not entry.expunged:
                entry.expunged = True
                self._pending.append(uid)
        fresh: list[MessageInfo] = []
        for info in changes.changed:
            entry = self.entries.get(info.uid)
            if entry is None:
                if info.uid > self.highest_uid:
                    fresh.append(info)
                else:
                    updates.append(OutOfOrder(info.uid))
                continue
            if entry.expunged:
                continue
            if info.flags != entry.flags:
                entry.flags = info.flags
                entry.modseq = info.modseq
                seq = self.seq_of(info.uid)
                assert seq is not None
                updates.append(FlagsUpdate(seq, info.uid, info.flags, info.modseq))
            else:
                entry.modseq = max(entry.modseq, info.modseq)
        if fresh:
            for info in sorted(fresh, key=lambda m: m.uid):
                self.uids.append(info.uid)
                self.entries[info.uid] = _Entry(info.flags, info.modseq)
            updates.append(Exists(len(self.uids)))
        self.seen_modseq = max(self.seen_modseq, changes.highestmodseq)
        return updates

    def add_own(self, messages: Sequence[MessageInfo]) -> Exists | None:
        """Messages this session itself added (APPEND/COPY into the selected mailbox)."""
        fresh = [m for m in messages if m.uid not in self.entries and m.uid > self.highest_uid]
        if not fresh:
            return None
        for info in sorted(fresh, key=lambda m: m.uid):
            self.uids.append(info.uid)
            self.entries[info.uid] = _Entry(info.flags, info.modseq)
        return Exists(len(self.uids))

    def expunge_own(self, uids: Iterable[int]) -> None:
        """This session expunged ``uids``; they are reported at the next flush."""
        for uid in uids:
            entry = self.entries.get(uid)
            if entry is not None and not entry.expunged:
                entry.expunged = True
                self._pending.append(uid)

    @property
    def has_pending_expunges(self) -> bool:
        return bool(self._pending)

    def flush_expunges(self, *, vanished: bool) -> list[Update]:
        """Report pending expunges and renumber; ``vanished`` selects the QRESYNC form.

        EXPUNGE responses are emitted in an order where each number is valid
        when the client reads it (highest first would also work; we report
        ascending UIDs and compute each number after the previous removal,
        as RFC 3501 §7.4.1's example does).
        """
        if not self._pending:
            return []
        gone = sorted(set(self._pending))
        self._pending.clear()
        updates: list[Update] = []
        if vanished:
            for uid in gone:
                self._remove(uid)
            updates.append(Vanished(tuple(gone)))
            return updates
        for uid in gone:
            seq = self.seq_of(uid)
            assert seq is not None
            self._remove(uid)
            updates.append(Expunged(seq, uid))
        return updates

    def _remove(self, uid: int) -> None:
        at = bisect_left(self.uids, uid)
        del self.uids[at]
        del self.entries[uid]
