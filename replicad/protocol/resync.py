"""Resync records: state, bodies, digests and the requests around a merge (verbs.md §5, resync.md).

SYNC and ``* SYNC`` (a mailbox's state, whole or since a modseq), RESYNC
(asking a master to resync), FETCH and ``* FETCH`` (bodies), MAILBOXES and
``* MAILBOX``, DIGEST and ``* DIGEST`` (the digest descent), HAVE and
RESERVE (bodies the peer holds).  The UPDATE that ends a resync is with
the change stream (:mod:`replicad.protocol.changes`).  Wire names:
:mod:`replicad.protocol.registry`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from replicad.blob import Blob
from replicad.protocol.fields import (
    BODY,
    FLAGS,
    GUID,
    HASH,
    MAILBOX,
    MARKS,
    MBOX_ID,
    MODSEQ,
    SIZE,
    STAMP,
    SUBSCRIBED,
    TIME,
    U32,
    UID,
    UIDS,
    UIDS_OR_STAR,
    UIDVALIDITY,
    USER,
    ListOf,
    Optional,
    Pattern,
    UInt,
    check_body_size,
)
from replicad.protocol.records import (
    Command,
    Nested,
    Record,
    UidGuid,
    Untagged,
)
from replicad.uidset import UidSet

#: Most entries in one ``* SYNC`` frame (keeps frames far below the maximum).
SYNC_CHUNK: Final = 512


@dataclass(frozen=True, slots=True)
class StateMessage(Record):
    """One live message of a mailbox state, as the merge needs it (resync.md)."""

    SCHEMA = (UID, GUID, MODSEQ, TIME, SIZE, HASH, MARKS)
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    size: int
    body_hash: bytes
    marks: tuple[tuple[str, int, bool], ...]


@dataclass(frozen=True, slots=True)
class StateGone(Record):
    """One tombstone: the UID, its modseq, every message GUID it ever named and
    where a UID collision moved them (``(new-uid guid)``, resync.md rule 6)."""

    SCHEMA = (UID, MODSEQ, ListOf(GUID, 64), ListOf(Nested(UidGuid), 64))
    uid: int
    modseq: int
    guids: tuple[bytes, ...]
    moved: tuple[UidGuid, ...]


@dataclass(frozen=True, slots=True)
class SyncState(Record):
    """``guid``: the mailbox the state is of.  Another GUID than the SYNC's
    binding means the receiver holds another mailbox under that name (both
    sides of a partition created it): resync.md, mailbox conflicts.
    ``rest``: the digest of the entries *not* sent (resync.md, incremental
    SYNC), by which the requester checks that it holds them too."""

    SCHEMA = (UIDVALIDITY, UID, MODSEQ, GUID, HASH, MAILBOX, STAMP)
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    guid: bytes
    rest: bytes
    #: The mailbox's name claim there and its stamp (resync.md §5).
    name: str
    stamp: int


@dataclass(frozen=True, slots=True)
class Sync(Command):
    """Send me your state of ``mbox``: every message and tombstone whose modseq
    is above ``since`` (0: all) or whose UID is in ``uids``, as ``* SYNC``
    frames; OK carries the mailbox's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ
    and the digest of the rest (QRESYNC-like, RFC 7162 §3.2)."""

    VERB = "SYNC"
    SCHEMA = (MBOX_ID, MODSEQ, Optional(UIDS))
    MBOX_FIELDS = ("mbox",)
    REPLY = SyncState
    mbox: int
    since: int
    uids: UidSet | None = None


@dataclass(frozen=True, slots=True)
class SyncData(Untagged):
    VERB = "SYNC"
    # ``mbox`` is the id the SYNC named, in the *requester's* table: a
    # reply's data, not a binding of the sender's (so no MBOX_FIELDS).
    SCHEMA = (
        MBOX_ID,
        ListOf(Nested(StateMessage), SYNC_CHUNK),
        ListOf(Nested(StateGone), SYNC_CHUNK),
    )
    mbox: int
    messages: tuple[StateMessage, ...]
    gone: tuple[StateGone, ...]


@dataclass(frozen=True, slots=True)
class ResyncItem(Record):
    """``since``: the lowest modseq at which the sender's copy may differ
    from the master's (0: unknown), a hint for an incremental SYNC."""

    SCHEMA = (USER, MAILBOX, MODSEQ)
    user: str
    name: str
    since: int


