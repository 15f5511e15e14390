"""Which nodes a node can reach, and through whom (seed 001: "A-B-C with A-C down").

A small distance-vector protocol: every node tells each neighbour (a peer
with a live direct link) the hop count at which it reaches every node, and
routes to a node through the neighbour that offers the fewest hops (ties
broken by node name, so every node decides the same way).  Two classic
guards keep it from counting to infinity: *poisoned reverse* (a route
learnt from a neighbour is announced back to it as unreachable) and a hop
limit (``MAX_HOPS``; a cluster of tens of nodes never needs more).

Peers are trusted for what they are, not for what they say
(protocol-spec/trust.md): a vector can name only nodes of the configured
cluster (``members``), and a neighbour can only claim to reach other nodes
in one hop or more, so no advertisement beats a direct link, and none
invents a node.

Pure and deterministic: links going up or down and vectors received are
the inputs; :meth:`RoutingTable.next_hop`, :meth:`reachable` and the
vectors to announce are the outputs.  The node runtime sends the vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_HOPS = 16
UNREACHABLE = MAX_HOPS + 1


@dataclass(frozen=True, slots=True)
class Route:
    target: str
    next_hop: str
    hops: int


class RoutingTable:
    """Routes of node ``me`` over its live links and its neighbours' vectors."""

    def __init__(self, me: str, members: frozenset[str] | None = None) -> None:
        """``members``: the configured cluster (None: any node, for tests of
        the algorithm alone)."""
        self.me = me
        self._members = members
        self._links: set[str] = set()
        self._vectors: dict[str, dict[str, int]] = {}
        self._routes: dict[str, Route] = {}

    # -- inputs --

    def link_up(self, peer: str) -> bool:
        """A direct authenticated link to ``peer`` is up; True if routes changed."""
        if peer == self.me or peer in self._links or not self._member(peer):
            return False
        self._links.add(peer)
        return self._recompute()

    def link_down(self, peer: str) -> bool:
        """The direct link to ``peer`` is gone; everything learnt through it is dropped."""
        if peer not in self._links:
            return False
        self._links.discard(peer)
        self._vectors.pop(peer, None)
        return self._recompute()

    def receive_vector(self, peer: str, vector: Mapping[str, int]) -> bool:
        """``peer`` announced its hop counts; True if routes changed.

        Vectors from a peer without a live link are ignored (they may be
        late frames of a link that just died).
        """
        if peer not in self._links:
            return False
        self._vectors[peer] = {
            t: h
            for t, h in vector.items()
            # A neighbour is one hop away whatever it says of itself, and no
            # other node is nearer to it than one hop.
            if t != peer and 1 <= h < UNREACHABLE and self._member(t)
        }
        return self._recompute()

    def set_members(self, members: frozenset[str]) -> bool:
        """The configured cluster changed (a reloaded peer list); True if routes changed."""
        self._members = members
        self._vectors = {
            p: {t: h for t, h in v.items() if self._member(t)} for p, v in self._vectors.items()
        }
        return self._recompute()

    def _member(self, node: str) -> bool:
        return self._members is None or node in self._members

    # -- outputs --

    @property
    def links(self) -> frozenset[str]:
        return frozenset(self._links)

    def next_hop(self, target: str) -> str | None:
        """Neighbour to send a frame for ``target`` to; None if unreachable."""
        route = self._routes.get(target)
        return None if route is None else route.next_hop

    def route(self, target: str) -> Route | None:
        return self._routes.get(target)

    def reachable(self) -> frozenset[str]:
        """Every node this one can reach now, itself included."""
        return frozenset(self._routes) | {self.me}

    def advertised(self, neighbour: str, target: str) -> int:
        """Hops at which ``neighbour`` told us it reaches ``target`` (UNREACHABLE if
        it did not, or routes it through us: poisoned reverse).  1 means the
        neighbour has a direct link to ``target``."""
        if neighbour == target:
            return 0
        return self._vectors.get(neighbour, {}).get(target, UNREACHABLE)

    def vector_for(self, neighbour: str) -> dict[str, int]:
        """The vector to announce to ``neighbour`` (with poisoned reverse)."""
        out = {self.me: 0}
        for target, route in self._routes.items():
            out[target] = UNREACHABLE if route.next_hop == neighbour else route.hops
        return out

    # -- computation --

    def _recompute(self) -> bool:
        best: dict[str, Route] = {}
        for neighbour in sorted(self._links):
            candidates = {neighbour: 0, **self._vectors.get(neighbour, {})}
            for target, hops in candidates.items():
                if target == self.me:
                    continue
                total = hops + 1
                if total > MAX_HOPS:
                    continue
                current = best.get(target)
                # Direct links first, then fewest hops, then the smallest name.
                if current is None or (total, neighbour) < (current.hops, current.next_hop):
                    best[target] = Route(target, neighbour, total)
        changed = best != self._routes
        self._routes = best
        return changed
