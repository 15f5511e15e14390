"""The registry: every record's permanent wire name, and frames typed by it.

The two tables below are the one place that says which verb names which
record class: :data:`COMMANDS` (tagged requests) and
:data:`UNTAGGED_RECORDS` (untagged data, including the change stream).
A verb, once shipped, names its record for good: nodes of different
releases meet on the wire, so a record's fields change only with
``PROTOCOL_VERSION`` (HELLO) and a verb is never reused for another
record.  Each class also carries its verb (``VERB``, what encoding uses);
the tables are checked against it at import.  The kinds of UPDATE's
operations (``APPEND``, ``FLAGS``, ``EXPUNGE``) are the third and last set
of wire names, kept with the operations (``UPDATE_OPS`` in
:mod:`replicad.protocol.changes`).

:func:`decode` turns a frame into a :class:`CommandFrame`,
:class:`UntaggedFrame` or :class:`ReplyFrame`; the ``encode_*`` functions
go the other way.  Malformed fields raise
:class:`~replicad.errors.ProtocolError` only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final, TypeVar

from replicad.errors import ProtocolError
from replicad.protocol.changes import (
    Ack,
    CopyChange,
    CopyEntry,
    CreateChange,
    DeleteChange,
    ExpungeChange,
    RenameChange,
    SaveChange,
    StoreChange,
    SubscribeChange,
    Update,
    UpdateAppend,
    UpdateChange,
    UpdateExpunge,
    UpdateFlags,
)
from replicad.protocol.cluster import (
    Epoch,
    Master,
    MasterMove,
    Root,
    Route,
    Routes,
)
from replicad.protocol.fields import (
    ATOM,
    MAX_TAG_LEN,
    REASON,
    Pattern,
    slot_setter,
)
from replicad.protocol.frames import UNTAGGED, Frame, Value
from replicad.protocol.records import (
    Command,
    Record,
    UidGuid,
    Untagged,
    record_decoder,
)
from replicad.protocol.resync import (
    Digest,
    DigestData,
    Fetch,
    FetchData,
    Have,
    MailboxData,
    Mailboxes,
    Reserve,
    Resync,
    ResyncItem,
    StateGone,
    StateMessage,
    SubscriptionItem,
    Subscriptions,
    Sync,
    SyncData,
)
from replicad.protocol.session import (
    Compress,
    Fatal,
    Hello,
    Mbox,
    Ping,
)
from replicad.protocol.writes import (
    Copy,
    CreateMailbox,
    DeleteMailbox,
    Expunge,
    Import,
    ImportMailbox,
    RenameMailbox,
    Save,
    Store,
    Subscribe,
)

_TAG_RE: Final = re.compile(r"[A-Za-z0-9.]{1,16}")


class Status(Enum):
    OK = "OK"
    NO = "NO"
    BAD = "BAD"


#: NO codes (verbs.md §"NO codes").  Unknown codes are accepted: they are atoms.
NO_CODES: Final = frozenset(
    {
        "NOTMASTER",
        "NONEXISTENT",
        "DELETED",
        "UIDVALIDITY",
        "CONFLICT",
        "TEMPFAIL",
        "DURABILITY",
        "UNREACHABLE",
        "UNSUPPORTED",
        "OVERQUOTA",
    }
)

RecordT = TypeVar("RecordT", bound=Record)


def _by_verb(table: dict[str, type[RecordT]]) -> dict[str, type[RecordT]]:
    """``table``, once checked against each class's own ``VERB`` (what encoding
    writes): the table and the classes can never disagree on a wire name."""
    for verb, cls in table.items():
        if verb != cls.VERB:
            raise TypeError(
                f"registry: {cls.__name__}.VERB is {cls.VERB!r}, the table says {verb!r}"
            )
    return table


#: Tagged requests, ``[tag, VERB, fields...]``: verb -> record (verbs.md).
#: Permanent: a verb is never renamed or given to another record.
COMMANDS: Final[dict[str, type[Command]]] = _by_verb(
    {
        # session (verbs.md §1)
        "PING": Ping,
        "COMPRESS": Compress,
        "MBOX": Mbox,
        # cluster (verbs.md §2)
        "ROOT": Root,
        "MASTER": Master,
        "MASTER-MOVE": MasterMove,
        # writes to a mailbox's master (verbs.md §3)
        "SAVE": Save,
        "COPY": Copy,
        "EXPUNGE": Expunge,
        "STORE": Store,
        "CREATE": CreateMailbox,
        "RENAME": RenameMailbox,
        "DELETE": DeleteMailbox,
        "SUBSCRIBE": Subscribe,
        # migration writes (verbs.md §3)
        "IMPORT-MAILBOX": ImportMailbox,
        "IMPORT": Import,
        # resync (verbs.md §5)
        "SYNC": Sync,
        "FETCH": Fetch,
        "MAILBOXES": Mailboxes,
        "DIGEST": Digest,
        "HAVE": Have,
        "RESERVE": Reserve,
        "UPDATE": Update,
        "RESYNC": Resync,
        "SUBSCRIPTIONS": Subscriptions,
    }
)
#: Untagged data, ``["*", VERB, fields...]``: verb -> record (verbs.md).
#: Permanent as :data:`COMMANDS`; a verb may name a command and an untagged
#: record both (``SAVE`` the write, ``* SAVE`` its change).
UNTAGGED_RECORDS: Final[dict[str, type[Untagged]]] = _by_verb(
    {
        # session
        "HELLO": Hello,
        "BAD": Fatal,
        # change stream (verbs.md §4)
        "ACK": Ack,
        # cluster
        "EPOCH": Epoch,
        "ROUTES": Routes,
        # change stream
        "SAVE": SaveChange,
        "COPY": CopyChange,
        "EXPUNGE": ExpungeChange,
        "STORE": StoreChange,
        "CREATE": CreateChange,
        "RENAME": RenameChange,
        "DELETE": DeleteChange,
        "SUBSCRIBE": SubscribeChange,
        "UPDATE": UpdateChange,
        # resync
        "SYNC": SyncData,
        "FETCH": FetchData,
        "MAILBOX": MailboxData,
        "DIGEST": DigestData,
    }
)


@dataclass(frozen=True, slots=True)
class CommandFrame:
    tag: str
    command: Command


@dataclass(frozen=True, slots=True)
class UntaggedFrame:
    data: Untagged


@dataclass(frozen=True, slots=True)
class ReplyFrame:
    """A tagged reply.  ``fields`` is the OK payload (typed by :func:`decode_ok`),
    or ``[code, text]`` for NO, or ``[text]`` for BAD."""

    tag: str
    status: Status
    fields: tuple[Value, ...]

    @property
    def code(self) -> str | None:
        return str(self.fields[0]) if self.status is Status.NO else None

    @property
    def text(self) -> str:
        return "" if self.status is Status.OK else str(self.fields[-1])


Message = CommandFrame | UntaggedFrame | ReplyFrame

_check_tag: Final = Pattern(_TAG_RE, "a tag of 1..16 characters [A-Za-z0-9.]").checker("tag")
_check_code: Final = ATOM.checker("code")
_check_text: Final = REASON.checker("text")
_STATUSES: Final = {s.value: s for s in Status}
# Built at import, not on first use: a record class whose checkers cannot be
# built (SCHEMA out of step with its fields) fails loudly here.
_COMMAND_DECODERS: Final = {verb: record_decoder(cls) for verb, cls in COMMANDS.items()}
_UNTAGGED_DECODERS: Final = {verb: record_decoder(cls) for verb, cls in UNTAGGED_RECORDS.items()}


_set_frame_tag: Final = slot_setter(CommandFrame, "tag")
_set_frame_command: Final = slot_setter(CommandFrame, "command")


def _command_frame(tag: str, command: Command) -> CommandFrame:
    """``CommandFrame(tag, command)`` without the generic frozen ``__init__``
    (decode() builds one per received command)."""
    message = object.__new__(CommandFrame)
    _set_frame_tag(message, tag)
    _set_frame_command(message, command)
    return message


def decode(frame: Frame) -> Message:
    """Type a frame (as returned by the frame decoder) or raise :class:`ProtocolError`.

    ``frame`` is a list of at least two values (what FrameDecoder and the
    text parser guarantee); this checks all of them: the tag (``*`` or
    1..16 of ``[A-Za-z0-9.]``), the verb (a known one), and every field
    against the verb's schema (:func:`record_decoder`).
    """
    try:
        tag, verb = frame[0], frame[1]
    except IndexError:
        raise ProtocolError("frame has no verb") from None
    if type(tag) is not str or type(verb) is not str:
        raise ProtocolError("frame tag or verb is not a string")
    fields = frame[2:]
    if tag == UNTAGGED:
        decode_untagged = _UNTAGGED_DECODERS.get(verb)
        if decode_untagged is None:
            raise ProtocolError(f"unknown untagged verb {verb!r}")
        return UntaggedFrame(decode_untagged(fields))
    # Counter tags ("k2p") are alphanumeric; the regex is for the rest.
    if not (len(tag) <= MAX_TAG_LEN and tag.isascii() and tag.isalnum()):
        _check_tag(tag)
    status = _STATUSES.get(verb)
    if status is not None:
        if status is Status.NO:
            if len(fields) != 2:
                raise ProtocolError("NO: expected a code and a text")
            _check_code(fields[0])
            _check_text(fields[1])
        elif status is Status.BAD:
            if len(fields) != 1:
                raise ProtocolError("BAD: expected a text")
            _check_text(fields[0])
        return ReplyFrame(tag, status, tuple(fields))
    decode_command = _COMMAND_DECODERS.get(verb)
    if decode_command is None:
        raise ProtocolError(f"unknown verb {verb!r}")
    return _command_frame(tag, decode_command(fields))


def decode_ok(command: type[Command], reply: ReplyFrame) -> Record:
    """The typed OK payload of ``reply``, answering a ``command``."""
    if reply.status is not Status.OK:
        raise ProtocolError(f"{reply.status.value} has no OK payload")
    return command.REPLY.from_fields(reply.fields)


def encode_command(tag: str, command: Command) -> Frame:
    return [tag, command.VERB, *command.to_fields()]


def encode_untagged(data: Untagged) -> Frame:
    return [UNTAGGED, data.VERB, *data.to_fields()]


def encode_ok(tag: str, payload: Record | None = None) -> Frame:
    return [tag, "OK", *(payload.to_fields() if payload is not None else ())]


def encode_no(tag: str, code: str, text: str) -> Frame:
    return [tag, "NO", code, text]


def encode_bad(tag: str, text: str) -> Frame:
    return [tag, "BAD", text]


def mbox_ids(record: Record) -> list[int]:
    """The session-local mailbox ids ``record`` references."""
    return [getattr(record, name) for name in record.MBOX_FIELDS]


ALL_RECORDS: Final[tuple[type[Record], ...]] = (
    *COMMANDS.values(),
    *UNTAGGED_RECORDS.values(),
    *{c.REPLY for c in COMMANDS.values()},
    Route,
    UidGuid,
    ResyncItem,
    CopyEntry,
    StateMessage,
    StateGone,
    UpdateAppend,
    UpdateFlags,
    UpdateExpunge,
    SubscriptionItem,
)
