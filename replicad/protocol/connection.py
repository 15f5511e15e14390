"""The sans-I/O state machine of one link between two nodes (protocol-spec/handshake.md).

Public API, in the style of h11 / aioquic -- no sockets, no clocks, no
threads; the trio transport (``replicad.transport``) owns the I/O::

    link = Connection(LinkConfig(cluster="c1", node="n1"), is_client=True,
                      expect_peer="n2")          # expect_peer: the TLS SAN
    sock.send(link.data_to_send())                # our HELLO goes first
    for event in link.receive_data(await sock.recv()):
        ...                                       # HandshakeComplete, CommandReceived,
                                                  # UntaggedReceived, ReplyReceived,
                                                  # CompressionStarted, ConnectionClosed
    tag = link.send_command(Store(...))           # queue a command, get its tag
    link.send_ok(tag, SaveOk(...)) / send_no / send_bad / send_untagged(...)
    sock.send(link.data_to_send())                # everything queued, in order

Every ``send_*`` only *queues*; :meth:`Connection.data_to_send` returns the
bytes to write, in order, flushed at a frame boundary.  One outgoing queue
(rather than ``send`` returning bytes) is needed because the machine also
answers by itself: the HELLO, the reply to COMPRESS, the fatal ``* BAD``.

States: ``AWAIT_HELLO`` -> ``READY`` -> ``CLOSED``.  In AWAIT_HELLO the
only acceptable input is the peer's HELLO; a version, cluster or node
mismatch queues ``* BAD reason`` and closes (I9).  In READY, commands,
replies and untagged data flow both ways, pipelined.

Malformed input of any kind -- framing, msgpack, field types, unknown
verbs, unknown tags or mailbox ids, window overrun, decompression bomb --
makes :meth:`receive_data` queue ``* BAD reason``, enter CLOSED and raise
:class:`~replicad.errors.ProtocolError` (and nothing else).  The caller
writes :meth:`data_to_send` and closes the socket.  Events of valid frames
that preceded the bad one in the same call are dropped with the link: the
peer's outbox resends unacknowledged changes on the next link.

Flow control (``send_command``): at most ``max_inflight`` commands (the
smaller of our configuration and the peer's HELLO) and ``max_inflight_bytes``
of encoded commands await replies.  When the window is full
``send_command`` *raises* :class:`WindowFullError` and never queues:
buffering stays with the producer (the outbox, a client), so backpressure
reaches it instead of growing a buffer here.  :meth:`Connection.can_send`
tells ahead.  Replies and untagged frames are not windowed: the change
stream has its own acknowledged window (replicad.cluster.outbox), and
holding back replies could deadlock two nodes waiting on each other.  The
peer is held to *our* ``max_inflight`` in the other direction: one more
unanswered command is a protocol violation.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Final

import zstandard

from replicad.errors import ProtocolError, ReplicadError, TemporaryError
from replicad.protocol.frames import (
    DEFAULT_MAX_FRAME,
    PREFIX_LEN,
    Frame,
    FrameDecoder,
    FrameEncoder,
)
from replicad.protocol.records import Command, Record, Untagged
from replicad.protocol.registry import (
    CommandFrame,
    ReplyFrame,
    Status,
    UntaggedFrame,
    decode,
    decode_ok,
    encode_bad,
    encode_command,
    encode_no,
    encode_ok,
    encode_untagged,
    mbox_ids,
)
from replicad.protocol.session import PROTOCOL_VERSION, Compress, Fatal, Hello, Mbox

ZSTD: Final = "ZSTD"
CAP_COMPRESS_ZSTD: Final = "COMPRESS-ZSTD"
#: A person speaking the protocol by hand (``replicad debug connect``): the
#: accepting node serves its commands but does not treat it as a peer link.
CAP_DEBUG: Final = "DEBUG"
#: Largest zstd window a peer may make us allocate (compression.md §3).
MAX_ZSTD_WINDOW: Final = 8 * 1024 * 1024


class WindowFullError(TemporaryError):
    """The link's in-flight window is full; retry once replies have arrived."""


