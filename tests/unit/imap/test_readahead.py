"""ReadAhead: message bodies read in batches, the next ones while one is answered."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio

from replicad.imap import readahead
from replicad.imap.readahead import ReadAhead, reading_ahead


@dataclass
class Store:
    """Bodies by UID; records each batch read and how many were in flight at once."""

    gone: set[int] = field(default_factory=set)
    batches: list[list[int]] = field(default_factory=list)
    in_flight: int = 0
    most_in_flight: int = 0

    async def bodies(self, user: str, name: str, uids: list[int]) -> dict[int, bytes]:
        self.batches.append(list(uids))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await trio.sleep(0.01)
        self.in_flight -= 1
        return {u: b"body %d" % u for u in uids if u not in self.gone}


@dataclass
class Selected:
    name: str = "INBOX"


@dataclass
class Session:
    access: Store

    def require_selected(self) -> Selected:
        return Selected()

    def require_user(self) -> str:
        return "alice"


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readahead, "READ_AHEAD_MESSAGES", 3)
    monkeypatch.setattr(readahead, "READ_AHEAD_BYTES", 100)


async def test_batches_are_bounded_in_messages_and_octets() -> None:
    store = Store()
    uids = [1, 2, 3, 4, 5, 6, 7]
    sizes = {1: 10, 2: 10, 3: 10, 4: 90, 5: 200, 6: 10, 7: 10}
    bodies = ReadAhead(Session(store), uids, sizes)  # type: ignore[arg-type]
    assert [await bodies.get(u) for u in uids] == [b"body %d" % u for u in uids]
    # 3 messages; 90 octets do not fit beside them; a larger message alone.
    assert store.batches == [[1, 2, 3], [4], [5], [6, 7]]
    assert store.most_in_flight == 1


async def test_reading_ahead_reads_the_next_batches_meanwhile_and_misses_nothing() -> None:
    store = Store(gone={5})
    uids = list(range(1, 21))
    async with reading_ahead(Session(store), uids, dict.fromkeys(uids, 1)) as bodies:  # type: ignore[arg-type]
        got = [await bodies.get(u) for u in uids]
        assert await bodies.get(1) is None  # each body is handed out once
    assert got == [None if u == 5 else b"body %d" % u for u in uids]
    assert sorted(u for batch in store.batches for u in batch) == uids
    assert 1 < store.most_in_flight <= readahead.READ_AHEAD_DEPTH
