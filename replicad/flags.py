"""Message flags and keywords (RFC 3501 §2.3.2, RFC 9051 §2.3.2).

System flags are matched case-insensitively and stored in their canonical
spelling; keywords are IMAP atoms, kept as given (case-preserving) because the
RFC leaves case-folding of keywords to the server and clients compare them
as strings.  ``\\Recent`` is session state, never stored.
"""

from __future__ import annotations

from collections.abc import Iterable

from replicad.errors import BadInputError

SYSTEM_FLAGS = ("\\Answered", "\\Deleted", "\\Draft", "\\Flagged", "\\Seen")
_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}
# atom-specials of RFC 3501 plus "\" (only system flags may start with it) and "]".
_FORBIDDEN = set('(){ %*"\\]') | {chr(c) for c in range(0x20)} | {"\x7f"}
MAX_KEYWORD_LEN = 255

Flags = frozenset[str]


def normalise_flag(flag: str) -> str:
    """Return the canonical spelling of one flag; raise :class:`BadInputError` if invalid."""
    if flag.startswith("\\"):
        canon = _SYSTEM_BY_LOWER.get(flag.lower())
        if canon is None:
            raise BadInputError(f"unknown system flag {flag!r} (keywords cannot start with '\\')")
        return canon
    if not flag:
        raise BadInputError("empty flag name")
    if len(flag) > MAX_KEYWORD_LEN:
        raise BadInputError(f"keyword longer than {MAX_KEYWORD_LEN} characters")
    if not flag.isascii() or any(ch in _FORBIDDEN for ch in flag):
        raise BadInputError(f"invalid keyword {flag!r}: not an IMAP atom")
    return flag


def normalise_flags(flags: Iterable[str]) -> Flags:
    return frozenset(normalise_flag(f) for f in flags)


def sorted_flags(flags: Iterable[str]) -> list[str]:
    """Canonical order: system flags first (alphabetical), then keywords."""
    return sorted(flags, key=lambda f: (not f.startswith("\\"), f))
