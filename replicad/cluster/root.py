"""Root selection and failover with epochs (seed 001 "Mailbox master", docs/architecture.md §6).

One node per connected part of the cluster is the *root*: it hands out
mailbox masters.  Every root rules under an *epoch*, a number that only
grows; everything a root says carries its epoch, and a node ignores what
comes from an older epoch (fencing a stale root).

Choosing the root, deterministically from what a node knows:

1. Every node gossips the claim it follows, ``(root, epoch)``.  Among the
   claims whose root is reachable, the highest epoch wins (ties: the root
   earlier in the configured order).  An incumbent root therefore stays
   root while it is reachable: a restarted node (say the old root) adopts
   the claim it hears instead of taking over blindly.
2. With no valid claim (the root died or was never chosen), the first
   reachable node in the configured order becomes root with an epoch above
   every epoch it has seen.  A node that has just started waits for
   ``settle()`` before electing itself, so it can first hear the claims of
   a running cluster.

Failover as the seed describes it: when the root changes, every node
flushes its master cache and drops its own master status
(:class:`FlushMasters`), then acknowledges the new root's announcement;
the new root answers requests only once every reachable node has
acknowledged (:attr:`RootElection.ready`).

Pure: inputs are method calls, outputs are the returned actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

#: Epochs a node accepts: an epoch at most ``MAX_EPOCH_STEP`` above the
#: highest this node has seen, and never above ``MAX_EPOCH``.  Legitimate
#: epochs grow by one per election; a peer claiming a far higher one is
#: broken or hostile, and following it would let it brick the cluster (an
#: epoch near 2**63 leaves no epoch above it to elect a root with).
MAX_EPOCH = 1 << 53
MAX_EPOCH_STEP = 1_000_000


def plausible_epoch(epoch: int, highest_seen: int) -> bool:
    """Whether a peer's epoch claim may be believed (see MAX_EPOCH_STEP)."""
    return 0 < epoch <= min(MAX_EPOCH, highest_seen + MAX_EPOCH_STEP)


@dataclass(frozen=True, slots=True, order=True)
class Claim:
    epoch: int
    root: str


@dataclass(frozen=True, slots=True)
class FlushMasters:
    """Drop every cached master and every mastership of this node (new epoch)."""

    epoch: int


@dataclass(frozen=True, slots=True)
class AnnounceRoot:
    """Send ROOT(epoch) to ``to``: this node is root."""

    to: frozenset[str]
    epoch: int


@dataclass(frozen=True, slots=True)
class AckRoot:
    """Send ROOT-ACK(epoch) to ``root``: masters flushed."""

    root: str
    epoch: int


Action = FlushMasters | AnnounceRoot | AckRoot


class Phase(Enum):
    SETTLING = "settling"  # just started: listening for claims before electing
    WAITING = "waiting"  # chose a root, waiting for its announcement
    CONFIRMING = "confirming"  # this node is root; waiting for acknowledgements
    READY = "ready"  # a root is in charge (this node or another)


