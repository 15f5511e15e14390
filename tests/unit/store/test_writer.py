"""Group commit, failure isolation, a full store, and shutdown of the writer."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
import trio

from replicad.errors import NoSuchMailboxError, ReplicadError, StoreFullError
from replicad.store.mailstore import AppendRequest, MailStore
from replicad.store.writer import InlineExecutor
from replicad.uidset import UidSet


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path) as store:
        await store.append("u", "INBOX", b"first")
        before = store.writer.stats.batches
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(store.append, "u", "INBOX", f"message {i}".encode())
        batches = store.writer.stats.batches - before
        # 200 operations must not cost 200 commits (and fsyncs): group commit.
        assert batches < 100, batches
        assert store.writer.stats.largest_batch > 1
        status = await store.mailbox_status("u", "INBOX")
        assert status.messages == 201 and status.uidnext == 202
        uids = [m.uid for m in await store.fetch("u", "INBOX", UidSet.parse("all"))]
        assert uids == list(range(1, 202))


async def test_failing_operation_rolls_back_alone(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path) as store:
        results: dict[str, object] = {}

        async def good(i: int) -> None:
            results[f"good{i}"] = await store.append("u", "INBOX", b"ok %d" % i)

        async def bad() -> None:
            try:
                await store.append("u", "Nope", b"lost")
            except NoSuchMailboxError as exc:
                results["bad"] = exc

        await store.create_mailbox("u", "Other")
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(good, i)
            nursery.start_soon(bad)
            for i in range(5, 10):
                nursery.start_soon(good, i)
        assert isinstance(results["bad"], NoSuchMailboxError)
        assert (await store.mailbox_status("u", "INBOX")).messages == 10


async def test_store_full_is_clear_and_keeps_data(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path, map_size=1 << 20) as store:
        kept: list[tuple[int, bytes]] = []
        rng = random.Random(7)
        with pytest.raises(StoreFullError) as info:
            for i in range(10_000):
                # Incompressible bodies, so the map fills quickly.
                body = (b"%d:" % i) + rng.randbytes(4000)
                rec = await store.append("u", "INBOX", body)
                kept.append((rec.uid, body))
        assert "node.map_size" in str(info.value) and info.value.exit_code == 75
        assert store.usage().full is not None
        assert kept, "some writes must have fitted"
        for uid, body in kept:
            assert await store.fetch_body("u", "INBOX", uid) == body
        status = await store.mailbox_status("u", "INBOX")
        assert status.messages == len(kept)
        # Small writes that still fit keep working; flags need no new pages here.
        await store.store_flags("u", "INBOX", UidSet.parse("1"), "add", ["\\Seen"])
    # Reopening finds the same committed state.
    async with MailStore.open(tmp_path, map_size=1 << 20) as store:
        assert (await store.mailbox_status("u", "INBOX")).messages == len(kept)


async def test_a_raised_ceiling_lets_the_map_grow_and_writes_go_on(tmp_path: Path) -> None:
    """node.map_size is a ceiling the map grows into (by doubling) without a
    restart; until then a full store says so (replicad.store.writer)."""
    async with MailStore.open(tmp_path, map_size=1 << 20) as store:
        rng = random.Random(3)
        with pytest.raises(StoreFullError):
            for i in range(1000):
                await store.append("u", "INBOX", (b"%d:" % i) + rng.randbytes(4000))
        held = (await store.mailbox_status("u", "INBOX")).messages
        assert store.usage().full is not None and store.usage().mapped_bytes == 1 << 20
        store.set_map_ceiling(64 << 20)
        for i in range(500):  # about 2 MiB more: the map must grow
            await store.append("u", "INBOX", (b"more %d:" % i) + rng.randbytes(4000))
        usage = store.usage()
        assert usage.full is None
        assert (1 << 20) < usage.mapped_bytes <= 64 << 20
        assert (await store.mailbox_status("u", "INBOX")).messages == held + 500
        assert usage.map_size == 64 << 20  # what /metrics calls the map's size: the ceiling


async def test_batch_with_one_oversized_write_spares_the_others(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path, map_size=2 << 20) as store:
        await store.append("u", "INBOX", b"seed")
        outcome: dict[str, object] = {}

        async def huge() -> None:
            big = random.Random(1).randbytes(4 << 20)  # incompressible, larger than the map
            try:
                await store.append_many("u", "INBOX", [AppendRequest(big)])
            except StoreFullError as exc:
                outcome["huge"] = exc

        async def small(i: int) -> None:
            outcome[f"small{i}"] = await store.append("u", "INBOX", b"small %d" % i)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(huge)
            for i in range(5):
                nursery.start_soon(small, i)
        assert isinstance(outcome["huge"], StoreFullError)
        assert all(f"small{i}" in outcome for i in range(5))
        assert (await store.mailbox_status("u", "INBOX")).messages == 6


async def test_close_fails_queued_operations_cleanly(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    async with MailStore.open(tmp_path, executor=InlineExecutor()) as store:
        await store.append("u", "INBOX", b"x")

        async def late() -> None:
            try:
                await store.append("u", "INBOX", b"late")
            except ReplicadError as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(late)
            await trio.sleep(0)
            nursery.cancel_scope.cancel()
    # Whatever happened to the late write, reopening shows a consistent store.
    async with MailStore.open(tmp_path) as store:
        status = await store.mailbox_status("u", "INBOX")
        infos = await store.fetch("u", "INBOX", UidSet.parse("all"))
        assert status.messages == len(infos) >= 1


async def test_cancelling_the_owner_stops_the_writer(tmp_path: Path) -> None:
    with trio.move_on_after(5) as scope:
        async with MailStore.open(tmp_path) as store:
            await store.append("u", "INBOX", b"x")
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(ReplicadError, match="closed"):
        await store.append("u", "INBOX", b"after close")


async def test_inline_executor_runs_on_the_event_loop_thread(tmp_path: Path) -> None:
    """The simulator seam: store work runs inline, so a seeded scheduler replays it."""
    loop_thread = threading.get_ident()
    seen: list[int] = []
    async with MailStore.open(tmp_path, executor=InlineExecutor()) as store:
        await store.writer.submit(lambda txn: seen.append(threading.get_ident()))
        await store.append("u", "INBOX", b"x")
        assert (await store.mailbox_status("u", "INBOX")).messages == 1
    assert seen == [loop_thread]


async def test_thread_executor_keeps_lmdb_off_the_event_loop(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    async with MailStore.open(tmp_path) as store:
        await store.writer.submit(lambda txn: seen.append(threading.get_ident()))
    assert seen and seen[0] != loop_thread
