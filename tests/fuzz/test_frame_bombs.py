"""Expansion, depth and decompression bombs on the receive path (I9, framing.md §3).

A frame's cost in memory is set by its values, not its octets: one octet of
empty array is about 64 bytes of heap.  The receiver refuses a frame of more
than MAX_FRAME_VALUES values or nested deeper than MAX_DEPTH before it builds
it, and never inflates compressed input beyond its per-read bound, so peak
memory stays a small multiple of what arrived.
"""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from collections.abc import Callable, Iterator

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicad.errors import ProtocolError
from replicad.protocol.connection import Connection, LinkConfig, State, zstd_chunk
from replicad.protocol.frames import (
    DEFAULT_MAX_FRAME,
    MAX_DEPTH,
    MAX_FRAME_VALUES,
    SCAN_ABOVE,
    FrameDecoder,
    FrameEncoder,
    check_frame,
    scan_payload,
    unpack_frame,
)

MIB = 1 << 20
HEAD = b"\x98\xa1*\xa4BOMB"  # an 8-element frame ["*", "BOMB", six more values]


def _array32(count: int) -> bytes:
    return b"\xdd" + struct.pack(">I", count)


def _bomb(element: bytes, per_array: int = 1_000_000, arrays: int = 2) -> bytes:
    """A frame of ``arrays`` arrays of ``per_array`` copies of ``element``:
    about ``arrays * per_array`` values, each list within the per-list limit."""
    return HEAD + (_array32(per_array) + element * per_array) * arrays


BOMBS = {
    # 1 octet each; ~64 bytes of heap each once built (2 MB -> ~130 MB).
    "empty arrays": _bomb(b"\x90"),
    # [[]]: 2 octets, two lists.
    "nested pairs": _bomb(b"\x91\x90", per_array=500_000),
    # -32..-6 are not cached by CPython: a 1-octet int object each.
    "negative fixints": _bomb(b"\xe0"),
    # Two-character strings: 3 octets, a new str each.
    "short strings": _bomb(b"\xa2ab", per_array=600_000),
}


def _wire(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@contextlib.contextmanager
def _peak() -> Iterator[Callable[[], int]]:
    """tracemalloc's peak (bytes) over the block, read with the callable."""
    tracemalloc.start()
    peak = 0
    try:
        yield lambda: peak
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def _decode_in_reads(wire: bytes, read: int = 256 * 1024) -> list[object]:
    decoder = FrameDecoder()
    frames: list[object] = []
    view = memoryview(wire)  # slices of the test's own bytes are not the decoder's cost
    for start in range(0, len(wire), read):
        decoder.feed(view[start : start + read])
        frames.extend(decoder.iter_frames())
    return frames


@pytest.mark.parametrize("kind", sorted(BOMBS))
@pytest.mark.parametrize("read", [256 * 1024, 64 * MIB], ids=["network reads", "one feed"])
def test_expansion_bomb_is_refused_within_a_small_multiple_of_its_size(
    kind: str, read: int
) -> None:
    wire = _wire(BOMBS[kind])
    assert len(wire) > SCAN_ABOVE
    with _peak() as peak, pytest.raises(ProtocolError, match=f"more than {MAX_FRAME_VALUES}"):
        _decode_in_reads(wire, read)
    # The bytes themselves, held by the unpacker and the frame's own buffer;
    # built, the same frame would take 20-64 times its size.
    assert peak() < 4 * len(wire), f"{kind}: peak {peak() / MIB:.0f} MiB"


def test_compressed_expansion_bomb_is_refused_within_a_small_multiple() -> None:
    payload = BOMBS["empty arrays"]
    _client, server = _compressed_pair()
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    data = compressor.compress(_wire(payload)) + compressor.flush()
    assert len(data) < 64 * 1024  # some KiB that would become ~400 MB of heap
    with _peak() as peak, pytest.raises(ProtocolError, match="values"):
        server.receive_data(zstd_chunk(data) + data)
    assert server.state is State.CLOSED
    assert peak() < 3 * len(payload) + 8 * MIB, f"peak {peak() / MIB:.0f} MiB"


def test_unpack_frame_refuses_an_expansion_bomb() -> None:
    with _peak() as peak, pytest.raises(ProtocolError, match="values"):
        unpack_frame(BOMBS["empty arrays"])
    assert peak() < 2 * MIB


def _deep(depth: int) -> bytes:
    """An array nested ``depth`` deep (itself counting as 1) around a nil."""
    return b"\x91" * depth + b"\xc0"


def test_depth_bomb_is_refused_by_the_frame_decoder() -> None:
    # Large enough to be scanned; the nesting, not the size, is what is wrong.
    payload = b"\x93\xa1*\xa4DEEP" + b"\x92" + b"\xc6" + struct.pack(">I", SCAN_ABOVE)
    payload += bytes(SCAN_ABOVE) + _deep(MAX_DEPTH - 1)
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_DEPTH}"):
        _decode_in_reads(_wire(payload))
    # One level less is a well-formed frame (as far as nesting goes).
    ok = b"\x93\xa1*\xa4DEEP" + b"\x92" + b"\xc6" + struct.pack(">I", SCAN_ABOVE)
    ok += bytes(SCAN_ABOVE) + _deep(MAX_DEPTH - 2)
    (frame,) = _decode_in_reads(_wire(ok))
    check_frame(frame)


