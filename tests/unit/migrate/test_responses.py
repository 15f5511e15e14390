"""Untagged responses as imaplib collects them (replicad.migrate.responses), checked
against imapclient's own parser, which the source falls back to."""

from __future__ import annotations

from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient.response_parser import (  # type: ignore[import-untyped]
    parse_fetch_response,
    parse_response,
)

from replicad.migrate.responses import flag_names, internaldate_seconds, parse_fetch, parse_values

DOVECOT_BODY_FETCH = [
    (
        b'1 (UID 1 FLAGS (\\Seen \\Recent) INTERNALDATE "08-Dec-2026 02:56:05 +0000" BODY[] {5}',
        b"hello",
    ),
    b")",
    (b'2 (UID 9 FLAGS () INTERNALDATE " 3-Mar-2024 10:30:00 -0730" BODY[] {0}', b""),
    b")",
]


def test_a_body_fetch_keeps_the_literal_object_itself() -> None:
    body = b"x" * 1000
    parsed = parse_fetch([(b"4 (UID 12 BODY[] {1000}", body), b" FLAGS ($Work))"])
    assert parsed[12][b"BODY[]"] is body  # never copied
    assert flag_names(parsed[12][b"FLAGS"]) == ("$Work",)


def test_dovecot_shaped_responses() -> None:
    parsed = parse_fetch(DOVECOT_BODY_FETCH)
    assert sorted(parsed) == [1, 9]
    assert flag_names(parsed[1][b"FLAGS"]) == ("\\Seen",)  # \Recent is the session's
    assert internaldate_seconds(parsed[9][b"INTERNALDATE"]) == int(
        datetime.fromisoformat("2024-03-03T10:30:00-07:30").timestamp()
    )
    listing = parse_fetch([b"1 (UID 3 FLAGS (\\Flagged) RFC822.SIZE 4500 MODSEQ (12))"])
    assert listing == {
        3: {b"UID": 3, b"FLAGS": [b"\\Flagged"], b"RFC822.SIZE": 4500, b"MODSEQ": [12]}
    }


@pytest.mark.parametrize(
    "pieces",
    [
        [b"1 (FLAGS (\\Seen))"],  # no UID
        [b"1 (UID 3 FLAGS (\\Seen)"],  # unbalanced
        [b'1 (UID 3 X "open)'],  # unterminated quoted string
        [(b"1 (UID 3 BODY[] {9}", b"short")],  # literal of the wrong length
        [b"1 (UID 3 FLAGS)"],  # odd items
    ],
)
def test_what_it_does_not_understand_is_an_error_not_a_guess(pieces: list[bytes]) -> None:
    with pytest.raises(ValueError):
        parse_fetch(pieces)


atoms = st.from_regex(rb"\A[A-Za-z$][A-Za-z0-9_$]{0,8}\Z")
flags = st.lists(atoms.map(lambda a: a) | st.sampled_from([b"\\Seen", b"\\Answered"]), max_size=4)
bodies = st.binary(max_size=200)


@given(st.dictionaries(st.integers(1, 2**32 - 1), st.tuples(flags, bodies), max_size=6))
def test_agrees_with_imapclient(messages: dict[int, tuple[list[bytes], bytes]]) -> None:
    pieces: list[bytes | tuple[bytes, bytes]] = []
    for seq, (uid, (fl, body)) in enumerate(messages.items(), 1):
        head = b"%d (UID %d FLAGS (%s) RFC822.SIZE %d BODY[] {%d}" % (
            seq,
            uid,
            b" ".join(fl),
            len(body),
            len(body),
        )
        pieces += [(head, body), b")"]
    ours = parse_fetch(pieces)
    theirs = parse_fetch_response(pieces, False, True)
    assert sorted(ours) == sorted(theirs)
    for uid, data in theirs.items():
        assert ours[uid][b"BODY[]"] == data[b"BODY[]"]
        assert tuple(ours[uid][b"FLAGS"]) == data[b"FLAGS"]
        assert ours[uid][b"RFC822.SIZE"] == data[b"RFC822.SIZE"]


def test_list_status_and_namespace_values() -> None:
    listed = [
        b'(\\HasNoChildren) "." INBOX',
        b'(\\HasChildren \\Noselect) "." "Work Stuff"',
        (b"() NIL {5}", b"Caf&AOk-"[:5]),
        b"",
    ]
    assert parse_values(listed) == [
        [b"\\HasNoChildren"],
        b".",
        b"INBOX",
        [b"\\HasChildren", b"\\Noselect"],
        b".",
        b"Work Stuff",
        [],
        None,
        b"Caf&A",
    ]
    status = [
        b'"Sent" (UIDVALIDITY 1733 UIDNEXT 21 MESSAGES 20 HIGHESTMODSEQ 40)',
        b"2024 (MESSAGES 0)",
    ]
    assert parse_values(status) == [
        b"Sent",
        [b"UIDVALIDITY", 1733, b"UIDNEXT", 21, b"MESSAGES", 20, b"HIGHESTMODSEQ", 40],
        2024,
        [b"MESSAGES", 0],
    ]
    assert parse_values([b'(("" ".")) NIL NIL'])[0] == [[b"", b"."]]
    for pieces in (listed, status):
        assert len(parse_values(pieces)) == len(parse_response([p for p in pieces if p]))
