"""Mailbox masters: who assigns UIDs and MODSEQs for what (seed 001 "Mailbox master").

A *master key* names the unit of mastership.  Granularity (configurable):

- ``mailbox`` (default): one master per (user, mailbox name) for message
  operations, plus one per user for the namespace (create, rename, delete),
  so that two nodes can never create the same name concurrently;
- ``user``: one master per user for everything;
- ``global``: one master for the whole cluster.

The root keeps a :class:`MasterDirectory` (key -> node, stamped with its
epoch) and hands out masters on request, preferring the requesting node
(the node where mail for a mailbox arrives is the natural master).  Every
node keeps a :class:`MasterCache`; both are flushed when the root changes
(:mod:`replicad.cluster.root`).  Assignments from an older epoch are
ignored (fencing).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

NAMESPACE = ""  # the pseudo-mailbox name of a user's namespace key


class Granularity(Enum):
    MAILBOX = "mailbox"
    USER = "user"
    GLOBAL = "global"


@dataclass(frozen=True, slots=True, order=True)
class MasterKey:
    user: str
    mailbox: str  # NAMESPACE for namespace operations, or at user/global granularity

    def __str__(self) -> str:
        if self.user == "*":
            return "*"
        return self.user if self.mailbox == NAMESPACE else f"{self.user}/{self.mailbox}"


def master_key(granularity: Granularity, user: str, mailbox: str | None) -> MasterKey:
    """The key governing an operation on ``mailbox`` (None: a namespace operation)."""
    if granularity is Granularity.GLOBAL:
        return MasterKey("*", NAMESPACE)
    if granularity is Granularity.USER or mailbox is None:
        return MasterKey(user, NAMESPACE)
    return MasterKey(user, mailbox)


@dataclass(frozen=True, slots=True)
class Assignment:
    key: MasterKey
    node: str
    epoch: int


class MasterDirectory:
    """The root's table of masters for its epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._masters: dict[MasterKey, str] = {}

    def lookup(self, key: MasterKey, requester: str, reachable: frozenset[str]) -> Assignment:
        """The master of ``key``; assigns ``requester`` if none is set or it is unreachable.

        Reassigning away from an unreachable master is what keeps a partition
        writable (I7); the divergence it allows is repaired by resync.
        """
        node = self._masters.get(key)
        if node is None or node not in reachable:
            node = requester
            self._masters[key] = node
        return Assignment(key, node, self.epoch)

    def move(self, key: MasterKey, to: str) -> Assignment:
        """Record a completed MASTER-MOVE."""
        self._masters[key] = to
        return Assignment(key, to, self.epoch)

    def forget_node(self, node: str) -> list[MasterKey]:
        """Drop every assignment to ``node`` (it left this root's part of the cluster)."""
        keys = [k for k, n in self._masters.items() if n == node]
        for k in keys:
            del self._masters[k]
        return keys

    def count_by_node(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for node in self._masters.values():
            out[node] = out.get(node, 0) + 1
        return out

    def assignments(self) -> list[Assignment]:
        return [Assignment(k, n, self.epoch) for k, n in sorted(self._masters.items())]


class MasterCache:
    """A node's cache of masters learnt from the root or from forwarded replies."""

    def __init__(self) -> None:
        self.epoch = 0
        self._masters: dict[MasterKey, str] = {}

    def flush(self, epoch: int) -> None:
        """A new root epoch: forget everything (seed 001 root failover)."""
        self.epoch = max(self.epoch, epoch)
        self._masters.clear()

    def learn(self, assignment: Assignment) -> bool:
        """Remember an assignment; False (ignored) if it comes from an older epoch."""
        if assignment.epoch < self.epoch:
            return False
        if assignment.epoch > self.epoch:
            self.flush(assignment.epoch)
        self._masters[assignment.key] = assignment.node
        return True

    def get(self, key: MasterKey) -> str | None:
        return self._masters.get(key)

    def drop(self, key: MasterKey) -> None:
        self._masters.pop(key, None)

    def entries(self) -> list[tuple[MasterKey, str]]:
        """Every cached (key, master), sorted by key."""
        return sorted(self._masters.items())

    def keys_mastered_by(self, node: str) -> list[MasterKey]:
        return sorted(k for k, n in self._masters.items() if n == node)
