"""Content-addressed message bodies with reference counts (single-instance store).

A body is stored once per node under its SHA-256 whatever the number of
messages (copies, identical deliveries, other users) that refer to it; the
last reference frees it.  Bodies are zstd-compressed unless that does not pay.

Hashing and compression are CPU work done *before* the write transaction
(:class:`PreparedBody`), so the single writer thread only copies bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from replicad.blob import CODEC_RAW, CODEC_ZSTD, MAX_BODY, MIN_SAVING, ZSTD_LEVEL, Blob
from replicad.errors import ProtocolError, ReplicadError
from replicad.store.schema import Databases, pack_u64, unpack_u64

__all__ = ["CODEC_RAW", "CODEC_ZSTD", "MIN_SAVING", "ZSTD_LEVEL", "PreparedBody"]


@dataclass(frozen=True, slots=True)
class PreparedBody:
    """A body hashed and encoded, ready to be written by the writer thread."""

    body_hash: bytes
    size: int
    stored: bytes  # codec byte + payload (replicad.blob.Blob.stored)

    @classmethod
    def make(cls, body: bytes) -> PreparedBody:
        """Hash and compress a body this node is the first to store."""
        blob = Blob.compress(body)
        return cls(hashlib.sha256(body).digest(), blob.size, blob.stored)

    @classmethod
    def of(cls, body: bytes | Blob) -> PreparedBody:
        """:meth:`make` for a raw body; for a blob received in its stored form,
        the blob kept as it came, once verified (:meth:`replicad.blob.Blob.verify`:
        one zstd frame of the declared size; its SHA-256 is the key it is
        stored under, so a body sent under another hash is missing for the
        change naming that hash, never stored under it).  Raises
        ProtocolError for a corrupt blob: nothing of it is stored."""
        if isinstance(body, Blob):
            return cls(body.verify(), body.size, body.stored)
        return cls.make(body)


def body_hash(body: bytes) -> bytes:
    return hashlib.sha256(body).digest()


def add_reference(txn: Any, dbs: Databases, prepared: PreparedBody) -> None:
    """Count one more message referring to the body, storing it if it is new."""
    raw = txn.get(prepared.body_hash, db=dbs.blob_refs)
    if raw is None:
        txn.put(prepared.body_hash, prepared.stored, db=dbs.blobs)
        txn.put(prepared.body_hash, pack_u64(1), db=dbs.blob_refs)
    else:
        txn.put(prepared.body_hash, pack_u64(unpack_u64(raw) + 1), db=dbs.blob_refs)


def add_reference_to_existing(txn: Any, dbs: Databases, digest: bytes) -> None:
    """Count one more reference to a body already stored (COPY: no second body)."""
    raw = txn.get(digest, db=dbs.blob_refs)
    if raw is None:
        raise ReplicadError(f"store corrupt: body {digest.hex()} referenced but missing")
    txn.put(digest, pack_u64(unpack_u64(raw) + 1), db=dbs.blob_refs)


def drop_reference(txn: Any, dbs: Databases, digest: bytes) -> None:
    """Count one reference less; the last one frees the body."""
    raw = txn.get(digest, db=dbs.blob_refs)
    if raw is None:
        raise ReplicadError(f"store corrupt: body {digest.hex()} has no reference count")
    count = unpack_u64(raw) - 1
    if count == 0:
        txn.delete(digest, db=dbs.blob_refs)
        txn.delete(digest, db=dbs.blobs)
    else:
        txn.put(digest, pack_u64(count), db=dbs.blob_refs)


def reference_count(txn: Any, dbs: Databases, digest: bytes) -> int:
    raw = txn.get(digest, db=dbs.blob_refs)
    return 0 if raw is None else unpack_u64(raw)


def read_blob(txn: Any, dbs: Databases, digest: bytes) -> Blob:
    """The stored form of a body, as it is kept (no decompression): what the
    wire carries (protocol-spec/verbs.md, "Bodies")."""
    stored = txn.get(digest, db=dbs.blobs)
    if stored is None:
        raise ReplicadError(f"store corrupt: body {digest.hex()} missing")
    try:
        return Blob.parse(bytes(stored), MAX_BODY)
    except ProtocolError as exc:
        raise ReplicadError(f"store corrupt: body {digest.hex()}: {exc.message}") from None


def read_body(txn: Any, dbs: Databases, digest: bytes) -> bytes:
    """The body itself (decompressed)."""
    try:
        return read_blob(txn, dbs, digest).decompress()
    except ProtocolError as exc:
        raise ReplicadError(f"store corrupt: body {digest.hex()}: {exc.message}") from None
