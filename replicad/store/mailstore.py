"""The mail store of one node, used from trio code (the async facade).

:class:`MailStore` runs :class:`~replicad.store.index.MailIndex` operations
through the group-commit writer (writes) or a read transaction (reads), off
the event loop.  With peers configured, every write also appends its change
record to the change log in the same transaction (I1), and change records
from mailbox masters are applied through :meth:`MailStore.apply_replicated`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from replicad.blob import Blob
from replicad.errors import (
    BadInputError,
    ConflictError,
    MailboxDeletedError,
    NoSuchMailboxError,
    ReplicadError,
)
from replicad.model import planparts
from replicad.model.digest import MailboxDigest, bucket_of, state_digest
from replicad.model.merge import MailboxState, MergePlan, MessageState, PutMessage, Tombstone
from replicad.model.merge import apply_plan as merge_apply_plan
from replicad.model.planparts import split_plan
from replicad.store import blobs, statesync
from replicad.store.blobs import PreparedBody
from replicad.store.changecodec import body_hashes
from replicad.store.changelog import ChangeLog, PeerBacklog, ResyncMark
from replicad.store.clock import HybridClock
from replicad.store.columns import ColumnsRead, KnownState, read_since
from replicad.store.index import (
    INBOX,
    SEPARATOR,
    AppendRequest,
    FlagMode,
    MailIndex,
    _admit,
    _prepare,
    _PreparedAppend,
    check_mailbox_name,
)
from replicad.store.namespace import Claim
from replicad.store.records import (
    Change,
    ChangeSet,
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxMerged,
    MailboxRenamed,
    MailboxStatus,
    MessageAppended,
    MessageInfo,
    MessagesCopied,
    MessagesExpunged,
    SubscriptionChanged,
)
from replicad.store.replica import ApplyResult, Outcome, ReplicaApplier
from replicad.store.schema import Databases, MailboxRow, open_environment
from replicad.store.subscriptions import Subscriptions
from replicad.store.writer import GroupCommitWriter, StoreExecutor, ThreadExecutor
from replicad.uidset import STAR, UidSet

__all__ = ["INBOX", "SEPARATOR", "AppendRequest", "FlagMode", "MailStore", "StoreUsage"]

T = TypeVar("T")
DEFAULT_MAX_LAG = 100_000


@dataclass(frozen=True, slots=True)
class _Retried:
    """A SAVE already applied: its record, returned again, not logged again."""

    record: MessageAppended


@dataclass(frozen=True, slots=True)
class StoreUsage:
    map_size: int  # the ceiling the map may grow to (node.map_size)
    used_bytes: int
    mapped_bytes: int = 0  # the map's size now
    full: str | None = None  # why writes fail for lack of room; None: they do not


#: The smallest map a store opens with (it grows up to node.map_size).
INITIAL_MAP = 256 << 20

#: Appends and replicated bursts up to this many body bytes are hashed and
#: compressed inside the write (on the writer thread): for a typical delivery
#: that costs less than a hop to a worker thread and back.  Larger ones are
#: prepared on a worker thread first, in parallel with the commit in progress.
INLINE_PREPARE_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class OutboxBatch:
    cursor: int  # the peer's durable acknowledgement
    head: int  # the newest log entry
    entries: list[tuple[int, Change, str]]  # (seq, change, origin)
    bodies: dict[bytes, Blob]  # body hash -> stored body, for the appends among them
    #: Entries were left out for the byte budget (there is more to send).
    full: bool = False
    #: Mailboxes whose copy on the peer has a gap (a mark of
    #: :data:`~replicad.store.changelog.GAP_REASONS`), read with the entries.
    gapped: frozenset[bytes] = frozenset()


# --- the async facade -------------------------------------------------------


def _in_read(dbs: Databases, fn: Callable[[Any], T]) -> T:
    with dbs.env.begin(write=False, buffers=False) as txn:
        return fn(txn)


class MailStore:
    """A node's store, used from trio code.  Open it with :meth:`open`.

    Writes go through the group-commit writer and return once durable (I1 at
    level ``local``); reads run in a read transaction off the event loop.
    """

    def __init__(
        self,
        dbs: Databases,
        executor: StoreExecutor,
        writer: GroupCommitWriter,
        log: ChangeLog,
        *,
        index: MailIndex | None = None,
    ) -> None:
        self._dbs = dbs
        self._executor = executor
        self.writer = writer
        self.index = index if index is not None else MailIndex(dbs)
        self.log = log
        self._applier = ReplicaApplier(self.index, log)
        #: IMAP subscriptions (replicad.store.subscriptions), on the same seams.
        self.subscriptions = Subscriptions(dbs, self.index.clock, self.write_logged, self._read)
        self.last_logged_seq = 0  # newest log entry written by this process

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        path: Path,
        *,
        map_size: int = 8 << 30,
        executor: StoreExecutor | None = None,
        sync: bool = True,
        peers: tuple[str, ...] = (),
        max_lag: int = DEFAULT_MAX_LAG,
        clock: HybridClock | None = None,
    ) -> AsyncIterator[MailStore]:
        """Open the store; with ``peers``, writes are logged for them (see changelog).

        ``clock``: the hybrid clock to stamp with (the simulator's skewed
        ones); it starts above the high-water mark the store persisted."""
        executor = executor if executor is not None else ThreadExecutor()
        start = initial_map_size(path, map_size)
        dbs = await executor.run_write(lambda: open_environment(path, map_size=start, sync=sync))
        log = ChangeLog(dbs, peers, max_lag)
        index = MailIndex(dbs, clock)
        writer = GroupCommitWriter(
            dbs, executor, before_commit=index.save_clock, map_ceiling=map_size
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer.run)
                try:
                    await executor.run_read(lambda: _in_read(dbs, index.load_clock))
                    await writer.submit(log.register_peers)
                    yield cls(dbs, executor, writer, log, index=index)
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            await executor.run_write(dbs.env.close)

    # -- plumbing --

    async def _read(self, fn: Callable[[Any], T]) -> T:
        def run() -> T:
            with self._dbs.env.begin(write=False, buffers=False) as txn:
                return fn(txn)

        return await self._executor.run_read(run)

    async def _prepare_all(
        self, items: Sequence[AppendRequest]
    ) -> Callable[[], list[_PreparedAppend]]:
        """What the write op calls for the prepared appends (INLINE_PREPARE_BYTES).
        Flags, internal date and GUID are checked and fixed at once, either way.

        While the writer is busy (concurrent deliveries) the write waits for
        its turn anyway: the bodies are prepared on a worker thread meanwhile,
        in parallel with the commit, instead of inside the write."""
        items = [_admit(i) for i in items]
        size = sum(i.body.size if isinstance(i.body, Blob) else len(i.body) for i in items)
        if size <= INLINE_PREPARE_BYTES and not self.writer.busy:
            return lambda: [_prepare(i) for i in items]
        early = await self._executor.run_read(lambda: [_prepare(i) for i in items])
        return lambda: early

    async def _write(self, op: Callable[[Any], T]) -> T:
        """Run a client write; with peers, log its change record in the same transaction."""
        change, _ = await self.write_logged(op)
        return change

    async def write_logged(self, op: Callable[[Any], T]) -> tuple[T, int]:
        """Run ``op`` and log its change; return it with its log sequence (0: not logged)."""

        def run(txn: Any) -> tuple[T, int]:
            result = op(txn)
            seq = 0
            if self.log.peers:
                changes = result if isinstance(result, list) else [result]
                for change in changes:
                    if isinstance(change, Change) and _is_effective(change):
                        seq = self.log.append(txn, change)
            if seq:
                # Read without a transaction by the replication runtime right
                # after its write returns: at least that write's sequence.
                self.last_logged_seq = seq
            return result, seq

        return await self.writer.submit(run)

    # -- mailboxes --

    async def create_mailbox(self, user: str, name: str) -> MailboxCreated:
        return await self._write(lambda t: self.index.create_mailbox(t, user, name))

    async def create_mailbox_at(self, user: str, name: str, uidvalidity: int) -> MailboxCreated:
        """Create ``name`` under a given UIDVALIDITY (a migration keeps the
        source server's, so clients keep their caches); otherwise as
        :meth:`create_mailbox`: the name must be free."""
        if not 0 < uidvalidity <= 0xFFFFFFFF:
            raise BadInputError(f"UIDVALIDITY {uidvalidity} out of range")
        return await self._write(
            lambda t: self.index.create_mailbox(t, user, name, uidvalidity=uidvalidity)
        )

    async def create_copy_of(
        self, user: str, name: str, guid: bytes, uidvalidity: int
    ) -> MailboxCreated:
        """An empty local copy of a peer's mailbox (same GUID and UIDVALIDITY)
        for a resync to fill: this node masters the name but lacks the
        mailbox.  Its name claim is stamped 0, so the peer's claim, which
        the resync brings, wins (replicad.store.namespace)."""
        return await self._write(
            lambda t: self.index.create_mailbox(
                t, user, name, guid=guid, uidvalidity=uidvalidity, stamp=0
            )
        )

    async def delete_mailbox(self, user: str, name: str) -> MailboxDeleted:
        return await self._write(lambda t: self.index.delete_mailbox(t, user, name))

    async def delete_mailbox_guid(self, guid: bytes) -> MailboxDeleted | None:
        """Delete the mailbox with this GUID under whatever name it holds now
        (one transaction, so a rename meanwhile cannot make it delete another
        mailbox); None if there is none.  For a DELETE learnt from a peer."""

        def op(txn: Any) -> MailboxDeleted | None:
            raw = txn.get(guid, db=self._dbs.mailboxes)
            if raw is None:
                return None
            row = MailboxRow.decode(bytes(raw))
            return self.index.delete_mailbox(txn, row.user, row.name)

        return await self._write(op)

    async def rename_mailbox(self, user: str, old: str, new: str) -> MailboxRenamed:
        return await self._write(lambda t: self.index.rename_mailbox(t, user, old, new))

    async def adopt_claim(self, mailbox: bytes, claim: Claim) -> MailboxRenamed | None:
        """Take a newer name claim for the mailbox (a resync learnt it from a
        peer), logged as a RENAME at the claim's own stamp so every copy
        converges on it; None if the claim held here is not older."""

        def op(txn: Any) -> MailboxRenamed | None:
            raw = txn.get(mailbox, db=self._dbs.mailboxes)
            if raw is None:
                return None
            row = MailboxRow.decode(bytes(raw))
            if not self.index.adopt_claims(txn, row.user, [(mailbox, claim)]):
                return None
            return MailboxRenamed(row.user, mailbox, row.name, claim.name, claim.stamp)

        return await self._write(op)

    async def set_subscribed(self, user: str, name: str, subscribed: bool) -> SubscriptionChanged:
        """IMAP SUBSCRIBE/UNSUBSCRIBE here (the write path of a single node)."""
        return await self.subscriptions.set_subscribed(user, name, subscribed)

    async def mailbox_deleted(self, guid: bytes) -> bool:
        """Whether the mailbox with this GUID was deleted here (it never comes back)."""
        return await self._read(lambda t: self.index.was_deleted(t, guid))

    async def list_mailboxes(self, user: str) -> list[MailboxStatus]:
        return await self._read(lambda t: self.index.list_mailboxes(t, user))

    async def mailbox_status(self, user: str, name: str) -> MailboxStatus:
        return await self._read(lambda t: self.index.status(t, user, name))

    async def has_user(self, user: str) -> bool:
        """Whether ``user`` has any mailbox here (BadInputError for a bad name)."""
        return await self._read(lambda t: self.index.has_user(t, user))

    async def list_users(self) -> list[str]:
        return await self._read(self.index.list_users)

    # -- this node's own job records (migrations): not mail, never replicated --

    async def put_job_records(self, items: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Write (key, value) records in one durable transaction; None deletes."""
        dbs = self._dbs

        def op(txn: Any) -> None:
            for key, value in items:
                if value is None:
                    txn.delete(key, db=dbs.local_jobs)
                else:
                    txn.put(key, value, db=dbs.local_jobs)

        await self.writer.submit(op)

    async def job_records(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every job record whose key starts with ``prefix``, in key order."""
        dbs = self._dbs

        def read(txn: Any) -> list[tuple[bytes, bytes]]:
            out: list[tuple[bytes, bytes]] = []
            cur = txn.cursor(db=dbs.local_jobs)
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                if not bytes(key).startswith(prefix):
                    break
                out.append((bytes(key), bytes(value)))
            return out

        return await self._read(read)

    # -- messages --

    async def append(
        self,
        user: str,
        mailbox: str,
        body: bytes,
        *,
        flags: Iterable[str] = (),
        internaldate: int | None = None,
        guid: bytes | None = None,
    ) -> MessageAppended:
        request = AppendRequest(body, tuple(flags), internaldate, guid)
        [appended] = await self.append_many(user, mailbox, [request])
        return appended

    async def append_many(
        self,
        user: str,
        mailbox: str,
        items: Sequence[AppendRequest],
        *,
        in_turn: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> list[MessageAppended]:
        """Append several messages in one transaction (all or none).

        ``in_turn`` orders batches that arrive concurrently (a pipelined
        import): the bodies are hashed and compressed at once, in parallel
        with the batch before, and only the write waits for its turn.
        """
        prepared = await self._prepare_all(items)
        index = self.index

        def op(txn: Any) -> list[Change]:
            appends = prepared()
            changes: list[Change] = []
            # Delivery to a new user's INBOX creates it, as LDA/LMTP do; the
            # creation is a change record of its own so replicas learn the GUID.
            if check_mailbox_name(mailbox) == INBOX and not index.has_mailbox(txn, user, INBOX):
                changes.append(index.create_mailbox(txn, user, INBOX))
            changes.extend(index.append(txn, user, mailbox, appends, autocreate_inbox=False))
            return changes

        async with in_turn() if in_turn is not None else nullcontext():
            result = await self._write(op)
        return [c for c in result if isinstance(c, MessageAppended)]

    async def save_once(
        self,
        user: str,
        mailbox: str,
        item: AppendRequest,
        *,
        depth: int,
        accept: Callable[[MessageAppended], bool] | None = None,
    ) -> MessageAppended:
        """Append one message unless a message with its GUID is among the
        mailbox's last ``depth`` changes: then that one, nothing written (a
        retried SAVE, :meth:`MailIndex.recent_save`).  One transaction either way.

        ``accept``: whether the earlier message found is the one this SAVE
        retries (:func:`~replicad.store.index.retry_within_window`); if not,
        the message is appended all the same."""
        guid = item.guid
        if guid is None:
            [appended] = await self.append_many(user, mailbox, [item])
            return appended
        prepare = await self._prepare_all([item])
        index = self.index

        def op(txn: Any) -> list[Change | _Retried]:
            earlier = index.recent_save(txn, user, mailbox, guid, depth)
            if earlier is not None and (accept is None or accept(earlier)):
                return [_Retried(earlier)]
            prepared = prepare()[0]
            changes: list[Change | _Retried] = []
            if check_mailbox_name(mailbox) == INBOX and not index.has_mailbox(txn, user, INBOX):
                changes.append(index.create_mailbox(txn, user, INBOX))
            changes.extend(index.append(txn, user, mailbox, [prepared], autocreate_inbox=False))
            return changes

        result = await self._write(op)
        for entry in result:
            if isinstance(entry, _Retried):
                return entry.record
            if isinstance(entry, MessageAppended):
                return entry
        raise AssertionError("save_once wrote no message")

    async def copy(
        self,
        user: str,
        source: str,
        uids: UidSet,
        dest: str,
        expect: Mapping[int, bytes] | None = None,
    ) -> MessagesCopied:
        """``expect``: the UID -> message GUID a forwarding node saw (check_expected)."""
        return await self._write(lambda t: self.index.copy(t, user, source, uids, dest, expect))

    async def store_flags(
        self,
        user: str,
        mailbox: str,
        uids: UidSet,
        mode: FlagMode,
        flags: Iterable[str],
        *,
        unchangedsince: int | None = None,
        expect: Mapping[int, bytes] | None = None,
    ) -> FlagsChanged:
        flags = tuple(flags)
        index = self.index

        def op(t: Any) -> FlagsChanged:
            # A copy awaiting a resync may lack the other lineage's flag
            # changes: what the client asks is stamped even where it changes
            # nothing here (I5).
            stale = index.has_mailbox(t, user, mailbox) and self.log.is_marked(
                t, index._mailbox_guid(t, user, mailbox)
            )
            return index.store_flags(
                t,
                user,
                mailbox,
                uids,
                mode,
                flags,
                unchangedsince=unchangedsince,
                expect=expect,
                stamp_unchanged=stale,
            )

        return await self._write(op)

    async def expunge(
        self, user: str, mailbox: str, uids: UidSet, expect: Mapping[int, bytes] | None = None
    ) -> MessagesExpunged:
        return await self._write(lambda t: self.index.expunge(t, user, mailbox, uids, expect))

    async def fetch(self, user: str, mailbox: str, uids: UidSet) -> list[MessageInfo]:
        return await self._read(lambda t: self.index.fetch(t, user, mailbox, uids))

    async def snapshot(self, user: str, mailbox: str) -> tuple[MailboxStatus, list[MessageInfo]]:
        """The mailbox's status and all its messages, read in one transaction
        (what IMAP SELECT numbers the messages from)."""

        def read(txn: Any) -> tuple[MailboxStatus, list[MessageInfo]]:
            everything = UidSet(((1, STAR),))
            return self.index.status(txn, user, mailbox), self.index.fetch(
                txn, user, mailbox, everything
            )

        return await self._read(read)

    async def message_columns(
        self, user: str, mailbox: str, known: KnownState | None = None
    ) -> ColumnsRead:
        """The mailbox's status and what brings the snapshot ``known`` up to
        date (:func:`replicad.store.columns.read_since`), in one transaction."""
        return await self._read(lambda t: read_since(t, self.index, user, mailbox, known))

    async def fetch_body(self, user: str, mailbox: str, uid: int) -> bytes:
        return await self._read(lambda t: self.index.fetch_body(t, user, mailbox, uid))

    async def fetch_bodies(self, user: str, mailbox: str, uids: Sequence[int]) -> dict[int, bytes]:
        """Several bodies in one read (IMAP FETCH reads ahead); expunged UIDs are left out."""
        return await self._read(lambda t: self.index.fetch_bodies(t, user, mailbox, uids))

    async def changes_since(self, user: str, mailbox: str, modseq: int) -> ChangeSet:
        return await self._read(lambda t: self.index.changes_since(t, user, mailbox, modseq))

    async def tombstones(self, user: str, mailbox: str) -> list[tuple[int, bytes, int]]:
        return await self._read(lambda t: self.index.tombstones(t, user, mailbox))

    async def body_references(self, body_hash: bytes) -> int:
        """How many messages refer to the body (0 = not stored); for checks and tests."""
        return await self._read(lambda t: blobs.reference_count(t, self._dbs, body_hash))

    async def logical_state(self) -> list[tuple[Any, ...]]:
        """The node's whole logical state (I4 compares it across nodes)."""
        return await self._read(self.index.logical_state)

    # -- replication --

    async def apply_replicated(
        self, change: Change, source: str, bodies: Sequence[bytes | Blob] = ()
    ) -> ApplyResult:
        """Apply a record a master assigned (idempotent; see replicad.store.replica)."""
        prepared = await self._executor.run_read(
            lambda: {p.body_hash: p for p in map(PreparedBody.of, bodies)}
        )
        return await self.writer.submit(lambda t: self._applier.apply(t, change, prepared, source))

    async def apply_replicated_many(
        self,
        items: Sequence[tuple[Change, Sequence[bytes | Blob]]],
        source: str,
        *,
        relay: bool = False,
    ) -> list[ApplyResult | ReplicadError]:
        """Apply a burst of a master's records in one transaction and one fsync.

        Each record runs in its own nested transaction, so one that fails
        (a missing body, say) is rolled back alone and reported in its slot;
        the others are kept.  Order is preserved (records of one stream).
        With ``relay``, every record that was new here is also appended to
        this node's log (origin ``source``) for peers that cannot get it
        from ``source`` directly; duplicates are not, which ends floods.
        """

        def prepare_one(
            bodies: Sequence[bytes | Blob],
        ) -> dict[bytes, PreparedBody] | ReplicadError:
            try:
                return {p.body_hash: p for p in map(PreparedBody.of, bodies)}
            except ReplicadError as exc:
                # A body that fails its check (damaged at the source): that
                # record alone is refused and its mailbox left to the resync;
                # failing the burst would close the link, and the peer would
                # send the same body again on every reconnect (I9).
                return exc

        def prepare() -> list[dict[bytes, PreparedBody] | ReplicadError]:
            return [prepare_one(b) for _, b in items]

        # Large bursts are hashed and compressed outside the writer, in parallel
        # with the commit in progress; a small one (the steady state) inside the
        # write itself: one thread hop less on every replicated change's path.
        size = sum(
            len(body) if isinstance(body, bytes) else body.size
            for _, bodies in items
            for body in bodies
        )
        early = await self._executor.run_read(prepare) if size > INLINE_PREPARE_BYTES else None
        env = self._dbs.env

        def op(txn: Any) -> list[ApplyResult | ReplicadError]:
            out: list[ApplyResult | ReplicadError] = []
            prepared = early if early is not None else prepare()
            for (change, _), bodies in zip(items, prepared, strict=True):
                if isinstance(bodies, ReplicadError):
                    out.append(bodies)
                    continue
                child = env.begin(write=True, parent=txn)
                try:
                    result = self._applier.apply(child, change, bodies, source)
                    if relay and result.outcome is Outcome.APPLIED and self.log.peers:
                        self.log.append(child, change, origin=source)
                    out.append(result)
                except ReplicadError as exc:
                    child.abort()
                    out.append(exc)
                except BaseException:
                    child.abort()
                    raise
                else:
                    child.commit()
            return out

        return await self.writer.submit(op)

    async def missing_bodies(self, change: Change) -> list[bytes]:
        """Body hashes ``change`` needs that are not stored here (so must be sent)."""
        return await self._read(lambda t: self._applier.missing_bodies(t, change))

    async def mailbox_by_guid(self, guid: bytes) -> MailboxStatus | None:
        """Status of the mailbox with this GUID, or None if there is none (any more)."""

        def read(txn: Any) -> MailboxStatus | None:
            raw = txn.get(guid, db=self._dbs.mailboxes)
            if raw is None:
                return None
            row = MailboxRow.decode(raw)
            return self.index.status(txn, row.user, row.name)

        return await self._read(read)

    async def message_guids(self, mailbox: bytes, uids: Iterable[int]) -> dict[int, bytes]:
        """Message GUIDs of ``uids`` in the mailbox, live or tombstoned (for I3 checks)."""
        wanted = list(uids)

        def read(txn: Any) -> dict[int, bytes]:
            out: dict[int, bytes] = {}
            for uid in wanted:
                msg = self.index._message(txn, mailbox, uid)
                if msg is not None:
                    out[uid] = msg.guid
            return out

        return await self._read(read)

    async def log_head(self) -> int:
        """Sequence number of the newest change log entry (0: empty)."""
        return await self._read(self.log.head)

    async def probe(self) -> int:
        """The log head, read on the executor's probe thread: proof that the
        store answers, which long reads filling the reader threads cannot
        delay (the systemd watchdog's probe, replicad.sdnotify)."""

        def run() -> int:
            with self._dbs.env.begin(write=False, buffers=False) as txn:
                return self.log.head(txn)

        return await self._executor.run_probe(run)

    async def backlog_size(self, after: int, limit: int) -> tuple[int, int, int]:
        """Log entries after ``after``, the message octets among the first
        ``limit`` of them and how many were read (a peer's catch-up left,
        replicad.cluster.catchup)."""
        return await self._read(lambda t: self.log.backlog_size(t, after, limit))

    async def log_cursor(self, peer: str) -> int:
        """The last log sequence ``peer`` acknowledged (durable)."""
        return await self._read(lambda t: self.log.cursor(t, peer))

    async def read_blobs(self, hashes: Sequence[bytes]) -> dict[bytes, Blob]:
        """The bodies among ``hashes`` that are stored (absent ones are left out),
        in their stored form: what the wire carries (no decompression here)."""

        def read(txn: Any) -> dict[bytes, Blob]:
            out: dict[bytes, Blob] = {}
            for h in hashes:
                if h not in out and blobs.reference_count(txn, self._dbs, h):
                    out[h] = blobs.read_blob(txn, self._dbs, h)
            return out

        return await self._read(read) if hashes else {}

    def _digest(self, txn: Any, mailbox: bytes) -> bytes:
        state = statesync.full_state(self.index, txn, mailbox)
        assert state is not None
        return state_digest(state)

    async def mailbox_digests(
        self, buckets: set[int] | None = None, users: set[str] | None = None
    ) -> list[MailboxDigest]:
        """Every mailbox (of users in ``buckets``, or of ``users``) with its
        state digest (resync.md §6), in one read transaction."""

        def read(txn: Any) -> list[MailboxDigest]:
            out = []
            for key, guid in txn.cursor(db=self._dbs.names):
                user, name = bytes(key).decode().split("\0", 1)
                if users is not None and user not in users:
                    continue
                if buckets is not None and bucket_of(user) not in buckets:
                    continue
                state = statesync.full_state(self.index, txn, bytes(guid))
                if state is None:
                    continue
                out.append(
                    MailboxDigest(
                        user,
                        name,
                        bytes(guid),
                        state.uidvalidity,
                        state.uidnext,
                        state.highestmodseq,
                        len(state.messages),
                        state_digest(state),
                    )
                )
            return out

        return await self._read(read)

    async def present_bodies(self, hashes: Sequence[bytes]) -> set[bytes]:
        """Which of these bodies this node stores (HAVE, seed 004)."""

        def read(txn: Any) -> set[bytes]:
            return {h for h in hashes if blobs.reference_count(txn, self._dbs, h)}

        return await self._read(read)

    async def read_blob(self, body_hash: bytes) -> bytes:
        return await self._read(lambda t: blobs.read_body(t, self._dbs, body_hash))

    async def outbox_batch(
        self,
        peer: str,
        after: int,
        limit: int,
        max_bytes: int | None = None,
        alone: bool = True,
    ) -> OutboxBatch:
        """What a peer's stream needs next, read in one transaction: the peer's
        durable cursor, the log head, up to ``limit`` entries after ``after``
        (with origins) and the bodies of the appends among them.

        With ``max_bytes``, entries stop before the one that would take the
        bodies read past it (each entry counts every body it would carry, in
        stored form, so the frames sent weigh at most that); the first entry
        is taken even when larger if ``alone``, else the batch comes back
        empty with ``full`` set (it waits for room in the peer's window)."""

        def read(txn: Any) -> OutboxBatch:
            entries = self.log.entries_with_origin(txn, after, limit)
            bodies: dict[bytes, Blob] = {}
            total = 0
            taken = 0
            full = False
            for _, change, _ in entries:
                weight = 0
                added = []
                if isinstance(change, (MessageAppended, MailboxMerged)):
                    for body_hash in body_hashes(change):
                        blob = bodies.get(body_hash)
                        if blob is None and blobs.reference_count(txn, self._dbs, body_hash):
                            blob = bodies[body_hash] = blobs.read_blob(txn, self._dbs, body_hash)
                            added.append(body_hash)
                        if blob is not None:
                            weight += len(blob.stored)
                if max_bytes is not None and total + weight > max_bytes and (taken or not alone):
                    for body_hash in added:
                        del bodies[body_hash]  # not sent in this batch: not held either
                    full = True
                    break
                total += weight
                taken += 1
            return OutboxBatch(
                self.log.cursor(txn, peer),
                self.log.head(txn),
                entries[:taken],
                bodies,
                full,
                self.log.gapped(txn, peer),
            )

        return await self._read(read)

    async def outbox_with_origin(self, after: int, limit: int) -> list[tuple[int, Change, str]]:
        """Log entries after ``after`` with their origin ("" = written here)."""
        return await self._read(lambda t: self.log.entries_with_origin(t, after, limit))

    async def outbox(self, after: int, limit: int) -> list[tuple[int, Change]]:
        """Log entries after sequence ``after`` (what a peer acked), oldest first."""
        return await self._read(lambda t: self.log.entries(t, after, limit))

    async def ack(self, peer: str, seq: int) -> bool:
        return await self.writer.submit(lambda t: self.log.ack(t, peer, seq))

    async def set_peers(self, peers: tuple[str, ...]) -> None:
        """Log changes for ``peers`` from now on (a reloaded peer list).

        A new peer gets a cursor at the head and a whole-node resync mark
        (its copy is built by resync, not by the log); a removed one loses
        its cursor, so the log no longer waits for it, and its resync marks.
        """
        old = self.log.peers

        def op(txn: Any) -> None:
            # Set inside the transaction: the writer runs operations one at a
            # time, so every write logged after this one sees the new peers
            # and their cursors.
            self.log.peers = peers
            self.log.register_peers(txn)

        try:
            await self.writer.submit(op)
        except BaseException:
            self.log.peers = old  # nothing of it was committed
            raise

    async def backlog(self) -> list[PeerBacklog]:
        return await self._read(self.log.backlog)

    async def mark_resync(
        self, peers: Sequence[str], mailbox: bytes, reason: str, since: int
    ) -> None:
        """Record that ``mailbox`` must be resynchronised with each of ``peers``."""

        def op(txn: Any) -> None:
            for peer in peers:
                self.log.mark_resync(txn, peer, mailbox, reason, since)

        await self.writer.submit(op)

    async def resync_mark(self, peer: str, mailbox: bytes) -> ResyncMark | None:
        return await self._read(lambda txn: self.log.resync_mark(txn, peer, mailbox))

    async def gapped(self, peer: str) -> frozenset[bytes]:
        """The mailboxes whose copy on ``peer`` lacks changes of this log (gap marks)."""
        return await self._read(lambda txn: self.log.gapped(txn, peer))

    async def resync_marks(self) -> list[ResyncMark]:
        return await self._read(self.log.resync_marks)

    async def clear_resync_unless_marked_since(
        self, peer: str, mailbox: bytes, marked_at: int
    ) -> bool:
        """Clear the mark unless it was set again after ``marked_at``; whether it went."""
        return await self.writer.submit(
            lambda txn: self.log.clear_resync_unless_marked_since(txn, peer, mailbox, marked_at)
        )

    async def clear_resync(self, peers: Sequence[str], mailbox: bytes) -> None:
        def op(txn: Any) -> None:
            for peer in peers:
                self.log.clear_resync(txn, peer, mailbox)

        await self.writer.submit(op)

    # -- resync (the store side of replicad.model.merge) --

    async def mailbox_state(
        self, mailbox: bytes, since: int = 0
    ) -> tuple[MailboxRow, list[MessageState], list[Tombstone]] | None:
        """The mailbox's row and its entries with modseq above ``since`` (0: all)."""
        return await self._read(lambda txn: statesync.read_state(self.index, txn, mailbox, since))

    async def sync_state(
        self, mailbox: bytes, since: int, uids: UidSet | None
    ) -> tuple[MailboxRow, list[MessageState], list[Tombstone], bytes] | None:
        """A SYNC's answer: the entries above ``since`` or in ``uids``, and the
        digest of the others (:func:`replicad.store.statesync.read_sync`)."""
        return await self._read(
            lambda txn: statesync.read_sync(self.index, txn, mailbox, since, uids)
        )

    async def apply_merge(
        self,
        mailbox: bytes,
        expected: int,
        plan: MergePlan,
        bodies: Sequence[bytes | Blob] = (),
        *,
        log: bool,
        clear_marks: Sequence[str] | None = None,
        replaces: bytes | None = None,
        create: tuple[str, str] | None = None,
        claim: Claim | None = None,
        peer: str = "",
    ) -> MailboxRow:
        """Apply a merge plan in one transaction if the mailbox's HIGHESTMODSEQ
        is still ``expected`` (else :class:`ConflictError`, nothing applied).

        ``log``: the master merging its own copy logs it for its followers,
        as one :class:`MailboxMerged` per part of at most a frame's worth
        (:meth:`_log_merge`); ``peer``: the one whose resync it is.  ``clear_marks``: the peers
        whose resync marks on this mailbox the merge settles (``[]``: all).
        ``replaces``: this node's mailbox of that GUID holds the name and was
        merged into ``mailbox``, which takes its place (``expected`` is its
        HIGHESTMODSEQ; resync.md, mailbox conflicts).  ``create``: (user,
        name) of ``mailbox``, missing here: it is created.  ``claim``: the
        master's name claim for the mailbox, taken if newer than the one
        held here (and the claim a created mailbox gets).
        """
        prepared_list = await self._executor.run_read(lambda: [PreparedBody.of(b) for b in bodies])
        prepared = {p.body_hash: p for p in prepared_list}

        def op(txn: Any) -> MailboxRow:
            if self.index.was_deleted(txn, mailbox):
                raise MailboxDeletedError(f"mailbox {mailbox.hex()} was deleted here")
            if create is not None:
                if txn.get(mailbox, db=self._dbs.mailboxes) is not None:
                    raise ConflictError(f"mailbox {mailbox.hex()} exists here already")
                self.index.create_mailbox(
                    txn,
                    create[0],
                    claim.name if claim is not None else create[1],
                    guid=mailbox,
                    uidvalidity=plan.uidvalidity,
                    stamp=claim.stamp if claim is not None else 0,
                )
                expected_here = 1  # a new mailbox's HIGHESTMODSEQ
            else:
                expected_here = expected
            raw = txn.get(replaces or mailbox, db=self._dbs.mailboxes)
            if raw is None:
                raise NoSuchMailboxError(f"mailbox {mailbox.hex()} does not exist here")
            row = MailboxRow.decode(bytes(raw))
            if row.highestmodseq != expected_here:
                raise ConflictError(f"highestmodseq is {row.highestmodseq}, not {expected}")
            if replaces is not None:
                if txn.get(mailbox, db=self._dbs.mailboxes) is not None:
                    raise ConflictError(f"mailbox {mailbox.hex()} exists here already")
                statesync.create_detached(
                    self.index, txn, mailbox, row.user, row.name, plan.uidvalidity
                )
            before = statesync.full_state(self.index, txn, mailbox) if log else None
            new = statesync.apply_plan(self.index, txn, mailbox, plan, prepared)
            if replaces is not None:
                statesync.replace_mailbox(self.index, txn, replaces, mailbox, plan.uidvalidity)
                for mark in self.log.resync_marks(txn):
                    if mark.mailbox == replaces:
                        self.log.clear_resync(txn, mark.peer, replaces)
            if claim is not None:
                self.index.adopt_claims(txn, row.user, [(mailbox, claim)])
            if before is not None:
                self._log_merge(txn, row.user, mailbox, expected, plan, before, peer)
            if clear_marks is not None:
                for mark in self.log.resync_marks(txn):
                    if mark.mailbox == mailbox and (not clear_marks or mark.peer in clear_marks):
                        self.log.clear_resync(txn, mark.peer, mailbox)
            return new

        return await self.writer.submit(op)

    def _log_merge(
        self,
        txn: Any,
        user: str,
        mailbox: bytes,
        expected: int,
        plan: MergePlan,
        before: MailboxState,
        peer: str,
    ) -> None:
        """Log the merge just applied as one :class:`MailboxMerged` per part
        (:func:`~replicad.model.planparts.split_plan`), so that no record
        needs a frame above the limit to reach a follower (I9).  Each part is
        guarded by the digests of the states before and after it, computed
        from the pure model of the executor; the last one's result is the
        copy's own digest.  Each records the bodies of that state's live
        messages: a follower applying the part holds them, so they are not
        sent (the apply references every body before releasing any, so a
        message moved within the part keeps its body; one moved to a later
        part is in the next state only if still live)."""
        parts = split_plan(plan, planparts.PART_BYTES)
        state, digest = before, state_digest(before)
        for number, part in enumerate(parts, 1):
            live = {m.body_hash for m in state.messages}
            held = frozenset(
                op.message.body_hash
                for op in part.ops
                if isinstance(op, PutMessage) and op.message.body_hash in live
            )
            if number == len(parts):
                result = self._digest(txn, mailbox)
            else:
                state = merge_apply_plan(state, part)
                result = state_digest(state)
            merged = MailboxMerged(user, mailbox, expected, part, digest, result, held, peer)
            self.log.append(txn, merged)
            # The next part applies to the mailbox as this one left it.
            expected, digest = plan.highestmodseq, result

    def usage(self) -> StoreUsage:
        info = self._dbs.env.info()
        stat = self._dbs.env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        return StoreUsage(
            map_size=max(self.writer.map_ceiling, int(info["map_size"])),
            used_bytes=int(used),
            mapped_bytes=int(info["map_size"]),
            full=self.writer.full,
        )

    def set_map_ceiling(self, ceiling: int) -> None:
        """A new ``node.map_size`` (SIGHUP): the map may grow up to it."""
        self.writer.set_ceiling(ceiling)


def initial_map_size(path: Path, ceiling: int) -> int:
    """The map a store opens with: room to double what its file holds, at
    least :data:`INITIAL_MAP`, never above ``ceiling`` (node.map_size); the
    writer grows it from there (replicad.store.writer)."""
    try:
        on_disk = (path / "data.mdb").stat().st_size
    except FileNotFoundError:
        on_disk = 0
    return min(ceiling, max(INITIAL_MAP, 2 * on_disk))


def _is_effective(change: Change) -> bool:
    """False for operations that matched nothing (no new modseq, nothing to replicate)."""
    if isinstance(change, FlagsChanged):
        return bool(change.uids)
    if isinstance(change, MessagesExpunged):
        return bool(change.expunged)
    if isinstance(change, MessagesCopied):
        return bool(change.appended)
    return True
