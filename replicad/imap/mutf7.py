"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3, kept by RFC 9051 §5.1.3).

IMAP4rev1 clients send and expect mailbox names in a variant of UTF-7:
printable US-ASCII (0x20-0x7E) stands for itself except ``&``, which is
written ``&-``; every other run of characters is encoded as UTF-16BE, then
base64 with ``,`` in place of ``/`` and without ``=`` padding, between ``&``
and ``-``.

Decoding is strict because a name has exactly one valid spelling: a name
that decodes but is not in that canonical form (a printable character
shifted, two adjacent shifted runs, stray padding bits, a lone surrogate,
an unterminated run) is refused with :class:`MailboxNameError`, so two
different valid wire names can never reach the same mailbox.

Commands read names with :func:`mailbox_name_from_wire`, which takes a
name that is no valid modified UTF-7 (``a&b``, ``&AGE-``) literally, as
Dovecot does: SELECT of it answers NO like any missing mailbox and a LIST
pattern spelt so matches nothing, where refusing the whole command as
malformed would make clients drop the connection.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from replicad.errors import BadInputError

_B64_ALPHABET: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
)


class MailboxNameError(BadInputError):
    """A mailbox name on the wire is not valid modified UTF-7 (RFC 3501 §5.1.3)."""


def _is_direct(ch: str) -> bool:
    """Characters that represent themselves: printable US-ASCII."""
    return 0x20 <= ord(ch) <= 0x7E


def _encode_run(run: str) -> str:
    raw = run.encode("utf-16-be", "surrogatepass")
    text = base64.b64encode(raw, altchars=b"+,").rstrip(b"=").decode("ascii")
    return "&" + text + "-"


def encode_mailbox_name(name: str) -> str:
    """The modified UTF-7 spelling of the Unicode mailbox ``name``.

    Raises :class:`MailboxNameError` for a name holding lone surrogates,
    which UTF-16 cannot carry.
    """
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if _is_direct(ch):
            if run:
                out.append(_encode_run("".join(run)))
                run.clear()
            out.append("&-" if ch == "&" else ch)
        else:
            if 0xD800 <= ord(ch) <= 0xDFFF:
                raise MailboxNameError(f"mailbox name {name!r} holds a lone surrogate")
            run.append(ch)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def _decode_run(wire: str, encoded: str) -> str:
    if any(ord(c) > 0x7F or ord(c) not in _B64_ALPHABET for c in encoded):
        raise MailboxNameError(f"mailbox name {wire!r}: bad character in a shifted run")
    if len(encoded) % 4 == 1:
        raise MailboxNameError(f"mailbox name {wire!r}: truncated shifted run")
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        raw = base64.b64decode(padded, altchars=b"+,", validate=True)
    except binascii.Error as exc:
        raise MailboxNameError(f"mailbox name {wire!r}: bad base64 ({exc})") from None
    if len(raw) % 2:
        raise MailboxNameError(f"mailbox name {wire!r}: odd number of UTF-16 octets")
    try:
        return raw.decode("utf-16-be")
    except UnicodeDecodeError:
        raise MailboxNameError(f"mailbox name {wire!r}: bad UTF-16 (lone surrogate)") from None


def decode_mailbox_name(wire: str) -> str:
    """The Unicode name spelt ``wire`` in modified UTF-7.

    Raises :class:`MailboxNameError` naming the problem when ``wire`` is not
    the canonical modified UTF-7 spelling of any name (see the module
    docstring): ``decode(encode(name)) == name`` for every name, and
    ``encode(decode(wire)) == wire`` for every ``wire`` accepted.
    """
    out: list[str] = []
    i = 0
    while i < len(wire):
        ch = wire[i]
        if ch != "&":
            if not _is_direct(ch):
                raise MailboxNameError(f"mailbox name {wire!r}: character {ch!r} must be encoded")
            out.append(ch)
            i += 1
            continue
        end = wire.find("-", i + 1)
        if end < 0:
            raise MailboxNameError(f"mailbox name {wire!r}: unterminated '&' run")
        encoded = wire[i + 1 : end]
        if not encoded:
            out.append("&")
        else:
            decoded = _decode_run(wire, encoded)
            if any(_is_direct(c) for c in decoded):
                raise MailboxNameError(
                    f"mailbox name {wire!r}: printable ASCII must not be shifted"
                )
            out.append(decoded)
        i = end + 1
    result = "".join(out)
    if encode_mailbox_name(result) != wire:
        # Catches the remaining non-canonical spellings: adjacent shifted runs,
        # non-zero padding bits.
        raise MailboxNameError(f"mailbox name {wire!r} is not in canonical modified UTF-7")
    return result


def mailbox_name_from_wire(wire: str) -> str:
    """The mailbox name a client means by ``wire``: its modified UTF-7
    decoding, or ``wire`` itself when that is not valid modified UTF-7 (see
    the module docstring).  Never raises."""
    try:
        return decode_mailbox_name(wire)
    except MailboxNameError:
        return wire
