"""The cluster runtime: links, root and masters, forwarding, change streams (architecture.md §6).

This is the trio glue around the pure parts of :mod:`replicad.cluster`
(routing, root election, master directory and cache, outbox, durability)
and :mod:`replicad.protocol`.  One :class:`ClusterNode` per node process:

* **Links.** The node keeps one authenticated link per configured peer: the
  node whose name sorts first dials, the other accepts (so a pair never
  holds two links), with exponential backoff.  Links come from a
  :class:`Network`: mutual TLS (:class:`TlsNetwork`), or the simulator's
  in-memory network (tests/sim).  PING every ``ping_interval``;
  a peer silent for ``dead_after`` is dropped.  ROUTES (distance vectors)
  let a node reach peers it has no direct link to (A-B-C with A-C down).
* **Root.** EPOCH gossip and the ROOT announcement drive
  :class:`~replicad.cluster.root.RootElection`.  A ROOT is flooded hop by
  hop: a node answers OK once it flushed its masters *and* its own
  neighbours answered, so the root's OK from a neighbour stands for every
  node routed through it (the seed's "new root answers only after the
  reachable nodes confirmed").
* **Writes** (the :class:`~replicad.cluster.runtime.ClusterNode` methods the
  admin socket calls) go to the mailbox master: asked from the root,
  cached, and reached hop by hop; each hop re-issues the command on its
  next link with its own tag and MBOX ids (framing.md §5).  The master
  assigns UIDs and MODSEQs in one store transaction that also appends the
  change to its durable log (I1, I3), waits for the durability level's
  acknowledgements, and answers.
* **Change streams.** Per peer, the master streams its log from the peer's
  durable acknowledgement (:class:`~replicad.cluster.outbox.OutboxStream`);
  the peer applies idempotently in order and ACKs cumulatively.
* **Relays.** A node that applies changes from S also logs them (origin S)
  when a neighbour has no direct link to S, and streams them on; a stream
  skips what its peer gets elsewhere.  In a full mesh nothing is relayed.
* **MASTER-MOVE** (:meth:`ClusterNode.move_master`) holds the key's writes
  at the master, drains them, lets the destination catch up, hands over.
* **Autonomy (I7).** A master unreachable from the root's side is replaced
  there; writes a master makes while configured peers are unreachable are
  recorded per (peer, mailbox) as resync marks.
* **Resync** (:mod:`replicad.cluster.resync`, :mod:`~replicad.cluster.antientropy`):
  marks, and digest comparisons on a schedule, become merges run by each
  mailbox's master (protocol-spec/resync.md).  A change that contradicts
  this node's copy (another lineage's, after a partition) is not applied
  but marked.

Known limits of this version: a route change can leave a short gap in a
relayed stream (anti-entropy repairs it); a write's durability counts only
direct peers' acknowledgements.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import trio

from replicad.blob import Blob
from replicad.cluster.antientropy import AntiEntropy
from replicad.cluster.changewire import (
    MboxBinding,
    body_bytes,
    from_wire,
    mailboxes_of,
    to_wire,
)
from replicad.cluster.durability import AckTracker, DurabilityLevel
from replicad.cluster.masters import (
    Assignment,
    Granularity,
    MasterCache,
    MasterDirectory,
    MasterKey,
    master_key,
)
from replicad.cluster.outbox import OutboxStream
from replicad.cluster.resync import ALL_MAILBOXES, STEP_TIMEOUT, Resyncer
from replicad.cluster.root import (
    MAX_EPOCH,
    MAX_EPOCH_STEP,
    AckRoot,
    Action,
    AnnounceRoot,
    Claim,
    FlushMasters,
    Phase,
    RootElection,
    plausible_epoch,
)
from replicad.cluster.routing import RoutingTable
from replicad.errors import (
    AlreadyExistsError,
    BadInputError,
    DurabilityError,
    MailboxDeletedError,
    NoSuchMailboxError,
    NoSuchMessageError,
    OutcomeUnknownError,
    ProtocolError,
    ReplicadError,
    StoreFullError,
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
from replicad.store.changecodec import body_hashes, mailbox_of
from replicad.store.changelog import (
    RESYNC_CONFLICT,
    RESYNC_MISSING,
    RESYNC_OVERSIZED,
    RESYNC_PARTITION,
    RESYNC_REQUESTED,
)
from replicad.store.index import (
    AppendRequest,
    FlagMode,
    is_delivery_guid,
    retry_within_window,
)
from replicad.store.mailstore import MailStore
from replicad.store.records import (
    FlagsChanged,
    MailboxCreated,
    MailboxDeleted,
    MailboxMerged,
    MailboxRenamed,
    MessageAppended,
    MessagesCopied,
    MessagesExpunged,
)
from replicad.store.replica import CLOCK_SKEW, MISSING_MAILBOX
from replicad.transport import Link, TlsContexts, open_link, serve_links
from replicad.transport.gate import HandshakeGate
from replicad.transport.logfmt import log_event
from replicad.uidset import UidSet

log = logging.getLogger("replicad.cluster")

T = TypeVar("T")

NAME_ONLY_GUID: Final = bytes(16)  # MBOX "name only" (verbs.md MBOX)
#: How long a client write may wait for a root, a master or a link before it
#: fails with a temporary error (exit 75).
WRITE_DEADLINE: Final = 15.0
#: Forwarded SAVEs remembered by the master (a retry is recognised by GUID).
RECENT_SAVES: Final = 65536
#: How many latest changes of a mailbox a forwarded SAVE not remembered looks
#: through for its first attempt (made before a restart or a master move).
SAVE_RETRY_DEPTH: Final = 64
# Replication buffers are bounded in changes *and* in octets of bodies
# (stored form, replicad.cluster.changewire.body_bytes), since one body may
# be 64 MiB: counts alone let a catch-up over large attachments hold
# 1,024 x 64 MiB.  Each byte bound lets a single larger change through alone
# (it must be sent some time; the frame limit bounds it).  They are
# constants, not settings: the sender's window must fit the receiver's
# inbox (below), and no handshake field tells one node the other's.
#: Most change records applied in one store transaction.
MAX_APPLY_BURST: Final = 512
#: Most body octets applied in one store transaction: every body of a burst
#: is checked (inflated, hashed) before the write, so this bounds that
#: memory; 16 MiB still commits hundreds of ordinary messages at once (W1).
APPLY_BURST_BYTES: Final = 16 * 1024 * 1024
#: Most received changes waiting to be applied, and most body octets among
#: them; past either the reader stops reading, which is the backpressure on
#: the sender (I9: bounded memory).  A receiver holds at most these, the
#: burst being applied (taken from them) and one frame being read.
MAX_INBOX: Final = 1024
MAX_INBOX_BYTES: Final = 32 * 1024 * 1024
#: While the store is full, a replicated burst is tried again after this
#: long, doubling up to the maximum (no ACK meanwhile).
STORE_FULL_RETRY_MIN: Final = 0.5
STORE_FULL_RETRY_MAX: Final = 10.0
MAX_LAG_SAMPLES: Final = 1000  # per peer, for replication lag percentiles
#: Unacknowledged changes in flight per peer, in changes and in body octets:
#: enough to keep a loopback link busy while the peer commits (W1; 32 MiB is
#: ~250 ms of a 1 Gbit/s link).  Never above the peer's MAX_INBOX /
#: MAX_INBOX_BYTES, or the link can stall (replicad.cluster.outbox, "Deadlock").
OUTBOX_WINDOW: Final = 1024
OUTBOX_WINDOW_BYTES: Final = 32 * 1024 * 1024
#: Changes read from the store per batch, and body octets: what the pump holds
#: in memory at once per peer (plus the frames it queued from them).
OUTBOX_BATCH: Final = 128
OUTBOX_BATCH_BYTES: Final = 8 * 1024 * 1024

if OUTBOX_WINDOW > MAX_INBOX or OUTBOX_WINDOW_BYTES > MAX_INBOX_BYTES:
    raise RuntimeError("the outbox window must fit the receiver's inbox (outbox.py, Deadlock)")


LOCAL: Final = DurabilityLevel("local", 1)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    ping_interval: float = 1.0
    dead_after: float = 5.0
    settle: float = 1.5
    backoff_min: float = 0.1
    backoff_max: float = 3.0
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


# --- how links are made --------------------------------------------------------------


class Network(Protocol):
    """Where links come from: TLS over TCP (:class:`TlsNetwork`), or the
    simulator's in-memory network (tests/sim), which can partition nodes."""

    cluster: str

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link: ...

    async def serve(
        self,
        handler: Callable[[Link], Awaitable[None]],
        config: LinkConfig,
        known_peers: Collection[str],
        task_status: trio.TaskStatus[Any],
    ) -> None: ...


class TlsNetwork:
    """Mutually authenticated TLS links (replicad.transport).

    :attr:`contexts` may be replaced while running (certificates reloaded
    on SIGHUP): every link dialled or accepted afterwards uses the new
    ones; links already up keep theirs.
    """

    def __init__(
        self, contexts: TlsContexts, listen: tuple[str, int], gate: HandshakeGate | None = None
    ) -> None:
        self.contexts = contexts
        self.cluster = contexts.cluster
        self.listen = listen
        self.gate = gate if gate is not None else HandshakeGate()

    async def dial(self, peer: PeerAddress, config: LinkConfig) -> Link:
        return await open_link(peer.host, peer.port, peer.name, self.contexts, config=config)

    async def serve(
        self,
        handler: Callable[[Link], Awaitable[None]],
        config: LinkConfig,
        known_peers: Collection[str],
        task_status: trio.TaskStatus[Any],
    ) -> None:
        host, port = self.listen
        await serve_links(
            lambda: self.contexts,
            handler,
            host=host,
            port=port,
            config=config,
            known_peers=known_peers,
            gate=self.gate,
            task_status=task_status,
        )


# --- what travels between hops: writes by name -------------------------------------


