"""The tokens of IMAP command text (RFC 3501 §9 formal syntax, RFC 9051 §9).

A :class:`Reader` walks one complete command held in memory -- its lines
and the literals between them, as the framing in
:mod:`replicad.imap.parser` assembled it, each literal still announced by
``{n}``/``{n+}``/``~{n}`` and CRLF -- and hands out one token at a time.
Every method either consumes a whole token or raises
:class:`CommandSyntaxError` naming what it expected, so the grammar reads
like the ABNF it follows.
"""

from __future__ import annotations

import datetime
from typing import Final

from replicad.errors import BadInputError
from replicad.imap.searchkeys import MONTHS
from replicad.imap.sequences import SequenceSet

#: RFC 3501 ``atom-specials`` without CTL and 8-bit, which are checked apart.
_ATOM_SPECIALS: Final = frozenset(b'(){ %*"\\]')
#: ``ASTRING-CHAR``: ATOM-CHAR plus ``]`` (resp-specials).
_ASTRING_EXTRA: Final = frozenset(b"]")
#: ``list-char``: ATOM-CHAR plus ``%``, ``*`` (list-wildcards) and ``]``.
_LIST_EXTRA: Final = frozenset(b"%*]")
_SEQUENCE_CHARS: Final = frozenset(b"0123456789:*,$")
_DIGITS: Final = frozenset(b"0123456789")
_MONTH_NUMBER: Final = {m.upper(): i + 1 for i, m in enumerate(MONTHS)}
#: RFC 3501 ``number``: 32 bits; RFC 7162 ``mod-sequence-value``: 63 bits.
MAX_NUMBER: Final = 0xFFFFFFFF
MAX_MODSEQ: Final = 0x7FFFFFFFFFFFFFFF


class CommandSyntaxError(BadInputError):
    """The command text does not follow the grammar; answered with ``BAD``."""


class UnknownCharsetError(CommandSyntaxError):
    """SEARCH names a charset the server cannot decode (RFC 3501 §6.4.4:
    answered ``NO [BADCHARSET]``)."""


def is_atom_char(octet: int) -> bool:
    """RFC 3501 ``ATOM-CHAR``: any 7-bit CHAR except atom-specials and CTL."""
    return 0x20 < octet < 0x7F and octet not in _ATOM_SPECIALS


def is_tag_char(octet: int) -> bool:
    """RFC 3501 ``tag``: ASTRING-CHAR except ``+``."""
    return (is_atom_char(octet) or octet in _ASTRING_EXTRA) and octet != ord("+")


