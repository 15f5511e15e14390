"""Frame codec: 4-byte big-endian length prefix + one msgpack array (protocol-spec/framing.md).

A *frame* is a Python list ``[tag, VERB, field, ...]`` whose elements are
*values*: ``int`` (-2^63 .. 2^64-1), ``str`` (UTF-8), ``bytes``, ``None``
(msgpack nil) or a list of values.  Nothing else crosses the wire: no maps,
floats, booleans or extension types, so every frame has exactly one text
rendering (:mod:`replicad.protocol.text`).

:func:`encode_frame` turns a frame into wire bytes; :class:`FrameDecoder`
is fed bytes as they arrive and hands back complete frames.  Every
malformed input -- bad length, oversized frame, msgpack garbage, wrong
types, excessive nesting -- raises :class:`~replicad.errors.ProtocolError`
and nothing else (I9); after that the decoder is poisoned and the link
must be closed, because the byte stream has lost its framing.
"""

from __future__ import annotations

import struct
from collections.abc import Generator
from typing import Any, Final, NoReturn

import msgpack

from replicad.errors import ProtocolError

#: The default and largest frame a node accepts, in bytes of msgpack payload
#: (the 4-byte prefix excluded).  HELLO may only negotiate it *down*.
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
#: The smallest max-frame a node may announce: room for any non-body frame.
MIN_MAX_FRAME: Final = 64 * 1024
#: Nesting depth of lists, the frame itself counting as 1.  The deepest
#: legitimate frame (UPDATE: frame > ops > op > flags) has depth 4.
MAX_DEPTH: Final = 8
#: Element count of any one list (bounds the msgpack unpacker's allocation
#: before the frame-size check could help: a 5-byte array header may claim
#: 4 billion elements).
MAX_ARRAY_LEN: Final = 1_000_000
#: Largest integer magnitude: msgpack's own range.
MAX_INT: Final = 2**64 - 1
MIN_INT: Final = -(2**63)

PREFIX_LEN: Final = 4
UNTAGGED: Final = "*"

Value = int | str | bytes | None | list[Any]
Frame = list[Value]

_SCALARS: Final = frozenset({int, str, bytes, type(None)})
_PREFIX: Final = struct.Struct(">I")


def check_frame(frame: object, *, max_depth: int = MAX_DEPTH) -> Frame:
    """Return ``frame`` if it is a well-formed frame, else raise :class:`ProtocolError`.

    Well-formed: a list of at least two values whose first two (tag, verb)
    are non-empty strings, nested at most ``max_depth`` deep, holding only
    the value types listed in the module docstring.
    """
    if type(frame) is not list:
        raise ProtocolError(f"frame is a {type(frame).__name__}, not an array")
    if len(frame) < 2:
        raise ProtocolError("frame has no verb")
    tag, verb = frame[0], frame[1]
    if type(tag) is not str or not tag:
        raise ProtocolError("frame tag is not a non-empty string")
    if type(verb) is not str or not verb:
        raise ProtocolError("frame verb is not a non-empty string")
    # Hot path: the scan is written out flat because it runs on every frame.
    for value in frame:
        kind = type(value)
        if kind is list:
            _check_nested(value, 2, max_depth)
        elif kind not in _SCALARS:
            raise ProtocolError(f"value of type {kind.__name__} not allowed in a frame")
    return frame


