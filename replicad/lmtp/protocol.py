"""The server side of LMTP (RFC 2033) as a sans-I/O state machine.

No sockets, no clocks, no store: bytes in, events out, reply bytes queued;
the trio glue (:mod:`replicad.lmtp.server`) owns the I/O and the delivery,
in the style of :mod:`replicad.protocol.connection` and h11::

    conn = LmtpConnection(LmtpConfig(hostname="mail1"))
    sock.send(conn.data_to_send())               # the 220 greeting
    for event in conn.receive_data(await sock.recv()):
        ...                                      # Greeted, MailFrom, RcptTo,
                                                 # MessageComplete, MessageRefused,
                                                 # ConnectionClosed
    conn.answer_rcpt(RcptAnswer.OK)              # after RcptTo: is the user known?
    conn.data_results([DeliveryStatus.SAVED])    # after MessageComplete: one per recipient
    sock.send(conn.data_to_send())

The machine decides every reply except the two that depend on the store:
whether a recipient exists (:class:`RcptTo`, answered with
:meth:`LmtpConnection.answer_rcpt`) and what became of each recipient's
copy after DATA (:class:`MessageComplete`, answered with
:meth:`LmtpConnection.data_results`).  While such an answer is pending the
machine reads no further input: bytes that arrive meanwhile (pipelined
commands, RFC 2920) are buffered and processed, in order, by the call that
gives the answer, which returns the events they produce.  So at most one
event awaiting an answer is outstanding, and it is always the last of the
list it arrives in.

Extensions announced in the LHLO reply (RFC 2033 §5 requires the first
two): PIPELINING (RFC 2920), ENHANCEDSTATUSCODES (RFC 2034; codes from
RFC 3463 on every 2xx/4xx/5xx reply but the greeting and LHLO's), 8BITMIME
(RFC 6152; ``BODY=7BIT|8BITMIME``) and SIZE (RFC 1870; ``SIZE=`` checked at
MAIL, the body itself counted as it arrives).  Not offered: CHUNKING (BDAT),
DSN, SMTPUTF8, STARTTLS, AUTH.

Input is untrusted and bounded: a command line longer than
:data:`MAX_COMMAND_LINE` octets is discarded up to its end and answered
``500 5.5.2``; a body is kept up to ``max_message_size`` octets and the
rest only scanned for the end of data, then every recipient gets
``552 5.3.4``.  Body lines may be of any length (RFC 5321's 1,000 octets
are not enforced), bare LF line ends become CRLF, dot-stuffing is undone
(RFC 5321 §4.5.2).  A NUL octet is refused: in a command line at once
(``500 5.5.2``), in a body for every recipient after the end of data
(``554 5.6.0``; RFC 6152 8-bit data excludes NUL).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

#: Longest command line, CRLF included.  RFC 5321 §4.5.3.1.4 asks for at
#: least 512 octets; MAIL parameters (SIZE, BODY) and long addresses add to
#: that, so the bound is generous but still small enough to keep buffered.
MAX_COMMAND_LINE: Final = 2048
#: RFC 5321 §4.5.3.1.8: a server must accept at least 100 recipients.
DEFAULT_MAX_RECIPIENTS: Final = 100
#: Longest path (RFC 5321 §4.5.3.1.3: 256 octets including the brackets).
MAX_PATH: Final = 256
#: Bad commands tolerated in one session before it is closed (421 4.7.0).
MAX_ERRORS: Final = 20
#: A body line longer than this is handed to the body in parts, so a line
#: without an end never makes the buffer grow past this (plus one read).
DATA_FLUSH: Final = 64 * 1024

INBOX: Final = "INBOX"
#: Dovecot's default ``recipient_delimiter``: ``user+detail@domain``.
RECIPIENT_DELIMITER: Final = "+"

_ATEXT: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~."
)
_DOMAIN: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


class State(Enum):
    AWAIT_LHLO = "AWAIT_LHLO"  # greeted; no LHLO yet
    READY = "READY"  # no transaction
    MAIL = "MAIL"  # MAIL FROM accepted: RCPTs, then DATA
    DATA = "DATA"  # receiving the message after 354
    CLOSED = "CLOSED"


class RcptAnswer(Enum):
    """The glue's answer to :class:`RcptTo` (RFC 2033 §4.2: the user is checked at RCPT)."""

    OK = "ok"  # 250 2.1.5
    UNKNOWN_USER = "unknown"  # 550 5.1.1
    TEMPFAIL = "tempfail"  # 451 4.3.0: the lookup failed; the client tries again


