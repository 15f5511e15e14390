"""Mailbox masters at run time: lookup, cache, and MASTER-MOVE (architecture.md §6).

The trio glue around the pure :class:`~replicad.cluster.masters.MasterDirectory`
(kept by the root) and :class:`~replicad.cluster.masters.MasterCache` (kept
by every node).  A lookup asks the root, hop by hop, and caches the answer
under the root's epoch; a root change flushes both (fencing).  MASTER-MOVE
(:meth:`Mastership.move_master`) holds the key's writes at the master,
drains them, lets the destination catch up, hands over (seed 001).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from replicad.cluster.links import Links
from replicad.cluster.masters import (
    Assignment,
    MasterCache,
    MasterDirectory,
    MasterKey,
    master_key,
)
from replicad.cluster.root import RootElection
from replicad.cluster.session import PeerSession, no_code
from replicad.cluster.settings import ClusterSettings
from replicad.cluster.signals import Broadcast
from replicad.cluster.writeops import WRITE_DEADLINE
from replicad.errors import BadInputError, ReplicadError, TemporaryError, UnreachableError
from replicad.protocol import commands as c
from replicad.store.mailstore import MailStore
from replicad.transport.logfmt import log_event

log = logging.getLogger("replicad.cluster")


class Mastership:
    """Who masters what, as far as this node knows; and handing a key over."""

    def __init__(
        self,
        *,
        name: str,
        settings: ClusterSettings,
        store: MailStore,
        links: Links,
        election: RootElection,
        view: Broadcast,
        log_grew: Broadcast,
    ) -> None:
        self.name = name
        self.settings = settings
        self.store = store
        self.links = links
        self.election = election
        self.view = view  # fired when the root or the routes change
        self.log_grew = log_grew  # fired when the log grew or a peer acknowledged
        self.directory: MasterDirectory | None = None
        self.cache = MasterCache()
        self._moving: dict[MasterKey, trio.Event] = {}  # keys whose writes are held
        self._inflight: dict[MasterKey, int] = {}  # writes executing here, per key
        self._drained = Broadcast()
        self._handed_over: set[MasterKey] = set()  # keys given away, commit pending

    def key(self, user: str, mailbox: str | None) -> MasterKey:
        """The key governing a write to ``mailbox`` (None: the user's namespace)."""
        return master_key(self.settings.granularity, user, mailbox)

    # -- what the root tells --

    def flush(self, epoch: int, root_here: bool) -> None:
        """A new epoch: forget every master; the root starts a new directory."""
        self.cache.flush(epoch)
        self.directory = MasterDirectory(epoch) if root_here else None

    def forget_unreachable(self, reachable: frozenset[str]) -> None:
        """At the root: a master out of reach is replaced on its next lookup (I7)."""
        if self.directory is not None:
            for node in set(self.election.order) - reachable:
                self.directory.forget_node(node)

    # -- lookup --

    async def master_of(self, key: MasterKey, deadline: float) -> str:
        """The node mastering ``key``, asking the root if needed (waits for a root)."""
        routing = self.links.routing
        while True:
            node = self.cache.get(key)
            if node is not None and (node == self.name or node in routing.reachable()):
                return node
            if node is not None:
                self.cache.drop(key)
            root = self.election.root
            try:
                if root == self.name and self.directory is not None:
                    assignment = self.directory.lookup(key, self.name, routing.reachable())
                    self.cache.learn(assignment)
                    return assignment.node
                if root is not None:
                    hop = routing.next_hop(root)
                    session = self.links.sessions.get(hop) if hop else None
                    if session is not None:
                        ok = await session.request(
                            c.Master(key.user, key.mailbox), timeout=deadline - trio.current_time()
                        )
                        assert isinstance(ok, c.MasterOk)
                        self.cache.learn(Assignment(key, ok.node, ok.epoch))
                        if self.cache.get(key) == ok.node:
                            return ok.node
            except TemporaryError:
                pass
            if trio.current_time() >= deadline:
                raise TemporaryError(
                    f"no master for {key} yet (root {root or 'not elected'}); retry"
                )
            with trio.move_on_at(min(deadline, trio.current_time() + 0.2)):
                await self.view.wait()

    async def serve_master(self, session: PeerSession, tag: str, cmd: c.Master) -> None:
        """MASTER: answered by the root, passed towards it by every other node."""
        key = MasterKey(cmd.user, cmd.mailbox)
        root = self.election.root
        try:
            if root == self.name and self.directory is not None:
                a = self.directory.lookup(key, session.peer, self.links.routing.reachable())
                await session.reply_ok(tag, c.MasterOk(a.node, a.epoch))
                return
            if root is None:
                raise TemporaryError("root not ready")
            hop = self.links.routing.next_hop(root)
            nxt = self.links.sessions.get(hop) if hop else None
            if nxt is None:
                raise UnreachableError(f"no link towards the root {root}")
            ok = await nxt.request(cmd)
            await session.reply_ok(tag, ok)
        except ReplicadError as exc:
            await session.reply_no(tag, no_code(exc), str(exc))

    # -- writes held during a move --

    def held(self, key: MasterKey) -> trio.Event | None:
        """Set when the move of ``key`` ends; None if no move holds its writes."""
        return self._moving.get(key)

    @contextmanager
    def executing(self, key: MasterKey) -> Iterator[None]:
        """Count a write running here as master of ``key`` (a move drains them)."""
        self._inflight[key] = self._inflight.get(key, 0) + 1
        try:
            yield
        finally:
            self._inflight[key] -= 1
            if not self._inflight[key]:
                del self._inflight[key]
                self._drained.fire()

    # -- MASTER-MOVE --

    async def move_master(
        self, user: str, mailbox: str, dest: str, *, sender: str | None = None
    ) -> c.MasterOk:
        """Make ``dest`` the master of (user, mailbox) without failing writes (seed 001).

        The request travels to the root, which forwards it to the current
        master M and records the move when M answers.  M holds new writes for
        the key, lets the running ones finish, waits until ``dest`` has
        acknowledged M's whole log, hands the key over to ``dest`` (a
        MASTER-MOVE naming the receiver, sent by the master itself), and only
        then answers; held writes then go to ``dest``.
        """
        deadline = trio.current_time() + WRITE_DEADLINE
        if dest not in self.election.order:
            raise BadInputError(f"unknown node {dest!r}")
        key = self.key(user, mailbox)
        cmd = c.MasterMove(key.user, key.mailbox, dest)
        if dest == self.name and sender is not None:
            current = await self.master_of(key, deadline)
            if current in (sender, self.name):
                self.cache.learn(Assignment(key, self.name, self.cache.epoch))
                log_event(log, logging.INFO, "master-received", key=str(key), source=sender)
                return c.MasterOk(self.name, self.cache.epoch)
        if self.election.root == self.name and self.directory is not None:
            return await self._move_as_root(key, dest, cmd, deadline)
        if self.cache.get(key) == self.name:
            await self._hand_over(key, dest, deadline)
        elif self.cache.get(key) == dest and key in self._handed_over:
            # The root forwarded our own commit back to us: confirm it.
            return c.MasterOk(dest, self.cache.epoch)
        root = self.election.root
        if root is None:
            raise TemporaryError("no root yet; retry")
        ok = await self.links.session_towards(root).request(
            cmd, timeout=max(0.1, deadline - trio.current_time())
        )
        assert isinstance(ok, c.MasterOk)
        self.cache.learn(Assignment(key, ok.node, ok.epoch))
        self._handed_over.discard(key)
        return ok

    async def _move_as_root(
        self, key: MasterKey, dest: str, cmd: c.MasterMove, deadline: float
    ) -> c.MasterOk:
        """At the root: have the current master hand over, then record the move."""
        assert self.directory is not None
        current = self.directory.lookup(key, dest, self.links.routing.reachable()).node
        if current != dest:
            if current == self.name:
                await self._hand_over(key, dest, deadline)
            else:
                session = self.links.session_towards(current)
                ok = await session.request(cmd, timeout=max(0.1, deadline - trio.current_time()))
                assert isinstance(ok, c.MasterOk)
            if self.directory is None or self.election.root != self.name:
                # This node stopped being the root while the key moved:
                # the new root's directory decides; the caller retries.
                raise TemporaryError(f"the root changed while {key} moved; retry")
            self.directory.move(key, dest)
        self.cache.learn(Assignment(key, dest, self.directory.epoch))
        return c.MasterOk(dest, self.directory.epoch)

    async def _hand_over(self, key: MasterKey, dest: str, deadline: float) -> None:
        """As master of ``key``: drain, let ``dest`` catch up, give the key away."""
        target = self.links.sessions.get(dest)
        if target is None:
            raise UnreachableError(
                f"{dest} has no direct link to {self.name}, the master of {key}: "
                "it could not be brought up to date before taking over"
            )
        if key in self._moving:
            raise TemporaryError(f"a move of {key} is already in progress; retry")
        held = self._moving[key] = trio.Event()
        log_event(log, logging.INFO, "master-moving", key=str(key), to=dest)
        try:
            with trio.move_on_at(deadline) as scope:
                while self._inflight.get(key):
                    await self._drained.wait()
                head = await self.store.log_head()
                while target.outbox.acked < head and not target.closed:
                    await self.log_grew.wait()
            if scope.cancelled_caught or target.closed:
                raise TemporaryError(f"{dest} did not catch up in time; master of {key} unchanged")
            await target.request(
                c.MasterMove(key.user, key.mailbox, dest),
                timeout=max(0.1, deadline - trio.current_time()),
            )
            self.cache.learn(Assignment(key, dest, self.cache.epoch))
            self._handed_over.add(key)
            log_event(log, logging.INFO, "master-moved", key=str(key), to=dest)
        finally:
            if self._moving.get(key) is held:
                del self._moving[key]
            held.set()

    async def serve_master_move(self, session: PeerSession, tag: str, cmd: c.MasterMove) -> None:
        try:
            ok = await self.move_master(cmd.user, cmd.mailbox, cmd.node, sender=session.peer)
        except ReplicadError as exc:
            await session.reply_no(tag, no_code(exc), str(exc))
            return
        await session.reply_ok(tag, ok)
