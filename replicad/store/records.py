"""Records the store hands out: mailbox status, message metadata, change records.

Every client-visible write is one transaction that returns one change record
(docs/architecture.md §5).  Change records are what the replication engine ships to peers:
they carry flag *deltas*, never flag states (I5), and every message change
carries the MODSEQ the master assigned (I3).
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from replicad.flags import sorted_flags
from replicad.model.merge import MergePlan


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """IMAP STATUS-like view of one mailbox (fields of architecture.md §9 ``mailbox status``)."""

    user: str
    name: str
    guid: bytes  # 16 bytes, stable across renames (seed 004: rename detection)
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    vsize: int  # sum of message sizes in bytes
    #: The name a client last gave it and when (replicad.store.namespace);
    #: ``name`` differs from ``claim`` while a newer claim holds that name.
    claim: str = ""
    name_stamp: int = 0


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Metadata of one message as FETCH returns it."""

    uid: int
    guid: bytes  # 16 bytes: the message identity, kept by COPY (seed 001 "global UID")
    modseq: int
    flags: tuple[str, ...]  # canonical order, see replicad.flags.sorted_flags
    internaldate: int  # seconds since the epoch, UTC
    size: int
    body_hash: bytes  # 32 bytes: SHA-256 of the raw message, the blob key


#: Array type codes: UIDs are 32-bit (RFC 3501 §2.3.1.1); modseqs, dates and
#: sizes 64-bit (RFC 7162 mod-sequence-value is 63-bit).
UID_TYPE = "I"
U64_TYPE = "Q"
I64_TYPE = "q"


@dataclass(frozen=True, slots=True)
class MessageColumns:
    """Every message of one mailbox, ascending by UID, one column per field.

    The arrays are never changed once built (copy, then change the copy):
    IMAP sessions share one instance.  ``flags[i]`` is one of a few shared
    tuples, in canonical order (``replicad.flags.sorted_flags``).
    """

    uids: array[int]
    modseqs: array[int]
    flags: tuple[tuple[str, ...], ...]
    internaldates: array[int]
    sizes: array[int]

    def __len__(self) -> int:
        return len(self.uids)


@dataclass(frozen=True, slots=True)
class ChangeSet:
    """Answer to "changes since MODSEQ n" (RFC 7162 CHANGEDSINCE + QRESYNC VANISHED)."""

    highestmodseq: int
    changed: tuple[MessageInfo, ...]  # messages whose modseq > n, ascending UID
    vanished: tuple[int, ...]  # UIDs expunged with a modseq > n, ascending


# --- change records ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """Base of change records; ``user`` routes the change to its mailbox master."""

    user: str


@dataclass(frozen=True, slots=True)
class MailboxCreated(Change):
    """``name`` is the mailbox's claim, made at hybrid-clock ``stamp``
    (replicad.store.namespace)."""

    name: str
    mailbox: bytes
    uidvalidity: int
    stamp: int = 0


@dataclass(frozen=True, slots=True)
class MailboxRenamed(Change):
    """The mailbox now claims ``new_name`` as of ``stamp`` (last writer wins,
    replicad.store.namespace); ``children``: ``(guid, new claim)`` of every
    mailbox below it, renamed with it (RFC 3501 §6.3.5) at the same stamp."""

    mailbox: bytes
    old_name: str
    new_name: str
    stamp: int = 0
    children: tuple[tuple[bytes, str], ...] = ()


@dataclass(frozen=True, slots=True)
class MailboxDeleted(Change):
    mailbox: bytes
    name: str


@dataclass(frozen=True, slots=True)
class MessageAppended(Change):
    """A SAVE or one message of a COPY: a new UID in ``mailbox``."""

    mailbox: bytes
    uid: int
    guid: bytes
    modseq: int
    flags: tuple[str, ...]
    internaldate: int
    size: int
    body_hash: bytes
    #: Hybrid-clock stamp of the flags' registers (replicad.store.marks, I5).
    stamp: int = 0
    #: UIDVALIDITY of the UID space the record numbers (I2): a copy under
    #: another one is another lineage and must not apply it.  0 in records
    #: logged before it was kept: unknown, not checked.
    uidvalidity: int = 0


