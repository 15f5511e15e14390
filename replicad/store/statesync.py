"""The store side of resync: a mailbox's mergeable state, and applying merge plans.

:func:`read_state` returns what :func:`replicad.model.merge.merge` takes:
every live message with its flag registers, every tombstone with the GUIDs
it named, and the mailbox's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ; with
``since`` only the entries whose modseq is above it (one range scan of the
changes index, RFC 7162 CHANGEDSINCE + VANISHED).

:func:`apply_plan` applies a :class:`~replicad.model.merge.MergePlan`
inside the caller's write transaction: the plan's operations are absolute
(put this message at this UID, tombstone this UID), so applying one is
idempotent, and all of it lands in one transaction (seed 004 UPDATE).
Bodies are referenced before any is released, so a message moved to a new
UID never loses its body in between (I6).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from replicad.errors import ClockSkewError, ReplicadError
from replicad.model.digest import entries_digest
from replicad.model.merge import (
    FlagMark,
    MailboxState,
    MergePlan,
    MessageState,
    PutMessage,
    Tombstone,
)
from replicad.store import blobs
from replicad.store.blobs import PreparedBody
from replicad.store.index import MailIndex
from replicad.store.records import flags_tuple
from replicad.store.schema import (
    CHANGE_EXPUNGED,
    CHANGE_MESSAGE,
    MailboxRow,
    MessageRow,
    change_key,
    message_key,
    name_key,
    pack_tombstone,
    split_change_key,
    uid_of_message_key,
    unpack_tombstone,
)
from replicad.uidset import UidSet


class MissingBodyError(ReplicadError):
    """A plan puts a message whose body neither came along nor is stored here."""


def message_state(uid: int, row: MessageRow) -> MessageState:
    """The row as the merge sees it.  A row whose flags disagree with its
    registers was damaged or edited by hand: it shows no registers and
    modseq 0, so its digest differs (the background check finds it) and a
    healthy copy's registers decide the repaired row."""
    registers = row.registers()
    modseq = row.modseq
    if frozenset(row.flags) != frozenset(f for f, _, p in registers if p):
        registers, modseq = (), 0
    return MessageState(
        uid=uid,
        guid=row.guid,
        modseq=modseq,
        internaldate=row.internaldate,
        size=row.size,
        body_hash=row.body_hash,
        marks=tuple(FlagMark(f, s, p) for f, s, p in registers),
    )


