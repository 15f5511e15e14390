"""Server responses rendered to octets (RFC 3501 §7, RFC 9051 §7, and the
extensions' response codes and data).

Everything the server sends is built here, in one place, from a small value
model of IMAP data (RFC 3501 §4):

- ``None`` is ``NIL``; an ``int`` is a number;
- ``str`` and ``bytes`` are strings, written quoted when that is safe and as
  a literal otherwise (CR, LF, NUL, 8-bit octets, ``"`` or ``\\``, or longer
  than :data:`MAX_QUOTED`); a ``str`` is UTF-8;
- a ``tuple`` or ``list`` is a parenthesised list;
- :class:`Atom` is written as is (flags, keywords, ``\\Noselect``);
- :class:`Literal` forces a literal (``binary`` for RFC 3516 ``~{n}``);
- :class:`Raw` is inserted as is: pre-rendered data such as an ENVELOPE or
  BODYSTRUCTURE built elsewhere.

Mailbox names are passed as Unicode and written in modified UTF-7 (RFC
3501 §5.1.3) unless ``utf8`` says the client enabled UTF8=ACCEPT (RFC 6855).
Every function returns the complete response line(s), CRLF included.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final, TypeAlias

from replicad.imap.mutf7 import encode_mailbox_name
from replicad.imap.sequences import SequenceSet, render_numbers

#: Longest string written quoted; longer ones are literals.
MAX_QUOTED: Final = 1024
CRLF: Final = b"\r\n"


@dataclass(frozen=True, slots=True)
class Atom:
    """Written as is: an atom, a flag, a keyword (the caller checked it)."""

    text: str


@dataclass(frozen=True, slots=True)
class Literal:
    """A string always written as a literal; ``binary``: as ``literal8``
    (RFC 3516 §4.2, for BINARY data that may hold NUL)."""

    data: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Raw:
    """Octets inserted as they are: already rendered IMAP data."""

    data: bytes


Value: TypeAlias = (
    int | str | bytes | Atom | Literal | Raw | tuple["Value", ...] | list["Value"] | None
)


def _quotable(data: bytes) -> bool:
    return len(data) <= MAX_QUOTED and all(
        0x20 <= octet <= 0x7E and octet not in (0x22, 0x5C) for octet in data
    )


def render_string(data: bytes) -> bytes:
    """A string: quoted when safe, else a synchronising-form literal
    (RFC 3501 §4.3; the server never waits for a continuation)."""
    if _quotable(data):
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def render_value(value: Value) -> bytes:
    """The octets of one value of the model above."""
    out = bytearray()
    _render_into(out, value)
    return bytes(out)


def _render_into(out: bytearray, value: Value) -> None:
    if value is None:
        out += b"NIL"
    elif isinstance(value, bool):
        raise TypeError("booleans are not IMAP values")
    elif isinstance(value, int):
        if value < 0:
            raise ValueError(f"IMAP numbers are not negative: {value}")
        out += b"%d" % value
    elif isinstance(value, str):
        out += render_string(value.encode("utf-8"))
    elif isinstance(value, bytes):
        out += render_string(value)
    elif isinstance(value, Atom):
        out += value.text.encode("utf-8")
    elif isinstance(value, Literal):
        out += b"~{%d}\r\n" % len(value.data) if value.binary else b"{%d}\r\n" % len(value.data)
        out += value.data
    elif isinstance(value, Raw):
        out += value.data
    else:
        out += b"("
        for i, item in enumerate(value):
            if i:
                out += b" "
            _render_into(out, item)
        out += b")"


def mailbox_value(name: str, *, utf8: bool = False) -> Value:
    """A mailbox name as a string value (modified UTF-7 unless ``utf8``)."""
    return name if utf8 else encode_mailbox_name(name)


def flag_list(flags: Iterable[str]) -> tuple[Value, ...]:
    """``(\\Seen $Junk)``: flags as atoms, in the order given."""
    return tuple(Atom(flag) for flag in flags)


# --- status responses ------------------------------------------------------------


class Status(Enum):
    OK = "OK"
    NO = "NO"
    BAD = "BAD"
    PREAUTH = "PREAUTH"  # untagged greeting only
    BYE = "BYE"  # untagged only


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """A ``resp-text-code`` (RFC 3501 §7.1 and extensions): ``[NAME data]``."""

    name: str
    data: bytes = b""

    def render(self) -> bytes:
        return b"[" + self.name.encode("ascii") + (b" " + self.data if self.data else b"") + b"]"

    @classmethod
    def simple(cls, name: str) -> ResponseCode:
        """A code without data: ``TRYCREATE``, ``NONEXISTENT``,
        ``ALREADYEXISTS``, ``CANNOT``, ``LIMIT``, ``ALERT``, ``UNAVAILABLE``,
        ``CLOSED``, ``NOMODSEQ``, ``READ-ONLY``, ``READ-WRITE``,
        ``UIDNOTSTICKY``, ``OVERQUOTA``, ``SERVERBUG``, ``TOOBIG`` …"""
        return cls(name)

    @classmethod
    def number(cls, name: str, value: int) -> ResponseCode:
        """``UIDVALIDITY n``, ``UIDNEXT n``, ``UNSEEN n``, ``HIGHESTMODSEQ n``."""
        return cls(name, b"%d" % value)

    @classmethod
    def uidvalidity(cls, value: int) -> ResponseCode:
        return cls.number("UIDVALIDITY", value)

    @classmethod
    def uidnext(cls, value: int) -> ResponseCode:
        return cls.number("UIDNEXT", value)

    @classmethod
    def highestmodseq(cls, value: int) -> ResponseCode:
        """RFC 7162 §3.1.2.1."""
        return cls.number("HIGHESTMODSEQ", value)

    @classmethod
    def appenduid(cls, uidvalidity: int, uids: SequenceSet) -> ResponseCode:
        """RFC 4315 §3: the UIDs the APPENDed messages got."""
        return cls("APPENDUID", b"%d " % uidvalidity + uids.render().encode())

    @classmethod
    def copyuid(cls, uidvalidity: int, source: SequenceSet, target: SequenceSet) -> ResponseCode:
        """RFC 4315 §3: source UIDs and the target UIDs, in matching order."""
        return cls(
            "COPYUID",
            b"%d %s %s" % (uidvalidity, source.render().encode(), target.render().encode()),
        )

    @classmethod
    def modified(cls, numbers: SequenceSet) -> ResponseCode:
        """RFC 7162 §3.1.3: messages STORE left alone (UNCHANGEDSINCE)."""
        return cls("MODIFIED", numbers.render().encode())

    @classmethod
    def permanentflags(cls, flags: Iterable[str], *, new_keywords: bool = True) -> ResponseCode:
        """RFC 3501 §7.1: flags the client may change for good; ``\\*`` when
        it may create keywords."""
        names = [*flags, "\\*"] if new_keywords else list(flags)
        return cls("PERMANENTFLAGS", render_value(flag_list(names)))

    @classmethod
    def capability(cls, capabilities: Iterable[str]) -> ResponseCode:
        return cls("CAPABILITY", " ".join(capabilities).encode("ascii"))

    @classmethod
    def badcharset(cls, charsets: Iterable[str] = ("UTF-8", "US-ASCII")) -> ResponseCode:
        return cls("BADCHARSET", render_value(tuple(Atom(c) for c in charsets)))


def _status_line(prefix: bytes, status: Status, text: str, code: ResponseCode | None) -> bytes:
    line = prefix + b" " + status.value.encode()
    if code is not None:
        line += b" " + code.render()
    # resp-text is text: no CR or LF may reach the client inside it.
    clean = text.replace("\r", " ").replace("\n", " ") or status.value
    return line + b" " + clean.encode("utf-8") + CRLF


def render_tagged(tag: str, status: Status, text: str, code: ResponseCode | None = None) -> bytes:
    """``tag OK [CODE] text`` (RFC 3501 §7.1): the end of a command."""
    if status not in (Status.OK, Status.NO, Status.BAD):
        raise ValueError(f"{status.value} is never tagged")
    return _status_line(tag.encode("ascii"), status, text, code)


def render_untagged_status(status: Status, text: str, code: ResponseCode | None = None) -> bytes:
    """``* OK/NO/BAD/PREAUTH/BYE [CODE] text``."""
    return _status_line(b"*", status, text, code)


def render_bye(text: str, code: ResponseCode | None = None) -> bytes:
    return render_untagged_status(Status.BYE, text, code)


def render_continuation(text: str = "") -> bytes:
    """``+ text``: the server is ready for a literal or the rest of a command."""
    return b"+ " + text.encode("utf-8") + CRLF if text else b"+ " + CRLF


def render_sasl_challenge(challenge: bytes) -> bytes:
    """``+ base64``: a SASL challenge (RFC 3501 §6.2.2); empty for PLAIN."""
    return b"+ " + base64.b64encode(challenge) + CRLF


# --- untagged data ---------------------------------------------------------------------


def render_untagged(*values: Value) -> bytes:
    """``* v1 v2 ...``: generic untagged data."""
    return b"* " + b" ".join(render_value(v) for v in values) + CRLF


def render_capability(capabilities: Iterable[str]) -> bytes:
    return b"* CAPABILITY " + " ".join(capabilities).encode("ascii") + CRLF


def render_enabled(capabilities: Iterable[str]) -> bytes:
    """RFC 5161 §3.2: ``* ENABLED`` (possibly with none)."""
    names = " ".join(capabilities)
    return b"* ENABLED" + (b" " + names.encode("ascii") if names else b"") + CRLF


def render_id(params: Sequence[tuple[str, str | None]] | None) -> bytes:
    """RFC 2971 §3.3: ``* ID ("name" "replicad" ...)`` or ``* ID NIL``."""
    if params is None:
        return b"* ID NIL" + CRLF
    flat: list[Value] = []
    for name, value in params:
        flat.extend((name, value))
    return b"* ID " + render_value(flat) + CRLF


Namespace = Sequence[tuple[str, str | None]]


def render_namespace(
    personal: Namespace | None,
    other: Namespace | None = None,
    shared: Namespace | None = None,
    *,
    utf8: bool = False,
) -> bytes:
    """RFC 2342 §5: each of the three is ``NIL`` or a list of (prefix, delimiter)."""

    def one(spaces: Namespace | None) -> Value:
        if not spaces:
            return None
        return [(mailbox_value(prefix, utf8=utf8), delim) for prefix, delim in spaces]

    return render_untagged(Atom("NAMESPACE"), one(personal), one(other), one(shared))


def render_flags(flags: Iterable[str]) -> bytes:
    return render_untagged(Atom("FLAGS"), flag_list(flags))


def render_exists(count: int) -> bytes:
    return b"* %d EXISTS\r\n" % count


def render_recent(count: int) -> bytes:
    return b"* %d RECENT\r\n" % count


def render_expunge(sequence_number: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % sequence_number


def render_vanished(uids: Iterable[int], *, earlier: bool = False) -> bytes:
    """RFC 7162 §3.2.10: ``* VANISHED [(EARLIER)] uid-set``; nothing when
    ``uids`` is empty (the response needs at least one UID)."""
    text = render_numbers(uids)
    if not text:
        return b""
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + text.encode() + CRLF


FetchItems = Sequence[tuple[str, Value]]


def render_fetch(sequence_number: int, items: FetchItems) -> bytes:
    """``* n FETCH (NAME value ...)``.  Names are written as given, so the
    caller uses the command's ``response_name()`` (``BODY[HEADER]<0>``)."""
    body = bytearray(b"* %d FETCH (" % sequence_number)
    for i, (name, value) in enumerate(items):
        if i:
            body += b" "
        body += name.encode("ascii") + b" "
        _render_into(body, value)
    body += b")" + CRLF
    return bytes(body)


