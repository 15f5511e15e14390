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
#: Most values in one frame: every array and every scalar, the frame itself
#: included (framing.md §3).  What a frame costs in memory once decoded is
#: set by its values, not its octets: an empty array is one octet on the
#: wire and about 64 bytes of Python heap, so 8 MiB of them became half a
#: GiB (I9).  With this budget a decoded frame holds at most its own
#: payload (string and bin contents) plus about 2^20 x 72 bytes ~ 72 MiB
#: of objects, whatever it says.  Legitimate frames stay far below: a
#: ``* SYNC`` chunk is at most 512 messages, and a merge is cut into parts
#: of at most half the budget (replicad.model.planparts).
MAX_FRAME_VALUES: Final = 1 << 20
#: Payloads larger than this are scanned (:func:`scan_payload`) before they
#: are decoded; smaller ones are decoded directly: every value takes at
#: least one octet, so they cannot exceed the budget (:class:`FrameDecoder`).
SCAN_ABOVE: Final = MAX_FRAME_VALUES
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


def _scalar_widths() -> tuple[int, ...]:
    """Encoded size of each msgpack type octet that starts a scalar of fixed
    size (fixstr included: its length is in the type octet), else 0."""
    width = [0] * 256
    for octet in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3):
        width[octet] = 1  # fixints, nil, booleans
    for octet in range(0xA0, 0xC0):
        width[octet] = 1 + (octet & 0x1F)  # fixstr
    for octet, size in ((0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9), (0xCA, 5), (0xCB, 9)):
        width[octet] = size  # uint 8..64, float 32/64
    for octet, size in ((0xD0, 2), (0xD1, 3), (0xD2, 5), (0xD3, 9)):
        width[octet] = size  # int 8..64
    return tuple(width)


_WIDTH: Final = _scalar_widths()
_U16: Final = struct.Struct(">H").unpack_from
_U32: Final = struct.Struct(">I").unpack_from
#: Type octets of str 8/16/32 and bin 8/16/32: the size of their length field.
_LENGTHS: Final = {
    0xD9: 1,
    0xC4: 1,
    0xDA: 2,
    0xC5: 2,
    0xDB: 4,
    0xC6: 4,
}


def scan_payload(
    payload: bytes | bytearray | memoryview,
    *,
    max_values: int = MAX_FRAME_VALUES,
    max_depth: int = MAX_DEPTH,
) -> None:
    """Refuse ``payload`` unless it is exactly one msgpack object of at most
    ``max_values`` values nested at most ``max_depth`` deep (framing.md §3, I9).

    A walk over the encoding that builds nothing: arrays are counted as
    their headers are read (so a bomb is refused after at most
    ``max_values`` values have been stepped over, before a single object
    is allocated), strings and bins are skipped over in O(1) whatever
    their length.  Maps and extension types are refused here (they are
    outside the value model); booleans and floats are counted and left to
    the consumer to refuse.  The work is proportional to the number of
    values, so a frame carrying a large body costs a handful of steps.
    Raises :class:`ProtocolError` only.
    """
    width = _WIDTH
    view = payload
    end = len(view)
    pos = 0
    values = 1  # the outermost object
    enclosing: list[int] = []  # elements still to read in each enclosing array
    left = 1  # elements still to read at the current level
    try:
        while True:
            # The elements of the innermost open array; scalars take the
            # first branch, four operations each (the dense frames' bulk).
            while left:
                left -= 1
                octet = view[pos]
                size = width[octet]
                if size:
                    pos += size
                    continue
                if 0x90 <= octet <= 0x9F:
                    count = octet & 0x0F
                    pos += 1
                elif octet == 0xDC:
                    count = _U16(view, pos + 1)[0]
                    pos += 3
                elif octet == 0xDD:
                    count = _U32(view, pos + 1)[0]
                    pos += 5
                else:
                    length_size = _LENGTHS.get(octet)
                    if length_size is None:
                        raise ProtocolError(
                            f"frame holds a value outside the value model (type 0x{octet:02x})"
                        )
                    if length_size == 1:
                        length = view[pos + 1]
                    elif length_size == 2:
                        length = _U16(view, pos + 1)[0]
                    else:
                        length = _U32(view, pos + 1)[0]
                    pos += 1 + length_size + length
                    continue
                # An array: one level deeper than the arrays around it.
                if len(enclosing) >= max_depth:
                    raise ProtocolError(f"frame nested deeper than {max_depth}")
                if count:
                    values += count
                    if values > max_values:
                        raise ProtocolError(f"frame holds more than {max_values} values")
                    enclosing.append(left)
                    left = count
            if not enclosing:
                break
            left = enclosing.pop()
    except (IndexError, struct.error):
        raise ProtocolError("frame payload does not match its length prefix") from None
    if pos != end:
        raise ProtocolError("frame payload does not match its length prefix")