def _check_nested(values: list[Any], depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise ProtocolError(f"frame nested deeper than {max_depth}")
    for value in values:
        kind = type(value)
        if kind is list:
            _check_nested(value, depth + 1, max_depth)
        elif kind not in _SCALARS:
            raise ProtocolError(f"value of type {kind.__name__} not allowed in a frame")


def pack_frame(frame: Frame) -> bytes:
    """The msgpack payload of ``frame`` (no length prefix); the inverse of :func:`unpack_frame`."""
    try:
        payload: bytes = msgpack.packb(frame, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"frame cannot be encoded: {exc}") from None
    return payload


def encode_frame(frame: Frame, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Length prefix + msgpack payload of ``frame``.

    Raises :class:`ProtocolError` if the payload is larger than ``max_frame``:
    sending it would make the peer close the link (framing.md §3).
    """
    payload = pack_frame(frame)
    if len(payload) > max_frame:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {max_frame}-byte limit")
    return _PREFIX.pack(len(payload)) + payload


class FrameEncoder:
    """:func:`encode_frame` with a reusable msgpack packer (one per link, not thread-safe)."""

    __slots__ = ("_pack", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack

    def encode(self, frame: Frame) -> bytes:
        """Length prefix + msgpack payload of ``frame``; ProtocolError if it cannot be
        encoded or exceeds ``max_frame``."""
        try:
            payload: bytes = self._pack(frame)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"frame cannot be encoded: {exc}") from None
        if len(payload) > self.max_frame:
            raise ProtocolError(
                f"frame of {len(payload)} bytes exceeds the {self.max_frame}-byte limit"
            )
        return _PREFIX.pack(len(payload)) + payload

    def encode_parts(self, frame: Frame) -> list[bytes]:
        """:meth:`encode` as pieces whose concatenation is exactly its result.

        A frame ending in a byte string of at least :data:`LARGE_BYTES`
        (a message body: SAVE, the change stream's SAVE, FETCH data) comes
        back as ``[prefix + head, body]`` with ``body`` the caller's own
        object: packing it would copy it twice (into the packer's buffer,
        out of it) and the prefix a third time, and bodies are nearly all
        the bytes a link carries.  Anything else is ``[encode(frame)]``.
        """
        count = len(frame)
        body = frame[-1] if count else None
        # count <= 15: the head is then a msgpack fixarray, one byte to patch.
        if type(body) is not bytes or len(body) < LARGE_BYTES or count > 15:
            return [self.encode(frame)]
        try:
            head: bytes = self._pack(frame[:-1])
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"frame cannot be encoded: {exc}") from None
        size = len(body)
        # msgpack's own choice for bytes of this size (use_bin_type): bin 16 or bin 32.
        body_header = _BIN16.pack(0xC5, size) if size <= 0xFFFF else _BIN32.pack(0xC6, size)
        total = len(head) + len(body_header) + size
        if total > self.max_frame:
            raise ProtocolError(f"frame of {total} bytes exceeds the {self.max_frame}-byte limit")
        # head[0] is the fixarray header of count - 1 elements (0x90 | n).
        return [
            b"".join((_PREFIX.pack(total), _FIXARRAY[count], head[1:], body_header)),
            body,
        ]


#: Smallest trailing byte string :meth:`FrameEncoder.encode_parts` leaves uncopied:
#: below it, one more piece to compress and join costs more than the copies.
LARGE_BYTES: Final = 16 * 1024
_BIN16: Final = struct.Struct(">BH")
_BIN32: Final = struct.Struct(">BI")
_FIXARRAY: Final = tuple(bytes((0x90 | n,)) for n in range(16))


def _unpacker_options(max_frame: int) -> dict[str, Any]:
    return {
        "raw": False,
        "use_list": True,
        "strict_map_key": True,
        "max_str_len": max_frame,
        "max_bin_len": max_frame,
        # A 5-byte array header may claim 4 billion elements; the unpacker
        # would allocate for them before noticing the frame is too short.
        "max_array_len": min(max_frame, MAX_ARRAY_LEN),
        "max_map_len": 0,  # maps are not part of the value model
        "max_ext_len": 0,  # neither are extension types
    }


def _shape(obj: object) -> Frame:
    """The O(1) part of :func:`check_frame`: an array with string tag and verb."""
    if type(obj) is not list or len(obj) < 2:
        raise ProtocolError("frame is not an array of at least [tag, verb]")
    if type(obj[0]) is not str or type(obj[1]) is not str or not obj[0] or not obj[1]:
        raise ProtocolError("frame tag or verb is not a non-empty string")
    return obj


def unpack_frame(payload: bytes | memoryview, *, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one msgpack payload (no prefix) into a fully checked frame (:func:`check_frame`)."""
    try:
        frame = msgpack.unpackb(payload, **_unpacker_options(max_frame))
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"frame is not valid msgpack: {type(exc).__name__}") from None
    return check_frame(frame)


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes in any slicing; frames come out of
    :meth:`iter_frames` (the hot path), :meth:`frames` or :meth:`next_frame`.

    Contract of a decoded frame: it is an array of at least two values
    (``[tag, verb, ...]``) whose payload was exactly the announced length.
    The *elements*, tag and verb included, are checked once, by the
    consumer, against what it expects: :func:`replicad.protocol.commands.decode`
    checks the tag, the verb and every field against the verb's exact
    schema; generic consumers (the text renderer, capture decoders) call
    :func:`check_frame`.  Checking both here and there would cost the hot
    path twice (tools/bench/bench_protocol.py).
    Decoding itself never recurses in Python: msgpack's unpacker is
    iterative, so nesting cannot exhaust the interpreter stack.

    Memory: a length prefix announcing more than ``max_frame`` bytes is
    refused as soon as its four bytes have arrived, before any payload is
    buffered, and :meth:`feed` refuses to hold more than
    ``max_buffered`` bytes (default twice a maximal frame): callers drain
    the frames after every feed of one network read.  After a
    :class:`ProtocolError` the decoder stays failed: the byte stream has
    lost its framing and the link must be closed.
    """

    __slots__ = (
        "_end",
        "_expected_end",
        "_failed",
        "_iterating",
        "_size",
        "_unpacker",
        "max_buffered",
        "max_frame",
    )

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, max_buffered: int | None = None) -> None:
        self.max_frame = max_frame
        self.max_buffered = max_buffered or 2 * (max_frame + PREFIX_LEN)
        # The unpacker doubles as the input buffer: prefixes are taken out
        # with read_bytes(), payloads decoded in place, no slicing copies.
        # Positions are stream offsets as the unpacker's tell() counts them:
        # what is buffered is _end - tell(), with no count to keep up to date
        # per frame.
        self._unpacker = msgpack.Unpacker(
            max_buffer_size=self.max_buffered, **_unpacker_options(max_frame)
        )
        self._end = 0  # stream offset just past the last byte fed
        self._size = -1  # payload size of a frame whose prefix was consumed, else -1
        self._expected_end = 0  # stream offset where that frame's payload must end
        self._failed: str | None = None
        self._iterating = False  # an iter_frames() generator is running or suspended

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if not data:
            return
        if self._end - self._unpacker.tell() + len(data) > self.max_buffered:
            self._fail(f"more than {self.max_buffered} bytes of undecoded input")
        self._unpacker.feed(data)
        self._end += len(data)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes are fed."""
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if self._iterating:
            raise RuntimeError("FrameDecoder.next_frame() during iter_frames()")
        unpacker = self._unpacker
        if self._size < 0:
            if self._end - unpacker.tell() < PREFIX_LEN:
                return None
            (size,) = _PREFIX.unpack(unpacker.read_bytes(PREFIX_LEN))
            if size == 0:
                self._fail("empty frame")
            if size > self.max_frame:
                self._fail(f"frame of {size} bytes exceeds the {self.max_frame}-byte limit")
            self._size = size
            self._expected_end = unpacker.tell() + size
        if self._end < self._expected_end:
            return None
        try:
            obj = unpacker.unpack()
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
            # The boundary where msgpack's exception zoo (OutOfData, FormatError,
            # StackError, UnicodeDecodeError, ...) becomes the one protocol error.
            self._fail(f"frame is not valid msgpack: {type(exc).__name__}")
        if unpacker.tell() != self._expected_end:
            self._fail("frame payload does not match its length prefix")
        self._size = -1
        if type(obj) is not list or len(obj) < 2:
            self._fail("frame is not an array of at least [tag, verb]")
        frame: Frame = obj
        return frame

    def iter_frames(self) -> Generator[Frame, None, None]:
        """Every complete frame buffered when called, each yielded as soon as it is decoded.

        The receive hot path (tools/bench/bench_protocol.py): same checks as
        :meth:`next_frame`, in one loop over locals.  Frames are handed out
        one by one rather than collected because a read of thousands of small
        frames, all alive at once, costs CPython's cyclic garbage collector
        about as much again as decoding them; a consumer that handles each
        frame before asking for the next never pays that.

        The caller may stop iterating at any frame: the decoder is then left
        just after the last frame yielded.  Input fed during the iteration
        is decoded by the next call.  Until the iteration is finished or
        abandoned, :meth:`next_frame`, :meth:`take_unconsumed` and another
        iteration raise RuntimeError (they would move the input from under it).
        """
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if self._iterating:
            raise RuntimeError("FrameDecoder.iter_frames() is already in progress")
        if self._size >= 0:
            # A prefix read by an earlier call whose payload had not all
            # arrived: the general path finishes that frame first.
            frame = self.next_frame()
            if frame is None:
                return
            yield frame
        unpacker, max_frame = self._unpacker, self.max_frame
        read_bytes, unpack, tell = unpacker.read_bytes, unpacker.unpack, unpacker.tell
        prefix = _PREFIX.unpack
        position = tell()
        end = self._end
        self._iterating = True
        try:
            while end - position >= 4:  # PREFIX_LEN; a literal saves a global lookup per frame
                (size,) = prefix(read_bytes(4))
                position += 4
                if not 0 < size <= max_frame or end - position < size:
                    # A partial frame (the usual end of a read) or a bad prefix;
                    # the prefix stays consumed, as in next_frame.
                    self._size = size
                    self._expected_end = position + size
                    if size == 0:
                        self._fail("empty frame")
                    if size > max_frame:
                        self._fail(f"frame of {size} bytes exceeds the {max_frame}-byte limit")
                    return
                try:
                    obj = unpack()
                except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
                    self._fail(f"frame is not valid msgpack: {type(exc).__name__}")
                position += size
                if tell() != position:
                    self._fail("frame payload does not match its length prefix")
                if type(obj) is not list or len(obj) < 2:
                    self._fail("frame is not an array of at least [tag, verb]")
                yield obj
        finally:
            self._iterating = False

    def frames(self) -> list[Frame]:
        """Every complete frame buffered so far (:meth:`iter_frames`, collected)."""
        return list(self.iter_frames())

    def take_unconsumed(self) -> bytes:
        """Remove and return the raw bytes not yet decoded.

        Used when COMPRESS switches the stream: what follows the switching
        frame belongs to the other (compressed) stream.
        """
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if self._iterating:
            raise RuntimeError("FrameDecoder.take_unconsumed() during iter_frames()")
        head = b""
        if self._size >= 0:
            head = _PREFIX.pack(self._size)
            self._size = -1
        left = self._end - self._unpacker.tell()
        rest: bytes = self._unpacker.read_bytes(left) if left else b""
        return head + rest

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded into frames."""
        left: int = self._end - self._unpacker.tell()
        return left + (PREFIX_LEN if self._size >= 0 else 0)

    def _fail(self, reason: str) -> NoReturn:
        self._failed = reason
        raise ProtocolError(reason)
