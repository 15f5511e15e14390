"""BODY and BODYSTRUCTURE against Dovecot's answers, and counts of the bytes as stored."""

from __future__ import annotations

import pytest

from replicad.imap.bodystructure import body_structure
from replicad.imap.mimeparse import parse_message
from replicad.imap.nested import render_imap_value

from .conftest import CORPUS, comparable_message, golden_value, message


@pytest.mark.parametrize("stem", CORPUS)
@pytest.mark.parametrize(("item", "extended"), [("BODY", False), ("BODYSTRUCTURE", True)])
def test_structure_matches_dovecot(stem: str, item: str, extended: bool) -> None:
    root = parse_message(comparable_message(stem))
    got = render_imap_value(body_structure(root, extended=extended))
    assert got == golden_value(stem, item)


def test_bare_lf_message_counts_the_stored_bytes() -> None:
    # The deliberate difference of conftest.BARE_LF_MESSAGES: Dovecot says 18
    # octets for "line one\nline two" (it presents the LF as CRLF); the bytes
    # replicad serves are 17.
    root = parse_message(message("lf_only"))
    value = body_structure(root, extended=False)
    assert render_imap_value(value).startswith(
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 17 1)'
    )


def test_message_rfc822_carries_envelope_structure_and_lines() -> None:
    raw = (
        b"Content-Type: message/rfc822\r\n\r\n"
        b"Subject: in\r\n\r\nline\r\n"
    )
    value = body_structure(parse_message(raw), extended=False)
    assert render_imap_value(value) == (
        b'("message" "rfc822" NIL NIL NIL "7bit" 21 '
        b'(NIL "in" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 6 1) 3)'
    )


def test_text_part_gets_default_charset_after_its_parameters() -> None:
    raw = b"Content-Type: text/plain; format=flowed\r\n\r\nx"
    value = body_structure(parse_message(raw), extended=True)
    assert render_imap_value(value) == (
        b'("text" "plain" ("format" "flowed" "charset" "us-ascii") NIL NIL "7bit" 1 0 '
        b"NIL NIL NIL NIL)"
    )