def _scan(txn: Any, db: Any, prefix: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    with txn.cursor(db=db) as cur:
        if cur.set_range(prefix):
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                out.append((key, bytes(value)))
    return out


def read_state(
    index: MailIndex, txn: Any, mailbox: bytes, since: int = 0
) -> tuple[MailboxRow, list[MessageState], list[Tombstone]] | None:
    """The mailbox's row and its entries with modseq above ``since``; None if absent."""
    raw = txn.get(mailbox, db=index.dbs.mailboxes)
    if raw is None:
        return None
    row = MailboxRow.decode(bytes(raw))
    messages: list[MessageState] = []
    gone: list[Tombstone] = []
    if since == 0:
        for key, value in _scan(txn, index.dbs.messages, mailbox):
            messages.append(message_state(uid_of_message_key(key), MessageRow.decode(value)))
        for key, value in _scan(txn, index.dbs.tombstones, mailbox):
            guids, modseq, moved = unpack_tombstone(value)
            gone.append(Tombstone(uid_of_message_key(key), frozenset(guids), modseq, moved))
        return row, messages, gone
    with txn.cursor(db=index.dbs.changes) as cur:
        if cur.set_range(change_key(mailbox, since + 1, 0)):
            for key, kind in cur:
                key = bytes(key)
                if key[:16] != mailbox:
                    break
                _, uid = split_change_key(key)
                if bytes(kind) == CHANGE_MESSAGE:
                    msg = index._message(txn, mailbox, uid)
                    if msg is not None:
                        messages.append(message_state(uid, msg))
                else:
                    tomb = txn.get(message_key(mailbox, uid), db=index.dbs.tombstones)
                    if tomb is not None:
                        guids, modseq, moved = unpack_tombstone(bytes(tomb))
                        gone.append(Tombstone(uid, frozenset(guids), modseq, moved))
    messages.sort(key=lambda m: m.uid)
    gone.sort(key=lambda t: t.uid)
    return row, messages, gone


def read_sync(
    index: MailIndex, txn: Any, mailbox: bytes, since: int, uids: UidSet | None
) -> tuple[MailboxRow, list[MessageState], list[Tombstone], bytes] | None:
    """What a SYNC answers: the entries with modseq above ``since`` or a UID in
    ``uids``, and the digest of all the others (resync.md, incremental SYNC);
    None if the mailbox is absent."""
    found = read_state(index, txn, mailbox)
    if found is None:
        return None
    row, messages, gone = found
    wanted = uids if uids is not None else UidSet.of([])

    def sent(uid: int, modseq: int) -> bool:
        return modseq > since or uid in wanted

    rest = entries_digest(
        [m for m in messages if not sent(m.uid, m.modseq)],
        [t for t in gone if not sent(t.uid, t.modseq)],
    )
    return (
        row,
        [m for m in messages if sent(m.uid, m.modseq)],
        [t for t in gone if sent(t.uid, t.modseq)],
        rest,
    )


def full_state(index: MailIndex, txn: Any, mailbox: bytes) -> MailboxState | None:
    found = read_state(index, txn, mailbox)
    if found is None:
        return None
    row, messages, gone = found
    return MailboxState(
        row.uidvalidity, row.uidnext, row.highestmodseq, tuple(messages), tuple(gone)
    )


def replace_mailbox(index: MailIndex, txn: Any, old: bytes, new: bytes, uidvalidity: int) -> None:
    """Make ``new`` (empty, ``uidvalidity``) the mailbox at ``old``'s name, and
    drop ``old`` (resync.md, mailbox conflicts).  Bodies ``old`` referenced are
    released last: call :func:`apply_plan` on ``new`` first with the messages
    that must survive, then this, in the same transaction."""
    dbs = index.dbs
    row = MailboxRow.decode(bytes(txn.get(old, db=dbs.mailboxes)))
    index._drop_prefix(txn, dbs.messages, old, on_value=index._release_message)
    index._drop_prefix(txn, dbs.changes, old)
    index._drop_prefix(txn, dbs.tombstones, old)
    txn.delete(old, db=dbs.mailboxes)
    txn.put(name_key(row.user, row.name), new, db=dbs.names)


def create_detached(
    index: MailIndex, txn: Any, new: bytes, user: str, name: str, uidvalidity: int
) -> None:
    """An empty mailbox row for ``new`` without its name (see :func:`replace_mailbox`)."""
    row = MailboxRow(user, name, uidvalidity, uidnext=1, highestmodseq=1, messages=0, vsize=0)
    txn.put(new, row.encode(), db=index.dbs.mailboxes)


def apply_plan(
    index: MailIndex,
    txn: Any,
    mailbox: bytes,
    plan: MergePlan,
    bodies: dict[bytes, PreparedBody],
) -> MailboxRow:
    """Apply ``plan`` to ``mailbox`` in ``txn``; the new mailbox row.

    Raises :class:`~replicad.errors.ClockSkewError` for a flag stamp too far
    ahead of this node's clock, and :class:`MissingBodyError` when a put
    message's body is neither in ``bodies`` nor stored, both before any
    change that matters (the caller rolls the transaction back).
    """
    dbs = index.dbs
    raw = txn.get(mailbox, db=dbs.mailboxes)
    if raw is None:
        raise ReplicadError(f"mailbox {mailbox.hex()} does not exist here")
    row = MailboxRow.decode(bytes(raw))
    top = max(
        (k.stamp for op in plan.ops if isinstance(op, PutMessage) for k in op.message.marks),
        default=0,
    )
    if not index.clock.admits(top):
        # Before any write: a plan carrying a stamp from a clock far ahead would
        # drag this node's clock with it (replicad.store.clock).
        raise ClockSkewError(
            f"clock skew: a flag stamp of the merge is {index.clock.ahead_of_wall(top):.0f} s "
            f"ahead of this node's clock (cluster.max_clock_skew is {index.clock.max_skew:g} s)"
        )
    released: list[bytes] = []
    # Reference every body first: a plan may move a message whose only
    # reference is the one it tombstones below (I6).
    for op in plan.ops:
        if isinstance(op, PutMessage):
            m = op.message
            prepared = bodies.get(m.body_hash)
            if prepared is not None:
                blobs.add_reference(txn, dbs, prepared)
            elif blobs.reference_count(txn, dbs, m.body_hash):
                blobs.add_reference_to_existing(txn, dbs, m.body_hash)
            else:
                raise MissingBodyError(f"body {m.body_hash.hex()} needed for UID {m.uid}")
    messages, vsize = row.messages, row.vsize
    if plan.uidvalidity != row.uidvalidity:
        # A new UIDVALIDITY: the old UID space is gone (the plan re-puts every message).
        for _, value in _scan(txn, dbs.messages, mailbox):
            released.append(MessageRow.decode(value).body_hash)
        index._drop_prefix(txn, dbs.messages, mailbox)
        index._drop_prefix(txn, dbs.tombstones, mailbox)
        index._drop_prefix(txn, dbs.changes, mailbox)
        messages = vsize = 0
    top_stamp = 0
    for op in plan.ops:
        uid = op.message.uid if isinstance(op, PutMessage) else op.tombstone.uid
        key = message_key(mailbox, uid)
        old = index._message(txn, mailbox, uid)
        if old is not None:
            released.append(old.body_hash)
            txn.delete(change_key(mailbox, old.modseq, uid), db=dbs.changes)
            txn.delete(key, db=dbs.messages)
            messages, vsize = messages - 1, vsize - old.size
        tomb = txn.get(key, db=dbs.tombstones)
        if tomb is not None:
            _, tomb_modseq, _ = unpack_tombstone(bytes(tomb))
            txn.delete(change_key(mailbox, tomb_modseq, uid), db=dbs.changes)
            txn.delete(key, db=dbs.tombstones)
        if isinstance(op, PutMessage):
            m = op.message
            marks = tuple((k.flag, k.stamp, k.present) for k in m.marks)
            top_stamp = max([top_stamp, *(k.stamp for k in m.marks)])
            flags = flags_tuple(m.flags)  # canonical order (replicad.flags)
            new = MessageRow(m.guid, m.modseq, flags, m.internaldate, m.size, m.body_hash, marks)
            txn.put(key, new.encode(), db=dbs.messages)
            txn.put(change_key(mailbox, m.modseq, uid), CHANGE_MESSAGE, db=dbs.changes)
            messages, vsize = messages + 1, vsize + m.size
        else:
            t = op.tombstone
            txn.put(key, pack_tombstone(tuple(t.guids), t.modseq, t.moved), db=dbs.tombstones)
            txn.put(change_key(mailbox, t.modseq, uid), CHANGE_EXPUNGED, db=dbs.changes)
    for body_hash in released:
        blobs.drop_reference(txn, dbs, body_hash)
    index.clock.observe(top_stamp)
    row = replace(
        row,
        uidvalidity=plan.uidvalidity,
        uidnext=plan.uidnext,
        highestmodseq=plan.highestmodseq,
        messages=messages,
        vsize=vsize,
    )
    txn.put(mailbox, row.encode(), db=dbs.mailboxes)
    return row
