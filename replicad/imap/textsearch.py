"""What SEARCH needs from a message's bytes (RFC 3501 §6.4.4, RFC 9051 §6.4.4).

- :func:`header_contains`: HEADER name value, and FROM, TO, CC, BCC and
  SUBJECT as the header searches they are;
- :func:`body_contains`: BODY, in the decoded text of the message's text
  parts (transfer encoding and charset undone);
- :func:`text_contains`: TEXT, in the header and the body;
- :func:`sent_date`: the date of the Date: header, for SENTBEFORE, SENTON
  and SENTSINCE.

Address fields (From, To, Cc, Bcc, Sender, Reply-To and their Resent-
forms) also match in their parsed form, each address written
``name <local@domain>``, as Dovecot searches them: so
``FROM user@example.org`` finds ``<user (comment)@ example.org>``, whose
stored text never spells the address whole.

Strings match as case-insensitive substrings (RFC 3501 §6.4.4: "case-
insensitive substring"), compared after Unicode case folding.  Header values
are matched with their RFC 2047 encoded-words decoded (``email.header``),
so ``SUBJECT café`` finds ``=?utf-8?q?caf=C3=A9?=``.  Bytes in an unknown
charset or that do not decode are read as Latin-1 and UTF-8 is tried
first, so 8-bit headers stay searchable.  Only text parts are searched by
BODY (attachments are not text), as Dovecot does without an FTS plugin.
"""

from __future__ import annotations

import codecs
import contextlib
import datetime
import email.header
import email.utils

from replicad.imap.envelope import parse_address_list
from replicad.imap.mimeparse import MimePart
from replicad.imap.sections import UnknownTransferEncodingError, decode_transfer_encoding


def _text(data: bytes, charset: str | None = None) -> str:
    """``data`` as text: in ``charset`` when known, else UTF-8, else Latin-1."""
    if charset:
        try:
            codecs.lookup(charset)
            return data.decode(charset, errors="replace")
        except (LookupError, ValueError):
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_header_value(value: bytes) -> str:
    """A header value with its RFC 2047 encoded-words decoded."""
    text = _text(value)
    if "=?" not in text:
        return text
    try:
        chunks = email.header.decode_header(text)
    except (ValueError, LookupError, AssertionError):
        return text
    out: list[str] = []
    for chunk, charset in chunks:
        out.append(chunk if isinstance(chunk, str) else _text(chunk, charset))
    return "".join(out)


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


ADDRESS_FIELDS = frozenset(
    {
        b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc",
        b"resent-from", b"resent-sender", b"resent-to", b"resent-cc", b"resent-bcc",
    }
)


def header_contains(message: MimePart, name: bytes, needle: str) -> bool:
    """HEADER name needle: some field ``name`` of the message's header holds
    ``needle`` (an address field: as stored or in its parsed form, see the
    module docstring); an empty needle matches every message having the
    field."""
    values = message.header_values(name)
    if not needle:
        return bool(values)
    address_field = name.lower() in ADDRESS_FIELDS
    return any(
        _contains(decode_header_value(value), needle)
        or (address_field and _contains(address_text(value), needle))
        for value in values
    )


def address_text(value: bytes) -> str:
    """An address-list field written from its parsed addresses:
    ``name <local@domain>`` (or ``local@domain`` without a name), groups as
    ``group: members;``, separated by ``, ``; display names decoded."""
    out: list[str] = []
    in_group = False
    for address in parse_address_list(value):
        if address.mailbox is None:  # a group's end
            out.append(";")
            in_group = False
        elif address.host is None:  # a group's start: its name
            out.append((", " if out else "") + _text(address.mailbox) + ":")
            in_group = True
        else:
            text = _text(address.mailbox) + "@" + _text(address.host)
            if address.name is not None:
                text = decode_header_value(address.name) + " <" + text + ">"
            separator = " " if in_group and out[-1].endswith(":") else ", "
            out.append((separator if out else "") + text)
    return "".join(out)


def _header_text(message: MimePart) -> str:
    return "\n".join(
        _text(field.name) + ": " + decode_header_value(field.value) for field in message.fields
    )


def body_texts(raw: bytes, root: MimePart) -> list[str]:
    """The decoded text of every text part of the message, in order; the
    text parts of attached messages, and their headers, count too."""
    out: list[str] = []
    for part in root.walk():
        if part is not root and part.message is not None:
            out.append(_header_text(part.message))
        if part.children or part.message is not None or not part.content_type.is_text:
            continue
        body = raw[part.body_start:part.body_end]
        # An encoding that cannot be undone is searched as stored: better than not at all.
        with contextlib.suppress(UnknownTransferEncodingError):
            body = decode_transfer_encoding(body, part.header_value(b"content-transfer-encoding"))
        charset = part.content_type.param(b"charset")
        out.append(_text(body, charset.decode("ascii", "replace") if charset else None))
    return out


def body_contains(raw: bytes, root: MimePart, needle: str) -> bool:
    """BODY needle (RFC 3501 §6.4.4): the decoded body text holds ``needle``."""
    return any(_contains(text, needle) for text in body_texts(raw, root))


def text_contains(raw: bytes, root: MimePart, needle: str) -> bool:
    """TEXT needle: the header or the body text holds ``needle``."""
    return _contains(_header_text(root), needle) or body_contains(raw, root, needle)


def sent_date(message: MimePart) -> datetime.date | None:
    """The date of the Date: header in its own time zone (RFC 3501 §6.4.4:
    "disregarding time and timezone"), or None when absent or unreadable."""
    value = message.header_value(b"date")
    if value is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(_text(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when.date()
