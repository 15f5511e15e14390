"""LIST: which names match a pattern and with what attributes (pure).

RFC 3501 §6.3.8 / RFC 9051 §6.3.9: the reference and the pattern are joined
and matched against every name; ``*`` matches anything, ``%`` anything but
the hierarchy delimiter.  ``INBOX`` is case-insensitive.  Names that are
not mailboxes but stand above some (:func:`~replicad.store.namespace.implied_names`)
are listed ``\\Noselect`` (``\\NonExistent`` in the RFC 5258 form).

Special use (RFC 6154): the server keeps no per-mailbox attributes, so
the top-level mailboxes named as most clients name them carry the
attribute (``Sent`` is ``\\Sent``, …), as Dovecot's default configuration
does; :data:`SPECIAL_USE` is that table.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from replicad.store.namespace import implied_names

DELIMITER = "/"

#: RFC 6154 attributes by top-level mailbox name.
SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}


@dataclass(frozen=True, slots=True)
class Listed:
    """One name LIST returns, with its attributes."""

    name: str
    attributes: tuple[str, ...]
    selectable: bool


def join_pattern(reference: str, pattern: str) -> str:
    """Reference and pattern as one pattern (RFC 3501 §6.3.8: concatenated)."""
    if not reference:
        return pattern
    if reference.endswith(DELIMITER) and pattern.startswith(DELIMITER):
        return reference + pattern[1:]
    return reference + pattern


def _canonical(pattern: str) -> str:
    head = pattern[:5]
    if head.upper() == "INBOX" and (len(pattern) == 5 or pattern[5] in f"{DELIMITER}*%"):
        return "INBOX" + pattern[5:]
    return pattern


def pattern_matcher(pattern: str) -> re.Pattern[str]:
    """A compiled matcher for one LIST pattern."""
    out = []
    for ch in _canonical(pattern):
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def special_use(name: str) -> str | None:
    return SPECIAL_USE.get(name)


def list_names(
    names: Iterable[str],
    patterns: Iterable[str],
    *,
    extended: bool = False,
    subscribed: bool = False,
    special_only: bool = False,
) -> list[Listed]:
    """The names matching any of ``patterns``, sorted, each once.

    ``subscribed`` adds ``\\Subscribed`` (every mailbox is subscribed here);
    ``special_only`` keeps only mailboxes with a special-use attribute.
    """
    real = set(names)
    implied = implied_names(real, DELIMITER)
    every = real | implied
    parents = {n.rsplit(DELIMITER, 1)[0] for n in every if DELIMITER in n}
    matchers = [pattern_matcher(p) for p in patterns]
    out = []
    for name in sorted(every, key=lambda n: (n != "INBOX", n)):
        if not any(m.fullmatch(name) for m in matchers):
            continue
        attributes = ["\\HasChildren" if name in parents else "\\HasNoChildren"]
        if name in implied:
            attributes.insert(0, "\\NonExistent" if extended else "\\Noselect")
        elif subscribed:
            attributes.append("\\Subscribed")
        use = special_use(name)
        if use is not None and name in real:
            attributes.append(use)
        elif special_only:
            continue
        out.append(Listed(name, tuple(attributes), name in real))
    return out
