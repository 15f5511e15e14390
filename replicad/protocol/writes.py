"""Write records: the commands that reach a mailbox's master (verbs.md §3).

SAVE, COPY, EXPUNGE, STORE, the folder operations CREATE, RENAME and
DELETE, SUBSCRIBE (an IMAP subscription), and the migration's
IMPORT-MAILBOX and IMPORT (a mailbox under a given UIDVALIDITY, a message
at a given UID), each with its OK payload; a write arriving elsewhere is
forwarded to the master as one of these.  Wire names:
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
    MAILBOX,
    MBOX_ID,
    MODSEQ,
    NODE,
    STAMP,
    SUBSCRIBED,
    TIME,
    UID,
    UIDS,
    UIDS_OR_STAR,
    UIDVALIDITY,
    USER,
    ListOf,
    Optional,
    check_deltas,
)
from replicad.protocol.records import (
    Command,
    Nested,
    Record,
    UidGuid,
)
from replicad.uidset import UidSet


@dataclass(frozen=True, slots=True)
class SaveOk(Record):
    """``uidvalidity``: of the UID space the UID belongs to (RFC 4315 APPENDUID);
    after a partition the master's copy may be under another one than the
    caller's, until the resync."""

    SCHEMA = (UID, MODSEQ, NODE, UIDVALIDITY)
    uid: int
    modseq: int
    master: str  # the node that assigned the UID (lets the caller refresh its cache)
    uidvalidity: int


@dataclass(frozen=True, slots=True)
class Save(Command):
    VERB = "SAVE"
    SCHEMA = (MBOX_ID, TIME, GUID, FLAGS, BODY)
    REPLY = SaveOk
    MBOX_FIELDS = ("mbox",)
    mbox: int
    internaldate: int
    guid: bytes
    flags: tuple[str, ...]
    body: Blob  # stored form: the master keeps it as it came, once verified


@dataclass(frozen=True, slots=True)
class CopyOk(Record):
    """RFC 4315 COPYUID: the n-th UID of ``source`` was copied to the n-th of
    ``dest``, as a new message instance with the n-th of ``guids`` (a copy has
    a GUID of its own; its body is shared by hash)."""

    SCHEMA = (UIDS, UIDS, MODSEQ, UIDVALIDITY, ListOf(GUID, 100_000))
    source: UidSet
    dest: UidSet
    modseq: int
    uidvalidity: int  # of ``dest`` (COPYUID)
    guids: tuple[bytes, ...]


#: ``((uid guid)…)|NIL``: the message GUIDs the sender sees under the UIDs it
#: names; the master refuses (NO TEMPFAIL) when it holds other messages there.
EXPECT: Final = Optional(ListOf(Nested(UidGuid), 100_000))


@dataclass(frozen=True, slots=True)
class Copy(Command):
    VERB = "COPY"
    SCHEMA = (MBOX_ID, MBOX_ID, UIDS_OR_STAR, EXPECT)
    REPLY = CopyOk
    MBOX_FIELDS = ("source", "dest")
    source: int
    dest: int
    uids: UidSet
    expect: tuple[UidGuid, ...] | None = None


@dataclass(frozen=True, slots=True)
class ExpungeOk(Record):
    SCHEMA = (Optional(UIDS), MODSEQ)
    expunged: UidSet | None
    modseq: int


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    VERB = "EXPUNGE"
    SCHEMA = (MBOX_ID, UIDS_OR_STAR, EXPECT)
    REPLY = ExpungeOk
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uids: UidSet
    expect: tuple[UidGuid, ...] | None = None


@dataclass(frozen=True, slots=True)
class StoreOk(Record):
    """``rejected``: UIDs left alone because their modseq exceeded UNCHANGEDSINCE
    (RFC 7162 §3.1.3 MODIFIED)."""

    SCHEMA = (MODSEQ, Optional(UIDS))
    modseq: int
    rejected: UidSet | None


@dataclass(frozen=True, slots=True)
class Store(Command):
    """Flag deltas, never states (I5); ``unchangedsince`` is RFC 7162 CONDSTORE."""

    VERB = "STORE"
    SCHEMA = (MBOX_ID, UIDS_OR_STAR, FLAGS, FLAGS, Optional(MODSEQ), EXPECT)
    REPLY = StoreOk
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uids: UidSet
    add: tuple[str, ...]
    remove: tuple[str, ...]
    unchangedsince: int | None
    expect: tuple[UidGuid, ...] | None = None

    def __post_init__(self) -> None:
        check_deltas(self.add, self.remove)


@dataclass(frozen=True, slots=True)
class MailboxOk(Record):
    """The mailbox a namespace command created, renamed or deleted."""

    SCHEMA = (GUID, UIDVALIDITY)
    guid: bytes
    uidvalidity: int


@dataclass(frozen=True, slots=True)
class CreateMailbox(Command):
    """Create ``name``; sent to the master of the user's namespace (masters.NAMESPACE)."""

    VERB = "CREATE"
    SCHEMA = (USER, MAILBOX)
    REPLY = MailboxOk
    user: str
    name: str


@dataclass(frozen=True, slots=True)
class RenameMailbox(Command):
    """Rename ``old_name``; the mailbox GUID survives (seed 004 rename detection)."""

    VERB = "RENAME"
    SCHEMA = (USER, MAILBOX, MAILBOX)
    REPLY = MailboxOk
    user: str
    old_name: str
    new_name: str


@dataclass(frozen=True, slots=True)
class DeleteMailbox(Command):
    VERB = "DELETE"
    SCHEMA = (USER, MAILBOX)
    REPLY = MailboxOk
    user: str
    name: str


@dataclass(frozen=True, slots=True)
class SubscribeOk(Record):
    """The hybrid-clock stamp the master gave the subscription's register."""

    SCHEMA = (STAMP,)
    stamp: int


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    """Set ``user``'s subscription to ``name`` (1: SUBSCRIBE, 0: UNSUBSCRIBE);
    sent to the master of the user's namespace.  ``name`` need not exist
    (RFC 3501 §6.3.6)."""

    VERB = "SUBSCRIBE"
    SCHEMA = (USER, MAILBOX, SUBSCRIBED)
    REPLY = SubscribeOk
    user: str
    name: str
    subscribed: int


@dataclass(frozen=True, slots=True)
class ImportMailbox(Command):
    """Create ``name`` under the source server's ``uidvalidity`` (a migration
    keeps it so clients keep their caches); to the namespace's master."""

    VERB = "IMPORT-MAILBOX"
    SCHEMA = (USER, MAILBOX, UIDVALIDITY)
    REPLY = MailboxOk
    user: str
    name: str
    uidvalidity: int


@dataclass(frozen=True, slots=True)
class Import(Command):
    """SAVE at a given ``uid`` (the source server's), at or above UIDNEXT (I3)."""

    VERB = "IMPORT"
    SCHEMA = (MBOX_ID, UID, TIME, GUID, FLAGS, BODY)
    REPLY = SaveOk
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uid: int
    internaldate: int
    guid: bytes
    flags: tuple[str, ...]
    body: Blob
