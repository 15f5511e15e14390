"""What an operator asks of the resync layer: ``sync``, ``verify``, ``replicator dsync-status``.

Resyncs on request (architecture.md §7): by default only the mailboxes
whose digests differ (one digest exchange per peer when nothing differs,
I8), or every mailbox with ``--full``; each is queued here when this node
masters it, else asked of its master (RESYNC).
"""

from __future__ import annotations

from typing import Any

import trio

from replicad.cluster.antientropy import AntiEntropy
from replicad.cluster.links import Links
from replicad.cluster.mastership import Mastership
from replicad.cluster.resync import Resyncer
from replicad.cluster.writeops import WRITE_DEADLINE
from replicad.errors import UnreachableError
from replicad.protocol import commands as c
from replicad.store.changelog import RESYNC_REQUESTED
from replicad.store.mailstore import MailStore


class ManualSync:
    """Operator-requested resyncs and digest comparisons."""

    def __init__(
        self,
        *,
        name: str,
        store: MailStore,
        links: Links,
        masters: Mastership,
        resync: Resyncer,
        verify: AntiEntropy,
    ) -> None:
        self.name = name
        self.store = store
        self.links = links
        self.masters = masters
        self.resync = resync
        self.verify = verify

    async def sync(
        self, users: list[str] | None, peer: str | None, *, full: bool = False
    ) -> dict[str, Any]:
        """Resync the mailboxes of ``users`` (None: all) with ``peer`` (None: every
        linked one): queued here for the mailboxes this node masters, marked
        (and so asked of their masters, RESYNC) for the others.  ``full``:
        pull whole states even where a mark would allow an incremental SYNC
        (the others' masters get no hint from a request, so SYNC whole too)."""
        sessions = self.links.sessions
        peers = [peer] if peer is not None else sorted(sessions)
        for p in peers:
            if p not in sessions:
                raise UnreachableError(f"no link to {p}")
        if not full:
            return await self._sync_differences(users, peers)
        names = users if users is not None else await self.store.list_users()
        queued = marked = 0
        for user in names:
            for status in await self.store.list_mailboxes(user):
                key = self.masters.key(status.user, status.name)
                master = await self.masters.master_of(key, trio.current_time() + WRITE_DEADLINE)
                if master == self.name:
                    for p in peers:
                        self.resync.enqueue(p, [status.guid], full=full)
                        queued += 1
                elif master in sessions:
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
        sessions = self.links.sessions
        wanted = set(users) if users is not None else None
        queued = marked = skipped = trips = size = compared = 0
        differing: set[tuple[str, str]] = set()  # (user, mailbox) differing with any peer
        ask: dict[str, set[tuple[str, str]]] = {}
        for p in peers:
            session = sessions.get(p)
            if session is None:
                raise UnreachableError(f"no link to {p}")
            found = await self.verify.compare(session, wanted)
            compared = compared or found.compared  # this node's mailboxes, before any repair
            trips += found.round_trips
            size += found.bytes_in
            differing.update((d.user, d.name) for d in found.differences)
            for d in found.differences:
                key = self.masters.key(d.user, d.name)
                master = await self.masters.master_of(key, trio.current_time() + WRITE_DEADLINE)
                if master == self.name and d.local is not None:
                    self.resync.enqueue(p, [d.local.guid])
                    queued += 1
                elif master != self.name and master in sessions and d.local is not None:
                    await self.store.mark_resync([master], d.local.guid, RESYNC_REQUESTED, 0)
                    marked += 1
                elif master != self.name and master in sessions:
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
            await sessions[master].request(c.Resync(items), timeout=WRITE_DEADLINE)
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
        sessions = self.links.sessions
        rows: list[dict[str, Any]] = []
        trips = size = 0
        for peer in sorted(sessions):
            found = await self.verify.compare(
                sessions[peer], set(users) if users is not None else None
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
            "peers": len(sessions),
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
