"""Client writes as values, each verb's behaviour on the op itself (architecture.md §3, "A write").

A write travels as one of the ops below from the node a client reached to
the master of its mailbox, hop by hop.  Each op class says, in one place,
everything the engine does with its verb:

* :meth:`key_mailbox` -- the mailbox whose master decides it;
* :meth:`apply` -- the master's store transaction (I1: the change record is
  logged in it; I3: the master assigns UIDs and MODSEQs);
* :meth:`command` / :meth:`from_command` -- the wire command a hop sends
  the next one, and back (verbs.md);
* :meth:`ok_payload` -- the master's OK, relayed back to the client's node;
* :meth:`divergence_point` -- where a resync after a partition starts (I7);
* :attr:`retry_safe` -- whether a hop may send it again when a link broke
  before the answer (I6: a message is saved once).

:data:`OP_FROM_COMMAND` is the one table from a received command to its op;
adding a write verb is a new class here and its entry in :data:`WRITE_OPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

import trio

from replicad.blob import Blob
from replicad.cluster.changewire import MboxBinding
from replicad.errors import BadInputError, NoSuchMessageError
from replicad.protocol import commands as c
from replicad.store.index import AppendRequest, FlagMode, is_delivery_guid, retry_within_window
from replicad.store.mailstore import MailStore
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

#: How long a client write may wait for a root, a master or a link before it
#: fails with a temporary error (exit 75).
WRITE_DEADLINE: Final = 15.0
#: Forwarded SAVEs remembered by the master (a retry is recognised by GUID).
RECENT_SAVES: Final = 65536
#: How many latest changes of a mailbox a forwarded SAVE not remembered looks
#: through for its first attempt (made before a restart or a master move).
SAVE_RETRY_DEPTH: Final = 64
#: Bodies above this are compressed in a worker thread, not on the event loop.
_INLINE_COMPRESS: Final = 256 * 1024

#: UID -> message GUID as the client's node sees them (forwarded commands, I6).
Expect = tuple[tuple[int, bytes], ...] | None
#: What the master's write returns before it becomes a wire OK.
WireExpect = tuple[c.UidGuid, ...] | None


class MailboxBinder(Protocol):
    """What an op needs of the link it is forwarded over (verbs.md MBOX)."""

    async def mbox(self, name: str) -> int:
        """The link's id for the user's mailbox ``name``, bound first if new."""
        ...

    async def expect(self, name: str, uids: UidSet, relayed: Expect) -> WireExpect:
        """What the client meant by ``uids`` in ``name`` (I6), for the master to check."""
        ...


class RecentSaves:
    """The master's memory of forwarded and delivered SAVEs, by GUID (I6: once).

    The forwarding node retries a SAVE whose link broke before the reply,
    which may have been applied, and an MTA retries a delivery it was
    answered 451 for.  Recent saves are remembered here; the store's latest
    changes of the mailbox cover a first attempt made before this process
    started or while another node was the master.
    """

    def __init__(self) -> None:
        #: (user, mailbox, message GUID) -> record of the latest forwarded SAVEs.
        self._saved: dict[tuple[str, str, bytes], MessageAppended] = {}
        self.executed = 0  # SAVEs applied as master

    def clear(self) -> None:
        """Forget every remembered SAVE (the store's log still covers them)."""
        self._saved.clear()

    async def save(self, store: MailStore, op: SaveOp) -> MessageAppended:
        appended = await self._save(store, op)
        self.executed += 1
        return appended

    async def _save(self, store: MailStore, op: SaveOp) -> MessageAppended:
        delivery = is_delivery_guid(op.guid)
        if not op.forwarded and not delivery:
            [appended] = await store.append_many(op.user, op.mailbox, [op.append_request()])
            return appended
        # A delivery's GUID is derived from the message (delivery_guid): the
        # same GUID again is the MTA's retry of a delivery it was answered
        # 451 for after its copy was written here (the durability wait ran
        # out), if the first copy came within the retry window.
        accept = retry_within_window(op.internaldate) if delivery else None
        key = (op.user, op.mailbox, op.guid)
        earlier = self._saved.get(key)
        if earlier is not None and (accept is None or accept(earlier)):
            return earlier
        appended = await store.save_once(
            op.user, op.mailbox, op.append_request(), depth=SAVE_RETRY_DEPTH, accept=accept
        )
        self._saved[key] = appended
        while len(self._saved) > RECENT_SAVES:
            del self._saved[next(iter(self._saved))]
        return appended


# --- the ops --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SaveOp:
    user: str
    mailbox: str
    guid: bytes
    internaldate: int
    flags: tuple[str, ...]
    #: Raw from a client, or stored form as a SAVE carried it (kept as it came).
    body: bytes | Blob
    #: Came over a link: it may be a retry of an attempt whose reply was lost.
    forwarded: bool = False

    COMMAND: ClassVar[type[c.Command]] = c.Save
    #: Again is safe: the master knows its GUID.
    retry_safe: ClassVar[bool] = True

    def key_mailbox(self) -> str | None:
        return self.mailbox

    def append_request(self) -> AppendRequest:
        return AppendRequest(self.body, self.flags, self.internaldate or None, self.guid)

    async def apply(self, store: MailStore, saves: RecentSaves) -> MessageAppended:
        return await saves.save(store, self)

    async def command(self, binder: MailboxBinder) -> c.Command:
        mid = await binder.mbox(self.mailbox)
        body = await _wire_body(self.body)
        return c.Save(mid, self.internaldate, self.guid, self.flags, body)

    @classmethod
    def from_command(cls, cmd: c.Save, ids: Mapping[int, MboxBinding]) -> SaveOp:
        box = _bound(ids, cmd.mbox)
        return cls(
            box.user, box.name, cmd.guid, cmd.internaldate, cmd.flags, cmd.body, forwarded=True
        )

    def ok_payload(self, result: MessageAppended, me: str) -> c.Record:
        return c.SaveOk(result.uid, result.modseq, me, result.uidvalidity)

    def divergence_point(self, result: MessageAppended) -> tuple[bytes | None, int]:
        return result.mailbox, result.modseq - 1


@dataclass(frozen=True, slots=True)
class CopyOp:
    user: str
    source: str
    dest: str
    uids: UidSet
    expect: Expect = None

    COMMAND: ClassVar[type[c.Command]] = c.Copy
    #: Again would copy twice.
    retry_safe: ClassVar[bool] = False

    def key_mailbox(self) -> str | None:
        return self.dest  # the destination assigns the new UIDs

    async def apply(self, store: MailStore, saves: RecentSaves) -> MessagesCopied:
        return await store.copy(self.user, self.source, self.uids, self.dest, _mapping(self.expect))

    async def command(self, binder: MailboxBinder) -> c.Command:
        src = await binder.mbox(self.source)
        dst = await binder.mbox(self.dest)
        expect = await binder.expect(self.source, self.uids, self.expect)
        return c.Copy(src, dst, self.uids, expect)

    @classmethod
    def from_command(cls, cmd: c.Copy, ids: Mapping[int, MboxBinding]) -> CopyOp:
        source = _bound(ids, cmd.source)
        dest = _bound(ids, cmd.dest)
        return cls(source.user, source.name, dest.name, cmd.uids, _pairs(cmd.expect))

    def ok_payload(self, result: MessagesCopied, me: str) -> c.Record:
        if not result.appended:
            # COPYUID cannot name an empty set (RFC 4315); nothing matched.
            raise NoSuchMessageError("no message matched the UID set")
        modseq = max((a.modseq for a in result.appended), default=0)
        return c.CopyOk(
            UidSet.of(result.source_uids),
            UidSet.of(a.uid for a in result.appended),
            modseq,
            result.appended[0].uidvalidity,
            tuple(a.guid for a in result.appended),
        )

    def divergence_point(self, result: MessagesCopied) -> tuple[bytes | None, int]:
        if not result.appended:
            return None, 0
        return result.appended[0].mailbox, min(a.modseq for a in result.appended) - 1


@dataclass(frozen=True, slots=True)
class ExpungeOp:
    user: str
    mailbox: str
    uids: UidSet
    expect: Expect = None

    COMMAND: ClassVar[type[c.Command]] = c.Expunge
    #: Again is safe: the same messages, by GUID.
    retry_safe: ClassVar[bool] = True

    def key_mailbox(self) -> str | None:
        return self.mailbox

    async def apply(self, store: MailStore, saves: RecentSaves) -> MessagesExpunged:
        return await store.expunge(self.user, self.mailbox, self.uids, _mapping(self.expect))

    async def command(self, binder: MailboxBinder) -> c.Command:
        mid = await binder.mbox(self.mailbox)
        expect = await binder.expect(self.mailbox, self.uids, self.expect)
        return c.Expunge(mid, self.uids, expect)

    @classmethod
    def from_command(cls, cmd: c.Expunge, ids: Mapping[int, MboxBinding]) -> ExpungeOp:
        box = _bound(ids, cmd.mbox)
        return cls(box.user, box.name, cmd.uids, _pairs(cmd.expect))

    def ok_payload(self, result: MessagesExpunged, me: str) -> c.Record:
        uids = [uid for uid, _ in result.expunged]
        return c.ExpungeOk(UidSet.of(uids) if uids else None, result.modseq)

    def divergence_point(self, result: MessagesExpunged) -> tuple[bytes | None, int]:
        return result.mailbox, max(0, result.modseq - 1)


@dataclass(frozen=True, slots=True)
class StoreOp:
    user: str
    mailbox: str
    uids: UidSet
    add: tuple[str, ...]
    remove: tuple[str, ...]
    unchangedsince: int | None
    expect: Expect = None

    COMMAND: ClassVar[type[c.Command]] = c.Store
    #: Again is safe: the same messages by GUID, the same deltas (I5).
    retry_safe: ClassVar[bool] = True

    def key_mailbox(self) -> str | None:
        return self.mailbox

    async def apply(self, store: MailStore, saves: RecentSaves) -> FlagsChanged:
        """Apply +add and -remove as the master (I5: deltas); one or two transactions."""
        mode: FlagMode
        expect = _mapping(self.expect)
        if self.add and self.remove:
            first = await store.store_flags(
                self.user,
                self.mailbox,
                self.uids,
                "add",
                self.add,
                unchangedsince=self.unchangedsince,
                expect=expect,
            )
            second = await store.store_flags(
                self.user, self.mailbox, self.uids, "remove", self.remove
            )
            return FlagsChanged(
                self.user,
                second.mailbox,
                tuple(sorted(set(first.uids) | set(second.uids))),
                self.add,
                self.remove,
                max(first.modseq, second.modseq),
                first.rejected,
            )
        mode = "add" if self.add else "remove"
        return await store.store_flags(
            self.user,
            self.mailbox,
            self.uids,
            mode,
            self.add or self.remove,
            unchangedsince=self.unchangedsince,
            expect=expect,
        )

    async def command(self, binder: MailboxBinder) -> c.Command:
        mid = await binder.mbox(self.mailbox)
        expect = await binder.expect(self.mailbox, self.uids, self.expect)
        return c.Store(mid, self.uids, self.add, self.remove, self.unchangedsince, expect)

    @classmethod
    def from_command(cls, cmd: c.Store, ids: Mapping[int, MboxBinding]) -> StoreOp:
        box = _bound(ids, cmd.mbox)
        return cls(
            box.user,
            box.name,
            cmd.uids,
            cmd.add,
            cmd.remove,
            cmd.unchangedsince,
            _pairs(cmd.expect),
        )

    def ok_payload(self, result: FlagsChanged, me: str) -> c.Record:
        rejected = UidSet.of(result.rejected) if result.rejected else None
        return c.StoreOk(result.modseq, rejected)

    def divergence_point(self, result: FlagsChanged) -> tuple[bytes | None, int]:
        return result.mailbox, max(0, result.modseq - 1)


@dataclass(frozen=True, slots=True)
class CreateOp:
    user: str
    name: str

    COMMAND: ClassVar[type[c.Command]] = c.CreateMailbox
    #: Again would fail on its own first effect.
    retry_safe: ClassVar[bool] = False

    def key_mailbox(self) -> str | None:
        return None  # the user's namespace

    async def apply(self, store: MailStore, saves: RecentSaves) -> MailboxCreated:
        return await store.create_mailbox(self.user, self.name)

    async def command(self, binder: MailboxBinder) -> c.Command:
        return c.CreateMailbox(self.user, self.name)

    @classmethod
    def from_command(cls, cmd: c.CreateMailbox, ids: Mapping[int, MboxBinding]) -> CreateOp:
        return cls(cmd.user, cmd.name)

    def ok_payload(self, result: MailboxCreated, me: str) -> c.Record:
        return c.MailboxOk(result.mailbox, result.uidvalidity)

    def divergence_point(self, result: MailboxCreated) -> tuple[bytes | None, int]:
        return result.mailbox, 0


@dataclass(frozen=True, slots=True)
class RenameOp:
    user: str
    old: str
    new: str

    COMMAND: ClassVar[type[c.Command]] = c.RenameMailbox
    retry_safe: ClassVar[bool] = False

    def key_mailbox(self) -> str | None:
        return None

    async def apply(self, store: MailStore, saves: RecentSaves) -> MailboxRenamed:
        return await store.rename_mailbox(self.user, self.old, self.new)

    async def command(self, binder: MailboxBinder) -> c.Command:
        return c.RenameMailbox(self.user, self.old, self.new)

    @classmethod
    def from_command(cls, cmd: c.RenameMailbox, ids: Mapping[int, MboxBinding]) -> RenameOp:
        return cls(cmd.user, cmd.old_name, cmd.new_name)

    def ok_payload(self, result: MailboxRenamed, me: str) -> c.Record:
        return c.MailboxOk(result.mailbox, 1)

    def divergence_point(self, result: MailboxRenamed) -> tuple[bytes | None, int]:
        return result.mailbox, 0


@dataclass(frozen=True, slots=True)
class DeleteOp:
    user: str
    name: str

    COMMAND: ClassVar[type[c.Command]] = c.DeleteMailbox
    retry_safe: ClassVar[bool] = False

    def key_mailbox(self) -> str | None:
        return None

    async def apply(self, store: MailStore, saves: RecentSaves) -> MailboxDeleted:
        return await store.delete_mailbox(self.user, self.name)

    async def command(self, binder: MailboxBinder) -> c.Command:
        return c.DeleteMailbox(self.user, self.name)

    @classmethod
    def from_command(cls, cmd: c.DeleteMailbox, ids: Mapping[int, MboxBinding]) -> DeleteOp:
        return cls(cmd.user, cmd.name)

    def ok_payload(self, result: MailboxDeleted, me: str) -> c.Record:
        return c.MailboxOk(result.mailbox, 1)

    def divergence_point(self, result: MailboxDeleted) -> tuple[bytes | None, int]:
        return result.mailbox, 0


@dataclass(frozen=True, slots=True)
class SubscribeOp:
    """IMAP SUBSCRIBE (``subscribed``) or UNSUBSCRIBE of ``name``, which need
    not exist (RFC 3501 §6.3.6): a register of the user's namespace,
    stamped by its master (replicad.store.subscriptions, I4)."""

    user: str
    name: str
    subscribed: bool

    COMMAND: ClassVar[type[c.Command]] = c.Subscribe
    #: Again is safe: the same register, set to the same value.
    retry_safe: ClassVar[bool] = True

    def key_mailbox(self) -> str | None:
        return None  # the user's namespace, as CREATE

    async def apply(self, store: MailStore, saves: RecentSaves) -> SubscriptionChanged:
        return await store.subscriptions.set_subscribed(self.user, self.name, self.subscribed)

    async def command(self, binder: MailboxBinder) -> c.Command:
        return c.Subscribe(self.user, self.name, int(self.subscribed))

    @classmethod
    def from_command(cls, cmd: c.Subscribe, ids: Mapping[int, MboxBinding]) -> SubscribeOp:
        return cls(cmd.user, cmd.name, bool(cmd.subscribed))

    def ok_payload(self, result: SubscriptionChanged, me: str) -> c.Record:
        return c.SubscribeOk(result.stamp)

    def divergence_point(self, result: SubscriptionChanged) -> tuple[bytes | None, int]:
        # No mailbox to resync: the register merges by itself (resync.md §10).
        return None, 0


@dataclass(frozen=True, slots=True)
class ImportMailboxOp:
    """CREATE under the migration source's UIDVALIDITY (verbs.md IMPORT-MAILBOX)."""

    user: str
    name: str
    uidvalidity: int

    COMMAND: ClassVar[type[c.Command]] = c.ImportMailbox
    retry_safe: ClassVar[bool] = False

    def key_mailbox(self) -> str | None:
        return None  # the user's namespace, as CREATE

    async def apply(self, store: MailStore, saves: RecentSaves) -> MailboxCreated:
        return await store.create_mailbox_at(self.user, self.name, self.uidvalidity)

    async def command(self, binder: MailboxBinder) -> c.Command:
        return c.ImportMailbox(self.user, self.name, self.uidvalidity)

    @classmethod
    def from_command(cls, cmd: c.ImportMailbox, ids: Mapping[int, MboxBinding]) -> ImportMailboxOp:
        return cls(cmd.user, cmd.name, cmd.uidvalidity)

    def ok_payload(self, result: MailboxCreated, me: str) -> c.Record:
        return c.MailboxOk(result.mailbox, result.uidvalidity)

    def divergence_point(self, result: MailboxCreated) -> tuple[bytes | None, int]:
        return result.mailbox, 0


@dataclass(frozen=True, slots=True)
class ImportOp:
    """SAVE at the migration source's UID (verbs.md IMPORT; I3: never below UIDNEXT)."""

    user: str
    mailbox: str
    uid: int
    guid: bytes
    internaldate: int
    flags: tuple[str, ...]
    body: bytes | Blob

    COMMAND: ClassVar[type[c.Command]] = c.Import
    #: Again would be refused as below UIDNEXT; the migration re-reads instead.
    retry_safe: ClassVar[bool] = False

    def key_mailbox(self) -> str | None:
        return self.mailbox

    def append_request(self) -> AppendRequest:
        return AppendRequest(self.body, self.flags, self.internaldate, self.guid, self.uid)

    async def apply(self, store: MailStore, saves: RecentSaves) -> MessageAppended:
        [appended] = await store.append_many(self.user, self.mailbox, [self.append_request()])
        return appended

    async def command(self, binder: MailboxBinder) -> c.Command:
        mid = await binder.mbox(self.mailbox)
        body = await _wire_body(self.body)
        return c.Import(mid, self.uid, self.internaldate, self.guid, self.flags, body)

    @classmethod
    def from_command(cls, cmd: c.Import, ids: Mapping[int, MboxBinding]) -> ImportOp:
        box = _bound(ids, cmd.mbox)
        return cls(box.user, box.name, cmd.uid, cmd.guid, cmd.internaldate, cmd.flags, cmd.body)

    def ok_payload(self, result: MessageAppended, me: str) -> c.Record:
        return c.SaveOk(result.uid, result.modseq, me, result.uidvalidity)

    def divergence_point(self, result: MessageAppended) -> tuple[bytes | None, int]:
        return result.mailbox, result.modseq - 1


WriteOp = (
    SaveOp
    | CopyOp
    | ExpungeOp
    | StoreOp
    | CreateOp
    | RenameOp
    | DeleteOp
    | SubscribeOp
    | ImportMailboxOp
    | ImportOp
)
#: Every write verb the engine executes at a master.
WRITE_OPS: Final[tuple[type[WriteOp], ...]] = (
    SaveOp,
    CopyOp,
    ExpungeOp,
    StoreOp,
    CreateOp,
    RenameOp,
    DeleteOp,
    SubscribeOp,
    ImportMailboxOp,
    ImportOp,
)
#: Makes the op of a received command, the peer's MBOX ids resolved.
OpFromCommand = Callable[[Any, Mapping[int, MboxBinding]], WriteOp]
#: A received write command -> its op: the one table of write verbs.
OP_FROM_COMMAND: Final[dict[type[c.Command], OpFromCommand]] = {
    op.COMMAND: op.from_command for op in WRITE_OPS
}


def key_mailbox(op: WriteOp) -> str | None:
    """The mailbox whose master decides ``op`` (None: the user's namespace)."""
    return op.key_mailbox()


def _bound(ids: Mapping[int, MboxBinding], mid: int) -> MboxBinding:
    binding = ids.get(mid)
    if binding is None:
        raise BadInputError(f"mailbox id {mid} is not bound")
    return binding


async def _wire_body(body: bytes | Blob) -> Blob:
    """A SAVE's body in its stored form (verbs.md, "Bodies"): compressed here,
    once, for the master to keep as it comes."""
    if isinstance(body, Blob):
        return body
    if len(body) <= _INLINE_COMPRESS:
        return Blob.compress(body)
    return await trio.to_thread.run_sync(Blob.compress, body)


def _pairs(expect: tuple[c.UidGuid, ...] | None) -> Expect:
    return None if expect is None else tuple((e.uid, e.guid) for e in expect)


def _mapping(expect: Expect) -> dict[int, bytes] | None:
    return None if expect is None else dict(expect)