def test_many_deep_branches_are_refused_before_they_are_built() -> None:
    """Depth bombs as wide as they are deep: refused at the first branch."""
    branch = _deep(40)
    wire = _wire(HEAD[:-5] + b"\xa4DEEP" + (_array32(60_000) + branch * 60_000) * 6)
    with _peak() as peak, pytest.raises(ProtocolError, match="nested deeper"):
        _decode_in_reads(wire, read=64 * MIB)
    assert peak() < 4 * len(wire)


def test_small_depth_bomb_closes_the_link_with_a_clear_error() -> None:
    """A deep frame below the scan threshold: the typed decoder refuses it."""
    server = Connection(LinkConfig("c1", "n2"), is_client=False)
    client = Connection(LinkConfig("c1", "n1"), is_client=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    bomb = b"\x93\xa11\xa4PING" + _deep(1000)
    with pytest.raises(ProtocolError, match="PING: expected 0 fields"):
        server.receive_data(_wire(bomb))
    assert server.state is State.CLOSED
    assert b"BAD" in server.data_to_send()


def test_zstd_slice_never_inflates_beyond_the_read_bound() -> None:
    """RLE blocks inflate 32768:1: 4 KiB of input would make 128 MiB in one
    decompress call, before any check after the call."""
    limit = 1 * MIB
    _client, server = _compressed_pair(LinkConfig("c1", "n2", inflate_limit=limit))
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(MIB)
    # The start of the largest frame allowed, then 256 MiB of its payload.
    bomb = compressor.compress(struct.pack(">I", DEFAULT_MAX_FRAME))
    bomb += b"".join(compressor.compress(zeros) for _ in range(256))
    bomb += compressor.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert len(bomb) < 16 * 1024
    with _peak() as peak, pytest.raises(ProtocolError, match="bomb"):
        server.receive_data(zstd_chunk(bomb) + bomb)
    assert peak() < limit + 4 * MIB, f"peak {peak() / MIB:.0f} MiB"


def _compressed_pair(config: LinkConfig | None = None) -> tuple[Connection, Connection]:
    server = Connection(config or LinkConfig("c1", "n2"), is_client=False)
    client = Connection(LinkConfig("c1", "n1"), is_client=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.start_compression()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    assert server.compressing and client.compressing
    return client, server


# --- legitimate large frames ------------------------------------------------------


def test_large_body_frame_decodes_in_any_reads() -> None:
    body = bytes(range(256)) * (10 * MIB // 256)
    frame = ["*", "SAVE", 1, 2, 1_700_000_000, b"g" * 16, ["\\Seen"], body]
    wire = FrameEncoder().encode(frame) + FrameEncoder().encode(["*", "PING"])
    for read in (4093, 256 * 1024, len(wire)):
        assert _decode_in_reads(wire, read) == [frame, ["*", "PING"]]


def test_large_frame_fed_in_tiny_pieces() -> None:
    frame = ["*", "X", bytes(SCAN_ABOVE + 10), [1, [2, [3]]]]
    wire = FrameEncoder().encode(frame)
    assert _decode_in_reads(wire * 2, 7) == [frame, frame]


def test_large_frame_then_compression_switch_keeps_every_octet() -> None:
    decoder = FrameDecoder()
    wire = FrameEncoder().encode(["*", "X", bytes(SCAN_ABOVE + 10)])
    decoder.feed(wire[:-100])
    assert decoder.next_frame() is None
    assert decoder.buffered == len(wire) - 100
    assert decoder.take_unconsumed() == wire[:-100]
    assert decoder.buffered == 0


def test_frame_of_exactly_the_value_budget_is_accepted() -> None:
    # The frame, its four elements, and the elements of its two arrays.
    first = (MAX_FRAME_VALUES - 5) // 2
    second = MAX_FRAME_VALUES - 5 - first
    payload = b"\x94\xa1*\xa1X" + _array32(first) + b"\xc0" * first
    payload += _array32(second) + b"\xc0" * second
    assert len(payload) > SCAN_ABOVE
    (frame,) = _decode_in_reads(_wire(payload))
    assert len(frame) == 4
    with pytest.raises(ProtocolError, match="values"):
        scan_payload(payload, max_values=MAX_FRAME_VALUES - 1)
    one_more = b"\x94\xa1*\xa1X" + _array32(first) + b"\xc0" * first
    one_more += _array32(second + 1) + b"\xc0" * (second + 1)
    with pytest.raises(ProtocolError, match=f"more than {MAX_FRAME_VALUES} values"):
        _decode_in_reads(_wire(one_more))


# --- the scanner agrees with the decoder ------------------------------------------

FRAME_VALUES = st.recursive(
    st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=40) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=40,
)


def _count(value: object) -> int:
    return 1 + sum(_count(v) for v in value) if isinstance(value, list) else 1


def _depth(value: object) -> int:
    if not isinstance(value, list):
        return 0
    return 1 + max((_depth(v) for v in value), default=0)


SCAN = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SCAN
@given(st.lists(FRAME_VALUES, max_size=8), st.integers(1, 60))
def test_scan_counts_values_and_depth_exactly(values: list[object], budget: int) -> None:
    frame = ["*", "X", *values]
    payload = msgpack.packb(frame, use_bin_type=True)
    too_many = _count(frame) > budget
    too_deep = _depth(frame) > MAX_DEPTH
    if too_many or too_deep:
        with pytest.raises(ProtocolError, match=r"values|nested"):
            scan_payload(payload, max_values=budget)
    else:
        scan_payload(payload, max_values=budget)
        assert check_frame(msgpack.unpackb(payload)) == frame


@SCAN
@given(st.binary(max_size=400))
def test_scan_of_random_bytes_raises_only_protocol_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        scan_payload(data)


@SCAN
@given(st.lists(FRAME_VALUES, max_size=8), st.data())
def test_scan_of_truncated_or_mutated_frames(values: list[object], data: st.DataObject) -> None:
    payload = bytearray(msgpack.packb(["*", "X", *values], use_bin_type=True))
    cut = data.draw(st.integers(0, len(payload)))
    for _ in range(data.draw(st.integers(0, 3))):
        if payload:
            payload[data.draw(st.integers(0, len(payload) - 1))] = data.draw(st.integers(0, 255))
    try:
        scan_payload(bytes(payload[:cut]))
    except ProtocolError:
        return
    # Whatever the scan lets through decodes to exactly one value within the model
    # bounds, or is refused by msgpack -- never anything else.
    with contextlib.suppress(ProtocolError):
        unpack_frame(bytes(payload[:cut]), max_frame=DEFAULT_MAX_FRAME)
