"""The text rendering of frames (protocol-spec/text-form.md), and its parser.

Every frame has exactly one canonical rendering, IMAP-like, and the parser
turns it back into the identical frame, so ``replicad debug`` can speak the
protocol by hand and decode captures.  The top-level array is rendered as
its elements separated by single spaces (``tag VERB field ...``); nested
lists are parenthesised.  Values:

=========  ============================================================
int        decimal, ``-`` for negatives: ``42``, ``-7``
None       ``NIL``
str        an atom if it is one (``\\Seen``, ``INBOX``, ``1:4,7``), else a
           quoted string ``"two words"``, else (controls inside) a literal
           ``{n}`` CRLF + n octets of UTF-8
bytes      1..32 octets: ``#`` + lowercase hex (GUIDs, body hashes);
           else a binary literal ``~{n}`` CRLF + n octets (bodies)
list       ``(`` values separated by SP ``)``
=========  ============================================================

Text is ``bytes``: literals carry raw octets.  A text frame is one logical
line; in a stream, frames are separated by CRLF outside literals.  Parse
errors raise :class:`~replicad.errors.ProtocolError` only.
"""

from __future__ import annotations

import re
from typing import Final

from replicad.errors import ProtocolError
from replicad.protocol.frames import MAX_DEPTH, MAX_INT, MIN_INT, Frame, Value, check_frame

MAX_HEX_BYTES: Final = 32

# ATOM-CHAR of text-form.md: printable ASCII except SP ( ) { } " \ % #.
# '\' may only open an atom (system flags), '#' is the hex marker.
_ATOM_CHARS: Final = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('(){}"\\%#')
_ATOM_RE: Final = re.compile(r"\\?[!$&\'*+,\-./0-9:;<=>?@A-Z\[\]^_`a-z|~]+")
_NUMBER_RE: Final = re.compile(r"-?[0-9]+")
_CANONICAL_NUMBER_RE: Final = re.compile(r"0|-?[1-9][0-9]*")
_HEX_RE: Final = re.compile(rb"[0-9a-f]+")
_LITERAL_RE: Final = re.compile(rb"(~?)\{([0-9]{1,10})\}\r\n")
_MAX_NUMBER_LEN: Final = max(len(str(MAX_INT)), len(str(MIN_INT)))


def _is_atom(text: str) -> bool:
    return (
        _ATOM_RE.fullmatch(text) is not None
        and _NUMBER_RE.fullmatch(text) is None
        and text != "NIL"
    )