class Reader:
    """A cursor over one command's octets."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    # --- primitives ---------------------------------------------------------

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def peek_is(self, text: bytes) -> bool:
        """Whether the next octets are ``text``, ignoring ASCII case."""
        end = self.pos + len(text)
        return self.data[self.pos : end].upper() == text.upper()

    def try_take(self, text: bytes) -> bool:
        """Consume ``text`` (ASCII case-insensitive) if it comes next."""
        if self.peek_is(text):
            self.pos += len(text)
            return True
        return False

    def expect(self, text: bytes, what: str | None = None) -> None:
        if not self.try_take(text):
            raise self.error(f"expected {what or repr(text.decode())}")

    def sp(self) -> None:
        self.expect(b" ", "a space")

    def end(self) -> None:
        if not self.at_end():
            raise self.error("unexpected text at the end of the command")

    def error(self, message: str) -> CommandSyntaxError:
        near = self.data[self.pos : self.pos + 20].decode("ascii", "replace")
        where = f" near {near!r}" if near else " at the end of the command"
        return CommandSyntaxError(message + where)

    def _run(self, accept: frozenset[int] | None, extra: frozenset[int] = frozenset()) -> bytes:
        start = self.pos
        data = self.data
        while self.pos < len(data):
            octet = data[self.pos]
            ok = octet in accept if accept is not None else is_atom_char(octet) or octet in extra
            if not ok:
                break
            self.pos += 1
        return data[start : self.pos]

    # --- atoms and numbers --------------------------------------------------

    def atom(self, what: str = "an atom") -> str:
        word = self._run(None)
        if not word:
            raise self.error(f"expected {what}")
        return word.decode("ascii")

    def keyword(self, what: str = "a keyword") -> str:
        """An atom, upper-cased: command names, options and attributes."""
        return self.atom(what).upper()

    def number(self, limit: int = MAX_NUMBER, what: str = "a number") -> int:
        digits = self._run(_DIGITS)
        if not digits:
            raise self.error(f"expected {what}")
        value = int(digits)
        if value > limit:
            raise self.error(f"{what} {value} is too large")
        return value

    def nz_number(self, what: str = "a number") -> int:
        value = self.number(what=what)
        if value == 0:
            raise self.error(f"{what} must not be 0")
        return value

    def modseq(self, *, zero: bool = False) -> int:
        """RFC 7162 ``mod-sequence-value`` (or ``mod-sequence-valzer``)."""
        value = self.number(MAX_MODSEQ, "a mod-sequence")
        if value == 0 and not zero:
            raise self.error("a mod-sequence must not be 0")
        return value

    def sequence_set(self) -> SequenceSet:
        text = self._run(_SEQUENCE_CHARS)
        if not text:
            raise self.error("expected a sequence set")
        return SequenceSet.parse(text.decode("ascii"))

    # --- strings --------------------------------------------------------------

    def quoted(self) -> bytes:
        """RFC 3501 ``quoted``; 8-bit octets are accepted (RFC 9051 utf8-quoted)."""
        self.expect(b'"')
        out = bytearray()
        data = self.data
        while True:
            if self.pos >= len(data):
                raise self.error("unterminated quoted string")
            octet = data[self.pos]
            self.pos += 1
            if octet == 0x22:
                return bytes(out)
            if octet == 0x5C:
                if self.pos >= len(data) or data[self.pos] not in (0x22, 0x5C):
                    raise self.error('only \\\\ and \\" may be escaped in a quoted string')
                octet = data[self.pos]
                self.pos += 1
            elif octet in (0x0D, 0x0A, 0x00):
                raise self.error("CR, LF or NUL in a quoted string")
            out.append(octet)

    def literal(self) -> tuple[bytes, bool]:
        """``{n}``/``{n+}`` (RFC 7888) or ``~{n}`` literal8 (RFC 3516):
        returns the data and whether it was literal8."""
        binary = self.try_take(b"~")
        self.expect(b"{", "a literal")
        size = self.number(limit=len(self.data), what="a literal size")
        self.try_take(b"+")
        self.expect(b"}\r\n", "'}' and the end of line of a literal")
        if self.pos + size > len(self.data):
            raise self.error("literal shorter than announced")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value, binary

    def at_string(self) -> bool:
        """Whether a quoted string or a literal comes next (``~`` alone
        starts an atom: only ``~{`` is literal8)."""
        octet = self.peek()
        return octet in (0x22, 0x7B) or self.peek_is(b"~{")

    def string(self, what: str = "a string") -> bytes:
        octet = self.peek()
        if octet == 0x22:
            return self.quoted()
        if self.at_string():
            value, binary = self.literal()
            if binary:
                raise self.error("literal8 is only allowed in APPEND")
            return value
        raise self.error(f"expected {what}")

    def astring(self, what: str = "a string") -> bytes:
        if self.at_string():
            return self.string(what)
        word = self._run(None, _ASTRING_EXTRA)
        if not word:
            raise self.error(f"expected {what}")
        return word

    def nstring(self, what: str = "a string or NIL") -> bytes | None:
        if self.try_nil():
            return None
        return self.string(what)

    def try_nil(self) -> bool:
        end = self.pos + 3
        if self.data[self.pos : end].upper() == b"NIL":
            following = self.data[end] if end < len(self.data) else None
            if following is None or not is_atom_char(following):
                self.pos = end
                return True
        return False

    def list_mailbox(self) -> bytes:
        """RFC 3501 ``list-mailbox``: a pattern with ``*`` and ``%``."""
        if self.at_string():
            return self.string("a mailbox pattern")
        word = self._run(None, _LIST_EXTRA)
        if not word:
            raise self.error("expected a mailbox pattern")
        return word

    # --- flags and dates ----------------------------------------------------

    def flag(self) -> str:
        """``flag`` (``\\Seen``, a keyword) as written; normalised by the caller."""
        if self.try_take(b"\\"):
            return "\\" + self.atom("a flag name")
        return self.atom("a flag")

    def flag_list(self) -> list[str]:
        """``"(" [flag *(SP flag)] ")"``."""
        self.expect(b"(", "'(' opening a flag list")
        flags: list[str] = []
        while not self.try_take(b")"):
            if flags:
                self.sp()
            flags.append(self.flag())
        return flags

    def date(self) -> datetime.date:
        """RFC 3501 ``date``: ``d-Mon-yyyy``, optionally quoted."""
        if self.try_take(b'"'):
            value = self._date_text()
            self.expect(b'"')
            return value
        return self._date_text()

    def _date_text(self) -> datetime.date:
        day = self.number(what="a day")
        self.expect(b"-")
        month = self._month()
        self.expect(b"-")
        year = self._fixed_digits(4, "a four-digit year")
        try:
            return datetime.date(year, month, day)
        except ValueError:
            raise self.error(f"no such date {day}-{MONTHS[month - 1]}-{year}") from None

    def _month(self) -> int:
        name = self.data[self.pos : self.pos + 3].decode("ascii", "replace").upper()
        month = _MONTH_NUMBER.get(name)
        if month is None:
            raise self.error("expected a month name (Jan .. Dec)")
        self.pos += 3
        return month

    def _fixed_digits(self, count: int, what: str) -> int:
        digits = self.data[self.pos : self.pos + count]
        if len(digits) != count or not all(d in _DIGITS for d in digits):
            raise self.error(f"expected {what}")
        self.pos += count
        return int(digits)

    def date_time(self) -> datetime.datetime:
        """RFC 3501 ``date-time``: ``"dd-Mon-yyyy hh:mm:ss +zzzz"`` (day
        space-padded or two digits)."""
        self.expect(b'"', "a quoted date-time")
        if self.try_take(b" "):
            day = self._fixed_digits(1, "a day")
        else:
            day = self._fixed_digits(2, "a two-digit day")
        self.expect(b"-")
        month = self._month()
        self.expect(b"-")
        year = self._fixed_digits(4, "a four-digit year")
        self.sp()
        hour = self._fixed_digits(2, "hours")
        self.expect(b":")
        minute = self._fixed_digits(2, "minutes")
        self.expect(b":")
        second = self._fixed_digits(2, "seconds")
        self.sp()
        sign = self.peek()
        if sign not in (0x2B, 0x2D):
            raise self.error("expected a zone (+hhmm or -hhmm)")
        self.pos += 1
        zone = self._fixed_digits(4, "a four-digit zone")
        self.expect(b'"')
        offset = datetime.timedelta(hours=zone // 100, minutes=zone % 100)
        if zone % 100 >= 60 or offset >= datetime.timedelta(hours=24):
            raise self.error("bad time zone")
        tz = datetime.timezone(-offset if sign == 0x2D else offset)
        try:
            return datetime.datetime(year, month, day, hour, minute, second, tzinfo=tz)
        except ValueError:
            raise self.error("no such date-time") from None
