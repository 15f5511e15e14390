"""Incremental, sans-I/O parsing of IMAP client input (RFC 3501 §2.2, §4.3,
§7.5; RFC 9051; RFC 7888 LITERAL+/LITERAL-; RFC 2177 IDLE; RFC 3501 §6.2.2
and RFC 4959 AUTHENTICATE).

No sockets, no clock, no store: bytes in, events out, in the style of h11
and :mod:`replicad.protocol.connection`.  The session (state machine) and
the trio glue sit on top::

    parser = CommandParser(ParserLimits(max_line_bytes=64 * 1024,
                                        max_literal_bytes=50 * 1024 * 1024))
    parser.feed(await stream.receive_some())
    while True:
        event = parser.next_event()
        match event:
            case NeedData():              # read more bytes, feed them, loop again
            case NeedContinuation(tag, size):
                send(render_continuation("Ready for literal"))   # then keep reading
                # ... or parser.refuse_literal() and send a tagged NO/BAD
            case LiteralTooLarge(tag, size, limit, synchronizing):
                send(render_tagged(tag, Status.NO, "Literal too large",
                                   ResponseCode.simple("TOOBIG")))
                # non-synchronising: its octets are swallowed; the glue may close
            case LineTooLong(tag, limit):
                send(render_tagged(...BAD...)); close the connection
            case BadCommand(tag=None, message=message):
                send(render_untagged_status(Status.BAD, message))    # no valid tag
            case BadCommand(tag, message):
                send(render_tagged(tag, Status.BAD, message))         # session lives on
            case IdleDone(tag) | SaslResponse(tag, data): ...
            case Command():               # a record of replicad.imap.commands
                session.dispatch(event)

Responses are rendered by :mod:`replicad.imap.responses` (``render_tagged``,
``render_untagged_status``, ``render_continuation`` and the untagged data
functions), always to bytes, and written by the glue.

Framing.  A command is a line, or several lines joined by literals: a line
ending in ``{n}`` (synchronising: the client waits for ``+``), ``{n+}``
(LITERAL+, not waiting) or ``~{n}`` (literal8, RFC 3516) is followed by
``n`` octets, then the command continues on the next line.  Lines end in
CRLF; a bare LF is accepted as a line end, as widely deployed servers do.
Blank lines between commands are ignored.  Once a command is complete it
is handed to :func:`replicad.imap.grammar.parse_command`.

Errors leave the parser usable.  A syntax error is a :class:`BadCommand`
event and parsing resumes at the next command.  Limits, each a distinct
event so the glue can answer and decide whether to close:

- ``max_line_bytes``: the command's octets outside literals; when exceeded,
  :class:`LineTooLong` is returned at once and the rest of the command is
  read and dropped (any non-synchronising literal it announces is skipped,
  never parsed as commands);
- ``max_literal_bytes``: one literal (an APPEND message);
  :class:`LiteralTooLarge` is returned instead of
  :class:`NeedContinuation` (the client sends nothing, the command is
  abandoned), or, for a non-synchronising literal the client sends anyway,
  its octets are skipped and the command dropped;
- ``max_nonsync_literal_bytes``: LITERAL- (RFC 7888 §5) caps
  non-synchronising literals at 4096 octets; ``None`` for LITERAL+.

Modes.  After answering IDLE with ``+ idling`` the session calls
:meth:`CommandParser.expect_idle_done`: the next line must be ``DONE``
(:class:`IdleDone`; anything else is a :class:`BadCommand` with the IDLE
tag, which also ends the IDLE).  After sending an AUTHENTICATE
continuation it calls :meth:`CommandParser.expect_sasl_response`: the next
line is base64 (:class:`SaslResponse` with the decoded octets) or ``*``
(``data`` is ``None``: the client cancelled, RFC 3501 §6.2.2); a PLAIN
message is split by :func:`replicad.imap.grammar.parse_sasl_plain`.  Either
mode lasts for one line, then the parser reads commands again.
:meth:`CommandParser.enable_utf8_names` switches mailbox names from
modified UTF-7 to UTF-8 (RFC 6855, after ``ENABLE UTF8=ACCEPT``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from replicad.errors import BadInputError
from replicad.imap.commands import Command
from replicad.imap.grammar import decode_base64, parse_command, parse_tag
from replicad.imap.lexer import UnknownCharsetError

#: RFC 7888 §5: the largest non-synchronising literal under LITERAL-.
LITERAL_MINUS_MAX: Final = 4096
#: Octets of a too-long line kept while skipping it, to see whether it ends
#: by announcing a literal whose octets must be skipped too.
_TAIL_KEPT: Final = 32
_LITERAL_AT_END: Final = re.compile(rb"~?\{([0-9]{1,20})(\+?)\}\Z")


@dataclass(frozen=True, slots=True)
class ParserLimits:
    """Bounds on what one client may make the server hold."""

    max_line_bytes: int = 64 * 1024
    max_literal_bytes: int = 64 * 1024 * 1024
    max_nonsync_literal_bytes: int | None = None


# --- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NeedData:
    """Nothing more can be parsed until more octets are fed."""


@dataclass(frozen=True, slots=True)
class NeedContinuation:
    """A synchronising literal of ``size`` octets was announced: send a
    continuation (``+ ...``) to receive it, or call
    :meth:`CommandParser.refuse_literal` and answer the tag."""

    tag: str | None
    size: int


@dataclass(frozen=True, slots=True)
class BadCommand:
    """The command is malformed: answer ``tag BAD message`` (``* BAD`` when
    ``tag`` is ``None``).  ``bad_charset``: SEARCH named an unknown charset,
    which RFC 3501 §6.4.4 answers ``NO [BADCHARSET]`` instead."""

    tag: str | None
    message: str
    bad_charset: bool = False


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """The command's text outside literals exceeded ``limit`` octets; the
    rest of it is being dropped."""

    tag: str | None
    limit: int


@dataclass(frozen=True, slots=True)
class LiteralTooLarge:
    """A literal of ``size`` octets exceeds ``limit``; the command is
    abandoned.  ``synchronizing``: the client waits for an answer and sends
    no literal octets; otherwise they are skipped as they arrive."""

    tag: str | None
    size: int
    limit: int
    synchronizing: bool


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The ``DONE`` line ending the IDLE command ``tag`` (RFC 2177)."""

    tag: str


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """One client response of the AUTHENTICATE exchange ``tag``: decoded
    octets, or ``None`` when the client cancelled with ``*``."""

    tag: str
    data: bytes | None


