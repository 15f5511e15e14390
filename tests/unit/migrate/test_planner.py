"""One folder's pass (replicad.migrate.planner): rules 1-4 of its docstring."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.migrate.identity import folder_tag, message_guid, source_uid
from replicad.migrate.planner import (
    Checkpoint,
    FlagChange,
    FolderPlan,
    FolderStatus,
    Placement,
    SourceFolderState,
    TargetFolderState,
    place,
    plan_folder,
)

USER, BOX = "alice@example.org", "INBOX"
Flags = tuple[str, ...]


def source(
    uids: dict[int, Flags], *, uidvalidity: int = 7, modseq: int | None = 40
) -> SourceFolderState:
    return SourceFolderState(uidvalidity, max(uids, default=0) + 1, modseq, frozenset(uids), uids)


def own(uid: int, uidvalidity: int = 7) -> bytes:
    """The GUID a pass gives source ``uid`` of the space ``uidvalidity``."""
    return message_guid(folder_tag(USER, BOX, uidvalidity), uid)


def foreign(uid: int) -> bytes:
    return bytes([0xF0]) * 12 + uid.to_bytes(4, "big")  # an LMTP delivery's, say


def target(
    uidvalidity: int,
    messages: dict[int, tuple[Flags, bytes]],
    *,
    uidnext: int | None = None,
    expunged: frozenset[bytes] = frozenset(),
) -> TargetFolderState:
    return TargetFolderState(
        True,
        uidvalidity,
        uidnext if uidnext is not None else max(messages, default=0) + 1,
        {u: f for u, (f, _) in messages.items()},
        {u: g for u, (_, g) in messages.items()},
        expunged,
    )


def plan(src: SourceFolderState, tgt: TargetFolderState, mark: Checkpoint | None) -> FolderPlan:
    return plan_folder(src, tgt, mark, user=USER, mailbox=BOX)


def test_guids_name_their_source_uid_under_their_space_only() -> None:
    tag = folder_tag(USER, BOX, 7)
    assert source_uid(tag, message_guid(tag, 42)) == 42
    assert source_uid(folder_tag(USER, BOX, 8), message_guid(tag, 42)) is None
    assert source_uid(folder_tag(USER, "Sent", 7), message_guid(tag, 42)) is None
    assert len(message_guid(tag, 2**32 - 1)) == 16


def test_missing_target_is_created_and_everything_copied_at_its_own_uid() -> None:
    p = plan(source({1: (), 4: ("\\Seen",)}), TargetFolderState(exists=False), None)
    assert p.create and not p.recreate
    assert p.copy == (Placement(1, 1), Placement(4, 4))
    assert p.renumbered == 0


def test_incremental_copies_new_expunges_gone_and_reflags_changed() -> None:
    tgt = target(
        7, {1: (("\\Seen",), own(1)), 2: ((), own(2)), 4: (("$Work", "\\Flagged"), own(4))}
    )
    src = source({1: ("\\Seen",), 4: ("\\Flagged", "\\Seen"), 5: (), 9: ("$New",)})
    p = plan(src, tgt, Checkpoint(7, 5, 30, 3))
    assert p.copy == (Placement(5, 5), Placement(9, 9))
    assert p.expunge == (2,)
    assert p.flag_changes == (FlagChange(4, ("\\Seen",), ("$Work",)),)
    assert not p.create and not p.skip


def test_a_message_expunged_here_is_not_brought_back() -> None:
    # Source UID 3 was copied, then expunged here: its GUID is a tombstone.
    tgt = target(7, {1: ((), own(1))}, uidnext=5, expunged=frozenset({own(3)}))
    p = plan(source({1: (), 3: (), 6: ()}), tgt, None)
    assert p.copy == (Placement(6, 6),)
    assert p.not_reusable == (3,)


def test_an_earlier_builds_copies_are_recognised_by_their_uid() -> None:
    """A job started by a build that kept source UIDs under random GUIDs:
    every target UID below its checkpoint's UIDNEXT is that build's copy
    of the same source UID, so a pass copies none of them again, follows
    the source's expunges and flags on them, does not bring back one
    expunged here, and leaves mail delivered above them alone."""
    old = {1: ((), foreign(1)), 3: (("\\Seen",), foreign(3)), 4: ((), foreign(4))}
    tgt = target(7, {**old, 6: ((), foreign(6))}, uidnext=7)  # 6: LMTP after the switch
    # UID 2 was copied, then expunged here; 4 was expunged on the source.
    mark = Checkpoint(7, 5, 30, 4, 0, legacy_below=5)
    p = plan(source({1: ("\\Flagged",), 2: (), 3: ("\\Seen",), 5: ()}), tgt, mark)
    assert p.copy == (Placement(5, 7),)  # only the new one, above UIDNEXT
    assert p.expunge == (4,)
    assert p.flag_changes == (FlagChange(1, ("\\Flagged",), ()),)
    assert p.not_reusable == (2,)
    # Without the legacy mark the same state would be copied again.
    again = plan(source({1: (), 3: ("\\Seen",)}), tgt, Checkpoint(7, 5, 30, 4))
    assert [c.source_uid for c in again.copy] == [1, 3]


def test_unchanged_checkpoint_with_condstore_skips_the_folder() -> None:
    src = source({1: (), 2: ()}, modseq=40)
    tgt = target(7, {1: ((), own(1)), 2: (("\\Seen",), own(2))})
    assert plan(src, tgt, Checkpoint(7, 3, 40, 2)).skip
    # Without CONDSTORE nothing proves it unchanged: the flags are compared.
    plain = source({1: (), 2: ()}, modseq=None)
    p = plan(plain, tgt, Checkpoint(7, 3, None, 2))
    assert not p.skip and p.flag_changes == (FlagChange(2, (), ("\\Seen",)),)
    # A target that is no longer the checkpoint's mailbox is never skipped.
    assert not Checkpoint(7, 3, 40, 2).proves_unchanged(FolderStatus(7, 3, 40, 2), 8)
    assert Checkpoint(7, 3, 40, 2, 8).proves_unchanged(FolderStatus(7, 3, 40, 2), 8)


def test_changedsince_flags_compare_only_the_changed_messages() -> None:
    tgt = target(7, {1: (("\\Seen",), own(1)), 2: ((), own(2))})
    src = SourceFolderState(7, 3, 50, frozenset({1, 2}), {2: ("\\Flagged",)}, False)
    p = plan(src, tgt, Checkpoint(7, 3, 40, 2))
    assert p.flag_changes == (FlagChange(2, ("\\Flagged",), ()),)


def test_source_uidvalidity_change_recreates_a_folder_the_migration_made() -> None:
    tgt = target(7, {1: ((), own(1)), 8: ((), own(8))})
    p = plan(source({1: (), 2: ()}, uidvalidity=8), tgt, Checkpoint(7, 9, 30, 2))
    assert p.recreate and p.create and p.copy == (Placement(1, 1), Placement(2, 2))


def test_source_uidvalidity_change_under_delivered_mail_renumbers_and_keeps_it() -> None:
    # After the MX switch LMTP delivered UID 9 here; then the source's space changed.
    tgt = target(7, {1: ((), own(1)), 8: ((), own(8)), 9: ((), foreign(9))})
    p = plan(source({1: (), 2: ()}, uidvalidity=8), tgt, Checkpoint(7, 9, 30, 2))
    assert not p.recreate and not p.create
    assert p.expunge == (1, 8)  # the old space's copies, never the delivery
    assert p.copy == (Placement(1, 10), Placement(2, 11))


def test_cutover_into_a_mailbox_with_newer_mail_appends_at_fresh_uids() -> None:
    # Pre-sync copied 1..3 (UIDNEXT 4); LMTP then delivered 4 and 5 here; the
    # source meanwhile got 4, 5 and 9.
    presync = {u: ((), own(u)) for u in (1, 2, 3)}
    tgt = target(7, {**presync, 4: ((), foreign(4)), 5: (("\\Seen",), foreign(5))})
    src = source({1: (), 2: (), 3: (), 4: (), 5: ("\\Seen",), 9: ()})
    p = plan(src, tgt, Checkpoint(7, 4, 30, 3))
    assert p.copy == (Placement(9, 9), Placement(4, 10), Placement(5, 11))
    assert p.renumbered == 2 and p.expunge == () and p.flag_changes == ()
    # The next pass reads the mapping back from the GUIDs: nothing twice, and
    # the source's expunge of its UID 4 takes target UID 6, not the delivery.
    after = target(
        7,
        {**tgt_messages(tgt), 10: ((), own(4)), 11: (("\\Seen",), own(5)), 9: ((), own(9))},
    )
    later = plan(source({1: (), 2: (), 3: (), 5: ("\\Seen", "\\Flagged"), 9: ()}), after, None)
    assert later.copy == ()
    assert later.expunge == (10,)
    assert later.flag_changes == (FlagChange(11, ("\\Flagged",), ()),)


def tgt_messages(t: TargetFolderState) -> dict[int, tuple[Flags, bytes]]:
    return {u: (t.flags[u], t.guids[u]) for u in t.flags}


def test_target_created_first_under_its_own_uidvalidity_is_copied_into() -> None:
    # LMTP created INBOX (UIDVALIDITY 99) and delivered two messages before the first pass.
    tgt = target(99, {1: ((), foreign(1)), 2: ((), foreign(2))})
    p = plan(source({1: (), 3: ()}), tgt, None)
    assert not p.create and not p.recreate and p.expunge == ()
    assert p.copy == (Placement(1, 3), Placement(3, 4))
    assert p.renumbered == 2
    # Its checkpoint names the target's UIDVALIDITY: the next no-op pass skips.
    done = target(99, {**tgt_messages(tgt), 3: ((), own(1)), 4: ((), own(3))})
    assert plan(source({1: (), 3: ()}), done, Checkpoint(7, 4, 40, 2, 99)).skip
    assert plan(source({1: (), 3: ()}), done, None).changes == 0


def test_a_mailbox_copied_into_at_fresh_uids_is_never_recreated() -> None:
    # INBOX was LMTP's (UIDVALIDITY 99), the pass copied into it; then its
    # deliveries were expunged here: only the migration's messages are left.
    tgt = target(99, {3: ((), own(1)), 4: ((), own(3))})
    p = plan(source({1: (), 3: (), 5: ()}), tgt, Checkpoint(7, 4, 40, 2, 99))
    assert not p.recreate and not p.create
    assert p.copy == (Placement(5, 5),) and p.expunge == ()


def test_place_keeps_uids_while_free_and_ascends() -> None:
    assert place([21, 22, 24], 23, keep_uids=True) == (
        Placement(24, 24),
        Placement(21, 25),
        Placement(22, 26),
    )
    assert place([3, 10], 1, keep_uids=True) == (Placement(3, 3), Placement(10, 10))
    assert place([3, 10], 1, keep_uids=False) == (Placement(3, 1), Placement(10, 2))


flag_sets = st.sets(st.sampled_from(["\\Seen", "\\Flagged", "$A", "$B"])).map(
    lambda s: tuple(sorted(s))
)
folders = st.dictionaries(st.integers(1, 40), flag_sets, max_size=25)


@given(folders, folders, st.sets(st.integers(1, 60), max_size=10), st.booleans())
def test_applying_the_plan_makes_the_target_the_source(
    src_msgs: dict[int, Flags],
    own_msgs: dict[int, Flags],
    delivered: set[int],
    same_space: bool,
) -> None:
    """Property: after the plan the target holds every source message (but the
    ones expunged here) exactly once with the source's flags, at UIDs ascending
    from UIDNEXT, and every foreign message untouched."""
    messages: dict[int, tuple[Flags, bytes]] = {u: (f, own(u)) for u, f in own_msgs.items()}
    for uid in delivered:
        messages.setdefault(uid, (("\\Seen",), foreign(uid)))
    uidvalidity = 7 if same_space else 99
    uidnext = max(messages, default=0) + 1
    gone = frozenset(own(u) for u in src_msgs if u % 7 == 0 and u not in own_msgs)
    tgt = target(uidvalidity, messages, uidnext=uidnext, expunged=gone)
    p = plan(source(src_msgs), tgt, None)
    result = {u: (set(f), g) for u, (f, g) in messages.items() if u not in p.expunge}
    for change in p.flag_changes:
        f, g = result[change.uid]
        result[change.uid] = ((f | set(change.add)) - set(change.remove), g)
    targets = [pl.target_uid for pl in p.copy]
    assert targets == sorted(targets) and all(t >= uidnext for t in targets)
    for pl in p.copy:
        assert pl.target_uid not in result
        result[pl.target_uid] = (set(src_msgs[pl.source_uid]), own(pl.source_uid))
        if same_space and pl.source_uid >= uidnext:
            assert pl.target_uid == pl.source_uid
    tag = folder_tag(USER, BOX, 7)
    copies = {source_uid(tag, g): f for f, g in result.values() if source_uid(tag, g) is not None}
    reachable = {u: set(f) for u, f in src_msgs.items() if u not in p.not_reusable}
    assert copies == reachable
    others = {u: (set(f), g) for u, (f, g) in messages.items() if source_uid(tag, g) is None}
    assert {u: v for u, v in result.items() if source_uid(tag, v[1]) is None} == others


def test_a_folder_select_proved_unchanged_is_skipped_without_its_uids() -> None:
    unlisted = SourceFolderState(7, 3, 40, frozenset(), {}, False, exists=2, listed=False)
    tgt = target(7, {1: ((), own(1)), 2: ((), own(2))})
    assert plan(unlisted, tgt, Checkpoint(7, 3, 40, 2)).skip
    with pytest.raises(ValueError):
        plan(unlisted, tgt, Checkpoint(7, 3, 39, 2))
