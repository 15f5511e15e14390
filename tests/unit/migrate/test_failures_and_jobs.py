"""Error classes, backoff and the per-user phase machine (replicad.migrate.failures, .jobs)."""

from __future__ import annotations

import pytest

from replicad.errors import DurabilityError, StoreFullError
from replicad.migrate import jobs
from replicad.migrate.failures import (
    BACKOFF_CAP_S,
    MAX_TRANSIENT_ATTEMPTS,
    FailureClass,
    backoff_s,
    classify_server_text,
    classify_target_error,
)
from replicad.migrate.jobs import DEFAULT_PER_HOST, STATUS_KEYS, Counts, JobSpec, Phase, UserJob
from replicad.migrate.planner import Checkpoint


@pytest.mark.parametrize(
    ("text", "at_login", "expected"),
    [
        ("[AUTHENTICATIONFAILED] Authentication failed.", True, FailureClass.AUTH),
        ("Invalid credentials (Failure)", True, FailureClass.AUTH),
        ("[UNAVAILABLE] Temporary authentication failure.", True, FailureClass.THROTTLED),
        ("Too many connections from your IP", False, FailureClass.THROTTLED),
        ("[OVERQUOTA] Quota exceeded", False, FailureClass.QUOTA),
        ("[SERVERBUG] Internal error occurred.", False, FailureClass.PROTOCOL),
        ("LOGIN failed.", True, FailureClass.AUTH),
    ],
)
def test_server_answers_are_classified(text: str, at_login: bool, expected: FailureClass) -> None:
    assert classify_server_text(text, at_login=at_login) is expected


def test_target_errors_are_classified() -> None:
    assert classify_target_error(StoreFullError("full")) is FailureClass.QUOTA
    assert classify_target_error(DurabilityError("quorum")) is FailureClass.NETWORK


def test_transient_and_permanent_classes() -> None:
    assert not FailureClass.AUTH.transient and not FailureClass.PROTOCOL.transient
    assert FailureClass.NETWORK.transient and FailureClass.THROTTLED.transient


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    assert backoff_s(1, 0.5) == pytest.approx(1.0)
    assert backoff_s(3, 0.5) == pytest.approx(4.0)
    assert backoff_s(40, 0.999) <= BACKOFF_CAP_S
    assert backoff_s(2, 0.0) == pytest.approx(0.1)  # never a busy loop
    with pytest.raises(ValueError):
        backoff_s(0, 0.5)


def user(phase: Phase = Phase.PRE_SYNC) -> UserJob:
    return UserJob("j1", "alice", "alice@example.org", phase)


def test_presync_pass_syncs_and_cutover_pass_ends_the_job() -> None:
    u = jobs.pass_finished(jobs.pass_started(user(), 100.0), 110.0)
    assert u.phase is Phase.PRE_SYNC and u.synced and not u.runnable(200.0)
    u = jobs.cutover(u)
    assert u.phase is Phase.CUTOVER and u.runnable(200.0)
    u = jobs.pass_finished(u, 300.0)
    assert u.phase is Phase.DONE and u.synced


def test_transient_failure_retries_after_a_backoff_then_gives_up() -> None:
    u = jobs.pass_failed(user(), FailureClass.NETWORK, "reset", 1000.0, 0.5)
    assert u.phase is Phase.PRE_SYNC and u.error == "network: reset"
    assert not u.runnable(1000.0) and u.runnable(1000.0 + BACKOFF_CAP_S)
    for _ in range(MAX_TRANSIENT_ATTEMPTS):
        u = jobs.pass_failed(u, FailureClass.NETWORK, "reset", 1000.0, 0.5)
    assert u.phase is Phase.FAILED and u.failed_phase is Phase.PRE_SYNC


def test_permanent_failure_stops_and_retry_resumes_in_its_phase() -> None:
    u = jobs.pass_failed(user(Phase.CUTOVER), FailureClass.AUTH, "bad password", 5.0, 0.1)
    assert u.phase is Phase.FAILED and u.error.startswith("auth:") and not u.runnable(1e9)
    u = jobs.retry(u)
    assert u.phase is Phase.CUTOVER and u.runnable(0.0) and u.error == ""


def test_record_round_trips_and_status_has_exactly_the_contract_keys() -> None:
    u = jobs.pass_progress(
        jobs.pass_started(user(), 10.0, planned_bytes=3000),
        Counts(5, 3, 1, 2, 1000, 1),
        {"INBOX": Checkpoint(7, 9, 40, 8)},
    )
    assert UserJob.from_map(u.to_map()) == u
    row = u.status_row(now=20.0)
    assert tuple(row) == STATUS_KEYS
    assert row["messages"] == 3 and row["bytes"] == 1000 and row["rate"] == 100
    assert row["eta"] == 20 and row["synced"] is False and row["error"] is None


def test_job_spec_round_trips_and_older_records_get_the_defaults() -> None:
    spec = JobSpec("j1", "old.example", 993, True, None, 4, 1.0, 3, "PEM", False)
    assert JobSpec.from_map(spec.to_map()) == spec
    older = {k: v for k, v in spec.to_map().items() if k not in ("per_host", "ca_pem", "verify")}
    assert JobSpec.from_map(older) == JobSpec("j1", "old.example", 993, True, None, 4, 1.0)
    assert JobSpec.from_map(older).per_host == DEFAULT_PER_HOST
    # A checkpoint record of four numbers (before the target's UIDVALIDITY was kept).
    assert Checkpoint(*[7, 9, 40, 8]).target == 7


def test_an_earlier_builds_checkpoints_mark_its_copies_and_keep_the_mark() -> None:
    """Four numbers: written by the build that copied at the source's UIDs
    under random GUIDs; every UID below its UIDNEXT is that build's copy."""
    record = user().to_map()
    record["checkpoints"] = {"INBOX": [7, 9, 40, 8], "Sent": [7, 3, 40, 2, 0, 0]}
    job = UserJob.from_map(record)
    assert job.checkpoints["INBOX"] == Checkpoint(7, 9, 40, 8, 0, legacy_below=9)
    assert job.checkpoints["Sent"].legacy_below == 0
    assert UserJob.from_map(job.to_map()) == job  # stored again with the mark
