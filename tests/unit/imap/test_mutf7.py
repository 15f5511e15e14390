"""Modified UTF-7 mailbox names (RFC 3501 §5.1.3): vectors, strictness, round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.errors import BadInputError
from replicad.imap.mutf7 import (
    MailboxNameError,
    decode_mailbox_name,
    encode_mailbox_name,
    mailbox_name_from_wire,
)

VECTORS = [
    ("INBOX", "INBOX"),
    ("&", "&-"),
    ("a&b", "a&-b"),
    ("Entwürfe", "Entw&APw-rfe"),
    ("~peter/mail/台北/日本語", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501 §5.1.3
    ("😀", "&2D3eAA-"),  # outside the BMP: a surrogate pair
    ("", ""),
]


@pytest.mark.parametrize(("name", "wire"), VECTORS)
def test_vectors(name: str, wire: str) -> None:
    assert encode_mailbox_name(name) == wire
    assert decode_mailbox_name(wire) == name


@pytest.mark.parametrize(
    "wire",
    [
        "&",  # unterminated
        "&U,BTFw",  # unterminated run
        "&AGE-",  # 'a' shifted: printable ASCII must be direct
        "&U,BTFw-&ZeVnLIqe-",  # two adjacent runs: one run is canonical
        "&AGEA-",  # odd number of UTF-16 octets
        "&2D0-",  # a lone high surrogate
        "&U,B-",  # non-zero padding bits
        "&U/BTFw-",  # '/' is not in the modified base64 alphabet
        "Entwürfe",  # 8-bit character written directly
        "a\tb",  # control character
        "&Jjo=-",  # padding is not written
    ],
)
def test_strict_decoding_refuses_non_canonical_names(wire: str) -> None:
    with pytest.raises(MailboxNameError):
        decode_mailbox_name(wire)


@pytest.mark.parametrize("wire", ["&AGE-", "a&b", "!#$&'+,-.0123456789:;<=>?@^_`|[}", "&Jjo=-"])
def test_a_name_that_is_no_modified_utf7_is_taken_literally(wire: str) -> None:
    assert mailbox_name_from_wire(wire) == wire


def test_a_modified_utf7_name_is_decoded() -> None:
    assert mailbox_name_from_wire("Entw&APw-rfe") == "Entwürfe"
    assert mailbox_name_from_wire("R&-D") == "R&D"


def test_error_is_bad_input() -> None:
    assert issubclass(MailboxNameError, BadInputError)


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(MailboxNameError):
        encode_mailbox_name("a\ud800b")


_names = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(_names)
def test_round_trip(name: str) -> None:
    wire = encode_mailbox_name(name)
    assert wire.isascii() and all(0x20 <= ord(c) <= 0x7E for c in wire)
    assert decode_mailbox_name(wire) == name


@given(st.text(alphabet="&-AGEUBTFwZeVnLIqe,+/ab2D3", max_size=16))
def test_every_accepted_spelling_is_canonical(wire: str) -> None:
    try:
        name = decode_mailbox_name(wire)
    except MailboxNameError:
        return
    assert encode_mailbox_name(name) == wire
