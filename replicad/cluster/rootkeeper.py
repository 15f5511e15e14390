"""The root of this node's part of the cluster, around the pure election (architecture.md §6).

EPOCH gossip and the ROOT announcement drive the pure
:class:`~replicad.cluster.root.RootElection`; :class:`RootKeeper` executes
the actions it returns (flush the masters, announce) and persists the
highest epoch seen, so epochs never repeat across restarts (fencing).  A
ROOT is flooded hop by hop: a node answers OK once it flushed its masters
*and* its own neighbours answered, so the root's OK from a neighbour
stands for every node routed through it (the new root answers only after
the reachable nodes confirmed).  Claims from peers are believed only
within the bounds of protocol-spec/trust.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import trio

from replicad.cluster.links import Links
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
from replicad.cluster.session import PeerSession
from replicad.cluster.settings import ClusterSettings
from replicad.cluster.signals import Broadcast
from replicad.errors import BadInputError, ReplicadError
from replicad.protocol import commands as c
from replicad.transport.logfmt import log_event

log = logging.getLogger("replicad.cluster")


class RootKeeper:
    """Elects, follows and announces the root; owns the epoch file."""

    def __init__(
        self,
        *,
        name: str,
        order: tuple[str, ...],
        data_dir: Path,
        settings: ClusterSettings,
        links: Links,
        flush_masters: Callable[[int, bool], None],
        view: Broadcast,
    ) -> None:
        self.name = name
        self.settings = settings
        self.links = links
        #: Forget every master learnt under an older epoch (epoch, whether
        #: this node is the new root and keeps the directory).
        self.flush_masters = flush_masters
        self.view = view
        self._epoch_file = data_dir / "cluster-epoch"
        self.election = RootElection(name, order, last_epoch=self._load_epoch())
        # (root, epoch) -> neighbours that got that ROOT over their current link
        self._root_sent: dict[tuple[str, int], set[str]] = {}

    # -- the epoch file --

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

    def save_epoch(self) -> None:
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

    # -- tasks --

    async def settle(self) -> None:
        """Elect only once the running cluster had its say (a restarted root must
        not take over blindly): after ``settle`` seconds, and after every linked
        peer sent its first ROUTES, which follows its EPOCH on the wire."""
        await trio.sleep(self.settings.settle)
        with trio.move_on_after(self.settings.settle * 4):
            while any(s.peer not in self.links.heard for s in self.links.sessions.values()):
                await self.view.wait()
        self._act(self.election.settle())

    async def confirm_loop(self) -> None:
        """While this node is a new root waiting for confirmations, announce
        again to every node still pending, through its current next hop.

        An announcement can be lost with a link, or confirmed for the wrong
        subtree when routes change under it (simulator seed 12); repeating it
        is harmless, since a node answers a ROOT it has already seen at once.
        """
        routing = self.links.routing
        while True:
            await trio.sleep(self.settings.ping_interval)
            claim = self.election.claim
            if self.election.phase is not Phase.CONFIRMING or claim is None:
                continue
            hops = {routing.next_hop(n) for n in self.election.pending_acks}
            for name in sorted(h for h in hops if h is not None):
                session = self.links.sessions.get(name)
                if session is not None:
                    for sent in self._root_sent.values():
                        sent.discard(name)
                    self.links.spawn(self._announce(session, claim.epoch))

    # -- what the links tell --

    def view_changed(self, reachable: frozenset[str]) -> None:
        self._act(self.election.view_changed(reachable))

    def gossip_claim(self) -> Claim | None:
        return self.election.gossip()

    def link_gone(self, peer: str) -> None:
        """A ROOT sent over the peer's last link may have died with it: tell it again."""
        for sent in self._root_sent.values():
            sent.discard(peer)

    def introduce(self, session: PeerSession) -> None:
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
            self.links.spawn(self._announce(session, claim.epoch))
            return
        sent = self._root_sent.setdefault((claim.root, claim.epoch), set())
        if session.peer not in sent:
            sent.add(session.peer)
            self.links.spawn(self._forward_root(session, c.Root(claim.epoch, claim.root)))

    async def on_epoch(self, session: PeerSession, data: c.Epoch) -> None:
        if self._believable(session, "EPOCH", data.root, data.epoch):
            self._act(self.election.claim_heard(session.peer, Claim(data.epoch, data.root)))

    async def serve_root(self, session: PeerSession, tag: str, cmd: c.Root) -> None:
        if not self._believable(session, "ROOT", cmd.root, cmd.epoch):
            refused = f"root {cmd.root} epoch {cmd.epoch} refused"
            await session.reply_no(tag, "CONFLICT", refused)
            return
        if cmd.epoch < self.election.epoch:
            await session.reply_no(tag, "CONFLICT", f"epoch {cmd.epoch} is stale")
            return
        self._act(self.election.root_announced(cmd.root, cmd.epoch))
        # Pass it on to every neighbour that has not had it over its current
        # link, then answer (tree ack).  Not only on the first receipt: the
        # root may announce to a newcomer through a node that saw this epoch
        # long ago, and that node must still forward it.
        sent = self._root_sent.setdefault((cmd.root, cmd.epoch), set())
        targets = [
            other
            for name, other in list(self.links.sessions.items())
            if name not in (session.peer, cmd.root) and name not in sent
        ]
        sent.update(t.peer for t in targets)  # before awaiting: cycles end here
        async with trio.open_nursery() as nursery:
            for other in targets:
                nursery.start_soon(self._forward_root, other, cmd)
        await session.reply_ok(tag)
        self.view.fire()

    # -- internals --

    def _act(self, actions: list[Action]) -> None:
        before = self.election.gossip()
        for action in actions:
            if isinstance(action, FlushMasters):
                claim = self.election.claim
                self.flush_masters(action.epoch, claim is not None and claim.root == self.name)
                self.save_epoch()
                log_event(log, logging.INFO, "masters-flushed", epoch=action.epoch)
            elif isinstance(action, AnnounceRoot):
                log_event(log, logging.INFO, "root-announce", epoch=action.epoch)
                routing = self.links.routing
                for name in {routing.next_hop(n) for n in action.to} - {None}:
                    assert name is not None
                    session = self.links.sessions.get(name)
                    if session is not None:
                        self.links.spawn(self._announce(session, action.epoch))
            elif isinstance(action, AckRoot):
                pass  # answered as the OK of the ROOT command (see serve_root)
        after = self.election.gossip()
        if after != before and after is not None:
            for session in list(self.links.sessions.values()):
                self.links.spawn(session.send_untagged(c.Epoch(after.epoch, after.root)))

    async def _announce(self, session: PeerSession, epoch: int) -> None:
        try:
            await session.request(c.Root(epoch, self.name), timeout=self.settings.dead_after * 2)
        except ReplicadError as exc:
            log_event(log, logging.INFO, "root-ack-failed", peer=session.peer, reason=str(exc))
            return
        # The neighbour answered for itself and every node it floods to.
        routing = self.links.routing
        behind = {n for n in routing.reachable() if routing.next_hop(n) == session.peer}
        for node in behind | {session.peer}:
            self._act(self.election.root_acked(node, epoch))
        if self.election.is_root:
            log_event(log, logging.INFO, "root-ready", epoch=epoch)
            self.view.fire()

    async def _forward_root(self, session: PeerSession, cmd: c.Root) -> None:
        try:
            await session.request(cmd, timeout=self.settings.dead_after * 2)
        except ReplicadError:
            # Not delivered: forget it was sent, so a repeated ROOT goes out again.
            self._root_sent.get((cmd.root, cmd.epoch), set()).discard(session.peer)

    def _believable(self, session: PeerSession, verb: str, root: str, epoch: int) -> bool:
        """Whether a peer's claim that ``root`` rules under ``epoch`` may be
        followed: the root is a configured node and the epoch a plausible
        step above what this node has seen (protocol-spec/trust.md).  A claim
        that is not is logged and ignored; the sender's other traffic goes on."""
        if root in self.links.members():
            if plausible_epoch(epoch, self.election.max_epoch):
                return True
            why = f"epoch {epoch} is not within {MAX_EPOCH_STEP} of {self.election.max_epoch}"
        else:
            why = f"{root!r} is not a node of this cluster"
        log_event(log, logging.ERROR, "claim-refused", peer=session.peer, verb=verb, reason=why)
        return False
