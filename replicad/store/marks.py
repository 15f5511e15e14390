"""Per-flag last-writer-wins registers of a message (I5).

A message keeps one ``(flag, stamp, present)`` register per flag ever set or
cleared on it; its flags are the present ones.  A STORE ``+f`` or ``-f``
stamped ``s`` replaces the register of ``f`` when ``(s, present)`` is
greater than the register's: applied in log order this is just the delta;
merged across two sides of a partition it is last-writer-wins per flag by
hybrid logical clock, with an exact tie going to "present".  The registers
of two copies join by taking the greater register per flag
(:func:`replicad.model.merge.join_marks` does the same on its own types).
"""

from __future__ import annotations

from collections.abc import Iterable

Mark = tuple[str, int, bool]


def stamped(flags: Iterable[str], stamp: int) -> tuple[Mark, ...]:
    """Registers of a new message (SAVE or COPY) whose ``flags`` were set at ``stamp``."""
    return tuple((f, stamp, True) for f in sorted(set(flags)))


def apply_delta(
    marks: Iterable[Mark], added: Iterable[str], removed: Iterable[str], stamp: int
) -> tuple[Mark, ...]:
    """``marks`` after ``+added -removed`` stamped ``stamp`` (last writer wins per flag)."""
    table = {f: (s, p) for f, s, p in marks}
    for flags, present in ((added, True), (removed, False)):
        for f in flags:
            if (stamp, present) > table.get(f, (-1, False)):
                table[f] = (stamp, present)
    return tuple((f, s, p) for f, (s, p) in sorted(table.items()))


def present(marks: Iterable[Mark]) -> frozenset[str]:
    return frozenset(f for f, _, p in marks if p)
