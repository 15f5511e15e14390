"""MailboxIndex: the shared metadata snapshot of a mailbox, brought forward
by the store's changes, and the views that number their messages from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.imap.mailaccess import MailboxIndexes
from replicad.imap.mailboxindex import MailboxIndex, MessageMeta
from replicad.imap.view import MailboxView
from replicad.store.columns import ColumnsRead, KnownState
from replicad.store.mailstore import MailStore
from replicad.store.records import ChangeSet, MessageInfo
from replicad.uidset import UidSet

FLAG_SETS = [(), ("\\Seen",), ("\\Flagged", "\\Seen"), ("$Junk",), ("$Work", "\\Deleted")]


def info(uid: int, flags: tuple[str, ...] = (), modseq: int = 1) -> MessageInfo:
    return MessageInfo(uid, bytes(16), modseq, flags, 1000 + uid, 10 * uid, bytes(32))


def index_of(*messages: MessageInfo, modseq: int = 1) -> MailboxIndex:
    return MailboxIndex.of_messages(b"g" * 16, 7, modseq, messages)


def rows(index: MailboxIndex) -> list[tuple[int, int, tuple[str, ...], int, int]]:
    c = index.columns
    return list(zip(c.uids, c.modseqs, c.flags, c.internaldates, c.sizes, strict=True))


@settings(max_examples=150, deadline=None)
@given(
    start=st.dictionaries(st.integers(1, 60), st.sampled_from(FLAG_SETS), max_size=30),
    gone=st.sets(st.integers(1, 60), max_size=10),
    changed=st.dictionaries(st.integers(1, 80), st.sampled_from(FLAG_SETS), max_size=20),
)
def test_applying_changes_equals_reading_the_result_whole(
    start: dict[int, tuple[str, ...]], gone: set[int], changed: dict[int, tuple[str, ...]]
) -> None:
    before = index_of(*(info(u, f) for u, f in start.items()))
    vanished = sorted(gone & start.keys())
    # The store never reports a UID as both changed and vanished.
    fresh = {u: f for u, f in changed.items() if u not in gone}
    changes = ChangeSet(
        9, tuple(info(u, f, modseq=5) for u, f in sorted(fresh.items())), tuple(vanished)
    )
    after = before.apply(changes)

    final = {u: (f, 1) for u, f in start.items() if u not in gone}
    final.update({u: (f, 5) for u, f in fresh.items()})
    expected = index_of(*(info(u, f, m) for u, (f, m) in final.items()), modseq=9)
    assert rows(after) == rows(expected)
    assert after.modseq == 9
    # The snapshot it came from is untouched: other sessions still number from it.
    assert rows(before) == rows(index_of(*(info(u, f) for u, f in start.items())))


def test_lookups_and_whole_mailbox_values() -> None:
    index = index_of(
        info(2, ("\\Seen",)), info(5, ("$Work", "\\Seen")), info(9, ()), info(12, ("$Junk",))
    )
    assert index.position(5) == 1 and index.position(6) is None
    assert index.meta(9) == MessageMeta(9, 1, (), 1009, 90)
    assert index.meta(10) is None
    assert list(index.metas([12, 3, 2])) == [12, 2]
    assert index.first_unseen == 3
    assert index.keywords == ("$Junk", "$Work")
    assert index_of(info(1, ("\\Seen",))).first_unseen is None


def test_equal_flag_sets_share_one_tuple() -> None:
    index = index_of(*(info(u, ("\\Seen",)) for u in range(1, 50)))
    changed = index.apply(ChangeSet(2, (info(60, ("\\Seen",), 2),), ()))
    assert len({id(f) for f in changed.columns.flags}) == 1


def test_a_view_shares_the_snapshot_until_its_numbering_changes() -> None:
    index = index_of(info(1), info(2), info(3))
    first = MailboxView.of_index(index, uidnext=4)
    second = MailboxView.of_index(index, uidnext=4)
    assert first.uids is index.uids and second.uids is index.uids

    # A flag change is remembered beside the snapshot, not in it.
    first.refresh(ChangeSet(2, (info(2, ("\\Seen",), 2),), ()))
    assert first.uids is index.uids
    assert first.flags_of(2) == ("\\Seen",) and second.flags_of(2) == ()

    # An expunge renumbers the first view alone.
    first.refresh(ChangeSet(3, (), (1,)))
    first.flush_expunges(vanished=False)
    assert list(first.uids) == [2, 3] and list(index.uids) == [1, 2, 3]
    assert list(second.uids) == [1, 2, 3]
    assert first.seq_of(1) is None and second.seq_of(1) == 1
    assert first.flags_of(3) == () and first.modseq_of(2) == 2


def test_a_view_forgets_nothing_its_snapshot_does_not_hold() -> None:
    index = index_of(info(1), info(2))
    view = MailboxView.of_index(index, uidnext=3)
    view.refresh(ChangeSet(4, (info(3, ("$Work",), 4),), ()))
    assert list(view.uids) == [1, 2, 3] and view.flags_of(3) == ("$Work",)
    view.expunge_own([3])
    assert view.is_expunged(3) and not view.is_expunged(2)
    view.flush_expunges(vanished=True)
    assert list(view.uids) == [1, 2] and view.seq_of(3) is None
    # A UID the view removed is not known again through its snapshot.
    view.expunge_own([1])
    view.flush_expunges(vanished=False)
    assert list(view.uids) == [2] and index.position(1) == 0
    with pytest.raises(KeyError):
        view.flags_of(1)
    assert not view.is_expunged(1)


async def test_the_store_columns_and_the_node_snapshots_follow_every_change(
    tmp_path: Path,
) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        await store.create_mailbox("alice", "INBOX")
        for n in range(5):
            await store.append("alice", "INBOX", b"Subject: %d\r\n\r\nhi\r\n" % n)
        read = await store.message_columns("alice", "INBOX")
        assert read.columns is not None and list(read.columns.uids) == [1, 2, 3, 4, 5]
        status = read.status
        known = KnownState(status.guid, status.uidvalidity, status.highestmodseq)
        unchanged = await store.message_columns("alice", "INBOX", known)
        assert unchanged.columns is None and unchanged.changes is None

        indexes = MailboxIndexes(limit=1)
        _, first = await indexes.current(store, "alice", "INBOX")
        _, again = await indexes.current(store, "alice", "INBOX")
        assert again is first  # nothing changed: the same shared snapshot

        await store.store_flags("alice", "INBOX", UidSet.of([2]), "add", ["\\Seen"])
        await store.expunge("alice", "INBOX", UidSet.of([4]))
        await store.append("alice", "INBOX", b"Subject: new\r\n\r\nhi\r\n")
        since = await store.message_columns("alice", "INBOX", known)
        assert since.changes is not None and since.changes.vanished == (4,)

        status, current = await indexes.current(store, "alice", "INBOX")
        whole = (await store.message_columns("alice", "INBOX")).columns
        assert whole is not None
        assert current.modseq == status.highestmodseq
        assert list(current.uids) == list(whole.uids) == [1, 2, 3, 5, 6]
        assert current.columns.flags == whole.flags
        assert list(current.columns.modseqs) == list(whole.modseqs)
        assert list(first.uids) == [1, 2, 3, 4, 5]  # the older snapshot is untouched


async def test_a_mailbox_replaced_under_its_name_is_read_whole(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        await store.create_mailbox("alice", "Work")
        await store.append("alice", "Work", b"Subject: old\r\n\r\nhi\r\n")
        indexes = MailboxIndexes()
        _, old = await indexes.current(store, "alice", "Work")
        await store.delete_mailbox("alice", "Work")
        await store.create_mailbox("alice", "Work")
        status, new = await indexes.current(store, "alice", "Work")
        assert new.guid == status.guid != old.guid
        assert len(new) == 0 and len(old) == 1


async def test_the_snapshot_is_answered_without_a_read_until_a_commit(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        await store.create_mailbox("alice", "INBOX")
        await store.append("alice", "INBOX", b"Subject: 1\r\n\r\nhi\r\n")
        reads = 0
        read_columns = store.message_columns

        async def counted(user: str, name: str, known: KnownState | None = None) -> ColumnsRead:
            nonlocal reads
            reads += 1
            return await read_columns(user, name, known)

        store.message_columns = counted  # type: ignore[method-assign]
        indexes = MailboxIndexes()
        first = await indexes.current(store, "alice", "INBOX")
        assert await indexes.current(store, "alice", "INBOX") == first
        assert reads == 1
        await store.append("alice", "INBOX", b"Subject: 2\r\n\r\nhi\r\n")
        status, index = await indexes.current(store, "alice", "INBOX")
        assert reads == 2 and status.messages == 2 and list(index.uids) == [1, 2]


async def test_the_snapshots_kept_are_bounded_in_messages(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        for name in ("A", "B", "C"):
            await store.create_mailbox("alice", name)
            for n in range(3):
                await store.append("alice", name, b"Subject: %d\r\n\r\nhi\r\n" % n)
        indexes = MailboxIndexes(message_limit=6)
        for name in ("A", "B", "C"):
            await indexes.current(store, "alice", name)
        assert indexes.held() == [("alice", "B"), ("alice", "C")]
        await indexes.current(store, "alice", "B")
        await indexes.current(store, "alice", "A")
        assert indexes.held() == [("alice", "B"), ("alice", "A")]


def test_a_view_agrees_with_its_snapshot_until_it_changes_anything() -> None:
    index = index_of(info(1), info(2, ("\\Seen",)))
    view = MailboxView.of_index(index, uidnext=3)
    assert view.agrees_with(index)
    assert not view.agrees_with(index_of(info(1), info(2, ("\\Seen",))))  # another snapshot
    view.note_own_flags(2, ("\\Seen",), 1)  # what the snapshot says already
    assert view.agrees_with(index)
    view.note_own_flags(2, (), 2)
    assert not view.agrees_with(index)
