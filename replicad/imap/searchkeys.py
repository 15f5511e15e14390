"""The SEARCH criteria as a typed tree (RFC 3501 §6.4.4, RFC 9051 §6.4.4,
RFC 7162 §3.1.5 MODSEQ), and its rendering back to command text.

The parser (:mod:`replicad.imap.grammar`) builds these records; the search
engine evaluates them; :func:`render_search_key` writes them back as a
client would (used by tests for parse/render round-trips and by anything
that acts as an IMAP client).  Several RFC keys share one record:

- ``ANSWERED DELETED DRAFT FLAGGED SEEN KEYWORD`` and their ``UN`` forms are
  :class:`FlagKey` (system flags in their canonical spelling, see
  :mod:`replicad.flags`);
- ``RECENT`` / ``OLD`` are :class:`RecentKey`; ``NEW`` is
  ``And((RecentKey(True), FlagKey("\\Seen", False)))`` as RFC 3501 defines it;
- ``FROM TO CC BCC SUBJECT`` are :class:`HeaderKey` with that field name,
  like ``HEADER``;
- ``BEFORE ON SINCE`` (internal date) and ``SENTBEFORE SENTON SENTSINCE``
  (Date: header) are :class:`DateKey`;
- ``LARGER`` / ``SMALLER`` are :class:`SizeKey`;
- a parenthesised list and the top-level list are :class:`AndKey` (always of
  two or more keys: a list of one is that key).

Rendering then parsing gives back an equal tree for every tree whose
:class:`AndKey` nodes hold at least two keys.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import Enum
from typing import Final

from replicad.imap.sequences import SequenceSet

MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip

#: The flag each RFC 3501 flag search key stands for.
FLAG_KEYS: Final = {
    "ANSWERED": "\\Answered",
    "DELETED": "\\Deleted",
    "DRAFT": "\\Draft",
    "FLAGGED": "\\Flagged",
    "SEEN": "\\Seen",
}
#: The header field each RFC 3501 address/subject search key looks in.
HEADER_KEYS: Final = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}


class DateField(Enum):
    INTERNAL = "internal"  # BEFORE / ON / SINCE: the INTERNALDATE, date part only
    SENT = "sent"  # SENTBEFORE / SENTON / SENTSINCE: the Date: header


class DateRelation(Enum):
    BEFORE = "BEFORE"
    ON = "ON"
    SINCE = "SINCE"  # on or after


class EntryType(Enum):
    """RFC 7162 §3.1.5 ``entry-type-req`` of a MODSEQ search key."""

    PRIVATE = "priv"
    SHARED = "shared"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class AllKey:
    """``ALL``: every message."""


@dataclass(frozen=True, slots=True)
class FlagKey:
    """A flag set (``present``) or not set; system flags canonical, else a keyword."""

    flag: str
    present: bool


@dataclass(frozen=True, slots=True)
class RecentKey:
    """``RECENT`` (present) or ``OLD`` (not present)."""

    present: bool


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """The header ``field`` holds ``value`` as a substring (case-insensitive);
    an empty ``value`` matches every message with the field (RFC 3501 §6.4.4)."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class BodyKey:
    """``BODY``: the body (after the header) holds ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class TextKey:
    """``TEXT``: the header or the body holds ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class DateKey:
    field: DateField
    relation: DateRelation
    date: datetime.date


@dataclass(frozen=True, slots=True)
class SizeKey:
    """``LARGER`` (``larger``) or ``SMALLER`` than ``size`` octets (RFC822.SIZE)."""

    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class SequenceKey:
    """A bare sequence set: messages by sequence number."""

    numbers: SequenceSet


@dataclass(frozen=True, slots=True)
class UidKey:
    """``UID set``: messages by UID."""

    uids: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """``MODSEQ [entry type] n`` (RFC 7162 §3.1.5): MODSEQ ≥ ``modseq``.  The
    optional entry (a metadata item name such as ``/flags/\\draft`` and its
    type) narrows what changed; a server without per-flag modseqs may
    ignore it."""

    modseq: int
    entry_name: str | None = None
    entry_type: EntryType | None = None


