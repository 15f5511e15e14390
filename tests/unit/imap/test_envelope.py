"""ENVELOPE against Dovecot's answers, and the address-list rules on their own."""

from __future__ import annotations

import pytest

from replicad.imap.envelope import Address, envelope, parse_address_list
from replicad.imap.mimeparse import parse_message
from replicad.imap.nested import render_imap_value

from .conftest import CORPUS, comparable_message, golden_value, message


@pytest.mark.parametrize("stem", CORPUS)
def test_envelope_matches_dovecot(stem: str) -> None:
    got = render_imap_value(envelope(parse_message(comparable_message(stem))))
    assert got == golden_value(stem, "ENVELOPE")


def test_envelope_of_an_attached_message_is_its_own() -> None:
    root = parse_message(message("nested_rfc822"))
    inner = root.children[1].message
    assert inner is not None
    value = envelope(inner)
    assert isinstance(value, list)
    assert value[1] == b"inner subject"
    assert value[9] == b"<inner@inner.example>"


def addresses(value: bytes) -> list[tuple[bytes | None, ...]]:
    return [(a.name, a.route, a.mailbox, a.host) for a in parse_address_list(value)]


def test_group_with_members_is_bracketed_by_markers() -> None:
    assert addresses(b'team: a@x.org, "B" <b@y.org>;, c@z') == [
        (None, None, b"team", None),
        (None, None, b"a", b"x.org"),
        (b"B", None, b"b", b"y.org"),
        (None, None, None, None),
        (None, None, b"c", b"z"),
    ]


def test_group_without_close_ends_at_the_end_of_the_list() -> None:
    assert addresses(b"g: a@x.org") == [
        (None, None, b"g", None), (None, None, b"a", b"x.org"), (None, None, None, None),
    ]


def test_display_name_words_are_joined_and_unquoted() -> None:
    assert addresses(b'John  Q. "Public, Jr" <jqp@example.com>') == [
        (b"John Q. Public, Jr", None, b"jqp", b"example.com"),
    ]


def test_encoded_words_in_names_pass_through() -> None:
    assert addresses(b"=?utf-8?q?J=C3=BCrgen?= <j@x.de>")[0][0] == b"=?utf-8?q?J=C3=BCrgen?="


def test_trailing_comment_names_an_address_without_display_name() -> None:
    assert addresses(b"a@x.org (Alice A)") == [(b"Alice A", None, b"a", b"x.org")]


def test_display_name_wins_over_a_comment() -> None:
    assert addresses(b"Bob <b@x.org> (work)") == [(b"Bob", None, b"b", b"x.org")]


def test_missing_local_part_and_domain_are_named() -> None:
    assert addresses(b"local, @dom.example, Name <>") == [
        (None, None, b"local", b"MISSING_DOMAIN"),
        (None, None, b"MISSING_MAILBOX", b"dom.example"),
        (b"Name", None, b"MISSING_MAILBOX", b"MISSING_DOMAIN"),
    ]


def test_source_route_is_kept() -> None:
    assert addresses(b"<@a.example,@b.example:u@h.example>") == [
        (None, b"@a.example,@b.example", b"u", b"h.example"),
    ]


def test_garbage_never_raises_or_loops() -> None:
    for value in (b"<<<>>>", b";;,,::", b'"unterminated', b"(open comment", b"@", b"a@@b", b""):
        result = parse_address_list(value)
        assert all(isinstance(a, Address) for a in result)


def test_sender_and_reply_to_default_to_from() -> None:
    raw = b"From: a@x.org\r\nSender:\r\nSubject: s\r\n\r\nbody\r\n"
    value = envelope(parse_message(raw))
    assert isinstance(value, list)
    assert value[2] == value[3] == value[4]
    assert value[5] is None
