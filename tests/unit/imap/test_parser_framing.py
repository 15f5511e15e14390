"""The incremental framing of CommandParser: lines, literals, continuations,
limits and resynchronisation (RFC 3501 §2.2, §4.3, §7.5; RFC 7888)."""

from __future__ import annotations

import datetime
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.errors import BadInputError
from replicad.imap import commands as c
from replicad.imap.parser import (
    BadCommand,
    CommandParser,
    IdleDone,
    LineTooLong,
    LiteralTooLarge,
    Mode,
    NeedContinuation,
    NeedData,
    ParseEvent,
    ParserLimits,
    SaslResponse,
)

from .conftest import drain, parse_all

_CET = datetime.timezone(datetime.timedelta(hours=1))
# Three commands exercising every literal form: synchronising, LITERAL+,
# literal8, an empty literal, and literal octets that look like commands.
SCRIPT = (
    b"a1 LOGIN {5}\r\nalice {6+}\r\nse\r\ncr\r\n"
    b'a2 APPEND Drafts (\\Seen) "05-Mar-2024 10:11:12 +0100" {13}\r\nb2 LOGOUT\r\n\r\n'
    b" ~{3}\r\n\x00\x01\x02 {0}\r\n\r\n"
    b"a3 NOOP\r\n"
)
EXPECTED: list[ParseEvent] = [
    c.Login("a1", "alice", b"se\r\ncr"),
    c.Append(
        "a2",
        "Drafts",
        (
            c.AppendMessage(
                b"b2 LOGOUT\r\n\r\n",
                ("\\Seen",),
                datetime.datetime(2024, 3, 5, 10, 11, 12, tzinfo=_CET),
            ),
            c.AppendMessage(b"\x00\x01\x02", binary=True),
            c.AppendMessage(b""),
        ),
    ),
    c.Noop("a3"),
]


def _feed_in_parts(parts: list[bytes]) -> tuple[list[ParseEvent], list[NeedContinuation]]:
    parser = CommandParser()
    events: list[ParseEvent] = []
    continuations: list[NeedContinuation] = []
    for part in parts:
        parser.feed(part)
        for event in drain(parser):
            if isinstance(event, NeedContinuation):
                continuations.append(event)
            else:
                events.append(event)
    assert isinstance(parser.next_event(), NeedData)
    return events, continuations


def test_whole_script() -> None:
    events, continuations = _feed_in_parts([SCRIPT])
    assert events == EXPECTED
    assert continuations == [
        NeedContinuation("a1", 5),
        NeedContinuation("a2", 13),
        NeedContinuation("a2", 3),
        NeedContinuation("a2", 0),
    ]


def test_split_at_every_byte_boundary() -> None:
    for cut in range(len(SCRIPT) + 1):
        events, continuations = _feed_in_parts([SCRIPT[:cut], SCRIPT[cut:]])
        assert events == EXPECTED, cut
        assert len(continuations) == 4, cut


def test_one_byte_at_a_time() -> None:
    events, _ = _feed_in_parts([SCRIPT[i : i + 1] for i in range(len(SCRIPT))])
    assert events == EXPECTED


@given(st.lists(st.integers(0, len(SCRIPT)), max_size=6))
def test_split_anywhere(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(SCRIPT)]
    parts = [SCRIPT[a:b] for a, b in itertools.pairwise(bounds)]
    assert _feed_in_parts(parts)[0] == EXPECTED


def test_synchronising_literal_waits_for_the_continuation() -> None:
    parser = CommandParser()
    parser.feed(b"t1 LOGIN {5}\r\n")
    assert parser.next_event() == NeedContinuation("t1", 5)
    assert parser.next_event() == NeedData()  # only once
    assert parser.next_event() == NeedData()
    parser.feed(b"bob")
    assert parser.next_event() == NeedData()
    parser.feed(b"by pw\r\n")
    assert parser.next_event() == c.Login("t1", "bobby", b"pw")


def test_literal_plus_needs_no_continuation() -> None:
    parser = CommandParser()
    parser.feed(b"t1 LOGIN {5+}\r\nbobby pw\r\n")
    assert drain(parser) == [c.Login("t1", "bobby", b"pw")]


