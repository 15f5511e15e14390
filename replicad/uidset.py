"""IMAP-style UID sets (RFC 3501 §9 ``sequence-set`` restricted to UIDs).

A :class:`UidSet` is an immutable, normalised list of inclusive ranges.  ``*``
stands for "the highest UID in use" and is resolved against a mailbox with
:meth:`UidSet.resolve`; until then it is kept symbolically.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from replicad.errors import BadInputError

MAX_UID = 0xFFFFFFFF
STAR = 0  # symbolic "*" inside a range; UID 0 is never valid (RFC 3501 §2.3.1.1)


@dataclass(frozen=True, slots=True)
class UidSet:
    """Inclusive ``(low, high)`` ranges, sorted and merged; ``high == STAR`` means ``*``."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, text: str) -> UidSet:
        """Parse ``1:4,7,10:*``; raise :class:`BadInputError` naming the bad part."""
        if not text:
            raise BadInputError("empty UID set")
        if text == "all":
            return cls(((1, STAR),))
        out: list[tuple[int, int]] = []
        for part in text.split(","):
            bounds = part.split(":")
            if len(bounds) > 2 or not all(bounds):
                raise BadInputError(f"bad UID set {text!r}: cannot parse {part!r}")
            nums = [_parse_uid(b, text) for b in bounds]
            lo, hi = (nums[0], nums[0]) if len(nums) == 1 else (nums[0], nums[1])
            if lo == STAR and hi == STAR:
                out.append((STAR, STAR))
                continue
            if lo == STAR or (hi != STAR and lo > hi):
                lo, hi = hi, lo  # RFC 3501: "4:2" means "2:4"; "*:4" means "4:*"
            out.append((lo, hi))
        return cls._normalise(out)

    @classmethod
    def of(cls, uids: Iterable[int]) -> UidSet:
        """The set holding exactly ``uids`` (each 1..2^32-1)."""
        ranges = []
        for uid in uids:
            if not 1 <= uid <= MAX_UID:
                raise BadInputError(f"UID {uid} out of range")
            ranges.append((uid, uid))
        return cls._normalise(ranges)

    @classmethod
    def _normalise(cls, ranges: list[tuple[int, int]]) -> UidSet:
        concrete = sorted((lo, hi) for lo, hi in ranges if hi != STAR and lo != STAR)
        starred = [(lo, hi) for lo, hi in ranges if hi == STAR or lo == STAR]
        merged: list[tuple[int, int]] = []
        for lo, hi in concrete:
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        if starred:
            # Keep one symbolic tail range: "n:*" with the smallest n ("*" alone is "*:*").
            low = min((lo for lo, _ in starred if lo != STAR), default=STAR)
            merged.append((low, STAR))
        return cls(tuple(merged))

    @property
    def has_star(self) -> bool:
        return bool(self.ranges) and self.ranges[-1][1] == STAR

    def resolve(self, highest_uid: int) -> UidSet:
        """Replace ``*`` by ``highest_uid``.

        RFC 3501 §6.4.8: ``n:*`` with n above the highest UID means ``highest:n``.
        """
        if not self.has_star:
            return self
        out = list(self.ranges[:-1])
        lo, _ = self.ranges[-1]
        if highest_uid == 0:
            # Empty mailbox: "*" matches nothing; "n:*" still means just n.
            if lo != STAR:
                out.append((lo, lo))
        elif lo == STAR:
            out.append((highest_uid, highest_uid))
        else:
            out.append((min(lo, highest_uid), max(lo, highest_uid)))
        return UidSet._normalise(out)

    def count(self) -> int:
        """How many UIDs the set holds, without expanding it (``*`` counts as one)."""
        return sum(1 if hi == STAR else hi - lo + 1 for lo, hi in self.ranges)

    def __contains__(self, uid: object) -> bool:
        if not isinstance(uid, int):
            return False
        return any(lo <= uid <= hi for lo, hi in self.ranges if hi != STAR)

    def __iter__(self) -> Iterator[int]:
        """Iterate concrete UIDs in ascending order (call :meth:`resolve` first)."""
        if self.has_star:
            raise ValueError("resolve '*' before iterating a UID set")
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)

    def __str__(self) -> str:
        def one(lo: int, hi: int) -> str:
            a = "*" if lo == STAR else str(lo)
            b = "*" if hi == STAR else str(hi)
            return a if a == b else f"{a}:{b}"

        return ",".join(one(lo, hi) for lo, hi in self.ranges)


def _parse_uid(text: str, whole: str) -> int:
    if text == "*":
        return STAR
    # isdigit() alone accepts "²" and other Unicode digits int() refuses; the
    # length bound keeps int() off huge inputs (a UID has at most 10 digits).
    if (
        not text.isascii()
        or not text.isdigit()
        or len(text) > 10
        or (len(text) > 1 and text[0] == "0")
    ):
        raise BadInputError(f"bad UID set {whole!r}: {text!r} is not a UID")
    value = int(text)
    if not 1 <= value <= MAX_UID:
        raise BadInputError(f"bad UID set {whole!r}: UID {value} out of range 1..{MAX_UID}")
    return value
