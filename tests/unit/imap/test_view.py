"""MailboxView: the numbering one IMAP session believes in (RFC 3501 §7.4.1)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.imap.view import (
    Exists,
    Expunged,
    FlagsUpdate,
    MailboxView,
    OutOfOrder,
    Vanished,
)
from replicad.store.records import ChangeSet, MessageInfo


def info(uid: int, flags: tuple[str, ...] = (), modseq: int = 1) -> MessageInfo:
    return MessageInfo(uid, bytes(16), modseq, flags, 0, 10, bytes(32))


def view_of(*uids: int) -> MailboxView:
    return MailboxView.open(
        7, [info(u) for u in uids], uidnext=max(uids, default=0) + 1, highestmodseq=1
    )


def test_numbering_follows_uids() -> None:
    view = view_of(3, 5, 9)
    assert view.exists == 3
    assert [view.uid_at(n) for n in (1, 2, 3)] == [3, 5, 9]
    assert view.seq_of(5) == 2
    assert view.seq_of(4) is None
    assert view.uids_in_range(4, 9) == [5, 9]


def test_new_messages_are_announced_with_exists() -> None:
    view = view_of(1, 2)
    updates = view.refresh(ChangeSet(3, (info(3, modseq=2), info(4, modseq=3)), ()))
    assert updates == [Exists(4)]
    assert view.uid_at(4) == 4
    assert view.seen_modseq == 3


def test_flag_changes_from_elsewhere_become_fetch_flags() -> None:
    view = view_of(1, 2)
    updates = view.refresh(ChangeSet(5, (info(2, ("\\Seen",), modseq=5),), ()))
    assert updates == [FlagsUpdate(2, 2, ("\\Seen",), 5)]
    # The same state again is not news.
    assert view.refresh(ChangeSet(5, (info(2, ("\\Seen",), modseq=5),), ())) == []


def test_own_flag_change_is_not_reported_back() -> None:
    view = view_of(1)
    view.note_own_flags(1, ("\\Flagged",), 4)
    assert view.refresh(ChangeSet(4, (info(1, ("\\Flagged",), modseq=4),), ())) == []


def test_expunges_wait_until_flushed_and_keep_numbers_until_then() -> None:
    view = view_of(1, 2, 3, 4)
    assert view.refresh(ChangeSet(9, (), (2, 3))) == []
    assert view.exists == 4
    assert view.is_expunged(2)
    assert view.uid_at(3) == 3  # still numbered until the client is told
    assert view.flush_expunges(vanished=False) == [Expunged(2, 2), Expunged(2, 3)]
    assert list(view.uids) == [1, 4]
    assert view.flush_expunges(vanished=False) == []


def test_vanished_form_under_qresync() -> None:
    view = view_of(1, 2, 3)
    view.refresh(ChangeSet(9, (), (3, 1)))
    assert view.flush_expunges(vanished=True) == [Vanished((1, 3))]
    assert list(view.uids) == [2]


def test_a_uid_moved_by_a_merge_is_an_expunge_and_a_new_message() -> None:
    view = view_of(1, 2)
    updates = view.refresh(ChangeSet(6, (info(3, modseq=6),), (2,)))
    assert updates == [Exists(3)]
    assert view.flush_expunges(vanished=False) == [Expunged(2, 2)]
    assert list(view.uids) == [1, 3]


def test_a_message_below_a_known_uid_is_reported_out_of_order() -> None:
    view = view_of(1, 5)
    assert view.refresh(ChangeSet(6, (info(3, modseq=6),), ())) == [OutOfOrder(3)]
    assert list(view.uids) == [1, 5]


def test_reported_values_never_go_backwards() -> None:
    view = MailboxView.open(7, [info(1)], uidnext=2, highestmodseq=10, floor_modseq=12)
    assert view.report_highestmodseq(10) == 12
    assert view.report_highestmodseq(15) == 15
    assert view.report_highestmodseq(11) == 15
    assert view.report_uidnext(9) == 9
    assert view.report_uidnext(4) == 9


@settings(max_examples=200, deadline=None)
@given(
    start=st.lists(st.integers(1, 60), unique=True, max_size=30),
    steps=st.lists(
        st.tuples(st.sampled_from(["add", "expunge", "flush"]), st.integers(1, 80)), max_size=40
    ),
)
def test_the_client_numbering_matches_the_store_after_every_flush(
    start: list[int], steps: list[tuple[str, int]]
) -> None:
    """A client applying the updates in order ends with the store's UIDs."""
    store = sorted(start)
    view = MailboxView.open(1, [info(u) for u in store], uidnext=61, highestmodseq=1)
    client = list(store)  # what a client tracking EXISTS/EXPUNGE believes
    modseq = 1
    next_uid = 61
    for action, n in steps:
        modseq += 1
        if action == "add":
            uid, next_uid = next_uid, next_uid + 1
            store.append(uid)
            changes = ChangeSet(modseq, (info(uid, modseq=modseq),), ())
        elif action == "expunge" and store:
            uid = store.pop(n % len(store))
            changes = ChangeSet(modseq, (), (uid,))
        else:
            changes = ChangeSet(modseq, (), ())
        for update in view.refresh(changes):
            if isinstance(update, Exists):
                client.extend(view.uids[len(client) : update.count])
        if action == "flush":
            for update in view.flush_expunges(vanished=False):
                assert isinstance(update, Expunged)
                assert client[update.seq - 1] == update.uid
                del client[update.seq - 1]
    for update in view.flush_expunges(vanished=False):
        assert isinstance(update, Expunged)
        del client[update.seq - 1]
    assert client == store == list(view.uids)
