"""LIST: which names match a pattern and with what attributes (pure).

RFC 3501 §6.3.8 / RFC 9051 §6.3.9: the reference and the pattern are joined
and matched against every name; ``*`` matches anything, ``%`` anything but
the hierarchy delimiter.  ``INBOX`` is case-insensitive.  Names that are
not mailboxes but stand above some (:func:`~replicad.store.namespace.implied_names`)
are listed ``\\Noselect`` (``\\NonExistent`` in the RFC 5258 form).

Subscriptions (RFC 3501 §6.3.6-§6.3.9, RFC 5258 §3): the names a user
subscribed to, kept whether or not a mailbox of that name still exists
(:mod:`replicad.store.subscriptions`).  ``RETURN (SUBSCRIBED)`` marks them
``\\Subscribed`` (:func:`list_names`); ``LIST (SUBSCRIBED)`` lists them,
``\\NonExistent`` where no mailbox has the name, and with RECURSIVEMATCH
also each name matching a pattern that has a subscribed descendant the
patterns do not match, with ``CHILDINFO ("SUBSCRIBED")``
(:func:`list_subscribed`, RFC 5258 §3.5); LSUB lists them the RFC 3501 way
(:func:`lsub_names`).

Special use (RFC 6154): the server keeps no per-mailbox attributes, so
the top-level mailboxes named as most clients name them carry the
attribute (``Sent`` is ``\\Sent``, …), as Dovecot's default configuration
does; :data:`SPECIAL_USE` is that table.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from replicad.store.namespace import implied_names, superiors

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
    #: RFC 5258 §3.5: has a subscribed descendant the patterns did not match.
    childinfo: bool = False


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


def _order(name: str) -> tuple[bool, str]:
    return (name != "INBOX", name)


def list_names(
    names: Iterable[str],
    patterns: Iterable[str],
    *,
    extended: bool = False,
    subscribed: Collection[str] = (),
    special_only: bool = False,
) -> list[Listed]:
    """The names matching any of ``patterns``, sorted, each once.

    Mailboxes in ``subscribed`` get ``\\Subscribed`` (RFC 5258 RETURN
    (SUBSCRIBED)); ``special_only`` keeps only mailboxes with a special-use
    attribute.
    """
    real = set(names)
    implied = implied_names(real, DELIMITER)
    every = real | implied
    parents = {n.rsplit(DELIMITER, 1)[0] for n in every if DELIMITER in n}
    matchers = [pattern_matcher(p) for p in patterns]
    out = []
    for name in sorted(every, key=_order):
        if not any(m.fullmatch(name) for m in matchers):
            continue
        attributes = ["\\HasChildren" if name in parents else "\\HasNoChildren"]
        if name in implied:
            attributes.insert(0, "\\NonExistent" if extended else "\\Noselect")
        elif name in subscribed:
            attributes.append("\\Subscribed")
        use = special_use(name)
        if use is not None and name in real:
            attributes.append(use)
        elif special_only:
            continue
        out.append(Listed(name, tuple(attributes), name in real))
    return out


def list_subscribed(
    names: Iterable[str],
    subscribed: Collection[str],
    patterns: Iterable[str],
    *,
    recursive: bool = False,
) -> list[Listed]:
    """``LIST (SUBSCRIBED [RECURSIVEMATCH])`` (RFC 5258 §3, §3.5), sorted.

    Every subscribed name matching a pattern, ``\\Subscribed``, and
    ``\\NonExistent`` when no mailbox has it.  With ``recursive``, a name
    that matches a pattern and has a subscribed descendant matching none is
    listed too (subscribed or not), with ``childinfo`` set: the client learns
    that something below it is subscribed, which its pattern hid.  Children
    attributes describe the existing mailboxes.
    """
    real = set(names)
    every = real | implied_names(real, DELIMITER)
    parents = {n.rsplit(DELIMITER, 1)[0] for n in every if DELIMITER in n}
    matchers = [pattern_matcher(p) for p in patterns]

    def matches(name: str) -> bool:
        return any(m.fullmatch(name) for m in matchers)

    listed = {n for n in subscribed if matches(n)}
    childinfo: set[str] = set()
    if recursive:
        for hidden in set(subscribed) - listed:
            childinfo.update(s for s in superiors(hidden, DELIMITER) if matches(s))
    out = []
    for name in sorted(listed | childinfo, key=_order):
        attributes = []
        if name not in real:
            attributes.append("\\NonExistent")
        if name in every:
            attributes.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if name in listed:
            attributes.append("\\Subscribed")
        use = special_use(name)
        if use is not None and name in real:
            attributes.append(use)
        out.append(Listed(name, tuple(attributes), name in real, name in childinfo))
    return out


def lsub_names(subscribed: Collection[str], pattern: str) -> list[tuple[str, tuple[str, ...]]]:
    """LSUB (RFC 3501 §6.3.9), sorted: the subscribed names matching
    ``pattern``, existing or not, with no attributes (name, attributes);
    and, where ``%``
    stops at a level above a subscribed name, that unsubscribed superior
    ``\\Noselect`` (the RFC's "foo/%" example)."""
    matcher = pattern_matcher(pattern)
    found: dict[str, tuple[str, ...]] = {n: () for n in subscribed if matcher.fullmatch(n)}
    if "%" in pattern:
        for name in subscribed:
            for above in superiors(name, DELIMITER):
                if above not in found and above not in subscribed and matcher.fullmatch(above):
                    found[above] = ("\\Noselect",)
    return sorted(found.items(), key=lambda item: _order(item[0]))
