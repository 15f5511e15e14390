"""Migration jobs: their records and the per-user phase machine (pure).

A job (``migrate add``) moves a list of users off one source server; each
user is a :class:`UserJob` of its own, persisted by the node in its store
(:mod:`replicad.store.jobtable`) so that it survives a restart and a
``kill -9``.  Phases, as the Dovecot Migration Framework runs them:

1. ``pre-sync``: repeatable bulk copy while users still live on the source;
   a pass that finishes sets ``synced``; ``migrate retry`` runs another;
2. ``cutover`` (``migrate cutover JOB``, after the MX and login switch): one
   final incremental pass, then
3. ``done``; or ``failed`` with the error class and reason (a permanent
   failure, or a transient one that kept failing); ``migrate retry`` puts a
   failed user back into the phase it failed in.

Transitions are the functions below, each taking the record and returning
the next one; time (``now``, wall-clock seconds) and the jitter draw are
arguments.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

from replicad.errors import BadInputError
from replicad.migrate.failures import MAX_TRANSIENT_ATTEMPTS, FailureClass, backoff_s
from replicad.migrate.planner import Checkpoint

#: The keys of one user's ``migrate status -f json`` object, in order.
STATUS_KEYS = (
    "user",
    "phase",
    "synced",
    "folders",
    "messages",
    "expunged",
    "flags_changed",
    "bytes",
    "rate",
    "eta",
    "error",
)


#: Connections to one source host at once unless ``--per-host`` says otherwise
#: (Dovecot's ``mail_max_userip_connections`` and most servers' per-IP
#: limits are ten or so).
DEFAULT_PER_HOST = 10


class Phase(enum.Enum):
    PRE_SYNC = "pre-sync"
    CUTOVER = "cutover"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What ``migrate add`` asked for (the password lives apart, see the service)."""

    job: str
    host: str
    port: int
    tls: bool
    master_user: str | None
    workers: int
    created: float
    #: Connections to the source host at once, whatever the jobs (``--per-host``).
    per_host: int = DEFAULT_PER_HOST
    #: PEM of the CA(s) the source's certificate must chain to (None: the
    #: system's trust store); ``verify`` False accepts any certificate.
    ca_pem: str | None = None
    verify: bool = True

    def to_map(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "host": self.host,
            "port": self.port,
            "tls": self.tls,
            "master_user": self.master_user,
            "workers": self.workers,
            "created": self.created,
            "per_host": self.per_host,
            "ca_pem": self.ca_pem,
            "verify": self.verify,
        }

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> JobSpec:
        return cls(
            m["job"],
            m["host"],
            m["port"],
            m["tls"],
            m["master_user"],
            m["workers"],
            m["created"],
            m.get("per_host", DEFAULT_PER_HOST),
            m.get("ca_pem"),
            m.get("verify", True),
        )


@dataclass(frozen=True, slots=True)
class Counts:
    """What a user's passes have done so far (cumulative over passes)."""

    folders: int = 0
    messages: int = 0
    expunged: int = 0
    flags_changed: int = 0
    bytes: int = 0
    dropped_keywords: int = 0

    def plus(self, other: Counts) -> Counts:
        return Counts(
            max(self.folders, other.folders),
            self.messages + other.messages,
            self.expunged + other.expunged,
            self.flags_changed + other.flags_changed,
            self.bytes + other.bytes,
            self.dropped_keywords + other.dropped_keywords,
        )


def _checkpoint(fields: list[Any]) -> Checkpoint:
    """A stored checkpoint.  One of four fields was written by a build that
    copied at the source's UIDs under random GUIDs: every UID below its
    UIDNEXT that the target holds is that build's copy (``legacy_below``)."""
    if len(fields) == 4:
        uidvalidity, uidnext, highestmodseq, messages = fields
        return Checkpoint(uidvalidity, uidnext, highestmodseq, messages, 0, uidnext)
    return Checkpoint(*fields)


