"""The grammar of every command: valid forms to records, invalid forms to
BadCommand with the parser still usable (RFC 3501 §6 and the extensions)."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.imap import commands as c
from replicad.imap.commands import FetchAttribute as A
from replicad.imap.commands import Section, SectionText
from replicad.imap.grammar import parse_sasl_plain
from replicad.imap.lexer import CommandSyntaxError
from replicad.imap.parser import BadCommand, CommandParser, ParseEvent
from replicad.imap.searchkeys import FlagKey, HeaderKey
from replicad.imap.sequences import STAR, SequenceSet

from .conftest import drain, parse_all, parse_one

S = SequenceSet.parse
UTC = datetime.UTC


def simple(*attributes: A) -> tuple[c.FetchItem, ...]:
    return tuple(c.FetchSimple(a) for a in attributes)


VALID: list[tuple[bytes, ParseEvent]] = [
    # any state, not authenticated
    (b"a CAPABILITY", c.Capability("a")),
    (b"a noop", c.Noop("a")),
    (b"a LOGOUT", c.Logout("a")),
    (b"a STARTTLS", c.StartTls("a")),
    (b'a LOGIN alice "p a\\"ss"', c.Login("a", "alice", b'p a"ss')),
    (b"a LOGIN {5+}\r\nalice {2+}\r\n\xe9x", c.Login("a", "alice", b"\xe9x")),
    (b"a AUTHENTICATE PLAIN", c.Authenticate("a", "PLAIN", None)),
    (b"a AUTHENTICATE plain =", c.Authenticate("a", "PLAIN", b"")),
    (
        b"a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==",
        c.Authenticate("a", "PLAIN", b"\x00alice\x00secret"),
    ),
    (b"a ID NIL", c.Id("a", None)),
    (
        b'a ID ("name" "mutt" "version" NIL)',
        c.Id("a", (("name", "mutt"), ("version", None))),
    ),
    (b"a ID ()", c.Id("a", ())),
    # authenticated
    (b"a ENABLE CONDSTORE qresync", c.Enable("a", ("CONDSTORE", "QRESYNC"))),
    (b"a NAMESPACE", c.Namespace("a")),
    (b"a SELECT inbox", c.Select("a", "INBOX")),
    (b"a EXAMINE Archive/2024", c.Select("a", "Archive/2024", read_only=True)),
    (b"a SELECT Entw&APw-rfe (CONDSTORE)", c.Select("a", "Entwürfe", condstore=True)),
    # Not modified UTF-7 (non-canonical, a bad shifted run): taken literally.
    (b"a SELECT &AGE-", c.Select("a", "&AGE-")),
    (b"a SELECT !#$&'+,-.09:;<=>?@^_`|[}", c.Select("a", "!#$&'+,-.09:;<=>?@^_`|[}")),
    (b'a LIST "" a&b%*', c.List("a", "", ("a&b%*",))),
    (
        b"a SELECT INBOX (QRESYNC (67890007 90060115194045000))",
        c.Select("a", "INBOX", qresync=c.QresyncParams(67890007, 90060115194045000)),
    ),
    (
        b"a SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))",
        c.Select(
            "a", "INBOX", qresync=c.QresyncParams(67890007, 90060115194045000, S("41:211,214:541"))
        ),
    ),
    (
        b"a SELECT INBOX (CONDSTORE QRESYNC (9 5 1:* (1:3,5 10:12,15)))",
        c.Select(
            "a",
            "INBOX",
            condstore=True,
            qresync=c.QresyncParams(9, 5, S("1:*"), S("1:3,5"), S("10:12,15")),
        ),
    ),
    (
        b"a SELECT INBOX (QRESYNC (9 5 (1 10)))",
        c.Select("a", "INBOX", qresync=c.QresyncParams(9, 5, None, S("1"), S("10"))),
    ),
    (b"a CREATE Lists/ietf", c.Create("a", "Lists/ietf")),
    (b"a CREATE Sent (USE (\\Sent))", c.Create("a", "Sent", ("\\Sent",))),
    (b'a DELETE "Old stuff"', c.Delete("a", "Old stuff")),
    (b"a RENAME Old New", c.Rename("a", "Old", "New")),
    (b"a SUBSCRIBE INBOX", c.Subscribe("a", "INBOX")),
    (b"a UNSUBSCRIBE x", c.Unsubscribe("a", "x")),
    (b'a LIST "" *', c.List("a", "", ("*",))),
    (b"a LIST ~/Mail/ %", c.List("a", "~/Mail/", ("%",))),
    (b'a LIST "" INBOX]', c.List("a", "", ("INBOX]",))),
    (
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX "Sent*") RETURN (CHILDREN)',
        c.List(
            "a",
            "",
            ("INBOX", "Sent*"),
            frozenset({"SUBSCRIBED", "RECURSIVEMATCH"}),
            frozenset({"CHILDREN"}),
            extended=True,
        ),
    ),
    (
        b'a LIST "" % RETURN (SPECIAL-USE STATUS (MESSAGES UIDNEXT SIZE))',
        c.List(
            "a",
            "",
            ("%",),
            returns=frozenset({"SPECIAL-USE"}),
            status_items=(c.StatusItem.MESSAGES, c.StatusItem.UIDNEXT, c.StatusItem.SIZE),
            extended=True,
        ),
    ),
    (b'a LIST () "" %', c.List("a", "", ("%",), extended=True)),
    (b'a LSUB "" news.*', c.Lsub("a", "", "news.*")),
    (
        b"a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN HIGHESTMODSEQ SIZE)",
        c.Status("a", "INBOX", tuple(c.StatusItem)[:7]),
    ),
    (b"a APPEND INBOX {3+}\r\nabc", c.Append("a", "INBOX", (c.AppendMessage(b"abc"),))),
    (
        b'a APPEND INBOX (\\Seen \\seen work) " 7-Feb-1994 21:52:25 -0800" {1+}\r\nx',
        c.Append(
            "a",
            "INBOX",
            (
                c.AppendMessage(
                    b"x",
                    ("\\Seen", "work"),
                    datetime.datetime(
                        1994,
                        2,
                        7,
                        21,
                        52,
                        25,
                        tzinfo=datetime.timezone(-datetime.timedelta(hours=8)),
                    ),
                ),
            ),
        ),
    ),
    (b"a APPEND INBOX () {1+}\r\nx", c.Append("a", "INBOX", (c.AppendMessage(b"x"),))),
    (b"a IDLE", c.Idle("a")),
    # selected
    (b"a CHECK", c.Check("a")),
    (b"a CLOSE", c.Close("a")),
    (b"a UNSELECT", c.Unselect("a")),
    (b"a EXPUNGE", c.Expunge("a")),
    (b"a UID EXPUNGE 3000:3002", c.Expunge("a", S("3000:3002"))),
    (
        b"a FETCH 1 ALL",
        c.Fetch("a", False, S("1"), simple(A.FLAGS, A.INTERNALDATE, A.RFC822_SIZE, A.ENVELOPE)),
    ),
    (
        b"a FETCH 1 fast",
        c.Fetch("a", False, S("1"), simple(A.FLAGS, A.INTERNALDATE, A.RFC822_SIZE)),
    ),
    (
        b"a FETCH 1:* FULL",
        c.Fetch(
            "a", False, S("1:*"), simple(A.FLAGS, A.INTERNALDATE, A.RFC822_SIZE, A.ENVELOPE, A.BODY)
        ),
    ),
    (
        b"a UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE RFC822 RFC822.HEADER RFC822.TEXT"
        b" ENVELOPE BODY BODYSTRUCTURE MODSEQ)",
        c.Fetch(
            "a",
            True,
            S("1:*"),
            simple(
                A.UID,
                A.FLAGS,
                A.RFC822_SIZE,
                A.INTERNALDATE,
                A.RFC822,
                A.RFC822_HEADER,
                A.RFC822_TEXT,
                A.ENVELOPE,
                A.BODY,
                A.BODYSTRUCTURE,
                A.MODSEQ,
            ),
        ),
    ),
    (b"a FETCH 2 BODY[]", c.Fetch("a", False, S("2"), (c.FetchBody(Section()),))),
    (
        b"a FETCH 2 (BODY.PEEK[1.2.MIME] BODY[TEXT]<0.2048> body[3]<10.1>)",
        c.Fetch(
            "a",
            False,
            S("2"),
            (
                c.FetchBody(Section((1, 2), SectionText.MIME), peek=True),
                c.FetchBody(Section((), SectionText.TEXT), c.Partial(0, 2048)),
                c.FetchBody(Section((3,)), c.Partial(10, 1)),
            ),
        ),
    ),
    (
        b'a FETCH 2 BODY.PEEK[HEADER.FIELDS.NOT (Received "X-Spam")]',
        c.Fetch(
            "a",
            False,
            S("2"),
            (
                c.FetchBody(
                    Section((), SectionText.HEADER_FIELDS_NOT, ("Received", "X-Spam")), peek=True
                ),
            ),
        ),
    ),
    (
        b"a FETCH 2 BODY[4.1.HEADER.FIELDS (From)]",
        c.Fetch(
            "a",
            False,
            S("2"),
            (c.FetchBody(Section((4, 1), SectionText.HEADER_FIELDS, ("From",))),),
        ),
    ),
    (
        b"a FETCH 2 (BINARY[1] BINARY.PEEK[1.2]<0.100> BINARY.SIZE[2] BINARY[])",
        c.Fetch(
            "a",
            False,
            S("2"),
            (
                c.FetchBinary((1,)),
                c.FetchBinary((1, 2), c.Partial(0, 100), peek=True),
                c.FetchBinarySize((2,)),
                c.FetchBinary(()),
            ),
        ),
    ),
    (
        b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
        c.Fetch("a", False, S("1:*"), simple(A.FLAGS), changed_since=12345),
    ),
    (
        b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",
        c.Fetch("a", True, S("300:500"), simple(A.FLAGS), changed_since=12345, vanished=True),
    ),
    (b"a FETCH $ FLAGS", c.Fetch("a", False, SequenceSet.saved_result(), simple(A.FLAGS))),
    (
        b"a STORE 2:4 +FLAGS (\\Deleted)",
        c.Store("a", False, S("2:4"), c.StoreMode.ADD, ("\\Deleted",)),
    ),
    (
        b"a UID STORE 1 -FLAGS.SILENT \\Seen $Junk",
        c.Store("a", True, S("1"), c.StoreMode.REMOVE, ("\\Seen", "$Junk"), silent=True),
    ),
    (
        b"a STORE 1 (UNCHANGEDSINCE 0) FLAGS ()",
        c.Store("a", False, S("1"), c.StoreMode.REPLACE, (), unchanged_since=0),
    ),
    (b"a COPY 2:4 MEETING", c.Copy("a", False, S("2:4"), "MEETING")),
    (b"a UID COPY 9 inbox", c.Copy("a", True, S("9"), "INBOX")),
    (b"a MOVE 1 Trash", c.Move("a", False, S("1"), "Trash")),
    (b"a UID MOVE 1:* Trash", c.Move("a", True, S("1:*"), "Trash")),
    (b"a SEARCH SEEN", c.Search("a", False, FlagKey("\\Seen", True))),
    (
        b"a UID SEARCH RETURN () CHARSET UTF-8 UNSEEN",
        c.Search("a", True, FlagKey("\\Seen", False), "UTF-8", frozenset()),
    ),
    (
        b"a SEARCH RETURN (MIN MAX ALL COUNT SAVE) DELETED",
        c.Search("a", False, FlagKey("\\Deleted", True), None, frozenset(c.SearchReturn)),
    ),
    (b"a XAPPLEPUSHSERVICE foo", c.UnknownCommand("a", "XAPPLEPUSHSERVICE")),
    (b"a] NOOP", c.Noop("a]")),
]


@pytest.mark.parametrize(
    ("line", "expected"), VALID, ids=[v[0][:40].decode("latin-1") for v in VALID]
)
def test_valid_commands(line: bytes, expected: ParseEvent) -> None:
    assert parse_one(line) == expected


INVALID: list[bytes] = [
    b"NOOP",  # no tag
    b"a",
    b"a ",
    b"a+ NOOP",  # '+' is not a tag character
    b"a NOOP extra",
    b"a  NOOP",
    b"a CAPABILITY x",
    b"a LOGIN alice",
    b'a LOGIN alice "unterminated',
    b'a LOGIN alice "bad\\escape"',
    b"a LOGIN \xe9 x",
    b"a AUTHENTICATE",
    b"a AUTHENTICATE PLAIN !!!",
    b"a ID",
    b'a ID ("name")',
    b"a ENABLE",
    b"a SELECT",
    b"a SELECT Entw\xc3\xbcrfe",  # 8-bit without UTF8=ACCEPT
    b"a SELECT INBOX (FOO)",
    b"a SELECT INBOX (QRESYNC (0 5))",
    b"a SELECT INBOX (QRESYNC (1 0))",
    b"a SELECT INBOX (QRESYNC (1 5 1:3 (1:2)))",
    b"a CREATE x (USE (\\Inbox))",
    b"a RENAME x",
    b"a LIST",
    b'a LIST ""',
    b'a LIST (RECURSIVEMATCH) "" *',
    b'a LIST (RECURSIVEMATCH REMOTE) "" ""',
    b'a LIST (FOO) "" *',
    b'a LIST "" * RETURN (FOO)',
    b'a LIST "" * RETURN (STATUS ())',
    b'a LIST "" ()',
    b"a LSUB x",
    b"a STATUS INBOX",
    b"a STATUS INBOX ()",
    b"a STATUS INBOX (MESSAGES FOO)",
    b"a APPEND INBOX",
    b"a APPEND INBOX (\\Seen)",
    b"a APPEND INBOX (\\Recent) {1+}\r\nx",
    b'a APPEND INBOX "31-Feb-2024 00:00:00 +0000" {1+}\r\nx',
    b'a APPEND INBOX "1-Feb-2024 00:00:00 +0000" {1+}\r\nx',  # day must be 2 wide
    b"a UID NOOP",
    b"a UID EXPUNGE",
    b"a EXPUNGE 1",
    b"a FETCH",
    b"a FETCH 1",
    b"a FETCH 0 FLAGS",
    b"a FETCH 1 (FLAGS",
    b"a FETCH 1 ()",
    b"a FETCH 1 FOO",
    b"a FETCH 1 BODY.PEEK",
    b"a FETCH 1 BODY[MIME]",
    b"a FETCH 1 BODY[HEADER.FIELDS]",
    b"a FETCH 1 BODY[HEADER.FIELDS ()]",
    b"a FETCH 1 BODY[0]",
    b"a FETCH 1 BODY[1.FOO]",
    b"a FETCH 1 BODY[]<0.0>",
    b"a FETCH 1 BODY[]<5>",
    b"a FETCH 1 BINARY[TEXT]",
    b"a FETCH 1 FLAGS (VANISHED)",
    b"a UID FETCH 1 FLAGS (VANISHED)",
    b"a FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)",
    b"a FETCH 1 FLAGS (FOO 1)",
    b"a STORE 1 FLAGS",
    b"a STORE 1 FLAGZ (\\Seen)",
    b"a STORE 1 +FLAGS (\\Recent)",
    b"a STORE 1 (UNCHANGEDSINCE x) FLAGS ()",
    b"a COPY 1",
    b"a MOVE x Trash",
    b"a SEARCH",
    b"a SEARCH FOO",
    b"a SEARCH RETURN (FOO) ALL",
    b"a SEARCH CHARSET UTF-8",
]


@pytest.mark.parametrize("line", INVALID, ids=[v[:40].decode("latin-1") for v in INVALID])
def test_invalid_commands_are_bad_and_the_parser_goes_on(line: bytes) -> None:
    parser = CommandParser()
    parser.feed(line + b"\r\nz NOOP\r\n")
    events = [e for e in drain(parser) if not isinstance(e, c.Command) or e.tag != "z"]
    assert len(events) == 1 and isinstance(events[0], BadCommand), events
    assert events[0].message
    parser.feed(b"y NOOP\r\n")
    assert drain(parser) == [c.Noop("y")]


def test_bad_command_keeps_the_tag() -> None:
    event = parse_one(b"t42 FETCH 1 FOO")
    assert isinstance(event, BadCommand) and event.tag == "t42" and "FOO" in event.message


def test_unknown_charset() -> None:
    event = parse_one(b"a SEARCH CHARSET X-NO-SUCH-THING ALL")
    assert isinstance(event, BadCommand) and event.bad_charset


def test_search_string_in_a_charset() -> None:
    event = parse_one(b"a SEARCH CHARSET ISO-8859-1 SUBJECT {4+}\r\ncaf\xe9")
    assert isinstance(event, c.Search)
    assert event.criteria == HeaderKey("Subject", "café")


def test_binary_parts_of_a_literal8_append_are_stored_in_base64() -> None:
    message = (
        b"Subject: x\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00-\xe4\r\n"
    )
    event = parse_one(b"a APPEND INBOX ~{%d}\r\n" % len(message) + message)
    assert isinstance(event, c.Append)
    stored = event.messages[0]
    assert stored.binary
    assert stored.data == b"Subject: x\r\nContent-Transfer-Encoding: base64\r\n\r\nAC3kDQo=\r\n"
    plain = parse_one(b"a APPEND INBOX {%d+}\r\n" % len(message) + message)
    assert isinstance(plain, c.Append) and plain.messages[0].data == message


def test_star_sequence() -> None:
    event = parse_one(b"a FETCH *:4 UID")
    assert isinstance(event, c.Fetch) and event.sequence.ranges == ((STAR, 4),)


def test_response_names_of_fetch_items() -> None:
    event = parse_one(
        b'a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From "X Y")]<10.20> BINARY.PEEK[1]<0.5>'
        b" BINARY.SIZE[1.2] BODY[] MODSEQ)"
    )
    assert isinstance(event, c.Fetch)
    assert [item.response_name() for item in event.items] == [
        'BODY[HEADER.FIELDS (From "X Y")]<10>',
        "BINARY[1]<0>",
        "BINARY.SIZE[1.2]",
        "BODY[]",
        "MODSEQ",
    ]


# --- strings ----------------------------------------------------------------------------


def _quote(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


_octets = st.binary(max_size=60).filter(lambda b: not set(b) & {0, 10, 13})


@given(_octets, _octets)
def test_quoted_string_round_trip(user: bytes, password: bytes) -> None:
    event = parse_one(
        b"a LOGIN " + _quote(user.decode("latin-1").encode()) + b" " + _quote(password)
    )
    if isinstance(event, BadCommand):
        # Only a user name that is not UTF-8 is refused.
        user.decode("utf-8")
        raise AssertionError(event)
    assert event == c.Login("a", user.decode("latin-1"), password)


@given(st.binary(max_size=80), st.booleans())
def test_literal_round_trip(data: bytes, plus: bool) -> None:
    marker = b"+" if plus else b""
    events = parse_all(b"a LOGIN x {%d%s}\r\n" % (len(data), marker) + data + b"\r\n")
    assert events == [c.Login("a", "x", data)]


def test_sasl_plain_messages() -> None:
    assert parse_sasl_plain(b"\x00alice\x00secret") == ("", "alice", b"secret")
    assert parse_sasl_plain(b"admin\x00alice\x00s\xe9cret") == ("admin", "alice", b"s\xe9cret")
    for bad in (b"alice\x00secret", b"\x00\x00secret", b"\x00alice\x00", b"a\x00b\x00c\x00d"):
        with pytest.raises(CommandSyntaxError):
            parse_sasl_plain(bad)


def test_list_of_the_hierarchy_delimiter() -> None:
    assert parse_one(b'a LIST "" ""') == c.List("a", "", ("",))
