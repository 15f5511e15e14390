"""Subscriptions between two nodes where the change stream did not carry
them: a digest probe, then a push of every register each way
(protocol-spec/resync.md §10, verbs.md SUBSCRIPTIONS).

IMAP subscriptions are last-writer-wins registers per (user, name)
(:mod:`replicad.store.subscriptions`); they normally reach every node as
``* SUBSCRIBE`` changes.  A change the stream could not deliver (a
backlog the outbox bound dropped, a peer added after it was logged, a stamp
refused for clock skew) leaves the subscriptions mark on the peer, and the
mark scan calls :meth:`SubscriptionSync.exchange`; anti-entropy calls it on
every check, so a divergence no mark recorded heals too (I4).

An exchange costs one round trip when both tables agree (I8).  When they
differ, the asking node pushes every register it holds and the answering
node, seeing a digest other than its own in the probe, pushes its own
back; the merge is idempotent and commutative, so both end with the same
registers whatever the order the batches cross in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from replicad.cluster.interfaces import Peer
from replicad.protocol import commands as c
from replicad.protocol.resync import MAX_SUBSCRIPTION_ITEMS
from replicad.store.mailstore import MailStore
from replicad.store.subscriptions import Register, SubscriptionEntry
from replicad.transport.logfmt import log_event

log = logging.getLogger("replicad.resync")

#: How long one SUBSCRIPTIONS request may wait for the peer.
STEP_TIMEOUT: Final = 60.0


def _item(entry: SubscriptionEntry) -> c.SubscriptionItem:
    reg = entry.register
    return c.SubscriptionItem(entry.user, entry.name, int(reg.subscribed), reg.stamp)


def _entry(item: c.SubscriptionItem) -> SubscriptionEntry:
    return SubscriptionEntry(item.user, item.name, Register(item.stamp, bool(item.subscribed)))


class SubscriptionSync:
    """Both sides of SUBSCRIPTIONS for one node."""

    def __init__(self, store: MailStore, log_changed: Callable[[], None]) -> None:
        self.store = store
        #: Wakes the stream pumps: adopted registers are logged for the other peers.
        self._log_changed = log_changed
        self.exchanges = 0  # probes sent
        self.pushes = 0  # full pushes sent (the probe found the tables differ)
        self.adopted = 0  # registers taken from peers' pushes

    async def exchange(self, session: Peer) -> bool:
        """Probe ``session``'s digest and push every register if it differs;
        whether a push was needed."""
        self.exchanges += 1
        mine = await self.store.subscriptions.digest()
        reply = await session.request(c.Subscriptions(mine, ()), timeout=STEP_TIMEOUT)
        if reply.digest == mine:
            return False
        await self._push(session, mine)
        return True

    async def _push(self, session: Peer, digest: bytes) -> None:
        self.pushes += 1
        entries = await self.store.subscriptions.entries()
        for start in range(0, len(entries), MAX_SUBSCRIPTION_ITEMS):
            batch = tuple(_item(e) for e in entries[start : start + MAX_SUBSCRIPTION_ITEMS])
            await session.request(c.Subscriptions(digest, batch), timeout=STEP_TIMEOUT)
        log_event(
            log, logging.INFO, "subscriptions-pushed", peer=session.peer, registers=len(entries)
        )

    async def serve(self, session: Peer, tag: str, cmd: c.Subscriptions) -> None:
        """Merge the pushed registers and answer this node's digest; a probe
        from a node whose table differs is answered with a push back."""
        if cmd.items:
            adopted = await self.store.subscriptions.merge(_entry(i) for i in cmd.items)
            if adopted:
                self.adopted += adopted
                self._log_changed()
        digest = await self.store.subscriptions.digest()
        await session.reply_ok(tag, c.SubscriptionsOk(digest))
        if not cmd.items and cmd.digest != digest:
            await self._push(session, digest)
