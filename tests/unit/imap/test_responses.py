"""Response rendering (RFC 3501 §7 and the extensions' codes and data)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicad.imap import commands as c
from replicad.imap import responses as r
from replicad.imap.parser import CommandParser
from replicad.imap.responses import Atom, Literal, Raw, ResponseCode, SearchResult, Status
from replicad.imap.sequences import SequenceSet

from .conftest import drain


def test_tagged_with_codes() -> None:
    S = SequenceSet.parse
    cases = [
        (ResponseCode.uidvalidity(3857529045), b"a OK [UIDVALIDITY 3857529045] done\r\n"),
        (ResponseCode.uidnext(4392), b"a OK [UIDNEXT 4392] done\r\n"),
        (ResponseCode.appenduid(38505, S("3955")), b"a OK [APPENDUID 38505 3955] done\r\n"),
        (
            ResponseCode.copyuid(38505, S("304,319:320"), S("3956:3958")),
            b"a OK [COPYUID 38505 304,319:320 3956:3958] done\r\n",
        ),
        (ResponseCode.highestmodseq(715194045007), b"a OK [HIGHESTMODSEQ 715194045007] done\r\n"),
        (ResponseCode.modified(S("7,9")), b"a OK [MODIFIED 7,9] done\r\n"),
        (
            ResponseCode.permanentflags(["\\Seen", "\\Deleted"]),
            b"a OK [PERMANENTFLAGS (\\Seen \\Deleted \\*)] done\r\n",
        ),
        (
            ResponseCode.capability(["IMAP4rev1", "LITERAL+"]),
            b"a OK [CAPABILITY IMAP4rev1 LITERAL+] done\r\n",
        ),
        (ResponseCode.badcharset(), b"a OK [BADCHARSET (UTF-8 US-ASCII)] done\r\n"),
    ]
    for code, expected in cases:
        assert r.render_tagged("a", Status.OK, "done", code) == expected
    for name in ("TRYCREATE", "NONEXISTENT", "ALREADYEXISTS", "CANNOT", "LIMIT", "ALERT",
                 "UNAVAILABLE", "CLOSED"):  # fmt: skip
        line = r.render_tagged("b", Status.NO, "no", ResponseCode.simple(name))
        assert line == b"b NO [" + name.encode() + b"] no\r\n"


def test_status_lines() -> None:
    assert r.render_tagged("x", Status.BAD, "oops\r\nX") == b"x BAD oops  X\r\n"
    assert r.render_untagged_status(Status.OK, "hi", ResponseCode.simple("CLOSED")) == (
        b"* OK [CLOSED] hi\r\n"
    )
    assert r.render_bye("bye") == b"* BYE bye\r\n"
    with pytest.raises(ValueError):
        r.render_tagged("x", Status.BYE, "no")
    assert r.render_continuation() == b"+ \r\n"
    assert r.render_continuation("idling") == b"+ idling\r\n"
    assert r.render_sasl_challenge(b"") == b"+ \r\n"


def test_values() -> None:
    assert r.render_value(None) == b"NIL"
    assert r.render_value(42) == b"42"
    assert r.render_value("plain text") == b'"plain text"'
    assert r.render_value('say "hi"') == b'{8}\r\nsay "hi"'
    assert r.render_value("café") == b"{5}\r\ncaf\xc3\xa9"
    assert r.render_value(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert r.render_value(b"x" * 2000).startswith(b"{2000}\r\n")
    assert r.render_value(Literal(b"ab")) == b"{2}\r\nab"
    assert r.render_value(Literal(b"\x00", binary=True)) == b"~{1}\r\n\x00"
    assert r.render_value(Raw(b"(NIL NIL)")) == b"(NIL NIL)"
    assert r.render_value((Atom("\\Seen"), [1, None], ())) == b"(\\Seen (1 NIL) ())"
    with pytest.raises(ValueError):
        r.render_value(-1)
    with pytest.raises(TypeError):
        r.render_value(True)


def test_untagged_data() -> None:
    assert r.render_exists(23) == b"* 23 EXISTS\r\n"
    assert r.render_recent(0) == b"* 0 RECENT\r\n"
    assert r.render_expunge(3) == b"* 3 EXPUNGE\r\n"
    assert r.render_vanished([41, 43, 42, 50]) == b"* VANISHED 41:43,50\r\n"
    assert r.render_vanished([7], earlier=True) == b"* VANISHED (EARLIER) 7\r\n"
    assert r.render_vanished([]) == b""
    assert r.render_flags(["\\Seen", "$Junk"]) == b"* FLAGS (\\Seen $Junk)\r\n"
    assert r.render_capability(["IMAP4rev1", "IDLE"]) == b"* CAPABILITY IMAP4rev1 IDLE\r\n"
    assert r.render_enabled([]) == b"* ENABLED\r\n"
    assert r.render_enabled(["QRESYNC"]) == b"* ENABLED QRESYNC\r\n"
    assert r.render_id(None) == b"* ID NIL\r\n"
    assert (
        r.render_id([("name", "replicad"), ("os", None)])
        == b'* ID ("name" "replicad" "os" NIL)\r\n'
    )
    assert r.render_namespace([("", "/")]) == b'* NAMESPACE (("" "/")) NIL NIL\r\n'
    assert r.render_list(["\\HasNoChildren", "\\Sent"], "/", "Gesendete Objekte") == (
        b'* LIST (\\HasNoChildren \\Sent) "/" "Gesendete Objekte"\r\n'
    )
    assert r.render_list([], None, "Entwürfe") == b'* LIST () NIL "Entw&APw-rfe"\r\n'
    assert (
        r.render_list([], "/", "Entwürfe", utf8=True) == b'* LIST () "/" {9}\r\nEntw\xc3\xbcrfe\r\n'
    )
    assert (
        r.render_list(["\\NonExistent"], "/", "Foo", extended=[("CHILDINFO", ("SUBSCRIBED",))])
        == b'* LIST (\\NonExistent) "/" "Foo" ("CHILDINFO" ("SUBSCRIBED"))\r\n'
    )
    assert r.render_lsub([], "/", "news") == b'* LSUB () "/" "news"\r\n'
    assert r.render_status("INBOX", [("MESSAGES", 17), ("UIDNEXT", 9)]) == (
        b'* STATUS "INBOX" (MESSAGES 17 UIDNEXT 9)\r\n'
    )
    assert r.render_search([2, 3, 6]) == b"* SEARCH 2 3 6\r\n"
    assert r.render_search([], modseq=None) == b"* SEARCH\r\n"
    assert r.render_search([2], modseq=917162500) == b"* SEARCH 2 (MODSEQ 917162500)\r\n"
    assert r.render_esearch("A282", False, SearchResult(min=2, count=3)) == (
        b'* ESEARCH (TAG "A282") MIN 2 COUNT 3\r\n'
    )
    assert (
        r.render_esearch("a", True, SearchResult(min=1, max=9, all=(1, 2, 3, 9), count=4, modseq=5))
        == b'* ESEARCH (TAG "a") UID MIN 1 MAX 9 ALL 1:3,9 COUNT 4 MODSEQ 5\r\n'
    )
    assert (
        r.render_esearch("a", True, SearchResult(count=0)) == b'* ESEARCH (TAG "a") UID COUNT 0\r\n'
    )


def test_fetch() -> None:
    line = r.render_fetch(
        12,
        [
            ("UID", 4827313),
            ("FLAGS", r.flag_list(["\\Seen"])),
            ("INTERNALDATE", "17-Jul-1996 02:44:25 -0700"),
            ("ENVELOPE", Raw(b'("date" "subject" NIL)')),
            ("BODY[HEADER]<0>", Literal(b"Subject: x\r\n\r\n")),
            ("MODSEQ", (624140003,)),
        ],
    )
    assert line == (
        b'* 12 FETCH (UID 4827313 FLAGS (\\Seen) INTERNALDATE "17-Jul-1996 02:44:25 -0700"'
        b' ENVELOPE ("date" "subject" NIL) BODY[HEADER]<0> {14}\r\nSubject: x\r\n\r\n'
        b" MODSEQ (624140003))\r\n"
    )


@given(st.binary(max_size=100))
def test_any_string_reads_back_as_the_same_octets(data: bytes) -> None:
    """What the renderer writes, an IMAP reader reads back: checked with the
    command parser's string grammar (LOGIN's password is an astring)."""
    parser = CommandParser()
    parser.feed(b"a LOGIN x " + r.render_value(data) + b"\r\n")
    events = [e for e in drain(parser) if isinstance(e, c.Command)]
    assert events == [c.Login("a", "x", data)]
