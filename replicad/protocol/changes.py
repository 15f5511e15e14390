"""Change-stream records: what a master streams to its peers, and their ACK (verbs.md §4).

Untagged, ``seq`` first: ``* SAVE``, ``* COPY``, ``* EXPUNGE``, ``* STORE``,
``* CREATE``, ``* RENAME``, ``* DELETE``, ``* SUBSCRIBE`` and ``* UPDATE``
(a logged merge),
acknowledged cumulatively by ``* ACK`` (I1, I8).  The UPDATE operations
(APPEND, FLAGS, EXPUNGE) are shared by the logged merge and by the UPDATE
command a master sends to one peer in a resync.  Wire names:
:mod:`replicad.protocol.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from replicad.blob import Blob
from replicad.protocol.fields import (
    BODY,
    FLAGS,
    GUID,
    GUID_CHECK,
    HASH,
    MAILBOX,
    MARKS,
    MAX_COUNTER,
    MAX_REFUSED,
    MBOX_ID,
    MODSEQ,
    SEQ,
    SIZE,
    STAMP,
    SUBSCRIBED,
    TIME,
    UID,
    UIDS,
    UIDVALIDITY,
    USER,
    ListOf,
    Optional,
    UInt,
    check_body_size,
    check_deltas,
)
from replicad.protocol.records import (
    Change,
    Command,
    Nested,
    OneOf,
    Record,
    UidGuid,
    Untagged,
)
from replicad.uidset import UidSet


@dataclass(frozen=True, slots=True)
class Ack(Untagged):
    """Cumulative acknowledgement: every change with ``seq`` <= this was
    received and, except those in ``refused``, applied durably.  A refused
    change (marked for resync here) is no copy: it never counts towards a
    write's durability level (I1)."""

    VERB = "ACK"
    SCHEMA = (UInt(0, MAX_COUNTER), ListOf(SEQ, MAX_REFUSED))
    seq: int
    refused: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SaveChange(Change):
    """A new message; ``body`` may be NIL when the master knows the peer holds it."""

    VERB = "SAVE"
    SCHEMA = (
        SEQ,
        MBOX_ID,
        UIDVALIDITY,
        UID,
        GUID,
        MODSEQ,
        TIME,
        FLAGS,
        STAMP,
        SIZE,
        HASH,
        Optional(BODY),
    )
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int  # of the master's UID space: another lineage's copy refuses it (I2)
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    flags: tuple[str, ...]
    stamp: int  # of the flags' registers (I5)
    size: int
    body_hash: bytes
    body: Blob | None

    def __post_init__(self) -> None:
        check_body_size(self.size, self.body)


@dataclass(frozen=True, slots=True)
class CopyEntry(Record):
    SCHEMA = (UID, UID, GUID, MODSEQ, TIME, FLAGS, STAMP, SIZE, HASH)
    source_uid: int
    uid: int
    guid: bytes  # kept by COPY: the same message identity in both mailboxes
    modseq: int
    internaldate: int
    flags: tuple[str, ...]
    stamp: int
    size: int
    body_hash: bytes


@dataclass(frozen=True, slots=True)
class CopyChange(Change):
    """Self-contained so a peer that expunged the source still makes the copy (I6)."""

    VERB = "COPY"
    SCHEMA = (SEQ, MBOX_ID, MBOX_ID, UIDVALIDITY, ListOf(Nested(CopyEntry)))
    MBOX_FIELDS = ("source", "dest")
    source: int
    dest: int
    uidvalidity: int  # of the destination's UID space (I2)
    entries: tuple[CopyEntry, ...]


@dataclass(frozen=True, slots=True)
class ExpungeChange(Change):
    """``guids[i]`` is the message GUID of the i-th UID (ascending): a copy
    that holds another message there diverged and must not expunge it (I6)."""

    VERB = "EXPUNGE"
    SCHEMA = (SEQ, MBOX_ID, UIDVALIDITY, UIDS, MODSEQ, ListOf(GUID, 100_000))
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uids: UidSet
    modseq: int
    guids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.guids) != self.uids.count():
            raise ValueError("one message GUID per expunged UID")


@dataclass(frozen=True, slots=True)
class StoreChange(Change):
    VERB = "STORE"
    """``guids[i]`` is the first 8 octets of the message GUID of the i-th UID
    (ascending): a copy holding another message there diverged and must not
    change it (I5, I6).  8 octets tell two random GUIDs apart but for a
    2^-64 chance, at half the bytes of a change that is otherwise ~12."""

    SCHEMA = (
        SEQ,
        MBOX_ID,
        UIDVALIDITY,
        UIDS,
        FLAGS,
        FLAGS,
        MODSEQ,
        STAMP,
        ListOf(GUID_CHECK, 100_000),
    )
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uids: UidSet
    add: tuple[str, ...]
    remove: tuple[str, ...]
    modseq: int
    stamp: int  # per-flag last writer wins after a partition (I5)
    guids: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_deltas(self.add, self.remove)
        if len(self.guids) != self.uids.count():
            raise ValueError("one message GUID per changed UID")


