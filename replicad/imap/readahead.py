"""Reading for commands that walk many messages: the selected mailbox's
metadata snapshot, and message bodies read ahead in batches."""

from __future__ import annotations

from replicad.imap.mailboxindex import MailboxIndex
from replicad.imap.session import ImapSession

#: FETCH and SEARCH read bodies ahead in batches of this many messages or octets.
READ_AHEAD_MESSAGES = 64
READ_AHEAD_BYTES = 8 << 20


class ReadAhead:
    """Message bodies for a FETCH or a SEARCH, read in batches: one store
    read (one hop to a reader thread) per batch instead of one per message,
    with memory bounded by :data:`READ_AHEAD_BYTES` (a single larger message
    is one batch).  ``get`` is called for the UIDs in the order given."""

    def __init__(self, session: ImapSession, uids: list[int], sizes: dict[int, int]) -> None:
        self._session = session
        self._order = uids
        self._at = {uid: i for i, uid in enumerate(uids)}
        self._sizes = sizes
        self._ready: dict[int, bytes] = {}

    async def get(self, uid: int) -> bytes | None:
        """The body of ``uid``, or None if it was expunged meanwhile."""
        if uid not in self._ready:
            await self._fill(self._at.get(uid))
        return self._ready.pop(uid, None)

    async def _fill(self, start: int | None) -> None:
        if start is None:
            return
        batch: list[int] = []
        octets = 0
        for uid in self._order[start:]:
            if batch and (
                len(batch) >= READ_AHEAD_MESSAGES or octets + self._sizes[uid] > READ_AHEAD_BYTES
            ):
                break
            batch.append(uid)
            octets += self._sizes[uid]
        selected = self._session.require_selected()
        user = self._session.require_user()
        self._ready.update(await self._session.access.bodies(user, selected.name, batch))


async def selected_index(session: ImapSession) -> MailboxIndex | None:
    """The selected mailbox's metadata as the store holds it now (one store
    read: the node's shared snapshot brought up to date), or None when the
    name now belongs to another mailbox (its messages are gone for the
    session; the next update check closes it)."""
    selected = session.require_selected()
    status, index = await session.access.current_index(session.require_user(), selected.name)
    return index if status.guid == selected.guid else None
