"""Store change records <-> change-stream frames (protocol-spec/verbs.md §4).

The store speaks in mailbox GUIDs; the wire speaks in session-local MBOX
ids (seed 001), one table per link and direction.  :class:`MboxBinding` is
what an id stands for; this module converts in both directions given the
bindings, and is pure: the runtime reads whatever the store must supply
(mailbox status for MBOX, message GUIDs for expunges, bodies) before
calling it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from replicad.blob import Blob
from replicad.errors import ProtocolError
from replicad.model.merge import (
    UNKNOWN_GUID,
    FlagMark,
    MergePlan,
    MessageState,
    PlanOp,
    PutMessage,
    PutTombstone,
    Tombstone,
)
from replicad.protocol import commands as c
from replicad.store.records import (
    Change,
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxMerged,
    MailboxRenamed,
    MailboxStatus,
    MessageAppended,
    MessagesCopied,
    MessagesExpunged,
    SubscriptionChanged,
)
from replicad.uidset import UidSet


@dataclass(frozen=True, slots=True)
class MboxBinding:
    """What one MBOX id stands for: a mailbox by GUID (names are informative)."""

    user: str
    name: str
    guid: bytes


def mailboxes_of(change: Change) -> list[bytes]:
    """Mailbox GUIDs a change frame references by MBOX id, in field order."""
    if isinstance(change, MessagesCopied):
        return [change.source_mailbox, change.appended[0].mailbox]
    if isinstance(change, (MessageAppended, FlagsChanged, MessagesExpunged, MailboxMerged)):
        return [change.mailbox]
    return []


def body_bytes(frame: c.Change) -> int:
    """Octets of the bodies a change frame carries, in their stored form (what
    the wire holds and what a receiver buffers until it applies the change).

    Both ends of a change stream count a change with this one function: the
    master's window (:class:`~replicad.cluster.outbox.OutboxStream`) and the
    peer's inbox must agree on every change's weight, or a window that fits
    the inbox on one side could overflow it on the other."""
    if isinstance(frame, c.SaveChange):
        return len(frame.body.stored) if frame.body is not None else 0
    if isinstance(frame, c.UpdateChange):
        return sum(
            len(op.body.stored)
            for op in frame.ops
            if isinstance(op, c.UpdateAppend) and op.body is not None
        )
    return 0


def ops_to_wire(
    ops: tuple[PlanOp, ...], bodies: dict[bytes, Blob], flags_only: frozenset[int] = frozenset()
) -> tuple[c.UpdateOp, ...]:
    """UPDATE operations for a merge plan: a put message is an APPEND (with the
    body from ``bodies``, else NIL), or a FLAGS when its UID is in ``flags_only``
    (the receiver holds that very message there); a tombstone is an EXPUNGE."""
    out: list[c.UpdateOp] = []
    for op in ops:
        if isinstance(op, PutMessage):
            m = op.message
            marks = tuple((k.flag, k.stamp, k.present) for k in m.marks)
            if m.uid in flags_only:
                out.append(c.UpdateFlags(m.uid, m.modseq, marks))
            else:
                out.append(
                    c.UpdateAppend(
                        m.uid,
                        m.guid,
                        m.modseq,
                        m.internaldate,
                        m.size,
                        m.body_hash,
                        marks,
                        bodies.get(m.body_hash),
                    )
                )
        else:
            t = op.tombstone
            moved = tuple(c.UidGuid(u, g) for g, u in t.moved)
            out.append(c.UpdateExpunge(t.uid, t.modseq, tuple(sorted(t.guids)), moved))
    return tuple(out)


def ops_from_wire(
    ops: tuple[c.UpdateOp, ...], held: dict[int, MessageState] | None = None
) -> tuple[tuple[PlanOp, ...], list[Blob]]:
    """Plan operations and carried bodies of UPDATE operations.  A FLAGS
    operation needs ``held``: the receiver's message at that UID."""
    out: list[PlanOp] = []
    carried: list[Blob] = []
    for op in ops:
        if isinstance(op, c.UpdateAppend):
            marks = tuple(FlagMark(f, s, p) for f, s, p in op.marks)
            try:
                message = MessageState(
                    op.uid, op.guid, op.modseq, op.internaldate, op.size, op.body_hash, marks
                )
            except ValueError as exc:
                raise ProtocolError(f"UPDATE: {exc}") from None
            out.append(PutMessage(message))
            if op.body is not None:
                carried.append(op.body)
        elif isinstance(op, c.UpdateFlags):
            base = (held or {}).get(op.uid)
            if base is None:
                raise ProtocolError(f"UPDATE: FLAGS for UID {op.uid}, which is not held here")
            marks = tuple(FlagMark(f, s, p) for f, s, p in op.marks)
            out.append(PutMessage(replace(base, modseq=op.modseq, marks=marks)))
        else:
            moved = tuple(sorted((m.guid, m.uid) for m in op.moved))
            try:
                tomb = Tombstone(op.uid, frozenset(op.guids), op.modseq, moved)
            except ValueError as exc:
                raise ProtocolError(f"UPDATE: {exc}") from None
            out.append(PutTombstone(tomb))
    return tuple(out), carried


