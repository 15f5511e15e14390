"""Replies collected before use (anti-entropy's MAILBOXES) stay within a
budget of frames: past it they are dropped as they come, and MAILBOXES is
asked again for fewer buckets (I9)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from replicad.cluster import antientropy
from replicad.cluster.antientropy import AntiEntropy, CollectTooLarge, Comparison
from replicad.protocol import commands as c


class FakeSession:
    """Answers MAILBOXES with one ``* MAILBOX`` per mailbox of the buckets asked."""

    peer = "n2"

    def __init__(self, verify: AntiEntropy, per_bucket: int) -> None:
        self.verify = verify
        self.per_bucket = per_bucket
        self.asked: list[int] = []
        self.peak = 0

    async def request(self, command: Any, timeout: float) -> None:
        assert isinstance(command, c.Mailboxes)
        self.asked.append(len(command.buckets))
        for bucket in command.buckets:
            for i in range(self.per_bucket):
                frame = c.MailboxData(
                    f"u{bucket}", f"box{i}", bytes(16), 1, 1, 0, 0, bytes(32)
                )
                self.verify.on_data(self, frame)  # type: ignore[arg-type]
                self.peak = max(self.peak, len(self.verify.collect.get(self.peer, [])))


async def test_mailboxes_past_the_budget_are_asked_again_for_fewer_buckets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(antientropy, "COLLECT_BUDGET", 50)
    verify = AntiEntropy(SimpleNamespace(store=None), SimpleNamespace())  # type: ignore[arg-type]
    session = FakeSession(verify, per_bucket=3)
    found = await verify._mailboxes(session, set(range(100)), Comparison([], 0, 0))  # type: ignore[arg-type]
    assert len(found) == 300
    assert {(m.user, m.name) for m in found} == {
        (f"u{b}", f"box{i}") for b in range(100) for i in range(3)
    }
    assert session.peak <= 50
    assert session.asked[0] == 100 and min(session.asked) < 100  # halved until it fit

    one = FakeSession(verify, per_bucket=51)  # one bucket alone is too large: an error
    with pytest.raises(CollectTooLarge):
        await verify._mailboxes(one, {7}, Comparison([], 0, 0))  # type: ignore[arg-type]
    assert one.peak <= 50