def test_bare_lf_and_blank_lines() -> None:
    assert parse_all(b"\r\n\na NOOP\nb NOOP\r\n") == [c.Noop("a"), c.Noop("b")]


def test_bad_command_then_the_parser_goes_on() -> None:
    events = parse_all(b"a1 LOGIN\r\na2 FETCH x FLAGS\r\n+bad NOOP\r\na3 NOOP\r\n")
    assert [type(e) for e in events] == [BadCommand, BadCommand, BadCommand, c.Noop]
    assert [getattr(e, "tag", None) for e in events] == ["a1", "a2", None, "a3"]


def test_bad_command_with_literals_resynchronises_after_them() -> None:
    events = parse_all(b"a1 LOGIN {3+}\r\nx y z {2+}\r\nzz\r\na2 NOOP\r\n")
    assert isinstance(events[0], BadCommand) and events[0].tag == "a1"
    assert events[1:] == [c.Noop("a2")]


def test_refuse_literal() -> None:
    parser = CommandParser()
    parser.feed(b"a1 APPEND INBOX {20}\r\n")
    assert parser.next_event() == NeedContinuation("a1", 20)
    parser.refuse_literal()
    parser.feed(b"a2 NOOP\r\n")
    assert drain(parser) == [c.Noop("a2")]
    with pytest.raises(BadInputError):
        parser.refuse_literal()


# --- limits ---------------------------------------------------------------------------


def test_line_too_long_is_reported_before_its_end_arrives() -> None:
    parser = CommandParser(ParserLimits(max_line_bytes=100))
    parser.feed(b"a1 LOGIN " + b"x" * 200)
    assert parser.next_event() == LineTooLong("a1", 100)
    parser.feed(b"y" * 10_000)
    assert parser.next_event() == NeedData()
    parser.feed(b"\r\na2 NOOP\r\n")
    assert drain(parser) == [c.Noop("a2")]


def test_line_too_long_across_literals_counts_every_line() -> None:
    parser = CommandParser(ParserLimits(max_line_bytes=40))
    parser.feed(b"a1 LOGIN {3+}\r\nabc " + b"p" * 30 + b"\r\na2 NOOP\r\n")
    assert drain(parser) == [LineTooLong("a1", 40), c.Noop("a2")]


def test_too_long_line_announcing_a_nonsync_literal_skips_its_octets() -> None:
    parser = CommandParser(ParserLimits(max_line_bytes=50))
    literal = b"x LOGOUT\r\n" * 3
    parser.feed(b"a1 APPEND " + b"m" * 60 + b" {%d+}\r\n" % len(literal) + literal)
    parser.feed(b"\r\na2 NOOP\r\n")
    assert drain(parser) == [LineTooLong("a1", 50), c.Noop("a2")]


def test_synchronising_literal_too_large() -> None:
    parser = CommandParser(ParserLimits(max_literal_bytes=1000))
    parser.feed(b"a1 APPEND INBOX {1001}\r\n")
    assert parser.next_event() == LiteralTooLarge("a1", 1001, 1000, synchronizing=True)
    # The client gets "a1 NO" instead of "+" and sends its next command.
    parser.feed(b"a2 NOOP\r\n")
    assert drain(parser) == [c.Noop("a2")]


def test_nonsync_literal_too_large_is_swallowed() -> None:
    parser = CommandParser(ParserLimits(max_literal_bytes=10))
    parser.feed(b"a1 APPEND INBOX {30+}\r\n")
    assert parser.next_event() == LiteralTooLarge("a1", 30, 10, synchronizing=False)
    parser.feed(b"a9 LOGOUT\r\n" * 2 + b"zzzzzzzz")  # the 30 octets, not commands
    parser.feed(b" {4+}\r\nmore\r\na2 NOOP\r\n")  # the rest of the dropped command
    assert drain(parser) == [c.Noop("a2")]


def test_literal_minus_caps_nonsync_literals() -> None:
    limits = ParserLimits(max_literal_bytes=10_000, max_nonsync_literal_bytes=4096)
    parser = CommandParser(limits)
    parser.feed(b"a1 APPEND INBOX {4097+}\r\n" + b"x" * 4097 + b"\r\n")
    assert drain(parser) == [LiteralTooLarge("a1", 4097, 4096, synchronizing=False)]
    parser.feed(b"a2 APPEND INBOX {4097}\r\n")
    assert drain(parser) == [NeedContinuation("a2", 4097)]


