"""Applying change records that a mailbox master assigned (the receiving side).

A replica applies the master's records exactly: the UID, MODSEQ, message
GUID and flags the master chose, so every node ends with the same state
(I4).  Application is idempotent, because a record may arrive twice (an
outbox is resent from the last acknowledgement after a reconnect).  A new
record must carry a MODSEQ above the mailbox's HIGHESTMODSEQ here: one
master's records arrive in MODSEQ order, so a lower one was made by another
master during a partition, and goes through the resync merge (I3).

Nothing is ever silently overwritten (I2, I6): a record that contradicts
local state (the UID names another message, the mailbox name belongs to
another mailbox GUID, a flag change for a message the node never saw) is
not applied; the mailbox is marked for resync with the sending peer and
the conflict resolution of the resync layer repairs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from replicad.model.digest import state_digest
from replicad.model.merge import UNKNOWN_GUID
from replicad.store import blobs, subscriptions
from replicad.store.blobs import PreparedBody
from replicad.store.changecodec import mailbox_of
from replicad.store.changelog import RESYNC_CONFLICT, RESYNC_MISSING, ChangeLog
from replicad.store.index import INBOX, MailIndex
from replicad.store.marks import apply_delta, present, stamped
from replicad.store.namespace import Claim
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
    flags_tuple,
)
from replicad.store.schema import (
    CHANGE_EXPUNGED,
    CHANGE_MESSAGE,
    MailboxRow,
    MessageRow,
    change_key,
    message_key,
    name_key,
    pack,
    unpack_tombstone,
)
from replicad.store.statesync import MissingBodyError, apply_plan, full_state
from replicad.store.subscriptions import SUBSCRIPTIONS_MARK, Register, SubscriptionEntry

#: The detail of a change refused because its mailbox GUID is not here.
MISSING_MAILBOX = "missing mailbox"
#: How a change refused for its stamp is described (replicad.store.clock).
CLOCK_SKEW = "clock skew"
DELETED_MAILBOX = "mailbox deleted here"
#: A tombstone's message GUID when the expunged message was never seen here.


class Outcome(Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already had it: an idempotent no-op
    DIVERGED = "diverged"  # contradicts local state: marked for resync, not applied


@dataclass(frozen=True, slots=True)
class ApplyResult:
    outcome: Outcome
    detail: str = ""


class ReplicaApplier:
    """Applies one change record inside a write transaction."""

    def __init__(self, index: MailIndex, log: ChangeLog) -> None:
        self.index = index
        self.dbs = index.dbs
        self.log = log
        #: (source, mailbox) -> modseq of the last append seen from that source:
        #: one SAVE batch (an import) logs a record per message under one modseq.
        self._batch: dict[tuple[str, bytes], int] = {}

    def apply(
        self, txn: Any, change: Change, bodies: dict[bytes, PreparedBody], source: str
    ) -> ApplyResult:
        """Apply ``change`` from peer ``source``; ``bodies`` holds bodies sent along.

        A change to a mailbox deleted here is a no-op: the DELETE wins over
        writes made concurrently elsewhere, and its own record reaches the
        writer's side too (resync.md, mailbox conflicts)."""
        if isinstance(change, SubscriptionChanged):
            return self._subscription(txn, change, source)
        if self.index.was_deleted(txn, mailbox_of(change)):
            return ApplyResult(Outcome.DUPLICATE, DELETED_MAILBOX)
        if isinstance(change, MessageAppended):
            return self._appended(txn, [change], bodies, source)
        if isinstance(change, MessagesCopied):
            return self._appended(txn, list(change.appended), bodies, source)
        if isinstance(change, FlagsChanged):
            return self._flags(txn, change, source)
        if isinstance(change, MessagesExpunged):
            return self._expunged(txn, change, source)
        if isinstance(change, MailboxCreated):
            return self._created(txn, change, source)
        if isinstance(change, MailboxRenamed):
            return self._renamed(txn, change, source)
        if isinstance(change, MailboxDeleted):
            return self._deleted(txn, change)
        if isinstance(change, MailboxMerged):
            return self._merged(txn, change, bodies, source)
        raise TypeError(f"not a change record: {change!r}")

    def missing_bodies(self, txn: Any, change: Change) -> list[bytes]:
        """Body hashes ``change`` needs that this node does not store (HAVE, seed 004)."""
        appended: list[MessageAppended] = []
        if isinstance(change, MessageAppended):
            appended = [change]
        elif isinstance(change, MessagesCopied):
            appended = list(change.appended)
        return [
            a.body_hash for a in appended if blobs.reference_count(txn, self.dbs, a.body_hash) == 0
        ]

    # -- helpers --

    def _diverged(self, txn: Any, source: str, mailbox: bytes, since: int, why: str) -> ApplyResult:
        reason = RESYNC_MISSING if why.startswith("missing") else RESYNC_CONFLICT
        self.log.mark_resync(txn, source, mailbox, reason, since)
        return ApplyResult(Outcome.DIVERGED, why)

    def _skewed(
        self, txn: Any, source: str, mailbox: bytes, modseq: int, stamp: int
    ) -> ApplyResult | None:
        """Refuse a change stamped too far ahead of this node's clock
        (replicad.store.clock): applying it would drag every clock that far.
        Marked for resync, it applies once the clocks agree again."""
        clock = self.index.clock
        if clock.admits(stamp):
            return None
        ahead = clock.ahead_of_wall(stamp)
        return self._diverged(
            txn,
            source,
            mailbox,
            modseq,
            f"{CLOCK_SKEW}: stamp {stamp} is {ahead:.0f} s ahead of this node's clock "
            f"(cluster.max_clock_skew is {clock.max_skew:g} s)",
        )

    def _stale(
        self, txn: Any, source: str, mailbox: bytes, modseq: int, row: MailboxRow
    ) -> ApplyResult:
        """A new change at a MODSEQ this copy already passed: it comes from
        another lineage (the other side of a partition), and applying it would
        hide it from clients that synced past that MODSEQ (I3).  The merge of
        the resync gives it a fresh MODSEQ instead."""
        # The mark's point: the lowest modseq at which the copies may differ.
        # The first change of the other lineage refused is its first one, one
        # above the last modseq the two lineages share (an incremental SYNC's hint).
        return self._diverged(
            txn,
            source,
            mailbox,
            min(modseq, row.highestmodseq),
            f"modseq {modseq} is not above HIGHESTMODSEQ {row.highestmodseq}",
        )

    def _other_lineage(
        self, txn: Any, source: str, mailbox: bytes, uidvalidity: int, row: MailboxRow
    ) -> ApplyResult | None:
        """A change numbered in another UID space than this copy's (I2).

        After a partition the same mailbox GUID can live under two
        UIDVALIDITYs (a merge gave one side a new one, and the other has not
        applied that merge yet): the UIDs of one say nothing about the other,
        so a change of one applied to the other would put a message at a UID
        that names something else there, or twice.  The resync merges them."""
        if uidvalidity == 0 or uidvalidity == row.uidvalidity:
            return None
        return self._diverged(
            txn,
            source,
            mailbox,
            0,
            f"UIDVALIDITY {uidvalidity} of the change is not this copy's {row.uidvalidity}",
        )

    def _row(self, txn: Any, mailbox: bytes) -> MailboxRow | None:
        raw = txn.get(mailbox, db=self.dbs.mailboxes)
        return None if raw is None else MailboxRow.decode(raw)

    def _tombstone(
        self, txn: Any, mailbox: bytes, uid: int
    ) -> tuple[tuple[bytes, ...], int] | None:
        raw = txn.get(message_key(mailbox, uid), db=self.dbs.tombstones)
        if raw is None:
            return None
        guids, modseq, _ = unpack_tombstone(bytes(raw))
        return guids, modseq

    # -- messages --

    def _appended(
        self,
        txn: Any,
        records: list[MessageAppended],
        bodies: dict[bytes, PreparedBody],
        source: str,
    ) -> ApplyResult:
        if not records:
            return ApplyResult(Outcome.DUPLICATE, "empty copy")
        mailbox = records[0].mailbox
        row = self._row(txn, mailbox)
        if row is None:
            return self._diverged(txn, source, mailbox, records[0].modseq, MISSING_MAILBOX)
        if other := self._other_lineage(txn, source, mailbox, records[0].uidvalidity, row):
            return other
        # Check every record before writing any, so a conflict leaves nothing half-applied.
        fresh: list[MessageAppended] = []
        for rec in records:
            existing = self.index._message(txn, mailbox, rec.uid)
            if existing is not None:
                if existing.guid == rec.guid:
                    self._batch[(source, mailbox)] = rec.modseq
                    continue
                return self._diverged(
                    txn, source, mailbox, rec.modseq, f"UID {rec.uid} names another message"
                )
            tomb = self._tombstone(txn, mailbox, rec.uid)
            if tomb is not None:
                if rec.guid in tomb[0]:
                    continue  # appended and already expunged here
                # The seed's FIXME: this node expunged UID n, the sender reused it.
                return self._diverged(
                    txn, source, mailbox, rec.modseq, f"UID {rec.uid} reused after expunge"
                )
            fresh.append(rec)
        for rec in fresh:
            if skewed := self._skewed(txn, source, mailbox, rec.modseq, rec.stamp):
                return skewed
        if fresh and fresh[0].modseq <= row.highestmodseq:
            same_batch = (
                fresh[0].modseq == row.highestmodseq
                and self._batch.get((source, mailbox)) == fresh[0].modseq
            )
            if not same_batch:
                return self._stale(txn, source, mailbox, fresh[0].modseq, row)
        if fresh:
            self._batch[(source, mailbox)] = fresh[-1].modseq
        for rec in fresh:
            prepared = bodies.get(rec.body_hash)
            if prepared is not None:
                blobs.add_reference(txn, self.dbs, prepared)
            elif blobs.reference_count(txn, self.dbs, rec.body_hash):
                blobs.add_reference_to_existing(txn, self.dbs, rec.body_hash)
            else:
                raise MissingBodyError(f"body {rec.body_hash.hex()} needed for UID {rec.uid}")
            self.index.clock.observe(rec.stamp)
            msg = MessageRow(
                rec.guid,
                rec.modseq,
                flags_tuple(rec.flags),
                rec.internaldate,
                rec.size,
                rec.body_hash,
                stamped(rec.flags, rec.stamp),
            )
            txn.put(message_key(mailbox, rec.uid), msg.encode(), db=self.dbs.messages)
            txn.put(change_key(mailbox, rec.modseq, rec.uid), CHANGE_MESSAGE, db=self.dbs.changes)
            row = replace(
                row,
                uidnext=max(row.uidnext, rec.uid + 1),
                highestmodseq=max(row.highestmodseq, rec.modseq),
                messages=row.messages + 1,
                vsize=row.vsize + rec.size,
            )
        if fresh:
            txn.put(mailbox, row.encode(), db=self.dbs.mailboxes)
        return ApplyResult(Outcome.APPLIED if fresh else Outcome.DUPLICATE)

    def _flags(self, txn: Any, change: FlagsChanged, source: str) -> ApplyResult:
        row = self._row(txn, change.mailbox)
        if row is None:
            return self._diverged(txn, source, change.mailbox, change.modseq, MISSING_MAILBOX)
        if other := self._other_lineage(txn, source, change.mailbox, change.uidvalidity, row):
            return other
        added, removed = frozenset(change.added), frozenset(change.removed)
        targets: list[tuple[int, MessageRow]] = []
        # A GUID or, from the wire, its first 8 octets (verbs.md * STORE); all
        # zero (a record logged before flag changes named their messages):
        # unknown, the local message decides.
        guids = change.guids or (UNKNOWN_GUID,) * len(change.uids)
        for uid, guid in zip(change.uids, guids, strict=True):
            known = any(guid)
            msg = self.index._message(txn, change.mailbox, uid)
            if msg is None:
                tomb = self._tombstone(txn, change.mailbox, uid)
                if tomb is not None and (not known or any(g.startswith(guid) for g in tomb[0])):
                    continue  # expunge wins over a flag change (I6)
                why = "missing message" if tomb is None else "another expunged message at"
                return self._diverged(
                    txn, source, change.mailbox, change.modseq, f"{why} UID {uid}"
                )
            if known and not msg.guid.startswith(guid):
                # Another master's lineage numbered another message here (a
                # partition): changing it would give one message the other's flags.
                return self._diverged(
                    txn, source, change.mailbox, change.modseq, f"UID {uid} names another message"
                )
            targets.append((uid, msg))
        if skewed := self._skewed(txn, source, change.mailbox, change.modseq, change.stamp):
            return skewed
        applied = 0
        self.index.clock.observe(change.stamp)
        # I5: deltas, not states, into the per-flag registers.  A message past
        # the change's modseq had it already, which its registers confirm: if
        # they would change, another master's change hides under that modseq.
        stepped = [
            (uid, msg, apply_delta(msg.registers(), added, removed, change.stamp))
            for uid, msg in targets
        ]
        if any(
            msg.modseq >= change.modseq and marks != msg.registers() for _, msg, marks in stepped
        ):
            # Not applied here, yet this copy is past its modseq: another
            # master changed the message in between (a partition).
            return self._diverged(
                txn,
                source,
                change.mailbox,
                change.modseq,
                "flag change missing under a later modseq",
            )
        fresh = [(uid, msg, marks) for uid, msg, marks in stepped if msg.modseq < change.modseq]
        if fresh and change.modseq <= row.highestmodseq:
            return self._stale(txn, source, change.mailbox, change.modseq, row)
        for uid, msg, marks in fresh:
            txn.delete(change_key(change.mailbox, msg.modseq, uid), db=self.dbs.changes)
            txn.put(
                change_key(change.mailbox, change.modseq, uid), CHANGE_MESSAGE, db=self.dbs.changes
            )
            txn.put(
                message_key(change.mailbox, uid),
                replace(
                    msg, flags=flags_tuple(present(marks)), modseq=change.modseq, marks=marks
                ).encode(),
                db=self.dbs.messages,
            )
            applied += 1
        if change.modseq > row.highestmodseq and applied:
            txn.put(
                change.mailbox,
                replace(row, highestmodseq=change.modseq).encode(),
                db=self.dbs.mailboxes,
            )
        return ApplyResult(Outcome.APPLIED if applied else Outcome.DUPLICATE)

    def _expunged(self, txn: Any, change: MessagesExpunged, source: str) -> ApplyResult:
        row = self._row(txn, change.mailbox)
        if row is None:
            return self._diverged(txn, source, change.mailbox, change.modseq, MISSING_MAILBOX)
        if other := self._other_lineage(txn, source, change.mailbox, change.uidvalidity, row):
            return other
        for uid, guid in change.expunged:
            msg = self.index._message(txn, change.mailbox, uid)
            # UNKNOWN_GUID: the wire names UIDs only; the local message decides.
            if msg is not None and guid != UNKNOWN_GUID and msg.guid != guid:
                return self._diverged(
                    txn, source, change.mailbox, change.modseq, f"UID {uid} names another message"
                )
        fresh = [
            uid for uid, _ in change.expunged if self._tombstone(txn, change.mailbox, uid) is None
        ]
        if fresh and change.modseq <= row.highestmodseq:
            return self._stale(txn, source, change.mailbox, change.modseq, row)
        applied = 0
        for uid, guid in change.expunged:
            msg = self.index._message(txn, change.mailbox, uid)
            if msg is None:
                tomb = self._tombstone(txn, change.mailbox, uid)
                if tomb is not None:
                    continue
                # Never had it (e.g. an outbox overflowed): still keep the
                # tombstone so the UID can never be reused here (I3).
                txn.put(
                    message_key(change.mailbox, uid),
                    pack([guid, change.modseq]),
                    db=self.dbs.tombstones,
                )
                txn.put(
                    change_key(change.mailbox, change.modseq, uid),
                    CHANGE_EXPUNGED,
                    db=self.dbs.changes,
                )
                row = replace(row, uidnext=max(row.uidnext, uid + 1))
                applied += 1
                continue
            txn.delete(message_key(change.mailbox, uid), db=self.dbs.messages)
            txn.delete(change_key(change.mailbox, msg.modseq, uid), db=self.dbs.changes)
            txn.put(
                change_key(change.mailbox, change.modseq, uid), CHANGE_EXPUNGED, db=self.dbs.changes
            )
            txn.put(
                message_key(change.mailbox, uid),
                pack([msg.guid, change.modseq]),
                db=self.dbs.tombstones,
            )
            blobs.drop_reference(txn, self.dbs, msg.body_hash)
            row = replace(row, messages=row.messages - 1, vsize=row.vsize - msg.size)
            applied += 1
        if applied:
            row = replace(row, highestmodseq=max(row.highestmodseq, change.modseq))
            txn.put(change.mailbox, row.encode(), db=self.dbs.mailboxes)
        return ApplyResult(Outcome.APPLIED if applied else Outcome.DUPLICATE)

    def _merged(
        self, txn: Any, change: MailboxMerged, bodies: dict[bytes, PreparedBody], source: str
    ) -> ApplyResult:
        row = self._row(txn, change.mailbox)
        if row is None:
            return self._diverged(txn, source, change.mailbox, 0, MISSING_MAILBOX)
        state = full_state(self.index, txn, change.mailbox)
        assert state is not None
        digest = state_digest(state)
        if digest == change.result_digest:
            return ApplyResult(Outcome.DUPLICATE)  # merged here already (a resync UPDATE)
        if digest != change.expected_digest:
            # Not the state the master merged from: only a resync can tell what
            # this copy holds that the master lacks (I6).
            return self._diverged(
                txn,
                source,
                change.mailbox,
                0,
                f"merge from another state (HIGHESTMODSEQ {change.expected}, "
                f"here {row.highestmodseq})",
            )
        apply_plan(self.index, txn, change.mailbox, change.plan, bodies)
        return ApplyResult(Outcome.APPLIED)

    # -- mailboxes --

    def _created(self, txn: Any, change: MailboxCreated, source: str) -> ApplyResult:
        if self._row(txn, change.mailbox) is not None:
            return ApplyResult(Outcome.DUPLICATE)
        existing = txn.get(name_key(change.user, change.name), db=self.dbs.names)
        if existing is not None and change.name == INBOX:
            # INBOX created independently on both sides of a partition (first
            # deliveries): the mark is on the INBOX this node knows, which the
            # resync with the master merges (resync.md, mailbox conflicts).
            return self._diverged(
                txn, source, bytes(existing), 0, f"name {change.name!r} taken by another mailbox"
            )
        # A folder name taken here by another mailbox is no conflict: both
        # claims are kept and the names settle (replicad.store.namespace).
        self.index.create_mailbox(
            txn,
            change.user,
            change.name,
            guid=change.mailbox,
            uidvalidity=change.uidvalidity,
            stamp=change.stamp,
        )
        return ApplyResult(Outcome.APPLIED)

    def _renamed(self, txn: Any, change: MailboxRenamed, source: str) -> ApplyResult:
        """Last writer wins per mailbox: each claim of the record is taken
        where it is newer than the one held here (I4)."""
        row = self._row(txn, change.mailbox)
        if row is None:
            return self._diverged(txn, source, change.mailbox, 0, MISSING_MAILBOX)
        if skewed := self._skewed(txn, source, change.mailbox, 0, change.stamp):
            return skewed
        claims = [(change.mailbox, Claim(change.stamp, change.new_name))]
        claims += [(guid, Claim(change.stamp, name)) for guid, name in change.children]
        if not self.index.adopt_claims(txn, change.user, claims):
            return ApplyResult(Outcome.DUPLICATE)
        return ApplyResult(Outcome.APPLIED)

    def _subscription(self, txn: Any, change: SubscriptionChanged, source: str) -> ApplyResult:
        """Last writer wins per (user, name) (replicad.store.subscriptions, I4);
        never a conflict.  A stamp beyond the clock bound is refused and the
        peer's registers are pushed again once the clocks agree."""
        if not self.index.clock.admits(change.stamp):
            self.log.mark_resync(txn, source, SUBSCRIPTIONS_MARK, RESYNC_CONFLICT, 0)
            return ApplyResult(Outcome.DIVERGED, f"{CLOCK_SKEW}: subscription stamp {change.stamp}")
        entry = SubscriptionEntry(
            change.user, change.name, Register(change.stamp, change.subscribed)
        )
        if not subscriptions.adopt(self.dbs, txn, entry):
            return ApplyResult(Outcome.DUPLICATE)
        self.index.clock.observe(change.stamp)
        return ApplyResult(Outcome.APPLIED)

    def _deleted(self, txn: Any, change: MailboxDeleted) -> ApplyResult:
        row = self._row(txn, change.mailbox)
        if row is None:
            return ApplyResult(Outcome.DUPLICATE)
        self.index.delete_mailbox(txn, row.user, row.name)
        return ApplyResult(Outcome.APPLIED)
