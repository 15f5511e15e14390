"""A user's subscribed mailbox names (RFC 3501 §6.3.6-§6.3.7, RFC 9051 §6.3.7):
one last-writer-wins register per (user, name), replicated (I4).

Every SUBSCRIBE and UNSUBSCRIBE sets the register of its (user, name) to
``(stamp, subscribed)``, stamped by the node's hybrid clock
(:mod:`replicad.store.clock`) above the register it replaces.  A node keeps,
per (user, name), the greatest ``(stamp, subscribed)`` it has seen; so two
nodes that have seen the same registers hold the same subscriptions,
whatever the order they arrived in (I4), and a SUBSCRIBE and an UNSUBSCRIBE
made on the two sides of a partition end as the later of the two (at equal
stamps, which only two nodes' clocks can produce, SUBSCRIBE wins).  An
UNSUBSCRIBE keeps its register (``subscribed`` false) rather than deleting
it: a stale SUBSCRIBE arriving later must lose to it.

Names are kept whether or not a mailbox of that name exists: RFC 3501
§6.3.6 lets a client subscribe to a name that does not exist, and a
mailbox deleted keeps its subscription (the client may recreate it).

Registers travel in the change stream (``* SUBSCRIBE``, verbs.md §4) and,
where the stream could not carry them (a peer's backlog dropped, a new
peer), by the push of every register (``SUBSCRIPTIONS``, verbs.md §5) that
the resync mark scan and anti-entropy make.  Merging is idempotent,
commutative and associative, so any order of pushes and changes converges.

The table lives in the ``subscriptions`` database: key ``user NUL name``,
value ``[stamp, subscribed]``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from replicad.store.clock import HybridClock
from replicad.store.index import check_mailbox_name, check_user
from replicad.store.records import SubscriptionChanged
from replicad.store.schema import Databases, name_key, pack, unpack, user_prefix

T = TypeVar("T")

#: The resync mark (in place of a mailbox GUID) that asks for every register
#: to be pushed to a peer: a subscription change its stream could not carry.
SUBSCRIPTIONS_MARK: Final = b"\xff" * 16
#: Registers pushed in one ``SUBSCRIPTIONS`` command (I9: bounded frames).
PUSH_BATCH: Final = 4096


@dataclass(frozen=True, slots=True, order=True)
class Register:
    """One (user, name)'s subscription: greater ``(stamp, subscribed)`` wins."""

    stamp: int
    subscribed: bool


@dataclass(frozen=True, slots=True)
class SubscriptionEntry:
    """A register with its place: what the change stream and a push carry."""

    user: str
    name: str
    register: Register


def _decode(raw: bytes) -> Register:
    stamp, subscribed = unpack(raw)
    return Register(int(stamp), bool(subscribed))


def read_register(dbs: Databases, txn: Any, user: str, name: str) -> Register | None:
    raw = txn.get(name_key(user, name), db=dbs.subscriptions)
    return None if raw is None else _decode(bytes(raw))


def adopt(dbs: Databases, txn: Any, entry: SubscriptionEntry) -> bool:
    """Keep ``entry``'s register if it is newer than the one held; whether it was."""
    held = read_register(dbs, txn, entry.user, entry.name)
    if held is not None and entry.register <= held:
        return False
    reg = entry.register
    key = name_key(entry.user, entry.name)
    txn.put(key, pack([reg.stamp, reg.subscribed]), db=dbs.subscriptions)
    return True


def user_registers(dbs: Databases, txn: Any, user: str) -> dict[str, Register]:
    prefix = user_prefix(user)
    out: dict[str, Register] = {}
    with txn.cursor(db=dbs.subscriptions) as cur:
        if cur.set_range(prefix):
            for key, raw in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                out[key[len(prefix) :].decode()] = _decode(bytes(raw))
    return out


def every_entry(dbs: Databases, txn: Any) -> list[SubscriptionEntry]:
    out = []
    for key, raw in txn.cursor(db=dbs.subscriptions):
        user, name = bytes(key).decode().split("\0", 1)
        out.append(SubscriptionEntry(user, name, _decode(bytes(raw))))
    return out


def digest_of(entries: Iterable[SubscriptionEntry]) -> bytes:
    """SHA-256 over every register in key order: equal digests, equal tables."""
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: (e.user, e.name)):
        h.update(pack([e.user, e.name, e.register.stamp, e.register.subscribed]))
    return h.digest()


class Subscriptions:
    """The store's subscription table: client writes (logged) and merges.

    ``write_logged`` and ``read`` are the store's one write seam and read
    seam (:class:`~replicad.store.mailstore.MailStore`), so a subscription
    change is one transaction with its log record (I1)."""

    def __init__(
        self,
        dbs: Databases,
        clock: HybridClock,
        write_logged: Callable[[Callable[[Any], Any]], Awaitable[tuple[Any, int]]],
        read: Callable[[Callable[[Any], Any]], Awaitable[Any]],
    ) -> None:
        self._dbs = dbs
        self._clock = clock
        self._write_logged = write_logged
        self._read = read

    async def set_subscribed(self, user: str, name: str, subscribed: bool) -> SubscriptionChanged:
        """SUBSCRIBE (``subscribed``) or UNSUBSCRIBE ``name`` for ``user``, as
        the master of the user's namespace: stamped after the register it
        replaces, applied and logged in one transaction.  BadInputError for a
        name no mailbox could have (INBOX is caseless, as for mailboxes)."""
        dbs = self._dbs
        user, name = check_user(user), check_mailbox_name(name)

        def op(txn: Any) -> SubscriptionChanged:
            held = read_register(dbs, txn, user, name)
            stamp = self._clock.after(held.stamp if held is not None else 0)
            entry = SubscriptionEntry(user, name, Register(stamp, subscribed))
            adopt(dbs, txn, entry)
            return SubscriptionChanged(user, name, subscribed, stamp)

        change, _ = await self._write_logged(op)
        assert isinstance(change, SubscriptionChanged)
        return change

    async def merge(self, entries: Iterable[SubscriptionEntry]) -> int:
        """Adopt every register newer than the one held (a peer's push); each
        adopted one is logged, so it reaches every other peer too (I4).
        How many were adopted."""
        dbs = self._dbs
        batch = list(entries)

        def op(txn: Any) -> list[SubscriptionChanged]:
            out = []
            for e in batch:
                if not self._clock.admits(e.register.stamp):
                    continue  # beyond the clock bound: the peer's next push retries
                if adopt(dbs, txn, e):
                    self._clock.observe(e.register.stamp)
                    reg = e.register
                    out.append(SubscriptionChanged(e.user, e.name, reg.subscribed, reg.stamp))
            return out

        adopted, _ = await self._write_logged(op)
        return len(adopted)

    async def of_user(self, user: str) -> dict[str, Register]:
        """Every register of ``user`` (unsubscribed ones included), by name."""
        registers: dict[str, Register] = await self._read(
            lambda txn: user_registers(self._dbs, txn, user)
        )
        return registers

    async def subscribed(self, user: str) -> set[str]:
        """The names ``user`` is subscribed to, existing or not."""
        return {n for n, r in (await self.of_user(user)).items() if r.subscribed}

    async def entries(self) -> list[SubscriptionEntry]:
        """Every register of every user (what a push sends)."""
        found: list[SubscriptionEntry] = await self._read(lambda txn: every_entry(self._dbs, txn))
        return found

    async def digest(self) -> bytes:
        return digest_of(await self.entries())