class RootElection:
    """The root-selection state machine of one node."""

    def __init__(self, me: str, order: tuple[str, ...], last_epoch: int = 0) -> None:
        if me not in order:
            raise ValueError(f"node {me!r} is not in the cluster order {order!r}")
        self.me = me
        self.order = order
        self.max_epoch = last_epoch  # persisted by the caller: epochs never repeat
        self.phase = Phase.SETTLING
        self.claim: Claim | None = None  # the root this node follows (or is)
        self._reachable: frozenset[str] = frozenset({me})
        self._claims: dict[str, Claim] = {}  # what each reachable peer follows
        self._pending_acks: set[str] = set()
        self._announced: frozenset[str] = frozenset()  # nodes told of this node's epoch
        self._flushed_for: int | None = None
        # ROOT announcements received, kept even when their root was not yet
        # reachable: a node that adopts the claim later must not wait for an
        # announcement that already came (it would never come again).
        self._announcements: set[Claim] = set()
        # The claim this node followed until its root became unreachable.
        # Claims older than it are stale: that root had been replaced, so it
        # is never followed again (simulator seed 26); a new epoch starts.
        self._lost: Claim | None = None

    # -- queries --

    @property
    def root(self) -> str | None:
        """The root in charge, or None while none is (requests must wait)."""
        return self.claim.root if self.claim and self.phase is Phase.READY else None

    @property
    def epoch(self) -> int:
        return self.claim.epoch if self.claim else 0

    @property
    def is_root(self) -> bool:
        return self.phase is Phase.READY and self.claim is not None and self.claim.root == self.me

    @property
    def pending_acks(self) -> frozenset[str]:
        return frozenset(self._pending_acks)

    def gossip(self) -> Claim | None:
        """The claim to tell peers (None while settling).

        A node whose root became unreachable keeps telling the claim it lost:
        that epoch is what tells a stale root (one the others had replaced) to
        start a newer epoch instead of being followed again.
        """
        return self.claim or self._lost

    # -- inputs --

    def settle(self) -> list[Action]:
        """The start-up grace period is over: elect if nobody else rules."""
        if self.phase is Phase.SETTLING:
            self.phase = Phase.WAITING
        return self._decide()

    def view_changed(self, reachable: frozenset[str]) -> list[Action]:
        reachable = reachable | {self.me}
        if not reachable <= set(self.order):
            # A node reached only through another one (not configured here) is
            # part of the cluster all the same.  The runtime orders nodes by
            # name, so inserting in name order keeps every node's order equal.
            self.order = tuple(sorted({*self.order, *reachable}))
        self._reachable = reachable
        self._claims = {n: c for n, c in self._claims.items() if n in reachable}
        actions: list[Action] = []
        if self.claim is not None and self.claim.root == self.me:
            self._pending_acks &= reachable
            # A node that left and came back may have restarted: tell it again.
            self._announced &= reachable
            new = (reachable - {self.me}) - self._announced
            if new:
                # Newcomers must flush their caches before trusting this root.
                self._announced |= new
                if self.phase is Phase.CONFIRMING:
                    self._pending_acks |= new
                actions.append(AnnounceRoot(frozenset(new), self.claim.epoch))
        return actions + self._decide()

    def claim_heard(self, node: str, claim: Claim | None) -> list[Action]:
        """A reachable peer told us which root it follows."""
        if node not in self._reachable:
            return []
        if claim is None:
            self._claims.pop(node, None)
        else:
            self._claims[node] = claim
            self.max_epoch = max(self.max_epoch, claim.epoch)
        return self._decide()

    def root_announced(self, root: str, epoch: int) -> list[Action]:
        """ROOT(epoch) arrived from ``root``."""
        self.max_epoch = max(self.max_epoch, epoch)
        if self.claim is not None and epoch < self.claim.epoch:
            return []  # a stale root: fenced
        self._claims[root] = Claim(epoch, root)
        self._announcements.add(Claim(epoch, root))
        actions = self._decide()
        if self.claim == Claim(epoch, root) and root != self.me:
            actions += self._flush(epoch)
            actions.append(AckRoot(root, epoch))
            self.phase = Phase.READY
        return actions

    def root_acked(self, node: str, epoch: int) -> list[Action]:
        if self.claim is None or self.claim.root != self.me or epoch != self.claim.epoch:
            return []
        self._pending_acks.discard(node)
        if self.phase is Phase.CONFIRMING and not self._pending_acks:
            self.phase = Phase.READY
        return []

    # -- decision --

    def _decide(self) -> list[Action]:
        if self.claim is not None and self.claim.root not in self._reachable:
            self._lost = max(self._lost or self.claim, self.claim)
        floor = self._lost.epoch if self._lost is not None else 0
        valid = [c for c in self._claims.values() if c.root in self._reachable and c.epoch >= floor]
        if self.claim is not None and self.claim.root in self._reachable:
            if (
                self.claim.root == self.me
                and self.claim.epoch < self.max_epoch
                and not any(c.epoch > self.claim.epoch for c in valid)
            ):
                # Others followed a newer root since this one was elected: this
                # claim is stale; start an epoch above every epoch seen.
                return self._adopt(Claim(self.max_epoch + 1, self.me))
            valid.append(self.claim)
        if valid:
            best = max(valid, key=lambda c: (c.epoch, -self.order.index(c.root)))
        elif self.phase is Phase.SETTLING:
            return []
        else:
            first = min(self._reachable, key=self.order.index)
            if first != self.me:
                # Someone else must start the new epoch; wait for its announcement.
                if self.claim is not None and self.claim.root not in self._reachable:
                    self.claim = None
                    self.phase = Phase.WAITING
                return []
            best = Claim(self.max_epoch + 1, self.me)
        if best == self.claim:
            return []
        return self._adopt(best)

    def _adopt(self, claim: Claim) -> list[Action]:
        self.claim = claim
        self.max_epoch = max(self.max_epoch, claim.epoch)
        if claim.root == self.me:
            others = self._reachable - {self.me}
            self._announced = frozenset(others)
            self._pending_acks = set(others)
            self.phase = Phase.CONFIRMING if others else Phase.READY
            return [*self._flush(claim.epoch), AnnounceRoot(frozenset(others), claim.epoch)]
        # Following another root: flush now, acknowledge when its ROOT arrives
        # (or at once, if it arrived before this node could reach the root).
        if claim in self._announcements:
            self.phase = Phase.READY
            return [*self._flush(claim.epoch), AckRoot(claim.root, claim.epoch)]
        self.phase = Phase.WAITING
        return self._flush(claim.epoch)

    def _flush(self, epoch: int) -> list[Action]:
        if self._flushed_for == epoch:
            return []
        self._flushed_for = epoch
        return [FlushMasters(epoch)]
