"""The narrow views the runtime's parts have of a link and of the node around them.

Parts depend on these :class:`typing.Protocol` classes, not on the classes
that implement them (:class:`~replicad.cluster.session.PeerSession`,
:class:`~replicad.cluster.runtime.ClusterNode`), so no part imports the
wiring that builds it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from replicad.cluster.changewire import MboxBinding
from replicad.cluster.masters import Granularity, MasterKey
from replicad.cluster.streamgaps import StreamGaps
from replicad.protocol import commands as c
from replicad.store.mailstore import MailStore


class Peer(Protocol):
    """A live link to a neighbour, as the parts that talk over it see it."""

    @property
    def peer(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    @property
    def gaps(self) -> StreamGaps:
        """What the change stream on this link holds back (streamgaps.py)."""
        ...

    @property
    def in_ids(self) -> Mapping[int, MboxBinding]:
        """The peer's MBOX ids bound on this link (verbs.md MBOX)."""
        ...

    async def request(self, command: c.Command, *, timeout: float = ...) -> Any:
        """Send ``command``; its OK payload, or the error its NO stands for."""
        ...

    def mbox_id(self, user: str, name: str, guid: bytes) -> tuple[int, bool]: ...

    async def send_mbox(self, mbox: c.Mbox) -> None: ...

    async def send_untagged(self, data: c.Untagged) -> None: ...

    async def reply_ok(self, tag: str, payload: c.Record | None = None) -> None: ...

    async def reply_no(self, tag: str, code: str, text: str) -> None: ...


class MasterLookup(Protocol):
    """Who masters what, as the resync layer asks it (architecture.md §6, Masters)."""

    @property
    def name(self) -> str:
        """This node."""
        ...

    @property
    def granularity(self) -> Granularity: ...

    async def master_of(self, key: MasterKey, deadline: float) -> str:
        """The node mastering ``key``, asking the root if needed."""
        ...

    def forget_master(self, key: MasterKey) -> None:
        """Drop a cached answer that may be stale (the next lookup asks the root)."""
        ...


class ClusterView(MasterLookup, Protocol):
    """What resync and anti-entropy need of the node around them."""

    @property
    def store(self) -> MailStore: ...

    @property
    def order(self) -> tuple[str, ...]:
        """Every node of the cluster this node knows of, in name order."""
        ...

    @property
    def sessions(self) -> Mapping[str, Peer]:
        """The live links, by peer name."""
        ...

    def log_changed(self) -> None:
        """New entries are in the change log: wake every peer's stream."""
        ...

    def copies_filled(self, peer: str, seqs: Sequence[int]) -> None:
        """``peer`` now holds log entries ``seqs`` its stream held back (a
        resync delivered them): writes waiting for its copy may go (I1)."""
        ...


class ResyncQueue(Protocol):
    """Where mailboxes wait for a resync this node runs as their master."""

    def enqueue(self, peer: str, mailboxes: Sequence[bytes], *, full: bool = False) -> None: ...

    async def settle_if_deleted_on(self, session: Peer, mailbox: bytes) -> bool:
        """Delete the local copy if the peer deleted that mailbox; whether it did."""
        ...
