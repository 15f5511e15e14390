"""Holding back a peer's stream of a mailbox whose earlier changes it lost (resync.md §7).

A peer's copy of a mailbox has a *gap* when changes of it never reached
the peer because the log dropped the peer's backlog: an ``outbox-overflow``
resync mark from the modseq of the first change lost (the *gap marks*,
:data:`~replicad.store.changelog.GAP_REASONS`).  A change skipped as too
large for the link is not one: the resync's UPDATE could not carry it
either, so that gap may never close, and holding the mailbox's other
changes back would freeze its copy there.

Changes of that mailbox made after the gap would still apply on the peer
(they name new UIDs, or messages it holds), and each would raise its
HIGHESTMODSEQ over the gap.  The resync would then find entries the peer
lacks with modseqs at or below its HIGHESTMODSEQ, which its clients would
never be told about (RFC 7162 CHANGEDSINCE), so the merge would have to
re-stamp every one of them above it (merge rule 4, I3), on the master's
own copy, logged and streamed to every follower: the cost of an overflow
grew with the size of the gap, for every node.

So the stream holds those changes back: this node's own changes of a
gapped mailbox wait for the resync, which brings them with the rest in one
UPDATE computed from what the peer holds (incremental SYNC, resync.md §3).
The peer's HIGHESTMODSEQ then only ever moves past entries it holds, the
master's copy is not touched, and nobody else is sent anything.

**Release.** Once a resync delivered the mailbox to the peer up to modseq
``H``, the stream sends that mailbox's changes above ``H`` again.  A change
it held back *above* ``H`` (made after the resync read the master's state)
would then be lost to the peer: :meth:`StreamGaps.release` refuses, the
mark stays, and the next resync brings it.  Both run on the event loop
with no wait between a decision and its record, so no change slips
between them.

**Only gaps this stream opened.** Relayed changes (origin another node) are
never held back: their gap is settled by their master, not by a resync of
this node's.  A new gap (the log dropped the backlog again) forgets every
release, since a release is only good for the gap it closed.

**Bounded.** Each change held back is remembered (its log entry, for
durability) until a resync delivers it; past :data:`MAX_HELD` of them on
one link (a resync that keeps failing) the stream stops holding back and
sends, as it did before gaps were held: the merge then re-stamps the gap,
which costs bytes, never correctness (I9: no memory grows without bound).

This class is pure (no I/O); one per link, like the outbox window.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from replicad.store.changecodec import mailbox_of
from replicad.store.records import (
    Change,
    FlagsChanged,
    MailboxMerged,
    MessageAppended,
    MessagesCopied,
    MessagesExpunged,
)

#: The changes a resync's UPDATE stands for: those of messages.  Creating,
#: renaming and deleting mailboxes always go on (the UPDATE of a resync
#: carries no DELETE, and a CREATE or a claim is cheap and never re-stamps).
_MESSAGE_CHANGES = (MessageAppended, MessagesCopied, FlagsChanged, MessagesExpunged, MailboxMerged)
#: Changes held back on one link at most (module doc, "Bounded").
MAX_HELD: Final = 100_000


def change_modseq(change: Change) -> int:
    """The highest modseq ``change`` gives an entry of its mailbox."""
    if isinstance(change, (MessageAppended, FlagsChanged, MessagesExpunged)):
        return change.modseq
    if isinstance(change, MessagesCopied):
        return max((a.modseq for a in change.appended), default=0)
    if isinstance(change, MailboxMerged):
        return change.plan.highestmodseq
    return 0


class StreamGaps:
    """Which of this node's changes the stream to one peer holds back."""

    def __init__(self) -> None:
        #: mailbox -> the modseq a resync delivered it up to, on this link.
        self._released: dict[bytes, int] = {}
        #: mailbox -> the highest modseq of a change held back.
        self._held: dict[bytes, int] = {}
        #: The gapped mailboxes the resync layer was last told of.
        self._announced: frozenset[bytes] = frozenset()
        #: log seq -> (mailbox, modseq) of each change held back that no
        #: resync delivered yet: the peer holds no copy of it (I1).
        self._pending: dict[int, tuple[bytes, int]] = {}

    def new_gaps(self, gapped: frozenset[bytes]) -> bool:
        """Whether ``gapped`` names a mailbox not gapped when last asked: then
        the resync that closes it should run now, not at the next scan of
        the marks (the stream of that mailbox waits for it)."""
        fresh = not gapped <= self._announced
        self._announced = gapped
        return fresh

    def holds_back(
        self, change: Change, origin: str, gapped: Collection[bytes], seq: int = 0
    ) -> bool:
        """Whether not to send ``change`` (log entry ``seq``, logged with
        ``origin``, "" = made here) now that ``gapped`` are the mailboxes with
        a gap mark for the peer; a change held back is recorded for
        :meth:`release` and :meth:`not_held`."""
        if origin or not isinstance(change, _MESSAGE_CHANGES):
            return False
        mailbox = mailbox_of(change)
        if mailbox not in gapped:
            return False
        modseq = change_modseq(change)
        released = self._released.get(mailbox)
        if released is not None and modseq > released:
            return False  # the resync delivered what came before it
        if len(self._pending) >= MAX_HELD:
            return False  # module doc, "Bounded"
        self._held[mailbox] = max(self._held.get(mailbox, 0), modseq)
        if seq:
            self._pending[seq] = (mailbox, modseq)
        return True

    def not_held(self, covered: int) -> frozenset[int]:
        """The log entries up to ``covered`` held back from the peer and not
        delivered by a resync since: an ACK that covers them is no copy of
        them (I1, replicad.cluster.durability)."""
        return frozenset(seq for seq in self._pending if seq <= covered)

    def delivered(self, mailbox: bytes, modseq: int) -> list[int]:
        """A resync brought the peer ``mailbox`` up to ``modseq``: the entries
        held back that it delivered (now copies there), forgotten here."""
        seqs = [s for s, (m, ms) in self._pending.items() if m == mailbox and ms <= modseq]
        for seq in seqs:
            del self._pending[seq]
        return seqs

    def release(self, mailbox: bytes, delivered: int) -> bool:
        """A resync brought the peer's copy of ``mailbox`` to the master's up
        to modseq ``delivered``; whether its mark may go (False: a change
        above ``delivered`` was held back meanwhile, and only another resync
        brings it)."""
        held = self._held.pop(mailbox, 0)
        if held > delivered:
            return False
        self._released[mailbox] = delivered
        return True

    def on_new_gap(self, mailbox: bytes | None = None) -> None:
        """The peer lost more changes (of ``mailbox``, or None: of any): the
        releases no longer hold (their marks come back with the gap)."""
        if mailbox is None:
            self._released.clear()
        else:
            self._released.pop(mailbox, None)