def _list_like(
    kind: str,
    attributes: Iterable[str],
    delimiter: str | None,
    name: str,
    extended: Sequence[tuple[str, Value]],
    utf8: bool,
) -> bytes:
    values: list[Value] = [
        Atom(kind),
        flag_list(attributes),
        delimiter,
        mailbox_value(name, utf8=utf8),
    ]
    if extended:
        # RFC 5258 §6 mbox-list-extended: ("CHILDINFO" ("SUBSCRIBED")) ...
        flat: list[Value] = []
        for tag, value in extended:
            flat.extend((tag, value))
        values.append(flat)
    return render_untagged(*values)


def render_list(
    attributes: Iterable[str],
    delimiter: str | None,
    name: str,
    *,
    extended: Sequence[tuple[str, Value]] = (),
    utf8: bool = False,
) -> bytes:
    """``* LIST (\\HasNoChildren) "/" name [(extended items)]`` (RFC 3501
    §7.2.2, RFC 5258 §6 ``CHILDINFO``, RFC 6154 attributes)."""
    return _list_like("LIST", attributes, delimiter, name, extended, utf8)


def render_lsub(
    attributes: Iterable[str], delimiter: str | None, name: str, *, utf8: bool = False
) -> bytes:
    return _list_like("LSUB", attributes, delimiter, name, (), utf8)


