"""Cluster records: root election, routes and masters (verbs.md §2, docs/architecture.md §6).

``* EPOCH`` and ROOT (the root's claim and announcement), ``* ROUTES`` (the
distance vector), MASTER and MASTER-MOVE with their OK payload.  Wire
names: :mod:`replicad.protocol.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicad.protocol.fields import (
    EPOCH_T,
    MAX_NAME_LEN,
    NODE,
    USER,
    ListOf,
    Text,
    UInt,
)
from replicad.protocol.records import (
    Command,
    Nested,
    Record,
    Untagged,
)


@dataclass(frozen=True, slots=True)
class Epoch(Untagged):
    """Gossip of the root claim the sender follows (root election, docs/architecture.md §6)."""

    VERB = "EPOCH"
    SCHEMA = (EPOCH_T, NODE)
    epoch: int
    root: str


@dataclass(frozen=True, slots=True)
class Root(Command):
    """The root's announcement; OK means "master cache flushed, masters dropped"."""

    VERB = "ROOT"
    SCHEMA = (EPOCH_T, NODE)
    epoch: int
    root: str


@dataclass(frozen=True, slots=True)
class Route(Record):
    SCHEMA = (NODE, UInt(0, 255))
    node: str
    hops: int


@dataclass(frozen=True, slots=True)
class Routes(Untagged):
    """The sender's distance vector (replicad.cluster.routing)."""

    VERB = "ROUTES"
    SCHEMA = (ListOf(Nested(Route), 4096),)
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class MasterOk(Record):
    SCHEMA = (NODE, EPOCH_T)
    node: str
    epoch: int


@dataclass(frozen=True, slots=True)
class Master(Command):
    """Who masters (user, mailbox)?  ``mailbox`` "" names the user's namespace."""

    VERB = "MASTER"
    SCHEMA = (USER, Text(0, MAX_NAME_LEN))
    REPLY = MasterOk
    user: str
    mailbox: str


@dataclass(frozen=True, slots=True)
class MasterMove(Command):
    """Make ``node`` master of (user, mailbox); forwarded until it reaches the master."""

    VERB = "MASTER-MOVE"
    SCHEMA = (USER, Text(0, MAX_NAME_LEN), NODE)
    REPLY = MasterOk
    user: str
    mailbox: str
    node: str
