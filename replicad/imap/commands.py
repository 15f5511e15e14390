"""IMAP commands as records: one frozen dataclass per command (RFC 3501 §6,
RFC 9051 §6, and the extensions the server offers).

The parser (:mod:`replicad.imap.parser`) turns client bytes into these; the
session dispatches on their type.  Every record carries the client's
``tag``.  Values are already checked and decoded:

- mailbox names are Unicode (decoded from modified UTF-7, RFC 3501 §5.1.3,
  or taken as UTF-8 once the client enabled UTF8=ACCEPT), with ``INBOX`` in
  any case spelt ``INBOX`` (RFC 3501 §5.1);
- flags are canonical (:func:`replicad.flags.normalise_flag`);
- sequence sets stay symbolic (:class:`~replicad.imap.sequences.SequenceSet`),
  numbers or UIDs as the record's ``uid`` field says;
- capability, option and attribute names are upper-cased.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from enum import Enum

from replicad.imap.searchkeys import SearchKey
from replicad.imap.sequences import SequenceSet


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command record."""

    tag: str


# --- any state (RFC 3501 §6.1) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class Id(Command):
    """RFC 2971: the client's field/value pairs, or ``None`` for ``ID NIL``."""

    params: tuple[tuple[str, str | None], ...] | None


# --- not authenticated (RFC 3501 §6.2) ----------------------------------------


@dataclass(frozen=True, slots=True)
class StartTls(Command):
    pass


@dataclass(frozen=True, slots=True)
class Login(Command):
    """The password stays octets: the passwd-file schemes hash octets, and a
    client may send any 8-bit password."""

    username: str
    password: bytes


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """RFC 3501 §6.2.2 with RFC 4959 SASL-IR: ``initial_response`` is the
    decoded initial response (``b""`` for ``=``), ``None`` when absent (the
    server then sends an empty continuation and reads the response line with
    :meth:`~replicad.imap.parser.CommandParser.expect_sasl_response`)."""

    mechanism: str
    initial_response: bytes | None


# --- authenticated (RFC 3501 §6.3) --------------------------------------------


@dataclass(frozen=True, slots=True)
class Enable(Command):
    """RFC 5161: capability names, upper-cased."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    """RFC 2342."""


@dataclass(frozen=True, slots=True)
class QresyncParams:
    """RFC 7162 §3.2.5: ``(QRESYNC (uidvalidity modseq [known-uids
    [(seq-match uid-match)]]))``."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    known_sequence: SequenceSet | None = None  # seq-match-data: sequence numbers ...
    known_sequence_uids: SequenceSet | None = None  # ... and the UIDs they had


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT, or EXAMINE when ``read_only``; ``condstore`` for the RFC 7162
    CONDSTORE parameter, ``qresync`` for QRESYNC's."""

    mailbox: str
    read_only: bool = False
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True, slots=True)
class Create(Command):
    """``special_use``: the RFC 6154 §3 ``USE (\\Drafts ...)`` attributes."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    mailbox: str
    new_name: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST, basic or extended (RFC 5258), with RFC 5819 ``RETURN (STATUS
    (...))`` and RFC 6154 SPECIAL-USE.  ``reference`` and ``patterns`` are
    decoded names that may hold the wildcards ``*`` and ``%``.
    ``selection``: SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE;
    ``returns``: SUBSCRIBED, CHILDREN, SPECIAL-USE (STATUS is
    ``status_items``, ``None`` when not asked).  ``extended`` tells the
    session to answer in the RFC 5258 form (child info, ``CHILDINFO``)."""

    reference: str
    patterns: tuple[str, ...]
    selection: frozenset[str] = frozenset()
    returns: frozenset[str] = frozenset()
    status_items: tuple[StatusItem, ...] | None = None
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    reference: str
    pattern: str


class StatusItem(Enum):
    """RFC 3501 §6.3.10, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE."""

    MESSAGES = "MESSAGES"
    RECENT = "RECENT"
    UIDNEXT = "UIDNEXT"
    UIDVALIDITY = "UIDVALIDITY"
    UNSEEN = "UNSEEN"
    HIGHESTMODSEQ = "HIGHESTMODSEQ"
    SIZE = "SIZE"
    DELETED = "DELETED"  # RFC 9051 §6.3.11


@dataclass(frozen=True, slots=True)
class Status(Command):
    mailbox: str
    items: tuple[StatusItem, ...]


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND (RFC 3501 §6.3.11; several with RFC 3502
    MULTIAPPEND).  ``binary`` when sent as ``literal8`` (RFC 3516 §4.4);
    ``data`` is then the message as it is stored, its binary parts in
    base64 (:mod:`~replicad.imap.binaryparts`)."""

    data: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Append(Command):
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class Idle(Command):
    """RFC 2177: the session sends ``+ idling`` and calls
    :meth:`~replicad.imap.parser.CommandParser.expect_idle_done`."""


# --- selected (RFC 3501 §6.4) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check(Command):
    pass


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    """RFC 3691."""


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or RFC 4315 ``UID EXPUNGE set`` when ``uids`` is given."""

    uids: SequenceSet | None = None


