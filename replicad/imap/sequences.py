"""IMAP sequence sets (RFC 3501 §9 ``sequence-set``; RFC 5182 / RFC 9051 ``$``).

A :class:`SequenceSet` is what a client wrote: message sequence numbers or
UIDs (the command says which), as single numbers and inclusive ranges in the
client's order, where ``*`` stands for "the largest number in use" and the
whole set may be ``$``, the result saved by an earlier ``SEARCH RETURN
(SAVE)`` (RFC 5182).  It stays symbolic until :meth:`SequenceSet.resolve`
is given the largest number in use, which yields sorted, merged ranges.

RFC 3501 §9: ``a:b`` is the same range as ``b:a``, and ``*`` in a range
counts as the largest number in use even when that is smaller than the
other end, so ``5:*`` in a mailbox of 3 messages is ``3:5``.  A number 0
is never valid (RFC 3501 §2.3.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from replicad.errors import BadInputError

#: ``*`` inside a range bound; 0 is never a sequence number or UID.
STAR: Final = 0
#: RFC 3501 §9 ``nz-number`` is at most 2^32-1.
MAX_NUMBER: Final = 0xFFFFFFFF

Range = tuple[int, int]


class SequenceSetError(BadInputError):
    """A sequence set is malformed (RFC 3501 §9); the message names the bad part."""


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """Ranges as written, ``(first, last)`` with :data:`STAR` for ``*``; a
    single number ``n`` is ``(n, n)``.  ``saved`` is the ``$`` reference, with
    no ranges."""

    ranges: tuple[Range, ...]
    saved: bool = False

    def __post_init__(self) -> None:
        if self.saved and self.ranges:
            raise SequenceSetError("'$' stands alone: it has no ranges")
        if not self.saved and not self.ranges:
            raise SequenceSetError("empty sequence set")
        for first, last in self.ranges:
            for bound in (first, last):
                if not STAR <= bound <= MAX_NUMBER:
                    raise SequenceSetError(f"sequence number {bound} out of range")

    @classmethod
    def saved_result(cls) -> SequenceSet:
        """``$``: the result of the last ``SEARCH RETURN (SAVE)`` (RFC 5182)."""
        return cls((), saved=True)

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        """Parse ``sequence-set`` or ``$``; raise :class:`SequenceSetError`."""
        if text == "$":
            return cls.saved_result()
        if not text:
            raise SequenceSetError("empty sequence set")
        ranges: list[Range] = []
        for part in text.split(","):
            bounds = part.split(":")
            if len(bounds) > 2:
                raise SequenceSetError(f"bad sequence set {text!r}: {part!r} has two ':'")
            numbers = [_parse_bound(bound, text) for bound in bounds]
            ranges.append((numbers[0], numbers[-1]))
        return cls(tuple(ranges))

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SequenceSet:
        """The most compact set holding exactly ``numbers`` (each ≥ 1): sorted,
        with consecutive numbers merged into ranges."""
        return cls(tuple(compact_ranges(numbers)))

    @classmethod
    def from_ranges(cls, ranges: Iterable[Range]) -> SequenceSet:
        """A set of concrete, inclusive ranges, merged and sorted."""
        return cls(tuple(merge_ranges(ranges)))

    @property
    def has_star(self) -> bool:
        return any(STAR in r for r in self.ranges)

    def render(self) -> str:
        """The wire form, ranges in the order they were written."""
        if self.saved:
            return "$"
        return ",".join(_render_range(first, last) for first, last in self.ranges)

    def __str__(self) -> str:
        return self.render()

    def resolve(self, largest: int) -> list[Range]:
        """Sorted, merged, concrete ranges, ``*`` replaced by ``largest``.

        ``largest`` is the highest sequence number (the message count) or the
        highest UID in use; 0 means the mailbox is empty, where a range
        with ``*`` is dropped (it can name nothing in use).  Ranges are not
        clipped to ``largest``: a UID set may name UIDs that no longer
        exist, and the caller decides what they mean
        (RFC 3501 §6.4.8 ignores them, a sequence number above the count is
        an error).  ``$`` cannot be resolved here: the session holds it.
        """
        if self.saved:
            raise SequenceSetError("'$' must be replaced by the saved search result first")
        concrete: list[Range] = []
        for first, last in self.ranges:
            lo = largest if first == STAR else first
            hi = largest if last == STAR else last
            if lo == 0 or hi == 0:
                continue  # '*' of an empty mailbox: the range names nothing in use
            concrete.append((min(lo, hi), max(lo, hi)))
        return merge_ranges(concrete)

    def contains(self, number: int, largest: int) -> bool:
        """Whether ``number`` is in the set once ``*`` means ``largest``."""
        return any(lo <= number <= hi for lo, hi in self.resolve(largest))


def _parse_bound(bound: str, text: str) -> int:
    if bound == "*":
        return STAR
    if not bound or not bound.isascii() or not bound.isdigit() or bound[0] == "0":
        raise SequenceSetError(f"bad sequence set {text!r}: {bound!r} is not a number from 1")
    value = int(bound)
    if value > MAX_NUMBER:
        raise SequenceSetError(f"bad sequence set {text!r}: {bound} is above 2^32-1")
    return value


def _render_range(first: int, last: int) -> str:
    def one(bound: int) -> str:
        return "*" if bound == STAR else str(bound)

    return one(first) if first == last else f"{one(first)}:{one(last)}"


def merge_ranges(ranges: Iterable[Range]) -> list[Range]:
    """Inclusive ranges sorted, with overlapping and adjacent ones merged."""
    merged: list[Range] = []
    for lo, hi in sorted((min(a, b), max(a, b)) for a, b in ranges):
        if merged and lo <= merged[-1][1] + 1:
            if hi > merged[-1][1]:
                merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


def compact_ranges(numbers: Iterable[int]) -> list[Range]:
    """Sorted numbers (each ≥ 1) as the fewest inclusive ranges."""
    ranges: list[Range] = []
    for number in sorted(set(numbers)):
        if not 1 <= number <= MAX_NUMBER:
            raise SequenceSetError(f"sequence number {number} out of range")
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], number)
        else:
            ranges.append((number, number))
    return ranges


def render_numbers(numbers: Iterable[int]) -> str:
    """``1:3,5``: the compact wire form of a set of numbers (e.g. for
    ``COPYUID``, ``VANISHED`` or ``ESEARCH ALL``); empty for no numbers."""
    return ",".join(_render_range(lo, hi) for lo, hi in compact_ranges(numbers))


def iter_numbers(ranges: Iterable[Range]) -> Iterable[int]:
    """Every number of concrete ranges, in order."""
    for lo, hi in ranges:
        yield from range(lo, hi + 1)
