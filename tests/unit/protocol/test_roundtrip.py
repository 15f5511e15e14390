"""Every record type survives record -> fields -> msgpack -> text and back (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.protocol import commands as c
from replicad.protocol.frames import FrameDecoder, encode_frame, unpack_frame
from replicad.protocol.text import parse, render

from .conftest import _TAG, record_strategy

RECORDS = [r for r in c.ALL_RECORDS if r.SCHEMA]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_record_round_trip(record: type[c.Record], data: st.DataObject) -> None:
    value = data.draw(record_strategy(record))
    fields = value.to_fields()
    assert record.from_fields(fields) == value
    frame = ["t1", "X", *fields]
    wire = encode_frame(frame)
    assert unpack_frame(wire[4:]) == frame
    assert parse(render(frame)) == frame


@pytest.mark.parametrize("command", list(c.COMMANDS.values()), ids=lambda r: r.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_command_frame_round_trip(command: type[c.Command], data: st.DataObject) -> None:
    value = data.draw(record_strategy(command))
    tag = data.draw(_TAG)
    frame = c.encode_command(tag, value)
    decoder = FrameDecoder()
    decoder.feed(encode_frame(frame))
    received = decoder.next_frame()
    assert received is not None
    assert c.decode(received) == c.CommandFrame(tag, value)
    assert c.decode(parse(render(frame))) == c.CommandFrame(tag, value)


@pytest.mark.parametrize("untagged", list(c.UNTAGGED_RECORDS.values()), ids=lambda r: r.__name__)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_untagged_frame_round_trip(untagged: type[c.Untagged], data: st.DataObject) -> None:
    value = data.draw(record_strategy(untagged))
    frame = c.encode_untagged(value)
    assert c.decode(unpack_frame(encode_frame(frame)[4:])) == c.UntaggedFrame(value)
    assert c.decode(parse(render(frame))) == c.UntaggedFrame(value)


def test_store_rejects_flag_in_both_deltas() -> None:
    with pytest.raises(c.ProtocolError, match="both added and removed"):
        c.Store.from_fields([1, "1", ["\\Seen"], ["\\Seen"], None, None])


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ([1, "1", ["\\Seen"], [], None, None, 5], "expected 6 fields"),
        ([70000, "1", [], [], None, None], "mbox"),
        ([1, "0", [], [], None, None], "UID"),
        ([1, "3,1", [], [], None, None], "canonical"),
        ([1, "1", ["\\Bogus"], [], None, None], "system flag"),
        ([1, "1", ["b", "a"], [], None, None], "canonical order"),
        ([1, "1", [], [], -1, None], "unchangedsince"),
        ([1, "1", [], [], 2**63, None], "unchangedsince"),
        ([True, "1", [], [], None, None], "mbox"),
        ([1.0, "1", [], [], None, None], "mbox"),
        ([1, b"1", [], [], None, None], "uids"),
    ],
)
def test_store_field_validation(fields: list[object], reason: str) -> None:
    with pytest.raises(c.ProtocolError, match=reason):
        c.Store.from_fields(fields)  # type: ignore[arg-type]


def test_change_stream_forbids_star() -> None:
    with pytest.raises(c.ProtocolError, match=r"'\*' not allowed"):
        c.StoreChange.from_fields([1, 1, 7, "1:*", [], [], 5, 0, []])


def test_guid_length_is_exact() -> None:
    with pytest.raises(c.ProtocolError, match="16 bytes"):
        c.Save.from_fields([1, 0, b"\x00" * 15, [], b"body"])
