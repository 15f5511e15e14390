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


def test_the_window_is_bounded_in_bytes_and_a_larger_change_goes_alone() -> None:
    s = OutboxStream("b", acked=0, window=100, batch=10, window_bytes=1000, batch_bytes=400)
    s.on_link_up()
    assert s.next_range(50) == SendRange(0, 10, 400, alone=True)
    s.on_frame(1, 300)
    s.on_frame(2, 0)  # a flag change: no bodies
    s.on_frame(3, 600)
    s.on_sent(3)
    assert s.bytes_in_flight == 900
    # 100 octets of room: only what fits, never a larger first entry.
    assert s.next_range(50) == SendRange(3, 10, 100, alone=False)
    s.on_frame(4, 100)
    s.on_sent(4)
    assert s.next_range(50) is None  # full in bytes, though 96 entries of room are left
    assert s.on_ack(2)
    assert s.bytes_in_flight == 700
    assert s.next_range(50) == SendRange(4, 10, 300, alone=False)
    assert s.on_ack(4)
    assert s.bytes_in_flight == 0
    # Nothing in flight: the next change goes even if it is above the window.
    assert s.next_range(50) == SendRange(4, 10, 400, alone=True)
    s.on_frame(5, 5000)
    s.on_sent(5)
    assert s.next_range(50) is None
    assert s.peak_bytes == 5000
    s.on_link_down()
    assert s.bytes_in_flight == 0  # resent from the ack on the next link
    s.on_link_up()
    assert s.next_range(50) == SendRange(4, 10, 400, alone=True)


def test_a_resync_jump_releases_what_it_skips() -> None:
    s = OutboxStream("b", acked=0, window=10, batch=10, window_bytes=100, batch_bytes=100)
    s.on_link_up()
    for seq in (1, 2, 3):
        s.on_frame(seq, 30)
    s.on_sent(3)
    s.on_resync_jump(2)
    assert (s.acked, s.bytes_in_flight) == (2, 30)


def test_random_delivery_never_exceeds_the_window_in_bytes() -> None:
    """The receiver's inbox holds a subset of what is in flight: if the window
    in bytes never exceeds the inbox's bound (outbox.py, Deadlock), neither
    does the inbox, except for one larger change sent alone."""
    rng = random.Random(11)
    sizes = {seq: rng.choice([0, 0, 10, 100, 300, 2500]) for seq in range(1, 401)}
    head = len(sizes)
    s = OutboxStream("b", acked=0, window=32, batch=8, window_bytes=1000, batch_bytes=400)
    s.on_link_up()
    delivered: set[int] = set()
    in_flight: list[int] = []
    while s.acked < head:
        step = rng.random()
        want = s.next_range(head)
        if step < 0.5 and want is not None:
            # What the store returns for the range (mailstore.outbox_batch).
            seqs, total = [], 0
            for seq in range(want.after + 1, want.after + want.limit + 1):
                if total + sizes[seq] > want.max_bytes and (seqs or not want.alone):
                    break
                seqs.append(seq)
                total += sizes[seq]
            for seq in seqs:
                s.on_frame(seq, sizes[seq])
            if seqs:
                s.on_sent(seqs[-1])
            in_flight += seqs
        elif step < 0.8 and in_flight:
            delivered.add(in_flight.pop(0))
            contiguous = s.acked
            while contiguous + 1 in delivered:
                contiguous += 1
            s.on_ack(contiguous)
        elif step < 0.85:
            in_flight.clear()
            s.on_link_down()
            s.on_link_up()
        unacked = [seq for seq in range(s.acked + 1, s.sent + 1)]
        assert s.bytes_in_flight == sum(sizes[q] for q in unacked) or not s.link_up
        assert s.bytes_in_flight <= 1000 or len([q for q in unacked if sizes[q]]) == 1
        assert s.sent - s.acked <= s.window
    assert delivered >= set(range(1, head + 1))
