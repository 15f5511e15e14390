"""Admin-socket framing: a 4-byte big-endian length, then one msgpack document.

Pure (sans-I/O): :class:`FrameDecoder` is fed whatever bytes arrived and hands
back complete documents, so the same code serves the trio server and the
blocking client, and can be tested without sockets.  The length is checked
*before* the body is buffered, so an oversized frame costs the node four
bytes of memory, not the frame (I9).

Requests are ``{"op": str, "args": map}``; responses are ``{"ok": true,
"result": any}`` or ``{"ok": false, "error": class name, "message": str}``.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from replicad.errors import ProtocolError, ReplicadError

HEADER = struct.Struct(">I")
MAX_FRAME_LIMIT = (1 << 32) - 1  # what a 4-byte length can announce


def encode_frame(document: Any) -> bytes:
    """One framed msgpack document (bytes stay bytes: ``use_bin_type``)."""
    body: bytes = msgpack.packb(document, use_bin_type=True)
    if len(body) > MAX_FRAME_LIMIT:
        raise ProtocolError(f"document of {len(body)} bytes is too large for one frame")
    return HEADER.pack(len(body)) + body


def decode_document(body: bytes) -> Any:
    """Unpack one frame body; anything msgpack rejects is a :class:`ProtocolError`."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise ProtocolError(f"malformed frame: {type(exc).__name__}: {exc}") from None


class FrameDecoder:
    """Accumulates bytes and yields complete frame bodies, enforcing ``max_frame``."""

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being read

    def feed(self, data: bytes) -> None:
        self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_body(self) -> bytes | None:
        """The next complete frame body, or None until more bytes are fed."""
        if self._need is None:
            if len(self._buffer) < HEADER.size:
                return None
            (length,) = HEADER.unpack_from(self._buffer)
            if length > self.max_frame:
                raise ProtocolError(
                    f"frame of {length} bytes exceeds the limit of {self.max_frame} bytes"
                )
            del self._buffer[: HEADER.size]
            self._need = length
        if len(self._buffer) < self._need:
            return None
        body = bytes(self._buffer[: self._need])
        del self._buffer[: self._need]
        self._need = None
        return body

    def missing(self) -> int:
        """How many more bytes the current frame needs (a read-size hint)."""
        if self._need is None:
            return max(HEADER.size - len(self._buffer), 1)
        return max(self._need - len(self._buffer), 1)


def request(op: str, args: dict[str, Any]) -> dict[str, Any]:
    return {"op": op, "args": args}


def ok_response(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error_response(error: ReplicadError) -> dict[str, Any]:
    return {"ok": False, "error": type(error).__name__, "message": error.message}


def parse_request(document: Any) -> tuple[str, dict[str, Any]]:
    """Check the request shape; a wrong shape is a :class:`ProtocolError`."""
    if not isinstance(document, dict):
        raise ProtocolError("request must be a map {op, args}")
    op = document.get("op")
    args = document.get("args", {})
    if not isinstance(op, str) or not op:
        raise ProtocolError("request has no 'op' string")
    if not isinstance(args, dict):
        raise ProtocolError("request 'args' must be a map")
    extra = set(document) - {"op", "args"}
    if extra:
        raise ProtocolError(f"request has unknown fields: {', '.join(sorted(map(str, extra)))}")
    return op, args
