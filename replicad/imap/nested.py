"""The neutral value model of the message-structure layer, and a minimal renderer.

ENVELOPE, BODYSTRUCTURE and the other FETCH items this layer computes are
nested values, not wire bytes, so the server's response renderer stays the
one place that decides how a string goes on the wire:

- ``None`` is NIL;
- ``int`` is a number;
- ``bytes`` is a string (the renderer chooses quoted or literal);
- ``list`` is a parenthesised list of such values, separated by one space;
- :class:`Adjacent` is a run of values written next to each other with
  nothing between them and no parentheses of its own: the grammar's
  ``1*address`` inside an address list and ``1*body`` at the head of a
  multipart BODYSTRUCTURE (RFC 3501 §9), where no space separates the items.

:func:`render_imap_value` is the smallest renderer that produces the bytes a
reference server sends for these values (RFC 3501 §4 and §9: ``quoted`` when
the string is safe, else a synchronising ``literal``), so the structure can
be checked byte for byte against recorded server output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

ImapValue: TypeAlias = "int | bytes | list[ImapValue] | Adjacent | None"


@dataclass(frozen=True, slots=True)
class Adjacent:
    """Values juxtaposed without separators (RFC 3501 ``1*address``, ``1*body``)."""

    items: tuple[ImapValue, ...]

MAX_QUOTED_BYTES = 1000
"""Longer strings go out as literals: a quoted string must fit on one line
of reasonable length, and RFC 3501 §4.3 leaves the choice to the server."""

_UNSAFE_IN_QUOTED = frozenset(b"\r\n\x00")


def is_quotable(value: bytes) -> bool:
    """True when ``value`` may be sent as a RFC 3501 ``quoted`` string:
    7-bit, no CR, LF or NUL, at most :data:`MAX_QUOTED_BYTES` octets."""
    if len(value) > MAX_QUOTED_BYTES:
        return False
    return value.isascii() and not _UNSAFE_IN_QUOTED.intersection(value)


def render_imap_value(value: ImapValue) -> bytes:
    """Render a nested value as RFC 3501 wire bytes: NIL, numbers, lists
    separated by single spaces, strings quoted (``"`` and ``\\`` escaped)
    when :func:`is_quotable`, else as ``{n}\\r\\n`` literals."""
    out = bytearray()
    _render_into(out, value)
    return bytes(out)


def _render_into(out: bytearray, value: ImapValue) -> None:
    if value is None:
        out += b"NIL"
    elif isinstance(value, bool):
        raise TypeError("booleans have no IMAP form")
    elif isinstance(value, int):
        out += str(value).encode("ascii")
    elif isinstance(value, bytes):
        if is_quotable(value):
            out += b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        else:
            out += b"{%d}\r\n" % len(value) + value
    elif isinstance(value, Adjacent):
        for item in value.items:
            _render_into(out, item)
    else:
        out += b"("
        for index, item in enumerate(value):
            if index:
                out += b" "
            _render_into(out, item)
        out += b")"
