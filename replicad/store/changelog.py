"""The durable change log and per-peer outboxes (architecture.md §6, seed 001 "replication logs").

A master writes each change record to the log *in the same transaction*
that applies it, so a change is either both applied and queued for every
peer, or neither (I1: a kill -9 between the two cannot lose a replication).

One log serves every peer: a peer's outbox is the part of the log after
that peer's cursor (its last acknowledged sequence number).  Writing a
change therefore costs one log entry whatever the number of peers, and the
outbox depth of a peer is ``head - cursor``.  Entries every peer has
acknowledged are truncated.  A log entry that adds a message holds a
reference on the body, so a message expunged before a lagging peer got it
still has its body to send.

Each outbox is bounded (``max_lag`` entries).  A peer that falls further
behind loses its backlog: every mailbox that had an entry in the dropped
part is recorded in the ``resync`` table for that peer, and the peer's
cursor jumps to the head.  The resync machinery repairs those mailboxes
(seed 001 "Mailbox synchronization"); nothing is forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from replicad.store import blobs
from replicad.store.changecodec import (
    body_hashes,
    decode_change,
    encode_change,
    mailbox_of,
    message_octets,
)
from replicad.store.records import Change, SubscriptionChanged
from replicad.store.schema import Databases, pack, pack_u64, unpack, unpack_u64
from replicad.store.subscriptions import SUBSCRIPTIONS_MARK

RESYNC_OVERFLOW = "outbox-overflow"
RESYNC_NEW_PEER = "new-peer"
RESYNC_CONFLICT = "conflict"
RESYNC_MISSING = "missing"
RESYNC_PARTITION = "partition"  # written as master while the peer was unreachable (I7)
RESYNC_OVERSIZED = "oversized"  # a change whose frame the link could not carry (I9)
RESYNC_REQUESTED = "requested"  # an operator asked for it (replicad sync)
#: Marks of changes that never reached the peer: its copy has a gap, and the
#: stream holds back this node's later changes of the mailbox until a resync
#: closes it (replicad.cluster.streamgaps).  Not ``oversized``: a change too
#: large for the link is too large for the resync's UPDATE too, so that gap
#: may never close, and the mailbox's other changes keep streaming.
GAP_REASONS = frozenset({RESYNC_OVERFLOW})


@dataclass(frozen=True, slots=True)
class PeerBacklog:
    peer: str
    acked: int  # last sequence the peer acknowledged
    depth: int  # entries queued for the peer (head - acked)


@dataclass(frozen=True, slots=True)
class ResyncMark:
    peer: str
    mailbox: bytes
    reason: str
    since_modseq: int
    #: When the mark was last set, in a counter every marking moves (0: a
    #: mark kept before the counter): a resync clears only a mark nobody set
    #: again while it ran (:meth:`ChangeLog.clear_resync_unless_marked_since`).
    marked_at: int = 0


def _mark_value(raw: bytes) -> tuple[str, int, int]:
    """(reason, since, marked_at) of a stored mark (two fields before the counter)."""
    reason, since, *rest = unpack(raw)
    return reason, since, rest[0] if rest else 0


def _entry(origin: str, change: Change) -> bytes:
    # Node names never contain NUL, so the first NUL ends the origin.
    return origin.encode() + b"\0" + encode_change(change)


def _change_of(raw: bytes) -> Change:
    return decode_change(raw.partition(b"\0")[2])


def mark_of(change: Change) -> bytes:
    """What a resync mark for ``change`` names: its mailbox, or, for a
    subscription (no mailbox), the mark that pushes every register."""
    if isinstance(change, SubscriptionChanged):
        return SUBSCRIPTIONS_MARK
    return mailbox_of(change)


def _resync_key(peer: str, mailbox: bytes) -> bytes:
    return peer.encode() + b"\0" + mailbox


class ChangeLog:
    """Operations on the log, cursors and resync marks inside a store transaction."""

    def __init__(self, dbs: Databases, peers: tuple[str, ...], max_lag: int) -> None:
        if max_lag < 1:
            raise ValueError("max_lag must be positive")
        self.dbs = dbs
        self.peers = peers
        self.max_lag = max_lag

    # -- positions --

    def head(self, txn: Any) -> int:
        """Sequence number of the newest entry ever written (0: none yet)."""
        raw = txn.get(b"log_head", db=self.dbs.meta)
        return 0 if raw is None else unpack_u64(raw)

    def cursor(self, txn: Any, peer: str) -> int:
        raw = txn.get(peer.encode(), db=self.dbs.cursors)
        if raw is None:
            raise KeyError(f"unknown peer {peer!r}")
        return unpack_u64(raw)

    def register_peers(self, txn: Any) -> None:
        """Give configured peers a cursor and forget removed ones (and their marks).

        A peer that appears while the log already has history gets the head
        as its cursor and a whole-node resync mark: it cannot be sent what
        was truncated before it existed.
        """
        head = self.head(txn)
        known = {bytes(k).decode() for k, _ in txn.cursor(db=self.dbs.cursors)}
        for peer in self.peers:
            if peer not in known:
                txn.put(peer.encode(), pack_u64(head), db=self.dbs.cursors)
                if head:
                    self._mark(txn, peer, b"\0" * 16, RESYNC_NEW_PEER, 0)
        for peer in known - set(self.peers):
            txn.delete(peer.encode(), db=self.dbs.cursors)
            prefix = _resync_key(peer, b"")
            with txn.cursor(db=self.dbs.resync) as cur:
                stale = []
                if cur.set_range(prefix):
                    for key, _ in cur:
                        if not bytes(key).startswith(prefix):
                            break
                        stale.append(bytes(key))
            for key in stale:
                txn.delete(key, db=self.dbs.resync)
        self._truncate(txn)

    # -- writing --

    def append(self, txn: Any, change: Change, origin: str = "") -> int:
        """Queue ``change`` for every peer; return its sequence number.

        ``origin`` is empty for this node's own writes, else the peer a
        relayed change came from (the stream to that peer skips it).
        """
        seq = self.head(txn) + 1
        txn.put(pack_u64(seq), _entry(origin, change), db=self.dbs.log)
        txn.put(b"log_head", pack_u64(seq), db=self.dbs.meta)
        for digest in body_hashes(change):
            blobs.add_reference_to_existing(txn, self.dbs, digest)
        for peer in self.peers:
            if seq - self.cursor(txn, peer) > self.max_lag:
                self._overflow(txn, peer, seq)
        return seq

    def _overflow(self, txn: Any, peer: str, head: int) -> None:
        start = self.cursor(txn, peer)
        with txn.cursor(db=self.dbs.log) as cur:
            if cur.set_range(pack_u64(start + 1)):
                for key, raw in cur:
                    if unpack_u64(bytes(key)) > head:
                        break
                    change = _change_of(bytes(raw))
                    since = getattr(change, "modseq", 0)
                    self._mark(txn, peer, mark_of(change), RESYNC_OVERFLOW, since)
        txn.put(peer.encode(), pack_u64(head), db=self.dbs.cursors)
        self._truncate(txn)

    def ack(self, txn: Any, peer: str, seq: int) -> bool:
        """Record that ``peer`` applied everything up to ``seq``; False if stale
        (or if ``peer`` is no longer configured: a reload removed it)."""
        if peer not in self.peers or seq <= self.cursor(txn, peer):
            return False  # duplicate or reordered ack: cursors never go back
        seq = min(seq, self.head(txn))
        txn.put(peer.encode(), pack_u64(seq), db=self.dbs.cursors)
        self._truncate(txn)
        return True

    def _truncate(self, txn: Any) -> None:
        if self.peers:
            low = min(self.cursor(txn, p) for p in self.peers)
        else:
            low = self.head(txn)
        with txn.cursor(db=self.dbs.log) as cur:
            if not cur.first():
                return
            while True:
                key = bytes(cur.key())
                if not key or unpack_u64(key) > low:
                    break
                for digest in body_hashes(_change_of(bytes(cur.value()))):
                    blobs.drop_reference(txn, self.dbs, digest)
                if not cur.delete():
                    break

    # -- reading --

    def entries(self, txn: Any, after: int, limit: int) -> list[tuple[int, Change]]:
        """Up to ``limit`` entries with a sequence number above ``after``."""
        return [(seq, change) for seq, change, _ in self.entries_with_origin(txn, after, limit)]

    def entries_with_origin(
        self, txn: Any, after: int, limit: int
    ) -> list[tuple[int, Change, str]]:
        """Like :meth:`entries`, with each entry's origin ("" = written here)."""
        out: list[tuple[int, Change, str]] = []
        with txn.cursor(db=self.dbs.log) as cur:
            if cur.set_range(pack_u64(after + 1)):
                for key, raw in cur:
                    origin, _, encoded = bytes(raw).partition(b"\0")
                    out.append((unpack_u64(bytes(key)), decode_change(encoded), origin.decode()))
                    if len(out) >= limit:
                        break
        return out

    def backlog_size(self, txn: Any, after: int, limit: int) -> tuple[int, int, int]:
        """The entries after ``after`` up to the head: how many, the message
        octets among the first ``limit`` of them, and how many were read for it."""
        entries = max(0, self.head(txn) - after)
        octets = read = 0
        if entries:
            with txn.cursor(db=self.dbs.log) as cur:
                if cur.set_range(pack_u64(after + 1)):
                    for _key, raw in cur:
                        if read >= limit:
                            break
                        octets += message_octets(decode_change(bytes(raw).partition(b"\0")[2]))
                        read += 1
        return entries, octets, read

    def backlog(self, txn: Any) -> list[PeerBacklog]:
        head = self.head(txn)
        return [PeerBacklog(p, self.cursor(txn, p), head - self.cursor(txn, p)) for p in self.peers]

    # -- resync marks --

    def _mark(self, txn: Any, peer: str, mailbox: bytes, reason: str, since: int) -> None:
        key = _resync_key(peer, mailbox)
        old = txn.get(key, db=self.dbs.resync)
        if old is not None:
            old_reason, old_since, _ = _mark_value(bytes(old))
            since = min(since, old_since)  # keep the earliest point of divergence
            if old_reason in GAP_REASONS and reason not in GAP_REASONS:
                reason = old_reason  # a gap stays one until a resync closes it
        raw = txn.get(b"mark_seq", db=self.dbs.meta)
        marked_at = (unpack_u64(bytes(raw)) if raw is not None else 0) + 1
        txn.put(b"mark_seq", pack_u64(marked_at), db=self.dbs.meta)
        txn.put(key, pack([reason, since, marked_at]), db=self.dbs.resync)

    def mark_resync(self, txn: Any, peer: str, mailbox: bytes, reason: str, since: int) -> None:
        """Record that ``mailbox`` must be resynchronised with ``peer`` (I6: nothing forgotten)."""
        self._mark(txn, peer, mailbox, reason, since)

    def clear_resync(self, txn: Any, peer: str, mailbox: bytes) -> None:
        txn.delete(_resync_key(peer, mailbox), db=self.dbs.resync)

    def clear_resync_unless_marked_since(
        self, txn: Any, peer: str, mailbox: bytes, marked_at: int
    ) -> bool:
        """Clear the mark (peer, mailbox) unless it was set after ``marked_at``
        (the mark a resync started from): a divergence found while the resync
        ran (the log dropped the peer's backlog again) is not forgotten (I6).
        Whether it went."""
        key = _resync_key(peer, mailbox)
        raw = txn.get(key, db=self.dbs.resync)
        if raw is not None and _mark_value(bytes(raw))[2] > marked_at:
            return False
        txn.delete(key, db=self.dbs.resync)
        return True

    def is_marked(self, txn: Any, mailbox: bytes) -> bool:
        """Whether ``mailbox`` awaits a resync with any configured peer."""
        return any(
            txn.get(_resync_key(peer, mailbox), db=self.dbs.resync) is not None
            for peer in self.peers
        )

    def resync_mark(self, txn: Any, peer: str, mailbox: bytes) -> ResyncMark | None:
        raw = txn.get(_resync_key(peer, mailbox), db=self.dbs.resync)
        if raw is None:
            return None
        return ResyncMark(peer, mailbox, *_mark_value(bytes(raw)))

    def gapped(self, txn: Any, peer: str) -> frozenset[bytes]:
        """The mailboxes whose copy on ``peer`` lacks changes of this log (a
        gap mark, :data:`GAP_REASONS`)."""
        prefix = _resync_key(peer, b"")
        out = []
        with txn.cursor(db=self.dbs.resync) as cur:
            if cur.set_range(prefix):
                for key, raw in cur:
                    key = bytes(key)
                    if not key.startswith(prefix):
                        break
                    if _mark_value(bytes(raw))[0] in GAP_REASONS:
                        out.append(key[len(prefix) :])
        return frozenset(out)

    def resync_marks(self, txn: Any) -> list[ResyncMark]:
        out = []
        for key, raw in txn.cursor(db=self.dbs.resync):
            peer, mailbox = bytes(key).split(b"\0", 1)
            out.append(ResyncMark(peer.decode(), mailbox, *_mark_value(bytes(raw))))
        return out
