"""The stream holds back a gapped mailbox's changes until a resync closes the gap.

``StreamGaps`` is pure; the store half (which marks make a gap, and that a
gap mark stays one) is checked against a real store.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.cluster import streamgaps
from replicad.cluster.streamgaps import StreamGaps, change_modseq
from replicad.model.merge import MergePlan
from replicad.store.mailstore import MailStore
from replicad.store.records import (
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxMerged,
    MessageAppended,
    MessagesCopied,
    MessagesExpunged,
)

X = b"x" * 16
Y = b"y" * 16


def save(mailbox: bytes, modseq: int, uid: int = 1) -> MessageAppended:
    return MessageAppended("alice", mailbox, uid, b"g" * 16, modseq, (), 0, 1, b"h" * 32)


def test_only_this_nodes_message_changes_of_a_gapped_mailbox_are_held_back() -> None:
    gaps = StreamGaps()
    assert gaps.holds_back(save(X, 5), "", {X})
    assert not gaps.holds_back(save(Y, 5), "", {X})  # no gap there
    assert not gaps.holds_back(save(X, 6), "n3", {X})  # relayed: its master settles it
    assert not gaps.holds_back(MailboxCreated("alice", "Work", X, 7), "", {X})
    assert not gaps.holds_back(MailboxDeleted("alice", X, "Work"), "", {X})
    held = [
        FlagsChanged("alice", X, (1,), ("\\Seen",), (), 8),
        MessagesExpunged("alice", X, ((1, b"g" * 16),), 9),
        MessagesCopied("alice", Y, (1,), (save(X, 10, uid=2),)),
        MailboxMerged("alice", X, 9, MergePlan(1, 3, 11, ())),
    ]
    assert all(gaps.holds_back(change, "", {X}) for change in held)


def test_a_release_sends_the_changes_above_what_the_resync_delivered() -> None:
    gaps = StreamGaps()
    assert gaps.holds_back(save(X, 5), "", {X})
    assert gaps.release(X, 7)  # the UPDATE brought the peer to modseq 7
    # The mark is still read (its clear is not durable yet): the stream goes
    # by the release, so nothing above 7 waits for a resync that already ran.
    assert not gaps.holds_back(save(X, 8, uid=3), "", {X})
    assert gaps.holds_back(save(X, 6, uid=2), "", {X})  # the peer has it already


def test_a_release_is_refused_when_a_later_change_was_held_back() -> None:
    """The resync read the master's state at modseq 7; a change at 8 was held
    back before the release: clearing the mark would lose it for the peer."""
    gaps = StreamGaps()
    assert gaps.holds_back(save(X, 8), "", {X})
    assert not gaps.release(X, 7)
    assert gaps.holds_back(save(X, 9, uid=2), "", {X})  # still held: the mark stays
    assert gaps.release(X, 9)  # the next resync brought both


def test_a_new_gap_forgets_the_releases() -> None:
    gaps = StreamGaps()
    assert gaps.release(X, 7) and gaps.release(Y, 7)
    gaps.on_new_gap(X)
    assert gaps.holds_back(save(X, 8), "", {X, Y})
    assert not gaps.holds_back(save(Y, 8), "", {X, Y})
    gaps.on_new_gap()  # the log dropped the backlog again: every mailbox
    assert gaps.holds_back(save(Y, 9), "", {X, Y})


def test_change_modseq_is_the_highest_an_entry_gets() -> None:
    copies = MessagesCopied("alice", Y, (1, 2), (save(X, 4), save(X, 6, uid=2)))
    assert change_modseq(copies) == 6
    assert change_modseq(MailboxMerged("alice", X, 3, MergePlan(1, 3, 12, ()))) == 12
    assert change_modseq(MailboxCreated("alice", "Work", X, 7)) == 0


async def test_gap_marks_are_overflows_and_stay_gaps(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path, peers=("b", "c")) as store:
        await store.mark_resync(["b"], X, "outbox-overflow", 5)
        await store.mark_resync(["b"], Y, "partition", 3)
        # Too large for the link is too large for an UPDATE: not a gap that
        # a resync closes, so the mailbox's other changes keep streaming.
        await store.mark_resync(["c"], Y, "oversized", 0)
        batch = await store.outbox_batch("b", 0, 10)
        assert batch.gapped == {X}
        assert (await store.outbox_batch("c", 0, 10)).gapped == frozenset()
        # A partition mark on top keeps the gap (and the earliest point).
        await store.mark_resync(["b"], X, "partition", 9)
        mark = await store.resync_mark("b", X)
        assert mark is not None and (mark.reason, mark.since_modseq) == ("outbox-overflow", 5)
        assert (await store.outbox_batch("b", 0, 10)).gapped == {X}
        await store.clear_resync(["b"], X)
        assert (await store.outbox_batch("b", 0, 10)).gapped == frozenset()


async def test_a_resync_clears_only_the_mark_it_started_from(tmp_path: Path) -> None:
    """A mark set again while the resync ran (the log dropped the peer's
    backlog once more) outlives it: what it stands for came after the state
    the resync delivered (I6)."""
    async with MailStore.open(tmp_path, peers=("b",)) as store:
        await store.mark_resync(["b"], X, "outbox-overflow", 5)
        started = await store.resync_mark("b", X)
        assert started is not None and started.marked_at > 0
        await store.mark_resync(["b"], X, "outbox-overflow", 9)  # during the resync
        assert not await store.clear_resync_unless_marked_since("b", X, started.marked_at)
        again = await store.resync_mark("b", X)
        assert again is not None and again.marked_at > started.marked_at
        assert await store.clear_resync_unless_marked_since("b", X, again.marked_at)
        assert await store.resync_mark("b", X) is None


def test_held_back_entries_are_no_copy_until_a_resync_delivers_them() -> None:
    gaps = StreamGaps()
    assert gaps.holds_back(save(X, 5), "", {X}, seq=10)
    assert gaps.holds_back(save(X, 8, uid=2), "", {X}, seq=12)
    assert not gaps.holds_back(save(Y, 6), "", {X}, seq=11)
    assert gaps.not_held(11) == {10}
    assert gaps.not_held(12) == {10, 12}
    assert gaps.delivered(X, 7) == [10]  # the resync read the master at modseq 7
    assert gaps.not_held(12) == {12}
    assert gaps.delivered(Y, 99) == []
    assert gaps.delivered(X, 8) == [12]
    assert gaps.not_held(99) == frozenset()


def test_past_the_bound_the_stream_sends_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """I9: what is held back is remembered until a resync delivers it; past
    MAX_HELD on one link the stream sends instead (the merge re-stamps)."""
    monkeypatch.setattr(streamgaps, "MAX_HELD", 2)
    gaps = StreamGaps()
    assert gaps.holds_back(save(X, 5), "", {X}, seq=1)
    assert gaps.holds_back(save(X, 6, uid=2), "", {X}, seq=2)
    assert not gaps.holds_back(save(X, 7, uid=3), "", {X}, seq=3)
    assert gaps.not_held(3) == {1, 2}