def to_wire(
    seq: int,
    change: Change,
    ids: dict[bytes, int],
    body: Blob | None = None,
    bodies: dict[bytes, Blob] | None = None,
) -> c.Change:
    """The frame for log entry ``seq``; ``ids`` maps every mailbox it references.

    ``body`` goes with a SAVE; ``bodies`` (by hash) with the messages a merge puts.
    """
    if isinstance(change, MessageAppended):
        return c.SaveChange(
            seq,
            ids[change.mailbox],
            change.uidvalidity,
            change.uid,
            change.guid,
            change.modseq,
            change.internaldate,
            change.flags,
            change.stamp,
            change.size,
            change.body_hash,
            body,
        )
    if isinstance(change, MessagesCopied):
        entries = tuple(
            c.CopyEntry(
                src,
                a.uid,
                a.guid,
                a.modseq,
                a.internaldate,
                a.flags,
                a.stamp,
                a.size,
                a.body_hash,
            )
            for src, a in zip(change.source_uids, change.appended, strict=True)
        )
        return c.CopyChange(
            seq,
            ids[change.source_mailbox],
            ids[change.appended[0].mailbox],
            change.appended[0].uidvalidity,
            entries,
        )
    if isinstance(change, FlagsChanged):
        known = dict(zip(change.uids, change.guids, strict=False))
        return c.StoreChange(
            seq,
            ids[change.mailbox],
            change.uidvalidity,
            UidSet.of(change.uids),
            change.added,
            change.removed,
            change.modseq,
            change.stamp,
            tuple(known.get(uid, UNKNOWN_GUID)[:8] for uid in sorted(set(change.uids))),
        )
    if isinstance(change, MessagesExpunged):
        pairs = sorted(change.expunged)
        uids = UidSet.of([uid for uid, _ in pairs])
        return c.ExpungeChange(
            seq,
            ids[change.mailbox],
            change.uidvalidity,
            uids,
            change.modseq,
            tuple(g for _, g in pairs),
        )
    if isinstance(change, MailboxCreated):
        return c.CreateChange(
            seq, change.user, change.name, change.mailbox, change.uidvalidity, change.stamp
        )
    if isinstance(change, MailboxRenamed):
        return c.RenameChange(
            seq,
            change.user,
            change.mailbox,
            change.old_name,
            change.new_name,
            change.stamp,
            tuple(c.GuidName(g, n) for g, n in change.children),
        )
    if isinstance(change, MailboxDeleted):
        return c.DeleteChange(seq, change.user, change.mailbox, change.name)
    if isinstance(change, SubscriptionChanged):
        return c.SubscribeChange(
            seq, change.user, change.name, int(change.subscribed), change.stamp
        )
    if isinstance(change, MailboxMerged):
        p = change.plan
        # A body the follower holds goes as NIL (resync.md §7).
        shipped = {h: b for h, b in (bodies or {}).items() if h not in change.held}
        return c.UpdateChange(
            seq,
            ids[change.mailbox],
            p.uidvalidity,
            p.uidnext,
            p.highestmodseq,
            change.expected,
            change.expected_digest,
            change.result_digest,
            ops_to_wire(p.ops, shipped),
        )
    raise TypeError(f"not a change record: {change!r}")


