"""SEARCH criteria (RFC 3501 §6.4.4, RFC 7162 §3.1.5): every key parsed, and
tree -> command text -> parser -> the same tree, for generated trees."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.flags import SYSTEM_FLAGS
from replicad.imap import commands as c
from replicad.imap import searchkeys as k
from replicad.imap.parser import BadCommand, CommandParser
from replicad.imap.sequences import MAX_NUMBER, STAR, SequenceSet

from .conftest import drain, parse_one

D = datetime.date(2024, 2, 1)

KEYS: list[tuple[bytes, k.SearchKey]] = [
    (b"ALL", k.AllKey()),
    (b"ANSWERED", k.FlagKey("\\Answered", True)),
    (b"BCC x", k.HeaderKey("Bcc", "x")),
    (b"BEFORE 1-Feb-2024", k.DateKey(k.DateField.INTERNAL, k.DateRelation.BEFORE, D)),
    (b"BODY hello", k.BodyKey("hello")),
    (b'CC "a b"', k.HeaderKey("Cc", "a b")),
    (b"DELETED", k.FlagKey("\\Deleted", True)),
    (b"DRAFT", k.FlagKey("\\Draft", True)),
    (b"FLAGGED", k.FlagKey("\\Flagged", True)),
    (b"FROM alice", k.HeaderKey("From", "alice")),
    (b'HEADER X-Spam ""', k.HeaderKey("X-Spam", "")),
    (b"KEYWORD $Junk", k.FlagKey("$Junk", True)),
    (b"LARGER 1000", k.SizeKey(True, 1000)),
    (b"NEW", k.AndKey((k.RecentKey(True), k.FlagKey("\\Seen", False)))),
    (b"NOT SEEN", k.NotKey(k.FlagKey("\\Seen", True))),
    (b"OLD", k.RecentKey(False)),
    (b'ON "01-Feb-2024"', k.DateKey(k.DateField.INTERNAL, k.DateRelation.ON, D)),
    (b"OR SEEN FLAGGED", k.OrKey(k.FlagKey("\\Seen", True), k.FlagKey("\\Flagged", True))),
    (b"RECENT", k.RecentKey(True)),
    (b"SEEN", k.FlagKey("\\Seen", True)),
    (b"SENTBEFORE 1-feb-2024", k.DateKey(k.DateField.SENT, k.DateRelation.BEFORE, D)),
    (b"SENTON 1-Feb-2024", k.DateKey(k.DateField.SENT, k.DateRelation.ON, D)),
    (b"SENTSINCE 1-Feb-2024", k.DateKey(k.DateField.SENT, k.DateRelation.SINCE, D)),
    (b"SINCE 1-Feb-2024", k.DateKey(k.DateField.INTERNAL, k.DateRelation.SINCE, D)),
    (b"SMALLER 5", k.SizeKey(False, 5)),
    (b"SUBJECT {5+}\r\nhi\r\nx", k.HeaderKey("Subject", "hi\r\nx")),
    (b"TEXT t", k.TextKey("t")),
    (b"TO bob", k.HeaderKey("To", "bob")),
    (b"UID 1:*", k.UidKey(SequenceSet.parse("1:*"))),
    (b"UNANSWERED", k.FlagKey("\\Answered", False)),
    (b"UNDELETED", k.FlagKey("\\Deleted", False)),
    (b"UNDRAFT", k.FlagKey("\\Draft", False)),
    (b"UNFLAGGED", k.FlagKey("\\Flagged", False)),
    (b"UNKEYWORD Work", k.FlagKey("Work", False)),
    (b"UNSEEN", k.FlagKey("\\Seen", False)),
    (b"2,4:7,9", k.SequenceKey(SequenceSet.parse("2,4:7,9"))),
    (b"$", k.SequenceKey(SequenceSet.saved_result())),
    (b"MODSEQ 620162338", k.ModSeqKey(620162338)),
    (
        b'MODSEQ "/flags/\\\\draft" all 620162338',
        k.ModSeqKey(620162338, "/flags/\\draft", k.EntryType.ALL),
    ),
    (b"(SEEN)", k.FlagKey("\\Seen", True)),
    (
        b"(SEEN (DRAFT DELETED))",
        k.AndKey(
            (
                k.FlagKey("\\Seen", True),
                k.AndKey((k.FlagKey("\\Draft", True), k.FlagKey("\\Deleted", True))),
            )
        ),
    ),
    (
        b"SEEN 1:3 not or to a from b",
        k.AndKey(
            (
                k.FlagKey("\\Seen", True),
                k.SequenceKey(SequenceSet.parse("1:3")),
                k.NotKey(k.OrKey(k.HeaderKey("To", "a"), k.HeaderKey("From", "b"))),
            )
        ),
    ),
]


@pytest.mark.parametrize(("text", "key"), KEYS, ids=[t[:30].decode() for t, _ in KEYS])
def test_every_key(text: bytes, key: k.SearchKey) -> None:
    event = parse_one(b"a SEARCH " + text)
    assert isinstance(event, c.Search)
    assert event.criteria == key


@pytest.mark.parametrize(
    "text",
    [
        b"BEFORE 31-Feb-2024",
        b"BEFORE 1-Foo-2024",
        b"BEFORE 1-Feb-24",
        b"LARGER x",
        b"KEYWORD \\Seen",
        b"UNKEYWORD",
        b"OR SEEN",
        b"NOT",
        b"(SEEN",
        b"()",
        b"SEEN)",
        b"MODSEQ",
        b'MODSEQ "/flags/x" mine 5',
        b"UID x",
        b"HEADER X",
        b"ALL  SEEN",
        b"NOT " * 100 + b"ALL",
        b"(" * 100 + b"ALL" + b")" * 100,
    ],
)
def test_bad_keys(text: bytes) -> None:
    parser = CommandParser()
    parser.feed(b"a SEARCH " + text + b"\r\nb NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], BadCommand) and events[0].tag == "a"
    assert events[1:] == [c.Noop("b")]


# --- round-trips ---------------------------------------------------------------------------

_words = st.text(st.characters(exclude_categories=("Cs",)), max_size=20)
_field_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=":"),
    min_size=1,
    max_size=12,
)
_keywords = st.sampled_from(["$Junk", "$Forwarded", "Work", "todo", "NonJunk"])
_bound = st.one_of(st.just(STAR), st.integers(1, MAX_NUMBER))
_sets = st.one_of(
    st.just(SequenceSet.saved_result()),
    st.lists(st.tuples(_bound, _bound), min_size=1, max_size=4).map(
        lambda ranges: SequenceSet(tuple(ranges))
    ),
)

_leaves: st.SearchStrategy[k.SearchKey] = st.one_of(
    st.just(k.AllKey()),
    st.builds(k.FlagKey, st.one_of(st.sampled_from(SYSTEM_FLAGS), _keywords), st.booleans()),
    st.builds(k.RecentKey, st.booleans()),
    st.builds(
        k.HeaderKey, st.one_of(st.sampled_from(list(k.HEADER_KEYS.values())), _field_names), _words
    ),
    st.builds(k.BodyKey, _words),
    st.builds(k.TextKey, _words),
    st.builds(
        k.DateKey,
        st.sampled_from(k.DateField),
        st.sampled_from(k.DateRelation),
        st.dates(datetime.date(1000, 1, 1), datetime.date(9999, 12, 31)),
    ),
    st.builds(k.SizeKey, st.booleans(), st.integers(0, 2**32 - 1)),
    st.builds(k.SequenceKey, _sets),
    st.builds(k.UidKey, _sets),
    st.builds(k.ModSeqKey, st.integers(0, 2**63 - 1)),
    st.builds(
        k.ModSeqKey,
        st.integers(0, 2**63 - 1),
        st.sampled_from(["/flags/\\draft", "/flags/$junk"]),
        st.sampled_from(k.EntryType),
    ),
)


def _extend(children: st.SearchStrategy[k.SearchKey]) -> st.SearchStrategy[k.SearchKey]:
    return st.one_of(
        st.builds(k.NotKey, children),
        st.builds(k.OrKey, children, children),
        st.lists(children, min_size=2, max_size=4).map(lambda keys: k.AndKey(tuple(keys))),
    )


_trees = st.recursive(_leaves, _extend, max_leaves=12)


@settings(max_examples=300)
@given(_trees)
def test_render_parse_round_trip(tree: k.SearchKey) -> None:
    parser = CommandParser()
    parser.feed(b"a UID SEARCH CHARSET UTF-8 " + k.render_search_program(tree) + b"\r\n")
    assert drain(parser) == [c.Search("a", True, tree, "UTF-8")]


@given(_trees)
def test_rendered_keys_need_no_continuation(tree: k.SearchKey) -> None:
    """The renderer writes LITERAL+ literals, so a client never waits."""
    assert b"}\r\n" not in k.render_search_key(tree).replace(b"+}\r\n", b"")
