"""Hostile input to the decoder, the text parser and the handshake: only ProtocolError (I9)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicad.blob import Blob
from replicad.errors import ProtocolError
from replicad.protocol import commands as c
from replicad.protocol.connection import (
    Connection,
    LinkConfig,
    State,
    plain_chunk,
    zstd_chunk,
)
from replicad.protocol.frames import FrameDecoder, encode_frame
from replicad.protocol.text import parse

VECTORS = Path(__file__).resolve().parents[2] / "protocol-spec" / "vectors"
WIRE = [
    bytes.fromhex(v["msgpack"])
    for p in sorted(VECTORS.glob("*.json"))
    for v in json.loads(p.read_text(encoding="utf-8"))["vectors"]
]
TEXTS = [
    bytes.fromhex(v["text_hex"]) if "text_hex" in v else v["text"].encode()
    for p in sorted(VECTORS.glob("*.json"))
    for v in json.loads(p.read_text(encoding="utf-8"))["vectors"]
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_all(data: bytes) -> None:
    """Frame decode + typed decode, as the link does."""
    decoder = FrameDecoder(max_frame=1 << 20)
    decoder.feed(data)
    for frame in decoder.frames():
        c.decode(frame)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_all(data)


@FUZZ
@given(st.sampled_from(WIRE), st.data())
def test_mutated_vectors(payload: bytes, data: st.DataObject) -> None:
    mutated = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        decode_all(len(mutated).to_bytes(4, "big") + bytes(mutated))


@pytest.mark.parametrize("payload", WIRE[:: max(1, len(WIRE) // 25)])
def test_truncation_at_every_offset(payload: bytes) -> None:
    wire = len(payload).to_bytes(4, "big") + payload
    for cut in range(len(wire)):
        decoder = FrameDecoder()
        decoder.feed(wire[:cut])
        assert decoder.next_frame() is None  # incomplete: wait, never guess
        # A lying prefix that says "this is all" must be refused, not misread.
        if cut > 5:
            lie = (cut - 4).to_bytes(4, "big") + payload[: cut - 4]
            with contextlib.suppress(ProtocolError):
                decode_all(lie)


@FUZZ
@given(st.integers(0, 2**32 - 1))
def test_any_length_prefix(size: int) -> None:
    decoder = FrameDecoder(max_frame=1 << 16)
    decoder.feed(size.to_bytes(4, "big") + b"\x91\xa1a")
    try:
        frame = decoder.next_frame()
    except ProtocolError:
        return
    assert frame is None or size == 3


def test_huge_array_header_is_refused_without_allocating() -> None:
    payload = b"\xdd\xff\xff\xff\xff" + b"\xc0" * 10
    with pytest.raises(ProtocolError):
        decode_all(len(payload).to_bytes(4, "big") + payload)


def test_deep_nesting() -> None:
    payload = b"\x93\xa1a\xa1X" + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(ProtocolError):
        decode_all(len(payload).to_bytes(4, "big") + payload)


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=2),
    max_leaves=10,
)


@FUZZ
@given(
    st.sampled_from(["*", "t1"]),
    st.sampled_from(sorted(set(c.COMMANDS) | set(c.UNTAGGED_RECORDS) | {"OK", "NO", "BAD", "ZAP"})),
    st.lists(VALUES, max_size=10),
)
def test_wrong_types_for_every_verb(tag: str, verb: str, fields: list[object]) -> None:
    payload = msgpack.packb([tag, verb, *fields], use_bin_type=True)
    with contextlib.suppress(ProtocolError):
        decode_all(len(payload).to_bytes(4, "big") + payload)


@FUZZ
@given(st.sampled_from(TEXTS), st.data())
def test_mutated_text(text: bytes, data: st.DataObject) -> None:
    mutated = bytearray(text)
    i = data.draw(st.integers(0, len(mutated) - 1))
    mutated[i : i + 1] = data.draw(st.binary(max_size=3))
    with contextlib.suppress(ProtocolError):
        c.decode(parse(bytes(mutated)))


def _server() -> Connection:
    link = Connection(LinkConfig("c1", "n2"), is_client=False)
    link.data_to_send()
    return link


@FUZZ
@given(st.lists(st.binary(max_size=60), max_size=5))
def test_handshake_with_random_bytes(chunks: list[bytes]) -> None:
    link = _server()
    try:
        for chunk in chunks:
            link.receive_data(chunk)
    except ProtocolError:
        assert link.state is State.CLOSED
        assert b"BAD" in link.data_to_send()


@FUZZ
@given(st.lists(st.sampled_from(WIRE), min_size=1, max_size=6))
def test_handshake_with_valid_frames_in_any_order(payloads: list[bytes]) -> None:
    link = _server()
    hello = c.encode_untagged(
        c.Hello(c.PROTOCOL_VERSION, "c1", "n1", ("COMPRESS-ZSTD",), 1 << 20, 4)
    )
    try:
        link.receive_data(encode_frame(hello))
        for payload in payloads:
            link.receive_data(len(payload).to_bytes(4, "big") + payload)
    except ProtocolError:
        assert link.state is State.CLOSED


def test_decompression_bomb_is_refused() -> None:
    config = LinkConfig("c1", "n2", max_frame=1 << 16)
    server = Connection(config, is_client=False)
    client = Connection(LinkConfig("c1", "n1"), is_client=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.start_compression()
    server.receive_data(client.data_to_send())
    assert server.compressing
    # 1 GiB of zeros compresses to a few tens of KiB; the link must refuse it
    # after inflating at most its bound (2 x max frame), not after 1 GiB.
    compressor = zstandard.ZstdCompressor(level=1).compressobj()
    chunk = b"\x00" * (1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(1024))
    bomb += compressor.flush()
    assert len(bomb) < 200_000
    # Refused as a bomb, or before that as what it inflates to: zeros are
    # empty frames, and frames are cut at least every max-frame octets.
    with pytest.raises(ProtocolError, match=r"bomb|empty frame"):
        server.receive_data(zstd_chunk(bomb) + bomb)
    assert server.state is State.CLOSED


def test_bomb_of_valid_frames_is_bounded_per_call() -> None:
    config = LinkConfig("c1", "n2", max_frame=1 << 16, inflate_limit=1 << 20)
    server = Connection(config, is_client=False)
    client = Connection(LinkConfig("c1", "n1"), is_client=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.start_compression()
    server.receive_data(client.data_to_send())
    untagged_ack = encode_frame(c.encode_untagged(c.Ack(1)))
    compressor = zstandard.ZstdCompressor(level=19).compressobj()
    bomb = compressor.compress(untagged_ack * 400_000) + compressor.flush()
    with pytest.raises(ProtocolError, match="bomb"):
        server.receive_data(zstd_chunk(bomb) + bomb)


def test_garbage_after_compression_is_a_protocol_error() -> None:
    server = Connection(LinkConfig("c1", "n2"), is_client=False)
    client = Connection(LinkConfig("c1", "n1"), is_client=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.start_compression()
    server.receive_data(client.data_to_send())
    with pytest.raises(ProtocolError, match="compressed"):
        server.receive_data(b"this is not zstd at all" * 4)


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


def test_plain_chunk_beyond_the_per_read_bound_is_refused() -> None:
    """A plain chunk counts against the same per-read output bound as inflation."""
    _client, server = _compressed_pair(LinkConfig("c1", "n2", inflate_limit=1 << 16))
    data = b"\x00" * ((1 << 16) + 1)
    with pytest.raises(ProtocolError, match="bomb"):
        server.receive_data(plain_chunk(data) + data)
    assert server.state is State.CLOSED


def test_empty_chunk_is_refused() -> None:
    _client, server = _compressed_pair()
    with pytest.raises(ProtocolError, match="empty chunk"):
        server.receive_data(plain_chunk(b""))


_TEXT = b"Subject: minutes\r\n\r\n" + b"The meeting is moved to Thursday.\r\n" * 2000


def _saves_wire() -> tuple[Connection, bytes, list[Blob]]:
    """A compressed stream of SAVEs with bodies of both codecs around the
    plain-chunk threshold: zstd and plain chunks interleaved."""
    client, server = _compressed_pair()
    client.send_command(c.Mbox(1, "u", "INBOX", b"\1" * 16, 1, 1, 0, 0))
    blobs = [
        Blob.compress(_TEXT[:n]) if i % 2 else Blob.raw(bytes(range(256)) * (n // 256))
        for i, n in enumerate((100, 20_000, 70_000, 17_000, 5_000, 200_000))
    ]
    for blob in blobs:
        client.send_command(c.Save(1, 0, b"\2" * 16, (), blob))
    return server, client.data_to_send(), blobs


@FUZZ
@given(st.data())
def test_chunked_stream_in_any_slicing(data: st.DataObject) -> None:
    """Chunk headers and data cut anywhere (truncated reads): the same frames."""
    server, wire, blobs = _saves_wire()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    events = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        events += server.receive_data(wire[start:end]) if end > start else []
    saves = [e.command.body for e in events if isinstance(getattr(e, "command", None), c.Save)]
    assert saves == blobs


@FUZZ
@given(st.data())
def test_mutated_chunked_stream(data: st.DataObject) -> None:
    server, wire, _ = _saves_wire()
    mutated = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        mutated[data.draw(st.integers(0, len(mutated) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(ProtocolError):
        server.receive_data(bytes(mutated))


_ZSTD_BLOB = Blob.compress(_TEXT)


@FUZZ
@given(st.integers(0, len(_ZSTD_BLOB.stored) - 1))
def test_truncated_body(cut: int) -> None:
    """A stored body cut short: refused by the header check or by decompression."""
    with pytest.raises(ProtocolError):
        Blob.parse(_ZSTD_BLOB.stored[:cut], 1 << 20).verify()


@FUZZ
@given(st.data())
def test_mutated_body_is_refused_or_detected_by_its_hash(data: st.DataObject) -> None:
    """Any change to a stored body's octets: refused (ProtocolError) by the
    header check, decompression or the content hash it is stored under, or
    harmless: a change that zstd ignores (a window descriptor, say) still
    inflates to exactly the original body."""
    stored = bytearray(_ZSTD_BLOB.stored)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(stored) - 1))
        stored[i] ^= data.draw(st.integers(1, 255))
    try:
        blob = Blob.parse(bytes(stored), 1 << 20)
        blob.verify(hashlib.sha256(_TEXT).digest())
    except ProtocolError:
        return
    assert blob.decompress() == _TEXT


def _declaring(size: int, data: bytes) -> bytes:
    """``data`` (one zstd frame with a content size) with the size field patched."""
    descriptor = data[4]
    fcs_flag, single, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    assert width in (4, 8)
    return data[:at] + size.to_bytes(width, "little") + data[at + width :]


def test_body_inflating_beyond_its_declared_size_is_refused() -> None:
    """A bomb inside a body: 16 MiB of zeros declaring 1000 octets.  Refused
    by decompression, which never writes more than the declared size."""
    zeros = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(bytes(16 << 20))
    lying = b"\x01" + _declaring(1000, zeros)
    blob = Blob.parse(lying, 1 << 20)
    assert blob.size == 1000
    with pytest.raises(ProtocolError, match="corrupt"):
        blob.decompress()


def test_body_declaring_more_than_it_holds_is_refused() -> None:
    frame = zstandard.ZstdCompressor(level=3, write_content_size=True).compress(_TEXT)
    blob = Blob.parse(b"\x01" + _declaring(len(_TEXT) + 1, frame), 1 << 20)
    with pytest.raises(ProtocolError):
        blob.decompress()


def test_oversized_body_is_refused_by_the_codec() -> None:
    """A SAVE whose body declares more than the limit is refused when decoded."""
    frame = c.encode_command("1", c.Save(1, 0, b"\2" * 16, (), _ZSTD_BLOB))
    huge = b"\x01" + _declaring(c.MAX_BODY + 1, _ZSTD_BLOB.stored[1:])
    with pytest.raises(ProtocolError, match="exceeds"):
        c.decode([*frame[:-1], huge])
