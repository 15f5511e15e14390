"""The hybrid clock across restarts and clock steps, and the skew bound on
peers' stamps (replicad.store.clock; I5: a client's flag change is never
reported done while it lost to an older stamp)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import lmdb
import pytest

from replicad.errors import ClockSkewError
from replicad.store.clock import MAX_STAMP, HybridClock, wall_stamp
from replicad.store.index import CLOCK_KEY
from replicad.store.mailstore import MailStore
from replicad.store.records import FlagsChanged
from replicad.store.replica import CLOCK_SKEW, Outcome
from replicad.uidset import UidSet

HOUR = 3600.0


class Wall:
    """A wall clock an operator can set (NTP steps, a fast clock)."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def __call__(self) -> float:
        return time.time() + self.offset


async def flags_of(store: MailStore, uid: int) -> tuple[str, ...]:
    [info] = await store.fetch("alice", "INBOX", UidSet.of([uid]))
    return tuple(info.flags)


async def test_a_flag_removed_after_a_restart_behind_a_fast_clock_is_removed(
    tmp_path: Path,
) -> None:
    # The reproduction: a clock an hour ahead sets \Seen; the node restarts
    # with the clock set right; removing \Seen must remove it.
    wall = Wall(HOUR)
    async with MailStore.open(tmp_path / "s", clock=HybridClock(wall)) as store:
        uid = (await store.append("alice", "INBOX", b"Subject: x\r\n\r\nbody\r\n")).uid
        await store.store_flags("alice", "INBOX", UidSet.of([uid]), "add", ["\\Seen"])
    wall.offset = 0.0
    async with MailStore.open(tmp_path / "s", clock=HybridClock(wall)) as store:
        done = await store.store_flags("alice", "INBOX", UidSet.of([uid]), "remove", ["\\Seen"])
        assert done.uids == (uid,)
        assert await flags_of(store, uid) == ()
        # A clock that ran further ahead than max_skew is not followed after
        # the restart (its new changes would be refused by every peer).
        assert store.index.clock.now() <= wall_stamp(time.time() + 301)


async def test_the_clock_goes_on_above_its_stamps_after_a_restart(tmp_path: Path) -> None:
    wall = Wall(200)  # ahead, but within cluster.max_clock_skew
    async with MailStore.open(tmp_path / "s", clock=HybridClock(wall)) as store:
        uid = (await store.append("alice", "INBOX", b"Subject: x\r\n\r\nbody\r\n")).uid
        before = await store.store_flags("alice", "INBOX", UidSet.of([uid]), "add", ["\\Seen"])
    wall.offset = 0.0
    async with MailStore.open(tmp_path / "s", clock=HybridClock(wall)) as store:
        assert store.index.clock.now() > before.stamp


async def test_a_flag_change_wins_over_registers_stamped_ahead_even_unpersisted(
    tmp_path: Path,
) -> None:
    # A register written under a stamp the clock never saw (a store from before
    # the clock was persisted): the change the client makes after it still wins.
    async with MailStore.open(tmp_path / "s") as store:
        uid = (await store.append("alice", "INBOX", b"Subject: y\r\n\r\n\r\n")).uid
        await store.store_flags("alice", "INBOX", UidSet.of([uid]), "add", ["\\Flagged"])
    wall = Wall(-HOUR)  # the clock was stepped back an hour
    async with MailStore.open(tmp_path / "s", clock=HybridClock(wall)) as store:
        done = await store.store_flags("alice", "INBOX", UidSet.of([uid]), "remove", ["\\Flagged"])
        assert done.uids == (uid,) and await flags_of(store, uid) == ()


async def test_a_store_without_a_persisted_clock_rebuilds_it_from_its_registers(
    tmp_path: Path,
) -> None:
    wall = Wall(200)
    async with MailStore.open(tmp_path / "s", clock=HybridClock(wall)) as store:
        uid = (await store.append("alice", "INBOX", b"Subject: z\r\n\r\n\r\n")).uid
        changed = await store.store_flags("alice", "INBOX", UidSet.of([uid]), "add", ["\\Seen"])
    # A store written before the high-water mark was kept has no meta key.

    env = lmdb.open(str(tmp_path / "s"), max_dbs=20)
    with env.begin(write=True) as txn:
        txn.delete(CLOCK_KEY, db=env.open_db(b"meta", txn=txn))
    env.close()
    async with MailStore.open(tmp_path / "s", clock=HybridClock(Wall())) as store:
        assert store.index.clock.high_water >= changed.stamp


