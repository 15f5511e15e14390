"""A message body in its stored form: what the store keeps and the wire carries.

The single-instance store (docs/architecture.md §5) keeps every body as one octet naming
its codec followed by the payload: ``0x00`` + the body itself, or ``0x01`` +
one zstd frame (RFC 8878) whose header declares the body's size.  Since
protocol version 3 the body fields of SAVE, ``* SAVE``, UPDATE's APPEND and
``* FETCH`` carry exactly these octets (protocol-spec/verbs.md, "Bodies"), so
a body is compressed once, when a node first stores it, and neither
decompressed nor recompressed on its way to another node's store.

Two levels of checking, both pure (no I/O):

* :meth:`Blob.parse` -- O(1), done by the codec on every received body
  field: a known codec, and for zstd a frame header that declares a content
  size within ``max_size``, a window of at most :data:`MAX_WINDOW` and no
  dictionary.  This bounds what decompressing it can ever allocate
  (decompression bombs, I9) before any of it is done.
* :meth:`Blob.decompress` / :meth:`Blob.verify` -- the content: exactly one
  zstd frame, no trailing octets, inflating to exactly the declared size,
  matching its frame checksum when it has one (bodies this code compresses
  do), and (``verify``) hashing to the SHA-256 the body is stored under.  The
  store runs this on every received blob before its write transaction
  (:meth:`replicad.store.blobs.PreparedBody.of`), so a corrupt or lying body
  never reaches the store: it is refused with a :class:`ProtocolError`.
"""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from typing import Final

import zstandard

from replicad.errors import ProtocolError

CODEC_RAW: Final = 0
CODEC_ZSTD: Final = 1
#: Level the store compresses bodies with (once, at write time).
ZSTD_LEVEL: Final = 3
#: Keep the compressed form only when it saves at least this fraction: base64
#: attachments of random data compress to ~75 %, plain text to ~30 %.
MIN_SAVING: Final = 0.05
#: Largest body: the largest frame (replicad.protocol.frames.DEFAULT_MAX_FRAME)
#: must hold it.
MAX_BODY: Final = 64 * 1024 * 1024
#: Largest zstd window a received body may declare (as for the link's own
#: stream, compression.md §4): what decompressing it may make us allocate
#: beyond its declared size.
MAX_WINDOW: Final = 8 * 1024 * 1024

#: From this size on a body is compressed in a stream straight behind its
#: codec octet: ``compress()`` allocates the payload's worst-case bound (the
#: body's size) and the codec octet in front is then another copy, which for
#: a large message was twice its size on top of the body.
STREAM_COMPRESS_BYTES: Final = 1024 * 1024

_local = threading.local()


def _compress_streaming(body: bytes) -> bytes:
    """The codec octet and one zstd frame (content size declared) in one buffer.

    ``BytesIO`` grows its buffer in place and ``getvalue`` hands that very
    object over when nothing else refers to it, so no copy is made."""
    out = io.BytesIO()
    out.write(bytes((CODEC_ZSTD,)))
    with _compressor().stream_writer(out, size=len(body), closefd=False) as writer:
        writer.write(body)
    return out.getvalue()


def _compressor() -> zstandard.ZstdCompressor:
    comp: zstandard.ZstdCompressor | None = getattr(_local, "comp", None)
    if comp is None:
        # The content size in the header is what makes a body's size checkable
        # (and its decompression bounded) before it is decompressed.  The
        # frame checksum (XXH64, 4 octets) catches a payload damaged into
        # another valid one, also where no body hash travels with it (SAVE).
        comp = zstandard.ZstdCompressor(
            level=ZSTD_LEVEL, write_content_size=True, write_checksum=True
        )
        _local.comp = comp
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec: zstandard.ZstdDecompressor | None = getattr(_local, "dec", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)
        _local.dec = dec
    return dec


