"""The single writer: group commit of concurrent operations, off the event loop.

LMDB allows one write transaction at a time and each durable commit costs an
fsync.  Operations submitted while a commit is in flight are queued; when the
writer is free it runs *all* of them in one transaction, one nested
transaction each (so one failing operation rolls back alone), and commits
once.  Throughput therefore follows LMDB's batch rate, not the fsync rate
(DESIGN §5).  Callers are answered only after the commit returned, so an
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
from replicad.store.schema import Databases

T = TypeVar("T")
log = logging.getLogger("replicad.store")

WriteOp = Callable[[Any], T]  # receives an open write transaction


class StoreExecutor(Protocol):
    """Where blocking store work runs (the seam of DESIGN §3)."""

    async def run_write(self, fn: Callable[[], T]) -> T: ...

    async def run_read(self, fn: Callable[[], T]) -> T: ...


class ThreadExecutor:
    """Production seam: one writer thread at a time, a few concurrent readers."""

    def __init__(self, readers: int = 4) -> None:
        self._writer = trio.CapacityLimiter(1)
        self._readers = trio.CapacityLimiter(readers)

    async def run_write(self, fn: Callable[[], T]) -> T:
        # Not abandoned on cancel: a commit in progress always finishes, so the
        # store never sees half a batch and callers can still be answered.
        return await trio.to_thread.run_sync(fn, limiter=self._writer)

    async def run_read(self, fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, limiter=self._readers)


class InlineExecutor:
    """Simulation seam: run store work on the event loop thread, deterministically."""

    async def run_write(self, fn: Callable[[], T]) -> T:
        await trio.lowlevel.checkpoint()
        return fn()

    async def run_read(self, fn: Callable[[], T]) -> T:
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
    """Batches write operations into shared transactions; see the module docstring."""

    def __init__(
        self,
        dbs: Databases,
        executor: StoreExecutor,
        *,
        max_batch: int = 1024,
        before_commit: Callable[[Any], None] | None = None,
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
        self.stats = WriterStats()

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
                await self._executor.run_write(partial(self._commit, batch))
                self._inflight = []
                self.stats.batches += 1
                self.stats.operations += len(batch)
                self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
                for pending in batch:
                    pending.done.set()
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

    # -- runs in the writer thread ------------------------------------------

    def _commit(self, batch: list[_Pending[Any]]) -> None:
        try:
            self._run_in_one_transaction(batch)
        except _StoreFull as full:
            if len(batch) == 1:
                batch[0].error = StoreFullError(full.message)
                batch[0].value = None
                return
            # Some operations of the batch may still fit on their own: retry
            # each alone so one large write does not fail its neighbours.
            for pending in batch:
                self._commit([pending])
        except Exception as exc:  # the transaction itself failed: nothing of it was kept
            log.error("event=commit_failed ops=%d error=%r", len(batch), exc)
            for pending in batch:
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
            raise _StoreFull(
                f"store full: the LMDB map size ({env.info()['map_size']} bytes) is exhausted; "
                "raise node.map_size in the configuration and restart"
            ) from exc
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise _StoreFull(f"disk full while committing: {exc}") from exc
            raise


class _StoreFull(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return "No space left" in text or f"errno {errno.ENOSPC}" in text or "ENOSPC" in text
