"""Links to the neighbours: dial, accept, backoff, pings, liveness and routes (architecture.md §6).

The node keeps one authenticated link per configured peer: the node whose
name sorts first dials, the other accepts (so a pair never holds two
links).  Dials follow an exponential backoff with jitter, brought forward
by a sign of life: a cheap reachability probe every ``probe_interval``
while the link is down, or a route to the peer through another neighbour
(:mod:`~replicad.cluster.redial`), so a healed link is up again within
about a probe interval while a dead peer is dialled no more often than the
backoff allows.  PING every
``ping_interval``; a peer silent for ``dead_after`` is dropped.  ROUTES
(distance vectors, :class:`~replicad.cluster.routing.RoutingTable`) let a
node reach peers it has no direct link to (A-B-C with A-C down).

:class:`Links` owns the live :class:`~replicad.cluster.session.PeerSession`
of each neighbour and each link's reader.  What a link carries besides
pings and routes goes to the rest of the node through :class:`LinkHooks`,
which the node's wiring implements.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable
from typing import Any, Final, Protocol

import trio

from replicad.cluster.network import Network
from replicad.cluster.outbox import OutboxStream
from replicad.cluster.redial import Backoff, DialSchedule
from replicad.cluster.root import Claim
from replicad.cluster.routing import RoutingTable
from replicad.cluster.session import PeerSession
from replicad.cluster.settings import ClusterSettings, PeerAddress
from replicad.cluster.signals import Broadcast
from replicad.errors import (
    BadInputError,
    ProtocolError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
)
from replicad.protocol import commands as c
from replicad.protocol.connection import (
    CAP_DEBUG,
    CommandReceived,
    ConnectionClosed,
    LinkConfig,
    LinkStateError,
    ReplyReceived,
    UntaggedReceived,
)
from replicad.store.mailstore import MailStore
from replicad.transport import Link, LinkRefusedError
from replicad.transport.logfmt import log_event

log = logging.getLogger("replicad.cluster")

#: Unacknowledged changes in flight per peer, in changes and in body octets:
#: enough to keep a loopback link busy while the peer commits (W1; 32 MiB is
#: ~250 ms of a 1 Gbit/s link).  Never above the peer's MAX_INBOX /
#: MAX_INBOX_BYTES (replicad.cluster.streams), or the link can stall
#: (replicad.cluster.outbox, "Deadlock").
OUTBOX_WINDOW: Final = 1024
OUTBOX_WINDOW_BYTES: Final = 32 * 1024 * 1024
#: Changes read from the store per batch, and body octets: what the pump holds
#: in memory at once per peer (plus the frames it queued from them).
OUTBOX_BATCH: Final = 128
OUTBOX_BATCH_BYTES: Final = 8 * 1024 * 1024


class LinkHooks(Protocol):
    """What a link hands to the rest of the node (implemented by the node's wiring)."""

    def gossip_claim(self) -> Claim | None:
        """The root claim a new neighbour is told first (EPOCH)."""
        ...

    def view_changed(self) -> None:
        """The set of reachable nodes may have changed."""
        ...

    def link_up(self, session: PeerSession, nursery: trio.Nursery) -> None:
        """A link is up and introduced: start its tasks in ``nursery`` (the link's)."""
        ...

    def link_gone(self, peer: str) -> None:
        """The link to ``peer`` is gone (or replaced by a new one)."""
        ...

    async def command(
        self, session: PeerSession, event: CommandReceived, nursery: trio.Nursery
    ) -> None:
        """Serve a tagged command; long work goes into ``nursery`` (the link's)."""
        ...

    async def change(self, session: PeerSession, change: c.Change) -> None:
        """A change frame arrived (may wait for room: backpressure)."""
        ...

    async def untagged(self, session: PeerSession, data: c.Untagged) -> None:
        """Any other untagged frame but ROUTES."""
        ...


class Links:
    """The node's live links, its routes, and the tasks that keep them (one per link)."""

    def __init__(
        self,
        *,
        name: str,
        peers: tuple[PeerAddress, ...],
        store: MailStore,
        network: Network,
        settings: ClusterSettings,
        hooks: LinkHooks,
        view: Broadcast,
    ) -> None:
        self.name = name
        self.peers = {p.name: p for p in peers}
        self.store = store
        self.network = network
        self.settings = settings
        self.hooks = hooks
        self.view = view  # fired when a peer's first ROUTES arrives (settling)
        self.link_config = LinkConfig(cluster=network.cluster, node=name)
        self.routing = RoutingTable(name, self.members())
        self.sessions: dict[str, PeerSession] = {}
        self.heard: set[str] = set()  # peers whose first ROUTES arrived (settling)
        self._nursery: trio.Nursery | None = None
        self._dialers: dict[str, trio.CancelScope] = {}  # peer -> its dial loop
        #: Set when another neighbour's ROUTES show a peer we dial, whose link is
        #: down, to be up (a sign of life for its waiting dial loop).
        self._alive_elsewhere: dict[str, trio.Event] = {}

    def members(self) -> frozenset[str]:
        """The configured cluster: this node, its peers and ``cluster.members``."""
        return frozenset(self.peers) | self.settings.members | {self.name}

    def session_towards(self, node: str) -> PeerSession:
        """The link of the next hop towards ``node``; UnreachableError if none."""
        hop = self.routing.next_hop(node)
        session = self.sessions.get(hop) if hop else None
        if session is None:
            raise UnreachableError(f"no route to {node}")
        return session

    # -- lifecycle --

    async def start(self, nursery: trio.Nursery) -> None:
        """Listen for links (returns once listening), and dial every peer this
        node dials, in ``nursery`` (the node's: dial loops and background
        sends live as long as the node)."""
        self._nursery = nursery
        await nursery.start(
            # A live view: a reloaded peer list takes effect for the next
            # link accepted (set_peers).
            lambda task_status: self.network.serve(
                self._accepted, self.link_config, self.peers.keys(), task_status
            )
        )
        for peer in self.peers.values():
            self._start_dialer(peer)

    def spawn(self, coro: Awaitable[Any]) -> None:
        """Send in the background; a link that fails meanwhile only logs."""
        assert self._nursery is not None

        async def run() -> None:
            try:
                await coro
            except (ReplicadError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log_event(log, logging.DEBUG, "send-failed", reason=str(exc))

        self._nursery.start_soon(run)

    def _start_dialer(self, peer: PeerAddress) -> None:
        """Dial ``peer`` for as long as it is configured (the lower name dials)."""
        if self.name > peer.name:
            return
        assert self._nursery is not None
        scope = self._dialers[peer.name] = trio.CancelScope()

        async def dial() -> None:
            with scope:
                await self._dial_loop(peer)

        self._nursery.start_soon(dial)

    async def set_peers(self, peers: tuple[PeerAddress, ...]) -> tuple[str, ...]:
        """Take a reloaded peer list (SIGHUP); return the names whose entry changed.

        The store learns it first, so a new peer has its outbox cursor (and a
        whole-node resync mark: its copy is built by resync) before its first
        link can stream; a removed peer's cursor goes, so the log stops
        waiting for it.  A removed peer's link is closed and not accepted
        again; one whose address changed is dialled there.  The root
        election takes in new nodes as they become reachable, as it does for
        nodes reached through others.
        """
        new = {p.name: p for p in peers}
        if self.name in new:
            raise BadInputError(f"node {self.name!r} cannot be its own peer")
        changed = sorted(
            n for n in new.keys() | self.peers.keys() if new.get(n) != self.peers.get(n)
        )
        if not changed:
            return ()
        await self.store.set_peers(tuple(sorted(new)))
        self.peers.clear()
        self.peers.update(new)  # in place: the listener checks this very dict
        self.routing.set_members(self.members())
        for name in changed:
            scope = self._dialers.pop(name, None)
            if scope is not None:
                scope.cancel()
            session = self.sessions.get(name)
            if session is not None:
                session.cancel_scope.cancel()  # closed now; redialled if still configured
            if name in new:
                self._start_dialer(new[name])
        log_event(log, logging.INFO, "peers-reloaded", node=self.name, changed=",".join(changed))
        self.topology_changed()
        return tuple(changed)

    # -- one link --

    async def _dial_loop(self, peer: PeerAddress) -> None:
        backoff = Backoff(self.settings.backoff_min, self.settings.backoff_max)
        schedule = DialSchedule(backoff, trio.current_time())
        while True:
            await self._until_dial(peer, schedule)
            try:
                link = await self.network.dial(peer, self.link_config)
                if self.settings.compress:
                    # The dialling side asks (compression.md); a refusal keeps
                    # the link uncompressed.
                    await link.start_compression()
            except (ReplicadError, OSError, trio.BrokenResourceError) as exc:
                log_event(log, logging.DEBUG, "dial-failed", peer=peer.name, reason=str(exc))
                schedule.dial_failed(trio.current_time(), _jitter())
                if _path_down(exc):
                    # Nobody refused us: the path is down, so the peer coming
                    # back is news again (a probe passed through a cut that
                    # was slow to reset it).
                    schedule.peer_unreachable()
            else:
                await self._run_session(link)
                schedule.link_ended(trio.current_time(), _jitter())

    async def _until_dial(self, peer: PeerAddress, schedule: DialSchedule) -> None:
        """Wait for ``peer``'s scheduled dial, or less if it shows a sign of life
        (replicad.cluster.redial): probed every ``probe_interval``, or routed
        to through another neighbour."""
        alive = self._alive_elsewhere[peer.name] = trio.Event()
        try:
            while True:
                now = trio.current_time()
                if now >= schedule.due:
                    schedule.scheduled_dial()
                    return
                probing = schedule.wants_signs_of_life and self.settings.probe_interval > 0
                wait = schedule.due - now
                if probing:
                    # Jittered too: probes of many peers do not go out in bursts.
                    wait = min(wait, self.settings.probe_interval * (0.5 + random.random() / 2))
                with trio.move_on_after(wait):
                    await alive.wait()
                if alive.is_set():
                    alive = self._alive_elsewhere[peer.name] = trio.Event()
                    if schedule.sign_of_life():
                        log_event(log, logging.DEBUG, "dial-early", peer=peer.name, sign="route")
                        return
                elif probing and trio.current_time() < schedule.due:
                    if not await self.network.probe(peer):
                        schedule.peer_unreachable()
                    elif schedule.sign_of_life():
                        log_event(log, logging.DEBUG, "dial-early", peer=peer.name, sign="probe")
                        return
        finally:
            if self._alive_elsewhere.get(peer.name) is alive:
                del self._alive_elsewhere[peer.name]

    def _wake_dialers_of_routed_peers(self) -> None:
        """A peer we dial, with no link, reached through another neighbour is up."""
        for name, alive in self._alive_elsewhere.items():
            if name not in self.sessions and self.routing.next_hop(name) is not None:
                alive.set()

    async def _accepted(self, link: Link) -> None:
        if CAP_DEBUG in link.hello.capabilities:
            await self._debug_session(link)
        else:
            await self._run_session(link)

    async def _debug_session(self, link: Link) -> None:
        """``replicad debug connect``: serve typed commands, never as a peer.

        The session is not registered (no routes, no change stream, the real
        link of the node with that certificate is left alone); ROOT and
        untagged frames (changes, routes) are refused, since a person
        typing them would corrupt the cluster's view.
        """
        session = PeerSession(link, OutboxStream(link.peer, 0))
        log_event(log, logging.INFO, "debug-session", peer=link.peer, remote=link.remote)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    event = await link.next_event()
                    if isinstance(event, ConnectionClosed):
                        break
                    if isinstance(event, CommandReceived):
                        if isinstance(event.command, c.Root):
                            await session.reply_no(
                                event.tag, "UNSUPPORTED", "ROOT is not taken from debug"
                            )
                        else:
                            await self.hooks.command(session, event, nursery)
                    elif isinstance(event, UntaggedReceived):
                        log_event(
                            log,
                            logging.WARNING,
                            "debug-untagged-ignored",
                            peer=link.peer,
                            verb=event.data.VERB,
                        )
                    elif isinstance(event, ReplyReceived):
                        session.take_reply(event, frees_window=False)
                nursery.cancel_scope.cancel()
        except (ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log_event(log, logging.INFO, "debug-session-error", peer=link.peer, reason=str(exc))
        finally:
            session.fail_pending()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(link.channel.stream)

    async def _run_session(self, link: Link) -> None:
        old = self.sessions.get(link.peer)
        if old is not None:
            # The peer restarted and dialled again: the old link is dead, and
            # what was sent over it (a ROOT) may have died with the peer.
            # Forget it now, not when the old session's cleanup gets to run:
            # this new link must get the root introduced (simulator seed 30711).
            old.cancel_scope.cancel()
            old.fail_pending()
            self.hooks.link_gone(link.peer)
        acked = await self.store.log_cursor(link.peer)
        outbox = OutboxStream(
            link.peer,
            acked,
            window=OUTBOX_WINDOW,
            batch=OUTBOX_BATCH,
            window_bytes=OUTBOX_WINDOW_BYTES,
            batch_bytes=OUTBOX_BATCH_BYTES,
        )
        session = PeerSession(link, outbox)
        self.sessions[link.peer] = session
        log_event(log, logging.INFO, "link-up", peer=link.peer, remote=link.remote)
        try:
            with session.cancel_scope:
                async with trio.open_nursery() as nursery:
                    outbox.on_link_up()
                    self._send_gossip(session)
                    self.topology_changed()
                    self.hooks.link_up(session, nursery)
                    await self._reader(session, nursery)
                    nursery.cancel_scope.cancel()
        except* ProtocolError as group:
            reason = "; ".join(str(e) for e in group.exceptions)
            log_event(log, logging.WARNING, "link-error", peer=link.peer, reason=reason)
        except* (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            UnreachableError,
            LinkStateError,
        ):
            # The link died under one of its tasks (the peer is down or gone,
            # or closed it at once, e.g. refusing what we sent): never the node.
            pass
        except* TemporaryError as group:
            # A condition that clears by itself (a full store under one of the
            # link's tasks): this link ends and is dialled again; the node
            # stays up and serves (I7).
            reason = "; ".join(str(e) for e in group.exceptions)
            log_event(log, logging.ERROR, "link-error", peer=link.peer, reason=reason)
        finally:
            session.fail_pending()
            outbox.on_link_down()
            self.hooks.link_gone(link.peer)  # it may come back restarted: tell it again
            if self.sessions.get(link.peer) is session:
                del self.sessions[link.peer]
                self.topology_changed()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(link.channel.stream)
            log_event(log, logging.INFO, "link-down", peer=link.peer)

    async def pinger(self, session: PeerSession) -> None:
        """PING every ``ping_interval``; drop a peer silent for ``dead_after``."""
        while True:
            await trio.sleep(self.settings.ping_interval)
            silent = trio.current_time() - session.last_heard
            if silent > self.settings.dead_after:
                log_event(log, logging.WARNING, "peer-dead", peer=session.peer, silent=silent)
                session.cancel_scope.cancel()
                return
            start = trio.current_time()
            try:
                pong = await session.request(c.Ping(), timeout=self.settings.dead_after)
            except ReplicadError:
                continue
            session.rtt = trio.current_time() - start
            if isinstance(pong, c.Pong):
                session.peer_imap_sessions = pong.imap_sessions

    async def _reader(self, session: PeerSession, nursery: trio.Nursery) -> None:
        link = session.link
        while True:
            event = await link.next_event()
            session.last_heard = trio.current_time()
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, UntaggedReceived) and isinstance(event.data, c.Change):
                await self.hooks.change(session, event.data)
            elif isinstance(event, ReplyReceived):
                session.take_reply(event)
            elif isinstance(event, CommandReceived):
                await self.hooks.command(session, event, nursery)
            elif isinstance(event, UntaggedReceived):
                if isinstance(event.data, c.Routes):
                    self._routes_received(session, event.data)
                else:
                    await self.hooks.untagged(session, event.data)

    # -- routes --

    def topology_changed(self) -> None:
        """The live links changed: routes follow, neighbours hear, the view changes."""
        for name in list(self.sessions):
            self.routing.link_up(name)
        for name in self.routing.links - set(self.sessions):
            self.routing.link_down(name)
        self._broadcast_routes()
        self.hooks.view_changed()

    def _routes_received(self, session: PeerSession, data: c.Routes) -> None:
        if session.peer not in self.heard:
            self.heard.add(session.peer)
            self.view.fire()
        vector = {r.node: r.hops for r in data.routes}
        if self.routing.receive_vector(session.peer, vector):
            self._broadcast_routes()
            self.hooks.view_changed()
            self._wake_dialers_of_routed_peers()

    def _broadcast_routes(self) -> None:
        for name, session in list(self.sessions.items()):
            self.spawn(session.send_untagged(c.Routes(self._routes_for(name))))

    def _routes_for(self, neighbour: str) -> tuple[c.Route, ...]:
        vector = self.routing.vector_for(neighbour)
        return tuple(c.Route(n, min(h, 255)) for n, h in sorted(vector.items()))

    def _send_gossip(self, session: PeerSession) -> None:
        """Our claim, then our routes, queued in this order on the new link: a
        peer that has our ROUTES has also had our EPOCH (the root's settling)."""
        claim = self.hooks.gossip_claim()
        if claim is not None:
            epoch = c.Epoch(claim.epoch, claim.root)
            session.link.queue(lambda conn: conn.send_untagged(epoch))
        routes = c.Routes(self._routes_for(session.peer))
        session.link.queue(lambda conn: conn.send_untagged(routes))
        self.spawn(session.link.flush())


def _path_down(exc: BaseException) -> bool:
    """A dial failure that says the peer was not reached (no TLS answer), not refused."""
    if isinstance(exc, LinkRefusedError):
        return exc.cut
    return isinstance(exc, (UnreachableError, OSError, trio.BrokenResourceError))


def _jitter() -> float:
    """A backoff's scale factor: restarted nodes do not dial in lock step."""
    return 0.5 + random.random()