def _needs_literal(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def render(frame: Frame) -> bytes:
    """The canonical text form of ``frame`` (checked with :func:`check_frame` first)."""
    check_frame(frame)
    out: list[bytes] = []
    for i, value in enumerate(frame):
        if i:
            out.append(b" ")
        _render_value(value, out)
    return b"".join(out)


def _render_value(value: Value, out: list[bytes]) -> None:
    if value is None:
        out.append(b"NIL")
    elif type(value) is int:
        out.append(str(value).encode("ascii"))
    elif type(value) is str:
        if _is_atom(value):
            out.append(value.encode("ascii"))
        elif _needs_literal(value):
            data = value.encode("utf-8")
            out.append(b"{%d}\r\n" % len(data))
            out.append(data)
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            out.append(b'"' + escaped.encode("utf-8") + b'"')
    elif type(value) is bytes:
        if 1 <= len(value) <= MAX_HEX_BYTES:
            out.append(b"#" + value.hex().encode("ascii"))
        else:
            out.append(b"~{%d}\r\n" % len(value))
            out.append(value)
    elif type(value) is list:
        out.append(b"(")
        for i, item in enumerate(value):
            if i:
                out.append(b" ")
            _render_value(item, out)
        out.append(b")")
    else:  # pragma: no cover - check_frame excludes everything else
        raise ProtocolError(f"cannot render a {type(value).__name__}")


def parse(text: bytes) -> Frame:
    """Parse exactly one text frame (an optional trailing CRLF is allowed)."""
    parser = _Parser(text)
    frame = parser.frame()
    if parser.pos < len(text) and text[parser.pos :] != b"\r\n":
        raise ProtocolError(f"trailing data after the frame at offset {parser.pos}")
    return frame


def parse_stream(text: bytes) -> list[Frame]:
    """Parse frames separated by CRLF (a capture or a hand-typed session)."""
    parser = _Parser(text)
    frames: list[Frame] = []
    while parser.pos < len(text):
        frames.append(parser.frame())
        if parser.pos < len(text):
            parser.expect(b"\r\n")
    return frames


class _Parser:
    __slots__ = ("pos", "text")

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> ProtocolError:
        return ProtocolError(f"text form: {what} at offset {self.pos}")

    def expect(self, token: bytes) -> None:
        if not self.text.startswith(token, self.pos):
            raise self.error(f"expected {token!r}")
        self.pos += len(token)

    def frame(self) -> Frame:
        values: Frame = [self.value(1)]
        while self.text.startswith(b" ", self.pos):
            self.pos += 1
            values.append(self.value(1))
        return check_frame(values)

    def value(self, depth: int) -> Value:
        text, pos = self.text, self.pos
        if pos >= len(text):
            raise self.error("unexpected end")
        first = text[pos : pos + 1]
        if first == b"(":
            return self.list_(depth + 1)
        if first == b'"':
            return self.quoted()
        if first == b"#":
            return self.hexbytes()
        if first == b"{" or text.startswith(b"~{", pos):
            return self.literal()
        return self.token()

    def list_(self, depth: int) -> list[Value]:
        if depth > MAX_DEPTH:
            raise self.error(f"lists nested deeper than {MAX_DEPTH}")
        self.pos += 1
        items: list[Value] = []
        if self.text.startswith(b")", self.pos):
            self.pos += 1
            return items
        while True:
            items.append(self.value(depth))
            if self.text.startswith(b")", self.pos):
                self.pos += 1
                return items
            self.expect(b" ")

    def quoted(self) -> str:
        text = self.text
        self.pos += 1
        out = bytearray()
        while True:
            if self.pos >= len(text):
                raise self.error("unterminated quoted string")
            ch = text[self.pos]
            if ch == 0x22:  # "
                self.pos += 1
                break
            if ch == 0x5C:  # backslash
                nxt = text[self.pos + 1 : self.pos + 2]
                if nxt not in (b"\\", b'"'):
                    raise self.error("bad escape in quoted string")
                out += nxt
                self.pos += 2
                continue
            if ch < 0x20 or ch == 0x7F:
                raise self.error("control character in quoted string (use a literal)")
            out.append(ch)
            self.pos += 1
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("quoted string is not UTF-8") from None

    def hexbytes(self) -> bytes:
        self.pos += 1
        match = _HEX_RE.match(self.text, self.pos)
        if match is None or len(match.group()) % 2 or len(match.group()) > 2 * MAX_HEX_BYTES:
            raise self.error(f"expected 2 to {2 * MAX_HEX_BYTES} lowercase hex digits")
        self.pos = match.end()
        return bytes.fromhex(match.group().decode("ascii"))

    def literal(self) -> str | bytes:
        match = _LITERAL_RE.match(self.text, self.pos)
        if match is None:
            raise self.error("malformed literal header (expected {n} or ~{n} then CRLF)")
        size = int(match.group(2))
        start = match.end()
        if start + size > len(self.text):
            raise self.error("literal runs past the end of the input")
        data = self.text[start : start + size]
        self.pos = start + size
        if match.group(1):
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error("string literal is not UTF-8 (use ~{n} for bytes)") from None

    def token(self) -> int | str | None:
        text, start = self.text, self.pos
        end = start
        if text.startswith(b"\\", end):
            end += 1
        while end < len(text) and chr(text[end]) in _ATOM_CHARS:
            end += 1
        word = text[start:end].decode("ascii")
        if not word or word == "\\":
            raise self.error("expected a value")
        self.pos = end
        if word == "NIL":
            return None
        if _NUMBER_RE.fullmatch(word):
            if not _CANONICAL_NUMBER_RE.fullmatch(word):
                raise self.error(f"number {word!r} is not canonical")
            # Checked before int(): it refuses thousands of digits with a
            # ValueError (sys.int_info), and no longer number is in range.
            if len(word) > _MAX_NUMBER_LEN:
                raise self.error(f"number of {len(word)} characters out of range")
            number = int(word)
            if not MIN_INT <= number <= MAX_INT:
                raise self.error(f"number {word} out of range")
            return number
        return word