@dataclass(frozen=True, slots=True)
class MessagesCopied(Change):
    """A COPY: ``appended[i]`` is the copy of source UID ``source_uids[i]`` (RFC 4315 COPYUID)."""

    source_mailbox: bytes
    source_uids: tuple[int, ...]
    appended: tuple[MessageAppended, ...]


@dataclass(frozen=True, slots=True)
class FlagsChanged(Change):
    """A STORE: ``uids`` got ``+added -removed`` and the new ``modseq`` (I5: deltas).

    ``rejected`` lists UIDs left alone because their modseq was above the
    UNCHANGEDSINCE value (RFC 7162 §3.1.3 MODIFIED).  When nothing changed,
    ``uids`` is empty and ``modseq`` is the unchanged HIGHESTMODSEQ.
    """

    mailbox: bytes
    uids: tuple[int, ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    modseq: int
    rejected: tuple[int, ...] = ()
    #: Hybrid-clock stamp of the deltas: per-flag last writer wins (I5).
    stamp: int = 0
    #: UIDVALIDITY of the UID space the record numbers (I2): a copy under
    #: another one is another lineage and must not apply it.  0 in records
    #: logged before it was kept: unknown, not checked.
    uidvalidity: int = 0
    #: ``guids[i]`` is the message GUID at ``uids[i]`` (from the wire, its first
    #: 8 octets): a copy holding another message there diverged and must not
    #: change its flags (I5, I6).  Empty in records logged before it was
    #: kept: unknown, not checked.
    guids: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class MessagesExpunged(Change):
    """An EXPUNGE: each (uid, message guid) became a tombstone at ``modseq`` (I3)."""

    mailbox: bytes
    expunged: tuple[tuple[int, bytes], ...]
    modseq: int
    #: UIDVALIDITY of the UID space the record numbers (I2): a copy under
    #: another one is another lineage and must not apply it.  0 in records
    #: logged before it was kept: unknown, not checked.
    uidvalidity: int = 0


@dataclass(frozen=True, slots=True)
class MailboxMerged(Change):
    """The master applied a resync merge to its own copy of ``mailbox``.

    ``plan`` holds absolute operations (put this message at this UID,
    tombstone this UID) computed against the state with digest
    ``expected_digest`` (HIGHESTMODSEQ ``expected``): a follower holding
    exactly that state applies the same plan and reaches the merged state
    (I4); a follower already at ``result_digest`` has nothing to do; any
    other marks the mailbox for a resync with the master instead.
    """

    mailbox: bytes
    expected: int
    plan: MergePlan
    #: :func:`replicad.model.digest.state_digest` of the state the plan was
    #: computed from, and of the state it produces.
    expected_digest: bytes = b""
    result_digest: bytes = b""
    #: Body hashes of live messages of the state ``expected_digest`` describes:
    #: a follower that applies the plan holds them there, so the stream
    #: sends those bodies to nobody (resync.md §7).
    held: frozenset[bytes] = frozenset()
    #: The peer whose resync produced the merge: its UPDATE brings it the
    #: merged state, so the stream does not send it the plan (resync.md §7).
    #: "" when not known (a merge received from another node).
    peer: str = ""


@dataclass(frozen=True, slots=True)
class SubscriptionChanged(Change):
    """``user``'s subscription to ``name`` is ``subscribed`` as of hybrid-clock
    ``stamp``: a last-writer-wins register per (user, name), which needs no
    mailbox (replicad.store.subscriptions)."""

    name: str
    subscribed: bool
    stamp: int


def flags_tuple(flags: frozenset[str] | set[str] | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted_flags(flags))
