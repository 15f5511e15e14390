"""Sequence sets (RFC 3501 §9, RFC 5182 ``$``): parsing, resolving, rendering."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.imap.sequences import (
    MAX_NUMBER,
    STAR,
    SequenceSet,
    SequenceSetError,
    compact_ranges,
    iter_numbers,
    render_numbers,
)


def test_parse_keeps_what_was_written() -> None:
    s = SequenceSet.parse("9,2,4:7,*,3:*")
    assert s.ranges == ((9, 9), (2, 2), (4, 7), (STAR, STAR), (3, STAR))
    assert s.render() == "9,2,4:7,*,3:*"
    assert s.has_star


def test_saved_result() -> None:
    s = SequenceSet.parse("$")
    assert s.saved and s.render() == "$"
    with pytest.raises(SequenceSetError):
        s.resolve(10)


@pytest.mark.parametrize(
    "text",
    ["", ",", "1,", ":1", "1:", "0", "1:0", "01", "1:2:3", "a", "1 2", "4294967296", "$,1", "-1"],
)
def test_malformed_sets_are_refused(text: str) -> None:
    with pytest.raises(SequenceSetError):
        SequenceSet.parse(text)


@pytest.mark.parametrize(
    ("text", "largest", "expected"),
    [
        ("1:*", 5, [(1, 5)]),
        ("*", 5, [(5, 5)]),
        ("7:*", 5, [(5, 7)]),  # RFC 3501 §9: '*' is the largest number in use
        ("4:2", 9, [(2, 4)]),
        ("1,3,2,5:6", 9, [(1, 3), (5, 6)]),
        ("1:*", 0, []),  # '*' of an empty mailbox names nothing
        ("3,1:*", 0, [(3, 3)]),
        ("10:20,15:30", 9, [(10, 30)]),
    ],
)
def test_resolve(text: str, largest: int, expected: list[tuple[int, int]]) -> None:
    assert SequenceSet.parse(text).resolve(largest) == expected


def test_contains() -> None:
    s = SequenceSet.parse("2,5:*")
    assert s.contains(2, 9) and s.contains(9, 9) and not s.contains(3, 9)


def test_compact_rendering() -> None:
    assert render_numbers([5, 1, 2, 3, 9, 10]) == "1:3,5,9:10"
    assert render_numbers([]) == ""
    assert SequenceSet.of([4, 3, 2]).render() == "2:4"
    with pytest.raises(SequenceSetError):
        compact_ranges([0])


_bound = st.one_of(st.just(STAR), st.integers(1, MAX_NUMBER))
_sets = st.lists(st.tuples(_bound, _bound), min_size=1, max_size=8).map(
    lambda ranges: SequenceSet(tuple(ranges))
)


@given(_sets)
def test_render_parse_round_trip(s: SequenceSet) -> None:
    # A range (n, n) is written "n", so rendering is canonical per range.
    assert SequenceSet.parse(s.render()) == s


@given(st.sets(st.integers(1, 500), max_size=60))
def test_compact_sets_hold_exactly_their_numbers(numbers: set[int]) -> None:
    if not numbers:
        return
    s = SequenceSet.parse(render_numbers(numbers))
    assert set(iter_numbers(s.resolve(500))) == numbers
    assert s == SequenceSet.of(numbers)


@given(_sets, st.integers(0, 1000))
def test_resolve_matches_the_rfc_reading(s: SequenceSet, largest: int) -> None:
    resolved = s.resolve(largest)
    for (lo1, hi1), (lo2, _) in itertools.pairwise(resolved):
        assert lo1 <= hi1 < lo2 - 1  # sorted, disjoint, not adjacent
    for first, last in s.ranges:
        if largest == 0 and STAR in (first, last):
            continue
        a = largest if first == STAR else first
        b = largest if last == STAR else last
        for number in {a, b}:
            assert any(lo <= number <= hi for lo, hi in resolved)
