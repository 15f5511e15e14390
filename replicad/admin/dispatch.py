"""Admin requests → store operations → msgpack-ready results.

:class:`AdminDispatcher` is the one place that knows the admin operations
(``protocol-spec/admin.md``): it checks every argument's type (a request is
untrusted input, I9), calls the :class:`~replicad.store.mailstore.MailStore`,
and turns the records it returns into plain maps.  It does no socket I/O.

A :class:`~replicad.errors.ReplicadError` from the store becomes an error
response carrying its class name, so the client rebuilds the same error and
the command line exits with the code of docs/architecture.md §9.  Any other exception is a
bug: it is logged and answered as an internal error, and the node keeps
serving (I9: a request never crashes the node).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import trio

from replicad.admin.framing import error_response, ok_response
from replicad.cluster.writes import ClusterWrites
from replicad.errors import BadInputError, ProtocolError, ReplicadError, TemporaryError
from replicad.store.hierarchy import create_with_superiors
from replicad.store.mailstore import AppendRequest, MailStore
from replicad.store.records import MailboxStatus, MessageAppended, MessageInfo
from replicad.uidset import UidSet

log = logging.getLogger("replicad.admin")

# Import batches are bounded by the client; this bound keeps a hostile or
# buggy client from making one transaction arbitrarily large.
MAX_BATCH_ITEMS = 10_000
FLAG_MODES = ("add", "remove", "replace")


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """What ``ping`` reports: lets a client (and a second node) know who answers."""

    name: str
    version: str
    pid: int


class _Args:
    """Typed access to a request's ``args`` map; every mistake names the argument."""

    def __init__(self, op: str, args: dict[str, Any]) -> None:
        self._op = op
        self._args = args

    def _get(self, key: str, kind: type, default: Any, required: bool) -> Any:
        if key not in self._args or self._args[key] is None:
            if required:
                raise ProtocolError(f"{self._op}: missing argument {key!r}")
            return default
        value = self._args[key]
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise ProtocolError(f"{self._op}: argument {key!r} must be {kind.__name__}")
        return value

    def text(self, key: str, default: str | None = None) -> str:
        value: str = self._get(key, str, default, default is None)
        return value

    def switch(self, key: str) -> bool:
        value: bool = self._get(key, bool, False, False)
        return value

    def number(self, key: str) -> int:
        value: int = self._get(key, int, None, True)
        return value

    def opt_number(self, key: str) -> int | None:
        value: int | None = self._get(key, int, None, False)
        return value

    def blob(self, key: str) -> bytes:
        value: bytes = self._get(key, bytes, None, True)
        return value

    def flags(self, key: str) -> tuple[str, ...]:
        value: list[Any] = self._get(key, list, [], False)
        if not all(isinstance(f, str) for f in value):
            raise ProtocolError(f"{self._op}: argument {key!r} must be a list of strings")
        return tuple(value)

    def uids(self, key: str) -> UidSet:
        return UidSet.parse(self.text(key))

    def items(self, key: str) -> list[Any]:
        value: list[Any] = self._get(key, list, None, True)
        return value


Handler = Callable[[_Args], Awaitable[Any]]


async def _raw_args(handler: Callable[[dict[str, Any]], Awaitable[Any]], a: _Args) -> Any:
    return await handler(a._args)


class BatchOrder:
    """Commits the batches of a pipelined import in the order the client numbered
    them (``stream``, ``seq`` from 0), so UIDs follow the Maildir's order even
    with two batches in flight on two connections."""

    WAIT = 120.0  # a batch whose predecessor never comes fails instead of hanging
    MAX_STREAMS = 1024

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        self._changed = trio.Event()

    @asynccontextmanager
    async def turn(self, stream: str, seq: int) -> AsyncIterator[None]:
        with trio.move_on_after(self.WAIT) as scope:
            while self._next.get(stream, 0) != seq:
                await self._changed.wait()
        if scope.cancelled_caught:
            raise TemporaryError(f"import batch {seq} of {stream}: earlier batch never arrived")
        try:
            yield
        finally:
            self._next[stream] = seq + 1
            if len(self._next) > self.MAX_STREAMS:
                del self._next[next(iter(self._next))]
            self._changed.set()
            self._changed = trio.Event()


