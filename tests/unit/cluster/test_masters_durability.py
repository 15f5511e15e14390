"""Master keys, directory and cache fencing; durability levels and ack tracking."""

from __future__ import annotations

import pytest

from replicad.cluster.durability import AckTracker, DurabilityLevel
from replicad.cluster.masters import (
    Assignment,
    Granularity,
    MasterCache,
    MasterDirectory,
    MasterKey,
    master_key,
)
from replicad.errors import ConfigError, DurabilityError


def test_master_keys_follow_the_granularity() -> None:
    assert master_key(Granularity.MAILBOX, "u", "INBOX") == MasterKey("u", "INBOX")
    assert master_key(Granularity.MAILBOX, "u", None) == MasterKey("u", "")
    assert master_key(Granularity.USER, "u", "INBOX") == MasterKey("u", "")
    assert master_key(Granularity.GLOBAL, "u", "INBOX") == master_key(Granularity.GLOBAL, "v", None)
    assert str(MasterKey("u", "Lists/x")) == "u/Lists/x"


def test_directory_prefers_the_requester_and_keeps_reachable_masters() -> None:
    d = MasterDirectory(epoch=3)
    key = MasterKey("u", "INBOX")
    every = frozenset({"a", "b", "c"})
    assert d.lookup(key, "b", every) == Assignment(key, "b", 3)
    assert d.lookup(key, "c", every).node == "b"  # stays where it is
    # b unreachable: the next requester takes over (autonomy, I7).
    assert d.lookup(key, "c", frozenset({"a", "c"})).node == "c"
    assert d.move(key, "a").node == "a"
    assert d.count_by_node() == {"a": 1}
    assert d.forget_node("a") == [key]


def test_cache_ignores_assignments_from_older_epochs() -> None:
    cache = MasterCache()
    key = MasterKey("u", "INBOX")
    assert cache.learn(Assignment(key, "a", 2))
    cache.flush(3)
    assert cache.get(key) is None
    assert not cache.learn(Assignment(key, "a", 2))  # a stale root's answer: fenced
    assert cache.learn(Assignment(key, "b", 4))
    assert cache.epoch == 4 and cache.get(key) == "b"


@pytest.mark.parametrize(
    ("value", "size", "copies"),
    [
        ("local", 3, 1),
        ("quorum", 3, 2),
        ("quorum", 4, 3),
        ("quorum", 5, 3),
        ("all", 3, 3),
        (2, 3, 2),
        ("2", 5, 2),
    ],
)
def test_levels(value: str | int, size: int, copies: int) -> None:
    assert DurabilityLevel.parse(value, size).copies == copies


@pytest.mark.parametrize("value", ["most", 0, 4, True, "-1"])
def test_bad_levels_are_config_errors(value: object) -> None:
    with pytest.raises(ConfigError):
        DurabilityLevel.parse(value, 3)  # type: ignore[arg-type]


def test_unmeetable_level_is_a_temporary_error() -> None:
    level = DurabilityLevel.parse("quorum", 3)
    level.check_reachable(2)
    with pytest.raises(DurabilityError) as info:
        level.check_reachable(1)
    assert info.value.exit_code == 75 and "quorum" in str(info.value)


def test_tracker_counts_copies_per_sequence() -> None:
    t = AckTracker("m")
    assert t.wait_for(5, 1, frozenset({"m"})) is None  # local: done at once
    # Forwarded write: master and origin already have it -> quorum of 3 met at once.
    assert t.wait_for(5, 2, frozenset({"m", "origin"})) is None
    w = t.wait_for(7, 3, frozenset({"m"}))
    assert w is not None
    assert t.acked("a", 6) == []  # not far enough
    assert t.acked("a", 7) == []
    assert t.acked("a", 7) == []  # duplicate ack
    assert t.acked("b", 9) == [w]
    assert t.waiting == 0
    # An ack at or past a sequence counts for later waits too.
    assert t.wait_for(7, 3, frozenset({"m"})) is None  # a has 7, b has 9
    assert t.wait_for(8, 3, frozenset({"m"})) is not None  # a lacks 8


def test_an_entry_a_node_does_not_hold_is_no_copy_until_filled() -> None:
    """I1: an ACK covering an entry the node refused, or that was held back
    from it for a resync, is no copy of it; the resync that brings it is."""
    t = AckTracker("m")
    w = t.wait_for(6, 2, frozenset({"m"}))
    assert w is not None
    assert t.acked("a", 7, frozenset({6})) == []  # covers 6, holds 7 only
    assert t.acked("a", 8) == []  # a later ACK does not fill the hole
    w2 = t.wait_for(6, 2, frozenset({"m"}))
    assert w2 is not None  # nor for a new wait
    assert t.wait_for(7, 2, frozenset({"m"})) is None  # 7 is there
    assert t.filled("a", [6]) == [w, w2]  # the resync delivered it
    assert t.waiting == 0


def test_holes_are_forgotten_only_below_every_possible_wait() -> None:
    t = AckTracker("m")
    assert t.acked("a", 5, frozenset({3, 5})) == []
    assert t.acked("b", 5) == []
    # Nothing waits: a later wait is for the head (5 or more), so hole 3 goes
    # but hole 5 must stay.
    assert t.wait_for(5, 2, frozenset({"m"})) is None  # b holds 5
    assert t.wait_for(5, 3, frozenset({"m"})) is not None  # a does not


def test_tracker_fails_waits_that_lost_their_nodes() -> None:
    t = AckTracker("m")
    w = t.wait_for(3, 3, frozenset({"m"}))
    assert t.unreachable(frozenset({"m", "a", "b"})) == []
    assert t.unreachable(frozenset({"m", "a"})) == [w]
