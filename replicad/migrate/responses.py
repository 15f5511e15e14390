"""The source's untagged responses as imaplib collects them, parsed (pure; RFC 3501 §7).

imaplib hands the untagged responses of a command over as a list of
pieces: text lines, and (text ending in ``{n}``, literal) pairs for lines
that carried a literal.  imapclient's parser lexes that text one byte at a
time in Python, which was the largest CPU cost of a pass on the node's
side (a no-op pass's LIST-STATUS alone took 1.6 ms a user); this one lexes
each piece with one regular expression and keeps every literal as the very
bytes object imaplib read (a body is never copied here).

:func:`parse_fetch` returns the items of each FETCH response by UID (a
``UID FETCH`` response always carries the UID, RFC 3501 §6.4.8);
:func:`parse_values` the values of LIST, STATUS or NAMESPACE responses, in
order.  Both raise ``ValueError`` on anything they do not understand, and
the caller then falls back to imapclient's parser.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from typing import Final

# One token: ( ) "quoted" {literal marker at the end} or an atom, where an
# atom may carry a section and a partial (BODY[], BODY[HEADER]<0.100>);
# anything else is the last group, an error.
_TOKEN: Final = re.compile(
    rb'(\()|(\))|"((?:[^"\\]|\\.)*)"|\{(\d+)\+?\}$|'
    rb"([^\s()\"{\[\]]+(?:\[[^\]]*\](?:<[\d.]+>)?)?)|(\S)"
)
_OPEN_GROUP, _CLOSE_GROUP, _QUOTED, _MARKER, _ATOM = 1, 2, 3, 4, 5
_QUOTED_ESCAPE: Final = re.compile(rb"\\(.)")
_OPEN, _CLOSE = object(), object()

Value = bytes | int | None | list["Value"]


def _lex(piece: bytes, literal: bytes | None, out: list[object]) -> None:
    for match in _TOKEN.finditer(piece):
        kind = match.lastindex
        if kind == _ATOM:
            atom = match.group(_ATOM)
            if atom.isdigit():
                out.append(int(atom))
            else:
                out.append(None if atom == b"NIL" else atom)
        elif kind == _OPEN_GROUP:
            out.append(_OPEN)
        elif kind == _CLOSE_GROUP:
            out.append(_CLOSE)
        elif kind == _QUOTED:
            quoted = match.group(_QUOTED)
            out.append(_QUOTED_ESCAPE.sub(rb"\1", quoted) if b"\\" in quoted else quoted)
        elif kind == _MARKER:
            if literal is None or len(literal) != int(match.group(_MARKER)):
                raise ValueError("a literal marker without its literal")
            out.append(literal)
            literal = None
        else:
            raise ValueError(
                f"unexpected FETCH text at {piece[match.start() : match.start() + 20]!r}"
            )
    if literal is not None:
        raise ValueError("a literal without its marker")


def _nest(tokens: list[object], start: int) -> tuple[list[Value], int]:
    """The list that opened just before ``start``, and the index after its ``)``."""
    items: list[Value] = []
    i = start
    while i < len(tokens):
        token = tokens[i]
        if token is _CLOSE:
            return items, i + 1
        if token is _OPEN:
            inner, i = _nest(tokens, i + 1)
            items.append(inner)
            continue
        items.append(token)  # type: ignore[arg-type]
        i += 1
    raise ValueError("unbalanced parentheses in a FETCH response")


def _tokens(pieces: Sequence[bytes | tuple[bytes, bytes] | None]) -> list[object]:
    tokens: list[object] = []
    for piece in pieces:
        if piece is None:
            continue
        if isinstance(piece, tuple):
            _lex(piece[0], piece[1], tokens)
        else:
            _lex(piece, None, tokens)
    return tokens


def parse_values(pieces: Sequence[bytes | tuple[bytes, bytes] | None]) -> list[Value]:
    """Every top-level value of the responses, in order: a LIST response is
    three (attributes, delimiter, name), a STATUS response two (name, items)."""
    tokens = _tokens(pieces)
    tokens.append(_CLOSE)
    values, end = _nest(tokens, 0)
    if end != len(tokens):
        raise ValueError("unbalanced parentheses in a response")
    return values


def parse_fetch(
    pieces: Sequence[bytes | tuple[bytes, bytes] | None],
) -> dict[int, dict[bytes, Value]]:
    """``msgno (ITEM value ...)`` responses -> {uid: {ITEM: value}} (items upper-case)."""
    tokens = _tokens(pieces)
    out: dict[int, dict[bytes, Value]] = {}
    i = 0
    while i < len(tokens):
        if not isinstance(tokens[i], int) or i + 1 >= len(tokens) or tokens[i + 1] is not _OPEN:
            raise ValueError("a FETCH response is 'number (items)'")
        items, i = _nest(tokens, i + 2)
        if len(items) % 2:
            raise ValueError("FETCH items come in name/value pairs")
        fields: dict[bytes, Value] = {}
        for name, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(name, bytes):
                raise ValueError(f"a FETCH item name is an atom, not {name!r}")
            fields[name.upper()] = value
        uid = fields.get(b"UID")
        if not isinstance(uid, int):
            raise ValueError("a UID FETCH response without its UID")
        out[uid] = fields
    return out


_DATE_TIME: Final = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$"
)
_MONTHS: Final = {
    m: i for i, m in enumerate(b"jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)
}


def internaldate_seconds(value: Value) -> int:
    """``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (RFC 3501 date-time) as Unix seconds."""
    match = _DATE_TIME.match(value) if isinstance(value, bytes) else None
    month = _MONTHS.get(match.group(2).lower()) if match is not None else None
    if match is None or month is None:
        raise ValueError(f"not an RFC 3501 date-time: {value!r}")
    day, _, year, hour, minute, second, sign, zone_h, zone_m = match.groups()
    local = calendar.timegm(
        (int(year), month, int(day), int(hour), int(minute), int(second), 0, 0, 0)
    )
    offset = int(zone_h) * 3600 + int(zone_m) * 60
    return local - offset if sign == b"+" else local + offset


def flag_names(value: Value) -> tuple[str, ...]:
    """A FLAGS list's flags as text, ``\\Recent`` left out (RFC 3501 §2.3.2: a
    session's, not the message's)."""
    if not isinstance(value, list):
        raise ValueError(f"FLAGS is a list, not {value!r}")
    out = []
    for flag in value:
        if not isinstance(flag, bytes):
            raise ValueError(f"a flag is an atom, not {flag!r}")
        text = flag.decode("utf-8", "replace")
        if text.lower() != "\\recent":
            out.append(text)
    return tuple(out)
