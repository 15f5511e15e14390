"""Where a migration writes: this node's write path, and its local reads.

:class:`TargetWrites` is what the copier needs of the write path; both the
cluster's (:class:`~replicad.cluster.writes.ClusterWrites`: every write
goes to its mailbox's master and replicates like a client's) and a single
node's (:class:`LocalWrites` over the store) provide it.  Reads are of this
node's copy (:func:`target_state`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from replicad.errors import NoSuchMailboxError, NoSuchUserError
from replicad.migrate.planner import TargetFolderState
from replicad.store.index import AppendRequest, FlagMode
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet


class TargetWrites(Protocol):
    async def create_mailbox_at(self, user: str, name: str, uidvalidity: int) -> Any: ...

    async def import_messages(
        self, user: str, mailbox: str, items: Sequence[AppendRequest]
    ) -> int: ...

    async def store_flags(
        self, user: str, mailbox: str, uids: UidSet, mode: FlagMode, flags: Iterable[str]
    ) -> Any: ...

    async def expunge(self, user: str, mailbox: str, uids: UidSet) -> Any: ...

    async def delete_mailbox(self, user: str, name: str) -> Any: ...


class LocalWrites:
    """A node without peers: the store itself is the write path."""

    def __init__(self, store: MailStore) -> None:
        self.store = store

    async def create_mailbox_at(self, user: str, name: str, uidvalidity: int) -> Any:
        return await self.store.create_mailbox_at(user, name, uidvalidity)

    async def import_messages(self, user: str, mailbox: str, items: Sequence[AppendRequest]) -> int:
        return len(await self.store.append_many(user, mailbox, items))

    async def store_flags(
        self, user: str, mailbox: str, uids: UidSet, mode: FlagMode, flags: Iterable[str]
    ) -> Any:
        return await self.store.store_flags(user, mailbox, uids, mode, flags)

    async def expunge(self, user: str, mailbox: str, uids: UidSet) -> Any:
        return await self.store.expunge(user, mailbox, uids)

    async def delete_mailbox(self, user: str, name: str) -> Any:
        return await self.store.delete_mailbox(user, name)


async def target_state(store: MailStore, user: str, name: str) -> TargetFolderState:
    """This node's copy of (user, name): UIDVALIDITY, UIDNEXT, flags and GUIDs
    by UID, and the GUIDs expunged here."""
    try:
        status, messages = await store.snapshot(user, name)
        gone = await store.tombstones(user, name)
    except (NoSuchMailboxError, NoSuchUserError):  # a user without mailboxes yet
        return TargetFolderState(exists=False)
    return TargetFolderState(
        True,
        status.uidvalidity,
        status.uidnext,
        {m.uid: m.flags for m in messages},
        {m.uid: m.guid for m in messages},
        frozenset(guid for _uid, guid, _modseq in gone),
    )


async def target_uidvalidities(store: MailStore, user: str) -> dict[str, int]:
    """UIDVALIDITY of each of the user's mailboxes here, in one read (a no-op
    pass checks its checkpoints against these instead of reading each folder)."""
    try:
        return {m.name: m.uidvalidity for m in await store.list_mailboxes(user)}
    except NoSuchUserError:
        return {}
