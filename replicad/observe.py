"""What a node shows its observers: one snapshot read by ``/metrics``, ``/health``
and the systemd ``STATUS=`` line.

The runtime already keeps what an operator asks about (``ClusterNode.status()``,
its ``stats``, the resync and verify counters, the store's usage and group-commit
statistics); this module reads it in one place, at the moment someone looks,
instead of having every layer push numbers somewhere.  A snapshot is plain data,
so health rules (:mod:`replicad.health`) are pure functions of it and the
Prometheus exposition (:mod:`replicad.metrics`) never awaits while rendering.

The one thing the runtime did not track is traffic per peer: every
:class:`~replicad.transport.link.Link` counts its bytes, and
:class:`MeteredNetwork` hands each new link to a :class:`LinkMeter`, which
sums them per peer across reconnections.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from replicad import __version__
from replicad.cluster.durability import DurabilityLevel
from replicad.config import NodeConfig
from replicad.protocol.connection import LinkConfig
from replicad.store.mailstore import MailStore
from replicad.transport.link import Link, LinkTraffic
from replicad.transport.tls import TlsContexts

if TYPE_CHECKING:
    from replicad.cluster.network import Network
    from replicad.cluster.runtime import ClusterNode
    from replicad.cluster.settings import PeerAddress


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "stopping"


@dataclass(slots=True)
class NodeState:
    """The node's own lifecycle, which no other object holds."""

    phase: Phase = Phase.STARTING
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class PeerTraffic:
    sent: int
    received: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything observers read about the node at one moment."""

    node: str
    version: str
    phase: Phase
    uptime: float
    store_used_bytes: int
    store_map_size: int
    fs_free_bytes: int | None  # None: the data directory cannot be stat'ed
    fs_size_bytes: int | None
    commits: int  # group-commit transactions since start
    write_operations: int
    log_head: int
    max_message_size: int
    max_outbox: int
    #: ("node", level) then ("user NAME", level) for each per-user override.
    durability: tuple[tuple[str, DurabilityLevel], ...]
    configured_peers: tuple[str, ...]
    #: ``ClusterNode.status()``; None on a node without peers.
    cluster: dict[str, Any] | None
    #: ``Resyncer.status()`` (running, queued, done, failed, merged_here).
    resync: dict[str, Any] | None
    verify_runs: int
    verify_found: int
    traffic: dict[str, PeerTraffic]

    @property
    def linked_peers(self) -> list[str]:
        """Peers with a live direct link (what durability levels count)."""
        if self.cluster is None:
            return []
        return [p["name"] for p in self.cluster.get("peers", []) if p.get("link") == "up"]
    #: Why writes fail for lack of room (the map at node.map_size, or the
    #: disk); None while they do not (replicad.store.writer).
    store_full: str | None = None
    #: The node's TLS certificates in force (none on a single node).
    certificates: tuple[CertificateExpiry, ...] = ()


@dataclass(frozen=True, slots=True)
class CertificateExpiry:
    """One certificate's end, as seen at the snapshot: ``cert`` is ``node``
    or ``ca`` (see :class:`~replicad.transport.tls.CertificateValidity`)."""

    cert: str
    path: str
    not_after: dt.datetime
    #: Negative once it has expired.
    seconds_left: float


# --- bytes per peer ------------------------------------------------------------------


class LinkMeter:
    """Bytes per peer over every link this node has had since it started.

    Each link's :class:`LinkTraffic` is kept (a few bytes) with a weak
    reference to its link; once the link object is gone its counts are final
    and are folded into the peer's base, so nothing is counted twice or lost
    across reconnections.
    """

    def __init__(self) -> None:
        self._base: dict[str, PeerTraffic] = {}
        self._live: list[tuple[weakref.ref[Link], str, LinkTraffic]] = []

    def track(self, link: Link) -> None:
        self._live.append((weakref.ref(link), link.peer, link.traffic))

    def totals(self) -> dict[str, PeerTraffic]:
        live: list[tuple[weakref.ref[Link], str, LinkTraffic]] = []
        for ref, peer, traffic in self._live:
            if ref() is None:
                self._base[peer] = _add(self._base.get(peer), traffic)
            else:
                live.append((ref, peer, traffic))
        self._live = live
        totals = dict(self._base)
        for _ref, peer, traffic in live:
            totals[peer] = _add(totals.get(peer), traffic)
        return totals


def _add(total: PeerTraffic | None, traffic: LinkTraffic) -> PeerTraffic:
    if total is None:
        return PeerTraffic(traffic.sent, traffic.received)
    return PeerTraffic(total.sent + traffic.sent, total.received + traffic.received)


class MeteredNetwork:
    """A :class:`~replicad.cluster.network.Network` whose links are metered.

    Wraps the node's real network, so the cluster runtime needs no metrics
    code: every link it dials or accepts passes through here first.
    """

    def __init__(self, inner: Network, meter: LinkMeter) -> None:
        self.inner = inner
        self.meter = meter
        self.cluster = inner.cluster

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link:
        link = await self.inner.dial(peer, config)
        self.meter.track(link)
        return link

    async def probe(self, peer: PeerAddress) -> bool:
        return await self.inner.probe(peer)

    async def serve(
        self,
        handler: Callable[[Link], Awaitable[None]],
        config: LinkConfig,
        known_peers: Collection[str],
        task_status: trio.TaskStatus[Any],
    ) -> None:
        async def metered(link: Link) -> None:
            self.meter.track(link)
            await handler(link)

        await self.inner.serve(metered, config, known_peers, task_status)


# --- taking a snapshot -----------------------------------------------------------------


class Observer:
    """Takes :class:`Snapshot` s of one running node."""

    def __init__(
        self,
        config: NodeConfig,
        store: MailStore,
        cluster: ClusterNode | None,
        meter: LinkMeter,
        state: NodeState,
    ) -> None:
        self.config = config
        self.store = store
        self.cluster = cluster
        self.meter = meter
        self.state = state
        #: The TLS contexts in force (replicad.node replaces them on SIGHUP).
        self.tls: TlsContexts | None = None

    def certificates(self) -> tuple[CertificateExpiry, ...]:
        """The end of each certificate in force, from now."""
        if self.tls is None:
            return ()
        now = dt.datetime.now(dt.UTC)
        return tuple(
            CertificateExpiry(c.cert, str(c.path), c.not_after, c.seconds_left(now))
            for c in self.tls.certificates
        )

    async def snapshot(self) -> Snapshot:
        config, store, cluster = self.config, self.store, self.cluster
        usage = store.usage()
        free, size = _filesystem(config.node.data_dir)
        durability = (
            ("node", config.node.durability),
            *((f"user {user}", level) for user, level in config.cluster.user_durability),
        )
        status = await cluster.status() if cluster is not None else None
        return Snapshot(
            node=config.name,
            version=__version__,
            phase=self.state.phase,
            uptime=time.monotonic() - self.state.started,
            store_used_bytes=usage.used_bytes,
            store_map_size=usage.map_size,
            store_full=usage.full,
            fs_free_bytes=free,
            fs_size_bytes=size,
            commits=store.writer.stats.batches,
            write_operations=store.writer.stats.operations,
            log_head=await store.log_head(),
            max_message_size=config.admin.max_message_size,
            max_outbox=config.cluster.max_outbox,
            durability=durability,
            configured_peers=tuple(p.name for p in config.peers),
            cluster=status,
            resync=dict(cluster.resync.status()) if cluster is not None else None,
            verify_runs=cluster.verify.runs if cluster is not None else 0,
            verify_found=cluster.verify.found if cluster is not None else 0,
            traffic=self.meter.totals(),
            certificates=self.certificates(),
        )


def _filesystem(path: Path) -> tuple[int | None, int | None]:
    """(bytes free to the node, size) of the file system holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None, None
    # f_bavail, not f_bfree: the blocks reserved for root are not the node's.
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
