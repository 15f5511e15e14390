"""LMDB layout of a node's store: named databases, key encodings, row packing.

Keys are fixed-width big-endian so that LMDB's byte order is numeric order,
which makes "every change of mailbox M after MODSEQ n" one range scan.

=============  ==========================================  ==============================
database       key                                         value (msgpack unless noted)
=============  ==========================================  ==============================
meta           ascii name                                  schema version, counters
mailboxes      mailbox guid (16)                           MailboxRow
names          user NUL name (utf-8)                       mailbox guid (16, raw)
messages       mailbox guid (16) + uid (u32)               MessageRow
changes        mailbox guid (16) + modseq (u64) + uid      kind (1 byte, raw): M or X
tombstones     mailbox guid (16) + uid (u32)               [message guid, modseq, [guid...]]
blobs          body hash (32)                              codec byte + data (raw)
blob_refs      body hash (32)                              refcount (u64, raw)
log            sequence number (u64)                       encoded change record
cursors        peer name (utf-8)                           last acknowledged sequence (u64)
resync         peer name NUL mailbox guid (16)             [reason, since modseq]
deleted        mailbox guid (16)                           [user, name] of a deleted mailbox
subscriptions  user NUL name (utf-8)                       [stamp, subscribed] (IMAP LSUB)
=============  ==========================================  ==============================
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import msgpack

from replicad.errors import BadInputError, ReplicadError
from replicad.fsmode import PRIVATE_FILE, private_directory, tighten_if_present
from replicad.store.namespace import Claim

SCHEMA_VERSION = 1
DB_NAMES = (
    "meta",
    "mailboxes",
    "names",
    "messages",
    "changes",
    "tombstones",
    "blobs",
    "blob_refs",
    "log",
    "cursors",
    "resync",
    "deleted",
    "subscriptions",
    "local_jobs",  # this node's own jobs (migrations); never replicated
)

CHANGE_MESSAGE = b"M"  # the message at this (modseq, uid) exists with this modseq
CHANGE_EXPUNGED = b"X"  # the UID was expunged at this modseq (QRESYNC VANISHED)

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_MSGKEY = struct.Struct(">16sI")
_CHGKEY = struct.Struct(">16sQI")


def message_key(mailbox: bytes, uid: int) -> bytes:
    return _MSGKEY.pack(mailbox, uid)


def uid_of_message_key(key: bytes) -> int:
    return int(_U32.unpack_from(key, 16)[0])


def change_key(mailbox: bytes, modseq: int, uid: int) -> bytes:
    return _CHGKEY.pack(mailbox, modseq, uid)


def split_change_key(key: bytes) -> tuple[int, int]:
    _, modseq, uid = _CHGKEY.unpack(key)
    return int(modseq), int(uid)


def name_key(user: str, name: str) -> bytes:
    return user.encode() + b"\0" + name.encode()


def user_prefix(user: str) -> bytes:
    return user.encode() + b"\0"


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(raw: bytes) -> int:
    return int(_U64.unpack(raw)[0])


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def pack_tombstone(
    guids: tuple[bytes, ...], modseq: int, moved: tuple[tuple[bytes, int], ...] = ()
) -> bytes:
    """A tombstone names the message GUID it had; after a UID collision was
    resolved, every GUID the UID ever named (so a late copy of any of them is
    recognised as expunged, never as a new conflict) and where each moved
    message went (``moved``: (guid, new uid), replicad.model.merge rule 6)."""
    first, *more = sorted(guids)
    if moved:
        return pack([first, modseq, more, [[g, u] for g, u in moved]])
    return pack([first, modseq, more]) if more else pack([first, modseq])


def unpack_tombstone(raw: bytes) -> tuple[tuple[bytes, ...], int, tuple[tuple[bytes, int], ...]]:
    """``(guids, modseq, moved)`` of a tombstone value (see :func:`pack_tombstone`)."""
    first, modseq, *rest = unpack(raw)
    more = rest[0] if rest else ()
    moved = tuple((bytes(g), int(u)) for g, u in rest[1]) if len(rest) > 1 else ()
    return (bytes(first), *(bytes(g) for g in more)), int(modseq), moved


@dataclass(frozen=True, slots=True)
class MailboxRow:
    user: str
    name: str
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    vsize: int
    #: The name a client last gave the mailbox and that decision's hybrid
    #: clock stamp (:mod:`replicad.store.namespace`); ``name`` is what it
    #: is shown under, which differs only while another mailbox's newer
    #: claim holds the same name.  Rows written before claims existed
    #: decode with claim = name, stamp 0.
    claim: str = ""
    name_stamp: int = 0

    def encode(self) -> bytes:
        return pack(
            [
                self.user,
                self.name,
                self.uidvalidity,
                self.uidnext,
                self.highestmodseq,
                self.messages,
                self.vsize,
                self.claim or self.name,
                self.name_stamp,
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> MailboxRow:
        user, name, uidvalidity, uidnext, highestmodseq, messages, vsize, *more = unpack(raw)
        claim, stamp = (more[0], more[1]) if more else (name, 0)
        return cls(user, name, uidvalidity, uidnext, highestmodseq, messages, vsize, claim, stamp)

    @property
    def claimed(self) -> Claim:
        return Claim(self.name_stamp, self.claim or self.name)


@dataclass(frozen=True, slots=True)
class MessageRow:
    guid: bytes
    modseq: int
    flags: tuple[str, ...]
    internaldate: int
    size: int
    body_hash: bytes
    #: The per-flag last-writer-wins registers (I5): ``(flag, stamp, present)``
    #: sorted by flag, one per flag ever set or cleared on this message; ``flags``
    #: is the set of present ones.  Empty in rows written before stamps existed,
    #: which :meth:`registers` reads as every flag present at stamp 0.
    marks: tuple[tuple[str, int, bool], ...] = ()

    def encode(self) -> bytes:
        return pack(
            [
                self.guid,
                self.modseq,
                list(self.flags),
                self.internaldate,
                self.size,
                self.body_hash,
                [[f, s, p] for f, s, p in self.marks],
            ]
        )

    @classmethod
    def decode(cls, raw: bytes) -> MessageRow:
        guid, modseq, flags, internaldate, size, body_hash, *rest = unpack(raw)
        marks = tuple((f, s, bool(p)) for f, s, p in rest[0]) if rest else ()
        return cls(guid, modseq, tuple(flags), internaldate, size, body_hash, marks)

    @staticmethod
    def body_hash_of(raw: bytes) -> bytes:
        """The body hash of an encoded row, without decoding the rest (the
        per-flag registers cost most): what a body read needs."""
        return bytes(unpack(raw)[5])

    def registers(self) -> tuple[tuple[str, int, bool], ...]:
        """Every register, including the implicit ones of a row without marks."""
        if self.marks or not self.flags:
            return self.marks
        return tuple((f, 0, True) for f in sorted(self.flags))


@dataclass(frozen=True, slots=True)
class Databases:
    """Handles of the named databases of one open environment."""

    env: lmdb.Environment
    meta: Any
    mailboxes: Any
    names: Any
    messages: Any
    changes: Any
    tombstones: Any
    blobs: Any
    blob_refs: Any
    log: Any
    cursors: Any
    resync: Any
    deleted: Any
    subscriptions: Any
    local_jobs: Any


def open_environment(path: Path, *, map_size: int, sync: bool = True) -> Databases:
    """Open (creating if needed) the store at ``path`` and check its schema version.

    ``sync=True`` makes every commit durable (fsync) before it returns: that is
    what lets a client's acknowledgement mean I1 at level ``local``.

    The directory is 0700 and ``data.mdb``/``lock.mdb`` 0600 whatever the
    umask; a store left more open (by an older version) is tightened
    (:mod:`replicad.fsmode`).
    """
    private_directory(path)
    try:
        env = lmdb.open(
            str(path),
            map_size=map_size,
            # LMDB creates its files with this mode less the umask (its
            # default, 0755, would leave every message readable by all).
            mode=PRIVATE_FILE,
            max_dbs=len(DB_NAMES) + 4,
            sync=sync,
            metasync=sync,
            # No writemap: nested transactions (one per operation inside a
            # group commit) are not supported with MDB_WRITEMAP.
            writemap=False,
            max_readers=256,
            lock=True,
        )
    except lmdb.LockError as exc:
        raise ReplicadError(f"store {path} is locked by another process: {exc}") from exc
    except lmdb.Error as exc:
        raise ReplicadError(f"cannot open store {path}: {exc}") from exc
    for name in ("data.mdb", "lock.mdb"):
        tighten_if_present(path / name, PRIVATE_FILE)
    handles = {name: env.open_db(name.encode()) for name in DB_NAMES}
    dbs = Databases(env=env, **handles)
    with env.begin(write=True) as txn:
        raw = txn.get(b"schema", db=dbs.meta)
        if raw is None:
            txn.put(b"schema", pack_u64(SCHEMA_VERSION), db=dbs.meta)
        elif unpack_u64(raw) != SCHEMA_VERSION:
            env.close()
            raise BadInputError(
                f"store {path} has schema version {unpack_u64(raw)}, "
                f"this replicad understands {SCHEMA_VERSION}"
            )
    return dbs