def _decode_scanned(payload: bytes | bytearray | memoryview, options: dict[str, Any]) -> object:
    """:func:`scan_payload`, then build the object (the large-frame path)."""
    scan_payload(payload)
    try:
        return msgpack.unpackb(payload, **options)
    except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
        raise ProtocolError(f"frame is not valid msgpack: {type(exc).__name__}") from None


def unpack_frame(payload: bytes | memoryview, *, max_frame: int = DEFAULT_MAX_FRAME) -> Frame:
    """Decode one msgpack payload (no prefix) into a fully checked frame (:func:`check_frame`).

    A payload larger than :data:`SCAN_ABOVE` is scanned first (values and
    depth, :func:`scan_payload`), so it is refused before it is built.
    """
    if len(payload) > max_frame:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {max_frame}-byte limit")
    options = _unpacker_options(max_frame)
    if len(payload) > SCAN_ABOVE:
        frame = _decode_scanned(payload, options)
    else:
        try:
            frame = msgpack.unpackb(payload, **options)
        except (ValueError, TypeError, OverflowError, msgpack.UnpackException) as exc:
            raise ProtocolError(f"frame is not valid msgpack: {type(exc).__name__}") from None
    return check_frame(frame)


class FrameDecoder:
    """Incremental decoder: :meth:`feed` bytes in any slicing; frames come out of
    :meth:`iter_frames` (the hot path), :meth:`frames` or :meth:`next_frame`.

    Contract of a decoded frame: it is an array of at least two values
    (``[tag, verb, ...]``) whose payload was exactly the announced length.
    The *elements*, tag and verb included, are checked once, by the
    consumer, against what it expects: :func:`replicad.protocol.registry.decode`
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

    Expansion (I9, framing.md §3): no frame handed out holds more than
    :data:`MAX_FRAME_VALUES` values, so decoding one allocates at most its
    payload plus about 72 MiB, however it was crafted.  Two paths:

    * A payload of at most :data:`SCAN_ABOVE` octets (1 MiB: every change
      record, command and reply but the largest merges and bodies, i.e.
      the hot path) is decoded in place by msgpack's C unpacker with no
      check at all: every value takes at least one octet, so it cannot
      hold more than :data:`MAX_FRAME_VALUES` values.  Its nesting is
      refused by its consumer: every verb's schema
      (:func:`replicad.protocol.registry.decode`) goes at most 5 deep and
      refuses a list wherever it expects none; generic consumers call
      :func:`check_frame`.  Checking depth here as well would walk every
      frame in Python: 8-17% of the whole receive path of a STORE,
      measured, to refuse what the value budget already made harmless.
    * A larger payload is collected in a buffer of its own and walked by
      :func:`scan_payload` before anything is built: more than
      :data:`MAX_FRAME_VALUES` values or nesting deeper than
      :data:`MAX_DEPTH` is refused without allocating a single object.
      The walk skips string and bin contents in O(1), so a frame carrying
      a 10 MB body costs a few steps; a dense one (a merge of thousands of
      messages) costs one Python step per value, about a quarter of what
      its msgpack and typed decode cost.  Collecting the payload apart
      costs nothing: it replaces the unpacker's own buffer, which grows by
      copying.  msgpack's ``list_hook`` would count arrays in C, but only
      after building them, and could not count the scalars still open in
      enclosing arrays, so the bound would not hold.
    """

    __slots__ = (
        "_big",
        "_end",
        "_expected_end",
        "_failed",
        "_iterating",
        "_options",
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
        self._options = _unpacker_options(max_frame)
        self._unpacker = msgpack.Unpacker(max_buffer_size=self.max_buffered, **self._options)
        self._end = 0  # stream offset just past the last byte fed
        self._size = -1  # payload size of a frame whose prefix was consumed, else -1
        self._expected_end = 0  # stream offset where that frame's payload must end
        self._failed: str | None = None
        self._iterating = False  # an iter_frames() generator is running or suspended
        # The payload of a frame larger than SCAN_ABOVE, collected here rather
        # than in the unpacker so that it can be scanned before it is decoded.
        self._big: bytearray | bytes | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._failed is not None:
            raise ProtocolError(self._failed)
        if not data:
            return
        big = self._big
        held = len(big) if big is not None else 0
        if self._end - self._unpacker.tell() + held + len(data) > self.max_buffered:
            self._fail(f"more than {self.max_buffered} bytes of undecoded input")
        if big is not None:
            assert type(big) is bytearray  # a complete one (bytes) is decoded at once
            take = self._size - held
            if len(data) <= take:
                big += data
                return
            view = memoryview(data)
            big += view[:take]
            data = view[take:]
        self._unpacker.feed(data)
        self._end += len(data)

    def _start_big(self, size: int) -> None:
        """Collect the payload of the ``size``-octet frame whose prefix was just
        read in a buffer of its own (what of it is buffered already, first)."""
        take = min(self._end - self._unpacker.tell(), size)
        first = self._unpacker.read_bytes(take) if take else b""
        # All there already (one large read): decoded at once, from these bytes.
        self._big = first if take == size else bytearray(first)

    def _finish_big(self) -> Frame | None:
        """The large frame being collected, scanned and decoded; None until complete."""
        big = self._big
        assert big is not None
        if len(big) < self._size:
            return None
        self._big = None
        self._size = -1
        try:
            obj = _decode_scanned(big, self._options)
        except ProtocolError as exc:
            self._fail(exc.message)
        if type(obj) is not list or len(obj) < 2:
            self._fail("frame is not an array of at least [tag, verb]")
        frame: Frame = obj
        return frame

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
            if size > SCAN_ABOVE:
                self._start_big(size)
        if self._big is not None:
            return self._finish_big()
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
        small = SCAN_ABOVE
        position = tell()
        end = self._end
        self._iterating = True
        try:
            while end - position >= 4:  # PREFIX_LEN; a literal saves a global lookup per frame
                (size,) = prefix(read_bytes(4))
                position += 4
                if not 0 < size <= small or end - position < size:
                    # A partial frame (the usual end of a read), a bad prefix or
                    # a large frame; the prefix stays consumed, as in next_frame.
                    self._size = size
                    self._expected_end = position + size
                    if size == 0:
                        self._fail("empty frame")
                    if size > max_frame:
                        self._fail(f"frame of {size} bytes exceeds the {max_frame}-byte limit")
                    if size <= small:
                        return
                    # Large: collected apart and scanned (class docstring).
                    self._start_big(size)
                    frame = self._finish_big()
                    if frame is None:
                        return
                    position = tell()
                    yield frame
                    continue
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
        if self._big is not None:
            head += self._big
            self._big = None
        left = self._end - self._unpacker.tell()
        rest: bytes = self._unpacker.read_bytes(left) if left else b""
        return head + rest

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded into frames."""
        left: int = self._end - self._unpacker.tell()
        big = len(self._big) if self._big is not None else 0
        return left + big + (PREFIX_LEN if self._size >= 0 else 0)

    def _fail(self, reason: str) -> NoReturn:
        self._failed = reason
        raise ProtocolError(reason)