class LinkStateError(ReplicadError):
    """A local call that the link's state does not allow (a bug in the caller)."""


class State(Enum):
    AWAIT_HELLO = "AWAIT_HELLO"
    READY = "READY"
    CLOSED = "CLOSED"


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """What this node announces in HELLO and enforces on the link."""

    cluster: str
    node: str
    version: int = PROTOCOL_VERSION
    capabilities: tuple[str, ...] = (CAP_COMPRESS_ZSTD,)
    max_frame: int = DEFAULT_MAX_FRAME
    max_inflight: int = 256
    max_inflight_bytes: int = 16 * 1024 * 1024
    #: zstd level 1: on mail bodies within 1% of level 3's ratio, about a
    #: third faster (tools/bench/bench_link.py); small change frames cost
    #: a fraction of a byte more each (bench_protocol.py).
    compress_level: int = 1
    #: Most decompressed bytes one receive_data() call may produce (bomb bound).
    inflate_limit: int | None = None

    def hello(self) -> Hello:
        return Hello(
            version=self.version,
            cluster=self.cluster,
            node=self.node,
            capabilities=tuple(sorted(self.capabilities)),
            max_frame=self.max_frame,
            max_inflight=self.max_inflight,
        )


# --- events ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    peer: Hello
    capabilities: frozenset[str]  # both sides announced these


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """Answer with send_ok / send_no / send_bad using ``tag``."""

    tag: str
    command: Command


@dataclass(frozen=True, slots=True)
class UntaggedReceived:
    data: Untagged


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The reply to our ``command`` sent under ``tag``; ``payload`` is set for OK."""

    tag: str
    command: Command
    status: Status
    payload: Record | None
    code: str | None
    text: str


@dataclass(frozen=True, slots=True)
class CompressionStarted:
    pass


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed the stream (EOF) or sent ``* BAD``; ``reason`` says which."""

    reason: str


Event = (
    HandshakeComplete
    | CommandReceived
    | UntaggedReceived
    | ReplyReceived
    | CompressionStarted
    | ConnectionClosed
)


def _size(parts: list[bytes]) -> int:
    """Bytes on the wire of one frame encoded as ``parts`` (FrameEncoder.encode_parts)."""
    return sum(map(len, parts))


@dataclass(slots=True)
class _InFlight:
    command: Command
    size: int


#: Chunk header after COMPRESS (compression.md §2): 4 octets big-endian, the
#: top bit the kind, the other 31 the length of the data that follows.
CHUNK_HEADER: Final = 4
CHUNK_PLAIN: Final = 0x8000_0000
MAX_CHUNK: Final = 0x7FFF_FFFF
_CHUNK: Final = struct.Struct(">I")


def zstd_chunk(data: bytes) -> bytes:
    """The header of a zstd chunk of ``data`` (compression.md §2)."""
    return _CHUNK.pack(len(data))


def plain_chunk(data: bytes) -> bytes:
    """The header of a plain chunk of ``data``: octets placed in the frame
    sequence as they are, outside the zstd stream (compression.md §2)."""
    return _CHUNK.pack(CHUNK_PLAIN | len(data))


#: zstd's largest block (RFC 8878 §3.1.1.2.3): the most one block inflates to.
ZSTD_BLOCK: Final = 128 * 1024


