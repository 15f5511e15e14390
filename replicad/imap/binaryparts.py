"""A message APPENDed as ``literal8`` made storable (RFC 3516 §4.4).

A ``literal8`` may carry parts whose Content-Transfer-Encoding is
``binary``: any octet, NUL included, with lines of any length.  IMAP4rev1
cannot send such bytes back in ``BODY[]`` (a literal holds no NUL, RFC 3501
§4.3), so, as RFC 3516 §4.4 allows and Dovecot does, the server stores
every such part re-encoded in base64: the part's ``Content-Transfer-
Encoding: binary`` field becomes ``Content-Transfer-Encoding: base64`` and
its body the base64 of the same octets, in lines of 76 characters (RFC
2045 §6.8).  ``BINARY[part]`` still returns the original octets, since it
undoes the base64.

Only leaf parts are re-encoded: a multipart's or a message/rfc822 part's
own encoding must be an identity one (RFC 2046 §5.1.1, §5.2.1) and their
children are visited instead.  A message with no binary part is returned
unchanged (the same object).
"""

from __future__ import annotations

import base64
from typing import Final

from replicad.imap.mimeparse import MimePart, parse_message

#: Characters of base64 per line (RFC 2045 §6.8: "no more than 76").
BASE64_LINE_CHARS: Final = 76

_ENCODING_FIELD = b"content-transfer-encoding"


def encode_binary_parts(raw: bytes) -> bytes:
    """``raw`` with every leaf part in the ``binary`` transfer encoding
    re-encoded in base64 (see the module docstring)."""
    edits: list[tuple[int, int, bytes]] = []
    for part in parse_message(raw).walk():
        if part.is_multipart or part.message is not None:
            continue
        edit = _field_edit(raw, part)
        if edit is None:
            continue
        edits.append(edit)
        edits.append((part.body_start, part.body_end, _base64_body(raw, part)))
    if not edits:
        return raw
    out = bytearray()
    done = 0
    for start, end, replacement in sorted(edits):
        out += raw[done:start]
        out += replacement
        done = end
    out += raw[done:]
    return bytes(out)


def _field_edit(raw: bytes, part: MimePart) -> tuple[int, int, bytes] | None:
    """The rewrite of the part's Content-Transfer-Encoding field when it
    says ``binary``, else None."""
    for field in part.fields:
        if field.name_lower != _ENCODING_FIELD:
            continue
        if field.value.strip().lower() != b"binary":
            return None
        start = _line_start_of(raw, field.raw, part.header_start, part.header_end)
        if start < 0:
            return None
        eol = b"\n" if field.raw.endswith(b"\n") and not field.raw.endswith(b"\r\n") else b"\r\n"
        new = field.name + b": base64" + eol
        return start, start + len(field.raw), new
    return None


def _line_start_of(raw: bytes, field: bytes, start: int, end: int) -> int:
    """Where the stored field ``field`` begins, at a line start within
    ``raw[start:end]``; -1 if it is not found there."""
    at = raw.find(field, start, end)
    while at > start and raw[at - 1] != 0x0A:
        at = raw.find(field, at + 1, end)
    return at


def _base64_body(raw: bytes, part: MimePart) -> bytes:
    encoded = base64.b64encode(raw[part.body_start:part.body_end])
    lines = [
        encoded[i:i + BASE64_LINE_CHARS] for i in range(0, len(encoded), BASE64_LINE_CHARS)
    ]
    body = b"\r\n".join(lines)
    # The body of the message's last part runs to the end of the data: keep
    # the message ending in a line end when it did.
    if part.body_end == len(raw) and raw.endswith(b"\n") and body:
        body += b"\r\n"
    return body