class SearchReturn(Enum):
    """RFC 4731 ESEARCH result options, RFC 5182 SAVE."""

    MIN = "MIN"
    MAX = "MAX"
    ALL = "ALL"
    COUNT = "COUNT"
    SAVE = "SAVE"


@dataclass(frozen=True, slots=True)
class Search(Command):
    """SEARCH / UID SEARCH.  ``returns`` is ``None`` for the RFC 3501
    ``* SEARCH`` answer; a set (RFC 4731: empty means ``ALL``) asks for the
    ``* ESEARCH`` answer.  Strings in ``criteria`` are decoded with
    ``charset`` (UTF-8 when absent, RFC 9051 §6.4.4)."""

    uid: bool
    criteria: SearchKey
    charset: str | None = None
    returns: frozenset[SearchReturn] | None = None


class FetchAttribute(Enum):
    """FETCH data items without a section (RFC 3501 §6.4.5, RFC 7162 MODSEQ)."""

    FLAGS = "FLAGS"
    UID = "UID"
    INTERNALDATE = "INTERNALDATE"
    RFC822 = "RFC822"
    RFC822_HEADER = "RFC822.HEADER"
    RFC822_TEXT = "RFC822.TEXT"
    RFC822_SIZE = "RFC822.SIZE"
    ENVELOPE = "ENVELOPE"
    BODY = "BODY"  # the non-extensible BODYSTRUCTURE
    BODYSTRUCTURE = "BODYSTRUCTURE"
    MODSEQ = "MODSEQ"


class SectionText(Enum):
    """RFC 3501 ``section-msgtext`` and ``MIME``."""

    HEADER = "HEADER"
    HEADER_FIELDS = "HEADER.FIELDS"
    HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
    TEXT = "TEXT"
    MIME = "MIME"


@dataclass(frozen=True, slots=True)
class Section:
    """A ``section-spec`` (RFC 3501 §6.4.5): ``part`` is the MIME part path
    (``(1, 2)`` for ``1.2``; empty for the whole message), ``text`` what of
    it, ``fields`` the header names of HEADER.FIELDS[.NOT] (as sent).
    ``Section()`` is ``BODY[]``, the whole message."""

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    fields: tuple[str, ...] = ()

    def render(self) -> str:
        """The section as it appears between brackets in a FETCH response."""
        parts = [".".join(str(n) for n in self.part)] if self.part else []
        if self.text is not None:
            parts.append(self.text.value)
        spec = ".".join(parts)
        if self.fields:
            spec += " (" + " ".join(_field_text(f) for f in self.fields) + ")"
        return spec


def _field_text(field: str) -> str:
    if field and all(0x21 <= ord(c) <= 0x7E and c not in '(){%*"\\]' for c in field):
        return field
    return '"' + field.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Partial:
    """``<start.count>``: ``count`` octets from ``start`` (RFC 3501 §6.4.5)."""

    start: int
    count: int


@dataclass(frozen=True, slots=True)
class FetchSimple:
    attribute: FetchAttribute

    def response_name(self) -> str:
        return self.attribute.value


@dataclass(frozen=True, slots=True)
class FetchBody:
    """``BODY[section]<partial>``, or ``BODY.PEEK[...]`` (``peek``: do not set
    \\Seen)."""

    section: Section
    partial: Partial | None = None
    peek: bool = False

    def response_name(self) -> str:
        """The item name of the answer: no ``.PEEK``, and only the start
        octet of a partial (RFC 3501 §7.4.2 ``BODY[<section>]<<origin octet>>``)."""
        origin = f"<{self.partial.start}>" if self.partial is not None else ""
        return f"BODY[{self.section.render()}]{origin}"


@dataclass(frozen=True, slots=True)
class FetchBinary:
    """RFC 3516 ``BINARY[part]<partial>`` / ``BINARY.PEEK``: the part with
    its content transfer encoding undone."""

    part: tuple[int, ...]
    partial: Partial | None = None
    peek: bool = False

    def response_name(self) -> str:
        origin = f"<{self.partial.start}>" if self.partial is not None else ""
        return f"BINARY[{'.'.join(str(n) for n in self.part)}]{origin}"


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    """RFC 3516 ``BINARY.SIZE[part]``."""

    part: tuple[int, ...]

    def response_name(self) -> str:
        return f"BINARY.SIZE[{'.'.join(str(n) for n in self.part)}]"


FetchItem = FetchSimple | FetchBody | FetchBinary | FetchBinarySize


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """FETCH / UID FETCH (macros ALL, FAST, FULL expanded).  RFC 7162:
    ``changed_since`` (CHANGEDSINCE) and ``vanished`` (VANISHED, UID FETCH
    only, with CHANGEDSINCE)."""

    uid: bool
    sequence: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None
    vanished: bool = False


class StoreMode(Enum):
    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True, slots=True)
class Store(Command):
    """STORE / UID STORE; ``silent`` for ``.SILENT``; RFC 7162
    ``unchanged_since`` (UNCHANGEDSINCE)."""

    uid: bool
    sequence: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class Copy(Command):
    uid: bool
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class Move(Command):
    """RFC 6851."""

    uid: bool
    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class UnknownCommand(Command):
    """A command name the server does not know (answered ``BAD``)."""

    name: str
