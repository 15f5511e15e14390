"""The LMTP state machine alone (replicad.lmtp.protocol): bytes in, replies out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.lmtp.protocol import (
    MAX_COMMAND_LINE,
    MAX_ERRORS,
    ConnectionClosed,
    DeliveryStatus,
    Event,
    Greeted,
    LmtpConfig,
    LmtpConnection,
    LmtpStateError,
    MailFrom,
    MessageComplete,
    MessageRefused,
    RcptAnswer,
    RcptTo,
    Recipient,
    State,
    dot_stuff,
    normalise_line_ends,
    normalise_user,
    recipient_of,
    trace_headers,
)

USERS = frozenset({"alice", "bob", "alice@example.org", "carol@example.org"})


class Driver:
    """Feeds a connection and answers its questions like the glue would."""

    def __init__(
        self,
        config: LmtpConfig | None = None,
        *,
        users: frozenset[str] = USERS,
        results: Callable[[MessageComplete], Sequence[DeliveryStatus]] | None = None,
    ) -> None:
        self.conn = LmtpConnection(config or LmtpConfig(hostname="mx.test"))
        self.users = users
        self.results = results or (lambda m: [DeliveryStatus.SAVED] * len(m.recipients))
        self.events: list[Event] = []
        self.messages: list[MessageComplete] = []
        greeting = self.conn.data_to_send()
        assert greeting == b"220 mx.test LMTP replicad ready\r\n"

    def send(self, data: bytes) -> list[str]:
        """Reply lines produced by ``data`` (after answering every question)."""
        pending = list(self.conn.receive_data(data))
        while pending:
            event = pending.pop(0)
            self.events.append(event)
            if isinstance(event, RcptTo):
                known = event.recipient.user in self.users
                pending += self.conn.answer_rcpt(
                    RcptAnswer.OK if known else RcptAnswer.UNKNOWN_USER
                )
            elif isinstance(event, MessageComplete):
                self.messages.append(event)
                pending += self.conn.data_results(self.results(event))
        return self.conn.data_to_send().decode().split("\r\n")[:-1]

    def hello(self) -> None:
        assert self.send(b"LHLO client.test\r\n")[-1].startswith("250 ")


def codes(lines: list[str]) -> list[str]:
    return [" ".join(line.split()[:2]) if line[3:4] == " " else line[:4] for line in lines]


def test_lhlo_announces_the_extensions_without_enhanced_codes() -> None:
    d = Driver(LmtpConfig(hostname="mx.test", max_message_size=1000))
    assert d.send(b"LHLO client.test\r\n") == [
        "250-mx.test",
        "250-PIPELINING",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250 SIZE 1000",
    ]
    assert d.events == [Greeted("client.test")]
    assert d.send(b"LHLO\r\n") == ["501 5.5.4 Syntax: LHLO hostname"]


@pytest.mark.parametrize("verb", [b"HELO", b"EHLO", b"helo"])
def test_helo_and_ehlo_are_refused_with_500(verb: bytes) -> None:
    # RFC 2033 §4.1: never a positive reply; 500 recommended.
    d = Driver()
    [reply] = d.send(verb + b" client.test\r\n")
    assert reply.startswith("500 5.5.1 ")
    assert d.conn.state is State.AWAIT_LHLO


def test_single_recipient_saved() -> None:
    d = Driver()
    replies = d.send(
        b"LHLO c\r\nMAIL FROM:<s@example.net> SIZE=20 BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.org>\r\nDATA\r\n"
    )
    assert codes(replies)[-3:] == ["250 2.1.0", "250 2.1.5", "354 Start"]
    assert d.send(b"Subject: hi\r\n\r\nbody\r\n.\r\n") == ["250 2.0.0 <alice@example.org> Saved"]
    [message] = d.messages
    assert message.sender == "s@example.net"
    assert message.recipients == (Recipient("alice@example.org", "alice@example.org", None),)
    assert message.body == b"Subject: hi\r\n\r\nbody\r\n"
    assert [type(e) for e in d.events] == [Greeted, MailFrom, RcptTo, MessageComplete]
    assert d.events[1] == MailFrom("s@example.net", 20, "8BITMIME")


def test_every_reply_after_data_is_one_per_recipient_in_order() -> None:
    statuses = [
        DeliveryStatus.SAVED,
        DeliveryStatus.DURABILITY,
        DeliveryStatus.STORE_FULL,
        DeliveryStatus.TEMPFAIL,
    ]
    d = Driver(results=lambda m: statuses)
    d.hello()
    d.send(b"MAIL FROM:<>\r\n")
    for rcpt in (b"alice", b"nobody", b"bob", b"Carol@Example.ORG", b"alice+x@example.org"):
        d.send(b"RCPT TO:<" + rcpt + b">\r\n")
    d.send(b"DATA\r\n")
    assert d.send(b"x\r\n.\r\n") == [
        "250 2.0.0 <alice> Saved",
        "451 4.3.0 <bob> Durability level not reachable, try again",
        "452 4.3.1 <Carol@Example.ORG> Mail store full, try again later",
        "451 4.3.0 <alice+x@example.org> Temporary failure, try again later",
    ]
    assert [r.user for r in d.messages[0].recipients] == [
        "alice",
        "bob",
        "carol@example.org",
        "alice@example.org",
    ]
    assert d.messages[0].recipients[-1].detail == "x"


def test_unknown_user_is_550_at_rcpt_and_gets_no_reply_after_data() -> None:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\n")
    assert d.send(b"RCPT TO:<nobody@example.org>\r\n") == [
        "550 5.1.1 <nobody@example.org> User doesn't exist"
    ]
    # RFC 2033 §4.2: DATA without a successful RCPT fails with 503.
    assert codes(d.send(b"DATA\r\n")) == ["503 5.5.1"]
    assert d.send(b"RCPT TO:<bob>\r\nDATA\r\nhi\r\n.\r\n")[-1] == "250 2.0.0 <bob> Saved"


def test_rcpt_lookup_failure_is_451() -> None:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\n")
    [event] = d.conn.receive_data(b"RCPT TO:<alice>\r\n")
    assert isinstance(event, RcptTo)
    assert d.conn.awaiting == "rcpt"
    d.conn.answer_rcpt(RcptAnswer.TEMPFAIL)
    assert d.conn.data_to_send().startswith(b"451 4.3.0 <alice> ")


def test_pipelined_commands_in_one_read_are_answered_in_order() -> None:
    d = Driver()
    stream = (
        b"LHLO c\r\nMAIL FROM:<s@x> BODY=7BIT\r\nRCPT TO:<alice>\r\nRCPT TO:<ghost>\r\n"
        b"RCPT TO:<bob@b.example>\r\nRCPT TO:<bob>\r\nDATA\r\n"
        b"one\r\n..two\r\n.\r\nMAIL FROM:<t@x>\r\nRCPT TO:<alice>\r\nDATA\r\nz\r\n.\r\n"
        b"NOOP\r\nQUIT\r\n"
    )
    replies = d.send(stream)
    assert codes(replies) == [
        *["250-"] * 4,
        "250 SIZE",
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "550 5.1.1",  # bob@b.example is another user than bob
        "250 2.1.5",
        "354 Start",
        "250 2.0.0",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354 Start",
        "250 2.0.0",
        "250 2.0.0",
        "221 2.0.0",
    ]
    assert [m.body for m in d.messages] == [b"one\r\n.two\r\n", b"z\r\n"]
    assert isinstance(d.events[-1], ConnectionClosed) and d.events[-1].reason == "quit"
    assert d.conn.closed


def test_input_waits_while_an_answer_is_due() -> None:
    conn = LmtpConnection()
    conn.data_to_send()
    events = conn.receive_data(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a>\r\nRCPT TO:<b>\r\n")
    assert [type(e) for e in events] == [Greeted, MailFrom, RcptTo]
    assert conn.receive_data(b"DATA\r\n") == []  # buffered: RCPT <a> is unanswered
    more = conn.answer_rcpt(RcptAnswer.OK)
    assert [type(e) for e in more] == [RcptTo]
    assert conn.answer_rcpt(RcptAnswer.OK) == []
    assert conn.state is State.DATA
    with pytest.raises(LmtpStateError):
        conn.answer_rcpt(RcptAnswer.OK)
    with pytest.raises(LmtpStateError):
        conn.data_results([])
    [done] = conn.receive_data(b"x\r\n.\r\n")
    assert isinstance(done, MessageComplete)
    with pytest.raises(LmtpStateError):
        conn.data_results([DeliveryStatus.SAVED])  # two recipients


def test_trace_headers_follow_dovecot() -> None:
    one = (recipient_of("Alice+Work@Example.org"),)
    assert one[0] == Recipient("Alice+Work@Example.org", "alice@example.org", "Work")
    assert trace_headers("s@x", one) == (
        b"Return-Path: <s@x>\r\nDelivered-To: Alice+Work@Example.org\r\n"
    )
    # Several recipients: no Delivered-To, so every copy is the same octets.
    two = (recipient_of("a"), recipient_of("b"))
    assert trace_headers("", two) == b"Return-Path: <>\r\n"


def test_recipient_forms() -> None:
    assert recipient_of("alice") == Recipient("alice", "alice", None)
    assert recipient_of("ALICE+") == Recipient("ALICE+", "alice", None)
    assert recipient_of("a+b+c@d") == Recipient("a+b+c@d", "a@d", "b+c")
    assert recipient_of('"a+x"@d').detail == "x"
    assert normalise_user("MiXed@Dom.EXAMPLE") == "mixed@dom.example"
    assert recipient_of("a+Lists@d").mailbox == "Lists"
    assert recipient_of("a@d").mailbox == "INBOX"


def test_source_route_and_whitespace_after_colon_are_accepted() -> None:
    d = Driver()
    d.hello()
    assert codes(d.send(b"MAIL FROM: <@relay.example:s@x>\r\n")) == ["250 2.1.0"]
    assert d.events[-1] == MailFrom("s@x", None, None)
    assert codes(d.send(b"rcpt to:<@r1,@r2:alice>\r\n")) == ["250 2.1.5"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"RCPT TO:alice", "501 5.1.3"),
        (b"RCPT TO:<alice", "501 5.1.3"),
        (b"RCPT TO:<>", "501 5.1.3"),
        (b"RCPT TO:<a b@c>", "501 5.1.3"),
        (b"RCPT TO:<a@>", "501 5.1.3"),
        (b"RCPT TO:<alice>x", "501 5.1.3"),
        (b"RCPT TO:<" + b"a" * 300 + b">", "501 5.1.3"),
        (b"RCPT TO:<alice> NOTIFY=NEVER", "555 5.5.4"),
        (b"RCPT <alice>", "501 5.5.4"),
    ],
)
def test_bad_recipients(line: bytes, expected: str) -> None:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\n")
    assert codes(d.send(line + b"\r\n")) == [expected]
    assert d.conn.state is State.MAIL


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"MAIL FROM:<s@x> SIZE=1001", "552 5.3.4"),
        (b"MAIL FROM:<s@x> SIZE=abc", "501 5.5.4"),
        (b"MAIL FROM:<s@x> SIZE=1 SIZE=2", "501 5.5.4"),
        (b"MAIL FROM:<s@x> BODY=BINARYMIME", "555 5.5.4"),
        (b"MAIL FROM:<s@x> SMTPUTF8", "555 5.5.4"),
        (b"MAIL FROM:s@x", "501 5.1.7"),
        (b"MAIL TO:<s@x>", "501 5.5.4"),
    ],
)
def test_bad_mail_from(line: bytes, expected: str) -> None:
    d = Driver(LmtpConfig(hostname="mx.test", max_message_size=1000))
    d.hello()
    assert codes(d.send(line + b"\r\n")) == [expected]
    assert d.conn.state is State.READY


def test_size_at_the_limit_is_accepted() -> None:
    d = Driver(LmtpConfig(hostname="mx.test", max_message_size=1000))
    d.hello()
    assert codes(d.send(b"MAIL FROM:<s@x> SIZE=1000 body=8bitmime\r\n")) == ["250 2.1.0"]


def test_commands_out_of_order_are_503() -> None:
    d = Driver()
    assert codes(d.send(b"MAIL FROM:<s@x>\r\n")) == ["503 5.5.1"]  # before LHLO
    d.hello()
    assert codes(d.send(b"RCPT TO:<alice>\r\n")) == ["503 5.5.1"]
    assert codes(d.send(b"DATA\r\n")) == ["503 5.5.1"]
    d.send(b"MAIL FROM:<s@x>\r\n")
    assert codes(d.send(b"MAIL FROM:<s@x>\r\n")) == ["503 5.5.1"]  # nested
    assert codes(d.send(b"DATA\r\n")) == ["503 5.5.1"]  # no recipient yet


def test_rset_noop_vrfy_help_and_unknown_commands() -> None:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\n")
    assert codes(d.send(b"RSET\r\n")) == ["250 2.0.0"]
    assert d.conn.state is State.READY
    assert codes(d.send(b"RCPT TO:<alice>\r\n")) == ["503 5.5.1"]  # the transaction is gone
    assert codes(d.send(b"NOOP\r\nnoop hello\r\n")) == ["250 2.0.0", "250 2.0.0"]
    assert codes(d.send(b"VRFY alice\r\n")) == ["252 2.5.0"]
    assert codes(d.send(b"VRFY\r\n")) == ["501 5.5.4"]
    assert codes(d.send(b"HELP\r\n")) == ["214 2.0.0"]
    assert codes(d.send(b"BDAT 10 LAST\r\n")) == ["502 5.5.1"]
    assert codes(d.send(b"EXPN list\r\n")) == ["502 5.5.1"]
    assert codes(d.send(b"FROB\r\n")) == ["500 5.5.1"]
    assert codes(d.send(b"\r\n")) == ["500 5.5.2"]


def test_too_many_recipients_is_452_4_5_3() -> None:
    d = Driver(LmtpConfig(hostname="mx.test", max_recipients=2))
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\n")
    replies = d.send(b"RCPT TO:<alice>\r\nRCPT TO:<bob>\r\nRCPT TO:<alice@example.org>\r\n")
    assert codes(replies) == ["250 2.1.5", "250 2.1.5", "452 4.5.3"]
    assert d.send(b"DATA\r\nx\r\n.\r\n")[1:] == ["250 2.0.0 <alice> Saved", "250 2.0.0 <bob> Saved"]


def test_unknown_recipients_do_not_count_towards_the_limit() -> None:
    d = Driver(LmtpConfig(hostname="mx.test", max_recipients=1))
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\n")
    assert codes(d.send(b"RCPT TO:<ghost>\r\nRCPT TO:<bob>\r\n")) == ["550 5.1.1", "250 2.1.5"]


def test_message_over_the_limit_is_552_for_every_recipient() -> None:
    d = Driver(LmtpConfig(hostname="mx.test", max_message_size=100))
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\nDATA\r\n")
    replies = d.send(b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\n")
    assert codes(replies) == ["552 5.3.4", "552 5.3.4"]
    assert d.messages == []
    refused = d.events[-1]
    assert isinstance(refused, MessageRefused) and refused.reply == "552 5.3.4"
    assert refused.size == 124
    # The session goes on: a message at the limit is taken.
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    assert codes(d.send(b"x" * 98 + b"\r\n.\r\n")) == ["250 2.0.0"]
    assert len(d.messages[0].body) == 100


def test_oversized_body_is_not_kept_while_it_streams() -> None:
    conn = LmtpConnection(LmtpConfig(max_message_size=1000))
    conn.receive_data(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a>\r\n")
    conn.answer_rcpt(RcptAnswer.OK)
    conn.receive_data(b"DATA\r\n")
    for _ in range(100):
        assert conn.receive_data(b"z" * 9999 + b"\n") == []
        assert sum(map(len, conn._body)) <= 1000 and len(conn._in) < 70_000
    # A line without an end never grows the buffer past the flush size.
    for _ in range(100):
        conn.receive_data(b"w" * 10_000)
        assert len(conn._in) < 70_000
    [refused] = conn.receive_data(b"\r\n.\r\n")
    assert isinstance(refused, MessageRefused)


def test_body_lines_over_1000_octets_are_accepted() -> None:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    long_line = b".A" + b"b" * 200_000
    # Sent in slices, so the long line reaches the machine in parts.
    stream = long_line + b"\r\n.tail\r\n.\r\n"
    for i in range(0, len(stream), 7000):
        d.send(stream[i : i + 7000])
    assert d.messages[0].body == long_line[1:] + b"\r\ntail\r\n"


def test_bare_lf_is_accepted_and_normalised() -> None:
    d = Driver()
    replies = d.send(b"LHLO c\nMAIL FROM:<s@x>\nRCPT TO:<alice>\nDATA\n")
    assert codes(replies)[-1] == "354 Start"
    assert d.send(b"a\nb\r\n..c\n\n.\n") == ["250 2.0.0 <alice> Saved"]
    assert d.messages[0].body == b"a\r\nb\r\n.c\r\n\r\n"


def test_command_line_over_the_limit_is_500_5_5_2() -> None:
    d = Driver()
    d.hello()
    long = b"NOOP " + b"x" * MAX_COMMAND_LINE
    assert d.send(long + b"\r\n") == ["500 5.5.2 Line too long"]
    # Also when it arrives in parts: discarded as it comes, answered once.
    for i in range(0, len(long), 100):
        assert d.send(long[i : i + 100]) == []
        assert len(d.conn._in) <= MAX_COMMAND_LINE
    assert d.send(b"\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]


def test_nul_octets_are_refused() -> None:
    d = Driver()
    d.hello()
    assert codes(d.send(b"NOOP a\0b\r\n")) == ["500 5.5.2"]
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    assert codes(d.send(b"Subject: x\r\n\r\na\0b\r\n.\r\n")) == ["554 5.6.0"]
    assert d.messages == []
    assert codes(d.send(b"\xff\r\n")) == ["500 5.5.2"]  # and 8-bit in a command


def test_too_many_errors_close_the_session() -> None:
    d = Driver()
    replies = d.send(b"FROB\r\n" * MAX_ERRORS + b"NOOP\r\n")
    assert codes(replies)[-1] == "421 4.7.0"
    assert len(replies) == MAX_ERRORS + 1
    assert d.conn.closed and isinstance(d.events[-1], ConnectionClosed)


def test_connection_dropped_inside_data_delivers_nothing() -> None:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nSubject: half\r\n\r\nno end")
    events = d.conn.receive_data(b"")
    assert events == [ConnectionClosed("connection closed inside DATA", in_data=True)]
    assert d.messages == []
    assert d.conn.receive_data(b".\r\n") == []


def test_end_of_stream_after_complete_commands() -> None:
    d = Driver()
    d.hello()
    [closed] = d.conn.receive_data(b"")
    assert closed == ConnectionClosed("connection closed")


def test_idle_timeout_and_shutdown_reply_421() -> None:
    conn = LmtpConnection(LmtpConfig(hostname="mx.test"))
    conn.data_to_send()
    closed = conn.timed_out()
    assert closed == ConnectionClosed("idle timeout")
    assert conn.data_to_send() == b"421 4.4.2 mx.test Idle timeout, closing connection\r\n"
    assert conn.timed_out() is None and conn.receive_data(b"NOOP\r\n") == []
    other = LmtpConnection(LmtpConfig(hostname="mx.test"))
    other.receive_data(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a>\r\n")
    other.answer_rcpt(RcptAnswer.OK)
    other.receive_data(b"DATA\r\nhalf")
    assert other.shutdown() == ConnectionClosed("shutdown", in_data=True)
    assert other.data_to_send().endswith(b"421 4.3.2 mx.test Service shutting down\r\n")


def test_lhlo_in_a_transaction_resets_it() -> None:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\n")
    d.hello()
    assert codes(d.send(b"DATA\r\n")) == ["503 5.5.1"]


def test_dot_stuff_doubles_leading_dots_and_ends_data() -> None:
    assert dot_stuff(b".a\n..b\nc") == b"..a\r\n...b\r\nc\r\n.\r\n"
    assert dot_stuff(b"") == b".\r\n"
    assert normalise_line_ends(b"a\nb\r\nc\r\r\n") == b"a\r\nb\r\nc\r\r\n"


def _deliver_stream(stream: bytes, slices: Sequence[int]) -> bytes:
    d = Driver()
    d.hello()
    d.send(b"MAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\n")
    position = 0
    for size in [*slices, len(stream)]:
        if position < len(stream):  # b"" would be the end of the stream
            d.send(stream[position : position + size])
        position += size
    [message] = d.messages
    assert d.conn.state is State.READY
    return message.body


_LINES = st.lists(
    st.one_of(
        st.sampled_from([b".", b"..", b".\r", b"\r", b"", b".x", b"\x00", b"\xff"]),
        st.binary(max_size=40),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(
    lines=_LINES,
    endings=st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=31, max_size=31),
    slices=st.lists(st.integers(1, 50), max_size=10),
)
def test_any_body_round_trips_through_dot_stuffing(
    lines: list[bytes], endings: list[bytes], slices: list[int]
) -> None:
    raw = b"".join(
        line.replace(b"\n", b"") + end for line, end in zip(lines, endings, strict=False)
    )
    raw = raw.replace(b"\0", b"")  # NUL is refused, tested on its own
    body = _deliver_stream(dot_stuff(raw), slices)
    assert body == normalise_line_ends(raw)
    assert body.count(b"\n") == body.count(b"\r\n")


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=300).map(lambda b: b.replace(b"\0", b"")), cut=st.integers(1, 64))
def test_any_binary_body_round_trips(raw: bytes, cut: int) -> None:
    body = _deliver_stream(dot_stuff(raw), [cut] * 8)
    expected = normalise_line_ends(raw)
    if expected and not expected.endswith(b"\r\n"):
        expected += b"\r\n"
    assert body == expected
