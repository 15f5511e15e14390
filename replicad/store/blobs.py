"""Content-addressed message bodies with reference counts (single-instance store).

A body is stored once per node under its SHA-256 whatever the number of
messages (copies, identical deliveries, other users) that refer to it; the
last reference frees it.  Bodies are zstd-compressed unless that does not pay.

Hashing and compression are CPU work done *before* the write transaction
(:class:`PreparedBody`), so the single writer thread only copies bytes.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import zstandard

from replicad.errors import ReplicadError
from replicad.store.schema import Databases, pack_u64, unpack_u64

CODEC_RAW = 0
CODEC_ZSTD = 1
ZSTD_LEVEL = 3
# Keep the compressed form only when it saves at least this fraction: base64
# attachments of random data compress to ~75 %, plain text to ~30 %.
MIN_SAVING = 0.05

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    comp: zstandard.ZstdCompressor | None = getattr(_local, "comp", None)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        _local.comp = comp
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "dec", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor()
        _local.dec = dec
    return dec


@dataclass(frozen=True, slots=True)
class PreparedBody:
    """A body hashed and encoded, ready to be written by the writer thread."""

    body_hash: bytes
    size: int
    stored: bytes  # codec byte + payload

    @classmethod
    def make(cls, body: bytes) -> PreparedBody:
        digest = hashlib.sha256(body).digest()
        compressed = _compressor().compress(body)
        if len(compressed) <= len(body) * (1 - MIN_SAVING):
            stored = bytes([CODEC_ZSTD]) + compressed
        else:
            stored = bytes([CODEC_RAW]) + body
        return cls(digest, len(body), stored)


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


def read_body(txn: Any, dbs: Databases, digest: bytes) -> bytes:
    stored = txn.get(digest, db=dbs.blobs)
    if stored is None:
        raise ReplicadError(f"store corrupt: body {digest.hex()} missing")
    codec, payload = stored[0], bytes(stored[1:])
    if codec == CODEC_RAW:
        return payload
    if codec == CODEC_ZSTD:
        return _decompressor().decompress(payload)
    raise ReplicadError(f"store corrupt: body {digest.hex()} has unknown codec {codec}")