def test_too_long_line_without_tag() -> None:
    parser = CommandParser(ParserLimits(max_line_bytes=10))
    parser.feed(b"(" * 50)
    assert parser.next_event() == LineTooLong(None, 10)


# --- modes -------------------------------------------------------------------------------


def test_idle_done() -> None:
    parser = CommandParser()
    parser.feed(b"i1 IDLE\r\n")
    assert drain(parser) == [c.Idle("i1")]
    parser.expect_idle_done("i1")
    assert parser.mode is Mode.IDLE
    parser.feed(b"dOnE\r\ni2 NOOP\r\n")
    assert drain(parser) == [IdleDone("i1"), c.Noop("i2")]
    assert parser.mode is Mode.COMMAND


def test_idle_other_line_is_bad() -> None:
    parser = CommandParser()
    parser.expect_idle_done("i1")
    parser.feed(b"i2 NOOP\r\n")
    event = parser.next_event()
    assert isinstance(event, BadCommand) and event.tag == "i1"
    assert parser.mode is Mode.COMMAND


def test_sasl_responses() -> None:
    parser = CommandParser()
    parser.feed(b"s1 AUTHENTICATE PLAIN\r\n")
    assert drain(parser) == [c.Authenticate("s1", "PLAIN", None)]
    parser.expect_sasl_response("s1")
    parser.feed(b"AGFsaWNlAHNlY3JldA==\r\n")
    assert drain(parser) == [SaslResponse("s1", b"\x00alice\x00secret")]
    parser.expect_sasl_response("s2")
    parser.feed(b"*\r\n")
    assert drain(parser) == [SaslResponse("s2", None)]
    parser.expect_sasl_response("s3")
    parser.feed(b"not base64!\r\ns4 NOOP\r\n")
    events = drain(parser)
    assert isinstance(events[0], BadCommand) and events[0].tag == "s3"
    assert events[1:] == [c.Noop("s4")]


def test_utf8_names_after_enable() -> None:
    parser = CommandParser()
    parser.feed("a SELECT Entwürfe\r\n".encode())
    assert isinstance(parser.next_event(), BadCommand)
    parser.enable_utf8_names()
    parser.feed('a SELECT "Entwürfe"\r\n'.encode())
    assert parser.next_event() == c.Select("a", "Entwürfe")


# --- robustness --------------------------------------------------------------------------

_noise = st.lists(
    st.one_of(
        st.binary(max_size=30),
        st.sampled_from(
            [
                b"a ",
                b"FETCH ",
                b"SEARCH ",
                b"{3}\r\n",
                b"{2+}\r\n",
                b"~{1}\r\n",
                b"\r\n",
                b"(",
                b")",
                b'"',
                b"\\",
                b"[",
                b"]",
                b"<",
                b"1:*",
                b"BODY[",
                b"CHARSET ",
                b"\xb2",
                b"\xaa",
                b"UID ",
                b"APPEND ",
                b"LIST ",
                b"SELECT ",
                b"STORE ",
                b"NOT ",
                b"OR ",
                b"&",
            ]
        ),
    ),
    max_size=40,
)


@given(_noise)
def test_any_input_gives_events_never_exceptions(parts: list[bytes]) -> None:
    parser = CommandParser(ParserLimits(max_line_bytes=200, max_literal_bytes=50))
    for part in parts:
        parser.feed(part)
        for event in drain(parser):
            if isinstance(event, NeedContinuation):
                continue
            assert isinstance(event, c.Command | BadCommand | LineTooLong | LiteralTooLarge)
    # Whatever came before, a fresh command after a line end is understood.
    parser.feed(b"\r\n" + b"x" * 60 + b"}\r\n" + b"z NOOP\r\n")
    assert drain(parser)[-1] == c.Noop("z")


@pytest.mark.parametrize("charset", ["rot13", "base64", "hex"])
def test_non_text_codecs_are_unknown_charsets(charset: str) -> None:
    events = parse_all(b"a SEARCH CHARSET " + charset.encode() + b" TEXT x\r\n")
    assert len(events) == 1
    assert isinstance(events[0], BadCommand) and events[0].bad_charset
