"""The single writer: group commit of concurrent operations, off the event loop.

LMDB allows one write transaction at a time and each durable commit costs an
fsync.  Operations submitted while a commit is in flight are queued; when the
writer is free it runs *all* of them in one transaction, one nested
transaction each (so one failing operation rolls back alone), and commits
once.  Throughput therefore follows LMDB's batch rate, not the fsync rate
(docs/architecture.md §5).  Callers are answered only after the commit returned, so an
acknowledgement always means "on disk" (I1).

Every blocking LMDB call goes through one seam, :class:`StoreExecutor`:
:class:`ThreadExecutor` in production (worker threads), :class:`InlineExecutor`
in the deterministic simulator (no threads, so a seed replays exactly).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import lmdb
import trio

from replicad.errors import ReplicadError, StoreFullError
from replicad.store.commitwatch import CommitWatch
from replicad.store.schema import Databases

T = TypeVar("T")
log = logging.getLogger("replicad.store")

WriteOp = Callable[[Any], T]  # receives an open write transaction
#: The map grows by doubling, and by at least this much.
GROW_AT_LEAST = 64 << 20


class StoreExecutor(Protocol):
    """Where blocking store work runs (the seam of docs/architecture.md §3)."""

    async def run_write(self, fn: Callable[[], T]) -> T: ...

    async def run_read(self, fn: Callable[[], T]) -> T: ...

    async def run_probe(self, fn: Callable[[], T]) -> T:
        """Run a tiny read that must not queue behind other reads (the
        systemd watchdog's liveness probe)."""
        ...

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` with no other store work in flight (LMDB's map can only
        be resized when this process has no transaction open)."""
        ...


class ThreadExecutor:
    """Production seam: one writer thread at a time, a few concurrent readers,
    and one thread of its own for the liveness probe.

    Reads share ``readers`` threads, and one anti-entropy digest of a large
    mailbox can hold a reader for seconds; a few of them at once fill the
    pool.  The watchdog's probe asks "does the store answer at all", not
    "is it idle", so it has a limiter of its own and never waits behind
    them (only behind a map resize, which excludes every transaction).
    """

    def __init__(self, readers: int = 4) -> None:
        self._writer = trio.CapacityLimiter(1)
        self._readers = trio.CapacityLimiter(readers)
        self._reader_count = readers
        self._probe = trio.CapacityLimiter(1)

    async def run_write(self, fn: Callable[[], T]) -> T:
        # Not abandoned on cancel: a commit in progress always finishes, so the
        # store never sees half a batch and callers can still be answered.
        return await trio.to_thread.run_sync(fn, limiter=self._writer)

    async def run_read(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._readers)

    async def run_probe(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._probe)

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        # Every reader token, the probe's and the writer's: reads in flight
        # finish first, new ones wait (a pause of one remap; the map grows by
        # doubling, so it happens a handful of times in a store's life).
        borrowers = [object() for _ in range(self._reader_count)]
        async with self._writer, self._probe:
            taken: list[object] = []
            try:
                for borrower in borrowers:
                    await self._readers.acquire_on_behalf_of(borrower)
                    taken.append(borrower)
                return await trio.to_thread.run_sync(fn)
            finally:
                for borrower in taken:
                    self._readers.release_on_behalf_of(borrower)


class InlineExecutor:
    """Simulation seam: run store work on the event loop thread, deterministically."""

    async def run_write(self, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn()

    async def run_read(self, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn()

    async def run_probe(self, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn()

    async def run_exclusive(self, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn()


@dataclass(slots=True)
class _Pending(Generic[T]):
    op: WriteOp[T]
    done: trio.Event = field(default_factory=trio.Event)
    value: T | None = None
    error: BaseException | None = None


@dataclass(slots=True)
class WriterStats:
    batches: int = 0
    operations: int = 0
    largest_batch: int = 0


class GroupCommitWriter:
    """Batches write operations into shared transactions; see the module docstring.

    **A full store degrades, it does not fail the node.**  When a commit
    finds the LMDB map full and the map is below ``map_ceiling``
    (``node.map_size``), the writer grows the map (doubling, capped at the
    ceiling; :meth:`StoreExecutor.run_exclusive`, since LMDB can only remap
    with no transaction open) and runs the batch again: callers never see
    it.  At the ceiling, or when the disk is full, the operations fail with
    :class:`~replicad.errors.StoreFullError` (temporary: nothing of them was
    kept) and :attr:`full` says why until a commit fits again; raising the
    ceiling (:meth:`set_ceiling`, on SIGHUP) or freeing disk space ends it.
    """

    def __init__(
        self,
        dbs: Databases,
        executor: StoreExecutor,
        *,
        max_batch: int = 1024,
        before_commit: Callable[[Any], None] | None = None,
        map_ceiling: int | None = None,
    ) -> None:
        """``before_commit(txn)`` runs last in every batch's transaction (the
        clock's high-water mark is written there, replicad.store.clock)."""
        self._dbs = dbs
        self._before_commit = before_commit
        self._executor = executor
        self._max_batch = max_batch
        self._queue: list[_Pending[Any]] = []
        self._wakeup = trio.Event()
        self._closed = False
        self._inflight: list[_Pending[Any]] = []
        self.map_ceiling = map_ceiling if map_ceiling is not None else self.map_size
        #: Why the store is full (writes fail until a commit fits again); None: it is not.
        self.full: str | None = None
        self.stats = WriterStats()
        #: Bumped after every committed batch (IMAP IDLE, read-your-writes).
        self.watch = CommitWatch()

    @property
    def busy(self) -> bool:
        """A commit is in progress or writes are waiting: a write submitted now waits."""
        return bool(self._inflight or self._queue)

    @property
    def map_size(self) -> int:
        return int(self._dbs.env.info()["map_size"])

    def set_ceiling(self, ceiling: int) -> None:
        """A new ``node.map_size``: the map may grow up to it from the next
        commit that needs room (it never shrinks below its current size)."""
        self.map_ceiling = ceiling

    async def submit(self, op: WriteOp[T]) -> T:
        """Run ``op(txn)`` in a durable transaction; return its result once committed."""
        if self._closed:
            raise ReplicadError("store is closed")
        pending: _Pending[T] = _Pending(op)
        self._queue.append(pending)
        self._wakeup.set()
        await pending.done.wait()
        if pending.error is not None:
            raise pending.error
        return pending.value  # type: ignore[return-value]

    async def run(self) -> None:
        """The writer loop; runs until cancelled, then fails whatever is still queued."""
        try:
            while True:
                if not self._queue:
                    self._wakeup = trio.Event()
                    await self._wakeup.wait()
                batch = self._queue[: self._max_batch]
                del self._queue[: len(batch)]
                self._inflight = batch
                while not await self._executor.run_write(partial(self._commit, batch)):
                    await self._grow()
                self._inflight = []
                self.stats.batches += 1
                self.stats.operations += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                for pending in batch:
                    pending.done.set()
                self.watch.committed()
        finally:
            self._closed = True
            # A batch whose thread finished while we were being cancelled has
            # its outcomes set (committed or not): hand them over.
            for pending in self._inflight:
                if pending.value is None and pending.error is None:
                    pending.error = ReplicadError("store closed during the operation")
                pending.done.set()
            for pending in self._queue:
                pending.error = ReplicadError("store closed before the operation ran")
                pending.done.set()
            self._queue.clear()

    def _next_size(self) -> int | None:
        """The size to grow the map to, or None at the ceiling."""
        current = self.map_size
        if current >= self.map_ceiling:
            return None
        return min(self.map_ceiling, max(2 * current, current + GROW_AT_LEAST))

    async def _grow(self) -> None:
        size = self._next_size()
        if size is None:  # the ceiling was lowered meanwhile: the next try fails cleanly
            return
        env = self._dbs.env
        before = self.map_size
        await self._executor.run_exclusive(lambda: env.set_mapsize(size))
        log.info(
            "event=store-map-grown from=%d to=%d ceiling=%d",
            before,
            self.map_size,
            self.map_ceiling,
        )

    # -- runs in the writer thread ------------------------------------------

    def _commit(self, batch: list[_Pending[Any]]) -> bool:
        """Run the batch; False if nothing of it was kept because the map
        must grow first (the caller grows it and runs the batch again)."""
        try:
            self._run_in_one_transaction(batch)
        except _MapFull as full:
            if self._next_size() is not None:
                for pending in batch:
                    pending.value = pending.error = None
                return False
            self._fail_full(batch, full.message)
        except _StoreFull as full:
            self._fail_full(batch, full.message)
        except Exception as exc:  # the transaction itself failed: nothing of it was kept
            log.error("event=commit_failed ops=%d error=%r", len(batch), exc)
            for pending in batch:
                pending.value = None
                pending.error = ReplicadError(f"store write failed, nothing was written: {exc}")
        else:
            if self.full is not None:
                log.warning("event=store-writable-again map_size=%d", self.map_size)
                self.full = None
        return True

    def _fail_full(self, batch: list[_Pending[Any]], message: str) -> None:
        if len(batch) == 1:
            if self.full is None:
                log.error("event=store-full reason=%r", message)
            self.full = message
            batch[0].error = StoreFullError(message)
            batch[0].value = None
            return
        # Some operations of the batch may still fit on their own: retry
        # each alone so one large write does not fail its neighbours.
        for pending in batch:
            self._commit_alone(pending)

    def _commit_alone(self, pending: _Pending[Any]) -> None:
        try:
            self._run_in_one_transaction([pending])
        except _StoreFull as full:
            self._fail_full([pending], full.message)
        except Exception as exc:
            log.error("event=commit_failed ops=1 error=%r", exc)
            pending.value = None
            pending.error = ReplicadError(f"store write failed, nothing was written: {exc}")

    def _run_in_one_transaction(self, batch: list[_Pending[Any]]) -> None:
        env = self._dbs.env
        try:
            with env.begin(write=True) as txn:
                for pending in batch:
                    child = env.begin(write=True, parent=txn)
                    try:
                        pending.value = pending.op(child)
                        pending.error = None
                    except (lmdb.MapFullError, _StoreFull):
                        child.abort()
                        raise
                    except lmdb.Error as exc:
                        child.abort()
                        if _is_disk_full(exc):
                            raise _StoreFull(f"disk full: {exc}") from exc
                        raise
                    except BaseException as exc:  # the operation's own error: roll it back alone
                        child.abort()
                        pending.value = None
                        pending.error = exc
                        if not isinstance(exc, ReplicadError):
                            log.error("event=write_op_failed error=%r", exc)
                    else:
                        child.commit()
                if self._before_commit is not None:
                    self._before_commit(txn)
        except lmdb.MapFullError as exc:
            raise _MapFull(
                f"store full: the LMDB map reached node.map_size ({self.map_ceiling} bytes); "
                "raise node.map_size and reload (SIGHUP) or restart"
            ) from exc
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise _StoreFull(f"disk full while committing: {exc}") from exc
            raise


class _StoreFull(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _MapFull(_StoreFull):
    """The LMDB map (not the disk) is full: growing it may help."""


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return "No space left" in text or f"errno {errno.ENOSPC}" in text or "ENOSPC" in text
