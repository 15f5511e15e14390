"""Anti-entropy: find the mailboxes whose copies differ between two nodes (I8).

Divergence normally leaves a resync mark (resync.md §1); this finds what
leaves none: a store damaged or edited by hand, a mailbox lost, a change
dropped on a path no mark covers (seed goal 2).  Each node keeps no extra
state: it computes its :class:`~replicad.model.digest.DigestTree` and
descends the peer's with ``DIGEST`` and ``MAILBOXES``:

1. ``DIGEST ()``: the whole digest.  Equal: done, one round trip and a few
   dozen octets whatever the number of mailboxes.
2. ``DIGEST`` of the 256 groups: the groups that differ.
3. ``DIGEST`` of the buckets of those groups: the buckets that differ.
4. ``MAILBOXES`` of those buckets: the mailboxes that differ.

So one changed mailbox among any number costs four round trips and about
20 KB; an unchanged node one round trip.  A differing mailbox this node
masters is queued for resync with the peer; one it does not master gets a
resync mark, which the mark scan sends to its master (RESYNC).
``replicad verify`` runs the same comparison and only reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from replicad.cluster.interfaces import ClusterView, Peer, ResyncQueue
from replicad.cluster.masters import master_key
from replicad.cluster.subsync import SubscriptionSync
from replicad.errors import ProtocolError, ReplicadError, TemporaryError
from replicad.model.digest import GROUP_FLAG, DigestTree, MailboxDigest, bucket_of
from replicad.protocol import commands as c
from replicad.store.changelog import RESYNC_CONFLICT
from replicad.transport.logfmt import log_event

log = logging.getLogger("replicad.verify")

STEP_TIMEOUT = 60.0
#: Most ``* MAILBOX``/``* DIGEST`` frames collected for one request (~200
#: octets each here: some 50 MiB).  Past it the frames are dropped as they
#: come, and MAILBOXES is asked again for half as many buckets (I9).
COLLECT_BUDGET = 256 * 1024
#: Buckets asked per MAILBOXES at first.
MAILBOXES_BATCH = 4096


class CollectTooLarge(TemporaryError):
    """A reply went past :data:`COLLECT_BUDGET` frames (they were dropped)."""


@dataclass(frozen=True, slots=True)
class Difference:
    """A mailbox whose copies differ: ``local``/``remote`` is None where it is missing."""

    peer: str
    user: str
    name: str
    local: MailboxDigest | None
    remote: MailboxDigest | None

    @property
    def why(self) -> str:
        if self.local is None:
            return "missing here"
        if self.remote is None:
            return "missing on peer"
        if self.local.guid != self.remote.guid:
            return "another mailbox of this name"
        return "state differs"


@dataclass(slots=True)
class Comparison:
    differences: list[Difference]
    round_trips: int
    bytes_in: int  # digest and mailbox payload octets received (an estimate of the wire)
    compared: int = 0  # mailboxes of this node the comparison covered


class AntiEntropy:
    """Digest comparisons with peers: on demand (verify) and on a schedule."""

    def __init__(
        self,
        node: ClusterView,
        resync: ResyncQueue,
        *,
        subscriptions: SubscriptionSync | None = None,
    ) -> None:
        self.node = node
        self.resync = resync
        #: Compared with each peer on every check too (resync.md §10).
        self.subscriptions = subscriptions
        self.store = node.store
        self.runs = 0
        self.found = 0
        self.last: dict[str, float] = {}  # peer -> when last compared (trio time)
        #: ``* DIGEST``/``* MAILBOX`` frames of a request in progress, by peer.
        self.collect: dict[str, list[c.Untagged]] = {}
        self._over: set[str] = set()  # peers whose reply went past COLLECT_BUDGET
        self._asking: dict[str, trio.Lock] = {}  # one request per peer at a time

    # -- the asking side --

    async def compare(self, session: Peer, users: set[str] | None = None) -> Comparison:
        """The mailboxes whose state differs between this node and the peer."""
        result = Comparison([], 0, 0)
        if users is not None:
            buckets = {bucket_of(u) for u in users}
        else:
            digests = await self.store.mailbox_digests()
            result.compared = len(digests)
            mine = DigestTree.build(digests)
            theirs = await self._digests(session, (), result)
            if theirs.get(None) == mine.whole:
                return result
            groups = await self._digests(session, tuple(GROUP_FLAG + g for g in range(256)), result)
            odd_groups = {g for g in range(256) if groups.get(GROUP_FLAG + g) != mine.groups.get(g)}
            wanted = tuple(b for g in sorted(odd_groups) for b in range(g << 8, (g + 1) << 8))
            remote_buckets = await self._digests(session, wanted, result) if wanted else {}
            buckets = {b for b in wanted if remote_buckets.get(b) != mine.buckets.get(b)}
        if not buckets:
            return result
        remote = await self._mailboxes(session, buckets, result)
        local = await self.store.mailbox_digests(buckets=buckets)
        if users is not None:
            remote = [m for m in remote if m.user in users]
            local = [m for m in local if m.user in users]
            result.compared = len(local)
        here = {(m.user, m.name): m for m in local}
        there = {(m.user, m.name): m for m in remote}
        for key in sorted(here.keys() | there.keys()):
            a, b = here.get(key), there.get(key)
            if a is not None and b is not None and (a.guid, a.digest) == (b.guid, b.digest):
                continue
            result.differences.append(Difference(session.peer, key[0], key[1], a, b))
        return result

    async def mailbox_of(self, session: Peer, user: str, name: str) -> MailboxDigest | None:
        """The peer's state of one mailbox: one MAILBOXES round trip for the
        user's bucket (IMAP SELECT asks the master, architecture.md §11)."""
        result = Comparison([], 0, 0)
        for state in await self._mailboxes(session, {bucket_of(user)}, result):
            if state.user == user and state.name == name:
                return state
        return None

    async def _digests(
        self, session: Peer, numbers: tuple[int, ...], result: Comparison
    ) -> dict[int | None, tuple[int, bytes]]:
        frames = await self._collect(session, c.Digest(numbers), result)
        out: dict[int | None, tuple[int, bytes]] = {}
        for f in frames:
            assert isinstance(f, c.DigestData)
            out[f.bucket] = (f.users, f.digest)
            result.bytes_in += 40
        return out

    async def _mailboxes(
        self, session: Peer, buckets: set[int], result: Comparison
    ) -> list[MailboxDigest]:
        out: list[MailboxDigest] = []
        todo = sorted(buckets)
        start, step = 0, MAILBOXES_BATCH
        while start < len(todo):
            part = c.Mailboxes(tuple(todo[start : start + step]))
            try:
                frames = await self._collect(session, part, result)
            except CollectTooLarge:
                if step == 1:
                    raise
                step = max(1, step // 2)
                continue
            start += len(part.buckets)
            for f in frames:
                assert isinstance(f, c.MailboxData)
                out.append(
                    MailboxDigest(
                        f.user,
                        f.name,
                        f.guid,
                        f.uidvalidity,
                        f.uidnext,
                        f.highestmodseq,
                        f.messages,
                        f.digest,
                    )
                )
                result.bytes_in += 80 + len(f.user) + len(f.name)
        return out

    async def _collect(
        self, session: Peer, command: c.Command, result: Comparison
    ) -> list[c.Untagged]:
        # One request per peer at a time: the untagged frames of the answer
        # are told apart by peer only.  Comparisons, `verify` and IMAP's
        # SELECT (mailbox_of) take turns.
        async with self._asking.setdefault(session.peer, trio.Lock()):
            frames: list[c.Untagged] = []
            self.collect[session.peer] = frames
            self._over.discard(session.peer)
            try:
                await session.request(command, timeout=STEP_TIMEOUT)
                result.round_trips += 1
            finally:
                self.collect.pop(session.peer, None)
            if session.peer in self._over:
                self._over.discard(session.peer)
                raise CollectTooLarge(
                    f"{command.VERB} from {session.peer}: above {COLLECT_BUDGET}"
                )
            return frames

    def on_data(self, session: Peer, data: c.Untagged) -> None:
        found = self.collect.get(session.peer)
        if found is None:
            raise ProtocolError(f"unexpected * {data.VERB}")
        if session.peer in self._over:
            return  # past the budget: dropped as it comes (CollectTooLarge)
        if len(found) >= COLLECT_BUDGET:
            found.clear()
            self._over.add(session.peer)
            return
        found.append(data)

    async def repair(self, differences: list[Difference]) -> int:
        """Queue or mark a resync for every difference; how many were acted on."""
        node = self.node
        acted = 0
        for d in differences:
            key = master_key(node.granularity, d.user, d.name)
            try:
                master = await node.master_of(key, trio.current_time() + STEP_TIMEOUT)
            except ReplicadError:
                continue
            if d.local is None:
                continue  # the peer's own check, or its master's, brings it here
            if d.remote is None or d.remote.guid != d.local.guid:
                # The peer lacks our mailbox: perhaps it deleted it, and the
                # DELETE never reached this copy (ResyncQueue.settle_if_deleted_on).
                session = node.sessions.get(d.peer)
                if session is not None and await self.resync.settle_if_deleted_on(
                    session, d.local.guid
                ):
                    acted += 1
                    continue
            if master == node.name:
                self.resync.enqueue(d.peer, [d.local.guid])
            else:
                await self.store.mark_resync([d.peer], d.local.guid, RESYNC_CONFLICT, 0)
            acted += 1
        return acted

    async def check_loop(self, interval: float) -> None:
        """Compare with every linked peer every ``interval`` seconds (0: never)."""
        if interval <= 0:
            return
        while True:
            await trio.sleep(interval)
            for peer in sorted(self.node.sessions):
                session = self.node.sessions.get(peer)
                if session is None:
                    continue
                try:
                    found = await self.compare(session)
                    self.runs += 1
                    self.last[peer] = trio.current_time()
                    if found.differences:
                        self.found += len(found.differences)
                        log_event(
                            log,
                            logging.WARNING,
                            "verify-differs",
                            peer=peer,
                            mailboxes=len(found.differences),
                            first=f"{found.differences[0].user}/{found.differences[0].name}",
                        )
                        await self.repair(found.differences)
                    if self.subscriptions is not None:
                        await self.subscriptions.exchange(session)
                except (ReplicadError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    log_event(log, logging.INFO, "verify-failed", peer=peer, reason=str(exc))

    # -- the answering side --

    async def serve_digest(self, session: Peer, tag: str, cmd: c.Digest) -> None:
        tree = DigestTree.build(await self.store.mailbox_digests())
        frames: list[c.DigestData] = []
        if not cmd.buckets:
            frames.append(c.DigestData(None, *tree.whole))
        for n in cmd.buckets:
            level = tree.groups.get(n - GROUP_FLAG) if n >= GROUP_FLAG else tree.buckets.get(n)
            if level is not None:
                frames.append(c.DigestData(n, *level))
        for f in frames:
            await session.send_untagged(f)
        await session.reply_ok(tag)

    async def serve_mailboxes(self, session: Peer, tag: str, cmd: c.Mailboxes) -> None:
        for m in await self.store.mailbox_digests(buckets=set(cmd.buckets)):
            await session.send_untagged(
                c.MailboxData(
                    m.user,
                    m.name,
                    m.guid,
                    m.uidvalidity,
                    m.uidnext,
                    m.highestmodseq,
                    m.messages,
                    m.digest,
                ),
            )
        await session.reply_ok(tag)