@dataclass(frozen=True, slots=True)
class CreateChange(Change):
    """``name`` is claimed at ``stamp`` (resync.md §5)."""

    VERB = "CREATE"
    SCHEMA = (SEQ, USER, MAILBOX, GUID, UIDVALIDITY, STAMP)
    user: str
    name: str
    guid: bytes
    uidvalidity: int
    stamp: int


@dataclass(frozen=True, slots=True)
class SubscribeChange(Change):
    """``user``'s subscription register for ``name`` is ``subscribed`` as of
    ``stamp`` (last writer wins per (user, name), verbs.md §4)."""

    VERB = "SUBSCRIBE"
    SCHEMA = (SEQ, USER, MAILBOX, SUBSCRIBED, STAMP)
    user: str
    name: str
    subscribed: int
    stamp: int


@dataclass(frozen=True, slots=True)
class GuidName(Record):
    SCHEMA = (GUID, MAILBOX)
    guid: bytes
    name: str


@dataclass(frozen=True, slots=True)
class RenameChange(Change):
    """The mailbox claims ``new_name`` at ``stamp``; ``children``: the
    mailboxes below it and their new claims, at the same stamp (resync.md §5)."""

    VERB = "RENAME"
    SCHEMA = (SEQ, USER, GUID, MAILBOX, MAILBOX, STAMP, ListOf(Nested(GuidName), 100_000))
    user: str
    guid: bytes
    old_name: str
    new_name: str
    stamp: int
    children: tuple[GuidName, ...]


@dataclass(frozen=True, slots=True)
class DeleteChange(Change):
    VERB = "DELETE"
    SCHEMA = (SEQ, USER, GUID, MAILBOX)
    user: str
    guid: bytes
    name: str


@dataclass(frozen=True, slots=True)
class UpdateAppend(Record):
    """Put a message at ``uid`` (new, or moved here by a conflict resolution)."""

    VERB = "APPEND"
    SCHEMA = (UID, GUID, MODSEQ, TIME, SIZE, HASH, MARKS, Optional(BODY))
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    size: int
    body_hash: bytes
    marks: tuple[tuple[str, int, bool], ...]
    body: Blob | None  # NIL: the receiver holds the body (HAVE)

    def __post_init__(self) -> None:
        check_body_size(self.size, self.body)


@dataclass(frozen=True, slots=True)
class UpdateFlags(Record):
    """The registers the master's merge decided (resync ships results; live
    changes ship deltas, I5) for the message the receiver holds at ``uid``."""

    VERB = "FLAGS"
    SCHEMA = (UID, MODSEQ, MARKS)
    uid: int
    modseq: int
    marks: tuple[tuple[str, int, bool], ...]


@dataclass(frozen=True, slots=True)
class UpdateExpunge(Record):
    """Tombstone ``uid`` (removing a live message there), naming every GUID it had (I3)."""

    VERB = "EXPUNGE"
    SCHEMA = (UID, MODSEQ, ListOf(GUID, 64), ListOf(Nested(UidGuid), 64))
    uid: int
    modseq: int
    guids: tuple[bytes, ...]
    moved: tuple[UidGuid, ...]


UpdateOp = UpdateAppend | UpdateFlags | UpdateExpunge
UPDATE_OPS: Final = ListOf(OneOf(UpdateAppend, UpdateFlags, UpdateExpunge), 100_000)


@dataclass(frozen=True, slots=True)
class Update(Command):
    """All changes bringing one mailbox to the merged state, applied in one
    transaction (seed 004 UPDATE).  Applied only if the receiver's
    HIGHESTMODSEQ still equals ``expected``, else NO CONFLICT."""

    VERB = "UPDATE"
    SCHEMA = (
        MBOX_ID,
        UIDVALIDITY,
        UID,
        MODSEQ,
        MODSEQ,
        Optional(GUID),
        UPDATE_OPS,
        MAILBOX,
        STAMP,
    )
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    expected: int
    #: The receiver's mailbox of that GUID, holding the name, is merged into
    #: this one and goes (its HIGHESTMODSEQ is ``expected``).
    replaces: bytes | None
    ops: tuple[UpdateOp, ...]
    #: The mailbox's name claim after the merge and its stamp: the receiver
    #: takes it if newer than its own, and creates a missing mailbox with
    #: it (resync.md §5).
    name: str
    stamp: int


@dataclass(frozen=True, slots=True)
class UpdateChange(Change):
    """The master applied a merge to its own copy: its followers that hold
    the state it merged from (``expected_digest``) apply the same ops."""

    VERB = "UPDATE"
    SCHEMA = (SEQ, MBOX_ID, UIDVALIDITY, UID, MODSEQ, MODSEQ, HASH, HASH, UPDATE_OPS)
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    expected: int
    expected_digest: bytes  # state digest the plan applies to (resync.md)
    result_digest: bytes  # state digest it produces
    ops: tuple[UpdateOp, ...]