async def test_peer_stamps_beyond_the_skew_bound_are_refused_and_marked(tmp_path: Path) -> None:
    fast = Wall(HOUR)
    async with (
        MailStore.open(tmp_path / "m", peers=("b",), clock=HybridClock(fast)) as master,
        MailStore.open(tmp_path / "r", peers=("a",), clock=HybridClock(Wall())) as replica,
    ):
        appended = await master.append("alice", "INBOX", b"Subject: s\r\n\r\n\r\n")
        entries = await master.outbox(0, limit=100)
        for _, change in entries:
            bodies = [await master.read_blob(h) for h in await replica.missing_bodies(change)]
            result = await replica.apply_replicated(change, "a", bodies)
            if change is entries[-1][1]:
                assert result.outcome is Outcome.DIVERGED
                assert result.detail.startswith(CLOCK_SKEW), result.detail
        assert [m.mailbox for m in await replica.resync_marks()] == [appended.mailbox]
        # Nothing was applied, and the replica's clock was not dragged ahead.
        assert replica.index.clock.high_water < wall_stamp(time.time() + 60)


async def test_peer_flag_stamps_within_the_bound_apply(tmp_path: Path) -> None:
    ahead = Wall(60)  # a minute ahead: normal NTP trouble, accepted
    async with (
        MailStore.open(tmp_path / "m", peers=("b",), clock=HybridClock(ahead)) as master,
        MailStore.open(tmp_path / "r", peers=("a",), clock=HybridClock(Wall())) as replica,
    ):
        uid = (await master.append("alice", "INBOX", b"Subject: s\r\n\r\n\r\n")).uid
        await master.store_flags("alice", "INBOX", UidSet.of([uid]), "add", ["\\Seen"])
        for _, change in await master.outbox(0, limit=100):
            bodies = [await master.read_blob(h) for h in await replica.missing_bodies(change)]
            result = await replica.apply_replicated(change, "a", bodies)
            assert result.outcome is Outcome.APPLIED, result
        [info] = await replica.fetch("alice", "INBOX", UidSet.of([uid]))
        assert info.flags == ("\\Seen",)


async def test_a_flag_change_from_a_peer_far_ahead_is_refused(tmp_path: Path) -> None:
    async with (
        MailStore.open(tmp_path / "m", peers=("b",)) as master,
        MailStore.open(tmp_path / "r", peers=("a",)) as replica,
    ):
        uid = (await master.append("alice", "INBOX", b"Subject: s\r\n\r\n\r\n")).uid
        change = await master.store_flags("alice", "INBOX", UidSet.of([uid]), "add", ["\\Seen"])
        for _, entry in (await master.outbox(0, limit=100))[:-1]:
            bodies = [await master.read_blob(h) for h in await replica.missing_bodies(entry)]
            await replica.apply_replicated(entry, "a", bodies)
        forged = replace(change, stamp=MAX_STAMP)
        assert isinstance(forged, FlagsChanged)
        result = await replica.apply_replicated(forged, "a", [])
        assert result.outcome is Outcome.DIVERGED and result.detail.startswith(CLOCK_SKEW)
        [info] = await replica.fetch("alice", "INBOX", UidSet.of([uid]))
        assert info.flags == ()


def test_admits_bounds() -> None:
    clock = HybridClock(Wall(), max_skew=300)
    assert clock.admits(wall_stamp(time.time() + 200))
    assert not clock.admits(wall_stamp(time.time() + 400))
    assert not clock.admits(-1)
    assert not clock.admits(MAX_STAMP + 1)
    # after() is above both the floor and everything handed out before.
    first = clock.now()
    far = wall_stamp(time.time() + HOUR)
    assert clock.after(far) > far
    # ... without dragging the clock ahead with it.
    assert first < clock.now() < far


def test_clock_skew_error_is_temporary() -> None:
    assert ClockSkewError("x").exit_code == 75


@pytest.mark.parametrize("offset", [-HOUR, 0.0, HOUR])
def test_now_is_strictly_increasing_whatever_the_wall(offset: float) -> None:
    wall = Wall(offset)
    clock = HybridClock(wall)
    seen = [clock.now() for _ in range(100)]
    wall.offset -= 2 * HOUR
    seen += [clock.now() for _ in range(100)]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
