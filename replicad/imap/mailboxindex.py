"""An immutable snapshot of one mailbox's message metadata, shared by every
IMAP session of a node that selects it (pure, no I/O).

SELECT needs every message's UID and flags; metadata FETCH needs UID,
flags, size and internal date.  Reading and decoding every index row again
for each command and each session made SELECT of a large mailbox cost ten
times Dovecot's, and a view per session holding a tuple and a dict entry
per message cost over 1 MB per idle session.  A :class:`MailboxIndex` is
built once from the store's columns (:mod:`replicad.store.columns`) and
brought forward with the store's "changes since modseq n"
(:meth:`MailboxIndex.apply`), each step a new snapshot, so a session can
keep the one it numbered its messages from
(:class:`~replicad.imap.view.MailboxView`) while others move on.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from replicad.store.records import (
    I64_TYPE,
    U64_TYPE,
    UID_TYPE,
    ChangeSet,
    MessageColumns,
    MessageInfo,
)


class MessageMeta(NamedTuple):
    """What FETCH reports of a message without reading it (RFC 3501 §6.4.5).

    A named tuple: metadata FETCH makes one per message, and a tuple is the
    cheapest immutable record to make."""

    uid: int
    modseq: int
    flags: tuple[str, ...]
    internaldate: int
    size: int


@dataclass(frozen=True, slots=True)
class MailboxIndex:
    """Mailbox ``guid`` under ``uidvalidity`` as it stood at HIGHESTMODSEQ ``modseq``.

    Never changed once built (the columns included): :meth:`apply` returns
    a new snapshot.  Values derived from the whole mailbox (first unseen,
    keywords) are computed on first use and kept with the snapshot.
    """

    guid: bytes
    uidvalidity: int
    modseq: int
    columns: MessageColumns
    _derived: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of_messages(
        cls, guid: bytes, uidvalidity: int, modseq: int, messages: Iterable[MessageInfo]
    ) -> MailboxIndex:
        """A snapshot from message records (tests, small mailboxes)."""
        ordered = sorted(messages, key=lambda m: m.uid)
        shared: dict[tuple[str, ...], tuple[str, ...]] = {}
        columns = MessageColumns(
            array(UID_TYPE, (m.uid for m in ordered)),
            array(U64_TYPE, (m.modseq for m in ordered)),
            tuple(shared.setdefault(m.flags, m.flags) for m in ordered),
            array(I64_TYPE, (m.internaldate for m in ordered)),
            array(U64_TYPE, (m.size for m in ordered)),
        )
        return cls(guid, uidvalidity, modseq, columns)

    def __len__(self) -> int:
        return len(self.columns.uids)

    @property
    def uids(self) -> array[int]:
        """The UIDs, ascending; shared: never change it."""
        return self.columns.uids

    def position(self, uid: int) -> int | None:
        """The 0-based position of ``uid``, or None if the snapshot lacks it."""
        uids = self.columns.uids
        at = bisect_left(uids, uid)
        if at < len(uids) and uids[at] == uid:
            return at
        return None

    def flags_at(self, at: int) -> tuple[str, ...]:
        return self.columns.flags[at]

    def modseq_at(self, at: int) -> int:
        return self.columns.modseqs[at]

    def meta(self, uid: int) -> MessageMeta | None:
        at = self.position(uid)
        if at is None:
            return None
        c = self.columns
        return MessageMeta(uid, c.modseqs[at], c.flags[at], c.internaldates[at], c.sizes[at])

    def metas(self, uids: Sequence[int]) -> dict[int, MessageMeta]:
        """:meth:`meta` of each of ``uids`` the snapshot holds."""
        c = self.columns
        if uids is c.uids or (len(uids) == len(c.uids) and array(UID_TYPE, uids) == c.uids):
            # The whole mailbox (``1:*``): no lookups.
            return {
                uid: MessageMeta(uid, modseq, flags, date, size)
                for uid, modseq, flags, date, size in zip(
                    c.uids, c.modseqs, c.flags, c.internaldates, c.sizes, strict=True
                )
            }
        out: dict[int, MessageMeta] = {}
        for uid in uids:
            at = self.position(uid)
            if at is not None:
                out[uid] = MessageMeta(
                    uid, c.modseqs[at], c.flags[at], c.internaldates[at], c.sizes[at]
                )
        return out

    @property
    def first_unseen(self) -> int | None:
        """The 1-based position of the first message without ``\\Seen`` (SELECT's UNSEEN)."""
        if "first_unseen" not in self._derived:
            unseen = {f for f in set(self.columns.flags) if "\\Seen" not in f}
            self._derived["first_unseen"] = next(
                (n for n, f in enumerate(self.columns.flags, 1) if f in unseen), None
            )
        found = self._derived["first_unseen"]
        assert found is None or isinstance(found, int)
        return found

    @property
    def keywords(self) -> tuple[str, ...]:
        """Every keyword (flag not starting with ``\\``) in use, sorted (SELECT's FLAGS)."""
        if "keywords" not in self._derived:
            self._derived["keywords"] = tuple(
                sorted({k for f in set(self.columns.flags) for k in f if not k.startswith("\\")})
            )
        found = self._derived["keywords"]
        assert isinstance(found, tuple)
        return found

    def apply(self, changes: ChangeSet) -> MailboxIndex:
        """The snapshot at ``changes.highestmodseq``, for ``changes`` =
        the store's changes since :attr:`modseq` under the same UIDVALIDITY.

        Changed messages take their new flags and modseq; UIDs the snapshot
        lacks are added in UID order; vanished ones are removed."""
        c = self.columns
        gone = set(changes.vanished)
        if gone:
            keep = [i for i, uid in enumerate(c.uids) if uid not in gone]
            uids = array(UID_TYPE, (c.uids[i] for i in keep))
            modseqs = array(U64_TYPE, (c.modseqs[i] for i in keep))
            flags = [c.flags[i] for i in keep]
            dates = array(I64_TYPE, (c.internaldates[i] for i in keep))
            sizes = array(U64_TYPE, (c.sizes[i] for i in keep))
        else:
            uids, modseqs = array(UID_TYPE, c.uids), array(U64_TYPE, c.modseqs)
            flags = list(c.flags)
            dates, sizes = array(I64_TYPE, c.internaldates), array(U64_TYPE, c.sizes)
        shared = {f: f for f in set(flags)}
        fresh: list[MessageInfo] = []
        for info in changes.changed:
            if info.uid in gone:
                continue
            at = bisect_left(uids, info.uid)
            if at < len(uids) and uids[at] == info.uid:
                modseqs[at] = info.modseq
                flags[at] = shared.setdefault(info.flags, info.flags)
            else:
                fresh.append(info)
        fresh.sort(key=lambda m: m.uid)
        if fresh and uids and fresh[0].uid < uids[-1]:
            # A UID below the highest (a replica catching up out of order):
            # rebuild in UID order.
            rows = sorted(
                [*zip(uids, modseqs, flags, dates, sizes, strict=True)]
                + [(m.uid, m.modseq, m.flags, m.internaldate, m.size) for m in fresh]
            )
            uids = array(UID_TYPE, (r[0] for r in rows))
            modseqs = array(U64_TYPE, (r[1] for r in rows))
            flags = [shared.setdefault(r[2], r[2]) for r in rows]
            dates = array(I64_TYPE, (r[3] for r in rows))
            sizes = array(U64_TYPE, (r[4] for r in rows))
        else:
            for m in fresh:
                uids.append(m.uid)
                modseqs.append(m.modseq)
                flags.append(shared.setdefault(m.flags, m.flags))
                dates.append(m.internaldate)
                sizes.append(m.size)
        columns = MessageColumns(uids, modseqs, tuple(flags), dates, sizes)
        return MailboxIndex(
            self.guid, self.uidvalidity, max(self.modseq, changes.highestmodseq), columns
        )
