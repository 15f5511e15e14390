"""Resync: bring a peer's copy of a mailbox and the master's to one merged state.

The trio glue around :mod:`replicad.model.merge` (pure) and the store's
:mod:`~replicad.store.statesync` (docs/architecture.md §7, protocol-spec/resync.md).

**Who resyncs what.**  A resync always runs at the mailbox's *master*
``M`` with one directly linked peer ``P``, so conflicts are resolved in one
place and shipped as ordinary results, never chosen twice (seed 001: "the
conflicts must be handled at the same time on both sides").  Work comes
from resync marks (the store's ``resync`` table):

* a mark ``(P, X)`` held by the master of ``X``: queued for ``P``;
* a mark held by another node (it applied something that contradicted its
  copy, or it was master of ``X`` on its side of a partition): it sends
  ``RESYNC X`` to the master, which queues ``X`` for it;
* ``RESYNC`` from a peer.

**One resync** (:meth:`Resyncer.resync_one`): ``SYNC`` pulls P's state of
``X`` (every message with its flag registers, every tombstone); the master
merges it with its own (:func:`~replicad.model.merge.merge`); if its own
copy changes it FETCHes the bodies it lacks and applies the plan in one
transaction, logged as a ``MailboxMerged`` that its followers apply as the
same plan; then it sends P one ``UPDATE`` with P's plan (bodies P does not
``HAVE`` included), which P applies in one transaction if its
HIGHESTMODSEQ has not moved.  P then drops its marks on ``X``, the master
its mark ``(P, X)``.  Any failure (link down, a write raced the merge)
leaves the marks in place and the work is retried.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, Final

import trio

from replicad.blob import Blob
from replicad.cluster.changewire import MboxBinding, mbox_binding, ops_from_wire, ops_to_wire
from replicad.cluster.interfaces import ClusterView, Peer
from replicad.cluster.masters import MasterKey, master_key
from replicad.cluster.subsync import SubscriptionSync
from replicad.errors import (
    ConflictError,
    MailboxDeletedError,
    NotFoundError,
    ProtocolError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
)
from replicad.model.digest import entries_digest
from replicad.model.merge import (
    FlagMark,
    MailboxState,
    MergePlan,
    MessageState,
    PlanOp,
    PutMessage,
    Tombstone,
    merge,
    plan,
)
from replicad.protocol import commands as c
from replicad.store.changelog import ResyncMark
from replicad.store.index import INBOX
from replicad.store.namespace import Claim
from replicad.store.subscriptions import SUBSCRIPTIONS_MARK
from replicad.transport.logfmt import log_event
from replicad.uidset import UidSet

log = logging.getLogger("replicad.resync")

#: Mark of a whole peer (a new peer): every mailbox (changelog.register_peers).
ALL_MAILBOXES: Final = bytes(16)
#: Most bodies FETCHed or shipped in one command (bounded frames, I9).
BODY_BATCH: Final = 64
#: Most body octets in one UPDATE (the frame limit is 64 MiB, DEFAULT_MAX_FRAME).
UPDATE_BODY_BYTES: Final = 32 * 1024 * 1024
#: ``since`` of a SYNC that asks for no entries (the top of the modseq
#: range the decoder accepts): it only learns whether the peer deleted the mailbox.
NO_ENTRIES_SINCE: Final = 2**62 - 1
#: How long one resync step may wait for the peer.
STEP_TIMEOUT: Final = 60.0
#: Resyncs run at once with one peer (each one mailbox).  Each holds both
#: states of its mailbox in memory (resync.md §9), so this bounds that too.
PARALLEL_RESYNCS: Final = 4
#: Most of a SYNC reply collected before the merge, in items: an entry
#: (message or tombstone) counts one, and one more for each flag register,
#: GUID and move it carries, so a message's weight follows its size (no
#: bodies: those are FETCHed, BODY_BATCH at a time).  An item is ~30-100
#: octets on the wire and a few times that as objects here: 256k items
#: hold some 50-100 MiB.  A larger reply is dropped as it arrives and the
#: state pulled again in UID ranges of at most this much each
#: (:meth:`Resyncer._pull_in_ranges`), so a mailbox of any size resyncs.
SYNC_BUDGET: Final = 256 * 1024
#: Above every modseq a store holds (the wire's largest, verbs.md "Value
#: ranges"): a SYNC with it as ``since`` sends only the UIDs asked for.
MAX_MODSEQ: Final = c.MAX_COUNTER


class SyncTooLarge(TemporaryError):
    """A SYNC reply went past :data:`SYNC_BUDGET` (its entries were dropped)."""

    def __init__(self, peer: str, reply: Any) -> None:
        super().__init__(f"SYNC from {peer}: reply above {SYNC_BUDGET} items")
        self.reply = reply


class _Collected:
    """The data frames of one SYNC or FETCH in progress; a SYNC's are counted
    against :data:`SYNC_BUDGET` and dropped past it."""

    __slots__ = ("frames", "items", "over")

    def __init__(self) -> None:
        self.frames: list[c.Untagged] = []
        self.items = 0
        self.over = False


def sync_items(frame: c.SyncData) -> int:
    """The weight of a ``* SYNC`` frame against :data:`SYNC_BUDGET`."""
    return sum(1 + len(m.marks) for m in frame.messages) + sum(
        1 + len(t.guids) + len(t.moved) for t in frame.gone
    )


class Resyncer:
    """Resync work of one node: queues per peer, the master's side, the peer's side."""

    def __init__(self, node: ClusterView, *, subscriptions: SubscriptionSync | None = None) -> None:
        self.node = node
        self.store = node.store
        #: Exchanges IMAP subscriptions for the subscriptions mark (resync.md §10).
        self.subscriptions = subscriptions
        self.queued: dict[str, list[bytes]] = {}  # FIFO: a failing one waits its turn
        self.running: dict[str, set[bytes]] = {}
        self._wake: dict[str, trio.Event] = {}
        self.done = 0
        self.failed = 0
        self.merged_here = 0
        self.updates_sent = 0
        self.incremental = 0  # SYNCs that sent only what may differ, and checked out
        self.fallbacks = 0  # incremental SYNCs whose rest differed: pulled whole
        #: (peer, mailbox) to SYNC whole whatever the hints (``replicad sync --full``).
        self.full: set[tuple[str, bytes]] = set()
        #: (peer, mailbox) -> the ``since`` of a RESYNC request (an incremental hint).
        self.requested: dict[tuple[str, bytes], int] = {}
        #: Data frames of a SYNC or FETCH in progress, by (verb, peer, mbox id).
        self.collect: dict[tuple[str, str, int], _Collected] = {}
        #: The most SYNC items ever held for one request (tests assert on it).
        self.peak_sync_items = 0
        self.ranged = 0  # SYNC replies above the budget, pulled again in UID ranges
        self._scan_now = trio.Event()

    # -- queueing --

    def enqueue(self, peer: str, mailboxes: Sequence[bytes], *, full: bool = False) -> None:
        if full:
            self.full.update((peer, m) for m in mailboxes)
        queue = self.queued.setdefault(peer, [])
        fresh = [m for m in dict.fromkeys(mailboxes) if m not in queue]
        if not fresh:
            return
        queue.extend(fresh)
        self._wake.setdefault(peer, trio.Event()).set()

    async def enqueue_mastered(self, peer: str, users: Sequence[str] | None = None) -> int:
        """Queue every mailbox (of ``users``) this node masters for a resync with ``peer``."""
        node = self.node
        found = []
        for user in users if users is not None else await self.store.list_users():
            for status in await self.store.list_mailboxes(user):
                key = master_key(node.granularity, status.user, status.name)
                try:
                    master = await node.master_of(key, trio.current_time() + STEP_TIMEOUT)
                except ReplicadError:
                    continue
                if master == node.name:
                    found.append(status.guid)
        self.enqueue(peer, found)
        return len(found)

    def status(self) -> dict[str, object]:
        return {
            "running": {p: sorted(m.hex() for m in ms) for p, ms in self.running.items()},
            "queued": {p: len(q) for p, q in self.queued.items() if q},
            "done": self.done,
            "failed": self.failed,
            "merged_here": self.merged_here,
            "incremental": self.incremental,
            "fallbacks": self.fallbacks,
            "ranged": self.ranged,
        }

    async def scan_marks(self) -> None:
        """Turn resync marks into work: queued here, or asked of the master (RESYNC)."""
        node = self.node
        marks = await self.store.resync_marks()
        ask: dict[str, dict[tuple[str, str], int]] = {}  # master -> (user, name) -> since
        keys: dict[str, list[MasterKey]] = {}
        for mark in marks:
            if mark.mailbox == ALL_MAILBOXES:
                # A new peer, or one whose backlog the log dropped: every
                # mailbox this node masters is resynced with it, and the
                # subscriptions are exchanged.
                if mark.peer in node.sessions:
                    await self.enqueue_mastered(mark.peer)
                    await self.store.mark_resync([mark.peer], SUBSCRIPTIONS_MARK, mark.reason, 0)
                    await self.store.clear_resync([mark.peer], ALL_MAILBOXES)
                continue
            if mark.mailbox == SUBSCRIPTIONS_MARK:
                await self._exchange_subscriptions(mark.peer)
                continue
            if mark.mailbox in self.running.get(mark.peer, ()):
                continue  # under way; a mark set again meanwhile outlives it
            status = await self.store.mailbox_by_guid(mark.mailbox)
            if status is None and await self.store.mailbox_deleted(mark.mailbox):
                # Deleted here since: the DELETE wins, nothing is left to merge.
                await self.store.clear_resync([mark.peer], mark.mailbox)
                continue
            if status is None:
                # Not here yet (its CREATE comes on another stream): acted on
                # once it is.  A mark on a mailbox replaced under its name
                # stays unused (replicator dsync-status shows it).
                continue
            key = master_key(node.granularity, status.user, status.name)
            try:
                with trio.fail_after(2.0):
                    master = await node.master_of(key, trio.current_time() + 2.0)
            except (ReplicadError, trio.TooSlowError):
                continue
            if master == node.name:
                if mark.peer in node.sessions:
                    self.enqueue(mark.peer, [mark.mailbox])
            elif master in node.sessions:
                named = ask.setdefault(master, {})
                where = (status.user, status.name)
                named[where] = min(named.get(where, mark.since_modseq), mark.since_modseq)
                keys.setdefault(master, []).append(key)
        for master, mailboxes in ask.items():
            session = node.sessions.get(master)
            if session is None:
                continue
            try:
                names = tuple(c.ResyncItem(u, n, s) for (u, n), s in sorted(mailboxes.items()))
                await session.request(c.Resync(names), timeout=STEP_TIMEOUT)
            except ReplicadError as exc:
                for key in keys[master]:
                    node.forget_master(key)  # perhaps no longer the master: look it up again
                log_event(log, logging.INFO, "resync-ask-failed", peer=master, reason=str(exc))

    async def _exchange_subscriptions(self, peer: str) -> None:
        """Act on the subscriptions mark: a SUBSCRIPTIONS exchange with the
        peer, the mark cleared once it went through (resync.md §10)."""
        session = self.node.sessions.get(peer)
        if session is None or self.subscriptions is None:
            return
        try:
            await self.subscriptions.exchange(session)
        except (ReplicadError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log_event(log, logging.INFO, "subscriptions-failed", peer=peer, reason=str(exc))
            return
        await self.store.clear_resync([peer], SUBSCRIPTIONS_MARK)

    def scan_soon(self) -> None:
        """Scan the marks now rather than at the next interval (a stream
        waits for the resync of a gap, streamgaps.py)."""
        self._scan_now.set()

    async def scan_loop(self, interval: float) -> None:
        while True:
            # A new event before the scan: a call during it scans again at once.
            self._scan_now = trio.Event()
            try:
                await self.scan_marks()
            except (ReplicadError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # A link died under a RESYNC: the next scan asks again.
                log_event(log, logging.WARNING, "resync-scan-failed", reason=str(exc))
            with trio.move_on_after(interval):
                await self._scan_now.wait()

    async def worker(self, session: Peer) -> None:
        """Run the peer's queued resyncs, :data:`PARALLEL_RESYNCS` at a time
        (started per link).  Each is one mailbox, on its own MBOX id and
        transactions on both sides, so they need no order between them; run
        together, one's round trips and the peer's work overlap the others'
        (after an overflow the peer waits for all of them, streamgaps.py)."""
        peer = session.peer
        slots = trio.Semaphore(PARALLEL_RESYNCS)
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                mailbox = self._next_queued(peer)
                if mailbox is None:
                    slots.release()
                    # Woken by a mailbox queued, or by a resync ending (one
                    # queued again while it ran may go now).
                    wake = self._wake[peer] = trio.Event()
                    await wake.wait()
                    continue
                self.running.setdefault(peer, set()).add(mailbox)
                nursery.start_soon(self._run_one, session, mailbox, slots)

    def _next_queued(self, peer: str) -> bytes | None:
        """The first mailbox queued for ``peer`` whose resync is not running:
        two resyncs of one mailbox with one peer never run together (each
        checks the peer's copy against the state it read)."""
        queue = self.queued.get(peer, [])
        running = self.running.get(peer, set())
        for i, mailbox in enumerate(queue):
            if mailbox not in running:
                return queue.pop(i)
        return None

    async def _run_one(self, session: Peer, mailbox: bytes, slot: trio.Semaphore) -> None:
        peer = session.peer
        try:
            await self.resync_one(session, mailbox)
            self.done += 1
        except (ReplicadError, trio.TooSlowError) as exc:
            self.failed += 1
            log_event(
                log,
                logging.INFO,
                "resync-failed",
                peer=peer,
                mailbox=mailbox.hex(),
                reason=str(exc) or type(exc).__name__,
            )
            if session.closed:
                raise UnreachableError(f"link to {peer} closed") from None
            await trio.sleep(1.0)  # marks stay; the next scan queues it again
        finally:
            running = self.running.get(peer)
            if running is not None:
                running.discard(mailbox)
                if not running:
                    del self.running[peer]
            slot.release()
            wake = self._wake.get(peer)
            if wake is not None:
                wake.set()

    # -- the master's side --

    async def resync_one(self, session: Peer, mailbox: bytes) -> None:
        """Merge ``mailbox`` between this node (its master) and the peer (module doc).

        A peer that deleted the mailbox answers DELETED: the DELETE wins over
        what this copy got meanwhile, so the master deletes it too, and its
        own DELETE record reaches every other copy (resync.md, mailbox conflicts)."""
        try:
            await self._resync_one(session, mailbox)
        except MailboxDeletedError:
            status = await self.store.mailbox_by_guid(mailbox)
            if status is not None:
                await self.store.delete_mailbox(status.user, status.name)
                self.node.log_changed()
                log_event(
                    log,
                    logging.INFO,
                    "resync-deleted",
                    peer=session.peer,
                    mailbox=mailbox.hex(),
                    name=f"{status.user}/{status.name}",
                )
            await self.store.clear_resync([session.peer], mailbox)

    async def settle_if_deleted_on(self, session: Peer, mailbox: bytes) -> bool:
        """Delete this node's copy of ``mailbox`` if the peer deleted it; whether it did.

        The DELETE wins (resync.md, mailbox conflicts).  A node that missed a
        DELETE (cut off, then restarted past its backlog) holds a mailbox no
        other node has, and no resync brings the DELETE: the master resyncs
        only mailboxes it holds, and a RESYNC by name finds none there.  So
        anti-entropy asks the peer that lacks the mailbox, by GUID: a ``SYNC``
        of no entries (``since`` at the top of the range), which a node that
        deleted it answers ``NO [DELETED]``.  The local delete is logged like
        any other; the nodes that deleted it already take it as a duplicate."""
        status = await self.store.mailbox_by_guid(mailbox)
        if status is None:
            return False
        mid, new = session.mbox_id(status.user, status.name, status.guid)
        key = ("SYNC", session.peer, mid)
        if key in self.collect:
            return False  # a resync of it with this peer is under way: asked again next round
        if new:
            await session.send_mbox(mbox_binding(mid, status))
        self.collect[key] = _Collected()
        try:
            await session.request(c.Sync(mid, NO_ENTRIES_SINCE, None), timeout=STEP_TIMEOUT)
            return False
        except MailboxDeletedError:
            pass
        except NotFoundError:
            return False
        finally:
            self.collect.pop(key, None)
        if await self.store.delete_mailbox_guid(mailbox) is not None:
            self.node.log_changed()
            log_event(
                log,
                logging.INFO,
                "deleted-on-peer",
                peer=session.peer,
                mailbox=mailbox.hex(),
                name=f"{status.user}/{status.name}",
            )
        return True

    async def _resync_one(self, session: Peer, mailbox: bytes) -> None:
        node, store = self.node, self.store
        status = await store.mailbox_by_guid(mailbox)
        if status is None:
            raise NotFoundError(f"mailbox {mailbox.hex()} is not here")
        key = master_key(node.granularity, status.user, status.name)
        if await node.master_of(key, trio.current_time() + STEP_TIMEOUT) != node.name:
            node.forget_master(key)  # perhaps stale: ask the root again
            if await node.master_of(key, trio.current_time() + STEP_TIMEOUT) != node.name:
                raise TemporaryError(f"no longer the master of {key}")
        mid, new = session.mbox_id(status.user, status.name, status.guid)
        if new:
            await session.send_mbox(mbox_binding(mid, status))
        mark = await store.resync_mark(session.peer, mailbox)
        marked_at = mark.marked_at if mark is not None else 0
        since = self._since(session.peer, mailbox, mark)
        # Each SYNC waits at most STEP_TIMEOUT for its reply (a mailbox
        # pulled in ranges takes several).
        # Our state as the incremental SYNC is checked against, and the first
        # merge's (a write landing in between makes its transaction refuse,
        # then the state is read again): one read of a large copy, not two.
        read: MailboxState | None = await self._own_state(mailbox) if since else None
        pulled = await self._pull_state(
            session,
            mid,
            mailbox,
            read,
            since,
            large=status.messages >= SYNC_BUDGET // 2,
        )
        if pulled is None:
            # The peer has no such mailbox (lost, or never got the CREATE): it
            # gets ours whole, created by the UPDATE under our claim.
            ours = await self._own_state(mailbox)
            empty = MailboxState(ours.uidvalidity, 1, 0, (), ())
            await self._push_update(
                session,
                mid,
                empty,
                plan(empty, ours),
                None,
                Claim(status.name_stamp, status.claim),
                create=True,
            )
            await self._close(session, mailbox, ours.highestmodseq, marked_at)
            return
        theirs, their_guid, their_claim = pulled
        if their_guid != mailbox and status.name != INBOX:
            raise ProtocolError(
                f"SYNC from {session.peer}: another mailbox answered for {mailbox.hex()}"
            )
        # Another GUID: the peer holds another INBOX (both sides of a
        # partition delivered a first message).  This one stays; the peer's is
        # merged in as a foreign UID space (merge rule 3: UIDVALIDITY 0 always
        # loses), so every message of both survives (I6) and the peer's goes.
        replaces = None if their_guid == mailbox else their_guid
        claim = Claim(status.name_stamp, status.claim)
        if replaces is None and their_claim > claim:
            # The peer renamed the mailbox while cut off: its claim is newer
            # and wins here too, logged so every other copy takes it (I4).
            if await store.adopt_claim(mailbox, their_claim) is not None:
                node.log_changed()
            claim = their_claim
        side = replace(theirs, uidvalidity=0) if replaces else theirs
        for attempt in range(5):
            ours = read if read is not None else await self._own_state(mailbox)
            read = None
            merged = merge([ours, side])
            if replaces:
                # Clients of either mailbox may have seen either UIDVALIDITY
                # with other UIDs (the two were numbered independently, and the
                # sides may have merged differently before): only a new one is
                # safe for both (I2).  Every client of the name resyncs.
                top = max(ours.uidvalidity, theirs.uidvalidity)
                step = 1 + node.order.index(node.name)
                merged = replace(merged, uidvalidity=_next(top, step))
            if merged == ours:
                break
            own_plan = plan(ours, merged)
            bodies = await self._bodies_for(own_plan, session, mid, theirs)
            try:
                await store.apply_merge(
                    mailbox, ours.highestmodseq, own_plan, bodies, log=True, peer=session.peer
                )
            except ConflictError:
                if attempt == 4:
                    raise
                continue  # a write landed meanwhile: merge again
            self.merged_here += 1
            node.log_changed()
            log_event(
                log,
                logging.INFO,
                "resync-merged",
                peer=session.peer,
                mailbox=mailbox.hex(),
                ops=len(own_plan.ops),
                highestmodseq=merged.highestmodseq,
            )
            break
        peer_plan = plan(side, merged)
        await self._push_update(session, mid, theirs, peer_plan, replaces, claim)
        await self._close(session, mailbox, merged.highestmodseq, marked_at)

    async def _close(self, session: Peer, mailbox: bytes, delivered: int, marked_at: int) -> None:
        """The peer applied this node's state of ``mailbox`` as of modseq
        ``delivered``: its mark goes, and the stream sends the mailbox's
        later changes again, unless it held back one above ``delivered``
        meanwhile (streamgaps.py), or the mark was set again after the
        resync read it (``marked_at``: the log dropped the peer's backlog
        meanwhile); then the next resync brings the rest."""
        # Writes waiting for the peer's copy of what it just got (I1).
        self.node.copies_filled(session.peer, session.gaps.delivered(mailbox, delivered))
        if session.gaps.release(mailbox, delivered):
            await self.store.clear_resync_unless_marked_since(session.peer, mailbox, marked_at)

    async def _own_state(self, mailbox: bytes) -> MailboxState:
        found = await self.store.mailbox_state(mailbox)
        if found is None:
            raise NotFoundError(f"mailbox {mailbox.hex()} was deleted")
        row, messages, gone = found
        return MailboxState(
            row.uidvalidity, row.uidnext, row.highestmodseq, tuple(messages), tuple(gone)
        )

    def _since(self, peer: str, mailbox: bytes, mark: ResyncMark | None) -> int:
        """The modseq up to which the peer's copy is taken to hold what ours
        holds (0: unknown, SYNC whole).  Marks and RESYNC requests record the
        lowest modseq at which a copy may differ; this is one below the
        lowest of them.  Only a hint: the SYNC checks it (:meth:`_pull_state`)."""
        if (peer, mailbox) in self.full:
            self.full.discard((peer, mailbox))
            self.requested.pop((peer, mailbox), None)
            return 0
        points = []
        if mark is not None:
            points.append(mark.since_modseq)
        requested = self.requested.pop((peer, mailbox), None)
        if requested is not None:
            points.append(requested)
        return max(0, min(points) - 1) if points else 0

    async def _pull_state(
        self,
        session: Peer,
        mid: int,
        mailbox: bytes,
        ours: MailboxState | None,
        since: int,
        large: bool = False,
    ) -> tuple[MailboxState, bytes, Claim] | None:
        """The peer's whole state of the mailbox, its GUID and name claim
        there; None if it has none.

        With ``since`` and ``ours`` (this node's state), an incremental SYNC
        (resync.md §3): only the peer's entries above ``since`` and at every
        UID ``ours`` changed above it cross the wire, with the digest of the
        peer's other entries.  If that digest is the digest of our entries at
        or below ``since`` at the UIDs the peer did not send, the peer holds
        exactly those: its whole state is known.  Otherwise (the hint was
        wrong: the copies differ below it) a second SYNC pulls it whole.

        A whole state above :data:`SYNC_BUDGET` is pulled in UID ranges
        (:meth:`_pull_in_ranges`): at once when ``large`` (this node's copy
        is that large), else once a whole SYNC went past the budget; an
        incremental SYNC past it is given up for the whole state.
        """
        if since and ours is not None:
            changed = [m.uid for m in ours.messages if m.modseq > since]
            changed += [t.uid for t in ours.tombstones if t.modseq > since]
            part: tuple[MailboxState, bytes, bytes, Claim] | None = None
            try:
                part = await self._sync(
                    session, mid, since, UidSet.of(changed) if changed else None
                )
                if part is None:
                    return None
            except SyncTooLarge:
                pass  # not worth it: the whole state, in ranges if need be
            if part is not None:
                state, guid, rest, claim = part
                if guid == mailbox and state.uidvalidity == ours.uidvalidity:
                    sent = {m.uid for m in state.messages} | {t.uid for t in state.tombstones}
                    kept = [m for m in ours.messages if m.modseq <= since and m.uid not in sent]
                    buried = [t for t in ours.tombstones if t.modseq <= since and t.uid not in sent]
                    if entries_digest(kept, buried) == rest:
                        self.incremental += 1
                        return _with_entries(state, kept, buried), guid, claim
            self.fallbacks += 1
            log_event(log, logging.INFO, "resync-sync-whole", peer=session.peer, since=since)
        if large:
            return await self._pull_in_ranges(session, mid)
        try:
            whole_part = await self._sync(session, mid, 0, None)
        except SyncTooLarge:
            return await self._pull_in_ranges(session, mid)
        if whole_part is None:
            return None
        state, guid, _, claim = whole_part
        return state, guid, claim

    async def _pull_in_ranges(
        self, session: Peer, mid: int
    ) -> tuple[MailboxState, bytes, Claim] | None:
        """The peer's whole state, pulled in UID ranges of at most
        :data:`SYNC_BUDGET` items each (no protocol change: a SYNC with
        ``since`` above every modseq sends exactly the UIDs it names).

        The first SYNC (nothing sent) gives the peer's UIDNEXT and
        HIGHESTMODSEQ ``H``.  The ranges follow; the peer may apply changes
        meanwhile, so the entries above ``H`` they brought are set aside, and
        a last, incremental SYNC from ``H`` sends every entry changed since
        with the digest of all the others: equal to the digest of what the
        ranges brought at the other UIDs, the state is exactly the peer's at
        that last SYNC (resync.md §3).  Otherwise the resync fails and is
        retried.  A range past the budget (messages with many registers) is
        halved and asked again."""
        self.ranged += 1
        log_event(log, logging.INFO, "resync-sync-ranged", peer=session.peer, budget=SYNC_BUDGET)
        head = await self._sync(session, mid, MAX_MODSEQ, None)
        if head is None:
            return None
        first, guid, _, _ = head
        top = first.highestmodseq
        messages: list[MessageState] = []
        gone: list[Tombstone] = []
        low, span = 1, max(1, SYNC_BUDGET // 4)  # a UID holds at most one entry
        while low < first.uidnext:
            high = min(first.uidnext - 1, low + span - 1)
            try:
                part = await self._sync(session, mid, MAX_MODSEQ, UidSet.parse(f"{low}:{high}"))
            except SyncTooLarge:
                if span == 1:
                    raise
                span = max(1, span // 2)
                continue
            if part is None:
                return None
            state, there, _, _ = part
            if there != guid or state.uidvalidity != first.uidvalidity:
                raise TemporaryError(f"SYNC from {session.peer}: the mailbox changed under it")
            messages.extend(m for m in state.messages if m.modseq <= top)
            gone.extend(t for t in state.tombstones if t.modseq <= top)
            low = high + 1
        last = await self._sync(session, mid, top, None)
        if last is None:
            return None
        state, there, rest, claim = last
        sent = {m.uid for m in state.messages} | {t.uid for t in state.tombstones}
        kept = [m for m in messages if m.uid not in sent]
        buried = [t for t in gone if t.uid not in sent]
        if (
            there != guid
            or state.uidvalidity != first.uidvalidity
            or entries_digest(kept, buried) != rest
        ):
            raise TemporaryError(f"SYNC from {session.peer}: the ranges did not add up")
        return _with_entries(state, kept, buried), guid, claim

    async def _sync(
        self, session: Peer, mid: int, since: int, uids: UidSet | None
    ) -> tuple[MailboxState, bytes, bytes, Claim] | None:
        """One SYNC: the entries it sent as a state (with the peer's UIDVALIDITY,
        UIDNEXT and HIGHESTMODSEQ), the mailbox GUID there, the digest of
        the rest and the mailbox's name claim there; None if the peer has
        no such mailbox."""
        key = ("SYNC", session.peer, mid)
        collected = self.collect[key] = _Collected()
        try:
            done = await session.request(c.Sync(mid, since, uids), timeout=STEP_TIMEOUT)
        except MailboxDeletedError:
            raise  # not missing: deleted there (resync_one)
        except NotFoundError:
            return None
        finally:
            self.collect.pop(key, None)
        if collected.over:
            raise SyncTooLarge(session.peer, done)
        chunks = collected.frames
        messages: list[MessageState] = []
        gone: list[Tombstone] = []
        for chunk in chunks:
            assert isinstance(chunk, c.SyncData)
            messages.extend(_message_of(m) for m in chunk.messages)
            for t in chunk.gone:
                moved = tuple(sorted((m.guid, m.uid) for m in t.moved))
                try:
                    gone.append(Tombstone(t.uid, frozenset(t.guids), t.modseq, moved))
                except ValueError as exc:
                    raise ProtocolError(f"SYNC from {session.peer}: {exc}") from None
        try:
            state = MailboxState(
                done.uidvalidity,
                done.uidnext,
                done.highestmodseq,
                tuple(sorted(messages, key=lambda m: m.uid)),
                tuple(sorted(gone, key=lambda t: t.uid)),
            )
            return state, done.guid, done.rest, Claim(done.stamp, done.name)
        except ValueError as exc:
            raise ProtocolError(f"SYNC from {session.peer}: {exc}") from None

    async def _bodies_for(
        self, own_plan: MergePlan, session: Peer, mid: int, theirs: MailboxState
    ) -> list[Blob]:
        """Bodies the plan puts that this node lacks, FETCHed from the peer
        (in their stored form, kept as they come once verified)."""
        hashes = {op.message.body_hash for op in own_plan.ops if isinstance(op, PutMessage)}
        have = await self.store.present_bodies(sorted(hashes))
        lacking = hashes - have
        if not lacking:
            return []
        by_hash = {m.body_hash: m.uid for m in theirs.messages if m.body_hash in lacking}
        missing = lacking - set(by_hash)
        if missing:
            raise TemporaryError(f"{len(missing)} bodies are on neither side yet")
        out: list[Blob] = []
        uids = sorted(by_hash.values())
        for start in range(0, len(uids), BODY_BATCH):
            part = uids[start : start + BODY_BATCH]
            key = ("FETCH", session.peer, mid)
            collected = self.collect[key] = _Collected()
            try:
                await session.request(c.Fetch(mid, UidSet.of(part), "BODY"), timeout=STEP_TIMEOUT)
            finally:
                self.collect.pop(key, None)
            frames = collected.frames
            for frame in frames:
                assert isinstance(frame, c.FetchData)
                if frame.body is not None:
                    out.append(frame.body)
        return out

    async def _push_update(
        self,
        session: Peer,
        mid: int,
        theirs: MailboxState,
        peer_plan: MergePlan,
        replaces: bytes | None,
        claim: Claim,
        *,
        create: bool = False,
    ) -> None:
        puts = [op.message for op in peer_plan.ops if isinstance(op, PutMessage)]
        held = {m.uid: m for m in theirs.messages}
        same = frozenset(
            m.uid
            for m in puts
            if m.uid in held
            and held[m.uid].guid == m.guid
            and held[m.uid].body_hash == m.body_hash
            and held[m.uid].internaldate == m.internaldate
            and held[m.uid].size == m.size
        )
        if peer_plan.uidvalidity != theirs.uidvalidity or replaces or create:
            same = frozenset()  # the peer drops its old UID space first
        shipped = {m.body_hash for m in puts if m.uid not in same}
        wanted: set[bytes] = set()
        if shipped:
            have = await session.request(c.Have(tuple(sorted(shipped))), timeout=STEP_TIMEOUT)
            wanted = shipped - set(have.hashes)
        expected = theirs.highestmodseq
        # The peer's old UID space goes with the first part (a new UIDVALIDITY,
        # or its mailbox replaced by ours): what it held there is released.
        fresh_space = peer_plan.uidvalidity != theirs.uidvalidity or replaces is not None
        for part, carry in _chunks(peer_plan.ops, wanted, theirs, fresh_space):
            bodies = await self.store.read_blobs(sorted(carry)) if carry else {}
            update = c.Update(
                mid,
                peer_plan.uidvalidity,
                peer_plan.uidnext,
                peer_plan.highestmodseq,
                expected,
                replaces,
                ops_to_wire(part, bodies, same),
                claim.name,
                claim.stamp,
            )
            await session.request(update, timeout=STEP_TIMEOUT)
            self.updates_sent += 1
            # The next part finds the mailbox as this one left it.
            expected, replaces = peer_plan.highestmodseq, None

    # -- the peer's side --

    async def serve(
        self,
        handler: Callable[[Peer, str, Any], Awaitable[None]],
        session: Peer,
        tag: str,
        cmd: c.Command,
    ) -> None:
        """Run one of the ``serve_*`` handlers; a store error is a NO, a dead link ends it."""
        try:
            await handler(session, tag, cmd)
        except ProtocolError:
            raise  # the peer broke the protocol: the link goes (I9)
        except ReplicadError as exc:
            if not session.closed:
                with contextlib.suppress(ReplicadError):
                    await session.reply_no(tag, "TEMPFAIL", str(exc))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the link died: the master retries on the next one

    def binding(self, session: Peer, mid: int) -> MboxBinding:
        found = session.in_ids.get(mid)
        if found is None:
            raise ProtocolError(f"mailbox id {mid} is not bound")
        return found

    async def _here(self, box: MboxBinding) -> bytes | None:
        """The mailbox a binding names here: by GUID, else (INBOX only, the
        one mailbox two sides may create independently) the one holding its
        name (resync.md, mailbox conflicts)."""
        if await self.store.mailbox_by_guid(box.guid) is not None:
            return box.guid
        if box.name != INBOX:
            return None
        try:
            return (await self.store.mailbox_status(box.user, box.name)).guid
        except ReplicadError:
            return None

    async def _deleted_here(self, session: Peer, tag: str, box: MboxBinding) -> bool:
        """Answer DELETED if the master's mailbox was deleted here (it wins)."""
        if not await self.store.mailbox_deleted(box.guid):
            return False
        await session.reply_no(tag, "DELETED", "mailbox deleted here")
        return True

    async def serve_sync(self, session: Peer, tag: str, cmd: c.Sync) -> None:
        box = self.binding(session, cmd.mbox)
        if await self._deleted_here(session, tag, box):
            return
        here = await self._here(box)
        found = None if here is None else await self.store.sync_state(here, cmd.since, cmd.uids)
        if found is None:
            await session.reply_no(tag, "NONEXISTENT", "no such mailbox here")
            return
        row, messages, gone, rest = found
        wire_messages = [_wire_message(m) for m in messages]
        wire_gone = [
            c.StateGone(
                t.uid,
                t.modseq,
                tuple(sorted(t.guids)),
                tuple(c.UidGuid(u, g) for g, u in t.moved),
            )
            for t in gone
        ]
        step = c.SYNC_CHUNK
        for start in range(0, max(len(wire_messages), len(wire_gone)), step):
            chunk = c.SyncData(
                cmd.mbox,
                tuple(wire_messages[start : start + step]),
                tuple(wire_gone[start : start + step]),
            )
            await session.send_untagged(chunk)
        assert here is not None
        await session.reply_ok(
            tag,
            c.SyncState(
                row.uidvalidity,
                row.uidnext,
                row.highestmodseq,
                here,
                rest,
                row.claimed.name,
                row.claimed.stamp,
            ),
        )

    async def serve_fetch(self, session: Peer, tag: str, cmd: c.Fetch) -> None:
        box = self.binding(session, cmd.mbox)
        here = await self._here(box)
        status = None if here is None else await self.store.mailbox_by_guid(here)
        if status is None:
            await session.reply_no(tag, "NONEXISTENT", "no such mailbox here")
            return
        infos = await self.store.fetch(status.user, status.name, cmd.uids)
        bodies = (
            await self.store.read_blobs(sorted({i.body_hash for i in infos}))
            if cmd.what == "BODY"
            else {}
        )
        for info in infos:
            await session.send_untagged(
                c.FetchData(
                    cmd.mbox,
                    info.uid,
                    info.guid,
                    info.modseq,
                    info.internaldate,
                    info.flags,
                    info.size,
                    info.body_hash,
                    bodies.get(info.body_hash),
                ),
            )
        await session.reply_ok(tag)

    async def serve_have(self, session: Peer, tag: str, cmd: c.Have) -> None:
        have = await self.store.present_bodies(cmd.hashes)
        await session.reply_ok(tag, c.HashList(tuple(h for h in cmd.hashes if h in have)))

    async def serve_update(self, session: Peer, tag: str, cmd: c.Update) -> None:
        box = self.binding(session, cmd.mbox)
        if await self._deleted_here(session, tag, box):
            return
        held: dict[int, MessageState] = {}
        create = None
        if cmd.replaces is None:
            found = await self.store.mailbox_state(box.guid)
            if found is None:
                # The master's mailbox is missing here (lost, or its CREATE
                # never arrived): the UPDATE recreates it under its GUID.
                create = (box.user, box.name)
            else:
                held = {m.uid: m for m in found[1]}
        ops, carried = ops_from_wire(cmd.ops, held)
        try:
            update_plan = MergePlan(cmd.uidvalidity, cmd.uidnext, cmd.highestmodseq, ops)
        except ValueError as exc:
            raise ProtocolError(f"UPDATE: {exc}") from None
        try:
            # From the master: this copy now holds everything it had (I6), so
            # every mark on the mailbox is settled.
            await self.store.apply_merge(
                box.guid,
                cmd.expected,
                update_plan,
                carried,
                log=False,
                clear_marks=[],
                replaces=cmd.replaces,
                create=create,
                claim=Claim(cmd.stamp, cmd.name),
            )
        except ConflictError as exc:
            await session.reply_no(tag, "CONFLICT", str(exc))
            return
        except ReplicadError as exc:
            await session.reply_no(tag, "TEMPFAIL", str(exc))
            return
        self.node.log_changed()
        await session.reply_ok(tag)

    async def serve_resync(self, session: Peer, tag: str, cmd: c.Resync) -> None:
        node = self.node
        found = []
        for named in cmd.mailboxes:
            key = master_key(node.granularity, named.user, named.name)
            master = await node.master_of(key, trio.current_time() + STEP_TIMEOUT)
            if master != node.name:
                # One of the two caches is stale: ours first (ask the root again).
                node.forget_master(key)
                master = await node.master_of(key, trio.current_time() + STEP_TIMEOUT)
            if master != node.name:
                # The asker's master cache is stale: it drops the entry and asks again.
                await session.reply_no(tag, "NOTMASTER", f"{master} masters {key}")
                return
            try:
                guid = (await self.store.mailbox_status(named.user, named.name)).guid
            except ReplicadError:
                continue  # not here: the peer's copy reaches us through its stream
            found.append(guid)
            asked = (session.peer, guid)
            self.requested[asked] = min(named.since, self.requested.get(asked, named.since))
        await session.reply_ok(tag)
        self.enqueue(session.peer, found)

    def on_data(self, session: Peer, data: c.Untagged) -> None:
        """A ``* SYNC`` or ``* FETCH`` frame: for the request in progress."""
        mid = getattr(data, "mbox", -1)
        found = self.collect.get((data.VERB, session.peer, mid))
        if found is None:
            raise ProtocolError(f"unexpected * {data.VERB} for mailbox id {mid}")
        if isinstance(data, c.SyncData):
            if found.over:
                return  # past the budget: dropped as it comes (SyncTooLarge)
            found.items += sync_items(data)
            if found.items > SYNC_BUDGET:
                found.over = True
                found.frames.clear()
                return
            self.peak_sync_items = max(self.peak_sync_items, found.items)
        found.frames.append(data)


def _chunks(
    ops: tuple[PlanOp, ...], wanted: set[bytes], theirs: MailboxState, fresh_space: bool
) -> list[tuple[tuple[PlanOp, ...], frozenset[bytes]]]:
    """The plan's operations in UPDATEs of at most :data:`UPDATE_BODY_BYTES` of
    bodies each (the frame limit is 64 MiB), with the bodies each must carry.
    One UPDATE is one transaction; a merge this large (a node that lost its
    store) arrives in several, in UID order, and is complete with the last
    (protocol-spec/resync.md §9).

    ``wanted``: the bodies the peer lacks (HAVE); each crosses once, in the
    first part that puts it.  A body the peer holds only at UIDs an earlier
    part overwrote (a message moved above a collision: its old UID is
    tombstoned first) or in a UID space an earlier part dropped
    (``fresh_space``: a new UIDVALIDITY, or a mailbox that replaces the
    peer's) was released there, so it is carried again: a part must never
    need a body the previous one freed (I6)."""
    held_at: dict[bytes, set[int]] = {}
    for m in theirs.messages:
        held_at.setdefault(m.body_hash, set()).add(m.uid)
    parts: list[tuple[tuple[PlanOp, ...], frozenset[bytes]]] = []
    touched: set[int] = set()  # UIDs the closed parts wrote
    placed: set[bytes] = set()  # bodies the closed parts put: held from then on

    def must_carry(body_hash: bytes) -> bool:
        if body_hash in placed:
            return False
        if body_hash in wanted:
            return True
        uids = held_at.get(body_hash)
        if uids is None or not parts:
            return False  # held in another mailbox, or nothing released yet
        return fresh_space or uids <= touched

    current: list[PlanOp] = []
    carry: set[bytes] = set()
    size = 0

    def close() -> None:
        nonlocal size
        parts.append((tuple(current), frozenset(carry)))
        for op in current:
            if isinstance(op, PutMessage):
                touched.add(op.message.uid)
                placed.add(op.message.body_hash)
            else:
                touched.add(op.tombstone.uid)
        current.clear()
        carry.clear()
        size = 0

    for op in ops:
        weight = 0
        if isinstance(op, PutMessage) and op.message.body_hash not in carry:
            if must_carry(op.message.body_hash):
                weight = op.message.size
            if current and size + weight > UPDATE_BODY_BYTES:
                close()
                weight = op.message.size if must_carry(op.message.body_hash) else 0
            if weight:
                carry.add(op.message.body_hash)
        current.append(op)
        size += weight
    close()
    return parts


def _with_entries(
    state: MailboxState, messages: list[MessageState], tombstones: list[Tombstone]
) -> MailboxState:
    """``state`` with more entries (at other UIDs), all in UID order."""
    return replace(
        state,
        messages=tuple(sorted((*state.messages, *messages), key=lambda m: m.uid)),
        tombstones=tuple(sorted((*state.tombstones, *tombstones), key=lambda t: t.uid)),
    )


def _next(uidvalidity: int, step: int) -> int:
    """A new UIDVALIDITY above ``uidvalidity``, ``step`` (1 + this node's place
    in the cluster's name order) above it: two masters that merge the same
    two mailboxes at once, right after a heal, must not pick the same one,
    or a later merge would compare their independently numbered UIDs as one
    UID space and keep both copies of a message they numbered differently
    (simulator seed 1990).  Wraps below 2^32."""
    value = uidvalidity + step
    return value if value <= 0xFFFFFFFF else value - 0xFFFFFFFF


def _message_of(m: c.StateMessage) -> MessageState:
    try:
        return MessageState(
            m.uid,
            m.guid,
            m.modseq,
            m.internaldate,
            m.size,
            m.body_hash,
            tuple(FlagMark(f, s, p) for f, s, p in m.marks),
        )
    except ValueError as exc:
        raise ProtocolError(f"SYNC: {exc}") from None


def _wire_message(m: MessageState) -> c.StateMessage:
    return c.StateMessage(
        m.uid,
        m.guid,
        m.modseq,
        m.internaldate,
        m.size,
        m.body_hash,
        tuple((k.flag, k.stamp, k.present) for k in m.marks),
    )