class DeliveryStatus(Enum):
    """What became of one recipient's copy after DATA (RFC 2033 §4.2: one reply each)."""

    SAVED = "saved"  # 250 2.0.0
    DURABILITY = "durability"  # 451 4.3.0: the user's durability level is not reachable now
    STORE_FULL = "store_full"  # 452 4.3.1
    TEMPFAIL = "tempfail"  # 451 4.3.0: any other failure; nothing of it was kept


@dataclass(frozen=True, slots=True)
class LmtpConfig:
    hostname: str = "localhost"
    max_message_size: int = 63 * 1024 * 1024
    max_recipients: int = DEFAULT_MAX_RECIPIENTS
    max_command_line: int = MAX_COMMAND_LINE


@dataclass(frozen=True, slots=True)
class Recipient:
    """One accepted ``RCPT TO`` path.

    ``address`` is the path as the client sent it, without the brackets or a
    source route (what ``Delivered-To:`` and the replies show); ``user`` the
    store's user name (:func:`normalise_user` of the address without its
    detail); ``detail`` what followed ``+`` in the local part, if anything.
    """

    address: str
    user: str
    detail: str | None

    @property
    def mailbox(self) -> str:
        """The folder the address asks for: its detail, else INBOX."""
        return self.detail or INBOX


# --- events ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeted:
    """``LHLO`` accepted (RFC 2033 §4.1); ``client`` is its argument."""

    client: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """``MAIL FROM`` accepted; ``sender`` is "" for the null path ``<>``."""

    sender: str
    size: int | None
    body: str | None  # "7BIT" or "8BITMIME" when given


@dataclass(frozen=True, slots=True)
class RcptTo:
    """Answer with :meth:`LmtpConnection.answer_rcpt`: is ``recipient.user`` known?"""

    recipient: Recipient