def zstd_max_inflate(n: int) -> int:
    """The most ``n`` input octets of a zstd stream inflate to in one call.

    An RLE block is 4 octets (3 of header, 1 to repeat) for a whole block of
    output, the most any block achieves; the slice may also finish a block
    begun before it.  So 4 KiB of input may inflate to 128 MiB inside a
    single ``decompress`` call, before a check after the call could refuse it.
    """
    return (n // 4 + 1) * ZSTD_BLOCK


def _safe_slice(budget: int) -> int:
    """The largest input slice whose worst inflation (:func:`zstd_max_inflate`) fits
    in ``budget`` octets; at least 1, so a budget nearly spent is overshot by at
    most one block."""
    return max(1, (budget // ZSTD_BLOCK - 1) * 4)


class _Inflater:
    """Compressed input (a sequence of chunks, compression.md §2) -> frame decoder,
    refusing output beyond a per-call budget.

    zstd chunks' data are one zstd stream, fed to the decompressor in small
    slices with the output budget checked after each one, so a decompression
    bomb is caught after at most one slice's worth of inflation instead of
    after the whole call; and a slice is never larger than what the budget
    left could hold at zstd's worst ratio (:func:`_safe_slice`), so even one
    slice cannot inflate beyond the budget before it is checked.
    ``decompressobj`` (unlike ``stream_writer``) drains all the output a
    slice produces, so a frame never waits in zstd's
    buffers for more input.  Plain chunks' data go to the frame decoder as
    they are: message bodies the store already compressed
    (replicad.blob), which a second compression would only cost time.
    Chunks are taken as they arrive, in any slicing: nothing is buffered
    here but a partial four-octet header.
    """

    SLICE = 4096
    #: Frames are cut from the output every this many inflated bytes, and at
    #: the end of each call: the decoder then holds one partial frame plus
    #: about this much (and a slice's output), while a network read (one TLS
    #: record, four slices) costs one pass of the frame decoder, not four.
    DECODE_EVERY = 256 * 1024

    def __init__(self, decoder: FrameDecoder) -> None:
        self.decoder = decoder
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        self._dobj = dctx.decompressobj()
        self._header = b""  # a chunk header not yet complete
        self._left = 0  # octets of the current chunk still to come
        self._plain = False  # the current chunk is plain

    def inflate(self, data: bytes, budget: int) -> Iterator[Frame]:
        """The frames completed by ``data``, cut from the output as it grows.

        Raises ProtocolError once more than ``budget`` bytes came out of this
        call (inflated or plain), or for a chunk header of length 0, and then
        yields nothing more.  Stopping the iteration early (the link closed)
        leaves the rest of ``data`` unread.
        """
        decompress, feed, slice_size = self._dobj.decompress, self.decoder.feed, self.SLICE
        # Cut frames at least every max-frame octets too: the decoder holds
        # at most two frames' worth (FrameDecoder.max_buffered).
        decode_every = min(self.DECODE_EVERY, self.decoder.max_frame)
        view = memoryview(data)
        position, end = 0, len(view)
        undecoded = 0
        while position < end:
            if not self._left:
                need = CHUNK_HEADER - len(self._header)
                self._header += view[position : position + need]
                position += need
                if len(self._header) < CHUNK_HEADER:
                    break
                (word,) = _CHUNK.unpack(self._header)
                self._header = b""
                self._plain = bool(word & CHUNK_PLAIN)
                self._left = word & MAX_CHUNK
                if not self._left:
                    raise ProtocolError("empty chunk in the compressed stream")
                continue
            take = min(self._left, end - position)
            piece = view[position : position + take]
            position += take
            self._left -= take
            if self._plain:
                budget -= take
                if budget < 0:
                    raise ProtocolError("input beyond the per-read limit (decompression bomb)")
                feed(piece)
                undecoded += take
            else:
                start = 0
                while start < take:
                    # Never hand zstd more input than the budget left could
                    # hold inflated (ZSTD_MAX_INFLATE): the bound holds before
                    # the output is allocated, not after (I9).
                    step = min(slice_size, take - start, _safe_slice(budget))
                    out = decompress(piece[start : start + step])
                    start += step
                    budget -= len(out)
                    if budget < 0:
                        raise ProtocolError(
                            "compressed input inflates beyond the limit (decompression bomb)"
                        )
                    # One slice may inflate to more than the decoder holds
                    # (max_buffered): fed in pieces, frames cut in between.
                    inflated = memoryview(out) if len(out) > decode_every else out
                    for at in range(0, len(out), decode_every):
                        part = inflated[at : at + decode_every]
                        feed(part)
                        undecoded += len(part)
                        if undecoded >= decode_every:
                            undecoded = 0
                            yield from self.decoder.iter_frames()
            if undecoded >= decode_every:
                undecoded = 0
                yield from self.decoder.iter_frames()
        if undecoded:
            yield from self.decoder.iter_frames()


class Connection:
    """One end of a link.  See the module docstring for the contract."""

    def __init__(
        self, config: LinkConfig, *, is_client: bool, expect_peer: str | None = None
    ) -> None:
        self.config = config
        self.is_client = is_client
        self.expect_peer = expect_peer
        self.state = State.AWAIT_HELLO
        self.peer: Hello | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.compressing = False
        self.close_reason: str | None = None

        self._decoder = FrameDecoder(config.max_frame)
        self._encoder = FrameEncoder(config.max_frame)  # lowered to the peer's limit
        self._out: list[bytes] = []
        self._compressor: zstandard.ZstdCompressionObj | None = None
        self._compressed_pending = False  # input given to the compressor, not yet flushed
        self._zstd: list[bytes] = []  # compressor output not yet in a chunk (compressing)
        self._inflater: _Inflater | None = None
        self._inflate_limit = config.inflate_limit or 2 * (config.max_frame + PREFIX_LEN)
        # COMPRESS sent, reply pending: frames queued meanwhile wait here, so
        # nothing uncompressed follows the switch point (RFC 4978 §3).
        self._compress_tag: str | None = None
        self._deferred: list[Frame] = []

        self._next_tag = 0
        self._outbound: dict[str, _InFlight] = {}  # our commands awaiting replies
        self._outbound_bytes = 0
        self._inbound: set[str] = set()  # peer's commands we have not answered
        self.mbox_out: dict[int, Mbox] = {}  # ids we defined (our direction)
        self.mbox_in: dict[int, Mbox] = {}  # ids the peer defined (its direction)
        self._max_inflight = config.max_inflight

        self._queue_frame(encode_untagged(config.hello()))

    # --- outgoing ------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes to write, in order, ending at a frame boundary.

        Compressed, the frames queued since the last call are one zstd chunk,
        flushed here: one flush per write, however many frames it carries
        (compression.md §3); message bodies among them are plain chunks
        between zstd ones (§2).
        """
        self._end_zstd_chunk()
        data = b"".join(self._out)
        self._out.clear()
        return data

    @property
    def has_data_to_send(self) -> bool:
        """True if :meth:`data_to_send` would return bytes."""
        return self._compressed_pending or bool(self._out) or bool(self._zstd)

    @property
    def inflight(self) -> int:
        return len(self._outbound)

    def can_send(self, command: Command | None = None) -> bool:
        """Would :meth:`send_command` accept (a command of this size) now?"""
        if self.state is not State.READY or len(self._outbound) >= self._max_inflight:
            return False
        if command is None or not self._outbound:
            return self._outbound_bytes < self.config.max_inflight_bytes or not self._outbound
        size = _size(self._encoder.encode_parts(encode_command("0", command)))
        return self._outbound_bytes + size <= self.config.max_inflight_bytes

    def send_command(self, command: Command) -> str:
        """Queue ``command`` under a fresh tag and return the tag.

        Raises :class:`WindowFullError` when the window is full (nothing is
        queued), :class:`LinkStateError` if the link is not READY, if a
        referenced mailbox id was never defined with MBOX, or for COMPRESS
        from the accepting side.
        """
        self._require_ready()
        if len(self._outbound) >= self._max_inflight:
            raise WindowFullError(f"{len(self._outbound)} commands in flight")
        for mbox in mbox_ids(command):
            if mbox not in self.mbox_out:
                raise LinkStateError(f"mailbox id {mbox} used before MBOX defined it")
        if isinstance(command, Compress):
            self._check_can_compress()
        tag = self._allocate_tag()
        frame = encode_command(tag, command)
        parts = self._encoder.encode_parts(frame)  # raises if over the peer's max frame
        size = _size(parts)
        if self._outbound and self._outbound_bytes + size > self.config.max_inflight_bytes:
            raise WindowFullError(f"{self._outbound_bytes} bytes of commands in flight")
        self._outbound[tag] = _InFlight(command, size)
        self._outbound_bytes += size
        if isinstance(command, Mbox):
            self.mbox_out[command.id] = command
        self._queue_encoded(frame, parts)
        if isinstance(command, Compress):
            self._compress_tag = tag
        return tag

    def start_compression(self) -> str:
        """Send ``COMPRESS ZSTD`` (client side only); :class:`CompressionStarted` follows."""
        return self.send_command(Compress(ZSTD))

    def send_ok(self, tag: str, payload: Record | None = None) -> None:
        self._answer(tag)
        self._queue_frame(encode_ok(tag, payload))

    def send_no(self, tag: str, code: str, text: str) -> None:
        self._answer(tag)
        self._queue_frame(encode_no(tag, code, text))

    def send_bad(self, tag: str, text: str) -> None:
        """A command-level BAD (the command was well-formed but unacceptable)."""
        self._answer(tag)
        self._queue_frame(encode_bad(tag, text))

    def send_untagged(self, data: Untagged) -> None:
        self._require_ready()
        for mbox in mbox_ids(data):
            if mbox not in self.mbox_out:
                raise LinkStateError(f"mailbox id {mbox} used before MBOX defined it")
        self._queue_frame(encode_untagged(data))

    def close(self, reason: str) -> None:
        """Close locally, telling the peer why (``* BAD reason``)."""
        if self.state is not State.CLOSED:
            self._fatal_out(reason)

    # --- incoming ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the peer; ``b""`` means end of stream."""
        if self.state is State.CLOSED:
            return []
        if not data:
            self.state = State.CLOSED
            self.close_reason = "peer closed the connection"
            return [ConnectionClosed(self.close_reason)]
        try:
            return self._receive(data)
        except ProtocolError as exc:
            self._fatal_out(exc.message)
            raise
        except zstandard.ZstdError as exc:
            reason = f"corrupt compressed stream: {exc}"
            self._fatal_out(reason)
            raise ProtocolError(reason) from None

    def _receive(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._inflater is not None:
            self._handle_all(self._inflate(data), events)
            return events
        self._decoder.feed(data)
        # A frame may switch the input to zstd: the bytes after it must then
        # go through the inflater, so the plain frames are taken one by one.
        for frame in self._decoder.iter_frames():
            self._handle(frame, events)
            if self.state is State.CLOSED or self._inflater is not None:
                break
        if self._inflater is not None and self.state is not State.CLOSED:
            rest = self._decoder.take_unconsumed()
            if rest:
                self._handle_all(self._inflate(rest), events)
        return events

    def _handle_all(self, frames: Iterator[Frame], events: list[Event]) -> None:
        # Each frame is handled as soon as it is decoded (FrameDecoder.iter_frames),
        # and nothing more is decoded, let alone inflated, once one closed the link.
        for frame in frames:
            self._handle(frame, events)
            if self.state is State.CLOSED:
                return

    def _inflate(self, data: bytes) -> Iterator[Frame]:
        assert self._inflater is not None
        return self._inflater.inflate(data, self._inflate_limit)

    def _handle(self, frame: Frame, events: list[Event]) -> None:
        message = decode(frame)
        if self.state is State.AWAIT_HELLO:
            if not (isinstance(message, UntaggedFrame) and isinstance(message.data, Hello)):
                if isinstance(message, UntaggedFrame) and isinstance(message.data, Fatal):
                    self._closed_by_peer(message.data.reason, events)
                    return
                raise ProtocolError("expected HELLO as the first frame")
            self._on_hello(message.data, events)
            return
        if isinstance(message, CommandFrame):
            self._on_command(message, events)
        elif isinstance(message, ReplyFrame):
            self._on_reply(message, events)
        else:
            data = message.data
            if isinstance(data, Hello):
                raise ProtocolError("HELLO after the handshake")
            if isinstance(data, Fatal):
                self._closed_by_peer(data.reason, events)
                return
            self._check_mbox_in(data)
            events.append(UntaggedReceived(data))

    def _on_hello(self, hello: Hello, events: list[Event]) -> None:
        mine = self.config
        if hello.version != mine.version:
            raise ProtocolError(
                f"protocol version mismatch: {mine.node} speaks {mine.version}, "
                f"{hello.node} speaks {hello.version}"
            )
        if hello.cluster != mine.cluster:
            raise ProtocolError(
                f"cluster mismatch: {mine.node} is in {mine.cluster!r}, "
                f"{hello.node} in {hello.cluster!r}"
            )
        if hello.node == mine.node:
            raise ProtocolError(f"peer claims our own node id {mine.node!r}")
        if self.expect_peer is not None and hello.node != self.expect_peer:
            raise ProtocolError(
                f"node id {hello.node!r} does not match the certificate's {self.expect_peer!r}"
            )
        self.peer = hello
        self.capabilities = frozenset(hello.capabilities) & frozenset(mine.capabilities)
        self._encoder.max_frame = min(mine.max_frame, hello.max_frame)
        self._max_inflight = min(mine.max_inflight, hello.max_inflight)
        self.state = State.READY
        events.append(HandshakeComplete(hello, self.capabilities))

    def _on_command(self, message: CommandFrame, events: list[Event]) -> None:
        tag, command = message.tag, message.command
        if tag in self._inbound:
            raise ProtocolError(f"tag {tag!r} reused while its command is in flight")
        if len(self._inbound) >= self.config.max_inflight:
            raise ProtocolError(f"more than {self.config.max_inflight} commands in flight")
        self._check_mbox_in(command)
        self._inbound.add(tag)
        if isinstance(command, Mbox):
            self.mbox_in[command.id] = command
        if isinstance(command, Compress):
            self._on_compress_request(tag, command)
            return
        events.append(CommandReceived(tag, command))

    def _on_reply(self, reply: ReplyFrame, events: list[Event]) -> None:
        sent = self._outbound.pop(reply.tag, None)
        if sent is None:
            raise ProtocolError(f"reply to unknown tag {reply.tag!r}")
        self._outbound_bytes -= sent.size
        payload = decode_ok(type(sent.command), reply) if reply.status is Status.OK else None
        if reply.tag == self._compress_tag:
            self._compress_tag = None
            if reply.status is Status.OK:
                self._start_inflating()
                self._compressor = self._new_compressor()
                events.append(CompressionStarted())
            deferred, self._deferred = self._deferred, []
            for frame in deferred:
                self._queue_frame(frame)
        events.append(
            ReplyReceived(reply.tag, sent.command, reply.status, payload, reply.code, reply.text)
        )

    def _on_compress_request(self, tag: str, command: Compress) -> None:
        if self.is_client:
            self.send_no(tag, "UNSUPPORTED", "only the connecting side may start COMPRESS")
        elif self.compressing or command.algorithm != ZSTD:
            self.send_no(tag, "UNSUPPORTED", f"cannot start {command.algorithm} compression")
        elif CAP_COMPRESS_ZSTD not in self.capabilities:
            self.send_no(tag, "UNSUPPORTED", "COMPRESS-ZSTD was not negotiated")
        else:
            self.send_ok(tag)
            # Our OK is the last plain frame out; the peer's COMPRESS was the
            # last plain frame in.
            self._compressor = self._new_compressor()
            self._start_inflating()

    def _check_can_compress(self) -> None:
        if not self.is_client:
            raise LinkStateError("only the connecting side sends COMPRESS")
        if self.compressing or self._compress_tag is not None:
            raise LinkStateError("compression already started")
        if CAP_COMPRESS_ZSTD not in self.capabilities:
            raise LinkStateError("the peer did not announce COMPRESS-ZSTD")

    def _new_compressor(self) -> zstandard.ZstdCompressionObj:
        self.compressing = True
        return zstandard.ZstdCompressor(level=self.config.compress_level).compressobj()

    def _start_inflating(self) -> None:
        self._inflater = _Inflater(self._decoder)

    # --- helpers -------------------------------------------------------------------

    def _check_mbox_in(self, record: Record) -> None:
        for mbox in mbox_ids(record):
            if mbox not in self.mbox_in:
                raise ProtocolError(f"mailbox id {mbox} was not defined by MBOX")

    def _allocate_tag(self) -> str:
        # Base-36 counter: short tags ("1" .. "zz" .. ) keep frames small;
        # 16 characters outlast any link.
        self._next_tag += 1
        n, digits = self._next_tag, []
        while n:
            n, d = divmod(n, 36)
            digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[d])
        return "".join(reversed(digits))

    def _answer(self, tag: str) -> None:
        self._require_ready()
        if tag not in self._inbound:
            raise LinkStateError(f"no command with tag {tag!r} awaits an answer")
        self._inbound.discard(tag)

    def _require_ready(self) -> None:
        if self.state is not State.READY:
            raise LinkStateError(f"link is {self.state.value}, not READY")

    def _queue_frame(self, frame: Frame) -> None:
        self._queue_encoded(frame, self._encoder.encode_parts(frame))

    def _queue_encoded(self, frame: Frame, parts: list[bytes]) -> None:
        if self._compress_tag is not None and frame[1] != Compress.VERB:
            self._deferred.append(frame)
        elif self._compressor is not None:
            if len(parts) > 1:
                # A frame ending in a body (encode_parts): the body's octets are
                # already compressed by the store (replicad.blob), so the whole
                # frame goes around the compressor in a plain chunk, after
                # everything queued before it.  Its head (tens of octets) with
                # it: compressing the head would save about as many octets as
                # the flush before the chunk costs, and two zstd calls per body.
                self._end_zstd_chunk()
                self._out.append(_CHUNK.pack(CHUNK_PLAIN | _size(parts)))
                self._out.extend(parts)
            else:
                # zstd keeps up to a block of input and returns b"" until then;
                # data_to_send's flush ends the block.
                if out := self._compressor.compress(parts[0]):
                    self._zstd.append(out)
                self._compressed_pending = True
        else:
            self._out.extend(parts)

    def _end_zstd_chunk(self) -> None:
        """Flush the compressor (end a block) and put its output out as one zstd chunk."""
        if self._compressed_pending:
            assert self._compressor is not None
            self._zstd.append(self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
            self._compressed_pending = False
        if self._zstd:
            data = b"".join(self._zstd) if len(self._zstd) > 1 else self._zstd[0]
            self._zstd.clear()
            # A chunk's length has 31 bits; a zstd chunk may be cut anywhere.
            for start in range(0, len(data), MAX_CHUNK):
                piece = data[start : start + MAX_CHUNK] if len(data) > MAX_CHUNK else data
                self._out.append(zstd_chunk(piece))
                self._out.append(piece)

    def _fatal_out(self, reason: str) -> None:
        self.close_reason = reason
        if self.state is not State.CLOSED:
            # Anything not yet written is moot; the BAD is the last word.
            self._compress_tag = None
            self._deferred.clear()
            self._queue_frame(encode_untagged(Fatal(reason[:1000])))
        self.state = State.CLOSED

    def _closed_by_peer(self, reason: str, events: list[Event]) -> None:
        self.state = State.CLOSED
        self.close_reason = f"peer refused: {reason}"
        events.append(ConnectionClosed(self.close_reason))
