"""Counters and stamps out of range are refused when a record is decoded (I9,
verbs.md "Value ranges"): a value at the top of the 63-bit range would make
the next one a node derives from it unencodable."""

from __future__ import annotations

import pytest

from replicad.errors import ProtocolError
from replicad.protocol import commands as c
from replicad.protocol.connection import Connection, LinkConfig, State
from replicad.protocol.frames import encode_frame
from replicad.store.clock import COUNTER_BITS, wall_stamp
from replicad.uidset import UidSet

MAX_U63 = 2**63 - 1
GUID = b"\x01" * 16


def store_change(*, modseq: int = 5, stamp: int = 7, seq: int = 1) -> list[object]:
    """A ``* STORE`` change as a peer would send it, the three counters set
    on the wire (the encoder does not check ranges)."""
    frame = c.encode_untagged(
        c.StoreChange(1, 1, 9, UidSet.of([3]), ("\\Seen",), (), 5, 7, (b"\x01" * 8,))
    )
    frame[2], frame[8], frame[9] = seq, modseq, stamp
    return frame


def test_the_bounds_leave_room_for_counting_up() -> None:
    assert c.MAX_STAMP == c.MAX_COUNTER == 2**62 - 1
    # A year of increments, one per nanosecond, from the largest accepted value
    # stays encodable.
    assert c.MAX_STAMP + 10**9 * 86_400 * 366 < MAX_U63
    # Stamps are milliseconds << 16: the bound is far past any real clock.
    assert wall_stamp(4_000_000_000.0) < c.MAX_STAMP  # the year 2096
    assert (c.MAX_STAMP >> COUNTER_BITS) // 1000 // 86_400 // 366 > 2000  # years


@pytest.mark.parametrize("field", ["stamp", "modseq", "seq"])
@pytest.mark.parametrize("value", [2**62, MAX_U63, 2**64 - 1])
def test_change_with_an_out_of_range_counter_is_refused(field: str, value: int) -> None:
    frame = store_change(**{field: value})
    with pytest.raises(ProtocolError, match=f"{field}: expected an integer in"):
        c.decode(frame)


@pytest.mark.parametrize("field", ["stamp", "modseq", "seq"])
def test_largest_counters_are_accepted(field: str) -> None:
    frame = store_change(**{field: 2**62 - 1})
    assert getattr(c.decode(frame).data, field) == 2**62 - 1  # type: ignore[union-attr]


def test_flag_register_with_a_stamp_out_of_range_is_refused() -> None:
    message = c.StateMessage(1, GUID, 5, 0, 10, b"\x02" * 32, (("\\Seen", 2**62, True),))
    frame = c.encode_untagged(c.SyncData(1, (message,), ()))
    with pytest.raises(ProtocolError, match=r"expected an integer in 0\.\.4611686018427387903"):
        c.decode(frame)


@pytest.mark.parametrize(
    "record",
    [
        c.Mbox(1, "u", "INBOX", GUID, 1, 1, 0, 2**62),
        c.Sync(1, 2**62),
        c.Update(1, 1, 2, 2**62, 1, None, (), "INBOX", 0),
    ],
    ids=["MBOX highestmodseq", "SYNC since", "UPDATE highestmodseq"],
)
def test_commands_with_a_modseq_out_of_range_are_refused(record: c.Command) -> None:
    with pytest.raises(ProtocolError, match=r"expected an integer in 0\.\.4611686018427387903"):
        c.decode(c.encode_command("1", record))


def test_ack_and_epoch_out_of_range_are_refused() -> None:
    with pytest.raises(ProtocolError, match="expected an integer"):
        c.decode(["*", "ACK", 2**62, []])
    with pytest.raises(ProtocolError, match="expected an integer"):
        c.decode(["*", "EPOCH", MAX_U63, "n1"])


def test_uids_stay_32_bit() -> None:
    frame = store_change()
    frame[5] = str(2**32)
    with pytest.raises(ProtocolError, match="uid"):
        c.decode(frame)


def test_a_peer_sending_a_top_of_range_stamp_is_closed_with_a_clear_error() -> None:
    server = Connection(LinkConfig("c1", "n2"), is_client=False)
    client = Connection(LinkConfig("c1", "n1"), is_client=True)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    with pytest.raises(ProtocolError, match="stamp: expected an integer in"):
        server.receive_data(encode_frame(store_change(stamp=MAX_U63)))
    assert server.state is State.CLOSED
    assert b"stamp" in server.data_to_send()
