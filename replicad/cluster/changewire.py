"""Store change records <-> change-stream frames (protocol-spec/verbs.md §4).

The store speaks in mailbox GUIDs; the wire speaks in session-local MBOX
ids (seed 001), one table per link and direction.  :class:`MboxBinding` is
what an id stands for; this module converts in both directions given the
bindings, and is pure: the runtime reads whatever the store must supply
(mailbox status for MBOX, message GUIDs for expunges, bodies) before
calling it.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicad.protocol import commands as c
from replicad.store.records import (
    Change,
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxRenamed,
    MessageAppended,
    MessagesCopied,
    MessagesExpunged,
)
from replicad.store.replica import UNKNOWN_GUID
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
    if isinstance(change, (MessageAppended, FlagsChanged, MessagesExpunged)):
        return [change.mailbox]
    return []


def to_wire(seq: int, change: Change, ids: dict[bytes, int], body: bytes | None = None) -> c.Change:
    """The frame for log entry ``seq``; ``ids`` maps every mailbox it references."""
    if isinstance(change, MessageAppended):
        return c.SaveChange(
            seq,
            ids[change.mailbox],
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
            seq, ids[change.source_mailbox], ids[change.appended[0].mailbox], entries
        )
    if isinstance(change, FlagsChanged):
        return c.StoreChange(
            seq,
            ids[change.mailbox],
            UidSet.of(change.uids),
            change.added,
            change.removed,
            change.modseq,
            change.stamp,
        )
    if isinstance(change, MessagesExpunged):
        uids = UidSet.of([uid for uid, _ in change.expunged])
        return c.ExpungeChange(seq, ids[change.mailbox], uids, change.modseq)
    if isinstance(change, MailboxCreated):
        return c.CreateChange(seq, change.user, change.name, change.mailbox, change.uidvalidity)
    if isinstance(change, MailboxRenamed):
        return c.RenameChange(seq, change.user, change.mailbox, change.old_name, change.new_name)
    if isinstance(change, MailboxDeleted):
        return c.DeleteChange(seq, change.user, change.mailbox, change.name)
    raise TypeError(f"not a change record: {change!r}")


def from_wire(
    frame: c.Change, ids: dict[int, MboxBinding], guids: dict[int, bytes] | None = None
) -> tuple[Change, list[bytes]]:
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
            ),
            [],
        )
    if isinstance(frame, c.ExpungeChange):
        box = ids[frame.mbox]
        known = guids or {}
        pairs = tuple((uid, known.get(uid, UNKNOWN_GUID)) for uid in frame.uids)
        return MessagesExpunged(box.user, box.guid, pairs, frame.modseq), []
    if isinstance(frame, c.CreateChange):
        return MailboxCreated(frame.user, frame.name, frame.guid, frame.uidvalidity), []
    if isinstance(frame, c.RenameChange):
        return MailboxRenamed(frame.user, frame.guid, frame.old_name, frame.new_name), []
    if isinstance(frame, c.DeleteChange):
        return MailboxDeleted(frame.user, frame.guid, frame.name), []
    raise TypeError(f"not a change frame: {frame!r}")