class AdminDispatcher:
    """Runs one admin request against ``store`` and returns the response map."""

    def __init__(
        self,
        store: MailStore,
        identity: NodeIdentity,
        max_message_size: int,
        *,
        cluster: ClusterWrites | None = None,
        extra: Mapping[str, Callable[[dict[str, Any]], Awaitable[Any]]] | None = None,
    ) -> None:
        """``extra``: operations of parts above the admin socket (``migrate_*``),
        by name; each checks its own arguments."""
        self._store = store
        # Writes go to the mailbox master in a cluster; reads are always local.
        self._writes: MailStore | ClusterWrites = cluster if cluster is not None else store
        self._cluster = cluster
        self._batch_order = BatchOrder()
        self._identity = identity
        self._max_message_size = max_message_size
        self._handlers: dict[str, Handler] = {
            "ping": self._ping,
            "usage": self._usage,
            "save": self._save,
            "append_many": self._append_many,
            "fetch": self._fetch,
            "fetch_body": self._fetch_body,
            "store_flags": self._store_flags,
            "expunge": self._expunge,
            "copy": self._copy,
            "mailbox_create": self._mailbox_create,
            "mailbox_delete": self._mailbox_delete,
            "mailbox_rename": self._mailbox_rename,
            "mailbox_list": self._mailbox_list,
            "mailbox_status": self._mailbox_status,
            "mailbox_subscribe": self._mailbox_subscribe,
            "mailbox_subscriptions": self._mailbox_subscriptions,
            "list_users": self._list_users,
            "cluster_status": self._cluster_status,
            "master_move": self._master_move,
            "sync": self._sync,
            "verify": self._verify,
            "dsync_status": self._dsync_status,
        }
        for name, handler in (extra or {}).items():
            self._handlers[name] = partial(_raw_args, handler)

    @property
    def operations(self) -> tuple[str, ...]:
        return tuple(self._handlers)

    async def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """Answer one request (see :func:`parse_request`); never raises except Cancelled."""
        try:
            handler = self._handlers.get(op)
            if handler is None:
                raise ProtocolError(f"unknown operation {op!r}")
            return ok_response(await handler(_Args(op, args)))
        except ReplicadError as exc:
            if isinstance(exc, TemporaryError):
                # Operators need to see a full store or an unmet durability level.
                log.warning(
                    "admin.request_failed",
                    extra={"kv": {"op": op, "error": type(exc).__name__, "reason": str(exc)}},
                )
            return error_response(exc)
        except Exception as exc:
            log.exception(
                "admin.internal_error", extra={"kv": {"op": op, "error": type(exc).__name__}}
            )
            return error_response(ReplicadError(f"internal error in {op}: {exc}"))

    # -- node --

    async def _ping(self, _: _Args) -> dict[str, Any]:
        ident = self._identity
        return {"node": ident.name, "version": ident.version, "pid": ident.pid}

    async def _usage(self, _: _Args) -> dict[str, Any]:
        usage = self._store.usage()
        stats = self._store.writer.stats
        return {
            "map_size": usage.map_size,
            "used_bytes": usage.used_bytes,
            # Group commit at work: operations per transaction (one fsync each).
            "commits": stats.batches,
            "write_operations": stats.operations,
            "largest_commit": stats.largest_batch,
        }

    # -- messages --

    def _check_size(self, body: bytes) -> None:
        if len(body) > self._max_message_size:
            raise BadInputError(
                f"message of {len(body)} bytes exceeds the limit of "
                f"{self._max_message_size} bytes (admin.max_message_size)"
            )
        if not body:
            raise BadInputError("empty message")

    async def _save(self, a: _Args) -> dict[str, Any]:
        body = a.blob("body")
        self._check_size(body)
        appended = await self._writes.append(
            a.text("user"),
            a.text("mailbox", "INBOX"),
            body,
            flags=a.flags("flags"),
            internaldate=a.opt_number("internaldate"),
        )
        return appended_map(appended)

    async def _append_many(self, a: _Args) -> list[dict[str, Any]]:
        raw_items = a.items("items")
        if len(raw_items) > MAX_BATCH_ITEMS:
            raise ProtocolError(f"append_many: more than {MAX_BATCH_ITEMS} items in one batch")
        items: list[AppendRequest] = []
        for i, raw in enumerate(raw_items):
            if not isinstance(raw, dict):
                raise ProtocolError(f"append_many: item {i} must be a map")
            item = _Args(f"append_many item {i}", raw)
            body = item.blob("body")
            self._check_size(body)
            items.append(AppendRequest(body, item.flags("flags"), item.opt_number("internaldate")))
        if not items:
            return []
        stream, seq = a._get("stream", str, None, False), a.opt_number("seq")
        in_turn = None
        if stream is not None and seq is not None:
            in_turn = partial(self._batch_order.turn, stream, seq)
        appended = await self._writes.append_many(
            a.text("user"), a.text("mailbox"), items, in_turn=in_turn
        )
        return [appended_map(m) for m in appended]

    async def _fetch(self, a: _Args) -> list[dict[str, Any]]:
        infos = await self._store.fetch(a.text("user"), a.text("mailbox"), a.uids("uids"))
        return [message_map(m) for m in infos]

    async def _fetch_body(self, a: _Args) -> bytes:
        return await self._store.fetch_body(a.text("user"), a.text("mailbox"), a.number("uid"))

    async def _store_flags(self, a: _Args) -> dict[str, Any]:
        mode = a.text("mode")
        if mode not in FLAG_MODES:
            raise ProtocolError(f"store_flags: mode must be one of {', '.join(FLAG_MODES)}")
        changed = await self._writes.store_flags(
            a.text("user"),
            a.text("mailbox"),
            a.uids("uids"),
            mode,  # type: ignore[arg-type]  # checked against FLAG_MODES above
            a.flags("flags"),
            unchangedsince=a.opt_number("unchangedsince"),
        )
        return {
            "uids": list(changed.uids),
            "modseq": changed.modseq,
            "rejected": list(changed.rejected),
        }

    async def _expunge(self, a: _Args) -> dict[str, Any]:
        expunged = await self._writes.expunge(a.text("user"), a.text("mailbox"), a.uids("uids"))
        return {"uids": [uid for uid, _ in expunged.expunged], "modseq": expunged.modseq}

    async def _copy(self, a: _Args) -> dict[str, Any]:
        copied = await self._writes.copy(
            a.text("user"), a.text("mailbox"), a.uids("uids"), a.text("dest")
        )
        return {
            "source_uids": list(copied.source_uids),
            "dest_uids": [m.uid for m in copied.appended],
        }

    # -- mailboxes --

    async def _mailbox_create(self, a: _Args) -> dict[str, Any]:
        created = await create_with_superiors(self._writes, a.text("user"), a.text("name"))
        return {"name": created.name, "guid": created.mailbox, "uidvalidity": created.uidvalidity}

    async def _mailbox_delete(self, a: _Args) -> dict[str, Any]:
        deleted = await self._writes.delete_mailbox(a.text("user"), a.text("name"))
        return {"name": deleted.name, "guid": deleted.mailbox}

    async def _mailbox_rename(self, a: _Args) -> dict[str, Any]:
        renamed = await self._writes.rename_mailbox(a.text("user"), a.text("old"), a.text("new"))
        return {"old": renamed.old_name, "new": renamed.new_name, "guid": renamed.mailbox}

    async def _mailbox_list(self, a: _Args) -> list[dict[str, Any]]:
        return [status_map(s) for s in await self._store.list_mailboxes(a.text("user"))]

    async def _mailbox_status(self, a: _Args) -> dict[str, Any]:
        return status_map(await self._store.mailbox_status(a.text("user"), a.text("name")))

    async def _mailbox_subscribe(self, a: _Args) -> dict[str, Any]:
        """IMAP SUBSCRIBE (``subscribe`` true) or UNSUBSCRIBE, through the
        write path; any name, existing or not (resync.md §10)."""
        changed = await self._writes.set_subscribed(
            a.text("user"), a.text("name"), a.switch("subscribe")
        )
        return {"name": changed.name, "subscribed": changed.subscribed}

    async def _mailbox_subscriptions(self, a: _Args) -> list[str]:
        return sorted(await self._store.subscriptions.subscribed(a.text("user")))

    async def _list_users(self, _: _Args) -> list[str]:
        return await self._store.list_users()

    async def _master_move(self, a: _Args) -> dict[str, Any]:
        if self._cluster is None:
            raise BadInputError("master move: this node has no peers (not in a cluster)")
        return await self._cluster.move_master(a.text("user"), a.text("mailbox"), a.text("node"))

    def _require_cluster(self, what: str) -> Any:
        """The node's :class:`~replicad.cluster.runtime.ClusterNode`."""
        if self._cluster is None:
            raise BadInputError(f"{what}: this node has no peers (not in a cluster)")
        return self._cluster.node

    def _users(self, a: _Args) -> list[str] | None:
        user = a.text("user", "")
        return [user] if user else None

    async def _sync(self, a: _Args) -> dict[str, Any]:
        peer = a.text("peer", "")
        result: dict[str, Any] = await self._require_cluster("sync").sync(
            self._users(a), peer or None, full=a.switch("full")
        )
        return result

    async def _verify(self, a: _Args) -> dict[str, Any]:
        result: dict[str, Any] = await self._require_cluster("verify").verify_mailboxes(
            self._users(a)
        )
        return result

    async def _dsync_status(self, _: _Args) -> dict[str, Any]:
        result: dict[str, Any] = await self._require_cluster(
            "replicator dsync-status"
        ).dsync_status()
        return result

    async def _cluster_status(self, _: _Args) -> dict[str, Any]:
        if self._cluster is None:
            return {"node": self._identity.name, "root": None, "epoch": 0, "peers": []}
        return await self._cluster.status()


def appended_map(m: MessageAppended) -> dict[str, Any]:
    return {
        "uid": m.uid,
        "guid": m.guid,
        "modseq": m.modseq,
        "flags": list(m.flags),
        "internaldate": m.internaldate,
        "size": m.size,
        "uidvalidity": m.uidvalidity,  # RFC 4315 APPENDUID: the UID's UID space
    }


def message_map(m: MessageInfo) -> dict[str, Any]:
    return {
        "uid": m.uid,
        "guid": m.guid,
        "modseq": m.modseq,
        "flags": list(m.flags),
        "internaldate": m.internaldate,
        "size": m.size,
        "body_hash": m.body_hash,
    }


def status_map(s: MailboxStatus) -> dict[str, Any]:
    return {
        "name": s.name,
        "guid": s.guid,
        "uidvalidity": s.uidvalidity,
        "uidnext": s.uidnext,
        "highestmodseq": s.highestmodseq,
        "messages": s.messages,
        "vsize": s.vsize,
    }


def default_identity(name: str) -> NodeIdentity:
    from replicad import __version__

    return NodeIdentity(name=name, version=__version__, pid=os.getpid())
