"""A peer's catch-up: what is left, the rate, the ETA and the line shown (cluster/catchup.py)."""

from __future__ import annotations

from replicad.cluster.catchup import (
    RATE_WINDOW_S,
    AckRate,
    BacklogSize,
    CatchUpProgress,
    describe,
    progress,
)


def test_nothing_left_is_no_progress_line() -> None:
    assert progress(BacklogSize(entries=0, octets=0, read=0), rate=100.0) is None


def test_eta_is_what_is_left_over_the_rate() -> None:
    p = progress(BacklogSize(entries=8000, octets=130_000_000, read=8000), rate=1000.0)
    assert p == CatchUpProgress(
        changes_left=8000,
        bytes_left=130_000_000,
        bytes_estimated=False,
        changes_per_s=1000.0,
        eta_s=8.0,
    )


def test_a_backlog_read_in_part_extrapolates_its_octets_and_says_so() -> None:
    p = progress(BacklogSize(entries=10_000, octets=5_000_000, read=2_500), rate=None)
    assert p is not None
    assert (p.bytes_left, p.bytes_estimated) == (20_000_000, True)
    assert p.eta_s is None and p.changes_per_s is None  # no rate yet: no ETA


def test_the_rate_is_acknowledgements_per_second_in_the_window() -> None:
    rate = AckRate()
    assert rate.per_second(0.0) is None
    for i in range(11):  # 100 entries a second for 10 s
        rate.acked(float(i), 100 * i)
    assert rate.per_second(10.0) == 100.0


def test_a_stalled_stream_slows_down_then_has_no_rate() -> None:
    rate = AckRate()
    rate.acked(0.0, 0)
    rate.acked(1.0, 500)
    assert rate.per_second(1.0) == 500.0
    # Nothing acknowledged since: the rate counts up to now, not to the last ack.
    assert rate.per_second(5.0) == 100.0
    assert rate.per_second(1.0 + RATE_WINDOW_S + 0.1) is None


def test_the_progress_line_says_messages_bytes_rate_and_eta() -> None:
    p = CatchUpProgress(8123, 131_200_000, False, 1020.0, 8.0)
    assert describe("n3", p) == (
        "n3 catching up: 8123 changes, 131.2 MB left, 1020 changes/s, ETA 8 s"
    )
    q = CatchUpProgress(5, 2_000, True, None, None)
    assert describe("n2", q) == (
        "n2 catching up: 5 changes, ~2.0 kB left, no progress lately, ETA unknown"
    )
    assert CatchUpProgress.from_json(p.to_json()) == p
    long = CatchUpProgress(10, 1, False, 0.002, 5000.0)
    assert describe("n4", long).endswith("ETA 1 h 23 min")


def test_mailboxes_to_resync_are_part_of_the_catch_up() -> None:
    """After an outbox overflow the log holds nothing more for the peer: its
    gapped mailboxes come back through resyncs, and the line says how many."""
    p = progress(BacklogSize(entries=0, octets=0, read=0), rate=None, resyncs=3)
    assert p is not None and p.mailboxes_to_resync == 3 and p.changes_left == 0
    assert describe("n2", p) == (
        "n2 catching up: 0 changes, 0 B left, 3 mailboxes to resync, "
        "no progress lately, ETA unknown"
    )
    one = progress(BacklogSize(entries=4, octets=10, read=4), rate=2.0, resyncs=1)
    assert one is not None and ", 1 mailbox to resync," in describe("n2", one)
    assert CatchUpProgress.from_json(one.to_json()) == one
