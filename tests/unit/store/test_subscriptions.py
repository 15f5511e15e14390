"""IMAP subscriptions in the store: last-writer-wins registers per (user,
name), logged and replicated (replicad.store.subscriptions; resync.md §10; I4)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.cluster.changewire import from_wire, to_wire
from replicad.errors import BadInputError
from replicad.store.changecodec import decode_change, encode_change
from replicad.store.changelog import RESYNC_OVERFLOW
from replicad.store.mailstore import MailStore
from replicad.store.records import SubscriptionChanged
from replicad.store.replica import Outcome
from replicad.store.subscriptions import (
    SUBSCRIPTIONS_MARK,
    Register,
    SubscriptionEntry,
    digest_of,
)


async def test_subscribe_keeps_names_that_do_not_exist_and_unsubscribe_keeps_a_register(
    tmp_path: Path,
) -> None:
    async with MailStore.open(tmp_path) as store:
        subs = store.subscriptions
        first = await store.set_subscribed("alice", "Lists/never-created", True)
        await store.set_subscribed("alice", "inbox", True)  # INBOX is caseless
        assert await subs.subscribed("alice") == {"Lists/never-created", "INBOX"}
        gone = await store.set_subscribed("alice", "Lists/never-created", False)
        assert gone.stamp > first.stamp
        assert await subs.subscribed("alice") == {"INBOX"}
        # The UNSUBSCRIBE is a register of its own: an older SUBSCRIBE loses to it.
        registers = await subs.of_user("alice")
        assert registers["Lists/never-created"] == Register(gone.stamp, False)
        stale = SubscriptionEntry("alice", "Lists/never-created", Register(first.stamp, True))
        assert await subs.merge([stale]) == 0
        assert await subs.subscribed("alice") == {"INBOX"}
        assert await subs.subscribed("bob") == set()
        with pytest.raises(BadInputError):
            await store.set_subscribed("alice", "a//b", True)


async def test_registers_survive_a_restart(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path) as store:
        await store.set_subscribed("alice", "Archive", True)
    async with MailStore.open(tmp_path) as store:
        assert await store.subscriptions.subscribed("alice") == {"Archive"}


async def test_the_change_is_logged_and_applies_on_a_replica_once(tmp_path: Path) -> None:
    async with (
        MailStore.open(tmp_path / "a", peers=("b",)) as master,
        MailStore.open(tmp_path / "b", peers=("a",)) as replica,
    ):
        await master.set_subscribed("alice", "Archive", True)
        await master.set_subscribed("alice", "Old", False)
        entries = await master.outbox(0, 10)
        assert [type(c) for _, c in entries] == [SubscriptionChanged, SubscriptionChanged]
        for _, change in entries:
            assert decode_change(encode_change(change)) == change
            frame = to_wire(1, change, {})
            assert from_wire(frame, {}) == (change, [])
            result = await replica.apply_replicated(change, "a")
            assert result.outcome is Outcome.APPLIED
            assert (await replica.apply_replicated(change, "a")).outcome is Outcome.DUPLICATE
        assert await replica.subscriptions.of_user("alice") == await master.subscriptions.of_user(
            "alice"
        )


async def test_a_dropped_backlog_marks_the_peer_for_a_push(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path, peers=("b",), max_lag=2) as store:
        for n in range(4):
            await store.set_subscribed("alice", f"box{n}", True)
        marks = await store.resync_marks()
        assert [(m.peer, m.mailbox, m.reason) for m in marks] == [
            ("b", SUBSCRIPTIONS_MARK, RESYNC_OVERFLOW)
        ]


entries_st = st.lists(
    st.builds(
        SubscriptionEntry,
        st.sampled_from(["alice", "bob"]),
        st.sampled_from(["INBOX", "A", "A/B", "Gone"]),
        st.builds(Register, st.integers(1, 6), st.booleans()),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None)
@given(entries=entries_st, seed=st.integers(0, 2**16))
async def test_any_order_of_merges_converges(
    tmp_path_factory: pytest.TempPathFactory, entries: list[SubscriptionEntry], seed: int
) -> None:
    """I4: the merge is commutative, associative and idempotent, and each
    (user, name) ends at its greatest (stamp, subscribed)."""
    shuffled = list(entries)
    random.Random(seed).shuffle(shuffled)
    base = tmp_path_factory.mktemp("merge")
    async with (
        MailStore.open(base / "one") as one,
        MailStore.open(base / "two") as two,
    ):
        for e in entries:
            await one.subscriptions.merge([e])
        half = len(shuffled) // 2
        await two.subscriptions.merge(shuffled[half:])
        await two.subscriptions.merge(shuffled)
        assert await one.subscriptions.entries() == await two.subscriptions.entries()
        assert await one.subscriptions.digest() == await two.subscriptions.digest()
        expected: dict[tuple[str, str], Register] = {}
        for e in entries:
            key = (e.user, e.name)
            expected[key] = max(expected.get(key, e.register), e.register)
        held = {(e.user, e.name): e.register for e in await one.subscriptions.entries()}
        assert held == expected


def test_the_digest_depends_on_the_registers_not_their_order() -> None:
    a = SubscriptionEntry("alice", "A", Register(5, True))
    b = SubscriptionEntry("alice", "B", Register(6, False))
    assert digest_of([a, b]) == digest_of([b, a])
    assert digest_of([a, b]) != digest_of([a, SubscriptionEntry("alice", "B", Register(6, True))])
