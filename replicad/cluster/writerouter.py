"""Client writes at run time: executed here as master, or forwarded (architecture.md §3).

A write goes to its mailbox's master: asked from the root, cached, and
reached hop by hop; each hop re-issues the command on its next link with
its own tag and MBOX ids (framing.md §5).  The master applies it in one
store transaction that also appends the change to its durable log (I1,
I3), waits for the durability level's acknowledgements, and answers.  A
write made as master while configured peers are unreachable is recorded
per (peer, mailbox) as a resync mark (I7).  What each verb does is on its
op (:mod:`replicad.cluster.writeops`); this module only routes.
"""

from __future__ import annotations

from typing import Any, Final

import trio

from replicad.cluster.copies import CopyWaits
from replicad.cluster.links import Links
from replicad.cluster.mastership import Mastership
from replicad.cluster.session import PeerSession, no_code
from replicad.cluster.settings import ClusterSettings
from replicad.cluster.streams import ChangeStreams
from replicad.cluster.writeops import (
    OP_FROM_COMMAND,
    WRITE_DEADLINE,
    Expect,
    RecentSaves,
    WireExpect,
    WriteOp,
)
from replicad.errors import (
    OutcomeUnknownError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
)
from replicad.protocol import commands as c
from replicad.store.changelog import RESYNC_PARTITION
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet

NAME_ONLY_GUID: Final = bytes(16)  # MBOX "name only" (verbs.md MBOX)


class WriteRouter:
    """Runs client writes at their master; serves writes peers forward here."""

    def __init__(
        self,
        *,
        name: str,
        settings: ClusterSettings,
        store: MailStore,
        links: Links,
        masters: Mastership,
        streams: ChangeStreams,
        copies: CopyWaits,
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.links = links
        self.masters = masters
        self.streams = streams
        self.copies = copies
        self.recent_saves = RecentSaves()
        self.forwarded = 0  # writes sent on towards their master
        self._divergent: set[tuple[str, bytes]] = set()  # (peer, mailbox) marked this partition

    async def execute(self, op: WriteOp) -> Any:
        """Run a client write at its master (here or forwarded); the master's answer."""
        deadline = trio.current_time() + WRITE_DEADLINE
        masters = self.masters
        key = masters.key(op.user, op.key_mailbox())
        while True:
            moving = masters.held(key)
            if moving is not None:
                # MASTER-MOVE in progress: hold, do not fail (seed 001).
                with trio.move_on_at(deadline):
                    await moving.wait()
                if not moving.is_set():
                    raise TemporaryError(f"master of {key} is moving; retry")
                continue
            master = await masters.master_of(key, deadline)
            if master == self.name:
                if masters.held(key) is not None:
                    continue  # a move started while we looked the master up
                with masters.executing(key):
                    return await self._execute_here(op)
            hop = self.links.routing.next_hop(master)
            session = self.links.sessions.get(hop) if hop else None
            if session is None:
                masters.cache.drop(key)
                if trio.current_time() >= deadline:
                    raise TemporaryError(f"master {master} of {key} is unreachable")
                await trio.sleep(0.1)
                continue
            self.forwarded += 1
            try:
                return await self._forward(session, op, deadline)
            except OutcomeUnknownError as exc:
                # Sent, and perhaps applied: again only if the op says it is safe.
                if not op.retry_safe:
                    raise TemporaryError(
                        f"{exc}: the {type(op).__name__.removesuffix('Op').upper()} may have "
                        "been applied; check before trying again"
                    ) from None
                masters.cache.drop(key)
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)
            except UnreachableError:
                masters.cache.drop(key)
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)

    # -- as master --

    async def _execute_here(self, op: WriteOp) -> Any:
        """Apply ``op`` as master: one logged transaction, then the durability wait (I1)."""
        level = self.settings.level_for(op.user)
        direct = frozenset(self.links.sessions) | {self.name}
        level.check_reachable(len(direct))
        # Each op takes back the record its own apply returned.
        result: Any = await op.apply(self.store, self.recent_saves)
        # The newest entry logged so far covers this write (no thread hop on
        # the write path; a later entry only makes the wait conservative).
        seq = self.store.last_logged_seq
        self.streams.note_write(seq)
        self.streams.log_changed()
        await self._record_divergence(*op.divergence_point(result))
        if level.copies > 1:
            await self.copies.wait(seq, level)
        return result

    async def _record_divergence(self, mailbox: bytes | None, since: int) -> None:
        """I7: a write made as master while configured peers are unreachable may
        diverge from what they do meanwhile (they may have picked another master
        on their side).  Record it per (peer, mailbox), since the modseq before
        the write, for the resync layer; the outbox still delivers the change.
        """
        unreachable = sorted(set(self.links.peers) - self.links.routing.reachable())
        if not unreachable:
            self._divergent.clear()
            return
        if mailbox is None:
            return
        fresh = [p for p in unreachable if (p, mailbox) not in self._divergent]
        if fresh:
            await self.store.mark_resync(fresh, mailbox, RESYNC_PARTITION, since)
            self._divergent.update((p, mailbox) for p in fresh)

    # -- on towards the master --

    async def _forward(self, session: PeerSession, op: WriteOp, deadline: float) -> Any:
        timeout = max(0.1, deadline - trio.current_time())
        command = await op.command(_LinkBinder(self.store, session, op.user))
        return await session.request(command, timeout=timeout)

    # -- writes forwarded here --

    def op_from(self, session: PeerSession, cmd: c.Command) -> WriteOp | None:
        """The write a peer's command asks for (None: not a write verb);
        BadInputError if it names a mailbox id not bound on the link."""
        make = OP_FROM_COMMAND.get(type(cmd))
        return None if make is None else make(cmd, session.in_ids)

    async def serve_write(self, session: PeerSession, tag: str, op: WriteOp) -> None:
        """Execute a forwarded write and answer the peer with the master's OK or NO."""
        try:
            result = await self.execute(op)
            payload = result if isinstance(result, c.Record) else op.ok_payload(result, self.name)
        except ReplicadError as exc:
            await session.reply_no(tag, no_code(exc), str(exc))
            return
        await session.reply_ok(tag, payload)