@dataclass(frozen=True, slots=True)
class Blob:
    """A body's stored form (``stored``: codec octet + payload) and its size.

    ``size`` is the body's own length in octets: ``len(stored) - 1`` for the
    raw codec, the content size the zstd frame header declares otherwise.
    Construct with :meth:`compress` (from a body) or :meth:`parse` (from
    octets received or read back); both guarantee the header checks above.
    """

    stored: bytes
    size: int

    @property
    def codec(self) -> int:
        return self.stored[0]

    @classmethod
    def compress(cls, body: bytes) -> Blob:
        """The stored form of ``body``: zstd when that saves :data:`MIN_SAVING`, else raw."""
        if len(body) >= STREAM_COMPRESS_BYTES:
            stored = _compress_streaming(body)
        else:
            stored = bytes((CODEC_ZSTD,)) + _compressor().compress(body)
        if len(stored) - 1 <= len(body) * (1 - MIN_SAVING):
            return cls(stored, len(body))
        del stored
        return cls.raw(body)

    @classmethod
    def raw(cls, body: bytes) -> Blob:
        """``body`` under the raw codec (what the store keeps when zstd does not pay)."""
        return cls(bytes((CODEC_RAW,)) + body, len(body))

    @classmethod
    def parse(cls, stored: bytes, max_size: int) -> Blob:
        """Check the header of ``stored`` (O(1)) and return it as a Blob.

        Raises :class:`ProtocolError` for an empty value, an unknown codec, a
        zstd payload without a frame header that declares its content size,
        a content size above ``max_size``, a window above :data:`MAX_WINDOW`
        or a dictionary.  The payload itself is checked by :meth:`decompress`.
        """
        if not stored:
            raise ProtocolError("empty (no codec octet)")
        codec = stored[0]
        if codec == CODEC_RAW:
            size = len(stored) - 1
            if size > max_size:
                raise ProtocolError(f"{size} octets exceed the {max_size}-octet limit")
            return cls(stored, size)
        if codec != CODEC_ZSTD:
            raise ProtocolError(f"unknown codec {codec}")
        try:
            params = zstandard.get_frame_parameters(memoryview(stored)[1:])
        except zstandard.ZstdError:
            raise ProtocolError("not a zstd frame") from None
        size = params.content_size
        if size == zstandard.CONTENTSIZE_UNKNOWN or size == zstandard.CONTENTSIZE_ERROR:
            raise ProtocolError("zstd frame does not declare its content size")
        if size > max_size:
            raise ProtocolError(f"declared size {size} exceeds the {max_size}-octet limit")
        if params.window_size > MAX_WINDOW:
            raise ProtocolError(f"zstd window of {params.window_size} octets is too large")
        if params.dict_id:
            raise ProtocolError("zstd frame needs a dictionary")
        return cls(stored, size)

    def decompress(self) -> bytes:
        """The body itself; ProtocolError unless the payload is exactly one zstd
        frame inflating to exactly :attr:`size` octets (nothing after it).

        Allocation is bounded by :attr:`size` (checked by :meth:`parse`) and
        the window (:data:`MAX_WINDOW`), whatever the payload claims inside.
        """
        if self.stored[0] == CODEC_RAW:
            return self.stored[1:]
        try:
            body: bytes = _decompressor().decompress(
                memoryview(self.stored)[1:], max_output_size=self.size, allow_extra_data=False
            )
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"body: corrupt zstd payload: {exc}") from None
        if len(body) != self.size:
            raise ProtocolError(f"body: inflates to {len(body)} octets, declared {self.size}")
        return body

    def verify(self, body_hash: bytes | None = None) -> bytes:
        """The body's SHA-256 after :meth:`decompress`; ProtocolError if it is not
        ``body_hash`` (when given): the sender's content address is a lie."""
        digest = hashlib.sha256(self.decompress()).digest()
        if body_hash is not None and digest != body_hash:
            raise ProtocolError(
                f"body: content hashes to {digest.hex()[:16]}, declared {body_hash.hex()[:16]}"
            )
        return digest
