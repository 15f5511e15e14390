"""BODY[section]<partial> and BINARY[section] (RFC 3501 §6.4.5, RFC 3516) over raw bytes.

A section is resolved on the MIME tree of :mod:`replicad.imap.mimeparse`
and answered with a slice of the stored bytes (a header subset is built
from the stored field lines).  Part numbers follow RFC 3501 §6.4.5: the
children of a multipart are numbered from 1; a message/rfc822 part's
numbers are those of the message it carries; a message that is not
multipart has only a part 1, its body.

Where RFC 3501 leaves the answer open, replicad answers what Dovecot does,
since clients are tuned against it (the unit tests compare with Dovecot's
own output):

- a part that does not exist gives an empty string, not an error;
- ``n.MIME`` of the part 1 of a non-multipart message is the message header;
- HEADER, TEXT and HEADER.FIELDS of a part that is no message/rfc822 are
  empty;
- a leaf part inside a multipart answers to further ``.1`` numbers as
  itself (``2.1`` of a text/plain part 2 is part 2), while the part 1 of a
  non-multipart message takes no more numbers.

BINARY decodes the base64 and quoted-printable transfer encodings (RFC
3516 §4.2); 7bit, 8bit, binary or no encoding at all leave the bytes
unchanged; any other encoding raises :class:`UnknownTransferEncodingError`,
which the server answers with ``NO [UNKNOWN-CTE]``.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import Literal

from replicad.errors import BadInputError
from replicad.imap.mimeparse import MimePart

SectionKind = Literal["", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"]

IDENTITY_ENCODINGS = frozenset({b"7bit", b"8bit", b"binary"})


class UnknownTransferEncodingError(BadInputError):
    """BINARY asked for a part whose Content-Transfer-Encoding replicad
    cannot decode (RFC 3516 §4.3: the server answers ``NO [UNKNOWN-CTE]``)."""

    def __init__(self, encoding: bytes) -> None:
        super().__init__(f"unknown Content-Transfer-Encoding {encoding!r}")
        self.encoding = encoding


@dataclass(frozen=True, slots=True)
class SectionSpec:
    """A BODY[section]: part numbers (empty for the whole message), what of
    the part, and the field names of HEADER.FIELDS[.NOT]."""

    part: tuple[int, ...] = ()
    kind: SectionKind = ""
    fields: tuple[bytes, ...] = ()


def find_part(root: MimePart, path: tuple[int, ...]) -> MimePart | None:
    """The part numbered ``path`` in the message ``root``, or None.

    Numbers are taken against a *message* (the top one, or one a
    message/rfc822 part carries) or against a part.  A message's numbers
    are its multipart children, or, when it is not multipart, only 1: the
    message's own body.  A part that is message/rfc822 hands the next
    number to the message it carries, so ``1.1`` of a top-level
    message/rfc822 is the body of the attached message, not the attached
    message itself.
    """
    part = root
    at_message = True  # the next number is taken against ``part`` as a message
    closed = False  # the part 1 of a non-multipart message takes no more numbers
    for number in path:
        if not at_message and part.message is not None:
            part, at_message, closed = part.message, True, False
        if part.is_multipart:
            if not 1 <= number <= len(part.children):
                return None
            part, closed = part.children[number - 1], False
        elif number != 1 or closed:
            return None
        else:
            closed = at_message
        at_message = False
    return part


def section_bytes(raw: bytes, root: MimePart, spec: SectionSpec) -> bytes:
    """The bytes of BODY[spec] (before any partial) for the message ``raw``
    whose tree is ``root``."""
    if not spec.part:
        message: MimePart | None = root
        if spec.kind == "":
            return raw
    else:
        part = find_part(root, spec.part)
        if part is None:
            return b""
        if spec.kind == "":
            return raw[part.body_start:part.body_end]
        if spec.kind == "MIME":
            return raw[part.header_start:part.header_end]
        message = part.message
    if message is None:
        return b""
    if spec.kind == "TEXT":
        return raw[message.body_start:message.body_end]
    if spec.kind == "HEADER":
        return raw[message.header_start:message.header_end]
    return header_fields(raw, message, spec.fields, exclude=spec.kind == "HEADER.FIELDS.NOT")


def header_fields(
    raw: bytes, message: MimePart, names: tuple[bytes, ...], *, exclude: bool
) -> bytes:
    """The header fields named ``names`` (any case), or all others when
    ``exclude``, as stored and in message order, then an empty line."""
    wanted = {name.lower() for name in names}
    out = bytearray()
    for field in message.fields:
        if (field.name_lower in wanted) != exclude:
            out += field.raw
            if not field.raw.endswith(b"\n"):
                out += b"\r\n"
    header_end = message.header_end
    out += b"\n" if raw[header_end - 2:header_end] == b"\n\n" else b"\r\n"
    return bytes(out)


def apply_partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    """``<start.count>`` of RFC 3501 §6.4.5: empty when start is past the end."""
    if partial is None:
        return data
    start, count = partial
    return data[start:start + count]


def fetch_section(
    raw: bytes, root: MimePart, spec: SectionSpec, partial: tuple[int, int] | None = None
) -> bytes:
    """BODY[spec]<partial> of the message ``raw`` whose tree is ``root``."""
    return apply_partial(section_bytes(raw, root, spec), partial)


def decode_transfer_encoding(data: bytes, encoding: bytes | None) -> bytes:
    """``data`` with its Content-Transfer-Encoding undone (RFC 2045 §6).

    Decoding is lenient, as mail readers are: base64 skips characters
    outside its alphabet and stops at a broken quartet's padding; stray
    ``=`` in quoted-printable stay as they are (see
    :func:`decode_quoted_printable`).
    """
    name = (encoding or b"7bit").strip().lower()
    if name in IDENTITY_ENCODINGS:
        return data
    if name == b"base64":
        return _decode_base64(data)
    if name == b"quoted-printable":
        return decode_quoted_printable(data)
    raise UnknownTransferEncodingError(encoding or b"")


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")


def decode_quoted_printable(data: bytes) -> bytes:
    """Quoted-printable undone (RFC 2045 §6.7), line by line.

    White space at the end of a line was added in transport and is dropped
    (rule 3), also before a soft line break's ``=`` and after it: ``= `` at
    the end of a line is still a soft line break (rule 5), which joins the
    line to the next one.  ``=XX`` (hex digits of either case) is the octet
    XX; any other ``=`` stays as it is.  Hard line ends are kept as stored
    (CRLF, or a bare LF).
    """
    out = bytearray()
    lines = data.split(b"\n")
    last = len(lines) - 1
    for index, line in enumerate(lines):
        crlf = line.endswith(b"\r")
        line = line.removesuffix(b"\r").rstrip(b" \t")
        soft = line.endswith(b"=")
        out += _QP_ESCAPE.sub(_qp_octet, line[:-1] if soft else line)
        if not soft and index < last:
            out += b"\r\n" if crlf else b"\n"
    return bytes(out)


def _qp_octet(match: re.Match[bytes]) -> bytes:
    return bytes((int(match.group(1), 16),))


def _decode_base64(data: bytes) -> bytes:
    alphabet = bytes(c for c in data if c in _BASE64_ALPHABET)
    usable = len(alphabet) - len(alphabet) % 4
    try:
        return binascii.a2b_base64(alphabet[:usable])
    except binascii.Error:
        # Padding inside the data: decode quartet by quartet up to the damage.
        out = bytearray()
        for start in range(0, usable, 4):
            try:
                out += binascii.a2b_base64(alphabet[start:start + 4])
            except binascii.Error:
                break
        return bytes(out)


_BASE64_ALPHABET = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
)


def binary_bytes(raw: bytes, root: MimePart, path: tuple[int, ...]) -> bytes:
    """BINARY[path] before any partial: the part's body with its transfer
    encoding undone; BINARY[] is the whole message as stored.  Multipart and
    message/rfc822 parts are returned as stored.  Raises
    :class:`UnknownTransferEncodingError` for an encoding it cannot undo."""
    if not path:
        return raw
    part = find_part(root, path)
    if part is None:
        return b""
    body = raw[part.body_start:part.body_end]
    if part.is_multipart or part.message is not None:
        return body
    return decode_transfer_encoding(body, part.header_value(b"content-transfer-encoding"))


def fetch_binary(
    raw: bytes, root: MimePart, path: tuple[int, ...], partial: tuple[int, int] | None = None
) -> bytes:
    """BINARY[path]<partial> (RFC 3516 §4.2)."""
    return apply_partial(binary_bytes(raw, root, path), partial)


def binary_size(raw: bytes, root: MimePart, path: tuple[int, ...]) -> int:
    """BINARY.SIZE[path] (RFC 3516 §4.2): the size of the decoded part."""
    return len(binary_bytes(raw, root, path))
