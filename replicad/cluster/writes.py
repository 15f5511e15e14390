"""Client writes in a cluster: the store's write API, executed at the mailbox master.

:class:`ClusterWrites` has the same write methods as
:class:`~replicad.store.mailstore.MailStore`, so the admin dispatcher runs
unchanged on a single node and in a cluster.  Each call becomes a
:data:`~replicad.cluster.writeops.WriteOp` executed by the master
(:meth:`ClusterNode.execute`); a reply relayed from another node is turned
back into the store record the dispatcher expects (fields the master does
not send back, such as the body hash of a copy, are left empty).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

import trio

from replicad.blob import Blob
from replicad.cluster.masters import master_key
from replicad.cluster.runtime import ClusterNode
from replicad.cluster.writeops import (
    WRITE_DEADLINE,
    CopyOp,
    CreateOp,
    DeleteOp,
    ExpungeOp,
    ImportMailboxOp,
    ImportOp,
    RenameOp,
    SaveOp,
    StoreOp,
    SubscribeOp,
)
from replicad.errors import ProtocolError
from replicad.flags import sorted_flags
from replicad.protocol import commands as c
from replicad.store.index import AppendRequest, FlagMode
from replicad.store.records import (
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxRenamed,
    MessageAppended,
    MessagesCopied,
    MessagesExpunged,
    SubscriptionChanged,
)
from replicad.uidset import UidSet


class ClusterWrites:
    """The write half of the store API, routed through the cluster."""

    def __init__(self, node: ClusterNode) -> None:
        self.node = node

    async def append(
        self,
        user: str,
        mailbox: str,
        body: bytes | Blob,
        *,
        flags: Iterable[str] = (),
        internaldate: int | None = None,
        guid: bytes | None = None,
    ) -> MessageAppended:
        op = SaveOp(
            user,
            mailbox,
            guid or uuid.uuid4().bytes,
            internaldate if internaldate is not None else int(time.time()),
            tuple(sorted_flags(flags)),
            body,
        )
        result = await self.node.execute(op)
        if isinstance(result, MessageAppended):
            return result
        assert isinstance(result, c.SaveOk)
        return MessageAppended(
            user,
            b"",
            result.uid,
            op.guid,
            result.modseq,
            op.flags,
            op.internaldate,
            len(body) if isinstance(body, bytes) else body.size,
            hashlib.sha256(body).digest() if isinstance(body, bytes) else body.verify(),
            uidvalidity=result.uidvalidity,
        )

    async def append_many(
        self,
        user: str,
        mailbox: str,
        items: Sequence[AppendRequest],
        *,
        in_turn: Callable[[], AbstractAsyncContextManager[None]] | None = None,
    ) -> list[MessageAppended]:
        """A batch in one transaction when this node masters the mailbox, else one by one."""
        key = master_key(self.node.settings.granularity, user, mailbox)
        master = await self.node.master_of(key, trio.current_time() + WRITE_DEADLINE)
        if master == self.node.name:
            appended = await self.node.store.append_many(user, mailbox, items, in_turn=in_turn)
            self.node.log_changed()
            return appended
        async with in_turn() if in_turn is not None else nullcontext():
            return [
                await self.append(
                    user, mailbox, i.body, flags=i.flags, internaldate=i.internaldate, guid=i.guid
                )
                for i in items
            ]

    async def copy(self, user: str, source: str, uids: UidSet, dest: str) -> MessagesCopied:
        result = await self.node.execute(CopyOp(user, source, dest, uids))
        if isinstance(result, MessagesCopied):
            return result
        assert isinstance(result, c.CopyOk)
        copied = list(result.dest)
        if len(result.guids) != len(copied):
            raise ProtocolError(
                f"COPY reply: {len(copied)} UIDs but {len(result.guids)} message GUIDs"
            )
        appended = tuple(
            MessageAppended(
                user, b"", uid, guid, result.modseq, (), 0, 0, b"", uidvalidity=result.uidvalidity
            )
            for uid, guid in zip(copied, result.guids, strict=True)
        )
        return MessagesCopied(user, b"", tuple(result.source), appended)

    async def store_flags(
        self,
        user: str,
        mailbox: str,
        uids: UidSet,
        mode: FlagMode,
        flags: Iterable[str],
        *,
        unchangedsince: int | None = None,
    ) -> FlagsChanged:
        wanted = tuple(sorted_flags(flags))
        add: tuple[str, ...]
        remove: tuple[str, ...]
        if mode == "add":
            add, remove = wanted, ()
        elif mode == "remove":
            add, remove = (), wanted
        else:
            # Replace becomes deltas (I5): add the new flags, remove the ones the
            # messages carry now.  "Now" is this node's view; a flag set
            # concurrently elsewhere survives, which is what deltas promise.
            current: set[str] = set()
            for info in await self.node.store.fetch(user, mailbox, uids):
                current.update(info.flags)
            add, remove = wanted, tuple(sorted_flags(current - set(wanted)))
        if not add and not remove:
            status = await self.node.store.mailbox_status(user, mailbox)
            return FlagsChanged(user, status.guid, (), (), (), status.highestmodseq)
        result = await self.node.execute(StoreOp(user, mailbox, uids, add, remove, unchangedsince))
        if isinstance(result, FlagsChanged):
            return result
        assert isinstance(result, c.StoreOk)
        rejected = tuple(result.rejected) if result.rejected else ()
        return FlagsChanged(user, b"", (), add, remove, result.modseq, rejected)

    async def expunge(self, user: str, mailbox: str, uids: UidSet) -> MessagesExpunged:
        result = await self.node.execute(ExpungeOp(user, mailbox, uids))
        if isinstance(result, MessagesExpunged):
            return result
        assert isinstance(result, c.ExpungeOk)
        gone = tuple((uid, b"") for uid in (result.expunged or ()))
        return MessagesExpunged(user, b"", gone, result.modseq)

    async def create_mailbox(self, user: str, name: str) -> MailboxCreated:
        result = await self.node.execute(CreateOp(user, name))
        if isinstance(result, MailboxCreated):
            return result
        assert isinstance(result, c.MailboxOk)
        return MailboxCreated(user, name, result.guid, result.uidvalidity)

    async def create_mailbox_at(self, user: str, name: str, uidvalidity: int) -> MailboxCreated:
        """CREATE under a given UIDVALIDITY (a migration, verbs.md IMPORT-MAILBOX)."""
        result = await self.node.execute(ImportMailboxOp(user, name, uidvalidity))
        if isinstance(result, MailboxCreated):
            return result
        assert isinstance(result, c.MailboxOk)
        return MailboxCreated(user, name, result.guid, result.uidvalidity)

    async def import_messages(self, user: str, mailbox: str, items: Sequence[AppendRequest]) -> int:
        """Append at the items' own UIDs (verbs.md IMPORT): one transaction when
        this node masters the mailbox, else one IMPORT each; how many were written."""
        key = master_key(self.node.settings.granularity, user, mailbox)
        master = await self.node.master_of(key, trio.current_time() + WRITE_DEADLINE)
        if master == self.node.name:
            appended = await self.node.store.append_many(user, mailbox, items)
            self.node.log_changed()
            return len(appended)
        for item in items:
            assert item.uid is not None and item.internaldate is not None
            await self.node.execute(
                ImportOp(
                    user,
                    mailbox,
                    item.uid,
                    item.guid or uuid.uuid4().bytes,
                    item.internaldate,
                    tuple(sorted_flags(item.flags)),
                    item.body,
                )
            )
        return len(items)

    async def delete_mailbox(self, user: str, name: str) -> MailboxDeleted:
        result = await self.node.execute(DeleteOp(user, name))
        if isinstance(result, MailboxDeleted):
            return result
        assert isinstance(result, c.MailboxOk)
        return MailboxDeleted(user, result.guid, name)

    async def rename_mailbox(self, user: str, old: str, new: str) -> MailboxRenamed:
        result = await self.node.execute(RenameOp(user, old, new))
        if isinstance(result, MailboxRenamed):
            return result
        assert isinstance(result, c.MailboxOk)
        return MailboxRenamed(user, result.guid, old, new)

    async def set_subscribed(self, user: str, name: str, subscribed: bool) -> SubscriptionChanged:
        """IMAP SUBSCRIBE/UNSUBSCRIBE, at the master of the user's namespace."""
        result = await self.node.execute(SubscribeOp(user, name, subscribed))
        if isinstance(result, SubscriptionChanged):
            return result
        assert isinstance(result, c.SubscribeOk)
        return SubscriptionChanged(user, name, subscribed, result.stamp)

    async def move_master(self, user: str, mailbox: str, node: str) -> dict[str, Any]:
        ok = await self.node.move_master(user, mailbox, node)
        return {"user": user, "mailbox": mailbox, "master": ok.node, "epoch": ok.epoch}

    async def status(self) -> dict[str, Any]:
        return await self.node.status()
