"""SEARCH's text matching on message bytes (RFC 3501 §6.4.4)."""

from __future__ import annotations

import datetime

from replicad.imap.mimeparse import parse_message
from replicad.imap.textsearch import (
    address_text,
    body_contains,
    decode_header_value,
    header_contains,
    sent_date,
    text_contains,
)

from .conftest import message


def test_encoded_word_subject_is_searched_decoded() -> None:
    root = parse_message(message("encoded_words"))
    assert header_contains(root, b"Subject", "you understand the EXAMPLE")
    assert header_contains(root, b"from", "andré")
    assert not header_contains(root, b"subject", "=?ISO")


def test_eight_bit_header_is_searchable_as_utf8() -> None:
    root = parse_message(message("eight_bit_headers"))
    assert header_contains(root, b"subject", "GRÜSSE")  # casefold: ß matches SS
    assert header_contains(root, b"From", "müller")


ADDRESS_HEADER = (
    b"From: <ann.lee (the author)@ (at work) example.org>\r\n"
    b"To: Team: bob@example.org, =?utf-8?q?Jos=C3=A9?= <jose@example.org>;\r\n"
    b"Subject: addresses\r\n\r\nbody\r\n"
)


def test_address_fields_match_in_their_parsed_form() -> None:
    root = parse_message(ADDRESS_HEADER)
    assert header_contains(root, b"from", "ann.lee@example.org")
    assert header_contains(root, b"From", "ANN.LEE@EXAMPLE.ORG")
    assert header_contains(root, b"from", "the author")  # as stored still matches
    assert header_contains(root, b"to", "josé <jose@example.org>")
    assert header_contains(root, b"to", "team")
    # Only address fields are read as addresses.
    assert not header_contains(root, b"subject", "ann.lee@example.org")
    assert not header_contains(root, b"to", "ann.lee@example.org")


def test_address_text() -> None:
    value = b"Team: bob@example.org, Ann <ann@example.org>;, carol@example.org (Carol)"
    assert address_text(value) == (
        "Team: bob@example.org, Ann <ann@example.org>;, Carol <carol@example.org>"
    )


def test_empty_needle_matches_when_the_field_exists() -> None:
    root = parse_message(message("simple"))
    assert header_contains(root, b"cc", "")
    assert not header_contains(root, b"bcc", "")


def test_body_search_undoes_quoted_printable_and_charset() -> None:
    raw = message("mixed_attach")
    root = parse_message(raw)
    assert body_contains(raw, root, "NAÏVE RÉSUMÉ")
    assert not body_contains(raw, root, "na=EFve")


def test_body_search_skips_attachments_and_headers() -> None:
    raw = message("mixed_attach")
    root = parse_message(raw)
    assert not body_contains(raw, root, "iVBORw0KGgo")  # the image's base64
    assert not body_contains(raw, root, "attachments")  # only in Subject
    assert text_contains(raw, root, "attachments")


def test_body_search_reads_base64_text_and_attached_messages() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"Q2Fmw6kgbm9pcg==\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner topic\r\n\r\ninner words\r\n--b--\r\n"
    )
    root = parse_message(raw)
    assert body_contains(raw, root, "café NOIR")
    assert body_contains(raw, root, "inner words")
    assert body_contains(raw, root, "inner topic")
    assert not body_contains(raw, root, "Q2Fm")


def test_decode_header_value_tolerates_bad_encoded_words() -> None:
    assert decode_header_value(b"=?x-unknown?q?abc?=") == "abc"
    assert decode_header_value(b"=?utf-8?b?!!!?=") == ""  # bad base64: nothing, no error


def test_sent_date_is_the_date_as_written() -> None:
    assert sent_date(parse_message(message("simple"))) == datetime.date(1996, 7, 17)
    late = parse_message(b"Date: Tue, 2 Mar 2021 23:59:59 -1100\r\n\r\n")
    assert sent_date(late) == datetime.date(2021, 3, 2)
    assert sent_date(parse_message(b"Date: not a date\r\n\r\n")) is None
    assert sent_date(parse_message(message("digest"))) is None
