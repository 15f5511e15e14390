"""Pipelined import batches commit in the order the client numbered them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from replicad.admin.dispatch import AdminDispatcher, BatchOrder, default_identity
from replicad.errors import TemporaryError
from replicad.store.mailstore import MailStore


def items(tag: str, n: int) -> list[dict[str, object]]:
    return [
        {"body": f"Subject: {tag} {i}\r\n\r\nx\r\n".encode(), "flags": [], "internaldate": 1}
        for i in range(n)
    ]


async def test_a_later_batch_waits_for_the_earlier_one(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "store", map_size=64 << 20) as store:
        dispatcher = AdminDispatcher(store, default_identity("n1"), 1 << 20)
        results: dict[int, Any] = {}

        async def send(seq: int) -> None:
            args = {"user": "u", "mailbox": "INBOX", "items": items(f"b{seq}", 3)}
            results[seq] = await dispatcher.handle(
                "append_many", {**args, "stream": "s1", "seq": seq}
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, 1)  # arrives first
            await trio.sleep(0.05)
            assert 1 not in results  # held: batch 0 has not been committed
            nursery.start_soon(send, 0)
        uids = {seq: [m["uid"] for m in r["result"]] for seq, r in results.items()}
        assert uids == {0: [1, 2, 3], 1: [4, 5, 6]}


async def test_a_missing_batch_fails_the_next_instead_of_hanging() -> None:
    order = BatchOrder()
    order.WAIT = 0.05
    with pytest.raises(TemporaryError, match="earlier batch never arrived"):
        async with order.turn("s2", 1):
            raise AssertionError("batch 1 ran before batch 0")
    async with order.turn("s2", 0):
        pass
    async with order.turn("s2", 1):  # in order now
        pass
