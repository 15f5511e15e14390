"""A message's MIME tree from its raw bytes, with exact offsets.

:func:`parse_message` reads an RFC 5322 message as stored and returns a
:class:`MimePart` tree whose every part records where its header and body
lie in the raw bytes (half-open ``[start, end)`` offsets), its parsed header
fields, its content type and its line count.  Bodies are never copied: a
part's body is ``raw[part.body_start:part.body_end]`` and counts are taken
in place; only header fields (small) are copied out.

What the rules are, and where they come from:

- Header and body are split at the first empty line (RFC 5322 §2.1); a
  header field is a ``name:`` line and its folded continuations.  Lines may
  end in CRLF or in a bare LF (mail saved from Unix files): both are line
  ends, and every offset and count is of the bytes as stored.
- A multipart body is cut at delimiter lines ``--boundary`` (RFC 2046
  §5.1.1); the CRLF before a delimiter belongs to the delimiter, not to the
  part before it.  The preamble and the epilogue belong to the multipart's
  body but to no child.  As Dovecot does, a delimiter line only has to
  *start* with ``--boundary``; the boundaries of every enclosing multipart
  are live at once, the longest that matches wins, and a line matching an
  outer boundary ends the inner multipart (its close delimiter missing).  A
  missing close delimiter ends the multipart at the end of the message.
- A ``message/rfc822`` part's body is parsed as a message of its own
  (:attr:`MimePart.message`); a part of a ``multipart/digest`` defaults to
  ``message/rfc822`` (RFC 2046 §5.1.5); everything else defaults to
  ``text/plain; charset=us-ascii`` (RFC 2045 §5.2).
- Bad mail never raises.  A Content-Type without a ``/`` keeps its type
  with an empty subtype (what Dovecot reports), one that cannot be read at
  all falls back to the default, a multipart without a boundary parameter
  has one empty ``text/plain`` child (Dovecot's answer too), and nesting
  deeper than :data:`MAX_NESTING_DEPTH` or more than :data:`MAX_PARTS` parts
  are kept as opaque leaves, so a hostile message cannot exhaust the stack.

The line count of a part (:attr:`MimePart.body_lines`) is the number of LF
octets in its body, as Dovecot counts: a last line without a line end
counts for nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# -- header fields -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field as stored, and its value unfolded.

    ``raw`` is the field's bytes with its line ends (what BODY[HEADER.FIELDS]
    returns); ``value`` has the folding line ends removed and the white space
    after the colon dropped, trailing white space kept, as Dovecot's ENVELOPE
    shows it.
    """

    name: bytes
    raw: bytes
    value: bytes
    name_lower: bytes

    @classmethod
    def from_raw(cls, name: bytes, raw: bytes, value_offset: int) -> HeaderField:
        value = raw[value_offset:].replace(b"\r\n", b"").replace(b"\n", b"").lstrip(b" \t")
        return cls(name, raw, value, name.lower())


# -- MIME header values (RFC 2045 §5.1, RFC 2183, RFC 2231) -------------------

_TSPECIALS = frozenset(b'()<>@,;:\\"/[]?=')
_PARAM_SECTION = re.compile(rb"^(.*?)\*([0-9]+)(\*?)$", re.S)