class _LinkBinder:
    """Binds the user's mailboxes on one link for a forwarded write (verbs.md MBOX)."""

    def __init__(self, store: MailStore, session: PeerSession, user: str) -> None:
        self.store = store
        self.session = session
        self.user = user

    async def mbox(self, name: str) -> int:
        status = await self._local_status(name)
        if status is None:
            guid, uidv, uidnext, count, hms = NAME_ONLY_GUID, 1, 1, 0, 0
        else:
            guid, uidv = status.guid, status.uidvalidity
            uidnext, count, hms = status.uidnext, status.messages, status.highestmodseq
        mid, new = self.session.mbox_id(self.user, name, guid)
        if new:
            # Queued, not awaited: frames are processed in order, so the id
            # is bound before the command that follows (verbs.md MBOX).
            await self.session.send_mbox(
                c.Mbox(mid, self.user, name, guid, uidv, uidnext, count, hms)
            )
        return mid

    async def expect(self, name: str, uids: UidSet, relayed: Expect) -> WireExpect:
        """What the client meant by these UIDs: the GUIDs its node holds under
        them (relayed as they came when this node only passes the command on).
        The master refuses when it holds other messages there (I6)."""
        if relayed is None:
            try:
                infos = await self.store.fetch(self.user, name, uids)
            except ReplicadError:
                return None
            relayed = tuple((i.uid, i.guid) for i in infos)
        return tuple(c.UidGuid(uid, guid) for uid, guid in relayed)

    async def _local_status(self, name: str) -> Any:
        try:
            return await self.store.mailbox_status(self.user, name)
        except ReplicadError:
            return None
