"""BODY and BODYSTRUCTURE (RFC 3501 §7.4.2, RFC 9051 §7.5.2) of a MIME tree.

The result is a value of the neutral model of :mod:`replicad.imap.nested`
(``None`` NIL, ``int``, ``bytes``, ``list``, and ``Adjacent`` for the run of
child bodies that opens a multipart).  Octet and line counts are those of
the bytes as stored (:mod:`replicad.imap.mimeparse`), so they agree with
what BODY[section] returns for the same message.

What follows Dovecot rather than the letter of the RFC, so that clients see
what they see from it:

- types, subtypes, parameter names and values and the transfer encoding
  are sent as written (the defaults in lower case);
- a text part without a charset parameter gets ``"charset" "us-ascii"``
  added after its other parameters (RFC 2045 §5.2's default made explicit);
- body-fld-md5 is the Content-MD5 header's value when there is one (NIL
  otherwise): RFC 3501 leaves the field to the server;
- body-fld-lang is always a list, even of one tag;
- RFC 2231 parameter continuations are joined (see
  :func:`replicad.imap.mimeparse._merge_rfc2231_sections`).
"""

from __future__ import annotations

from replicad.imap.envelope import envelope
from replicad.imap.mimeparse import MimePart, parse_disposition, parse_language
from replicad.imap.nested import Adjacent, ImapValue

DEFAULT_ENCODING = b"7bit"


def body_structure(part: MimePart, *, extended: bool = True) -> ImapValue:
    """BODYSTRUCTURE of ``part`` (``extended``) or BODY (without extension data)."""
    if part.is_multipart:
        return _multipart(part, extended)
    return _single(part, extended)


def _multipart(part: MimePart, extended: bool) -> list[ImapValue]:
    children = tuple(body_structure(child, extended=extended) for child in part.children)
    out: list[ImapValue] = [Adjacent(children), part.content_type.subtype]
    if extended:
        out.append(_params(part.content_type.params, add_charset=False))
        out.extend(_common_extension(part))
    return out


def _single(part: MimePart, extended: bool) -> list[ImapValue]:
    ctype = part.content_type
    out: list[ImapValue] = [
        ctype.maintype,
        ctype.subtype,
        _params(ctype.params, add_charset=ctype.is_text),
        part.header_value(b"content-id"),
        part.header_value(b"content-description"),
        part.header_value(b"content-transfer-encoding") or DEFAULT_ENCODING,
        part.body_size,
    ]
    if part.message is not None:
        out.append(envelope(part.message))
        out.append(body_structure(part.message, extended=extended))
        out.append(part.body_lines)
    elif ctype.is_text:
        out.append(part.body_lines)
    if extended:
        out.append(part.header_value(b"content-md5"))
        out.extend(_common_extension(part))
    return out


def _params(params: tuple[tuple[bytes, bytes], ...], *, add_charset: bool) -> ImapValue:
    """body-fld-param: NIL or ``(name value …)``."""
    flat: list[ImapValue] = []
    for name, value in params:
        flat += [name, value]
    if add_charset and not any(name.lower() == b"charset" for name, _ in params):
        flat += [b"charset", b"us-ascii"]
    return flat if flat else None


def _common_extension(part: MimePart) -> list[ImapValue]:
    """body-fld-dsp, body-fld-lang and body-fld-loc, shared by every kind of part."""
    disposition = parse_disposition(part.header_value(b"content-disposition"))
    dsp: ImapValue = None
    if disposition is not None:
        dsp = [disposition.kind, _params(disposition.params, add_charset=False)]
    languages = parse_language(part.header_value(b"content-language"))
    lang: ImapValue = list(languages) if languages else None
    return [dsp, lang, part.header_value(b"content-location")]
