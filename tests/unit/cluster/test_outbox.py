"""The outbox stream resends from the last ack and never exceeds its window."""

from __future__ import annotations

import random

from replicad.cluster.outbox import OutboxStream, SendRange


def test_idle_until_link_up_and_resend_after_reconnect() -> None:
    s = OutboxStream("b", acked=10, window=5, batch=3)
    assert s.next_range(20) is None  # link down
    s.on_link_up()
    assert s.next_range(20) == SendRange(10, 3)
    s.on_sent(13)
    assert s.next_range(20) == SendRange(13, 2)  # window of 5: 3 in flight
    s.on_sent(15)
    assert s.next_range(20) is None  # window full: a peer that stops reading is not flooded
    assert s.on_ack(12)
    assert not s.on_ack(11)  # stale
    assert s.next_range(20) == SendRange(15, 2)
    s.on_link_down()
    s.on_link_up()
    assert s.next_range(20) == SendRange(12, 3)  # resend what was not acknowledged


def test_random_delivery_sends_every_entry_and_respects_the_window() -> None:
    rng = random.Random(5)
    head = 500
    s = OutboxStream("b", acked=0, window=16, batch=7)
    s.on_link_up()
    delivered: set[int] = set()
    in_flight: list[int] = []
    while s.acked < head:
        step = rng.random()
        rng_ok = s.next_range(head)
        if step < 0.5 and rng_ok is not None:
            seqs = list(range(rng_ok.after + 1, rng_ok.after + rng_ok.limit + 1))
            in_flight += seqs
            s.on_sent(seqs[-1])
        elif step < 0.8 and in_flight:
            seq = in_flight.pop(0)
            delivered.add(seq)
            contiguous = s.acked
            while contiguous + 1 in delivered:
                contiguous += 1
            s.on_ack(contiguous)
        elif step < 0.85:
            in_flight.clear()  # the link died with frames in flight
            s.on_link_down()
            s.on_link_up()
        assert s.sent - s.acked <= s.window
    assert delivered >= set(range(1, head + 1))
