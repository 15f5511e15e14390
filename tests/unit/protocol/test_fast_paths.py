"""The decoding fast paths give exactly what the general paths give (hypothesis).

Each fast path of :mod:`replicad.protocol.commands` and
:mod:`replicad.protocol.frames` is checked against a plain reference
implementation: same values accepted with the same result, the rest refused
with ProtocolError (never another exception).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.errors import BadInputError, ProtocolError
from replicad.flags import SYSTEM_FLAGS, normalise_flag
from replicad.protocol import commands as c
from replicad.protocol.frames import (
    LARGE_BYTES,
    Frame,
    FrameDecoder,
    FrameEncoder,
    encode_frame,
)
from replicad.protocol.text import parse
from replicad.uidset import UidSet

# --- UID sets ----------------------------------------------------------------------


def reference_uids(value: Any, allow_star: bool) -> UidSet | None:
    """The original check: parse, then insist on the canonical form; None = refused."""
    if type(value) is not str or not value or len(value) > c.MAX_TEXT_LEN * 16:
        return None
    if not value.isascii():  # the original let int() crash on "²"
        return None
    try:
        uids = UidSet.parse(value)
    except (BadInputError, ValueError):
        return None
    if uids.has_star and not allow_star:
        return None
    if value == "all" or str(uids) != value:
        return None
    return uids


UID_TEXT = st.text(alphabet="0123456789:,*", max_size=24) | st.sampled_from(
    ["1", "4294967295", "4294967296", "01", "1:01", "5:07", "0", "0:3", "3:3", "4:2", "1:*",
     "*", "*:4", "1,*", "all", "1:4,7", "²", "1:²", "\u0663", "1" * 5000, "9" * 11 + ":1"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(value=UID_TEXT | st.text(max_size=8) | st.integers() | st.none(), star=st.booleans())
def test_uid_sets_match_the_reference(value: Any, star: bool) -> None:
    check = c.Uids(allow_star=star).checker("uids")
    expected = reference_uids(value, star)
    if expected is None:
        with pytest.raises(ProtocolError, match="uids"):
            check(value)
    else:
        assert check(value) == expected


@pytest.mark.parametrize("value", ["²", "1:²", "1," + "1" * 5000, "1" * 5000])
def test_uid_sets_that_crashed_int_are_protocol_errors(value: str) -> None:
    with pytest.raises(ProtocolError):
        c.Store.from_fields([1, value, [], [], None])


def test_text_numbers_too_long_for_int_are_protocol_errors() -> None:
    with pytest.raises(ProtocolError, match="out of range"):
        parse(b"a1 PING " + b"1" * 5000)
    assert parse(b"a1 PING 18446744073709551615")[2] == 2**64 - 1


# --- flags -------------------------------------------------------------------------


def reference_flags(value: Any) -> tuple[str, ...] | None:
    if type(value) is not list or len(value) > 1000:
        return None
    out = []
    for flag in value:
        if type(flag) is not str:
            return None
        try:
            out.append(normalise_flag(flag))
        except BadInputError:
            return None
    if out != sorted(set(out), key=lambda f: (not f.startswith("\\"), f)):
        return None
    return tuple(out)


FLAG = st.sampled_from(
    [*SYSTEM_FLAGS, "\\seen", "\\FLAGGED", "\\Bogus", "$Junk", "Work", "work", "", "a b", "\\"]
)


@settings(max_examples=400, deadline=None)
@given(value=st.lists(FLAG | st.integers() | st.binary(max_size=2), max_size=5) | st.none())
def test_flag_lists_match_the_reference(value: Any) -> None:
    check = c.FLAGS.checker("add")
    expected = reference_flags(value)
    if expected is None:
        with pytest.raises(ProtocolError, match="add"):
            check(value)
    else:
        assert check(value) == expected


# --- records -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        c.Store(3, UidSet.parse("1:5"), ("\\Seen",), ("$Junk",), 7),
        c.StoreChange(
            9, 3, 1, UidSet.parse("2"), (), ("\\Deleted",), 12, 3, (bytes(8),)
        ),  # inherited `seq`
        c.Routes((c.Route("n2", 1), c.Route("n3", 2))),  # nested records
    ],
    ids=lambda r: type(r).__name__,
)
def test_decoded_records_are_ordinary_instances(record: c.Record) -> None:
    decoded = type(record).from_fields(record.to_fields())
    assert decoded == record and hash(decoded) == hash(record)
    assert dataclasses.replace(decoded) == record  # every field set, __init__ accepts them
    name = dataclasses.fields(decoded)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(decoded, name, getattr(record, name))


def test_short_frames_are_protocol_errors() -> None:
    frames: list[Frame] = [[], ["a1"]]
    for frame in frames:
        with pytest.raises(ProtocolError, match="no verb"):
            c.decode(frame)


# --- frame encoding in parts -------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    size=st.sampled_from([0, 1, LARGE_BYTES - 1, LARGE_BYTES, 65535, 65536, 300_000]),
    extra=st.integers(0, 14),
)
def test_encode_parts_concatenate_to_encode(size: int, extra: int) -> None:
    body = os.urandom(size)
    frame: list[Any] = ["a1", "SAVE", *range(extra), body]
    encoder = FrameEncoder()
    parts = encoder.encode_parts(frame)
    assert b"".join(parts) == encoder.encode(frame) == encode_frame(frame)
    if size >= LARGE_BYTES and len(frame) <= 15:
        assert parts[-1] is body  # sent as is, never copied into the packer


def test_encode_parts_respects_max_frame() -> None:
    encoder = FrameEncoder(max_frame=LARGE_BYTES * 2)
    with pytest.raises(ProtocolError, match="exceeds"):
        encoder.encode_parts(["a1", "SAVE", b"x" * (LARGE_BYTES * 2)])


# --- iter_frames -------------------------------------------------------------------


def wire(count: int) -> bytes:
    return b"".join(encode_frame(["*", "ACK", n]) for n in range(count))


def test_iteration_can_stop_at_any_frame() -> None:
    decoder = FrameDecoder()
    decoder.feed(wire(5))
    for frame in decoder.iter_frames():
        if frame[2] == 1:
            break
    assert decoder.next_frame() == ["*", "ACK", 2]
    assert [f[2] for f in decoder.iter_frames()] == [3, 4]


def test_input_fed_during_iteration_is_decoded_by_the_next_one() -> None:
    decoder = FrameDecoder()
    decoder.feed(wire(2))
    seen = []
    for frame in decoder.iter_frames():
        seen.append(frame[2])
        if frame[2] == 0:
            decoder.feed(encode_frame(["*", "ACK", 9]))
    assert seen == [0, 1]
    assert decoder.frames() == [["*", "ACK", 9]]


def test_moving_the_input_during_iteration_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(wire(3))
    frames = decoder.iter_frames()
    next(frames)
    with pytest.raises(RuntimeError):
        decoder.take_unconsumed()
    with pytest.raises(RuntimeError):
        decoder.next_frame()
    frames.close()
    assert decoder.take_unconsumed() == wire(3)[len(encode_frame(["*", "ACK", 0])) :]


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_every_way_of_taking_frames_agrees(data: st.DataObject) -> None:
    frames: list[Frame] = [["t1", "STORE", n, "1:5", ["\\Seen"], [], None] for n in range(6)]
    frames.append(["*", "SAVE", b"x" * data.draw(st.sampled_from([10, LARGE_BYTES + 3]))])
    stream = b"".join(encode_frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    by_iter, by_next = FrameDecoder(), FrameDecoder()
    got_iter: list[Any] = []
    got_next: list[Any] = []
    for chunk in chunks:
        by_iter.feed(chunk)
        got_iter.extend(by_iter.iter_frames())
        by_next.feed(chunk)
        while (frame := by_next.next_frame()) is not None:
            got_next.append(frame)
    assert got_iter == got_next == frames
    assert by_iter.buffered == by_next.buffered == 0


def test_frame_shape_is_checked_by_the_decoder_and_types_by_decode() -> None:
    def decoder_of(value: object) -> FrameDecoder:
        payload = msgpack.packb(value)
        decoder = FrameDecoder()
        decoder.feed(len(payload).to_bytes(4, "big") + payload)
        return decoder

    for short in (["t1"], "t1 PING", 7):
        with pytest.raises(ProtocolError, match="array"):
            decoder_of(short).frames()
    (frame,) = decoder_of([1, "PING"]).frames()
    with pytest.raises(ProtocolError, match="not a string"):
        c.decode(frame)
