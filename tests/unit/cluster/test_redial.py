"""The dial schedule: backoff for dials, a sign of life brings one forward (cluster/redial.py)."""

from __future__ import annotations

from replicad.cluster.redial import Backoff, DialSchedule

BACKOFF = Backoff(min_s=0.1, max_s=3.0)


def test_failed_dials_back_off_exponentially_up_to_the_cap() -> None:
    schedule = DialSchedule(BACKOFF, now=0.0)
    assert schedule.due == 0.0  # the first dial at once
    waits = []
    now = 0.0
    for _ in range(8):
        schedule.dial_failed(now, jitter=1.0)
        waits.append(round(schedule.due - now, 6))
        now = schedule.due
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.0, 3.0, 3.0]


def test_jitter_scales_the_wait() -> None:
    schedule = DialSchedule(BACKOFF, now=10.0)
    schedule.dial_failed(10.0, jitter=0.5)
    assert schedule.due == 10.05


def test_a_link_that_ended_is_dialled_again_from_the_shortest_wait() -> None:
    schedule = DialSchedule(BACKOFF, now=0.0)
    for t in range(6):
        schedule.dial_failed(float(t), jitter=1.0)
    schedule.link_ended(100.0, jitter=1.0)
    assert schedule.due == 100.1
    # A peer that closes every link answers probes: it still waits its turn.
    assert schedule.sign_of_life() is False
    schedule.dial_failed(100.1, jitter=1.0)
    assert round(schedule.due - 100.1, 6) == 0.2


def test_a_sign_of_life_brings_one_dial_forward_until_rearmed() -> None:
    schedule = DialSchedule(BACKOFF, now=0.0)
    schedule.dial_failed(0.0, jitter=1.0)
    assert schedule.wants_signs_of_life
    assert schedule.sign_of_life() is True  # dial now
    schedule.dial_failed(0.01, jitter=1.0)  # the early dial failed: a refusing peer
    # Probes keep answering, but no second early dial: the backoff rules.
    assert not schedule.wants_signs_of_life
    assert schedule.sign_of_life() is False
    schedule.peer_unreachable()  # the peer went away meanwhile...
    assert schedule.sign_of_life() is True  # ...so its coming back is news again


def test_the_scheduled_dial_rearms_signs_of_life() -> None:
    schedule = DialSchedule(BACKOFF, now=0.0)
    assert schedule.sign_of_life() is True
    assert schedule.sign_of_life() is False
    schedule.scheduled_dial()
    assert schedule.sign_of_life() is True