@dataclass(frozen=True, slots=True)
class Resync(Command):
    """The sender holds resync marks for these mailboxes, of which the receiver
    is the master: please SYNC them (OK at once; the work is queued).  Named,
    not by GUID: the two copies may be different mailboxes of one name."""

    VERB = "RESYNC"
    SCHEMA = (ListOf(Nested(ResyncItem), 10_000),)
    mailboxes: tuple[ResyncItem, ...]


@dataclass(frozen=True, slots=True)
class SubscriptionItem(Record):
    """One subscription register (verbs.md §5 SUBSCRIPTIONS)."""

    SCHEMA = (USER, MAILBOX, SUBSCRIBED, STAMP)
    user: str
    name: str
    subscribed: int
    stamp: int


@dataclass(frozen=True, slots=True)
class SubscriptionsOk(Record):
    """The receiver's digest of its subscription table, after the merge."""

    SCHEMA = (HASH,)
    digest: bytes


#: Most registers in one SUBSCRIPTIONS (bounded frames, I9).
MAX_SUBSCRIPTION_ITEMS: Final = 4096


@dataclass(frozen=True, slots=True)
class Subscriptions(Command):
    """Merge these subscription registers (last writer wins per (user, name))
    and answer the digest of every register held.  ``digest`` is the
    sender's, before the merge.  Sent first with no registers: equal digests,
    nothing to push; else each side pushes the other what it holds
    (resync.md §10)."""

    VERB = "SUBSCRIPTIONS"
    SCHEMA = (HASH, ListOf(Nested(SubscriptionItem), MAX_SUBSCRIPTION_ITEMS))
    REPLY = SubscriptionsOk
    digest: bytes
    items: tuple[SubscriptionItem, ...]


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """Answered by one ``* FETCH`` per existing UID, then OK."""

    VERB = "FETCH"
    SCHEMA = (MBOX_ID, UIDS_OR_STAR, Pattern(re.compile("META|BODY"), "META or BODY"))
    MBOX_FIELDS = ("mbox",)
    mbox: int
    uids: UidSet
    what: str


@dataclass(frozen=True, slots=True)
class FetchData(Untagged):
    VERB = "FETCH"
    # ``mbox``: the FETCH's id, in the requester's table (see SyncData).
    SCHEMA = (MBOX_ID, UID, GUID, MODSEQ, TIME, FLAGS, SIZE, HASH, Optional(BODY))
    mbox: int
    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    flags: tuple[str, ...]
    size: int
    body_hash: bytes
    body: Blob | None

    def __post_init__(self) -> None:
        check_body_size(self.size, self.body)


@dataclass(frozen=True, slots=True)
class Mailboxes(Command):
    """State of every mailbox of the users in these buckets (seed 004
    MAILBOXES): ``* MAILBOX``s, then OK."""

    VERB = "MAILBOXES"
    SCHEMA = (ListOf(UInt(0, 0xFFFF), 65_536),)
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class MailboxData(Untagged):
    """``digest``: the mailbox's state digest (resync.md §6)."""

    VERB = "MAILBOX"
    SCHEMA = (USER, MAILBOX, GUID, UIDVALIDITY, UID, MODSEQ, U32, HASH)
    user: str
    name: str
    guid: bytes
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class Digest(Command):
    """Digests of user buckets (< 65536) or groups (65536 + first octet);
    ``()`` asks for the node's whole digest (I8, resync.md §6)."""

    VERB = "DIGEST"
    SCHEMA = (ListOf(UInt(0, 0x100FF), 65_536),)
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class DigestData(Untagged):
    VERB = "DIGEST"
    SCHEMA = (Optional(U32), U32, HASH)
    bucket: int | None  # NIL: the whole-cluster digest
    users: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class HashList(Record):
    SCHEMA = (ListOf(HASH),)
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Have(Command):
    """Which of these bodies does the receiver hold?  OK lists the present ones."""

    VERB = "HAVE"
    SCHEMA = (ListOf(HASH),)
    REPLY = HashList
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Reserve(Command):
    """Like HAVE, and pins the present bodies for this link until UPDATE or close
    (seed 004 RESERVE), scanning the listed mailboxes first."""

    VERB = "RESERVE"
    SCHEMA = (ListOf(GUID, 10_000), ListOf(HASH))
    REPLY = HashList
    mailboxes: tuple[bytes, ...]
    hashes: tuple[bytes, ...]
