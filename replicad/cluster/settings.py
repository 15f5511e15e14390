"""What a node is told about its cluster: settings and peers' addresses (architecture.md §6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from replicad.cluster.durability import DurabilityLevel
from replicad.cluster.masters import Granularity

LOCAL: Final = DurabilityLevel("local", 1)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    ping_interval: float = 1.0
    dead_after: float = 5.0
    settle: float = 1.5
    backoff_min: float = 0.1
    backoff_max: float = 3.0
    #: Seconds between reachability probes of a peer whose link is down
    #: (replicad.cluster.redial); 0: no probes, dials on the backoff only.
    probe_interval: float = 0.1
    granularity: Granularity = Granularity.MAILBOX
    durability: DurabilityLevel = LOCAL
    user_durability: dict[str, DurabilityLevel] = field(default_factory=dict)
    compress: bool = True
    #: How often resync marks are turned into work (replicad.cluster.resync).
    resync_interval: float = 1.0
    #: How often every peer's digests are compared (anti-entropy); 0: never.
    verify_interval: float = 300.0
    #: Nodes of the cluster besides this node and its peers: reached only
    #: through others (a chain).  No node outside members and peers is
    #: routed to or followed as root (protocol-spec/trust.md).
    members: frozenset[str] = frozenset()

    def level_for(self, user: str) -> DurabilityLevel:
        """The durability level of ``user``'s writes: an override, else the node's (I1)."""
        return self.user_durability.get(user, self.durability)


@dataclass(frozen=True, slots=True)
class PeerAddress:
    name: str
    host: str
    port: int
