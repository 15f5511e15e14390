"""One folder's pass (replicad.migrate.planner): rules 1-3 of its docstring."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.migrate.failures import FailureClass, SourceError
from replicad.migrate.planner import (
    Checkpoint,
    FlagChange,
    SourceFolderState,
    TargetFolderState,
    plan_folder,
)


def source(
    uids: dict[int, tuple[str, ...]], *, uidvalidity: int = 7, modseq: int | None = 40
) -> SourceFolderState:
    return SourceFolderState(uidvalidity, max(uids, default=0) + 1, modseq, frozenset(uids), uids)


def test_missing_target_is_created_and_everything_copied() -> None:
    plan = plan_folder(source({1: (), 4: ("\\Seen",)}), TargetFolderState(exists=False), None)
    assert plan.create and not plan.recreate
    assert plan.copy == (1, 4)


def test_incremental_copies_new_expunges_gone_and_reflags_changed() -> None:
    target = TargetFolderState(True, 7, 5, {1: ("\\Seen",), 2: (), 4: ("$Work", "\\Flagged")})
    src = source({1: ("\\Seen",), 4: ("\\Flagged", "\\Seen"), 5: (), 9: ("$New",)})
    plan = plan_folder(src, target, Checkpoint(7, 5, 30, 3))
    assert plan.copy == (5, 9)
    assert plan.expunge == (2,)
    assert plan.flag_changes == (FlagChange(4, ("\\Seen",), ("$Work",)),)
    assert not plan.create and not plan.skip


def test_uid_below_uidnext_missing_here_is_never_reused() -> None:
    # UID 3 was expunged here (UIDNEXT 5): it cannot come back (I3).
    target = TargetFolderState(True, 7, 5, {1: ()})
    plan = plan_folder(source({1: (), 3: (), 6: ()}), target, None)
    assert plan.copy == (6,)
    assert plan.not_reusable == (3,)


def test_unchanged_checkpoint_with_condstore_skips_the_folder() -> None:
    src = source({1: (), 2: ()}, modseq=40)
    target = TargetFolderState(True, 7, 3, {1: (), 2: ("\\Seen",)})
    assert plan_folder(src, target, Checkpoint(7, 3, 40, 2)).skip
    # Without CONDSTORE nothing proves it unchanged: the flags are compared.
    plain = source({1: (), 2: ()}, modseq=None)
    plan = plan_folder(plain, target, Checkpoint(7, 3, None, 2))
    assert not plan.skip and plan.flag_changes == (FlagChange(2, (), ("\\Seen",)),)


def test_changedsince_flags_compare_only_the_changed_messages() -> None:
    target = TargetFolderState(True, 7, 3, {1: ("\\Seen",), 2: ()})
    src = SourceFolderState(7, 3, 50, frozenset({1, 2}), {2: ("\\Flagged",)}, False)
    plan = plan_folder(src, target, Checkpoint(7, 3, 40, 2))
    assert plan.flag_changes == (FlagChange(2, ("\\Flagged",), ()),)


def test_source_uidvalidity_change_recreates_a_folder_the_migration_made() -> None:
    target = TargetFolderState(True, 7, 9, {1: (), 8: ()})
    plan = plan_folder(source({1: (), 2: ()}, uidvalidity=8), target, Checkpoint(7, 9, 30, 2))
    assert plan.recreate and plan.create and plan.copy == (1, 2)


def test_foreign_target_under_another_uidvalidity_is_refused_not_mixed() -> None:
    target = TargetFolderState(True, 99, 3, {1: (), 2: ()})
    with pytest.raises(SourceError) as caught:
        plan_folder(source({1: ()}), target, None)
    assert caught.value.failure is FailureClass.SOURCE_CHANGED


flag_sets = st.sets(st.sampled_from(["\\Seen", "\\Flagged", "$A", "$B"])).map(
    lambda s: tuple(sorted(s))
)
folders = st.dictionaries(st.integers(1, 40), flag_sets, max_size=25)


@given(folders, folders)
def test_applying_the_plan_makes_the_target_the_source(
    src_msgs: dict[int, tuple[str, ...]], tgt_msgs: dict[int, tuple[str, ...]]
) -> None:
    """Property: after the plan the target holds every source UID at or above its
    UIDNEXT and every one it kept, with the source's flags, and no other."""
    uidnext = max(tgt_msgs, default=0) + 1
    target = TargetFolderState(True, 7, uidnext, tgt_msgs)
    plan = plan_folder(source(src_msgs), target, None)
    result = {uid: set(f) for uid, f in tgt_msgs.items() if uid not in plan.expunge}
    for change in plan.flag_changes:
        result[change.uid] = (result[change.uid] | set(change.add)) - set(change.remove)
    for uid in plan.copy:
        assert uid >= uidnext
        result[uid] = set(src_msgs[uid])
    reachable = {u: set(f) for u, f in src_msgs.items() if u not in plan.not_reusable}
    assert result == reachable


def test_a_folder_select_proved_unchanged_is_skipped_without_its_uids() -> None:
    unlisted = SourceFolderState(7, 3, 40, frozenset(), {}, False, exists=2, listed=False)
    target = TargetFolderState(True, 7, 3, {1: (), 2: ()})
    assert plan_folder(unlisted, target, Checkpoint(7, 3, 40, 2)).skip
    with pytest.raises(ValueError):
        plan_folder(unlisted, target, Checkpoint(7, 3, 39, 2))