@dataclass(frozen=True, slots=True)
class MessageComplete:
    """The end of data arrived.  Deliver ``body`` (dot-stuffing undone, every
    line ending in CRLF) to each of ``recipients`` and answer with
    :meth:`LmtpConnection.data_results`, one status per recipient, in order
    (RFC 2033 §4.2).  :func:`trace_headers` gives the lines to put in front."""

    sender: str
    recipients: tuple[Recipient, ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """The end of data arrived and the message was refused for every
    recipient without delivery (``552 5.3.4`` too large, ``554 5.6.0`` NUL);
    the replies are queued.  For the glue's log and counters."""

    sender: str
    recipients: tuple[Recipient, ...]
    reply: str  # e.g. "552 5.3.4"
    size: int  # octets of body seen


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The session is over: QUIT, end of stream, too many errors, timeout or
    shutdown.  ``in_data`` is True when it ended inside DATA (nothing of the
    message is delivered)."""

    reason: str
    in_data: bool = False


Event = Greeted | MailFrom | RcptTo | MessageComplete | MessageRefused | ConnectionClosed


class LmtpStateError(Exception):
    """A call the machine's state does not allow (a bug in the glue)."""


# --- addresses ---------------------------------------------------------------------


def normalise_user(name: str) -> str:
    """The store's user name for ``name``: lowercased.

    This is Dovecot's default normalisation (``auth_username_format = %Lu``:
    the whole user name, local part and domain, in lower case), so a user
    is the same whoever spells the address.
    """
    return name.lower()


class AddressError(ValueError):
    pass


def parse_path(text: str, *, allow_null: bool) -> tuple[str, str]:
    """``<path> rest`` -> (address, rest) per RFC 5321 §4.1.2, leniently.

    The address is returned without brackets and without a source route
    (``@a,@b:``, to be ignored, §C); ``""`` for ``<>`` when ``allow_null``.
    A local part may be a dot-string or a quoted string; the domain may be
    absent (``<user>``, LMTP's local users), a name or an address literal.
    Raises :class:`AddressError`.
    """
    if not text.startswith("<"):
        raise AddressError("the address must be in angle brackets: <user@domain>")
    end, quoted, escaped = -1, False, False
    for i in range(1, len(text)):
        ch = text[i]
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ">" and not quoted:
            end = i
            break
    if end < 0:
        raise AddressError("no closing '>'")
    inner, rest = text[1:end], text[end + 1 :]
    if rest and not rest.startswith(" "):
        raise AddressError("junk after the closing '>'")
    if len(inner) + 2 > MAX_PATH:
        raise AddressError(f"path longer than {MAX_PATH} octets")
    if inner.startswith("@"):
        _route, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("source route without ':'")
    if not inner:
        if not allow_null:
            raise AddressError("empty address")
        return "", rest.strip()
    local, domain = _split_mailbox(inner)
    _check_local(local)
    if domain is not None:
        _check_domain(domain)
    return inner, rest.strip()


def _split_mailbox(mailbox: str) -> tuple[str, str | None]:
    if mailbox.startswith('"'):
        i, escaped = 1, False
        while i < len(mailbox):
            ch = mailbox[i]
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                break
            i += 1
        else:
            raise AddressError("unterminated quoted local part")
        local, after = mailbox[: i + 1], mailbox[i + 1 :]
        if not after:
            return local, None
        if not after.startswith("@"):
            raise AddressError("junk after the quoted local part")
        return local, after[1:]
    local, at, domain = mailbox.rpartition("@")
    if not at:
        return mailbox, None
    return local, domain


def _check_local(local: str) -> None:
    if local.startswith('"'):
        if any(not (" " <= ch <= "~") for ch in local):
            raise AddressError("control or non-ASCII character in the local part")
        return
    if not local or any(ch not in _ATEXT for ch in local):
        raise AddressError(f"bad local part {local!r}")


def _check_domain(domain: str) -> None:
    if domain.startswith("[") and domain.endswith("]") and len(domain) > 2:
        if all(" " < ch <= "~" and ch not in "[]\\" for ch in domain[1:-1]):
            return
        raise AddressError(f"bad address literal {domain!r}")
    if not domain or any(ch not in _DOMAIN for ch in domain):
        raise AddressError(f"bad domain {domain!r}")


def _unquote(local: str) -> str:
    if not local.startswith('"'):
        return local
    out, escaped = [], False
    for ch in local[1:-1]:
        if escaped or ch != "\\":
            out.append(ch)
            escaped = False
        else:
            escaped = True
    return "".join(out)


def recipient_of(address: str) -> Recipient:
    """The :class:`Recipient` of a parsed, non-null ``RCPT TO`` address.

    ``user+detail@domain`` -> user ``user@domain``, detail ``detail`` (split
    at the first ``+``, Dovecot's ``recipient_delimiter``); an empty detail
    is none.
    """
    local, domain = _split_mailbox(address)
    local = _unquote(local)
    base, delimiter, detail = local.partition(RECIPIENT_DELIMITER)
    user = base if domain is None else f"{base}@{domain}"
    return Recipient(address, normalise_user(user), detail if delimiter and detail else None)


def trace_headers(sender: str, recipients: Sequence[Recipient]) -> bytes:
    """The header lines put in front of a delivered message, as Dovecot's LMTP does.

    ``Return-Path: <sender>`` always (``<>`` for the null sender);
    ``Delivered-To: address`` only when the transaction has exactly one
    recipient -- Dovecot (lmtp_local_add_headers) leaves it out for several,
    so every recipient of a message gets the same octets and the store
    keeps them once (single-instance by content hash).  Dovecot's
    ``Received:`` line is not written: the MTA's own is already there.
    """
    lines = [f"Return-Path: <{sender}>\r\n"]
    if len(recipients) == 1:
        lines.append(f"Delivered-To: {recipients[0].address}\r\n")
    return "".join(lines).encode("ascii")


# --- dot-stuffing ------------------------------------------------------------------


def normalise_line_ends(body: bytes) -> bytes:
    """Every line end CRLF: a bare LF gets its CR; other octets untouched."""
    return body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dot_stuff(body: bytes) -> bytes:
    """``body`` as DATA sends it (RFC 5321 §4.5.2): line ends normalised, a
    final CRLF added if missing, a dot doubled at the start of each line, and
    the end-of-data line ``.``.  What :class:`LmtpConnection` receives as
    such comes back out as ``normalise_line_ends(body)`` (plus that CRLF)."""
    text = normalise_line_ends(body)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    stuffed = (b"\r\n" + text).replace(b"\r\n.", b"\r\n..")[2:]
    return stuffed + b".\r\n"


# --- the machine -------------------------------------------------------------------


class LmtpConnection:
    """One LMTP session, server side.  See the module docstring for the contract."""

    def __init__(self, config: LmtpConfig | None = None) -> None:
        self.config = config or LmtpConfig()
        self.state = State.AWAIT_LHLO
        self.client: str | None = None  # LHLO argument
        self.close_reason: str | None = None
        self._in = bytearray()
        self._out: list[bytes] = []
        self._errors = 0
        self._discarding = False  # inside a command line that was too long
        self._unreported: ConnectionClosed | None = None  # closed by _error
        # The transaction.
        self._sender: str | None = None
        self._recipients: list[Recipient] = []
        self._pending_rcpt: Recipient | None = None
        self._pending_data: tuple[Recipient, ...] | None = None
        # DATA.
        self._body: list[bytes] = []
        self._body_size = 0
        self._oversize = False
        self._nul = False
        self._in_line = False  # part of the current body line already went to the body
        self._reply(220, None, f"{self.config.hostname} LMTP replicad ready")

    # --- outgoing -------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The reply octets queued so far, in order."""
        data = b"".join(self._out)
        self._out.clear()
        return data

    @property
    def awaiting(self) -> str | None:
        """``"rcpt"`` or ``"data"`` while an answer from the glue is due, else None."""
        if self._pending_rcpt is not None:
            return "rcpt"
        if self._pending_data is not None:
            return "data"
        return None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def in_transaction(self) -> bool:
        return self.state in (State.MAIL, State.DATA)

    # --- input ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed octets read from the client; ``b""`` means end of stream.

        At the end of stream, input still buffered (an incomplete line, or
        commands behind a pending answer) is dropped: the client left without
        waiting for their replies.  A message without its end of data is
        never delivered.
        """
        if self.state is State.CLOSED:
            return []
        if not data:
            in_data = self.state is State.DATA
            reason = "connection closed inside DATA" if in_data else "connection closed"
            return [self._close(reason, in_data=in_data)]
        self._in += data
        if self.awaiting is not None:
            return []
        return self._process()

    def answer_rcpt(self, answer: RcptAnswer) -> list[Event]:
        """Reply to the pending :class:`RcptTo`, then go on with buffered input."""
        recipient = self._pending_rcpt
        if recipient is None:
            raise LmtpStateError("no RCPT awaits an answer")
        self._pending_rcpt = None
        if self.state is State.CLOSED:
            return []
        where = f"<{recipient.address}>"
        if answer is RcptAnswer.OK:
            self._recipients.append(recipient)
            self._reply(250, "2.1.5", f"{where} OK")
        elif answer is RcptAnswer.UNKNOWN_USER:
            self._reply(550, "5.1.1", f"{where} User doesn't exist")
        else:
            self._reply(451, "4.3.0", f"{where} Temporary failure looking up the user")
        return self._process()

    def data_results(self, results: Sequence[DeliveryStatus]) -> list[Event]:
        """One reply per recipient of the pending :class:`MessageComplete`, in
        order (RFC 2033 §4.2), then go on with buffered input."""
        recipients = self._pending_data
        if recipients is None:
            raise LmtpStateError("no message awaits delivery results")
        if len(results) != len(recipients):
            raise LmtpStateError(f"{len(results)} results for {len(recipients)} recipients")
        self._pending_data = None
        if self.state is State.CLOSED:
            return []
        for recipient, status in zip(recipients, results, strict=True):
            where = f"<{recipient.address}>"
            if status is DeliveryStatus.SAVED:
                self._reply(250, "2.0.0", f"{where} Saved")
            elif status is DeliveryStatus.DURABILITY:
                self._reply(451, "4.3.0", f"{where} Durability level not reachable, try again")
            elif status is DeliveryStatus.STORE_FULL:
                self._reply(452, "4.3.1", f"{where} Mail store full, try again later")
            else:
                self._reply(451, "4.3.0", f"{where} Temporary failure, try again later")
        return self._process()

    def timed_out(self) -> ConnectionClosed | None:
        """The client was idle too long: ``421 4.4.2`` and close (RFC 5321 §4.5.3.2)."""
        if self.state is State.CLOSED:
            return None
        in_data = self.state is State.DATA
        self._reply(421, "4.4.2", f"{self.config.hostname} Idle timeout, closing connection")
        return self._close("idle timeout", in_data=in_data)

    def shutdown(self) -> ConnectionClosed | None:
        """The server is stopping: ``421 4.3.2`` and close (RFC 5321 §3.8)."""
        if self.state is State.CLOSED:
            return None
        in_data = self.state is State.DATA
        self._reply(421, "4.3.2", f"{self.config.hostname} Service shutting down")
        return self._close("shutdown", in_data=in_data)

    # --- processing -----------------------------------------------------------------

    def _process(self) -> list[Event]:
        events: list[Event] = []
        while self.state is not State.CLOSED and self.awaiting is None:
            if self.state is State.DATA:
                if not self._data(events):
                    break
                continue
            line = self._next_line()
            if line is None:
                break
            self._command(line, events)
            if self._unreported is not None:
                events.append(self._unreported)
                self._unreported = None
        return events

    def _next_line(self) -> bytes | str | None:
        """A complete command line (without its line end), ``"too long"`` for
        one over the limit, or None when more input is needed."""
        buf = self._in
        limit = self.config.max_command_line
        end = buf.find(b"\n")
        if end < 0:
            if len(buf) >= limit:
                # Drop what we have and the rest of the line as it comes.
                self._discarding = True
                buf.clear()
            return None
        line = bytes(buf[:end])
        del buf[: end + 1]
        if self._discarding:
            self._discarding = False
            return "too long"
        if len(line) + 1 > limit:
            return "too long"
        return line[:-1] if line.endswith(b"\r") else line

    def _command(self, raw: bytes | str, events: list[Event]) -> None:
        if raw == "too long":
            self._error(500, "5.5.2", "Line too long")
            return
        assert isinstance(raw, bytes)
        if b"\0" in raw:
            self._error(500, "5.5.2", "NUL octet in command line refused")
            return
        try:
            line = raw.decode("ascii")
        except UnicodeDecodeError:
            self._error(500, "5.5.2", "Non-ASCII octets in command line (no SMTPUTF8)")
            return
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        arg = arg.strip()
        handler = _HANDLERS.get(verb)
        if handler is None:
            if verb in ("HELO", "EHLO"):
                # RFC 2033 §4.1: not in LMTP; never a positive reply, 500 recommended.
                self._error(500, "5.5.1", "This is LMTP: say LHLO (RFC 2033)")
            elif verb in _NOT_IMPLEMENTED:
                self._error(502, "5.5.1", f"{verb} not implemented")
            elif not verb:
                self._error(500, "5.5.2", "Empty command")
            else:
                self._error(500, "5.5.1", "Command unrecognized")
            return
        handler(self, arg, events)

    def _lhlo(self, arg: str, events: list[Event]) -> None:
        if not arg or " " in arg:
            self._error(501, "5.5.4", "Syntax: LHLO hostname")
            return
        self._reset()
        self.client = arg
        self.state = State.READY
        # RFC 2034 §3: no enhanced status codes on the LHLO reply.
        lines = [
            self.config.hostname,
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            f"SIZE {self.config.max_message_size}",
        ]
        self._out.append(
            "".join(
                f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n" for i, text in enumerate(lines)
            ).encode("ascii")
        )
        events.append(Greeted(arg))

    def _mail(self, arg: str, events: list[Event]) -> None:
        if self.state is State.AWAIT_LHLO:
            self._error(503, "5.5.1", "Send LHLO first")
            return
        if self.state is State.MAIL:
            self._error(503, "5.5.1", "Nested MAIL command")
            return
        head, rest = arg[:5], arg[5:].lstrip(" ")
        if head.upper() != "FROM:":
            self._error(501, "5.5.4", "Syntax: MAIL FROM:<address> [SIZE=n] [BODY=8BITMIME]")
            return
        try:
            sender, params = parse_path(rest, allow_null=True)
        except AddressError as exc:
            self._error(501, "5.1.7", f"Bad sender address syntax: {exc}")
            return
        size: int | None = None
        body: str | None = None
        seen: set[str] = set()
        for param in params.split():
            key, eq, value = param.partition("=")
            key = key.upper()
            if key in seen:
                self._error(501, "5.5.4", f"{key} given twice")
                return
            seen.add(key)
            if key == "SIZE":
                if not eq or not value.isdigit() or len(value) > 20:
                    self._error(501, "5.5.4", "Syntax: SIZE=octets")
                    return
                size = int(value)
                if size > self.config.max_message_size:
                    # RFC 1870 §6.1: a fixed limit exceeded is permanent.
                    self._error(
                        552, "5.3.4", "Message size exceeds fixed maximum message size", count=False
                    )
                    return
            elif key == "BODY":
                body = value.upper()
                if body not in ("7BIT", "8BITMIME"):
                    self._error(555, "5.5.4", f"BODY={value} not supported")
                    return
            else:
                self._error(555, "5.5.4", f"MAIL parameter {key} not recognized")
                return
        self._sender = sender
        self.state = State.MAIL
        self._reply(250, "2.1.0", "Ok")
        events.append(MailFrom(sender, size, body))

    def _rcpt(self, arg: str, events: list[Event]) -> None:
        if self.state is not State.MAIL:
            self._error(503, "5.5.1", "Need MAIL before RCPT")
            return
        head, rest = arg[:3], arg[3:].lstrip(" ")
        if head.upper() != "TO:":
            self._error(501, "5.5.4", "Syntax: RCPT TO:<address>")
            return
        try:
            address, params = parse_path(rest, allow_null=False)
        except AddressError as exc:
            self._error(501, "5.1.3", f"Bad recipient address syntax: {exc}")
            return
        if params:
            self._error(555, "5.5.4", "RCPT parameters not recognized")
            return
        if len(self._recipients) >= self.config.max_recipients:
            # RFC 5321 §4.5.3.1.10: the client sends the rest in another transaction.
            self._reply(452, "4.5.3", "Too many recipients")
            return
        self._pending_rcpt = recipient_of(address)
        events.append(RcptTo(self._pending_rcpt))

    def _data_cmd(self, arg: str, events: list[Event]) -> None:
        if arg:
            self._error(501, "5.5.4", "Syntax: DATA")
            return
        if self.state is not State.MAIL:
            self._error(503, "5.5.1", "Need MAIL and RCPT before DATA")
            return
        if not self._recipients:
            # RFC 2033 §4.2: no successful RCPT -> DATA fails with 503.
            self._error(503, "5.5.1", "No valid recipients")
            return
        self.state = State.DATA
        self._body, self._body_size = [], 0
        self._oversize = self._nul = self._in_line = False
        self._reply(354, None, "Start mail input; end with <CRLF>.<CRLF>")

    def _rset(self, arg: str, events: list[Event]) -> None:
        if arg:
            self._error(501, "5.5.4", "Syntax: RSET")
            return
        self._reset()
        self._reply(250, "2.0.0", "Ok")

    def _noop(self, arg: str, events: list[Event]) -> None:
        self._reply(250, "2.0.0", "Ok")

    def _quit(self, arg: str, events: list[Event]) -> None:
        self._reply(221, "2.0.0", f"{self.config.hostname} Bye")
        events.append(self._close("quit"))

    def _vrfy(self, arg: str, events: list[Event]) -> None:
        if not arg:
            self._error(501, "5.5.4", "Syntax: VRFY address")
            return
        # RFC 5321 §3.5.3: 252, cannot verify but will accept and try.
        self._reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def _help(self, arg: str, events: list[Event]) -> None:
        self._reply(214, "2.0.0", "Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY")

    # --- DATA -----------------------------------------------------------------------

    def _data(self, events: list[Event]) -> bool:
        """Take what can be taken of the body from the buffer; False when more
        input is needed.  Works on whole lines at once (bytes.find/replace, in C)."""
        buf = self._in
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) > DATA_FLUSH:
                # A long line without an end yet: it cannot be the end-of-data
                # line, so all of it but its last octet (perhaps the CR of its
                # CRLF) goes to the body now.
                piece = bytes(buf[:-1])
                if not self._in_line and piece.startswith(b"."):
                    piece = piece[1:]
                self._add_body(piece)
                self._in_line = True
                del buf[:-1]
            return False
        lead = b"" if self._in_line else b"\n"
        text = lead + bytes(buf[: last + 1])
        ends = [i for i in (text.find(b"\n.\r\n"), text.find(b"\n.\n")) if i >= 0]
        if ends:
            end = min(ends)
            terminator = 4 if text.startswith(b"\n.\r\n", end) else 3
            lines = text[: end + 1]
            del buf[: end + terminator - len(lead)]
        else:
            lines = text
            del buf[: last + 1]
        unstuffed = lines.replace(b"\n.", b"\n")[len(lead) :]
        self._add_body(normalise_line_ends(unstuffed))
        self._in_line = False
        if ends:
            self._end_of_data(events)
        return True

    def _add_body(self, piece: bytes) -> None:
        if not piece:
            return
        self._body_size += len(piece)
        if b"\0" in piece:
            self._nul = True
        if self._body_size > self.config.max_message_size:
            self._oversize = True
            self._body.clear()  # only the end of data is looked for from now on
        elif not self._oversize:
            self._body.append(piece)

    def _end_of_data(self, events: list[Event]) -> None:
        sender = self._sender or ""
        recipients = tuple(self._recipients)
        refusal: tuple[int, str, str] | None = None
        if self._oversize:
            refusal = (552, "5.3.4", "Message size exceeds fixed maximum message size")
        elif self._nul:
            refusal = (554, "5.6.0", "Message contains NUL octets; refused")
        if refusal is not None:
            code, enhanced, text = refusal
            for recipient in recipients:
                self._reply(code, enhanced, f"<{recipient.address}> {text}")
            events.append(MessageRefused(sender, recipients, f"{code} {enhanced}", self._body_size))
            self._reset()
            return
        body = b"".join(self._body)
        self._reset()
        self._pending_data = recipients
        events.append(MessageComplete(sender, recipients, body))

    # --- helpers --------------------------------------------------------------------

    def _reset(self) -> None:
        """Forget the transaction (RSET, LHLO, after DATA); keep the greeting."""
        self._sender = None
        self._recipients = []
        self._body, self._body_size = [], 0
        self._oversize = self._nul = self._in_line = False
        if self.state in (State.MAIL, State.DATA):
            self.state = State.READY

    def _reply(self, code: int, enhanced: str | None, text: str) -> None:
        middle = f"{enhanced} " if enhanced else ""
        self._out.append(f"{code} {middle}{text}\r\n".encode("ascii", "replace"))

    def _error(self, code: int, enhanced: str, text: str, *, count: bool = True) -> None:
        self._reply(code, enhanced, text)
        if count:
            self._errors += 1
            if self._errors >= MAX_ERRORS and self.state is not State.CLOSED:
                self._reply(421, "4.7.0", f"{self.config.hostname} Too many errors, closing")
                self._unreported = self._close("too many errors")

    def _close(self, reason: str, *, in_data: bool = False) -> ConnectionClosed:
        self.state = State.CLOSED
        self.close_reason = reason
        self._in.clear()
        self._body = []
        return ConnectionClosed(reason, in_data)


_HANDLERS = {
    "LHLO": LmtpConnection._lhlo,
    "MAIL": LmtpConnection._mail,
    "RCPT": LmtpConnection._rcpt,
    "DATA": LmtpConnection._data_cmd,
    "RSET": LmtpConnection._rset,
    "NOOP": LmtpConnection._noop,
    "QUIT": LmtpConnection._quit,
    "VRFY": LmtpConnection._vrfy,
    "HELP": LmtpConnection._help,
}
_NOT_IMPLEMENTED = frozenset({"EXPN", "BDAT", "STARTTLS", "AUTH", "ETRN", "TURN", "ATRN"})