@dataclass(frozen=True, slots=True)
class SaveOp:
    user: str
    mailbox: str
    guid: bytes
    internaldate: int
    flags: tuple[str, ...]
    #: Raw from a client, or stored form as a SAVE carried it (kept as it came).
    body: bytes | Blob
    #: Came over a link: it may be a retry of an attempt whose reply was lost.
    forwarded: bool = False


#: UID -> message GUID as the client's node sees them (forwarded commands, I6).
Expect = tuple[tuple[int, bytes], ...] | None


@dataclass(frozen=True, slots=True)
class CopyOp:
    user: str
    source: str
    dest: str
    uids: UidSet
    expect: Expect = None


@dataclass(frozen=True, slots=True)
class ExpungeOp:
    user: str
    mailbox: str
    uids: UidSet
    expect: Expect = None


@dataclass(frozen=True, slots=True)
class StoreOp:
    user: str
    mailbox: str
    uids: UidSet
    add: tuple[str, ...]
    remove: tuple[str, ...]
    unchangedsince: int | None
    expect: Expect = None


@dataclass(frozen=True, slots=True)
class CreateOp:
    user: str
    name: str


@dataclass(frozen=True, slots=True)
class RenameOp:
    user: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class DeleteOp:
    user: str
    name: str


WriteOp = SaveOp | CopyOp | ExpungeOp | StoreOp | CreateOp | RenameOp | DeleteOp


def key_mailbox(op: WriteOp) -> str | None:
    """The mailbox whose master decides ``op`` (None: the user's namespace)."""
    if isinstance(op, (CreateOp, RenameOp, DeleteOp)):
        return None
    if isinstance(op, CopyOp):
        return op.dest  # the destination assigns the new UIDs
    return op.mailbox


# --- errors <-> NO codes --------------------------------------------------------------


def no_code(exc: ReplicadError) -> str:
    if isinstance(exc, DurabilityError):
        return "DURABILITY"
    if isinstance(exc, UnreachableError):
        return "UNREACHABLE"
    if isinstance(exc, MailboxDeletedError):
        return "DELETED"
    if isinstance(exc, (NoSuchMailboxError,)) or exc.exit_code == 68:
        return "NONEXISTENT"
    if isinstance(exc, AlreadyExistsError):
        return "CONFLICT"
    if isinstance(exc, TemporaryError):
        return "TEMPFAIL"
    if isinstance(exc, BadInputError):
        return "BADINPUT"
    return "FAILED"


def error_from_no(code: str | None, text: str) -> ReplicadError:
    if code == "DURABILITY":
        return DurabilityError(text)
    if code == "NONEXISTENT":
        return NoSuchMailboxError(text)
    if code == "DELETED":
        return MailboxDeletedError(text)
    if code == "CONFLICT":
        return AlreadyExistsError(text)
    if code in ("TEMPFAIL", "UNREACHABLE", "NOTMASTER"):
        return TemporaryError(text)
    if code == "BADINPUT":
        return BadInputError(text)
    return ReplicadError(text)


# --- one link --------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    reply: ReplyReceived | None = None


class PeerSession:
    """One live link to a neighbour and what is bound to it."""

    def __init__(self, node: ClusterNode, link: Link, outbox: OutboxStream) -> None:
        self.node = node
        self.link = link
        self.peer = link.peer
        self.outbox = outbox
        self.in_ids: dict[int, MboxBinding] = {}
        self.out_ids: dict[tuple[str, str, bytes], int] = {}
        self.stream_ids: dict[bytes, int] = {}  # mailbox GUID -> id, for the change stream
        self.last_sent = outbox.acked  # log seq of the last change frame sent
        self.ack_dirty = trio.Event()  # acknowledged position not yet on disk
        self.lag: deque[float] = deque(maxlen=MAX_LAG_SAMPLES)  # write -> peer ack, s
        self.skip_to: dict[int, int] = {}  # ACK of seq s also covers skipped entries up to t
        self._next_out_id = 0
        self.pending: dict[str, _Pending] = {}
        self.window_freed = trio.Event()
        self.last_heard = trio.current_time()
        self.rtt: float | None = None
        self.applied_seq = 0
        self.acked_seq = 0
        self.cancel_scope = trio.CancelScope()
        self.closed = False
        #: Received changes waiting for the applier, with their body octets.
        self.inbox: deque[tuple[c.Change, int]] = deque()
        self.inbox_bytes = 0
        self.peak_inbox_bytes = 0  # the most there ever were (tests assert on it)
        self.inbox_ready = trio.Event()
        self.inbox_space = trio.Event()

    # -- sending --

    async def request(self, command: c.Command, *, timeout: float = WRITE_DEADLINE) -> Any:
        """Send ``command`` and return its OK payload; NO raises the matching error."""
        with trio.move_on_after(timeout) as scope:
            while not self.link.connection.can_send(command):
                if self.closed:
                    raise UnreachableError(f"link to {self.peer} closed")
                await self.window_freed.wait()
            if self.closed:
                raise UnreachableError(f"link to {self.peer} closed")
            try:
                tag = self.link.queue(lambda conn: conn.send_command(command))
            except LinkStateError:
                # Closed by what the reader just took in: nothing was sent.
                raise UnreachableError(f"link to {self.peer} closed") from None
            waiter = self.pending[tag] = _Pending()
            try:
                await self.link.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # Part of it, or all of it, may have reached the peer.
                raise OutcomeUnknownError(f"link to {self.peer} closed") from None
            await waiter.done.wait()
        if scope.cancelled_caught:
            raise TemporaryError(f"{command.VERB} to {self.peer}: no reply in {timeout:g}s")
        reply = waiter.reply
        if reply is None:
            raise OutcomeUnknownError(
                f"link to {self.peer} closed before {command.VERB} was answered"
            )
        if reply.status is c.Status.OK:
            return reply.payload
        raise error_from_no(reply.code, f"{self.peer}: {reply.text}")

    def mbox_id(self, user: str, name: str, guid: bytes) -> tuple[int, bool]:
        """Our id for the mailbox on this link, and whether it is new (send MBOX first)."""
        key = (user, name, guid)
        found = self.out_ids.get(key)
        if found is not None:
            return found, False
        if self._next_out_id > 65535:
            # Rebinding from 0 is allowed (verbs.md MBOX); forget the old bindings.
            self.out_ids.clear()
            self.stream_ids.clear()
            self._next_out_id = 0
        mid = self._next_out_id
        self._next_out_id += 1
        self.out_ids[key] = mid
        return mid, True

    def fail_pending(self) -> None:
        self.closed = True
        for waiter in self.pending.values():
            waiter.done.set()
        self.pending.clear()
        self.window_freed.set()


# --- the node --------------------------------------------------------------------------