@dataclass(frozen=True, slots=True)
class UserJob:
    job: str
    source_user: str
    target_user: str
    phase: Phase
    synced: bool = False
    failed_phase: Phase | None = None
    error: str = ""
    attempts: int = 0  # transient failures in a row
    next_try: float = 0.0
    counts: Counts = Counts()
    #: The current (or last) pass: start, end (0: running), bytes done and planned.
    pass_started: float = 0.0
    pass_ended: float = 0.0
    pass_bytes: int = 0
    pass_planned_bytes: int = 0
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)

    def runnable(self, now: float) -> bool:
        return (
            self.phase in (Phase.PRE_SYNC, Phase.CUTOVER)
            and not self.synced
            and self.next_try <= now
        )

    def to_map(self) -> dict[str, Any]:
        c = self.counts
        return {
            "job": self.job,
            "source_user": self.source_user,
            "target_user": self.target_user,
            "phase": self.phase.value,
            "synced": self.synced,
            "failed_phase": self.failed_phase.value if self.failed_phase else None,
            "error": self.error,
            "attempts": self.attempts,
            "next_try": self.next_try,
            "counts": [
                c.folders,
                c.messages,
                c.expunged,
                c.flags_changed,
                c.bytes,
                c.dropped_keywords,
            ],
            "pass": [self.pass_started, self.pass_ended, self.pass_bytes, self.pass_planned_bytes],
            "checkpoints": {
                name: [
                    k.uidvalidity,
                    k.uidnext,
                    k.highestmodseq,
                    k.messages,
                    k.target_uidvalidity,
                    k.legacy_below,
                ]
                for name, k in self.checkpoints.items()
            },
        }

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> UserJob:
        try:
            started, ended, done, planned = m["pass"]
            return cls(
                m["job"],
                m["source_user"],
                m["target_user"],
                Phase(m["phase"]),
                m["synced"],
                Phase(m["failed_phase"]) if m["failed_phase"] else None,
                m["error"],
                m["attempts"],
                m["next_try"],
                Counts(*m["counts"]),
                started,
                ended,
                done,
                planned,
                {name: _checkpoint(k) for name, k in m["checkpoints"].items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"unreadable migration record: {exc}") from None

    def status_row(self, now: float) -> dict[str, Any]:
        """One user's ``migrate status`` object (keys: :data:`STATUS_KEYS`)."""
        end = self.pass_ended or now
        elapsed = max(end - self.pass_started, 1e-3) if self.pass_started else 0.0
        rate = round(self.pass_bytes / elapsed) if elapsed else 0
        eta: int | None
        if self.synced or self.phase in (Phase.DONE, Phase.FAILED):
            eta = 0
        elif rate and self.pass_planned_bytes >= self.pass_bytes:
            eta = round((self.pass_planned_bytes - self.pass_bytes) / rate)
        else:
            eta = None
        c = self.counts
        return {
            "user": self.target_user,
            "phase": self.phase.value,
            "synced": self.synced,
            "folders": c.folders,
            "messages": c.messages,
            "expunged": c.expunged,
            "flags_changed": c.flags_changed,
            "bytes": c.bytes,
            "rate": rate,
            "eta": eta,
            "error": self.error or None,
        }


# --- transitions -------------------------------------------------------------------


def pass_started(u: UserJob, now: float, planned_bytes: int = 0) -> UserJob:
    return replace(
        u, pass_started=now, pass_ended=0.0, pass_bytes=0, pass_planned_bytes=planned_bytes
    )


def pass_progress(u: UserJob, done: Counts, checkpoints: dict[str, Checkpoint]) -> UserJob:
    """A folder of the pass finished: its counts and checkpoint are kept."""
    return replace(
        u,
        counts=u.counts.plus(done),
        pass_bytes=u.pass_bytes + done.bytes,
        checkpoints={**u.checkpoints, **checkpoints},
    )


def pass_finished(u: UserJob, now: float) -> UserJob:
    """The pass went through every folder: synced; a cutover pass ends the job."""
    phase = Phase.DONE if u.phase is Phase.CUTOVER else u.phase
    return replace(u, phase=phase, synced=True, attempts=0, error="", pass_ended=now)


def pass_failed(u: UserJob, failure: FailureClass, reason: str, now: float, draw: float) -> UserJob:
    """Transient: retry after a backoff; permanent (or too many): ``failed``."""
    error = f"{failure.value}: {reason}"
    attempts = u.attempts + 1
    if failure.transient and attempts < MAX_TRANSIENT_ATTEMPTS:
        return replace(u, attempts=attempts, error=error, next_try=now + backoff_s(attempts, draw))
    # Failing again while failed keeps the phase to resume in (retry).
    resume = u.failed_phase if u.phase is Phase.FAILED else u.phase
    return replace(
        u, phase=Phase.FAILED, failed_phase=resume, error=error, attempts=attempts, pass_ended=now
    )


def cutover(u: UserJob) -> UserJob:
    """``migrate cutover``: the final pass; a failed user fails over into it on retry."""
    if u.phase is Phase.PRE_SYNC:
        return replace(u, phase=Phase.CUTOVER, synced=False, attempts=0, next_try=0.0)
    if u.phase is Phase.FAILED:
        return replace(u, failed_phase=Phase.CUTOVER)
    return u


def retry(u: UserJob) -> UserJob:
    """``migrate retry``: a failed user back to its phase; a synced pre-sync runs again."""
    if u.phase is Phase.FAILED:
        phase = u.failed_phase or Phase.PRE_SYNC
        return replace(
            u, phase=phase, failed_phase=None, synced=False, attempts=0, next_try=0.0, error=""
        )
    if u.phase in (Phase.PRE_SYNC, Phase.CUTOVER):
        return replace(u, synced=False, attempts=0, next_try=0.0)
    return u


def replace_pass_bytes(u: UserJob, octets: int) -> UserJob:
    """The bytes of the running pass (for its rate and ETA)."""
    return replace(u, pass_bytes=octets)
