"""What an IMAP session may do to mail: reads from the local store, writes
through the node's write path, and the wait that makes a session see its
own writes (architecture.md §11).

The write path is the store itself on a single node and the cluster's
(:class:`~replicad.cluster.writes.ClusterWrites`) in a cluster: a write
goes to the mailbox master and returns once the node's durability level is
met.  When the master is another node, its answer can arrive before the
change has streamed back to this node's copy, which IMAP reads from; so
after every write :class:`MailAccess` waits until the local copy holds the
write's modseq, bounded by ``catch_up`` seconds (the copy only lags while
the stream is delayed; after the bound the session goes on and sees the
change at a later NOOP or IDLE, as it would a change made elsewhere).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import trio

from replicad.errors import (
    AlreadyExistsError,
    NoSuchMailboxError,
    TemporaryError,
    UnreachableError,
)
from replicad.imap.mailboxindex import MailboxIndex
from replicad.imap.recent import RecentClaims
from replicad.store.columns import KnownState
from replicad.store.commitwatch import CommitWatch
from replicad.store.hierarchy import create_with_superiors
from replicad.store.index import FlagMode
from replicad.store.mailstore import MailStore
from replicad.store.records import (
    ChangeSet,
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxRenamed,
    MailboxStatus,
    MessageAppended,
    MessageInfo,
    MessagesCopied,
    MessagesExpunged,
    SubscriptionChanged,
)
from replicad.uidset import UidSet

log = logging.getLogger("replicad.imap")


class WritePath(Protocol):
    """The store's write API (:class:`MailStore` or the cluster's ``ClusterWrites``)."""

    async def append(
        self,
        user: str,
        mailbox: str,
        body: bytes,
        *,
        flags: Iterable[str] = (),
        internaldate: int | None = None,
        guid: bytes | None = None,
    ) -> MessageAppended: ...

    async def copy(self, user: str, source: str, uids: UidSet, dest: str) -> MessagesCopied: ...

    async def store_flags(
        self,
        user: str,
        mailbox: str,
        uids: UidSet,
        mode: FlagMode,
        flags: Iterable[str],
        *,
        unchangedsince: int | None = None,
    ) -> FlagsChanged: ...

    async def expunge(self, user: str, mailbox: str, uids: UidSet) -> MessagesExpunged: ...

    async def create_mailbox(self, user: str, name: str) -> MailboxCreated: ...

    async def delete_mailbox(self, user: str, name: str) -> MailboxDeleted: ...

    async def rename_mailbox(self, user: str, old: str, new: str) -> MailboxRenamed: ...

    async def set_subscribed(
        self, user: str, name: str, subscribed: bool
    ) -> SubscriptionChanged: ...


class MasterState(Protocol):
    """Where the mailbox master stands (the cluster's; absent on a single node)."""

    async def master_modseq(self, user: str, name: str, deadline: float) -> int | None:
        """The master's HIGHESTMODSEQ of the mailbox, or None when this node
        is the master or the master cannot be asked before ``deadline``."""
        ...


class Authenticator(Protocol):
    """The user directory (:class:`~replicad.auth.directory.UserDirectory`)."""

    def normalise(self, name: str) -> str: ...

    async def verify(self, user: str, password: str | bytes) -> bool: ...


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A mailbox as SELECT reads it: its status and every message, in one transaction."""

    status: MailboxStatus
    messages: tuple[MessageInfo, ...]


class MailAccess:
    """One node's mail, as every IMAP session of that node sees it."""

    def __init__(
        self,
        store: MailStore,
        writes: WritePath,
        users: Authenticator | None,
        *,
        catch_up: float = 2.0,
        masters: MasterState | None = None,
    ) -> None:
        self.store = store
        self.writes = writes
        self.users = users
        self.catch_up = catch_up
        self.masters = masters
        #: Which messages this node's sessions were told are \Recent.
        self.recent = RecentClaims()
        #: The latest metadata snapshot of recently used mailboxes.
        self.indexes = MailboxIndexes()

    @property
    def watch(self) -> CommitWatch:
        """Bumped after every commit on this node (IDLE waits on it)."""
        return self.store.writer.watch

    # -- users --

    async def login(self, name: str, password: bytes) -> str | None:
        """The normalised user if ``password`` is theirs, else None (no directory: None)."""
        if self.users is None:
            return None
        user = self.users.normalise(name)
        return user if await self.users.verify(user, password) else None

    async def ensure_inbox(self, user: str) -> None:
        """Create the user's INBOX if it does not exist yet: RFC 3501 §5.1
        promises every user one.  A create that cannot be made now (the
        cluster is unreachable) is left for the next login; delivery
        creates it too."""
        if await self.store.has_user(user) and any(
            m.name == "INBOX" for m in await self.store.list_mailboxes(user)
        ):
            return
        try:
            await self.create(user, "INBOX")
        except AlreadyExistsError:
            pass
        except (TemporaryError, UnreachableError) as exc:
            log.warning("imap.inbox_create_failed", extra={"kv": {"user": user, "error": str(exc)}})

    # -- reads --

    async def mailboxes(self, user: str) -> list[MailboxStatus]:
        """Every mailbox of ``user`` (none for a user without mail yet)."""
        if not await self.store.has_user(user):
            return []
        return await self.store.list_mailboxes(user)

    async def status(self, user: str, name: str) -> MailboxStatus:
        return await self.store.mailbox_status(user, name)

    async def snapshot(self, user: str, name: str) -> Snapshot:
        status, messages = await self.store.snapshot(user, name)
        return Snapshot(status, tuple(messages))

    async def current_index(self, user: str, name: str) -> tuple[MailboxStatus, MailboxIndex]:
        """The mailbox's status and its metadata as of that status, in one
        store read: the node's shared snapshot brought up to date with the
        changes since it (:mod:`replicad.imap.mailboxindex`), or read whole
        when there is none for the mailbox's GUID and UIDVALIDITY."""
        return await self.indexes.current(self.store, user, name)

    async def catch_up_with_master(self, user: str, name: str) -> bool:
        """Before SELECT: wait, bounded by ``catch_up`` seconds in all, until
        this node's copy holds what the mailbox master holds (architecture.md
        §11: a client that moves between nodes never sees time go backwards
        while the master is reachable).  True if the copy is known current."""
        if self.masters is None or self.catch_up <= 0:
            return True
        deadline = trio.current_time() + self.catch_up
        target = await self.masters.master_modseq(user, name, deadline)
        if target is None:
            return True
        with trio.move_on_at(deadline):
            return await self.caught_up(user, name, target)
        return False

    async def subscriptions(self, user: str) -> set[str]:
        """The names ``user`` is subscribed to, existing or not (RFC 3501 §6.3.6)."""
        return await self.store.subscriptions.subscribed(user)

    async def changes_since(self, user: str, name: str, modseq: int) -> ChangeSet:
        return await self.store.changes_since(user, name, modseq)

    async def fetch(self, user: str, name: str, uids: UidSet) -> list[MessageInfo]:
        return await self.store.fetch(user, name, uids)

    async def body(self, user: str, name: str, uid: int) -> bytes:
        return await self.store.fetch_body(user, name, uid)

    async def bodies(self, user: str, name: str, uids: list[int]) -> dict[int, bytes]:
        return await self.store.fetch_bodies(user, name, uids)

    async def tombstones(self, user: str, name: str) -> list[tuple[int, bytes, int]]:
        return await self.store.tombstones(user, name)

    # -- writes: each returns once this node's copy holds it (or catch_up passed) --

    async def append(
        self, user: str, name: str, body: bytes, flags: tuple[str, ...], internaldate: int | None
    ) -> MessageAppended:
        appended = await self.writes.append(
            user, name, body, flags=flags, internaldate=internaldate
        )
        await self.caught_up(user, name, appended.modseq)
        return appended

    async def copy(self, user: str, source: str, uids: UidSet, dest: str) -> MessagesCopied:
        copied = await self.writes.copy(user, source, uids, dest)
        if copied.appended:
            await self.caught_up(user, dest, max(m.modseq for m in copied.appended))
        return copied

    async def store_flags(
        self,
        user: str,
        name: str,
        uids: UidSet,
        mode: FlagMode,
        flags: tuple[str, ...],
        unchangedsince: int | None,
    ) -> FlagsChanged:
        changed = await self.writes.store_flags(
            user, name, uids, mode, flags, unchangedsince=unchangedsince
        )
        await self.caught_up(user, name, changed.modseq)
        return changed

    async def expunge(self, user: str, name: str, uids: UidSet) -> MessagesExpunged:
        expunged = await self.writes.expunge(user, name, uids)
        await self.caught_up(user, name, expunged.modseq)
        return expunged

    async def create(self, user: str, name: str) -> MailboxCreated:
        created = await create_with_superiors(self.writes, user, name)
        await self._until(lambda s: any(m.guid == created.mailbox for m in s), user)
        return created

    async def delete(self, user: str, name: str) -> MailboxDeleted:
        deleted = await self.writes.delete_mailbox(user, name)
        await self._until(lambda s: all(m.guid != deleted.mailbox for m in s), user)
        return deleted

    async def rename(self, user: str, old: str, new: str) -> MailboxRenamed:
        renamed = await self.writes.rename_mailbox(user, old, new)
        await self._until(lambda s: any(m.name == new for m in s), user)
        return renamed

    async def subscribe(self, user: str, name: str, subscribed: bool) -> SubscriptionChanged:
        """SUBSCRIBE or UNSUBSCRIBE at the namespace master; returns once this
        node's copy holds that register (or a newer one) so LSUB shows it."""
        changed = await self.writes.set_subscribed(user, name, subscribed)

        async def reached() -> bool:
            held = (await self.store.subscriptions.of_user(user)).get(name)
            return held is not None and held.stamp >= changed.stamp

        await self._wait(reached)
        return changed

    async def caught_up(self, user: str, name: str, modseq: int) -> bool:
        """Wait until this node's copy of the mailbox reached ``modseq``
        (bounded by ``catch_up``); whether it did."""

        async def reached() -> bool:
            try:
                status = await self.store.mailbox_status(user, name)
            except NoSuchMailboxError:
                return False
            return status.highestmodseq >= modseq

        return await self._wait(reached)

    async def _until(self, check: _MailboxesCheck, user: str) -> bool:
        async def reached() -> bool:
            return check(await self.mailboxes(user))

        return await self._wait(reached)

    async def _wait(self, reached: _Probe) -> bool:
        with trio.move_on_after(self.catch_up if self.catch_up > 0 else math.inf):
            while True:
                generation = self.watch.generation
                if await reached():
                    return True
                if self.catch_up <= 0:
                    return False
                await self.watch.wait_past(generation)
        return False


#: Mailboxes whose latest snapshot the node keeps (least recently used dropped).
MAX_CACHED_MAILBOXES = 256
#: Messages in those snapshots, all together (about 36 bytes each, plus
#: what sessions still hold of older snapshots): at most about 36 MB.
MAX_CACHED_MESSAGES = 1_000_000


@dataclass(frozen=True, slots=True)
class _Held:
    """A mailbox's latest snapshot, its status, and the commit generation
    (:class:`~replicad.store.commitwatch.CommitWatch`) read before both."""

    status: MailboxStatus
    index: MailboxIndex
    generation: int


class MailboxIndexes:
    """The latest :class:`MailboxIndex` of each recently used mailbox, by user
    and name, shared by the node's sessions.

    Every write of the node commits through its one writer, which bumps the
    commit generation after each batch: while the generation is the one
    read before a snapshot was, nothing changed and the snapshot (with its
    status) is answered without a store read.  A snapshot is only ever
    replaced by a later one (or one of another GUID or UIDVALIDITY), so
    sessions reading concurrently never move the shared one backwards."""

    def __init__(
        self, limit: int = MAX_CACHED_MAILBOXES, message_limit: int = MAX_CACHED_MESSAGES
    ) -> None:
        self._limit = limit
        self._message_limit = message_limit
        self._held: OrderedDict[tuple[str, str], _Held] = OrderedDict()
        self._messages = 0

    def held(self) -> list[tuple[str, str]]:
        """The (user, mailbox) pairs with a snapshot, least recently used first."""
        return list(self._held)

    async def current(
        self, store: MailStore, user: str, name: str
    ) -> tuple[MailboxStatus, MailboxIndex]:
        key = (user, name)
        generation = store.writer.watch.generation
        held = self._held.get(key)
        if held is not None and held.generation == generation:
            self._held.move_to_end(key)
            return held.status, held.index
        known = None
        if held is not None:
            known = KnownState(held.index.guid, held.index.uidvalidity, held.index.modseq)
        read = await store.message_columns(user, name, known)
        status = read.status
        if read.columns is not None:
            index = MailboxIndex(
                status.guid, status.uidvalidity, status.highestmodseq, read.columns
            )
        else:
            assert held is not None
            index = held.index if read.changes is None else held.index.apply(read.changes)
        latest = self._held.get(key)
        if (
            latest is None
            or (latest.index.guid, latest.index.uidvalidity) != (index.guid, index.uidvalidity)
            or (latest.index.modseq, latest.generation) <= (index.modseq, generation)
        ):
            if latest is not None:
                self._messages -= len(latest.index)
            self._held[key] = _Held(status, index, generation)
            self._messages += len(index)
        self._held.move_to_end(key)
        while len(self._held) > 1 and (
            len(self._held) > self._limit or self._messages > self._message_limit
        ):
            _, dropped = self._held.popitem(last=False)
            self._messages -= len(dropped.index)
        return status, index


class _MailboxesCheck(Protocol):
    def __call__(self, mailboxes: list[MailboxStatus], /) -> bool: ...


class _Probe(Protocol):
    async def __call__(self) -> bool: ...
