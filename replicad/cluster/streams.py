"""Change streams: the pump to each peer, applying what peers send, ACKs, lag (architecture.md §6).

Per peer, the master streams its durable log from the peer's
acknowledgement (:class:`~replicad.cluster.outbox.OutboxStream`: a window
bounded in changes and body octets), one untagged frame per change (I8).
The peer applies in arrival order, a burst per store transaction, and ACKs
cumulatively, naming the changes it could not apply, which count as no copy
(I1).  A node that applies changes from S also logs them (origin S) when a
neighbour has no direct link to S, and streams them on (relays); a stream
skips what its peer gets elsewhere.  A change that contradicts this node's
copy is not applied but marked for the resync layer.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Final

import trio

from replicad.blob import Blob
from replicad.cluster.catchup import AckRate
from replicad.cluster.changewire import (
    body_bytes,
    from_wire,
    mailboxes_of,
    mbox_binding,
    to_wire,
)
from replicad.cluster.copies import CopyWaits
from replicad.cluster.links import OUTBOX_WINDOW, OUTBOX_WINDOW_BYTES, Links
from replicad.cluster.resync import ALL_MAILBOXES, STEP_TIMEOUT
from replicad.cluster.session import MAX_LAG_SAMPLES, PeerSession
from replicad.cluster.signals import Broadcast
from replicad.errors import ProtocolError, ReplicadError, StoreFullError, TemporaryError
from replicad.protocol import commands as c
from replicad.store.changecodec import body_hashes
from replicad.store.changelog import (
    RESYNC_CONFLICT,
    RESYNC_MISSING,
    RESYNC_OVERSIZED,
    mark_of,
)
from replicad.store.mailstore import MailStore
from replicad.store.records import MailboxMerged, MessageAppended
from replicad.store.replica import CLOCK_SKEW, MISSING_MAILBOX
from replicad.transport.logfmt import log_event

log = logging.getLogger("replicad.cluster")

# Replication buffers are bounded in changes *and* in octets of bodies
# (stored form, replicad.cluster.changewire.body_bytes), since one body may
# be 64 MiB: counts alone let a catch-up over large attachments hold
# 1,024 x 64 MiB.  Each byte bound lets a single larger change through alone
# (it must be sent some time; the frame limit bounds it).  They are
# constants, not settings: the sender's window must fit the receiver's
# inbox (below), and no handshake field tells one node the other's.
#: Most change records applied in one store transaction.
MAX_APPLY_BURST: Final = 512
#: Most body octets applied in one store transaction: every body of a burst
#: is checked (inflated, hashed) before the write, so this bounds that
#: memory; 16 MiB still commits hundreds of ordinary messages at once (W1).
APPLY_BURST_BYTES: Final = 16 * 1024 * 1024
#: Most received changes waiting to be applied, and most body octets among
#: them; past either the reader stops reading, which is the backpressure on
#: the sender (I9: bounded memory).  A receiver holds at most these, the
#: burst being applied (taken from them) and one frame being read.
MAX_INBOX: Final = 1024
MAX_INBOX_BYTES: Final = 32 * 1024 * 1024
#: While the store is full, a replicated burst is tried again after this
#: long, doubling up to the maximum (no ACK meanwhile).
STORE_FULL_RETRY_MIN: Final = 0.5
STORE_FULL_RETRY_MAX: Final = 10.0

if OUTBOX_WINDOW > MAX_INBOX or OUTBOX_WINDOW_BYTES > MAX_INBOX_BYTES:
    raise RuntimeError("the outbox window must fit the receiver's inbox (outbox.py, Deadlock)")


class ChangeStreams:
    """Every peer's change stream, both ways: one pump, applier and ACK writer per link."""

    def __init__(
        self,
        *,
        name: str,
        store: MailStore,
        links: Links,
        copies: CopyWaits,
        order: Callable[[], tuple[str, ...]],
        log_grew: Broadcast,
        gaps_found: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        #: A peer's copy has a new gap: the resync that closes it should start
        #: now, since the stream of those mailboxes waits for it (streamgaps.py).
        self.gaps_found = gaps_found
        self.store = store
        self.links = links
        self.copies = copies
        self.order = order  # every node this node knows of (they may relay)
        self.log_grew = log_grew
        self.started_at = 0.0
        self._write_times: dict[int, float] = {}  # our log seq -> when it was written
        self._caught_up_at: dict[str, float] = {}  # peer -> when it last had everything
        #: Acknowledgements per peer, for the catch-up rate (replicad.cluster.catchup).
        self.ack_rates: dict[str, AckRate] = {}
        self.changes_applied = 0
        self.changes_sent = 0
        self.changes_oversized = 0
        self.changes_held_back = 0  # for a resync that closes a gap (streamgaps.py)
        self.changes_refused_skew = 0

    def log_changed(self) -> None:
        """New entries are in the log: wake every peer's pump."""
        self.log_grew.fire()

    def note_write(self, seq: int) -> None:
        """Log entry ``seq`` was written now (for the peers' replication lag)."""
        self._write_times[seq] = trio.current_time()

    # -- sending --

    async def pump(self, session: PeerSession) -> None:
        """Stream our log to the peer from its acknowledgement (I1 resume, I8 one frame)."""
        outbox = session.outbox
        while True:
            changed = self.log_grew.event()
            want = outbox.next_range()
            if want is None:  # the window is full (in changes or in bytes)
                with trio.move_on_after(1.0):
                    await changed.wait()
                continue
            # One read transaction (one thread hop) for positions, entries and
            # bodies: the hops, not the work, dominate a single change's latency.
            batch = await self.store.outbox_batch(
                session.peer, want.after, want.limit, want.max_bytes, want.alone
            )
            if batch.cursor > outbox.acked:
                outbox.on_resync_jump(batch.cursor)  # the log dropped this peer's backlog
                session.gaps.on_new_gap()
                continue
            if session.gaps.new_gaps(batch.gapped):
                self.gaps_found()
            entries = batch.entries
            if not entries:
                if batch.full:  # the next change waits for room in the window
                    with trio.move_on_after(1.0):
                        await changed.wait()
                elif batch.head > outbox.sent:
                    outbox.on_sent(batch.head)  # the range was truncated away
                else:
                    with trio.move_on_after(1.0):
                        await changed.wait()
                continue
            gapped = batch.gapped
            bodies = batch.bodies
            for seq, change, origin in entries:
                if not self._wants(session, origin):
                    continue
                if session.gaps.holds_back(change, origin, gapped, seq):
                    self.changes_held_back += 1
                    continue  # the resync that closes the peer's gap brings it
                weight = await self._send_change(session, seq, change, bodies)
                if weight is not None:
                    outbox.on_frame(seq, weight)
                    session.last_sent = seq
                    self.changes_sent += 1
            await session.link.flush()
            last = entries[-1][0]
            outbox.on_sent(last)
            if last > session.last_sent:
                # Entries the peer does not need (relayed from it, or from a node
                # it has a link to): the ACK of our last frame also covers them.
                if outbox.acked >= session.last_sent:
                    await self.on_ack(session, last)
                else:
                    session.skip_to[session.last_sent] = last

    def _wants(self, session: PeerSession, origin: str) -> bool:
        """Does the peer need an entry from ``origin`` ("" = written here) from us?"""
        if not origin:
            return True
        if origin == session.peer:
            return False
        # A peer with a direct link to the origin gets it from there.
        return self.links.routing.advertised(session.peer, origin) != 1

    async def _send_change(
        self,
        session: PeerSession,
        seq: int,
        change: Any,
        bodies: dict[bytes, Blob],
    ) -> int | None:
        """Queue the frame of one log entry and return the octets of bodies it
        carries (``body_bytes``); None if there is nothing to send."""
        if (
            isinstance(change, MailboxMerged)
            and change.peer == session.peer
            and not self._relays_for(session.peer)
        ):
            # The merge of a resync with this very peer: its UPDATE brings it
            # the merged state, and its copy, which the merge differed from,
            # could never apply the plan (resync.md §7).
            return None
        ids: dict[bytes, int] = {}
        for guid in mailboxes_of(change):
            mid = session.stream_ids.get(guid)
            if mid is None:
                status = await self.store.mailbox_by_guid(guid)
                if status is None:
                    return None  # deleted since; the DELETE that follows tells the peer
                mid, new = session.mbox_id(status.user, status.name, status.guid)
                if new:
                    await session.send_mbox(mbox_binding(mid, status))
                # The stream binds by GUID: a later rename needs no new MBOX.
                session.stream_ids[guid] = mid
            ids[guid] = mid
        if isinstance(change, MailboxMerged):
            change = await self._held_by(session, change)
        body = bodies.get(change.body_hash) if isinstance(change, MessageAppended) else None
        frame = to_wire(seq, change, ids, body, bodies)
        try:
            session.link.queue(lambda conn: conn.send_untagged(frame))
        except ProtocolError as exc:
            await self._skip_oversized(session, seq, change, exc)
            return None
        return body_bytes(frame)

    async def _skip_oversized(
        self, session: PeerSession, seq: int, change: Any, exc: ProtocolError
    ) -> None:
        """A change too large for the link (or not encodable): the encoder
        refused it before queueing a byte, so the link is intact.  Resending
        it would fail the same way on every reconnect and the peer would
        never catch up (I9): it is skipped, the peer's ACK of what follows
        covers it, and the mark makes the resync layer bring the mailbox to
        the peer in UPDATEs of bounded size instead."""
        try:
            mailbox = mark_of(change)
        except TypeError:
            mailbox = ALL_MAILBOXES  # a mailbox-level change: every mailbox
        await self.store.mark_resync([session.peer], mailbox, RESYNC_OVERSIZED, 0)
        log_event(
            log,
            logging.ERROR,
            "change-too-large",
            peer=session.peer,
            seq=seq,
            mailbox=mailbox.hex(),
            reason=str(exc),
        )
        self.changes_oversized += 1

    async def _held_by(self, session: PeerSession, change: MailboxMerged) -> MailboxMerged:
        """``change`` with every body the peer stores in ``held``, so that only
        bodies it lacks cross (HAVE, seed 004; resync.md §7).  The bodies of the
        state the plan applies to are held already (the store recorded them);
        HAVE asks for the rest, which the peer may hold in any mailbox (e.g.
        the merge brought here what it had).  A body released there before the
        change applies makes it fail like any change that lacks a body: marked,
        and repaired by a resync.  No answer: every body is sent."""
        ask = tuple(sorted(set(body_hashes(change))))
        if not ask:
            return change
        try:
            have = await session.request(c.Have(ask), timeout=STEP_TIMEOUT)
        except (ReplicadError, trio.TooSlowError):
            return change
        return replace(change, held=change.held | (set(ask) & set(have.hashes)))

    def _relays_for(self, peer: str) -> bool:
        """May ``peer`` pass our changes on to a node with no link to us?  (A
        configured node other than the two of us is not linked here.)"""
        sessions = self.links.sessions
        return any(n not in sessions for n in self.order() if n not in (self.name, peer))

    # -- acknowledgements --

    async def on_ack(
        self, session: PeerSession, seq: int, refused: frozenset[int] = frozenset()
    ) -> None:
        """The peer holds our log up to ``seq`` (and what that ACK covers) but ``refused``."""
        covered = session.skip_to.pop(seq, seq)
        previous = session.outbox.acked
        if not session.outbox.on_ack(covered):
            return
        # Waiting clients first: the peer has the change on disk now (I1).
        # Covered entries skipped as relayed from elsewhere were never ours;
        # ours held back for a resync (streamgaps.py) the peer does not hold,
        # so they count as refused: no write is confirmed by a copy that
        # does not exist.
        self.copies.acked(session.peer, covered, refused | session.gaps.not_held(covered))
        now = trio.current_time()
        for s in range(previous + 1, covered + 1):
            written = self._write_times.get(s)
            if written is not None:
                session.lag.append(now - written)
        self._prune_write_times()
        self._caught_up_at[session.peer] = now  # its last acknowledgement
        self.ack_rates.setdefault(session.peer, AckRate()).acked(now, covered)
        # The durable cursor only decides where a restarted stream resumes
        # (resending a little more is harmless), so it is written lazily.
        session.ack_dirty.set()
        self.log_grew.fire()

    async def persist_acks(self, session: PeerSession) -> None:
        """Write the peer's acknowledged position at most every 50 ms (one fsync).

        A full store only delays it: the cursor decides where a restarted
        stream resumes, and resending a little more is harmless."""
        try:
            while True:
                await session.ack_dirty.wait()
                session.ack_dirty = trio.Event()
                try:
                    await self.store.ack(session.peer, session.outbox.acked)
                except TemporaryError as exc:
                    log_event(
                        log,
                        logging.WARNING,
                        "ack-not-persisted",
                        peer=session.peer,
                        reason=str(exc),
                    )
                    session.ack_dirty.set()
                    await trio.sleep(STORE_FULL_RETRY_MAX)
                await trio.sleep(0.05)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(ReplicadError):
                await self.store.ack(session.peer, session.outbox.acked)

    def lag_seconds(self, peer: str, head: int, cursor: int | None) -> float | None:
        """How far behind ``peer`` is, in seconds: the age of the oldest change it
        has not acknowledged when this process wrote it, else (a backlog
        older than this process) the time since the peer's last
        acknowledgement or since start-up.  0 when it is caught up."""
        if cursor is None:
            return None
        now = trio.current_time()
        if cursor >= head:
            self._caught_up_at[peer] = now
            return 0.0
        for seq, written in self._write_times.items():
            if seq > cursor:
                return round(now - written, 3)
        since = self._caught_up_at.get(peer, self.started_at)
        return round(now - since, 3)

    def _prune_write_times(self) -> None:
        if not self._write_times:
            return
        low = min((s.outbox.acked for s in self.links.sessions.values()), default=0)
        while self._write_times:
            first = next(iter(self._write_times))
            if first > low and len(self._write_times) <= MAX_LAG_SAMPLES * 100:
                break
            del self._write_times[first]

    # -- receiving --

    async def receive(self, session: PeerSession, change: c.Change) -> None:
        """Queue a received change for the applier; wait for room first (backpressure)."""
        # The applier takes everything queued as one transaction; reading goes
        # on meanwhile, so the next burst is as large as what arrived during
        # the last commit.
        weight = body_bytes(change)
        while len(session.inbox) >= MAX_INBOX or (
            session.inbox_bytes and session.inbox_bytes + weight > MAX_INBOX_BYTES
        ):
            await session.inbox_space.wait()
        session.inbox.append((change, weight))
        session.inbox_bytes += weight
        session.peak_inbox_bytes = max(session.peak_inbox_bytes, session.inbox_bytes)
        session.inbox_ready.set()

    async def applier(self, session: PeerSession) -> None:
        """Apply the peer's changes in arrival order, a burst per transaction (I1, I8)."""
        while True:
            await session.inbox_ready.wait()
            session.inbox_ready = trio.Event()
            inbox = session.inbox
            while inbox:
                # At most MAX_APPLY_BURST changes and APPLY_BURST_BYTES of
                # bodies; a larger change alone.
                burst: list[c.Change] = []
                size = 0
                while inbox and len(burst) < MAX_APPLY_BURST:
                    weight = inbox[0][1]
                    if burst and size + weight > APPLY_BURST_BYTES:
                        break
                    burst.append(inbox.popleft()[0])
                    size += weight
                session.inbox_bytes -= size
                session.inbox_space.set()
                session.inbox_space = trio.Event()
                await self.apply_burst(session, burst)

    async def apply_burst(self, session: PeerSession, frames: list[c.Change]) -> None:
        """Apply a master's changes in order, durably, then ACK the last (I1)."""
        items = []
        for frame in frames:
            try:
                items.append(from_wire(frame, session.in_ids))
            except KeyError as exc:
                raise ProtocolError(
                    f"change {frame.seq} names an unbound mailbox id {exc}"
                ) from None
        # Relay what this link brings to neighbours with no link to its sender
        # (A-B-C with A-C down: B passes C's changes on to A).
        relay = any(
            self.links.routing.advertised(name, session.peer) != 1
            for name in self.links.sessions
            if name != session.peer
        )
        results = await self._apply_when_room(session, items, relay)
        if relay:
            self.log_changed()
        refused: list[int] = []
        for (change, _), frame, result in zip(items, frames, results, strict=True):
            if isinstance(result, ReplicadError) or result.outcome.value == "diverged":
                # Not applied: not a copy for the sender's durability count (I1).
                refused.append(frame.seq)
            if isinstance(result, ReplicadError):
                await self._not_applied(session, change, frame, result)
            elif result.outcome.value == "diverged":
                await self._diverged(session, frame, result.detail)
        self.changes_applied += len(frames)
        session.applied_seq = session.acked_seq = frames[-1].seq
        await session.send_untagged(c.Ack(frames[-1].seq, tuple(refused)))

    async def _not_applied(
        self, session: PeerSession, change: Any, frame: c.Change, error: ReplicadError
    ) -> None:
        """Not applied (e.g. a COPY of a body this node never had): the
        mailbox needs the resync layer, whose UPDATE carries what is missing
        (I6); the stream goes on."""
        with contextlib.suppress(TypeError):
            await self.store.mark_resync([session.peer], mark_of(change), RESYNC_MISSING, 0)
        log_event(
            log,
            logging.WARNING,
            "change-not-applied",
            peer=session.peer,
            seq=frame.seq,
            reason=str(error),
        )

    async def _diverged(self, session: PeerSession, frame: c.Change, detail: str) -> None:
        """A change that contradicts this copy (marked by the store), or one
        stamped beyond the clock bound (I5)."""
        if detail == MISSING_MAILBOX:
            await self._mark_by_name(session, frame)
        skewed = detail.startswith(CLOCK_SKEW)
        if skewed:
            self.changes_refused_skew += 1
        log_event(
            log,
            logging.ERROR if skewed else logging.WARNING,
            "clock-skew" if skewed else "change-diverged",
            peer=session.peer,
            seq=frame.seq,
            detail=detail,
        )

    async def _apply_when_room(
        self, session: PeerSession, items: list[Any], relay: bool
    ) -> list[Any]:
        """Apply a burst; while the store is full, wait and try again.

        Nothing is acknowledged meanwhile (the master keeps the changes, I1),
        the link, its pings and the reads this node serves go on, and the
        burst applies by itself once there is room again: disk space freed,
        or ``node.map_size`` raised and reloaded (SIGHUP).  A full replica
        must not exit: it would restart into the same changes (I7)."""
        wait = STORE_FULL_RETRY_MIN
        while True:
            try:
                return await self.store.apply_replicated_many(items, session.peer, relay=relay)
            except StoreFullError as exc:
                log_event(
                    log,
                    logging.ERROR,
                    "apply-paused-store-full",
                    peer=session.peer,
                    changes=len(items),
                    retry_s=wait,
                    reason=str(exc),
                )
                await trio.sleep(wait)
                wait = min(wait * 2, STORE_FULL_RETRY_MAX)

    async def _mark_by_name(self, session: PeerSession, frame: c.Change) -> None:
        """A change for a mailbox GUID this node lacks: if it holds another
        mailbox under that name (both sides of a partition created it), mark
        that one, which the mark scan can act on (RESYNC by name)."""
        for mid in c.mbox_ids(frame):
            binding = session.in_ids.get(mid)
            if binding is None:
                continue
            try:
                status = await self.store.mailbox_status(binding.user, binding.name)
            except ReplicadError:
                continue
            if status.guid != binding.guid:
                await self.store.mark_resync([session.peer], status.guid, RESYNC_CONFLICT, 0)