class ClusterNode:
    """A node's membership in the cluster; see the module docstring."""

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
        self.peers = {p.name: p for p in peers}
        self.store = store
        self.network = network
        self.settings = settings or ClusterSettings()
        self.link_config = LinkConfig(cluster=network.cluster, node=name)
        self.order = tuple(sorted([name, *self.peers]))
        self._epoch_file = data_dir / "cluster-epoch"
        self.routing = RoutingTable(name, self._members())
        self.election = RootElection(name, self.order, last_epoch=self._load_epoch())
        self.directory: MasterDirectory | None = None
        self.cache = MasterCache()
        self.acks = AckTracker(name)
        self.sessions: dict[str, PeerSession] = {}
        self._ack_waits: dict[int, trio.Event] = {}
        self._failed_waits: set[int] = set()
        self._log_changed = trio.Event()
        self._view_changed = trio.Event()
        # (root, epoch) -> neighbours that got that ROOT over their current link
        self._root_sent: dict[tuple[str, int], set[str]] = {}
        self._moving: dict[MasterKey, trio.Event] = {}  # keys whose writes are held
        self._inflight: dict[MasterKey, int] = {}  # writes executing here, per key
        self._drained = trio.Event()
        self._handed_over: set[MasterKey] = set()  # keys given away, commit pending
        self._heard: set[str] = set()  # peers whose first ROUTES arrived (settling)
        self._write_times: dict[int, float] = {}  # our log seq -> when it was written
        self._caught_up_at: dict[str, float] = {}  # peer -> when it last had everything
        self._started_at = 0.0
        self._divergent: set[tuple[str, bytes]] = set()  # (peer, mailbox) marked this partition
        self._nursery: trio.Nursery | None = None
        self._dialers: dict[str, trio.CancelScope] = {}  # peer -> its dial loop
        #: (user, mailbox, message GUID) -> record of the latest forwarded SAVEs.
        self._saved: dict[tuple[str, str, bytes], MessageAppended] = {}
        self.stats = {
            "saves": 0,
            "changes_applied": 0,
            "changes_sent": 0,
            "changes_oversized": 0,
            "changes_refused_skew": 0,
            "forwarded": 0,
        }
        self.resync = Resyncer(self)
        self.verify = AntiEntropy(self)
        #: Resync and anti-entropy verbs, each served in its own task.
        self._resync_verbs: dict[
            type[c.Command], Callable[[PeerSession, str, Any], Awaitable[None]]
        ] = {
            c.Sync: self.resync.serve_sync,
            c.Fetch: self.resync.serve_fetch,
            c.Have: self.resync.serve_have,
            c.Update: self.resync.serve_update,
            c.Resync: self.resync.serve_resync,
            c.Digest: self.verify.serve_digest,
            c.Mailboxes: self.verify.serve_mailboxes,
        }

    # -- lifecycle --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, dial, elect; runs until cancelled."""
        self._started_at = trio.current_time()
        async with trio.open_nursery() as nursery:
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
            nursery.start_soon(self._settle)
            nursery.start_soon(self._confirm_root)
            nursery.start_soon(self.resync.scan_loop, self.settings.resync_interval)
            nursery.start_soon(self.verify.check_loop, self.settings.verify_interval)
            log_event(log, logging.INFO, "cluster-started", node=self.name, peers=len(self.peers))
            task_status.started()

    async def _settle(self) -> None:
        """Elect only once the running cluster had its say (a restarted root must
        not take over blindly): after ``settle`` seconds, and after every linked
        peer sent its first ROUTES, which follows its EPOCH on the wire."""
        await trio.sleep(self.settings.settle)
        with trio.move_on_after(self.settings.settle * 4):
            while any(s.peer not in self._heard for s in self.sessions.values()):
                await self._view_changed.wait()
        self._act(self.election.settle())

    def _load_epoch(self) -> int:
        """The highest epoch this node saw before it stopped (0: none yet).

        A file that is not one decimal number is refused: it was written
        atomically, so it was damaged after, and taking it as 0 could let
        this node reuse an epoch (fencing, I2)."""
        try:
            text = self._epoch_file.read_text(encoding="ascii", errors="replace")
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise ReplicadError(f"cannot read {self._epoch_file}: {exc}") from None
        value = text.strip()
        if not value.isdigit() or int(value) > MAX_EPOCH:
            raise BadInputError(
                f"{self._epoch_file} is damaged (it holds {value[:40]!r}, not an epoch); "
                "if other nodes of the cluster are running, delete it and start again: "
                "this node then learns the current epoch from them"
            )
        return int(value)

    def _save_epoch(self) -> None:
        """Persist the highest epoch seen: epochs must never repeat across
        restarts (fencing).  Written atomically and durably (temp file,
        fsync, rename, fsync of the directory).  A failure (disk full) is
        logged, not fatal: the epoch is still known here and to the peers,
        which tell a restarted node; the next change of epoch tries again."""
        tmp = self._epoch_file.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.fchmod(fd, 0o600)  # a leftover temp file keeps its old mode
                os.write(fd, f"{self.election.max_epoch}\n".encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._epoch_file)
            dir_fd = os.open(self._epoch_file.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log_event(
                log,
                logging.ERROR,
                "epoch-not-saved",
                epoch=self.election.max_epoch,
                file=str(self._epoch_file),
                reason=str(exc),
            )

    # -- links --

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
        self.routing.set_members(self._members())
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
        self._topology_changed()
        return tuple(changed)

    async def _dial_loop(self, peer: PeerAddress) -> None:
        delay = self.settings.backoff_min
        while True:
            try:
                link = await self.network.dial(peer, self.link_config)
                if self.settings.compress:
                    # The dialling side asks (compression.md); a refusal keeps
                    # the link uncompressed.
                    await link.start_compression()
            except (ReplicadError, OSError, trio.BrokenResourceError) as exc:
                log_event(log, logging.DEBUG, "dial-failed", peer=peer.name, reason=str(exc))
            else:
                delay = self.settings.backoff_min
                await self._run_session(link)
            # Jitter keeps restarted nodes from dialling in lock step.
            await trio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, self.settings.backoff_max)

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
        session = PeerSession(self, link, OutboxStream(link.peer, 0))
        log_event(log, logging.INFO, "debug-session", peer=link.peer, remote=link.remote)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    event = await link.next_event()
                    if isinstance(event, ConnectionClosed):
                        break
                    if isinstance(event, CommandReceived):
                        if isinstance(event.command, c.Root):
                            await self._reply_no(
                                session, event.tag, "UNSUPPORTED", "ROOT is not taken from debug"
                            )
                        else:
                            await self._command(session, event, nursery)
                    elif isinstance(event, UntaggedReceived):
                        log_event(
                            log,
                            logging.WARNING,
                            "debug-untagged-ignored",
                            peer=link.peer,
                            verb=event.data.VERB,
                        )
                    elif isinstance(event, ReplyReceived):
                        waiter = session.pending.pop(event.tag, None)
                        if waiter is not None:
                            waiter.reply = event
                            waiter.done.set()
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
            for sent in self._root_sent.values():
                sent.discard(link.peer)
        acked = await self.store.log_cursor(link.peer)
        outbox = OutboxStream(
            link.peer,
            acked,
            window=OUTBOX_WINDOW,
            batch=OUTBOX_BATCH,
            window_bytes=OUTBOX_WINDOW_BYTES,
            batch_bytes=OUTBOX_BATCH_BYTES,
        )
        session = PeerSession(self, link, outbox)
        self.sessions[link.peer] = session
        log_event(log, logging.INFO, "link-up", peer=link.peer, remote=link.remote)
        try:
            with session.cancel_scope:
                async with trio.open_nursery() as nursery:
                    outbox.on_link_up()
                    self._send_gossip(session)
                    self._topology_changed()
                    self._introduce_root(session)
                    nursery.start_soon(self._pump, session)
                    nursery.start_soon(self._applier, session)
                    nursery.start_soon(self._persist_acks, session)
                    nursery.start_soon(self._pinger, session)
                    nursery.start_soon(self.resync.worker, session)
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
            for sent in self._root_sent.values():
                sent.discard(link.peer)  # it may come back restarted: tell it again
            if self.sessions.get(link.peer) is session:
                del self.sessions[link.peer]
                self._topology_changed()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(link.channel.stream)
            log_event(log, logging.INFO, "link-down", peer=link.peer)

    async def _pinger(self, session: PeerSession) -> None:
        while True:
            await trio.sleep(self.settings.ping_interval)
            silent = trio.current_time() - session.last_heard
            if silent > self.settings.dead_after:
                log_event(log, logging.WARNING, "peer-dead", peer=session.peer, silent=silent)
                session.cancel_scope.cancel()
                return
            start = trio.current_time()
            try:
                await session.request(c.Ping(), timeout=self.settings.dead_after)
            except ReplicadError:
                continue
            session.rtt = trio.current_time() - start

    async def _reader(self, session: PeerSession, nursery: trio.Nursery) -> None:
        link = session.link
        while True:
            event = await link.next_event()
            session.last_heard = trio.current_time()
            if isinstance(event, ConnectionClosed):
                return
            if isinstance(event, UntaggedReceived) and isinstance(event.data, c.Change):
                # Handed to the applier, which takes everything queued as one
                # transaction; reading goes on meanwhile, so the next burst
                # is as large as what arrived during the last commit.
                weight = body_bytes(event.data)
                while len(session.inbox) >= MAX_INBOX or (
                    session.inbox_bytes and session.inbox_bytes + weight > MAX_INBOX_BYTES
                ):
                    await session.inbox_space.wait()
                session.inbox.append((event.data, weight))
                session.inbox_bytes += weight
                session.peak_inbox_bytes = max(session.peak_inbox_bytes, session.inbox_bytes)
                session.inbox_ready.set()
            elif isinstance(event, ReplyReceived):
                waiter = session.pending.pop(event.tag, None)
                session.window_freed.set()
                session.window_freed = trio.Event()
                if waiter is not None:
                    waiter.reply = event
                    waiter.done.set()
            elif isinstance(event, CommandReceived):
                await self._command(session, event, nursery)
            elif isinstance(event, UntaggedReceived):
                await self._untagged(session, event.data)

    async def _applier(self, session: PeerSession) -> None:
        """Apply the peer's changes in arrival order, a burst per transaction (I1, I8)."""
        while True:
            await session.inbox_ready.wait()
            session.inbox_ready = trio.Event()
            inbox = session.inbox
            while inbox:
                # At most MAX_APPLY_BURST changes and APPLY_BURST_BYTES of
                # bodies; a larger change alone.
                burst: list[c.Change] = []
                size = 0
                while inbox and len(burst) < MAX_APPLY_BURST:
                    weight = inbox[0][1]
                    if burst and size + weight > APPLY_BURST_BYTES:
                        break
                    burst.append(inbox.popleft()[0])
                    size += weight
                session.inbox_bytes -= size
                session.inbox_space.set()
                session.inbox_space = trio.Event()
                await self._apply_burst(session, burst)

    # -- topology, gossip, root --

    def _topology_changed(self) -> None:
        for name in list(self.sessions):
            self.routing.link_up(name)
        for name in self.routing.links - set(self.sessions):
            self.routing.link_down(name)
        self._broadcast_routes()
        self._view()

    def _view(self) -> None:
        reachable = self.routing.reachable()
        self._act(self.election.view_changed(reachable))
        self.order = self.election.order  # grows with nodes reached through others
        if self.directory is not None:
            for node in set(self.order) - reachable:
                self.directory.forget_node(node)
        for wid in self.acks.unreachable(frozenset(self.sessions) | {self.name}):
            self._failed_waits.add(wid)
            event = self._ack_waits.pop(wid, None)
            if event is not None:
                event.set()
        self._view_changed.set()
        self._view_changed = trio.Event()

    def _broadcast_routes(self) -> None:
        for name, session in list(self.sessions.items()):
            vector = self.routing.vector_for(name)
            routes = tuple(c.Route(n, min(h, 255)) for n, h in sorted(vector.items()))
            self._spawn(self._send_untagged(session, c.Routes(routes)))

    def _send_gossip(self, session: PeerSession) -> None:
        """Our claim, then our routes, queued in this order on the new link: a
        peer that has our ROUTES has also had our EPOCH (see :meth:`_settle`)."""
        claim = self.election.gossip()
        if claim is not None:
            epoch = c.Epoch(claim.epoch, claim.root)
            session.link.queue(lambda conn: conn.send_untagged(epoch))
        vector = self.routing.vector_for(session.peer)
        routes = c.Routes(tuple(c.Route(n, min(h, 255)) for n, h in sorted(vector.items())))
        session.link.queue(lambda conn: conn.send_untagged(routes))
        self._spawn(session.link.flush())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        assert self._nursery is not None

        async def run() -> None:
            try:
                await coro
            except (ReplicadError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log_event(log, logging.DEBUG, "send-failed", reason=str(exc))

        self._nursery.start_soon(run)

    async def _send_untagged(self, session: PeerSession, data: c.Untagged) -> None:
        if session.closed:
            return
        try:
            session.link.queue(lambda conn: conn.send_untagged(data))
        except LinkStateError:
            return
        await session.link.flush()

    def _act(self, actions: list[Action]) -> None:
        before = self.election.gossip()
        for action in actions:
            if isinstance(action, FlushMasters):
                self.cache.flush(action.epoch)
                claim = self.election.claim
                self.directory = (
                    MasterDirectory(action.epoch)
                    if claim is not None and claim.root == self.name
                    else None
                )
                self._save_epoch()
                log_event(log, logging.INFO, "masters-flushed", epoch=action.epoch)
            elif isinstance(action, AnnounceRoot):
                log_event(log, logging.INFO, "root-announce", epoch=action.epoch)
                for name in {self.routing.next_hop(n) for n in action.to} - {None}:
                    assert name is not None
                    session = self.sessions.get(name)
                    if session is not None:
                        self._spawn(self._announce(session, action.epoch))
            elif isinstance(action, AckRoot):
                pass  # answered as the OK of the ROOT command (see _root_command)
        after = self.election.gossip()
        if after != before and after is not None:
            for session in list(self.sessions.values()):
                self._spawn(self._send_untagged(session, c.Epoch(after.epoch, after.root)))

    async def _confirm_root(self) -> None:
        """While this node is a new root waiting for confirmations, announce
        again to every node still pending, through its current next hop.

        An announcement can be lost with a link, or confirmed for the wrong
        subtree when routes change under it (simulator seed 12); repeating it
        is harmless, since a node answers a ROOT it has already seen at once.
        """
        while True:
            await trio.sleep(self.settings.ping_interval)
            claim = self.election.claim
            if self.election.phase is not Phase.CONFIRMING or claim is None:
                continue
            hops = {self.routing.next_hop(n) for n in self.election.pending_acks}
            for name in sorted(h for h in hops if h is not None):
                session = self.sessions.get(name)
                if session is not None:
                    for sent in self._root_sent.values():
                        sent.discard(name)
                    self._spawn(self._announce(session, claim.epoch))

    async def _announce(self, session: PeerSession, epoch: int) -> None:
        try:
            await session.request(c.Root(epoch, self.name), timeout=self.settings.dead_after * 2)
        except ReplicadError as exc:
            log_event(log, logging.INFO, "root-ack-failed", peer=session.peer, reason=str(exc))
            return
        # The neighbour answered for itself and every node it floods to.
        behind = {n for n in self.routing.reachable() if self.routing.next_hop(n) == session.peer}
        for node in behind | {session.peer}:
            self._act(self.election.root_acked(node, epoch))
        if self.election.is_root:
            log_event(log, logging.INFO, "root-ready", epoch=epoch)
            self._view_changed.set()
            self._view_changed = trio.Event()

    def _members(self) -> frozenset[str]:
        """The configured cluster: this node, its peers and ``cluster.members``."""
        return frozenset(self.peers) | self.settings.members | {self.name}

    def _believable(self, session: PeerSession, verb: str, root: str, epoch: int) -> bool:
        """Whether a peer's claim that ``root`` rules under ``epoch`` may be
        followed: the root is a configured node and the epoch a plausible
        step above what this node has seen (protocol-spec/trust.md).  A claim
        that is not is logged and ignored; the sender's other traffic goes on."""
        if root in self._members():
            if plausible_epoch(epoch, self.election.max_epoch):
                return True
            why = f"epoch {epoch} is not within {MAX_EPOCH_STEP} of {self.election.max_epoch}"
        else:
            why = f"{root!r} is not a node of this cluster"
        log_event(log, logging.ERROR, "claim-refused", peer=session.peer, verb=verb, reason=why)
        return False

    async def _root_command(self, session: PeerSession, tag: str, cmd: c.Root) -> None:
        if not self._believable(session, "ROOT", cmd.root, cmd.epoch):
            refused = f"root {cmd.root} epoch {cmd.epoch} refused"
            await self._reply_no(session, tag, "CONFLICT", refused)
            return
        if cmd.epoch < self.election.epoch:
            await self._reply_no(session, tag, "CONFLICT", f"epoch {cmd.epoch} is stale")
            return
        self._act(self.election.root_announced(cmd.root, cmd.epoch))
        # Pass it on to every neighbour that has not had it over its current
        # link, then answer (tree ack).  Not only on the first receipt: the
        # root may announce to a newcomer through a node that saw this epoch
        # long ago, and that node must still forward it.
        sent = self._root_sent.setdefault((cmd.root, cmd.epoch), set())
        targets = [
            other
            for name, other in list(self.sessions.items())
            if name not in (session.peer, cmd.root) and name not in sent
        ]
        sent.update(t.peer for t in targets)  # before awaiting: cycles end here
        async with trio.open_nursery() as nursery:
            for other in targets:
                nursery.start_soon(self._forward_root, other, cmd)
        await self._reply_ok(session, tag)
        self._view_changed.set()
        self._view_changed = trio.Event()

    def _introduce_root(self, session: PeerSession) -> None:
        """Tell a new neighbour which root rules, with the root's own ROOT frame.

        The root announces itself to nodes it newly reaches, but through its
        next hop, which may not have had a link to the newcomer yet; any node
        that follows a ready root therefore repeats the announcement on each
        new link (a duplicate ROOT is harmless).
        """
        claim = self.election.claim
        if self.election.root is None or claim is None or claim.root == session.peer:
            return
        if claim.root == self.name:
            # The root itself: the peer may be one that restarted and redialled
            # before this node saw its old link die, so it never looked
            # unreachable and no view change will announce to it.
            self._spawn(self._announce(session, claim.epoch))
            return
        sent = self._root_sent.setdefault((claim.root, claim.epoch), set())
        if session.peer not in sent:
            sent.add(session.peer)
            self._spawn(self._forward_root(session, c.Root(claim.epoch, claim.root)))

    async def _forward_root(self, session: PeerSession, cmd: c.Root) -> None:
        try:
            await session.request(cmd, timeout=self.settings.dead_after * 2)
        except ReplicadError:
            # Not delivered: forget it was sent, so a repeated ROOT goes out again.
            self._root_sent.get((cmd.root, cmd.epoch), set()).discard(session.peer)

    # -- masters --

    async def master_of(self, key: MasterKey, deadline: float) -> str:
        """The node mastering ``key``, asking the root if needed (waits for a root)."""
        while True:
            node = self.cache.get(key)
            if node is not None and (node == self.name or node in self.routing.reachable()):
                return node
            if node is not None:
                self.cache.drop(key)
            root = self.election.root
            try:
                if root == self.name and self.directory is not None:
                    assignment = self.directory.lookup(key, self.name, self.routing.reachable())
                    self.cache.learn(assignment)
                    return assignment.node
                if root is not None:
                    hop = self.routing.next_hop(root)
                    session = self.sessions.get(hop) if hop else None
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
                await self._view_changed.wait()

    async def _master_command(self, session: PeerSession, tag: str, cmd: c.Master) -> None:
        key = MasterKey(cmd.user, cmd.mailbox)
        root = self.election.root
        try:
            if root == self.name and self.directory is not None:
                a = self.directory.lookup(key, session.peer, self.routing.reachable())
                await self._reply_ok(session, tag, c.MasterOk(a.node, a.epoch))
                return
            if root is None:
                raise TemporaryError("root not ready")
            hop = self.routing.next_hop(root)
            nxt = self.sessions.get(hop) if hop else None
            if nxt is None:
                raise UnreachableError(f"no link towards the root {root}")
            ok = await nxt.request(cmd)
            await self._reply_ok(session, tag, ok)
        except ReplicadError as exc:
            await self._reply_no(session, tag, no_code(exc), str(exc))

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
        if dest not in self.order:
            raise BadInputError(f"unknown node {dest!r}")
        key = master_key(self.settings.granularity, user, mailbox)
        cmd = c.MasterMove(key.user, key.mailbox, dest)
        if dest == self.name and sender is not None:
            current = await self.master_of(key, deadline)
            if current in (sender, self.name):
                self.cache.learn(Assignment(key, self.name, self.cache.epoch))
                log_event(log, logging.INFO, "master-received", key=str(key), source=sender)
                return c.MasterOk(self.name, self.cache.epoch)
        if self.election.root == self.name and self.directory is not None:
            current = self.directory.lookup(key, dest, self.routing.reachable()).node
            if current != dest:
                if current == self.name:
                    await self._hand_over(key, dest, deadline)
                else:
                    session = self._session_towards(current)
                    ok = await session.request(
                        cmd, timeout=max(0.1, deadline - trio.current_time())
                    )
                    assert isinstance(ok, c.MasterOk)
                if self.directory is None or self.election.root != self.name:
                    # This node stopped being the root while the key moved:
                    # the new root's directory decides; the caller retries.
                    raise TemporaryError(f"the root changed while {key} moved; retry")
                self.directory.move(key, dest)
            self.cache.learn(Assignment(key, dest, self.directory.epoch))
            return c.MasterOk(dest, self.directory.epoch)
        if self.cache.get(key) == self.name:
            await self._hand_over(key, dest, deadline)
        elif self.cache.get(key) == dest and key in self._handed_over:
            # The root forwarded our own commit back to us: confirm it.
            return c.MasterOk(dest, self.cache.epoch)
        root = self.election.root
        if root is None:
            raise TemporaryError("no root yet; retry")
        ok = await self._session_towards(root).request(
            cmd, timeout=max(0.1, deadline - trio.current_time())
        )
        assert isinstance(ok, c.MasterOk)
        self.cache.learn(Assignment(key, ok.node, ok.epoch))
        self._handed_over.discard(key)
        return ok

    def _session_towards(self, node: str) -> PeerSession:
        hop = self.routing.next_hop(node)
        session = self.sessions.get(hop) if hop else None
        if session is None:
            raise UnreachableError(f"no route to {node}")
        return session

    async def _hand_over(self, key: MasterKey, dest: str, deadline: float) -> None:
        """As master of ``key``: drain, let ``dest`` catch up, give the key away."""
        target = self.sessions.get(dest)
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
                    await self._log_changed.wait()
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

    async def _master_move_command(self, session: PeerSession, tag: str, cmd: c.MasterMove) -> None:
        try:
            ok = await self.move_master(cmd.user, cmd.mailbox, cmd.node, sender=session.peer)
        except ReplicadError as exc:
            await self._reply_no(session, tag, no_code(exc), str(exc))
            return
        await self._reply_ok(session, tag, ok)

    # -- writes --

    async def execute(self, op: WriteOp) -> Any:
        """Run a client write at its master (here or forwarded); the master's answer."""
        deadline = trio.current_time() + WRITE_DEADLINE
        key = master_key(self.settings.granularity, op.user, key_mailbox(op))
        while True:
            moving = self._moving.get(key)
            if moving is not None:
                # MASTER-MOVE in progress: hold, do not fail (seed 001).
                with trio.move_on_at(deadline):
                    await moving.wait()
                if not moving.is_set():
                    raise TemporaryError(f"master of {key} is moving; retry")
                continue
            master = await self.master_of(key, deadline)
            if master == self.name:
                if key in self._moving:
                    continue  # a move started while we looked the master up
                self._inflight[key] = self._inflight.get(key, 0) + 1
                try:
                    return await self._execute_here(op)
                finally:
                    self._inflight[key] -= 1
                    if not self._inflight[key]:
                        del self._inflight[key]
                        self._drained.set()
                        self._drained = trio.Event()
            hop = self.routing.next_hop(master)
            session = self.sessions.get(hop) if hop else None
            if session is None:
                self.cache.drop(key)
                if trio.current_time() >= deadline:
                    raise TemporaryError(f"master {master} of {key} is unreachable")
                await trio.sleep(0.1)
                continue
            self.stats["forwarded"] += 1
            try:
                return await self._forward(session, op, deadline)
            except OutcomeUnknownError as exc:
                # Sent, and perhaps applied.  Again is safe for a SAVE (the
                # master knows its GUID), an EXPUNGE or a STORE (the same
                # messages by GUID, the same deltas); a COPY again would copy
                # twice, a mailbox operation would fail on its own first effect.
                if not isinstance(op, (SaveOp, ExpungeOp, StoreOp)):
                    raise TemporaryError(
                        f"{exc}: the {type(op).__name__.removesuffix('Op').upper()} may have "
                        "been applied; check before trying again"
                    ) from None
                self.cache.drop(key)
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)
            except UnreachableError:
                self.cache.drop(key)
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)

    async def _forward(self, session: PeerSession, op: WriteOp, deadline: float) -> Any:
        timeout = max(0.1, deadline - trio.current_time())

        async def mbox(name: str) -> int:
            status = await self._local_status(op.user, name)
            if status is None:
                guid, uidv, uidnext, count, hms = NAME_ONLY_GUID, 1, 1, 0, 0
            else:
                guid, uidv = status.guid, status.uidvalidity
                uidnext, count, hms = status.uidnext, status.messages, status.highestmodseq
            mid, new = session.mbox_id(op.user, name, guid)
            if new:
                # Queued, not awaited: frames are processed in order, so the id
                # is bound before the command that follows (verbs.md MBOX).
                await self._send_mbox(
                    session, c.Mbox(mid, op.user, name, guid, uidv, uidnext, count, hms)
                )
            return mid

        if isinstance(op, SaveOp):
            mid = await mbox(op.mailbox)
            body = await _wire_body(op.body)
            return await session.request(
                c.Save(mid, op.internaldate, op.guid, op.flags, body), timeout=timeout
            )
        if isinstance(op, CopyOp):
            src = await mbox(op.source)
            dst = await mbox(op.dest)
            expect = await self._expect(op.user, op.source, op.uids, op.expect)
            return await session.request(c.Copy(src, dst, op.uids, expect), timeout=timeout)
        if isinstance(op, ExpungeOp):
            mid = await mbox(op.mailbox)
            expect = await self._expect(op.user, op.mailbox, op.uids, op.expect)
            return await session.request(c.Expunge(mid, op.uids, expect), timeout=timeout)
        if isinstance(op, StoreOp):
            mid = await mbox(op.mailbox)
            expect = await self._expect(op.user, op.mailbox, op.uids, op.expect)
            return await session.request(
                c.Store(mid, op.uids, op.add, op.remove, op.unchangedsince, expect),
                timeout=timeout,
            )
        if isinstance(op, CreateOp):
            return await session.request(c.CreateMailbox(op.user, op.name), timeout=timeout)
        if isinstance(op, RenameOp):
            return await session.request(c.RenameMailbox(op.user, op.old, op.new), timeout=timeout)
        return await session.request(c.DeleteMailbox(op.user, op.name), timeout=timeout)

    async def _expect(
        self, user: str, name: str, uids: UidSet, relayed: Expect
    ) -> tuple[c.UidGuid, ...] | None:
        """What the client meant by these UIDs: the GUIDs its node holds under
        them (relayed as they came when this node only passes the command on).
        The master refuses when it holds other messages there (I6)."""
        if relayed is None:
            try:
                infos = await self.store.fetch(user, name, uids)
            except ReplicadError:
                return None
            relayed = tuple((i.uid, i.guid) for i in infos)
        return tuple(c.UidGuid(uid, guid) for uid, guid in relayed)

    async def _local_status(self, user: str, name: str) -> Any:
        try:
            return await self.store.mailbox_status(user, name)
        except ReplicadError:
            return None

    async def _execute_here(self, op: WriteOp) -> Any:
        """Apply ``op`` as master: one logged transaction, then the durability wait (I1)."""
        level = self.settings.level_for(op.user)
        direct = frozenset(self.sessions) | {self.name}
        level.check_reachable(len(direct))
        store = self.store
        result: Any
        if isinstance(op, SaveOp):
            result = await self._save(op)
            self.stats["saves"] += 1
        elif isinstance(op, CopyOp):
            result = await store.copy(op.user, op.source, op.uids, op.dest, _mapping(op.expect))
        elif isinstance(op, ExpungeOp):
            result = await store.expunge(op.user, op.mailbox, op.uids, _mapping(op.expect))
        elif isinstance(op, StoreOp):
            result = await _store_deltas(store, op)
        elif isinstance(op, CreateOp):
            result = await store.create_mailbox(op.user, op.name)
        elif isinstance(op, RenameOp):
            result = await store.rename_mailbox(op.user, op.old, op.new)
        else:
            result = await store.delete_mailbox(op.user, op.name)
        # The newest entry logged so far covers this write (no thread hop on
        # the write path; a later entry only makes the wait conservative).
        seq = store.last_logged_seq
        self._write_times[seq] = trio.current_time()
        self.log_changed()
        await self._record_divergence(result)
        if level.copies > 1:
            await self._wait_copies(seq, level)
        return result

    async def _save(self, op: SaveOp) -> MessageAppended:
        """A SAVE, idempotent by GUID when forwarded or a delivery's: the
        forwarding node retries one whose link broke before the reply, which
        may have been applied (I6: once), and an MTA retries a delivery it
        was answered 451 for.  Recent saves are remembered here; the store's
        latest changes of the mailbox cover a first attempt made before this
        process started or while another node was the master."""
        delivery = is_delivery_guid(op.guid)
        if not op.forwarded and not delivery:
            [appended] = await self.store.append_many(op.user, op.mailbox, [_append_request(op)])
            return appended
        # A delivery's GUID is derived from the message (delivery_guid): the
        # same GUID again is the MTA's retry of a delivery it was answered
        # 451 for after its copy was written here (the durability wait ran
        # out), if the first copy came within the retry window.
        accept = retry_within_window(op.internaldate) if delivery else None
        key = (op.user, op.mailbox, op.guid)
        earlier = self._saved.get(key)
        if earlier is not None and (accept is None or accept(earlier)):
            return earlier
        appended = await self.store.save_once(
            op.user, op.mailbox, _append_request(op), depth=SAVE_RETRY_DEPTH, accept=accept
        )
        self._saved[key] = appended
        while len(self._saved) > RECENT_SAVES:
            del self._saved[next(iter(self._saved))]
        return appended

    async def _record_divergence(self, result: Any) -> None:
        """I7: a write made as master while configured peers are unreachable may
        diverge from what they do meanwhile (they may have picked another master
        on their side).  Record it per (peer, mailbox), since the modseq before
        the write, for the resync layer; the outbox still delivers the change.
        """
        unreachable = sorted(set(self.peers) - self.routing.reachable())
        if not unreachable:
            self._divergent.clear()
            return
        mailbox, since = _divergence_point(result)
        if mailbox is None:
            return
        fresh = [p for p in unreachable if (p, mailbox) not in self._divergent]
        if fresh:
            await self.store.mark_resync(fresh, mailbox, RESYNC_PARTITION, since)
            self._divergent.update((p, mailbox) for p in fresh)

    # -- resync and verification (replicad sync / verify / replicator dsync-status) --

    async def sync(
        self, users: list[str] | None, peer: str | None, *, full: bool = False
    ) -> dict[str, Any]:
        """Resync the mailboxes of ``users`` (None: all) with ``peer`` (None: every
        linked one): queued here for the mailboxes this node masters, marked
        (and so asked of their masters, RESYNC) for the others.  ``full``:
        pull whole states even where a mark would allow an incremental SYNC
        (the others' masters get no hint from a request, so SYNC whole too)."""
        peers = [peer] if peer is not None else sorted(self.sessions)
        for p in peers:
            if p not in self.sessions:
                raise UnreachableError(f"no link to {p}")
        if not full:
            return await self._sync_differences(users, peers)
        names = users if users is not None else await self.store.list_users()
        queued = marked = 0
        for user in names:
            for status in await self.store.list_mailboxes(user):
                key = master_key(self.settings.granularity, status.user, status.name)
                master = await self.master_of(key, trio.current_time() + WRITE_DEADLINE)
                if master == self.name:
                    for p in peers:
                        self.resync.enqueue(p, [status.guid], full=full)
                        queued += 1
                elif master in self.sessions:
                    await self.store.mark_resync([master], status.guid, RESYNC_REQUESTED, 0)
                    marked += 1
        await self.resync.scan_marks()
        compared = await self._count_mailboxes(names)
        return {
            **self.resync.status(),
            "queued_here": queued,
            "asked_masters": marked,
            "compared": compared,
            "different": compared,
            "round_trips": 0,
            "bytes": 0,
        }

    async def _count_mailboxes(self, users: list[str] | None) -> int:
        if users is None:
            return len(await self.store.mailbox_digests())
        count = 0
        for user in users:
            count += len(await self.store.list_mailboxes(user))
        return count

    async def _sync_differences(self, users: list[str] | None, peers: list[str]) -> dict[str, Any]:
        """``sync`` without ``--full``: the digest descent of anti-entropy
        first (one round trip per peer when nothing differs, I8), then a
        resync of exactly the mailboxes whose digests differ, on either side,
        including those one side lacks.  Each is queued here when this node
        masters it, else asked of its master (RESYNC), who resyncs it with
        this node and so creates it here if it is missing."""
        wanted = set(users) if users is not None else None
        queued = marked = skipped = trips = size = compared = 0
        differing: set[tuple[str, str]] = set()  # (user, mailbox) differing with any peer
        ask: dict[str, set[tuple[str, str]]] = {}
        for p in peers:
            session = self.sessions.get(p)
            if session is None:
                raise UnreachableError(f"no link to {p}")
            found = await self.verify.compare(session, wanted)
            compared = compared or found.compared  # this node's mailboxes, before any repair
            trips += found.round_trips
            size += found.bytes_in
            differing.update((d.user, d.name) for d in found.differences)
            for d in found.differences:
                key = master_key(self.settings.granularity, d.user, d.name)
                master = await self.master_of(key, trio.current_time() + WRITE_DEADLINE)
                if master == self.name and d.local is not None:
                    self.resync.enqueue(p, [d.local.guid])
                    queued += 1
                elif master != self.name and master in self.sessions and d.local is not None:
                    await self.store.mark_resync([master], d.local.guid, RESYNC_REQUESTED, 0)
                    marked += 1
                elif master != self.name and master in self.sessions:
                    ask.setdefault(master, set()).add((d.user, d.name))
                elif (
                    master == self.name
                    and d.remote is not None
                    and not await self.store.mailbox_deleted(d.remote.guid)
                    and await self.store.mailbox_by_guid(d.remote.guid) is None
                ):
                    # This node masters a mailbox only the peer holds: an
                    # empty copy of it here, which the resync fills.
                    await self.store.create_copy_of(
                        d.user, d.name, d.remote.guid, d.remote.uidvalidity
                    )
                    self.resync.enqueue(p, [d.remote.guid])
                    queued += 1
                else:
                    # A master out of reach, a mailbox deleted here (the
                    # DELETE wins), or one already copied for another peer.
                    skipped += 1
        for master, named in ask.items():
            items = tuple(c.ResyncItem(u, n, 0) for u, n in sorted(named))
            await self.sessions[master].request(c.Resync(items), timeout=WRITE_DEADLINE)
            marked += len(items)
        await self.resync.scan_marks()
        return {
            **self.resync.status(),
            "queued_here": queued,
            "asked_masters": marked,
            "skipped": skipped,
            "compared": compared,
            "different": len(differing),
            "round_trips": trips,
            "bytes": size,
        }

    async def verify_mailboxes(self, users: list[str] | None) -> dict[str, Any]:
        """Compare digests with every linked peer; the differing mailboxes (I8)."""
        rows: list[dict[str, Any]] = []
        trips = size = 0
        for peer in sorted(self.sessions):
            found = await self.verify.compare(
                self.sessions[peer], set(users) if users is not None else None
            )
            trips += found.round_trips
            size += found.bytes_in
            for d in found.differences:
                rows.append(
                    {
                        "peer": d.peer,
                        "user": d.user,
                        "mailbox": d.name,
                        "why": d.why,
                        "here": d.local.digest.hex()[:16] if d.local else None,
                        "there": d.remote.digest.hex()[:16] if d.remote else None,
                    }
                )
        return {
            "differences": rows,
            "peers": len(self.sessions),
            "round_trips": trips,
            "bytes": size,
        }

    async def dsync_status(self) -> dict[str, Any]:
        marks = await self.store.resync_marks()
        return {
            **self.resync.status(),
            "marks": [{"peer": m.peer, "mailbox": m.mailbox.hex(), "why": m.reason} for m in marks],
            "verify_runs": self.verify.runs,
            "verify_found": self.verify.found,
        }

    def log_changed(self) -> None:
        """New entries are in the log: wake every peer's pump."""
        self._log_changed.set()
        self._log_changed = trio.Event()

    async def _wait_copies(self, seq: int, level: DurabilityLevel) -> None:
        wid = self.acks.wait_for(seq, level.copies, frozenset({self.name}))
        if wid is None:
            return
        event = self._ack_waits[wid] = trio.Event()
        with trio.move_on_after(WRITE_DEADLINE) as scope:
            await event.wait()
        if scope.cancelled_caught:
            self.acks.cancel(wid)
            self._ack_waits.pop(wid, None)
        if scope.cancelled_caught or wid in self._failed_waits:
            self._failed_waits.discard(wid)
            raise DurabilityError(
                f"durability {level.name}: the change is on disk here but fewer than "
                f"{level.copies} nodes confirmed it; retry"
            )

    # -- serving commands from peers --

    async def _command(
        self, session: PeerSession, event: CommandReceived, nursery: trio.Nursery
    ) -> None:
        cmd, tag = event.command, event.tag
        if isinstance(cmd, c.Ping):
            await self._reply_ok(session, tag)
        elif isinstance(cmd, c.Mbox):
            # Bound synchronously: the frames that follow use the id at once.
            session.in_ids[cmd.id] = MboxBinding(cmd.user, cmd.name, cmd.guid)
            await self._reply_ok(session, tag)
        elif isinstance(cmd, c.Root):
            nursery.start_soon(self._root_command, session, tag, cmd)
        elif isinstance(cmd, c.Master):
            nursery.start_soon(self._master_command, session, tag, cmd)
        elif isinstance(cmd, c.MasterMove):
            nursery.start_soon(self._master_move_command, session, tag, cmd)
        elif type(cmd) in self._resync_verbs:
            handler = self._resync_verbs[type(cmd)]
            nursery.start_soon(self.resync.serve, handler, session, tag, cmd)
        else:
            try:
                op = self._op_from(session, cmd)
            except ReplicadError as exc:
                await self._reply_no(session, tag, no_code(exc), str(exc))
                return
            if op is None:
                await self._reply_no(session, tag, "UNSUPPORTED", f"{cmd.VERB} is not served yet")
                return
            nursery.start_soon(self._serve_write, session, tag, op)

    def _op_from(self, session: PeerSession, cmd: c.Command) -> WriteOp | None:
        def name(mid: int) -> str:
            binding = session.in_ids.get(mid)
            if binding is None:
                raise BadInputError(f"mailbox id {mid} is not bound")
            return binding.name

        def user(mid: int) -> str:
            return session.in_ids[mid].user

        if isinstance(cmd, c.Save):
            return SaveOp(
                user(cmd.mbox),
                name(cmd.mbox),
                cmd.guid,
                cmd.internaldate,
                cmd.flags,
                cmd.body,
                forwarded=True,
            )
        if isinstance(cmd, c.Copy):
            return CopyOp(
                user(cmd.source), name(cmd.source), name(cmd.dest), cmd.uids, _pairs(cmd.expect)
            )
        if isinstance(cmd, c.Expunge):
            return ExpungeOp(user(cmd.mbox), name(cmd.mbox), cmd.uids, _pairs(cmd.expect))
        if isinstance(cmd, c.Store):
            return StoreOp(
                user(cmd.mbox),
                name(cmd.mbox),
                cmd.uids,
                cmd.add,
                cmd.remove,
                cmd.unchangedsince,
                _pairs(cmd.expect),
            )
        if isinstance(cmd, c.CreateMailbox):
            return CreateOp(cmd.user, cmd.name)
        if isinstance(cmd, c.RenameMailbox):
            return RenameOp(cmd.user, cmd.old_name, cmd.new_name)
        if isinstance(cmd, c.DeleteMailbox):
            return DeleteOp(cmd.user, cmd.name)
        return None

    async def _serve_write(self, session: PeerSession, tag: str, op: WriteOp) -> None:
        try:
            result = await self.execute(op)
            payload = self._ok_payload(op, result)
        except ReplicadError as exc:
            await self._reply_no(session, tag, no_code(exc), str(exc))
            return
        await self._reply_ok(session, tag, payload)

    def _ok_payload(self, op: WriteOp, result: Any) -> c.Record:
        if isinstance(result, c.Record):
            return result  # a forwarded reply, relayed as it came
        if isinstance(result, MessageAppended):
            return c.SaveOk(result.uid, result.modseq, self.name, result.uidvalidity)
        if isinstance(result, MessagesCopied):
            if not result.appended:
                # COPYUID cannot name an empty set (RFC 4315); nothing matched.
                raise NoSuchMessageError("no message matched the UID set")
            modseq = max((a.modseq for a in result.appended), default=0)
            return c.CopyOk(
                UidSet.of(result.source_uids),
                UidSet.of(a.uid for a in result.appended),
                modseq,
                result.appended[0].uidvalidity,
            )
        if isinstance(result, MessagesExpunged):
            uids = [uid for uid, _ in result.expunged]
            return c.ExpungeOk(UidSet.of(uids) if uids else None, result.modseq)
        if isinstance(result, FlagsChanged):
            rejected = UidSet.of(result.rejected) if result.rejected else None
            return c.StoreOk(result.modseq, rejected)
        if isinstance(result, MailboxCreated):
            return c.MailboxOk(result.mailbox, result.uidvalidity)
        if isinstance(result, (MailboxRenamed, MailboxDeleted)):
            return c.MailboxOk(result.mailbox, 1)
        raise TypeError(f"unexpected write result {result!r}")

    async def _reply_ok(
        self, session: PeerSession, tag: str, payload: c.Record | None = None
    ) -> None:
        if session.closed:
            return
        try:
            session.link.queue(lambda conn: conn.send_ok(tag, payload))
        except LinkStateError:
            return  # the link closed under us (the peer said goodbye): no one to answer
        await session.link.flush()

    async def _reply_no(self, session: PeerSession, tag: str, code: str, text: str) -> None:
        if session.closed:
            return
        try:
            session.link.queue(lambda conn: conn.send_no(tag, code, text[:900]))
        except LinkStateError:
            return
        await session.link.flush()

    # -- change streams --

    async def _pump(self, session: PeerSession) -> None:
        """Stream our log to the peer from its acknowledgement (I1 resume, I8 one frame)."""
        outbox = session.outbox
        while True:
            changed = self._log_changed
            want = outbox.next_range()
            if want is None:  # the window is full (in changes or in bytes)
                with trio.move_on_after(1.0):
                    await changed.wait()
                continue
            # One read transaction (one thread hop) for positions, entries and
            # bodies: the hops, not the work, dominate a single change's latency.
            batch = await self.store.outbox_batch(
                session.peer, want.after, want.limit, want.max_bytes, want.alone
            )
            if batch.cursor > outbox.acked:
                outbox.on_resync_jump(batch.cursor)  # the log dropped this peer's backlog
                continue
            entries = batch.entries
            if not entries:
                if batch.full:  # the next change waits for room in the window
                    with trio.move_on_after(1.0):
                        await changed.wait()
                elif batch.head > outbox.sent:
                    outbox.on_sent(batch.head)  # the range was truncated away
                else:
                    with trio.move_on_after(1.0):
                        await changed.wait()
                continue
            wanted = [(seq, ch) for seq, ch, origin in entries if self._wants(session, origin)]
            bodies = batch.bodies
            for seq, change in wanted:
                weight = await self._send_change(session, seq, change, bodies)
                if weight is not None:
                    outbox.on_frame(seq, weight)
                    session.last_sent = seq
                    self.stats["changes_sent"] += 1
            await session.link.flush()
            last = entries[-1][0]
            outbox.on_sent(last)
            if last > session.last_sent:
                # Entries the peer does not need (relayed from it, or from a node
                # it has a link to): the ACK of our last frame also covers them.
                if outbox.acked >= session.last_sent:
                    await self._acked(session, last)
                else:
                    session.skip_to[session.last_sent] = last

    def _wants(self, session: PeerSession, origin: str) -> bool:
        """Does the peer need an entry from ``origin`` ("" = written here) from us?"""
        if not origin:
            return True
        if origin == session.peer:
            return False
        # A peer with a direct link to the origin gets it from there.
        return self.routing.advertised(session.peer, origin) != 1

    async def _send_change(
        self, session: PeerSession, seq: int, change: Any, bodies: dict[bytes, Blob]
    ) -> int | None:
        """Queue the frame of one log entry and return the octets of bodies it
        carries (``body_bytes``); None if there is nothing to send."""
        if (
            isinstance(change, MailboxMerged)
            and change.peer == session.peer
            and not self._relays_for(session.peer)
        ):
            # The merge of a resync with this very peer: its UPDATE brings it
            # the merged state, and its copy, which the merge differed from,
            # could never apply the plan (resync.md §7).
            return None
        ids: dict[bytes, int] = {}
        for guid in mailboxes_of(change):
            mid = session.stream_ids.get(guid)
            if mid is None:
                status = await self.store.mailbox_by_guid(guid)
                if status is None:
                    return None  # deleted since; the DELETE that follows tells the peer
                mid, new = session.mbox_id(status.user, status.name, status.guid)
                if new:
                    mbox = c.Mbox(
                        mid,
                        status.user,
                        status.name,
                        status.guid,
                        status.uidvalidity,
                        status.uidnext,
                        status.messages,
                        status.highestmodseq,
                    )
                    await self._send_mbox(session, mbox)
                # The stream binds by GUID: a later rename needs no new MBOX.
                session.stream_ids[guid] = mid
            ids[guid] = mid
        if isinstance(change, MailboxMerged):
            change = await self._held_by(session, change)
        body = bodies.get(change.body_hash) if isinstance(change, MessageAppended) else None
        frame = to_wire(seq, change, ids, body, bodies)
        try:
            session.link.queue(lambda conn: conn.send_untagged(frame))
        except ProtocolError as exc:
            # Too large for the link (or not encodable): the encoder refused it
            # before queueing a byte, so the link is intact.  Resending it
            # would fail the same way on every reconnect and the peer would
            # never catch up (I9): it is skipped, the peer's ACK of what
            # follows covers it, and the mark makes the resync layer bring
            # the mailbox to the peer in UPDATEs of bounded size instead.
            try:
                mailbox = mailbox_of(change)
            except TypeError:
                mailbox = ALL_MAILBOXES  # a mailbox-level change: every mailbox
            await self.store.mark_resync([session.peer], mailbox, RESYNC_OVERSIZED, 0)
            log_event(
                log,
                logging.ERROR,
                "change-too-large",
                peer=session.peer,
                seq=seq,
                mailbox=mailbox.hex(),
                reason=str(exc),
            )
            self.stats["changes_oversized"] += 1
            return None
        return body_bytes(frame)

    async def _held_by(self, session: PeerSession, change: MailboxMerged) -> MailboxMerged:
        """``change`` with every body the peer stores in ``held``, so that only
        bodies it lacks cross (HAVE, seed 004; resync.md §7).  The bodies of the
        state the plan applies to are held already (the store recorded them);
        HAVE asks for the rest, which the peer may hold in any mailbox (e.g.
        the merge brought here what it had).  A body released there before the
        change applies makes it fail like any change that lacks a body: marked,
        and repaired by a resync.  No answer: every body is sent."""
        ask = tuple(sorted(set(body_hashes(change))))
        if not ask:
            return change
        try:
            have = await session.request(c.Have(ask), timeout=STEP_TIMEOUT)
        except (ReplicadError, trio.TooSlowError):
            return change
        return replace(change, held=change.held | (set(ask) & set(have.hashes)))

    def _relays_for(self, peer: str) -> bool:
        """May ``peer`` pass our changes on to a node with no link to us?  (A
        configured node other than the two of us is not linked here.)"""
        return any(n not in self.sessions for n in self.order if n not in (self.name, peer))

    async def _send_mbox(self, session: PeerSession, mbox: c.Mbox) -> None:
        """Queue an MBOX binding; its reply is consumed, never awaited."""
        while not session.link.connection.can_send(mbox):
            if session.closed:
                raise UnreachableError(f"link to {session.peer} closed")
            await session.link.flush()
            await session.window_freed.wait()
        try:
            tag = session.link.queue(lambda conn: conn.send_command(mbox))
        except LinkStateError:
            raise UnreachableError(f"link to {session.peer} closed") from None
        session.pending[tag] = _Pending()

    async def _untagged(self, session: PeerSession, data: c.Untagged) -> None:
        if isinstance(data, c.Ack):
            await self._acked(session, data.seq, frozenset(data.refused))
        elif isinstance(data, c.Routes):
            if session.peer not in self._heard:
                self._heard.add(session.peer)
                self._view_changed.set()
                self._view_changed = trio.Event()
            vector = {r.node: r.hops for r in data.routes}
            if self.routing.receive_vector(session.peer, vector):
                self._broadcast_routes()
                self._view()
        elif isinstance(data, c.Epoch):
            if self._believable(session, "EPOCH", data.root, data.epoch):
                self._act(self.election.claim_heard(session.peer, Claim(data.epoch, data.root)))
        elif isinstance(data, (c.SyncData, c.FetchData)):
            self.resync.on_data(session, data)
        elif isinstance(data, (c.DigestData, c.MailboxData)):
            self.verify.on_data(session, data)

    async def _apply_burst(self, session: PeerSession, frames: list[c.Change]) -> None:
        """Apply a master's changes in order, durably, then ACK the last (I1)."""
        items = []
        for frame in frames:
            try:
                items.append(from_wire(frame, session.in_ids))
            except KeyError as exc:
                raise ProtocolError(
                    f"change {frame.seq} names an unbound mailbox id {exc}"
                ) from None
        # Relay what this link brings to neighbours with no link to its sender
        # (A-B-C with A-C down: B passes C's changes on to A).
        relay = any(
            self.routing.advertised(name, session.peer) != 1
            for name in self.sessions
            if name != session.peer
        )
        results = await self._apply_when_room(session, items, relay)
        if relay:
            self.log_changed()
        refused: list[int] = []
        for (change, _), frame, result in zip(items, frames, results, strict=True):
            if isinstance(result, ReplicadError) or result.outcome.value == "diverged":
                # Not applied: not a copy for the sender's durability count (I1).
                refused.append(frame.seq)
            if isinstance(result, ReplicadError):
                # Not applied (e.g. a COPY of a body this node never had): the
                # mailbox needs the resync layer, whose UPDATE carries what is
                # missing (I6); the stream goes on.
                with contextlib.suppress(TypeError):
                    await self.store.mark_resync(
                        [session.peer], mailbox_of(change), RESYNC_MISSING, 0
                    )
                log_event(
                    log,
                    logging.WARNING,
                    "change-not-applied",
                    peer=session.peer,
                    seq=frame.seq,
                    reason=str(result),
                )
            elif result.outcome.value == "diverged":
                if result.detail == MISSING_MAILBOX:
                    await self._mark_by_name(session, frame)
                skewed = result.detail.startswith(CLOCK_SKEW)
                if skewed:
                    self.stats["changes_refused_skew"] += 1
                log_event(
                    log,
                    logging.ERROR if skewed else logging.WARNING,
                    "clock-skew" if skewed else "change-diverged",
                    peer=session.peer,
                    seq=frame.seq,
                    detail=result.detail,
                )
        self.stats["changes_applied"] += len(frames)
        session.applied_seq = session.acked_seq = frames[-1].seq
        await self._send_untagged(session, c.Ack(frames[-1].seq, tuple(refused)))

    async def _apply_when_room(
        self, session: PeerSession, items: list[Any], relay: bool
    ) -> list[Any]:
        """Apply a burst; while the store is full, wait and try again.

        Nothing is acknowledged meanwhile (the master keeps the changes, I1),
        the link, its pings and the reads this node serves go on, and the
        burst applies by itself once there is room again: disk space freed,
        or ``node.map_size`` raised and reloaded (SIGHUP).  A full replica
        must not exit: it would restart into the same changes (I7)."""
        wait = STORE_FULL_RETRY_MIN
        while True:
            try:
                return await self.store.apply_replicated_many(items, session.peer, relay=relay)
            except StoreFullError as exc:
                log_event(
                    log,
                    logging.ERROR,
                    "apply-paused-store-full",
                    peer=session.peer,
                    changes=len(items),
                    retry_s=wait,
                    reason=str(exc),
                )
                await trio.sleep(wait)
                wait = min(wait * 2, STORE_FULL_RETRY_MAX)

    async def _mark_by_name(self, session: PeerSession, frame: c.Change) -> None:
        """A change for a mailbox GUID this node lacks: if it holds another
        mailbox under that name (both sides of a partition created it), mark
        that one, which the mark scan can act on (RESYNC by name)."""
        for mid in c.mbox_ids(frame):
            binding = session.in_ids.get(mid)
            if binding is None:
                continue
            try:
                status = await self.store.mailbox_status(binding.user, binding.name)
            except ReplicadError:
                continue
            if status.guid != binding.guid:
                await self.store.mark_resync([session.peer], status.guid, RESYNC_CONFLICT, 0)

    async def _acked(
        self, session: PeerSession, seq: int, refused: frozenset[int] = frozenset()
    ) -> None:
        covered = session.skip_to.pop(seq, seq)
        previous = session.outbox.acked
        if not session.outbox.on_ack(covered):
            return
        # Waiting clients first: the peer has the change on disk now (I1).
        # Sound even for covered entries: entries are only skipped if relayed
        # from elsewhere, so every write of ours up to ``covered`` was sent
        # and acknowledged by the peer itself.
        for wid in self.acks.acked(session.peer, covered, refused):
            event = self._ack_waits.pop(wid, None)
            if event is not None:
                event.set()
        now = trio.current_time()
        for s in range(previous + 1, covered + 1):
            written = self._write_times.get(s)
            if written is not None:
                session.lag.append(now - written)
        self._prune_write_times()
        self._caught_up_at[session.peer] = now  # its last acknowledgement
        # The durable cursor only decides where a restarted stream resumes
        # (resending a little more is harmless), so it is written lazily.
        session.ack_dirty.set()
        self._log_changed.set()
        self._log_changed = trio.Event()

    def _lag_seconds(self, peer: str, head: int, cursor: int | None) -> float | None:
        """How far behind ``peer`` is, in seconds: the age of the oldest change it
        has not acknowledged when this process wrote it, else (a backlog
        older than this process) the time since the peer's last
        acknowledgement or since start-up.  0 when it is caught up."""
        if cursor is None:
            return None
        now = trio.current_time()
        if cursor >= head:
            self._caught_up_at[peer] = now
            return 0.0
        for seq, written in self._write_times.items():
            if seq > cursor:
                return round(now - written, 3)
        since = self._caught_up_at.get(peer, self._started_at)
        return round(now - since, 3)

    async def _persist_acks(self, session: PeerSession) -> None:
        """Write the peer's acknowledged position at most every 50 ms (one fsync).

        A full store only delays it: the cursor decides where a restarted
        stream resumes, and resending a little more is harmless."""
        try:
            while True:
                await session.ack_dirty.wait()
                session.ack_dirty = trio.Event()
                try:
                    await self.store.ack(session.peer, session.outbox.acked)
                except TemporaryError as exc:
                    log_event(
                        log,
                        logging.WARNING,
                        "ack-not-persisted",
                        peer=session.peer,
                        reason=str(exc),
                    )
                    session.ack_dirty.set()
                    await trio.sleep(STORE_FULL_RETRY_MAX)
                await trio.sleep(0.05)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(ReplicadError):
                await self.store.ack(session.peer, session.outbox.acked)

    def _prune_write_times(self) -> None:
        if not self._write_times:
            return
        low = min((s.outbox.acked for s in self.sessions.values()), default=0)
        while self._write_times:
            first = next(iter(self._write_times))
            if first > low and len(self._write_times) <= MAX_LAG_SAMPLES * 100:
                break
            del self._write_times[first]

    # -- status --

    async def status(self) -> dict[str, Any]:
        """Membership, root and per-peer replication state (admin ``cluster_status``)."""
        claim = self.election.claim
        reachable = self.routing.reachable()
        head = await self.store.log_head()
        peers: list[dict[str, Any]] = []
        for name in sorted((set(self.peers) | reachable) - {self.name}):
            session = self.sessions.get(name)
            route = self.routing.route(name)
            # Only configured peers have an outbox (changes stream over direct links).
            cursor = (
                session.outbox.acked
                if session is not None
                else await self.store.log_cursor(name)
                if name in self.peers
                else None
            )
            peers.append(
                {
                    "name": name,
                    "link": "up" if session else "down",
                    "reachable": name in reachable,
                    "via": route.next_hop if route else None,
                    "rtt_ms": round(session.rtt * 1000, 2) if session and session.rtt else None,
                    "outbox": max(0, head - cursor) if cursor is not None else None,
                    "acked": cursor,  # the last log entry the peer acknowledged
                    "lag_s": self._lag_seconds(name, head, cursor),
                    "lag_p50_ms": _percentile_ms(session.lag, 0.50) if session else None,
                    "lag_p99_ms": _percentile_ms(session.lag, 0.99) if session else None,
                }
            )
        marks = await self.store.resync_marks()
        for row in peers:
            mine = [m for m in marks if m.peer == row["name"]]
            row["resync"] = len(mine)  # mailboxes marked for resync with this peer
            row["resync_reasons"] = sorted({m.reason for m in mine})
        # The root shows its directory (every assignment of its epoch); other
        # nodes show the masters they have cached.
        known = (
            [(a.key, a.node) for a in self.directory.assignments()]
            if self.directory is not None
            else self.cache.entries()
        )
        masters = [{"user": k.user, "mailbox": k.mailbox, "master": node} for k, node in known]
        masters_by_node: dict[str, int] = {}
        for _key, node in known:
            masters_by_node[node] = masters_by_node.get(node, 0) + 1
        level = self.settings.durability
        return {
            "node": self.name,
            "root": self.election.root,
            "masters_known": masters,
            "epoch": claim.epoch if claim else 0,
            "phase": self.election.phase.value,
            "masters": len(self.cache.keys_mastered_by(self.name)),
            "peers": peers,
            "stats": dict(self.stats),
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


def _percentile_ms(samples: deque[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


def _divergence_point(result: Any) -> tuple[bytes | None, int]:
    """(mailbox GUID, modseq before the write) of a master's write result."""
    if isinstance(result, MessageAppended):
        return result.mailbox, result.modseq - 1
    if isinstance(result, MessagesCopied):
        if not result.appended:
            return None, 0
        return result.appended[0].mailbox, min(a.modseq for a in result.appended) - 1
    if isinstance(result, (FlagsChanged, MessagesExpunged)):
        return result.mailbox, max(0, result.modseq - 1)
    if isinstance(result, MailboxCreated):
        return result.mailbox, 0
    if isinstance(result, (MailboxRenamed, MailboxDeleted)):
        return result.mailbox, 0
    return None, 0


#: Bodies above this are compressed in a worker thread, not on the event loop.
_INLINE_COMPRESS: Final = 256 * 1024


async def _wire_body(body: bytes | Blob) -> Blob:
    """A SAVE's body in its stored form (verbs.md, "Bodies"): compressed here,
    once, for the master to keep as it comes."""
    if isinstance(body, Blob):
        return body
    if len(body) <= _INLINE_COMPRESS:
        return Blob.compress(body)
    return await trio.to_thread.run_sync(Blob.compress, body)


def _append_request(op: SaveOp) -> AppendRequest:
    return AppendRequest(op.body, op.flags, op.internaldate or None, op.guid)


def _pairs(expect: tuple[c.UidGuid, ...] | None) -> Expect:
    return None if expect is None else tuple((e.uid, e.guid) for e in expect)


def _mapping(expect: Expect) -> dict[int, bytes] | None:
    return None if expect is None else dict(expect)


async def _store_deltas(store: MailStore, op: StoreOp) -> FlagsChanged:
    """Apply +add and -remove as the master (I5: deltas); one or two transactions."""
    mode: FlagMode
    expect = _mapping(op.expect)
    if op.add and op.remove:
        first = await store.store_flags(
            op.user,
            op.mailbox,
            op.uids,
            "add",
            op.add,
            unchangedsince=op.unchangedsince,
            expect=expect,
        )
        second = await store.store_flags(op.user, op.mailbox, op.uids, "remove", op.remove)
        return FlagsChanged(
            op.user,
            second.mailbox,
            tuple(sorted(set(first.uids) | set(second.uids))),
            op.add,
            op.remove,
            max(first.modseq, second.modseq),
            first.rejected,
        )
    mode = "add" if op.add else "remove"
    return await store.store_flags(
        op.user,
        op.mailbox,
        op.uids,
        mode,
        op.add or op.remove,
        unchangedsince=op.unchangedsince,
        expect=expect,
    )