@dataclass(frozen=True, slots=True)
class NotKey:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class OrKey:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class AndKey:
    """Every key matches: a parenthesised list, or several keys in a row."""

    keys: tuple[SearchKey, ...]


SearchKey = (
    AllKey
    | FlagKey
    | RecentKey
    | HeaderKey
    | BodyKey
    | TextKey
    | DateKey
    | SizeKey
    | SequenceKey
    | UidKey
    | ModSeqKey
    | NotKey
    | OrKey
    | AndKey
)

_FLAG_KEY_OF: Final = {flag: key for key, flag in FLAG_KEYS.items()}
_HEADER_KEY_OF: Final = {field: key for key, field in HEADER_KEYS.items()}


def render_date(date: datetime.date) -> str:
    """RFC 3501 ``date-text``: ``1-Feb-2024``."""
    return f"{date.day}-{MONTHS[date.month - 1]}-{date.year:04d}"


def render_astring(value: str) -> bytes:
    """A client-side string: an atom-safe word as a quoted string, anything
    with CR, LF, NUL or 8-bit octets as a non-synchronising literal (RFC 7888)."""
    data = value.encode("utf-8")
    if all(0x20 <= b <= 0x7E for b in data) and len(data) <= 1000:
        escaped = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + escaped + b'"'
    return b"{%d+}\r\n" % len(data) + data


def render_search_key(key: SearchKey) -> bytes:
    """``key`` as SEARCH command text (literals non-synchronising)."""
    match key:
        case AllKey():
            return b"ALL"
        case FlagKey(flag=flag, present=present):
            system = _FLAG_KEY_OF.get(flag)
            if system is not None:
                return (b"" if present else b"UN") + system.encode()
            return (b"KEYWORD " if present else b"UNKEYWORD ") + flag.encode("ascii")
        case RecentKey(present=present):
            return b"RECENT" if present else b"OLD"
        case HeaderKey(field=field, value=value):
            shortcut = _HEADER_KEY_OF.get(field)
            if shortcut is not None:
                return shortcut.encode() + b" " + render_astring(value)
            return b"HEADER " + render_astring(field) + b" " + render_astring(value)
        case BodyKey(value=value):
            return b"BODY " + render_astring(value)
        case TextKey(value=value):
            return b"TEXT " + render_astring(value)
        case DateKey(field=field, relation=relation, date=date):
            prefix = "SENT" if field is DateField.SENT else ""
            return f"{prefix}{relation.value} {render_date(date)}".encode()
        case SizeKey(larger=larger, size=size):
            return (b"LARGER %d" if larger else b"SMALLER %d") % size
        case SequenceKey(numbers=numbers):
            return numbers.render().encode()
        case UidKey(uids=uids):
            return b"UID " + uids.render().encode()
        case ModSeqKey(modseq=modseq, entry_name=name, entry_type=entry_type):
            entry = b""
            if name is not None and entry_type is not None:
                entry = render_astring(name) + b" " + entry_type.value.encode() + b" "
            return b"MODSEQ " + entry + b"%d" % modseq
        case NotKey(key=inner):
            return b"NOT " + render_search_key(inner)
        case OrKey(left=left, right=right):
            return b"OR " + render_search_key(left) + b" " + render_search_key(right)
        case AndKey(keys=keys):
            return b"(" + b" ".join(render_search_key(k) for k in keys) + b")"
    raise TypeError(f"not a search key: {key!r}")


def render_search_program(key: SearchKey) -> bytes:
    """The criteria part of a SEARCH command: a top-level :class:`AndKey` is
    written as keys in a row, without parentheses."""
    if isinstance(key, AndKey):
        return b" ".join(render_search_key(k) for k in key.keys)
    return render_search_key(key)