class _MimeTokens:
    """A cursor over a structured MIME header value: tokens, quoted strings
    and specials, with white space and (nested) comments skipped."""

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.pos = 0

    def skip_cfws(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in b" \t\r\n":
                self.pos += 1
            elif char == 0x28:  # "(": comments nest (RFC 5322 §3.2.2)
                depth = 0
                while self.pos < len(text):
                    char = text[self.pos]
                    if char == 0x5C:
                        self.pos += 1
                    elif char == 0x28:
                        depth += 1
                    elif char == 0x29:
                        depth -= 1
                        if depth == 0:
                            self.pos += 1
                            break
                    self.pos += 1
            else:
                return

    def peek(self) -> int | None:
        self.skip_cfws()
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take_special(self, special: bytes) -> bool:
        if self.peek() == special[0]:
            self.pos += 1
            return True
        return False

    def token(self) -> bytes:
        """A token (RFC 2045), or b"" when none starts here."""
        self.skip_cfws()
        start = self.pos
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char <= 0x20 or char == 0x7F or char in _TSPECIALS:
                break
            self.pos += 1
        return text[start:self.pos]

    def value(self) -> bytes:
        """A parameter value: a quoted string (unescaped) or a token."""
        if self.peek() != 0x22:
            return self.token()
        text = self.text
        self.pos += 1
        out = bytearray()
        while self.pos < len(text):
            char = text[self.pos]
            if char == 0x22:
                self.pos += 1
                break
            if char == 0x5C and self.pos + 1 < len(text):
                self.pos += 1
                char = text[self.pos]
            out.append(char)
            self.pos += 1
        return bytes(out)

    def parameters(self) -> tuple[tuple[bytes, bytes], ...]:
        """``*(";" attribute "=" value)``; an unreadable parameter ends the list."""
        params: list[tuple[bytes, bytes]] = []
        while self.take_special(b";"):
            name = self.token()
            if not name or not self.take_special(b"="):
                if self.peek() == 0x3B:
                    continue  # an empty parameter (";;"): skipped, as mailers write them
                break
            params.append((name, self.value()))
        return _merge_rfc2231_sections(params)


def _merge_rfc2231_sections(
    params: list[tuple[bytes, bytes]],
) -> tuple[tuple[bytes, bytes], ...]:
    """Join RFC 2231 §3 continuations (``name*0``, ``name*1*`` …) into one
    parameter after the plain ones, as Dovecot does: named ``name*`` (value
    still percent-encoded) when any section is extended, else ``name``."""
    plain: list[tuple[bytes, bytes]] = []
    sections: dict[bytes, list[tuple[int, bool, bytes, bytes]]] = {}
    for name, value in params:
        match = _PARAM_SECTION.match(name)
        if match is None:
            plain.append((name, value))
            continue
        base, number, star = match.groups()
        sections.setdefault(base.lower(), []).append((int(number), bool(star), base, value))
    for parts in sections.values():
        parts.sort(key=lambda part: part[0])
        extended = any(part[1] for part in parts)
        name = parts[0][2] + (b"*" if extended else b"")
        plain.append((name, b"".join(part[3] for part in parts)))
    return tuple(plain)


@dataclass(frozen=True, slots=True)
class ContentType:
    """A parsed Content-Type: type and subtype as written, parameters in order.

    ``defaulted`` says that no readable Content-Type was there (RFC 2045
    §5.2's default applies).
    """

    maintype: bytes
    subtype: bytes
    params: tuple[tuple[bytes, bytes], ...]
    defaulted: bool = False

    @property
    def maintype_lower(self) -> bytes:
        return self.maintype.lower()

    @property
    def subtype_lower(self) -> bytes:
        return self.subtype.lower()

    @property
    def is_rfc822(self) -> bool:
        return self.maintype_lower == b"message" and self.subtype_lower == b"rfc822"

    @property
    def is_text(self) -> bool:
        return self.maintype_lower == b"text"

    def param(self, name: bytes) -> bytes | None:
        """The value of parameter ``name`` (any case), or None."""
        wanted = name.lower()
        for key, value in self.params:
            if key.lower() == wanted:
                return value
        return None


def parse_content_type(value: bytes | None, default: ContentType) -> ContentType:
    """Parse a Content-Type value; ``default`` when absent or unreadable.

    A type without ``/subtype`` is kept with an empty subtype, which is what
    Dovecot reports for it (the part is then no text/* part).
    """
    if value is None:
        return default
    tokens = _MimeTokens(value)
    maintype = tokens.token()
    if not maintype:
        return default
    subtype = tokens.token() if tokens.take_special(b"/") else b""
    return ContentType(maintype, subtype, tokens.parameters())


@dataclass(frozen=True, slots=True)
class Disposition:
    """A parsed Content-Disposition (RFC 2183): its type and parameters."""

    kind: bytes
    params: tuple[tuple[bytes, bytes], ...]


def parse_disposition(value: bytes | None) -> Disposition | None:
    """Parse a Content-Disposition value; None when absent or unreadable."""
    if value is None:
        return None
    tokens = _MimeTokens(value)
    kind = tokens.token()
    if not kind:
        return None
    return Disposition(kind, tokens.parameters())


def parse_language(value: bytes | None) -> tuple[bytes, ...]:
    """The language tags of a Content-Language value (RFC 3282), comments dropped."""
    if value is None:
        return ()
    tokens = _MimeTokens(value)
    tags: list[bytes] = []
    while True:
        tag = tokens.token()
        if tag:
            tags.append(tag)
        if not tokens.take_special(b","):
            return tuple(tags)


# -- the MIME tree -------------------------------------------------------------

MAX_NESTING_DEPTH = 100
"""Multiparts and message/rfc822 parts nested deeper are kept as leaves."""
MAX_PARTS = 10_000
"""Parts beyond this many in one message are kept as leaves."""

_DEFAULT_TYPE = ContentType(b"text", b"plain", ((b"charset", b"us-ascii"),), defaulted=True)
_DIGEST_DEFAULT_TYPE = ContentType(b"message", b"rfc822", (), defaulted=True)


@dataclass(frozen=True, slots=True)
class MimePart:
    """One MIME entity: offsets into the raw message, header fields, type.

    ``header_start <= header_end == body_start <= body_end``; the header
    range includes the empty line that ends it (IMAP's ``BODY[HEADER]`` and
    ``BODY[n.MIME]`` are exactly ``raw[header_start:header_end]``).
    """

    header_start: int
    body_start: int
    body_end: int
    fields: tuple[HeaderField, ...]
    content_type: ContentType
    body_lines: int
    children: tuple[MimePart, ...] = ()
    message: MimePart | None = None

    @property
    def header_end(self) -> int:
        return self.body_start

    @property
    def header_size(self) -> int:
        return self.body_start - self.header_start

    @property
    def body_size(self) -> int:
        """The size in octets of the body as stored (BODYSTRUCTURE's body-fld-octets)."""
        return self.body_end - self.body_start

    @property
    def is_multipart(self) -> bool:
        return self.content_type.maintype_lower == b"multipart"

    @property
    def is_message(self) -> bool:
        """True for a message/rfc822 part whose body was parsed as a message."""
        return self.message is not None

    def header_values(self, name: bytes) -> list[bytes]:
        """Unfolded values of every field named ``name`` (any case), in order."""
        wanted = name.lower()
        return [f.value for f in self.fields if f.name_lower == wanted]

    def header_value(self, name: bytes) -> bytes | None:
        """The first field named ``name``'s unfolded value, or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def walk(self) -> list[MimePart]:
        """This part and every part below it, depth first, in message order."""
        out = [self]
        for child in self.children:
            out.extend(child.walk())
        if self.message is not None:
            out.extend(self.message.walk())
        return out


@dataclass(frozen=True, slots=True)
class _Hit:
    """A delimiter line found: which live boundary, where, and whether it closes."""

    level: int
    line_start: int
    is_close: bool


@dataclass(slots=True)
class _Parser:
    raw: bytes
    parts_left: int = MAX_PARTS

    # -- lines ---------------------------------------------------------------

    def next_line(self, pos: int) -> int:
        """Offset just after the line starting at ``pos`` (end of data if unterminated)."""
        newline = self.raw.find(b"\n", pos)
        return len(self.raw) if newline == -1 else newline + 1

    def before_eol(self, line_start: int, floor: int) -> int:
        """Offset of the line end preceding ``line_start`` (it belongs to the
        delimiter that follows it, RFC 2046 §5.1.1), never below ``floor``."""
        end = line_start
        if end > floor and self.raw[end - 1] == 0x0A:
            end -= 1
            if end > floor and self.raw[end - 1] == 0x0D:
                end -= 1
        return end

    def find_delimiter(self, pos: int, live: tuple[bytes, ...]) -> _Hit | None:
        """The first line at or after ``pos`` (a line start) that starts with
        ``--`` and one of the ``live`` boundaries, the longest one winning."""
        if not live:
            return None
        raw = self.raw
        line = pos
        while line < len(raw):
            if raw.startswith(b"--", line):
                hit = self._match(line, live)
                if hit is not None:
                    return hit
            newline = raw.find(b"\n--", line)
            if newline == -1:
                return None
            line = newline + 1
        return None

    def _match(self, line: int, live: tuple[bytes, ...]) -> _Hit | None:
        best = -1
        for level, boundary in enumerate(live):
            if self.raw.startswith(boundary, line + 2) and (
                best < 0 or len(boundary) > len(live[best])
            ):
                best = level
        if best < 0:
            return None
        after = line + 2 + len(live[best])
        return _Hit(best, line, self.raw.startswith(b"--", after))

    # -- entities ------------------------------------------------------------

    def entity(
        self, start: int, live: tuple[bytes, ...], default: ContentType, depth: int
    ) -> tuple[MimePart, _Hit | None]:
        """Parse the entity at ``start``; it ends at the next live delimiter
        line (returned) or at the end of the data (None)."""
        fields, body_start, hit = self.header(start, live)
        ctype = parse_content_type(_first(fields, b"content-type"), default)
        self.parts_left -= 1
        nest = depth < MAX_NESTING_DEPTH and self.parts_left > 0
        if hit is not None:
            end = body_start
        elif nest and ctype.maintype_lower == b"multipart":
            return self.multipart(start, fields, body_start, ctype, live, depth)
        elif nest and ctype.is_rfc822:
            inner, hit = self.entity(body_start, live, _DEFAULT_TYPE, depth + 1)
            end = inner.body_end
            part = MimePart(
                start, body_start, end, fields, ctype,
                self.raw.count(b"\n", body_start, end), message=inner,
            )
            return part, hit
        else:
            hit = self.find_delimiter(body_start, live)
            end = len(self.raw) if hit is None else self.before_eol(hit.line_start, body_start)
        lines = self.raw.count(b"\n", body_start, end)
        return MimePart(start, body_start, end, fields, ctype, lines), hit

    def header(
        self, start: int, live: tuple[bytes, ...]
    ) -> tuple[tuple[HeaderField, ...], int, _Hit | None]:
        """Header fields from ``start`` to the empty line (included in the
        header); a live delimiter line ends a header that has no empty line."""
        raw = self.raw
        fields: list[HeaderField] = []
        field_start = -1
        pos = start
        while pos < len(raw):
            nxt = self.next_line(pos)
            first = raw[pos]
            if first == 0x0A or (first == 0x0D and raw.startswith(b"\r\n", pos)):
                _close_field(raw, fields, field_start, pos)
                return tuple(fields), nxt, None
            if first == 0x2D and live:
                hit = self._match(pos, live) if raw.startswith(b"--", pos) else None
                if hit is not None:
                    _close_field(raw, fields, field_start, pos)
                    return tuple(fields), self.before_eol(pos, start), hit
            if first not in (0x20, 0x09):
                _close_field(raw, fields, field_start, pos)
                field_start = pos
            pos = nxt
        _close_field(raw, fields, field_start, pos)
        return tuple(fields), len(raw), None

    def multipart(
        self,
        start: int,
        fields: tuple[HeaderField, ...],
        body_start: int,
        ctype: ContentType,
        live: tuple[bytes, ...],
        depth: int,
    ) -> tuple[MimePart, _Hit | None]:
        """A multipart's children between its delimiters; see the module docstring."""
        boundary = ctype.param(b"boundary")
        if not boundary:
            return self.boundaryless(start, fields, body_start, ctype, live)
        inner_live = (*live, boundary)
        own = len(live)
        default = _DIGEST_DEFAULT_TYPE if ctype.subtype_lower == b"digest" else _DEFAULT_TYPE
        children: list[MimePart] = []
        hit = self.find_delimiter(body_start, inner_live)
        while hit is not None and hit.level == own and not hit.is_close:
            child, hit = self.entity(
                self.next_line(hit.line_start), inner_live, default, depth + 1
            )
            children.append(child)
        if hit is not None and hit.level == own:
            # The close delimiter: the epilogue runs to the next outer delimiter.
            hit = self.find_delimiter(self.next_line(hit.line_start), live)
        end = len(self.raw) if hit is None else self.before_eol(hit.line_start, body_start)
        if not children:
            children.append(self.empty_part(end))
        lines = self.raw.count(b"\n", body_start, end)
        part = MimePart(start, body_start, end, fields, ctype, lines, tuple(children))
        return part, hit

    def boundaryless(
        self,
        start: int,
        fields: tuple[HeaderField, ...],
        body_start: int,
        ctype: ContentType,
        live: tuple[bytes, ...],
    ) -> tuple[MimePart, _Hit | None]:
        """A multipart without a boundary: its body, and one empty text/plain child."""
        hit = self.find_delimiter(body_start, live)
        end = len(self.raw) if hit is None else self.before_eol(hit.line_start, body_start)
        lines = self.raw.count(b"\n", body_start, end)
        child = self.empty_part(end)
        return MimePart(start, body_start, end, fields, ctype, lines, (child,)), hit

    @staticmethod
    def empty_part(at: int) -> MimePart:
        """The empty text/plain part standing in for a multipart's missing children."""
        return MimePart(at, at, at, (), _DEFAULT_TYPE, 0)


def _first(fields: tuple[HeaderField, ...], name_lower: bytes) -> bytes | None:
    for header_field in fields:
        if header_field.name_lower == name_lower:
            return header_field.value
    return None


def _close_field(raw: bytes, fields: list[HeaderField], start: int, end: int) -> None:
    """Record the field spanning ``raw[start:end]`` if it is one (has a colon)."""
    if start < 0 or start >= end:
        return
    colon = raw.find(b":", start, end)
    if colon == -1:
        return  # a line that is no field: kept in the header bytes, not a field
    name = raw[start:colon].rstrip(b" \t")
    if not name or b"\n" in name:
        return
    fields.append(HeaderField.from_raw(name, raw[start:end], colon + 1 - start))


def parse_message(raw: bytes) -> MimePart:
    """The MIME tree of the message ``raw``; never raises on malformed mail."""
    root, _ = _Parser(raw).entity(0, (), _DEFAULT_TYPE, 0)
    return root