def from_wire(
    frame: c.Change, ids: dict[int, MboxBinding], guids: dict[int, bytes] | None = None
) -> tuple[Change, list[Blob]]:
    """The store record for ``frame`` and the bodies it carried.

    ``guids`` maps expunged UIDs to the message GUIDs known locally (for the
    tombstones, I3); UIDs missing from it get :data:`UNKNOWN_GUID`.
    """
    if isinstance(frame, c.SaveChange):
        box = ids[frame.mbox]
        record = MessageAppended(
            box.user,
            box.guid,
            frame.uid,
            frame.guid,
            frame.modseq,
            frame.flags,
            frame.internaldate,
            frame.size,
            frame.body_hash,
            frame.stamp,
            frame.uidvalidity,
        )
        return record, [frame.body] if frame.body is not None else []
    if isinstance(frame, c.CopyChange):
        src, dest = ids[frame.source], ids[frame.dest]
        appended = tuple(
            MessageAppended(
                dest.user,
                dest.guid,
                e.uid,
                e.guid,
                e.modseq,
                e.flags,
                e.internaldate,
                e.size,
                e.body_hash,
                e.stamp,
                frame.uidvalidity,
            )
            for e in frame.entries
        )
        copied = MessagesCopied(
            dest.user, src.guid, tuple(e.source_uid for e in frame.entries), appended
        )
        return copied, []
    if isinstance(frame, c.StoreChange):
        box = ids[frame.mbox]
        return (
            FlagsChanged(
                box.user,
                box.guid,
                tuple(frame.uids),
                frame.add,
                frame.remove,
                frame.modseq,
                stamp=frame.stamp,
                uidvalidity=frame.uidvalidity,
                guids=frame.guids,
            ),
            [],
        )
    if isinstance(frame, c.ExpungeChange):
        box = ids[frame.mbox]
        pairs = tuple(zip(frame.uids, frame.guids, strict=True))
        return MessagesExpunged(box.user, box.guid, pairs, frame.modseq, frame.uidvalidity), []
    if isinstance(frame, c.CreateChange):
        created = MailboxCreated(frame.user, frame.name, frame.guid, frame.uidvalidity, frame.stamp)
        return created, []
    if isinstance(frame, c.RenameChange):
        children = tuple((child.guid, child.name) for child in frame.children)
        renamed = MailboxRenamed(
            frame.user, frame.guid, frame.old_name, frame.new_name, frame.stamp, children
        )
        return renamed, []
    if isinstance(frame, c.DeleteChange):
        return MailboxDeleted(frame.user, frame.guid, frame.name), []
    if isinstance(frame, c.SubscribeChange):
        changed = SubscriptionChanged(frame.user, frame.name, bool(frame.subscribed), frame.stamp)
        return changed, []
    if isinstance(frame, c.UpdateChange):
        box = ids[frame.mbox]
        # The stream ships whole messages (APPEND), never FLAGS; a body NIL is
        # one this copy holds (the sender asked, or it is in the state the
        # plan applies to).  Relayed, this change asks the next node afresh.
        ops, carried = ops_from_wire(frame.ops)
        try:
            plan = MergePlan(frame.uidvalidity, frame.uidnext, frame.highestmodseq, ops)
        except ValueError as exc:
            raise ProtocolError(f"UPDATE: {exc}") from None
        merged = MailboxMerged(
            box.user, box.guid, frame.expected, plan, frame.expected_digest, frame.result_digest
        )
        return merged, carried
    raise TypeError(f"not a change frame: {frame!r}")


def mbox_binding(mid: int, status: MailboxStatus) -> c.Mbox:
    """The MBOX that binds ``mid`` to this node's mailbox ``status`` on a link
    (verbs.md MBOX), for the change stream and resyncs alike."""
    return c.Mbox(
        mid,
        status.user,
        status.name,
        status.guid,
        status.uidvalidity,
        status.uidnext,
        status.messages,
        status.highestmodseq,
    )
