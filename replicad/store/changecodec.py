"""Compact msgpack encoding of change records, for the change log on disk.

Each record becomes ``[kind, fields...]`` with a one-letter kind.  The
encoding is part of the on-disk format (schema version in
:mod:`replicad.store.schema`): add kinds, never renumber fields.
"""

from __future__ import annotations

from typing import Any

from replicad.errors import ReplicadError
from replicad.model.merge import (
    FlagMark,
    MergePlan,
    MessageState,
    PlanOp,
    PutMessage,
    PutTombstone,
    Tombstone,
)
from replicad.store.records import (
    Change,
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxMerged,
    MailboxRenamed,
    MessageAppended,
    MessagesCopied,
    MessagesExpunged,
    SubscriptionChanged,
)
from replicad.store.schema import pack, unpack


def _appended_fields(r: MessageAppended) -> list[Any]:
    return [
        r.user,
        r.mailbox,
        r.uid,
        r.guid,
        r.modseq,
        list(r.flags),
        r.internaldate,
        r.size,
        r.body_hash,
        r.stamp,
        r.uidvalidity,
    ]


def _appended_from(f: list[Any]) -> MessageAppended:
    user, mailbox, uid, guid, modseq, flags, date, size, body_hash, *rest = f
    return MessageAppended(
        user=user,
        mailbox=mailbox,
        uid=uid,
        guid=guid,
        modseq=modseq,
        flags=tuple(flags),
        internaldate=date,
        size=size,
        body_hash=body_hash,
        stamp=rest[0] if rest else 0,
        uidvalidity=rest[1] if len(rest) > 1 else 0,
    )


def _op_fields(op: PlanOp) -> list[Any]:
    if isinstance(op, PutMessage):
        m = op.message
        marks = [[k.flag, k.stamp, k.present] for k in m.marks]
        return ["P", m.uid, m.guid, m.modseq, m.internaldate, m.size, m.body_hash, marks]
    t = op.tombstone
    return ["T", t.uid, t.modseq, sorted(t.guids), [[g, u] for g, u in t.moved]]


def _op_from(f: list[Any]) -> PlanOp:
    if f[0] == "P":
        _, uid, guid, modseq, date, size, body_hash, marks = f
        return PutMessage(
            MessageState(
                uid, guid, modseq, date, size, body_hash, tuple(FlagMark(*k) for k in marks)
            )
        )
    _, uid, modseq, guids, moved = f
    return PutTombstone(Tombstone(uid, frozenset(guids), modseq, tuple((g, u) for g, u in moved)))


def encode_change(change: Change) -> bytes:
    """Encode one change record for the log (inverse of :func:`decode_change`)."""
    fields: list[Any]
    if isinstance(change, MessageAppended):
        fields = ["A", *_appended_fields(change)]
    elif isinstance(change, MessagesCopied):
        fields = [
            "C",
            change.user,
            change.source_mailbox,
            list(change.source_uids),
            [_appended_fields(a) for a in change.appended],
        ]
    elif isinstance(change, FlagsChanged):
        fields = [
            "F",
            change.user,
            change.mailbox,
            list(change.uids),
            list(change.added),
            list(change.removed),
            change.modseq,
            list(change.rejected),
            change.stamp,
            change.uidvalidity,
            list(change.guids),
        ]
    elif isinstance(change, MessagesExpunged):
        fields = [
            "X",
            change.user,
            change.mailbox,
            [[u, g] for u, g in change.expunged],
            change.modseq,
            change.uidvalidity,
        ]
    elif isinstance(change, MailboxCreated):
        fields = ["N", change.user, change.name, change.mailbox, change.uidvalidity, change.stamp]
    elif isinstance(change, MailboxRenamed):
        fields = [
            "R",
            change.user,
            change.mailbox,
            change.old_name,
            change.new_name,
            change.stamp,
            [[g, n] for g, n in change.children],
        ]
    elif isinstance(change, MailboxDeleted):
        fields = ["D", change.user, change.mailbox, change.name]
    elif isinstance(change, SubscriptionChanged):
        fields = ["S", change.user, change.name, change.subscribed, change.stamp]
    elif isinstance(change, MailboxMerged):
        p = change.plan
        fields = [
            "U",
            change.user,
            change.mailbox,
            change.expected,
            change.expected_digest,
            change.result_digest,
            p.uidvalidity,
            p.uidnext,
            p.highestmodseq,
            [_op_fields(op) for op in p.ops],
            sorted(change.held),
            change.peer,
        ]
    else:
        raise TypeError(f"not a change record: {change!r}")
    return pack(fields)


