"""Frame codec and text form edge cases."""

from __future__ import annotations

import msgpack
import pytest

from replicad.errors import ProtocolError
from replicad.protocol.frames import (
    MAX_DEPTH,
    FrameDecoder,
    check_frame,
    encode_frame,
    unpack_frame,
)
from replicad.protocol.text import parse, parse_stream, render

STORE = ["a1", "STORE", 3, "1:5", ["\\Seen"], [], None]


def test_decoder_handles_every_split() -> None:
    wire = encode_frame(STORE) + encode_frame(["*", "ACK", 7]) + encode_frame(STORE)
    for cut in range(len(wire) + 1):
        decoder = FrameDecoder()
        decoder.feed(wire[:cut])
        frames = decoder.frames()
        decoder.feed(wire[cut:])
        frames += decoder.frames()
        assert frames == [STORE, ["*", "ACK", 7], STORE]
        assert decoder.buffered == 0


def test_byte_at_a_time() -> None:
    wire = encode_frame(STORE) * 3
    decoder = FrameDecoder()
    out = []
    for i in range(len(wire)):
        decoder.feed(wire[i : i + 1])
        out += decoder.frames()
    assert out == [STORE] * 3


def test_oversized_prefix_refused_before_payload() -> None:
    decoder = FrameDecoder(max_frame=65536)
    decoder.feed((65537).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.next_frame()
    with pytest.raises(ProtocolError):  # stays failed
        decoder.feed(b"x")


def test_zero_length_and_length_mismatch() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(ProtocolError, match="empty"):
        decoder.next_frame()
    payload = msgpack.packb(STORE)
    for size in (len(payload) - 1, len(payload) + 1):
        decoder = FrameDecoder()
        decoder.feed(size.to_bytes(4, "big") + payload + msgpack.packb(1))
        with pytest.raises(ProtocolError):
            decoder.next_frame()


def test_feeding_more_than_the_bound_is_refused() -> None:
    decoder = FrameDecoder(max_frame=65536)
    with pytest.raises(ProtocolError, match="undecoded"):
        decoder.feed(b"\x00" * (2 * 65540 + 1))


@pytest.mark.parametrize(
    "frame",
    [
        ["a", "X", 1.5],
        ["a", "X", True],
        ["a", "X", {"k": 1}],
        ["a", "X", [[1.5]]],
        ["a"],
        [1, "X"],
        ["", "X"],
        "not a list",
    ],
)
def test_check_frame_refuses_non_values(frame: object) -> None:
    with pytest.raises(ProtocolError):
        check_frame(frame)
    with pytest.raises(ProtocolError):
        unpack_frame(msgpack.packb(frame))


def test_depth_limit() -> None:
    deep: list[object] = []
    frame: list[object] = ["a", "X", deep]
    for _ in range(MAX_DEPTH):
        deep.append([])
        deep = deep[0]  # type: ignore[assignment]
    with pytest.raises(ProtocolError, match="deeper"):
        check_frame(frame)
    with pytest.raises(ProtocolError, match="deeper"):
        parse(b"a X " + b"(" * (MAX_DEPTH + 1) + b")" * (MAX_DEPTH + 1))


def test_take_unconsumed_returns_the_partial_frame() -> None:
    wire = encode_frame(STORE)
    decoder = FrameDecoder()
    decoder.feed(wire + wire[:9])
    assert decoder.next_frame() == STORE
    assert decoder.next_frame() is None
    assert decoder.take_unconsumed() == wire[:9]
    assert decoder.buffered == 0


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("INBOX", b"INBOX"),
        ("\\Seen", b"\\Seen"),
        ("1:4,7", b"1:4,7"),
        ("123", b'"123"'),
        ("NIL", b'"NIL"'),
        ("", b'""'),
        ("a b", b'"a b"'),
        ('q"\\', b'"q\\"\\\\"'),
        ("#x", b'"#x"'),
        ("é", '"é"'.encode()),
        ("a\r\nb", b"{4}\r\na\r\nb"),
        (None, b"NIL"),
        (-12, b"-12"),
        (2**64 - 1, b"18446744073709551615"),
        (b"\xab\xcd", b"#abcd"),
        (b"", b"~{0}\r\n"),
        (b"x" * 33, b"~{33}\r\n" + b"x" * 33),
        ([1, [], ["a"]], b"(1 () (a))"),
    ],
)
def test_text_rendering(value: object, text: bytes) -> None:
    frame = ["t", "V", value]
    assert render(frame) == b"t V " + text  # type: ignore[arg-type]
    assert parse(b"t V " + text) == frame


@pytest.mark.parametrize(
    "text",
    [
        b"t V 007",
        b"t V -0",
        b"t V 18446744073709551616",
        b"t V #abc",
        b"t V #ABCD",
        b'"t V',
        b"t V (1 2",
        b"t V {5}\r\nab",
        b"t V {2}\r\n\xff\xfe",
        b"t V \\",
        b"t  V",
        b"t V x y)",
        b't V "a\\x"',
        b"t V \x01",
        b"t",
    ],
)
def test_text_parse_errors(text: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse(text)


def test_parse_stream_with_literals() -> None:
    frames = [["a", "SAVE", b"line1\r\nline2" * 3], ["*", "ACK", 1]]
    text = b"\r\n".join(render(f) for f in frames)
    assert parse_stream(text) == frames
