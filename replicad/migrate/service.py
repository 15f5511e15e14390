"""The node's migration workers and the admin operations that drive them (trio glue).

:class:`MigrationService` keeps every job's records in the store's
``local_jobs`` table (this node's own, never replicated) and runs the
users' passes as tasks:

* at most ``--workers`` passes of one job at once, and at most
  ``--per-host`` connections to one source host whatever the jobs (default
  :data:`~replicad.migrate.jobs.DEFAULT_PER_HOST`; the jobs on one host
  share the cap, and the last one added sets it);
* a user's record is written when its pass ends, and while it runs at
  most every :data:`PROGRESS_PERSIST_S` after a folder that changed
  (counts and checkpoints): a ``kill -9`` of the node loses at most that
  much of the checkpoints, which only spare work -- the next pass plans
  from the target and reads which message is which from its GUIDs
  (``replicad.migrate.copier``, ``replicad.migrate.identity``), so nothing
  is copied twice; the counts of the lost stretch are not recounted;
* a failure is classified (``replicad.migrate.failures``) and the pure
  phase machine (``replicad.migrate.jobs``) decides: retry after a backoff
  with jitter, or stop that user ``failed``; the others go on.

Source passwords: ``migrate add`` sends them over the admin socket (a
0600 socket of the node's own user); they are kept for the passes and
their retries in ``DATA_DIR/migrate/JOB.secrets`` (directory 0700, file
0600, msgpack), never in the store (which is copied between nodes by
backups) and never in a log line, and the file is removed when the job is
cancelled or every user is done.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import msgpack
import trio

from replicad.errors import BadInputError, NotFoundError, ProtocolError, ReplicadError
from replicad.fsmode import PRIVATE_FILE, private_directory
from replicad.metrics import NodeMetrics
from replicad.migrate import jobs
from replicad.migrate.copier import UserPass
from replicad.migrate.failures import FailureClass, SourceError
from replicad.migrate.jobs import DEFAULT_PER_HOST, Counts, JobSpec, Phase, UserJob
from replicad.migrate.planner import Checkpoint
from replicad.migrate.source import SourceConnection, SourceLogin
from replicad.migrate.target import TargetWrites
from replicad.migrate.userlist import parse_source
from replicad.store.mailstore import MailStore
from replicad.usernames import normalise_user, validate_user_name

log = logging.getLogger("replicad.migrate")

MAX_PER_HOST: Final = 64
MAX_WORKERS: Final = 64
DEFAULT_WORKERS: Final = 4
#: How often the scheduler looks for runnable users without being woken.
SCHEDULE_INTERVAL_S: Final = 1.0
#: A running pass's progress is persisted at most this often (a durable
#: commit per folder was a third of a first pass's commits).
PROGRESS_PERSIST_S: Final = 5.0
_SPEC = b"migrate/spec/"
_USER = b"migrate/user/"

AdminHandler = Callable[[dict[str, Any]], Awaitable[Any]]


def _user_key(job: str, user: str) -> bytes:
    return _USER + job.encode() + b"/" + user.encode()


class MigrationService:
    def __init__(
        self,
        store: MailStore,
        writes: TargetWrites,
        secrets_dir: Path,
        metrics: NodeMetrics | None = None,
    ) -> None:
        self.store = store
        self.writes = writes
        self.secrets_dir = secrets_dir
        self.metrics = metrics
        self.specs: dict[str, JobSpec] = {}
        self.users: dict[tuple[str, str], UserJob] = {}
        self._running: dict[tuple[str, str], trio.CancelScope] = {}
        self._job_limits: dict[str, trio.CapacityLimiter] = {}
        self._host_limits: dict[str, trio.CapacityLimiter] = {}
        self._wake = trio.Event()
        self._random = random.Random()
        self._persisted_at: dict[tuple[str, str], float] = {}
        self._ready: list[tuple[float, int, tuple[str, str]]] = []
        self._order = itertools.count()

    # -- admin operations (protocol-spec/admin.md) --

    @property
    def handlers(self) -> dict[str, AdminHandler]:
        return {
            "migrate_add": self.add,
            "migrate_status": self.status,
            "migrate_cutover": self.cutover,
            "migrate_retry": self.retry,
            "migrate_cancel": self.cancel,
        }

    async def add(self, args: dict[str, Any]) -> dict[str, Any]:
        source = parse_source(_text(args, "source"))
        raw_users = args.get("users")
        if not isinstance(raw_users, list) or not raw_users:
            raise ProtocolError("migrate_add: 'users' must be a non-empty list")
        pairs: list[tuple[str, str]] = []
        for pair in raw_users:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(p, str) for p in pair)
            ):
                raise ProtocolError("migrate_add: each user is [source, target]")
            pairs.append((pair[0], validate_user_name(normalise_user(pair[1]))))
        master = args.get("master_user")
        if master is not None and not isinstance(master, str):
            raise ProtocolError("migrate_add: 'master_user' must be a string")
        passwords = args.get("passwords")
        if not isinstance(passwords, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in passwords.items()
        ):
            raise ProtocolError("migrate_add: 'passwords' must map names to strings")
        needed = [""] if master is not None else [s for s, _ in pairs]
        missing = [n for n in needed if n not in passwords]
        if missing:
            raise BadInputError(f"no source password for {missing[0] or 'the master user'!r}")
        phase = Phase(args.get("phase") or Phase.PRE_SYNC.value)
        if phase not in (Phase.PRE_SYNC, Phase.CUTOVER):
            raise BadInputError("the phase of a new job is pre-sync or cutover")
        workers = args.get("workers") or DEFAULT_WORKERS
        if not isinstance(workers, int) or not 0 < workers <= MAX_WORKERS:
            raise BadInputError(f"workers must be 1 to {MAX_WORKERS}")
        per_host = args.get("per_host") or DEFAULT_PER_HOST
        if not isinstance(per_host, int) or not 0 < per_host <= MAX_PER_HOST:
            raise BadInputError(f"per_host must be 1 to {MAX_PER_HOST}")
        ca_pem = args.get("source_ca")
        if ca_pem is not None and not isinstance(ca_pem, str):
            raise ProtocolError("migrate_add: 'source_ca' must be PEM text")
        verify = not args.get("source_insecure", False)
        if ca_pem is not None:
            try:
                ssl.create_default_context(cadata=ca_pem)
            except (ssl.SSLError, ValueError) as exc:
                raise BadInputError(f"source CA: not a PEM certificate: {exc}") from None
        job = secrets.token_hex(4)
        spec = JobSpec(
            job,
            source.host,
            source.port,
            source.tls,
            master,
            workers,
            time.time(),
            per_host,
            ca_pem,
            verify,
        )
        self._write_secrets(job, {n: passwords[n] for n in needed})
        records: list[tuple[bytes, bytes | None]] = [(_SPEC + job.encode(), _pack(spec.to_map()))]
        new_users = [UserJob(job, s, t, phase) for s, t in pairs]
        records += [(_user_key(job, u.target_user), _pack(u.to_map())) for u in new_users]
        await self.store.put_job_records(records)
        self.specs[job] = spec
        if spec.host in self._host_limits:
            self._host_limits[spec.host].total_tokens = per_host
        if source.tls and not verify:
            log.warning("migrate.source_insecure", extra={"kv": {"job": job, "host": source.host}})
        for u in new_users:
            self.users[(job, u.target_user)] = u
            self._enqueue((job, u.target_user))
        log.info(
            "migrate.job_added",
            extra={
                "kv": {"job": job, "source": f"{source.host}:{source.port}", "users": len(pairs)}
            },
        )
        self._wake.set()
        return {"job": job, "users": len(pairs), "phase": phase.value, "workers": workers}

    async def status(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        job = args.get("job")
        if job is not None:
            self._spec(job)
        now = time.time()
        return [
            u.status_row(now) for (j, _), u in sorted(self.users.items()) if job is None or j == job
        ]

    async def cutover(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._transition(args, jobs.cutover)

    async def retry(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._transition(args, jobs.retry)

    async def cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        job = _text(args, "job")
        self._spec(job)
        keys = [k for k in self.users if k[0] == job]
        # Forgotten first: a pass still finishing sees its user gone and
        # writes nothing after the records are deleted (_save).
        for key in keys:
            del self.users[key]
            self._persisted_at.pop(key, None)
            scope = self._running.get(key)
            if scope is not None:
                scope.cancel()
        del self.specs[job]
        records: list[tuple[bytes, bytes | None]] = [(_SPEC + job.encode(), None)]
        records += [(_user_key(*k), None) for k in keys]
        await self.store.put_job_records(records)
        self._secrets_path(job).unlink(missing_ok=True)
        log.info("migrate.job_cancelled", extra={"kv": {"job": job, "users": len(keys)}})
        return {"job": job, "users": len(keys)}

    async def _transition(
        self, args: dict[str, Any], step: Callable[[UserJob], UserJob]
    ) -> dict[str, Any]:
        job = _text(args, "job")
        self._spec(job)
        changed = {k: step(u) for k, u in self.users.items() if k[0] == job}
        await self._persist(list(changed.values()))
        self.users.update(changed)
        for key in changed:
            self._enqueue(key)
        self._wake.set()
        return {"job": job, "users": len(changed)}

    def _spec(self, job: object) -> JobSpec:
        if not isinstance(job, str) or job not in self.specs:
            raise NotFoundError(f"no migration job {job!r}")
        return self.specs[job]

    # -- persistence --

    async def load(self) -> None:
        for _, value in await self.store.job_records(_SPEC):
            spec = JobSpec.from_map(msgpack.unpackb(value))
            self.specs[spec.job] = spec
        for _, value in await self.store.job_records(_USER):
            u = UserJob.from_map(msgpack.unpackb(value))
            if u.job in self.specs:
                self.users[(u.job, u.target_user)] = u
                self._enqueue((u.job, u.target_user))

    async def _persist(self, users: list[UserJob]) -> None:
        await self.store.put_job_records(
            [(_user_key(u.job, u.target_user), _pack(u.to_map())) for u in users]
        )

    def _secrets_path(self, job: str) -> Path:
        return self.secrets_dir / f"{job}.secrets"

    def _write_secrets(self, job: str, passwords: dict[str, str]) -> None:
        private_directory(self.secrets_dir)
        path = self._secrets_path(job)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(fd, "wb") as out:
            out.write(_pack(passwords))
            out.flush()
            os.fsync(out.fileno())

    def _read_secrets(self, job: str) -> dict[str, str]:
        try:
            data = msgpack.unpackb(self._secrets_path(job).read_bytes())
        except (OSError, ValueError) as exc:
            raise SourceError(FailureClass.AUTH, f"source password unavailable: {exc}") from None
        return {str(k): str(v) for k, v in data.items()}

    # -- the workers --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.load()
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                self._schedule(nursery)
                with trio.move_on_after(SCHEDULE_INTERVAL_S):
                    await self._wake.wait()
                self._wake = trio.Event()

    def _enqueue(self, key: tuple[str, str]) -> None:
        """Queue a user whose record may make it runnable (now or at its
        ``next_try``); stale and duplicate entries are dropped when popped."""
        u = self.users.get(key)
        if u is not None and u.phase in (Phase.PRE_SYNC, Phase.CUTOVER) and not u.synced:
            heapq.heappush(self._ready, (u.next_try, next(self._order), key))

    def _schedule(self, nursery: trio.Nursery) -> None:
        """Start the users whose time has come, earliest ``next_try`` first.

        A heap, not a scan: a wake (every pass's end) costs O(log n), where
        sorting every user per wake made a 1000-user no-op pass quadratic."""
        now = time.time()
        held: list[tuple[float, int, tuple[str, str]]] = []
        while self._ready and self._ready[0][0] <= now and self._capacity_left():
            entry = heapq.heappop(self._ready)
            key = entry[2]
            u = self.users.get(key)
            if u is None or key in self._running or not u.runnable(now):
                continue
            spec = self.specs[u.job]
            job_limit = self._job_limit(spec)
            host_limit = self._host_limit(spec)
            if job_limit.available_tokens < 1 or host_limit.available_tokens < 1:
                held.append(entry)
                continue
            scope = trio.CancelScope()
            self._running[key] = scope
            nursery.start_soon(self._run_user, key, scope, job_limit, host_limit)
        for entry in held:
            heapq.heappush(self._ready, entry)

    def _job_limit(self, spec: JobSpec) -> trio.CapacityLimiter:
        return self._job_limits.setdefault(spec.job, trio.CapacityLimiter(spec.workers))

    def _host_limit(self, spec: JobSpec) -> trio.CapacityLimiter:
        return self._host_limits.setdefault(spec.host, trio.CapacityLimiter(spec.per_host))

    def _capacity_left(self) -> bool:
        """Whether some job could start a user (its own and its host's limit)."""
        return any(
            self._job_limit(spec).available_tokens >= 1
            and self._host_limit(spec).available_tokens >= 1
            for spec in self.specs.values()
        )

    async def _run_user(
        self,
        key: tuple[str, str],
        scope: trio.CancelScope,
        job_limit: trio.CapacityLimiter,
        host_limit: trio.CapacityLimiter,
    ) -> None:
        try:
            with scope:
                async with job_limit, host_limit:
                    await self._pass(key)
        except Exception as exc:
            # A bug in a pass stops that user, never the node or the other users.
            log.exception("migrate.internal_error", extra={"kv": {"user": key[1]}})
            current = self.users.get(key)
            if current is not None:
                failed = jobs.pass_failed(
                    current, FailureClass.PROTOCOL, f"internal error: {exc}", time.time(), 0.5
                )
                await self._save(failed)
        finally:
            self._running.pop(key, None)
            self._enqueue(key)  # a retry after its backoff, or a pass asked for meanwhile
            self._wake.set()

    async def _pass(self, key: tuple[str, str]) -> None:
        # The start is kept in memory only (rate, ETA): a restart re-runs the
        # pass anyway, and an unchanged user then costs one write, at the end.
        u = jobs.pass_started(self.users[key], time.time())
        self.users[key] = u
        self._persisted_at[key] = time.monotonic()  # a short pass persists once, at its end
        spec = self.specs[u.job]
        outcome = "synced"
        connection: SourceConnection | None = None
        try:
            passwords = self._read_secrets(u.job)
            login = SourceLogin(
                spec.host,
                spec.port,
                spec.tls,
                u.source_user,
                passwords.get("" if spec.master_user else u.source_user, ""),
                spec.master_user,
                spec.ca_pem,
                spec.verify,
            )
            connection = SourceConnection(login)
            await connection.connect()
            copier = UserPass(
                connection,
                self.writes,
                self.store,
                u.target_user,
                on_folder=lambda counts, marks: self._folder_done(key, counts, marks),
                on_bytes=lambda n: self._bytes(key, n),
            )
            await copier.run(u.checkpoints)
            current = self.users.get(key)
            if current is None:
                return  # the job was cancelled as the pass ended
            u = jobs.pass_finished(current, time.time())
        except SourceError as exc:
            u = self._failed(u, exc.failure, exc.reason)
            outcome = "failed" if u.phase is Phase.FAILED else "retry"
        except ReplicadError as exc:
            u = self._failed(u, FailureClass.PROTOCOL, str(exc))
            outcome = "failed"
        finally:
            if connection is not None:
                await connection.aclose()
        await self._save(u)
        if self.metrics is not None:
            self.metrics.migrate_pass(outcome)
        log.info(
            "migrate.pass_ended",
            extra={
                "kv": {
                    "job": u.job,
                    "user": u.target_user,
                    "phase": u.phase.value,
                    "outcome": outcome,
                    "error": u.error or "-",
                }
            },
        )
        if u.phase is Phase.DONE and all(
            x.phase is Phase.DONE for (j, _), x in self.users.items() if j == u.job
        ):
            self._secrets_path(u.job).unlink(missing_ok=True)

    def _failed(self, u: UserJob, failure: FailureClass, reason: str) -> UserJob:
        """``u`` as last saved (its folders' progress kept), failed with ``reason``."""
        current = self.users.get((u.job, u.target_user), u)
        return jobs.pass_failed(current, failure, reason, time.time(), self._random.random())

    async def _folder_done(
        self, key: tuple[str, str], counts: Counts, marks: dict[str, Checkpoint]
    ) -> None:
        u = self.users.get(key)
        if u is None:
            return  # cancelled
        # Bytes were counted into the pass as batches arrived (_bytes).
        u = jobs.pass_progress(u, counts, marks)
        u = jobs.replace_pass_bytes(u, u.pass_bytes - counts.bytes)
        now = time.monotonic()
        if now - self._persisted_at.get(key, 0.0) >= PROGRESS_PERSIST_S:
            await self._save(u)
        else:
            self.users[key] = u  # persisted with the next save (at the latest the pass's end)
        if self.metrics is not None:
            self.metrics.migrate_counts(
                counts.messages, counts.expunged, counts.flags_changed, counts.bytes
            )

    def _bytes(self, key: tuple[str, str], octets: int) -> None:
        u = self.users.get(key)
        if u is not None:
            self.users[key] = jobs.replace_pass_bytes(u, u.pass_bytes + octets)

    async def _save(self, u: UserJob) -> None:
        key = (u.job, u.target_user)
        if key not in self.users:
            return  # cancelled meanwhile
        self.users[key] = u
        self._persisted_at[key] = time.monotonic()
        with trio.CancelScope(shield=True):
            await self._persist([u])


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _text(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"missing argument {key!r}")
    return value