def decode_change(raw: bytes) -> Change:
    """Decode a log entry; a malformed one is store corruption, reported as such."""
    try:
        kind, *f = unpack(raw)
        if kind == "A":
            return _appended_from(f)
        if kind == "C":
            user, src, uids, appended = f
            return MessagesCopied(
                user=user,
                source_mailbox=src,
                source_uids=tuple(uids),
                appended=tuple(_appended_from(a) for a in appended),
            )
        if kind == "F":
            user, mailbox, uids, added, removed, modseq, rejected, *rest = f
            return FlagsChanged(
                user=user,
                mailbox=mailbox,
                uids=tuple(uids),
                added=tuple(added),
                removed=tuple(removed),
                modseq=modseq,
                rejected=tuple(rejected),
                stamp=rest[0] if rest else 0,
                uidvalidity=rest[1] if len(rest) > 1 else 0,
                guids=tuple(rest[2]) if len(rest) > 2 else (),
            )
        if kind == "X":
            user, mailbox, expunged, modseq, *rest = f
            return MessagesExpunged(
                user=user,
                mailbox=mailbox,
                expunged=tuple((u, g) for u, g in expunged),
                modseq=modseq,
                uidvalidity=rest[0] if rest else 0,
            )
        if kind == "N":
            user, name, mailbox, uidvalidity, *more = f
            return MailboxCreated(
                user=user,
                name=name,
                mailbox=mailbox,
                uidvalidity=uidvalidity,
                stamp=more[0] if more else 0,
            )
        if kind == "R":
            user, mailbox, old, new, *more = f
            return MailboxRenamed(
                user=user,
                mailbox=mailbox,
                old_name=old,
                new_name=new,
                stamp=more[0] if more else 0,
                children=tuple((g, n) for g, n in more[1]) if len(more) > 1 else (),
            )
        if kind == "D":
            user, mailbox, name = f
            return MailboxDeleted(user=user, mailbox=mailbox, name=name)
        if kind == "S":
            user, name, subscribed, stamp = f
            return SubscriptionChanged(user, name, bool(subscribed), stamp)
        if kind == "U":
            user, mailbox, expected, before, after, uidvalidity, uidnext, hms, ops, *rest = f
            plan = MergePlan(uidvalidity, uidnext, hms, tuple(_op_from(op) for op in ops))
            # Entries logged before ``held`` and ``peer`` were kept: every
            # body is sent, to every follower.
            held = frozenset(rest[0]) if rest else frozenset()
            peer = rest[1] if len(rest) > 1 else ""
            return MailboxMerged(user, mailbox, expected, plan, before, after, held, peer)
    except (ValueError, TypeError) as exc:
        raise ReplicadError(f"store corrupt: undecodable change log entry: {exc}") from exc
    raise ReplicadError(f"store corrupt: unknown change kind {kind!r}")


def message_octets(change: Change) -> int:
    """Octets of the messages a change brings to the receiving side (their
    RFC 5322 sizes, before compression): a catch-up's "bytes left"."""
    if isinstance(change, MessageAppended):
        return change.size
    if isinstance(change, MessagesCopied):
        return sum(a.size for a in change.appended)
    if isinstance(change, MailboxMerged):
        return sum(
            op.message.size
            for op in change.plan.ops
            if isinstance(op, PutMessage) and op.message.body_hash not in change.held
        )
    return 0


def body_hashes(change: Change) -> list[bytes]:
    """Bodies a change needs on the receiving side (the log holds a reference to each)."""
    if isinstance(change, MessageAppended):
        return [change.body_hash]
    if isinstance(change, MessagesCopied):
        return [a.body_hash for a in change.appended]
    if isinstance(change, MailboxMerged):
        # A body the follower holds (``held``) is not sent: the log needs no
        # reference to it, and the outbox does not read it.
        return [
            op.message.body_hash
            for op in change.plan.ops
            if isinstance(op, PutMessage) and op.message.body_hash not in change.held
        ]
    return []


def mailbox_of(change: Change) -> bytes:
    """The mailbox a change belongs to (the destination, for a copy);
    TypeError for a change of no mailbox (a subscription)."""
    if isinstance(change, MessagesCopied):
        return change.appended[0].mailbox if change.appended else change.source_mailbox
    mailbox = getattr(change, "mailbox", None)
    if not isinstance(mailbox, bytes):
        raise TypeError(f"change without a mailbox: {change!r}")
    return mailbox
