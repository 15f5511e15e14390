"""A mailbox's message metadata read as columns (what IMAP SELECT and
metadata FETCH need), decoded in one pass over the message rows.

Building one :class:`~replicad.store.records.MessageInfo` per message and
decoding every per-flag register (I5) costs more than the rest of a SELECT
of a large mailbox; the columns decode only UID, MODSEQ, flags, internal
date and size, keep the numbers in compact arrays and share one tuple per
distinct flag set (a mailbox has few), so that the snapshot is cheap to
build and cheap to keep and share between IMAP sessions.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from replicad.store.records import (
    I64_TYPE,
    U64_TYPE,
    UID_TYPE,
    ChangeSet,
    MailboxStatus,
    MessageColumns,
)
from replicad.store.schema import Databases, message_key, uid_of_message_key

if TYPE_CHECKING:
    from replicad.store.index import MailIndex

def read_columns(txn: Any, dbs: Databases, mailbox: bytes) -> MessageColumns:
    """The columns of mailbox ``mailbox`` (its GUID) in read transaction ``txn``.

    Rows are laid out as :class:`~replicad.store.schema.MessageRow` encodes
    them: ``[guid, modseq, flags, internaldate, size, body_hash, marks]``.
    """
    uids: array[int] = array(UID_TYPE)
    modseqs: array[int] = array(U64_TYPE)
    dates: array[int] = array(I64_TYPE)
    sizes: array[int] = array(U64_TYPE)
    flags: list[tuple[str, ...]] = []
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    unpackb = msgpack.unpackb
    with txn.cursor(db=dbs.messages) as cur:
        if cur.set_range(message_key(mailbox, 0)):
            for key, value in cur:
                key = bytes(key)
                if key[:16] != mailbox:
                    break
                row = unpackb(value, raw=False)
                uids.append(uid_of_message_key(key))
                modseqs.append(row[1])
                flagset = tuple(row[2])
                flags.append(shared.setdefault(flagset, flagset))
                dates.append(row[3])
                sizes.append(row[4])
    return MessageColumns(uids, modseqs, tuple(flags), dates, sizes)


@dataclass(frozen=True, slots=True)
class KnownState:
    """A snapshot of a mailbox the caller holds: its GUID, UIDVALIDITY and modseq."""

    guid: bytes
    uidvalidity: int
    modseq: int


@dataclass(frozen=True, slots=True)
class ColumnsRead:
    """A mailbox's status and what brings a caller's snapshot up to it: nothing
    (``columns`` and ``changes`` both None: the snapshot is current), the
    changes since its modseq, or every message as columns (no usable snapshot)."""

    status: MailboxStatus
    columns: MessageColumns | None = None
    changes: ChangeSet | None = None


def read_since(
    txn: Any, index: MailIndex, user: str, name: str, known: KnownState | None
) -> ColumnsRead:
    """What :class:`ColumnsRead` says, in one read transaction.

    A snapshot at the mailbox's HIGHESTMODSEQ under the same GUID and
    UIDVALIDITY is current: every change raises HIGHESTMODSEQ (I3)."""
    status = index.status(txn, user, name)
    if known is None or known.guid != status.guid or known.uidvalidity != status.uidvalidity:
        return ColumnsRead(status, columns=read_columns(txn, index.dbs, status.guid))
    if known.modseq >= status.highestmodseq:
        return ColumnsRead(status)
    return ColumnsRead(status, changes=index.changes_since(txn, user, name, known.modseq))
