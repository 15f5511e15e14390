"""Reading for commands that walk many messages: the selected mailbox's
metadata snapshot, and message bodies read ahead in batches."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from replicad.imap.mailboxindex import MailboxIndex
from replicad.imap.session import ImapSession

#: FETCH and SEARCH read bodies ahead in batches of this many messages or octets.
READ_AHEAD_MESSAGES = 64
READ_AHEAD_BYTES = 4 << 20
#: Batches read meanwhile, each on a reader thread of its own (zstd releases
#: the GIL while it decompresses, so they run beside the event loop and each other).
READ_AHEAD_DEPTH = 2


class ReadAhead:
    """Message bodies for a FETCH or a SEARCH, read in batches: one store
    read (one hop to a reader thread) per batch instead of one per message,
    with memory bounded by :data:`READ_AHEAD_BYTES` (a single larger message
    is one batch).  ``get`` is called for the UIDs in the order given.

    Given a nursery (:func:`reading_ahead`), the batches after the one being
    answered are read meanwhile, so reader threads decompress while the
    event loop renders and sends: at most 1 + :data:`READ_AHEAD_DEPTH`
    batches are held at once."""

    def __init__(
        self,
        session: ImapSession,
        uids: list[int],
        sizes: dict[int, int],
        nursery: trio.Nursery | None = None,
    ) -> None:
        self._session = session
        self._nursery = nursery
        self._batches = _batches(uids, sizes)
        self._batch_of = {uid: n for n, batch in enumerate(self._batches) for uid in batch}
        self._ready: dict[int, dict[int, bytes]] = {}
        self._landed: dict[int, trio.Event] = {}

    async def get(self, uid: int) -> bytes | None:
        """The body of ``uid``, or None if it was expunged meanwhile."""
        number = self._batch_of.pop(uid, None)
        if number is None:
            return None
        if number not in self._landed:
            await self._read(number)  # a checkpoint: a thread hop
        elif not self._landed[number].is_set():
            await self._landed[number].wait()
        elif uid == self._batches[number][0]:
            # Read ahead meanwhile: let other sessions run once per batch,
            # not once per message (Event.wait is a checkpoint even when set).
            await trio.lowlevel.checkpoint()
        if self._nursery is not None:
            for following in range(number + 1, number + 1 + READ_AHEAD_DEPTH):
                if following < len(self._batches) and following not in self._landed:
                    self._landed[following] = trio.Event()
                    self._nursery.start_soon(self._read, following)
        batch = self._ready.get(number, {})
        raw = batch.pop(uid, None)
        if not batch:
            self._ready.pop(number, None)
        return raw

    async def _read(self, number: int) -> None:
        landed = self._landed.setdefault(number, trio.Event())
        selected = self._session.require_selected()
        user = self._session.require_user()
        access = self._session.access
        self._ready[number] = await access.bodies(user, selected.name, self._batches[number])
        landed.set()


def _batches(uids: list[int], sizes: dict[int, int]) -> list[list[int]]:
    batches: list[list[int]] = []
    batch: list[int] = []
    octets = 0
    for uid in uids:
        if batch and (
            len(batch) >= READ_AHEAD_MESSAGES or octets + sizes[uid] > READ_AHEAD_BYTES
        ):
            batches.append(batch)
            batch, octets = [], 0
        batch.append(uid)
        octets += sizes[uid]
    if batch:
        batches.append(batch)
    return batches


@asynccontextmanager
async def reading_ahead(
    session: ImapSession, uids: list[int], sizes: dict[int, int]
) -> AsyncIterator[ReadAhead]:
    """A :class:`ReadAhead` that reads the next batch while one is answered."""
    async with trio.open_nursery() as nursery:
        yield ReadAhead(session, uids, sizes, nursery)


async def selected_index(session: ImapSession) -> MailboxIndex | None:
    """The selected mailbox's metadata as the store holds it now (one store
    read: the node's shared snapshot brought up to date), or None when the
    name now belongs to another mailbox (its messages are gone for the
    session; the next update check closes it)."""
    selected = session.require_selected()
    status, index = await session.access.current_index(session.require_user(), selected.name)
    return index if status.guid == selected.guid else None