def render_status(name: str, items: Sequence[tuple[str, int]], *, utf8: bool = False) -> bytes:
    """``* STATUS name (MESSAGES 3 UIDNEXT 9)`` (RFC 3501 §7.2.4; RFC 5819
    sends it right after the mailbox's LIST line)."""
    flat: list[Value] = []
    for item, number in items:
        flat.extend((Atom(item), number))
    return render_untagged(Atom("STATUS"), mailbox_value(name, utf8=utf8), flat)


def render_search(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """``* SEARCH 2 3 [(MODSEQ n)]`` (RFC 3501 §7.2.5, RFC 7162 §3.1.5)."""
    line = b"* SEARCH"
    for number in numbers:
        line += b" %d" % number
    if modseq is not None:
        line += b" (MODSEQ %d)" % modseq
    return line + CRLF


@dataclass(frozen=True, slots=True)
class SearchResult:
    """The RFC 4731 ESEARCH data a session chose to return; ``None`` fields
    are left out (a result with no match has no MIN, MAX or ALL)."""

    min: int | None = None
    max: int | None = None
    all: tuple[int, ...] | None = None
    count: int | None = None
    modseq: int | None = None


def render_esearch(tag: str, uid: bool, result: SearchResult) -> bytes:
    """``* ESEARCH (TAG "a1") UID MIN 1 MAX 9 ALL 1:3,9 COUNT 4 [MODSEQ n]``
    (RFC 4731 §3.1, RFC 7162 §3.1.5)."""
    line = b'* ESEARCH (TAG "' + tag.encode("ascii") + b'")'
    if uid:
        line += b" UID"
    if result.min is not None:
        line += b" MIN %d" % result.min
    if result.max is not None:
        line += b" MAX %d" % result.max
    if result.all:
        line += b" ALL " + render_numbers(result.all).encode()
    if result.count is not None:
        line += b" COUNT %d" % result.count
    if result.modseq is not None:
        line += b" MODSEQ %d" % result.modseq
    return line + CRLF
