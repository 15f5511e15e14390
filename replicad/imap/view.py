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

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from replicad.imap.mailboxindex import MailboxIndex
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
    """What the view says of a message where it differs from its snapshot."""

    flags: tuple[str, ...]
    modseq: int
    expunged: bool = False


@dataclass(slots=True)
class MailboxView:
    """The numbering and the flags one session has been told about.

    Built from the mailbox's :class:`~replicad.imap.mailboxindex.MailboxIndex`
    at SELECT time; afterwards only :meth:`refresh` (changes from the store)
    and :meth:`flush_expunges` (when the session may report them) change it.

    The snapshot is shared with the node's other sessions and never
    changed: the view keeps only what differs from it (flags changed since,
    messages added since, pending expunges) and copies the UID column the
    first time its numbering diverges, so an idle session on a large
    mailbox costs a few references, not a record per message.
    """

    uidvalidity: int
    base: MailboxIndex
    #: Every change with a modseq up to here has been taken into the view.
    seen_modseq: int
    shown_uidnext: int
    shown_highestmodseq: int
    #: The UIDs as the client numbers them: ``base.uids`` until they diverge.
    _uids: array[int]
    _changed: dict[int, _Entry] = field(default_factory=dict)
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
        """The view right after SELECT, from message records.

        ``floor_*`` are values the client was already shown (e.g. the modseq
        of a QRESYNC SELECT): reported values never go below them.
        """
        index = MailboxIndex.of_messages(b"", uidvalidity, highestmodseq, messages)
        return cls.of_index(
            index, uidnext=uidnext, floor_uidnext=floor_uidnext, floor_modseq=floor_modseq
        )

    @classmethod
    def of_index(
        cls,
        index: MailboxIndex,
        *,
        uidnext: int,
        floor_uidnext: int = 0,
        floor_modseq: int = 0,
    ) -> MailboxView:
        """The view right after SELECT, numbering the messages of ``index``."""
        return cls(
            uidvalidity=index.uidvalidity,
            base=index,
            seen_modseq=index.modseq,
            shown_uidnext=max(uidnext, floor_uidnext),
            shown_highestmodseq=max(index.modseq, floor_modseq),
            _uids=index.uids,
        )

    # -- numbering ------------------------------------------------------------

    @property
    def uids(self) -> Sequence[int]:
        """The UIDs in sequence-number order (read-only)."""
        return self._uids

    @property
    def exists(self) -> int:
        """How many messages the client believes the mailbox holds."""
        return len(self._uids)

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of ``uid`` as the client knows it, or None."""
        at = bisect_left(self._uids, uid)
        if at < len(self._uids) and self._uids[at] == uid:
            return at + 1
        return None

    def uid_at(self, seq: int) -> int:
        """The UID at sequence number ``seq`` (1-based); IndexError if out of range."""
        if not 1 <= seq <= len(self._uids):
            raise IndexError(seq)
        return self._uids[seq - 1]

    def _entry(self, uid: int) -> _Entry | None:
        """The view's record of ``uid`` (a fresh one when the snapshot has it
        unchanged: changing it changes nothing), or None when the client
        does not know the UID."""
        entry = self._changed.get(uid)
        if entry is not None:
            return entry
        if self.seq_of(uid) is None:
            return None
        at = self.base.position(uid)
        assert at is not None, "a UID of the view is in its snapshot or among its changes"
        return _Entry(self.base.flags_at(at), self.base.modseq_at(at))

    def agrees_with(self, index: MailboxIndex) -> bool:
        """Whether the view says of every message exactly what ``index`` says:
        it numbers from that very snapshot and has changed nothing since."""
        return self.base is index and self._uids is index.uids and not self._changed

    def is_expunged(self, uid: int) -> bool:
        """True for a message expunged in the store whose expunge is not yet reported."""
        entry = self._changed.get(uid)
        return entry is not None and entry.expunged

    def flags_of(self, uid: int) -> tuple[str, ...]:
        entry = self._entry(uid)
        if entry is None:
            raise KeyError(uid)
        return entry.flags

    def modseq_of(self, uid: int) -> int:
        entry = self._entry(uid)
        if entry is None:
            raise KeyError(uid)
        return entry.modseq

    def uids_in_range(self, low: int, high: int) -> list[int]:
        """UIDs of the view within ``low..high`` inclusive, ascending."""
        return list(self._uids[bisect_left(self._uids, low) : bisect_right(self._uids, high)])

    @property
    def highest_uid(self) -> int:
        return self._uids[-1] if self._uids else 0

    def _own_uids(self) -> array[int]:
        """The UID column, copied from the shared snapshot before its first change."""
        if self._uids is self.base.uids:
            self._uids = array(self._uids.typecode, self._uids)
        return self._uids

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
        entry = self._changed.get(uid)
        if entry is None:
            # The common case (a FETCH of every message): the snapshot says so already.
            at = self.base.position(uid)
            if at is None:
                return
            if self.base.flags_at(at) == flags and self.base.modseq_at(at) >= modseq:
                return
            if self.seq_of(uid) is None:
                return
            entry = _Entry(self.base.flags_at(at), self.base.modseq_at(at))
        if entry.expunged:
            return
        if entry.flags != flags or entry.modseq < modseq:
            self._changed[uid] = _Entry(flags, max(entry.modseq, modseq))

    def refresh(self, changes: ChangeSet) -> list[Update]:
        """Take in what changed since :attr:`seen_modseq`; return EXISTS and FETCH updates.

        ``changes`` must answer ``changes_since(seen_modseq)`` for this mailbox
        under the view's UIDVALIDITY.  Expunges are only recorded as pending:
        :meth:`flush_expunges` reports them when the session may.
        """
        updates: list[Update] = []
        for uid in changes.vanished:
            entry = self._entry(uid)
            if entry is not None and not entry.expunged:
                self._changed[uid] = _Entry(entry.flags, entry.modseq, expunged=True)
                self._pending.append(uid)
        fresh: list[MessageInfo] = []
        for info in changes.changed:
            entry = self._entry(info.uid)
            if entry is None:
                if info.uid > self.highest_uid:
                    fresh.append(info)
                else:
                    updates.append(OutOfOrder(info.uid))
                continue
            if entry.expunged:
                continue
            if info.flags != entry.flags:
                self._changed[info.uid] = _Entry(info.flags, info.modseq)
                seq = self.seq_of(info.uid)
                assert seq is not None
                updates.append(FlagsUpdate(seq, info.uid, info.flags, info.modseq))
            elif info.modseq > entry.modseq:
                self._changed[info.uid] = _Entry(entry.flags, info.modseq)
        if fresh:
            self._append(fresh)
            updates.append(Exists(len(self._uids)))
        self.seen_modseq = max(self.seen_modseq, changes.highestmodseq)
        return updates

    def _append(self, fresh: list[MessageInfo]) -> None:
        uids = self._own_uids()
        for info in sorted(fresh, key=lambda m: m.uid):
            uids.append(info.uid)
            self._changed[info.uid] = _Entry(info.flags, info.modseq)

    def add_own(self, messages: Sequence[MessageInfo]) -> Exists | None:
        """Messages this session itself added (APPEND/COPY into the selected mailbox)."""
        fresh = [m for m in messages if self._entry(m.uid) is None and m.uid > self.highest_uid]
        if not fresh:
            return None
        self._append(fresh)
        return Exists(len(self._uids))

    def expunge_own(self, uids: Iterable[int]) -> None:
        """This session expunged ``uids``; they are reported at the next flush."""
        for uid in uids:
            entry = self._entry(uid)
            if entry is not None and not entry.expunged:
                self._changed[uid] = _Entry(entry.flags, entry.modseq, expunged=True)
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
        uids = self._own_uids()
        at = bisect_left(uids, uid)
        del uids[at]
        del self._changed[uid]
