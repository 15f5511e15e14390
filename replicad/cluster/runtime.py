"""The cluster runtime: one :class:`ClusterNode` per process, wiring its parts (architecture.md §6).

Each part has one owner and its own module; this module only builds them,
runs their node-wide tasks in one nursery, routes what a link carries to
the part that owns it, and offers the API other layers call (node.py, the
admin socket, LMTP, :class:`~replicad.cluster.writes.ClusterWrites`, the
simulator):

* **Links** (:mod:`~replicad.cluster.links`): dial, accept, backoff and
  the probes that cut it short (:mod:`~replicad.cluster.redial`), pings,
  liveness and routes; one :class:`~replicad.cluster.session.PeerSession`
  per live link, whose tasks live in that link's nursery.
* **Root** (:mod:`~replicad.cluster.rootkeeper`): EPOCH gossip, the ROOT
  flood and the epoch file around the pure
  :class:`~replicad.cluster.root.RootElection`.
* **Masters** (:mod:`~replicad.cluster.mastership`): lookup through the
  root, the cache, and MASTER-MOVE.
* **Writes** (:mod:`~replicad.cluster.writerouter`, each verb's behaviour
  on its op in :mod:`~replicad.cluster.writeops`): executed here as master,
  or forwarded hop by hop; forwarded writes served.  Durability waits are
  :mod:`~replicad.cluster.copies`.
* **Change streams** (:mod:`~replicad.cluster.streams`): the pump per
  peer, applying bursts, cumulative ACKs, relays and lag.
* **Resync** (:mod:`~replicad.cluster.resync`, :mod:`~replicad.cluster.antientropy`,
  :mod:`~replicad.cluster.manualsync`): marks, digest comparisons on a
  schedule and on request become merges run by each mailbox's master
  (protocol-spec/resync.md).  They see this node only through
  :class:`~replicad.cluster.interfaces.ClusterView`.

Known limits of this version: a route change can leave a short gap in a
relayed stream (anti-entropy repairs it); a write's durability counts only
direct peers' acknowledgements.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from replicad.cluster.antientropy import AntiEntropy
from replicad.cluster.catchup import (
    BACKLOG_READ_LIMIT,
    BacklogSize,
    CatchUpProgress,
    progress,
)
from replicad.cluster.changewire import MboxBinding
from replicad.cluster.copies import CopyWaits
from replicad.cluster.links import Links
from replicad.cluster.manualsync import ManualSync
from replicad.cluster.masters import Granularity, MasterCache, MasterDirectory, MasterKey
from replicad.cluster.mastership import Mastership
from replicad.cluster.network import Network, TlsNetwork
from replicad.cluster.resync import Resyncer
from replicad.cluster.root import Claim, RootElection
from replicad.cluster.rootkeeper import RootKeeper
from replicad.cluster.routing import RoutingTable
from replicad.cluster.session import PeerSession, no_code
from replicad.cluster.settings import LOCAL, ClusterSettings, PeerAddress
from replicad.cluster.signals import Broadcast
from replicad.cluster.streams import ChangeStreams
from replicad.cluster.subsync import SubscriptionSync
from replicad.cluster.writeops import SAVE_RETRY_DEPTH, WRITE_DEADLINE, WriteOp
from replicad.cluster.writerouter import WriteRouter
from replicad.errors import ReplicadError
from replicad.protocol import commands as c
from replicad.protocol.connection import CommandReceived
from replicad.store.mailstore import MailStore
from replicad.transport.logfmt import log_event

__all__ = [
    "LOCAL",
    "SAVE_RETRY_DEPTH",
    "WRITE_DEADLINE",
    "ClusterNode",
    "ClusterSettings",
    "Network",
    "PeerAddress",
    "TlsNetwork",
]

log = logging.getLogger("replicad.cluster")

#: A command served in its own task in the link's nursery: (session, tag, command).
Served = Callable[[PeerSession, str, Any], Awaitable[None]]
#: An untagged frame's handler: (session, frame).
Heard = Callable[[PeerSession, Any], Awaitable[None]]


class ClusterNode:
    """A node's membership in the cluster: its parts, wired (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        peers: tuple[PeerAddress, ...],
        store: MailStore,
        network: Network,
        data_dir: Path,
        settings: ClusterSettings | None = None,
    ) -> None:
        self.name = name
        self.store = store
        self.network = network
        self.settings = settings or ClusterSettings()
        view = Broadcast()  # the root or the routes changed
        log_grew = Broadcast()  # the log grew, or a peer acknowledged some of it
        self.links = Links(
            name=name,
            peers=peers,
            store=store,
            network=network,
            settings=self.settings,
            hooks=self,
            view=view,
        )
        self.root = RootKeeper(
            name=name,
            order=tuple(sorted([name, *self.links.peers])),
            data_dir=data_dir,
            settings=self.settings,
            links=self.links,
            flush_masters=self._flush_masters,
            view=view,
        )
        self.masters = Mastership(
            name=name,
            settings=self.settings,
            store=store,
            links=self.links,
            election=self.root.election,
            view=view,
            log_grew=log_grew,
        )
        self.copies = CopyWaits(name)
        self.streams = ChangeStreams(
            name=name,
            store=store,
            links=self.links,
            copies=self.copies,
            order=lambda: self.order,
            log_grew=log_grew,
            gaps_found=lambda: self.resync.scan_soon(),
        )
        self.writes = WriteRouter(
            name=name,
            settings=self.settings,
            store=store,
            links=self.links,
            masters=self.masters,
            streams=self.streams,
            copies=self.copies,
        )
        self.subscriptions = SubscriptionSync(store, self.streams.log_changed)
        self.resync = Resyncer(self, subscriptions=self.subscriptions)
        self.verify = AntiEntropy(self, self.resync, subscriptions=self.subscriptions)
        self.manual = ManualSync(
            name=name,
            store=store,
            links=self.links,
            masters=self.masters,
            resync=self.resync,
            verify=self.verify,
        )
        self._view = view
        #: Open IMAP sessions on this node, told to peers in every PING's OK
        #: (``replicad top``); the node's IMAP server sets it when it runs one.
        self.imap_sessions: Callable[[], int] = lambda: 0
        resync = self.resync
        #: Commands served in their own task, by type (writes: WriteRouter.op_from).
        self._served: dict[type[c.Command], Served] = {
            c.Root: self.root.serve_root,
            c.Master: self.masters.serve_master,
            c.MasterMove: self.masters.serve_master_move,
            c.Sync: functools.partial(resync.serve, resync.serve_sync),
            c.Fetch: functools.partial(resync.serve, resync.serve_fetch),
            c.Have: functools.partial(resync.serve, resync.serve_have),
            c.Update: functools.partial(resync.serve, resync.serve_update),
            c.Resync: functools.partial(resync.serve, resync.serve_resync),
            c.Digest: functools.partial(resync.serve, self.verify.serve_digest),
            c.Mailboxes: functools.partial(resync.serve, self.verify.serve_mailboxes),
            c.Subscriptions: functools.partial(resync.serve, self.subscriptions.serve),
        }
        #: Untagged frames but changes and routes (those the links part takes), by type.
        self._heard: dict[type[c.Untagged], Heard] = {
            c.Ack: self._on_ack,
            c.Epoch: self.root.on_epoch,
            c.SyncData: self._on_resync_data,
            c.FetchData: self._on_resync_data,
            c.DigestData: self._on_verify_data,
            c.MailboxData: self._on_verify_data,
        }

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial, elect; runs until cancelled."""
        self.streams.started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            await self.links.start(nursery)
            nursery.start_soon(self.root.settle)
            nursery.start_soon(self.root.confirm_loop)
            nursery.start_soon(self.resync.scan_loop, self.settings.resync_interval)
            nursery.start_soon(self.verify.check_loop, self.settings.verify_interval)
            log_event(log, logging.INFO, "cluster-started", node=self.name, peers=len(self.peers))
            task_status.started()

    async def set_peers(self, peers: tuple[PeerAddress, ...]) -> tuple[str, ...]:
        """Take a reloaded peer list (SIGHUP); the names whose entry changed
        (:meth:`Links.set_peers <replicad.cluster.links.Links.set_peers>`)."""
        return await self.links.set_peers(peers)

    # -- the API other layers call --

    async def execute(self, op: WriteOp) -> Any:
        """Run a client write at its master (here or forwarded); the master's answer."""
        return await self.writes.execute(op)

    async def master_of(self, key: MasterKey, deadline: float) -> str:
        """The node mastering ``key``, asking the root if needed (waits for a root)."""
        return await self.masters.master_of(key, deadline)

    def forget_master(self, key: MasterKey) -> None:
        self.masters.cache.drop(key)

    async def master_modseq(self, user: str, name: str, deadline: float) -> int | None:
        """The master's HIGHESTMODSEQ of (user, name), for IMAP SELECT to wait
        for (architecture.md §11); None when this node is the master, or the
        master is not a linked peer, does not know the mailbox, or cannot be
        asked before ``deadline`` (one MAILBOXES round trip for the user's bucket)."""
        with trio.move_on_at(deadline):
            try:
                master = await self.masters.master_of(self.masters.key(user, name), deadline)
                session = self.links.sessions.get(master)
                if master == self.name or session is None:
                    return None
                state = await self.verify.mailbox_of(session, user, name)
            except ReplicadError:
                return None
            return state.highestmodseq if state is not None else None
        return None

    async def move_master(
        self, user: str, mailbox: str, dest: str, *, sender: str | None = None
    ) -> c.MasterOk:
        """Make ``dest`` the master of (user, mailbox) without failing writes (seed 001)."""
        return await self.masters.move_master(user, mailbox, dest, sender=sender)

    def log_changed(self) -> None:
        """New entries are in the log: wake every peer's pump."""
        self.streams.log_changed()

    async def sync(
        self, users: list[str] | None, peer: str | None, *, full: bool = False
    ) -> dict[str, Any]:
        """``replicad sync`` (:meth:`replicad.cluster.manualsync.ManualSync.sync`)."""
        return await self.manual.sync(users, peer, full=full)

    async def verify_mailboxes(self, users: list[str] | None) -> dict[str, Any]:
        """``replicad verify``: digests compared with every linked peer (I8)."""
        return await self.manual.verify_mailboxes(users)

    async def dsync_status(self) -> dict[str, Any]:
        """``replicad replicator dsync-status``."""
        return await self.manual.dsync_status()

    # -- what the parts own, by their old names --

    @property
    def peers(self) -> dict[str, PeerAddress]:
        return self.links.peers

    @property
    def sessions(self) -> dict[str, PeerSession]:
        return self.links.sessions

    @property
    def routing(self) -> RoutingTable:
        return self.links.routing

    @property
    def election(self) -> RootElection:
        return self.root.election

    @property
    def order(self) -> tuple[str, ...]:
        """Every node this node knows of, in name order (grows with nodes reached)."""
        return self.root.election.order

    @property
    def cache(self) -> MasterCache:
        return self.masters.cache

    @property
    def directory(self) -> MasterDirectory | None:
        return self.masters.directory

    @property
    def granularity(self) -> Granularity:
        return self.settings.granularity

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start (admin ``cluster_status``, metrics)."""
        streams = self.streams
        return {
            "saves": self.writes.recent_saves.executed,
            "changes_applied": streams.changes_applied,
            "changes_sent": streams.changes_sent,
            "changes_oversized": streams.changes_oversized,
            "changes_held_back": streams.changes_held_back,
            "changes_refused_skew": streams.changes_refused_skew,
            "forwarded": self.writes.forwarded,
        }

    # -- wiring: what the links hand over (replicad.cluster.links.LinkHooks) --

    def gossip_claim(self) -> Claim | None:
        return self.root.gossip_claim()

    def view_changed(self) -> None:
        """The reachable nodes may have changed: the root election, the root's
        directory and the writes waiting for copies follow."""
        reachable = self.links.routing.reachable()
        self.root.view_changed(reachable)
        self.masters.forget_unreachable(reachable)
        self.copies.reachable(frozenset(self.links.sessions) | {self.name})
        self._view.fire()

    def copies_filled(self, peer: str, seqs: Sequence[int]) -> None:
        if seqs:
            self.copies.filled(peer, seqs)

    def link_up(self, session: PeerSession, nursery: trio.Nursery) -> None:
        self.root.introduce(session)
        nursery.start_soon(self.streams.pump, session)
        nursery.start_soon(self.streams.applier, session)
        nursery.start_soon(self.streams.persist_acks, session)
        nursery.start_soon(self.links.pinger, session)
        nursery.start_soon(self.resync.worker, session)

    def link_gone(self, peer: str) -> None:
        self.root.link_gone(peer)

    async def command(
        self, session: PeerSession, event: CommandReceived, nursery: trio.Nursery
    ) -> None:
        cmd, tag = event.command, event.tag
        if isinstance(cmd, c.Ping):
            await session.reply_ok(tag, c.Pong(self.imap_sessions()))
            return
        if isinstance(cmd, c.Mbox):
            # Bound synchronously: the frames that follow use the id at once.
            session.in_ids[cmd.id] = MboxBinding(cmd.user, cmd.name, cmd.guid)
            await session.reply_ok(tag)
            return
        served = self._served.get(type(cmd))
        if served is not None:
            nursery.start_soon(served, session, tag, cmd)
            return
        try:
            op = self.writes.op_from(session, cmd)
        except ReplicadError as exc:
            await session.reply_no(tag, no_code(exc), str(exc))
            return
        if op is None:
            await session.reply_no(tag, "UNSUPPORTED", f"{cmd.VERB} is not served yet")
            return
        nursery.start_soon(self.writes.serve_write, session, tag, op)

    async def change(self, session: PeerSession, change: c.Change) -> None:
        await self.streams.receive(session, change)

    async def untagged(self, session: PeerSession, data: c.Untagged) -> None:
        heard = self._heard.get(type(data))
        if heard is not None:
            await heard(session, data)

    async def _on_ack(self, session: PeerSession, data: c.Ack) -> None:
        await self.streams.on_ack(session, data.seq, frozenset(data.refused))

    async def _on_resync_data(self, session: PeerSession, data: c.Untagged) -> None:
        self.resync.on_data(session, data)

    async def _on_verify_data(self, session: PeerSession, data: c.Untagged) -> None:
        self.verify.on_data(session, data)

    def _flush_masters(self, epoch: int, root_here: bool) -> None:
        self.masters.flush(epoch, root_here)

    # -- status --

    async def status(self) -> dict[str, Any]:
        """Membership, root and per-peer replication state (admin ``cluster_status``)."""
        election = self.root.election
        claim = election.claim
        reachable = self.links.routing.reachable()
        head = await self.store.log_head()
        peers = await self._peer_rows(reachable, head)
        marks = await self.store.resync_marks()
        for row in peers:
            mine = [m for m in marks if m.peer == row["name"]]
            row["resync"] = len(mine)  # mailboxes marked for resync with this peer
            row["resync_reasons"] = sorted({m.reason for m in mine})
        # The root shows its directory (every assignment of its epoch); other
        # nodes show the masters they have cached.
        directory = self.masters.directory
        known = (
            [(a.key, a.node) for a in directory.assignments()]
            if directory is not None
            else self.masters.cache.entries()
        )
        masters = [{"user": k.user, "mailbox": k.mailbox, "master": node} for k, node in known]
        masters_by_node: dict[str, int] = {}
        for _key, node in known:
            masters_by_node[node] = masters_by_node.get(node, 0) + 1
        level = self.settings.durability
        return {
            "node": self.name,
            "root": election.root,
            "masters_known": masters,
            "epoch": claim.epoch if claim else 0,
            "phase": election.phase.value,
            "masters": len(self.masters.cache.keys_mastered_by(self.name)),
            "peers": peers,
            "stats": self.stats,
            "imap_sessions": self.imap_sessions(),
            # What `replicad top` needs besides the above (it warns from them):
            "masters_by_node": masters_by_node,  # mailboxes per master, as far as known here
            "max_outbox": self.store.log.max_lag,  # cluster.max_outbox
            "cluster_size": len(self.order),
            "durability": {"level": level.name, "copies": level.copies},
            "user_durability": [
                {"user": user, "level": lv.name, "copies": lv.copies}
                for user, lv in sorted(self.settings.user_durability.items())
            ],
        }

    async def _peer_rows(self, reachable: frozenset[str], head: int) -> list[dict[str, Any]]:
        """One row per configured or reachable node: link, route, outbox and lag."""
        routing = self.links.routing
        rows: list[dict[str, Any]] = []
        for name in sorted((set(self.peers) | reachable) - {self.name}):
            session = self.sessions.get(name)
            route = routing.route(name)
            # Only configured peers have an outbox (changes stream over direct links).
            cursor = (
                session.outbox.acked
                if session is not None
                else await self.store.log_cursor(name)
                if name in self.peers
                else None
            )
            rows.append(
                {
                    "name": name,
                    "link": "up" if session else "down",
                    "reachable": name in reachable,
                    "via": route.next_hop if route else None,
                    "rtt_ms": round(session.rtt * 1000, 2) if session and session.rtt else None,
                    # As the peer said in its last PING reply (direct links only).
                    "imap_sessions": session.peer_imap_sessions if session else None,
                    "outbox": max(0, head - cursor) if cursor is not None else None,
                    "acked": cursor,  # the last log entry the peer acknowledged
                    "lag_s": self.streams.lag_seconds(name, head, cursor),
                    "lag_p50_ms": _percentile_ms(session.lag, 0.50) if session else None,
                    "lag_p99_ms": _percentile_ms(session.lag, 0.99) if session else None,
                    "catchup": await self._catch_up(name, cursor, head),
                }
            )
        return rows

    async def _catch_up(self, peer: str, cursor: int | None, head: int) -> dict[str, Any] | None:
        """What ``peer`` has left to catch up on, how fast it goes, and an ETA
        (replicad.cluster.catchup); None if it has nothing left."""
        if cursor is None:
            return None
        gaps = len(await self.store.gapped(peer))
        if cursor >= head and not gaps:
            return None
        entries, octets, read = 0, 0, 0
        if cursor < head:
            entries, octets, read = await self.store.backlog_size(cursor, BACKLOG_READ_LIMIT)
        rate = self.streams.ack_rates.get(peer)
        now = trio.current_time()
        done: CatchUpProgress | None = progress(
            BacklogSize(entries, octets, read), rate.per_second(now) if rate else None, gaps
        )
        return done.to_json() if done is not None else None


def _percentile_ms(samples: deque[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)