ParseEvent = (
    NeedData
    | NeedContinuation
    | BadCommand
    | LineTooLong
    | LiteralTooLarge
    | IdleDone
    | SaslResponse
    | Command
)


class Mode(Enum):
    COMMAND = "command"
    IDLE = "idle"  # the next line must be DONE
    SASL = "sasl"  # the next line is a SASL response


class CommandParser:
    """Client octets in (:meth:`feed`), events out (:meth:`next_event`)."""

    def __init__(self, limits: ParserLimits | None = None) -> None:
        self.limits = limits or ParserLimits()
        self._buffer = bytearray()
        self._scanned = 0  # octets of _buffer already known to hold no LF
        self._command = bytearray()  # the lines and literals of the command so far
        self._started = False  # a command's first line has been read
        self._tag: str | None = None
        self._line_bytes = 0  # octets outside literals in the command so far
        self._literal_left = 0  # octets of the current literal still to come
        self._keep_literal = True  # False: the literal is being skipped
        self._dropping = False  # the current command is dropped after an error
        self._skipping_line = False  # a too-long line is being dropped
        self._skipped_tail = b""
        self._mode = Mode.COMMAND
        self._mode_tag = ""
        self._utf8_names = False

    # --- session controls ---------------------------------------------------------

    def expect_idle_done(self, tag: str) -> None:
        """The session answered ``IDLE`` (``tag``) with ``+ idling``."""
        self._mode, self._mode_tag = Mode.IDLE, tag

    def expect_sasl_response(self, tag: str) -> None:
        """The session sent an AUTHENTICATE (``tag``) continuation."""
        self._mode, self._mode_tag = Mode.SASL, tag

    def enable_utf8_names(self) -> None:
        """Mailbox names are UTF-8 from now on (RFC 6855 §3)."""
        self._utf8_names = True

    def refuse_literal(self) -> None:
        """Do not accept the synchronising literal just announced by
        :class:`NeedContinuation`: the command is abandoned (the client
        sends no literal when it gets a tagged answer instead of ``+``)."""
        if not self._started or self._dropping or not self._command.endswith(b"}\r\n"):
            raise BadInputError("no synchronising literal is waiting")
        self._end_command()

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def buffered(self) -> int:
        """Octets fed but not yet parsed (after STARTTLS there must be none)."""
        return len(self._buffer) + len(self._command)

    # --- input --------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """Append received octets; parse them with :meth:`next_event`."""
        self._buffer += data

    def next_event(self) -> ParseEvent:
        """The next event the octets fed so far allow; :class:`NeedData`
        when they hold no more.  Call until it returns :class:`NeedData`."""
        while True:
            if self._literal_left:
                if not self._take_literal():
                    return NeedData()
                continue
            line = self._next_line()
            if line is None:
                return self._overlong_check()
            event = self._line(line)
            if event is not None:
                return event

    # --- framing ------------------------------------------------------------------

    def _take_literal(self) -> bool:
        """Move literal octets out of the buffer; whether the literal is complete."""
        take = min(self._literal_left, len(self._buffer))
        if self._keep_literal:
            self._command += self._buffer[:take]
        del self._buffer[:take]
        self._literal_left -= take
        return self._literal_left == 0

    def _next_line(self) -> bytes | None:
        """The next complete line without its line end, or ``None``."""
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if self._skipping_line:
                self._skipped_tail = (self._skipped_tail + bytes(self._buffer))[-_TAIL_KEPT:]
                self._buffer.clear()
                self._scanned = 0
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        self._scanned = 0
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._skipping_line:
            line = (self._skipped_tail + line)[-_TAIL_KEPT:]
            self._skipping_line = False
            self._skipped_tail = b""
        return line

    def _overlong_check(self) -> ParseEvent:
        """With no complete line buffered: is the partial line already too long?"""
        if self._skipping_line:
            return NeedData()
        pending = self._line_bytes + len(self._buffer)
        if pending <= self.limits.max_line_bytes:
            return NeedData()
        tag = self._tag if self._started else parse_tag(bytes(self._buffer[:1024]))
        self._skipping_line = True
        self._skipped_tail = bytes(self._buffer)[-_TAIL_KEPT:]
        self._buffer.clear()
        self._scanned = 0
        self._started = True
        if self._dropping:
            return NeedData()
        self._dropping = True
        self._command.clear()
        return LineTooLong(tag, self.limits.max_line_bytes)

    def _line(self, line: bytes) -> ParseEvent | None:
        if self._mode is not Mode.COMMAND and not self._started:
            return self._mode_line(line)
        if not self._started:
            if not line:
                return None  # a blank line between commands
            self._started = True
            self._tag = parse_tag(line)
        self._line_bytes += len(line)
        if self._line_bytes > self.limits.max_line_bytes and not self._dropping:
            self._dropping = True
            self._command.clear()
            return self._after_drop(line, LineTooLong(self._tag, self.limits.max_line_bytes))
        announced = _LITERAL_AT_END.search(line)
        if announced is None:
            return self._complete(line)
        size = int(announced.group(1))
        synchronizing = not announced.group(2)
        if self._dropping:
            return self._after_drop(line, None)
        limit = self._literal_limit(synchronizing)
        if size > limit:
            self._dropping = True
            self._command.clear()
            return self._after_drop(line, LiteralTooLarge(self._tag, size, limit, synchronizing))
        self._command += line + b"\r\n"
        self._literal_left, self._keep_literal = size, True
        if synchronizing:
            # Even {0}: the client waits for "+" before sending the rest.
            return NeedContinuation(self._tag, size)
        return None

    def _literal_limit(self, synchronizing: bool) -> int:
        limit = self.limits.max_literal_bytes
        if not synchronizing and self.limits.max_nonsync_literal_bytes is not None:
            limit = min(limit, self.limits.max_nonsync_literal_bytes)
        return limit

    def _after_drop(self, line: bytes, event: ParseEvent | None) -> ParseEvent | None:
        """Continue dropping a command after ``line``: skip the octets of a
        non-synchronising literal it announces; a synchronising one is never
        sent (the client gets our answer instead of ``+``), so the command
        ends there, as it does at a line without a literal."""
        announced = _LITERAL_AT_END.search(line)
        if announced is not None and announced.group(2):
            self._literal_left, self._keep_literal = int(announced.group(1)), False
        else:
            self._end_command()
        return event

    def _complete(self, line: bytes) -> ParseEvent | None:
        tag = self._tag
        dropped = self._dropping
        data = bytes(self._command) + line
        self._end_command()
        if dropped:
            return None
        try:
            return parse_command(data, utf8_names=self._utf8_names)
        except UnknownCharsetError as exc:
            return BadCommand(tag, str(exc), bad_charset=True)
        except BadInputError as exc:
            return BadCommand(tag, str(exc))
        except RecursionError:
            return BadCommand(tag, "command nested too deeply")

    def _end_command(self) -> None:
        self._command.clear()
        self._started = False
        self._tag = None
        self._line_bytes = 0
        self._literal_left = 0
        self._keep_literal = True
        self._dropping = False

    def _mode_line(self, line: bytes) -> ParseEvent:
        mode, tag = self._mode, self._mode_tag
        self._mode = Mode.COMMAND
        if mode is Mode.IDLE:
            if line.upper() == b"DONE":
                return IdleDone(tag)
            return BadCommand(tag, "expected DONE to end IDLE")
        if line == b"*":
            return SaslResponse(tag, None)
        try:
            return SaslResponse(tag, decode_base64(line))
        except BadInputError as exc:
            return BadCommand(tag, str(exc))
