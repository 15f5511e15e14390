"""The link state machine: handshake, tags, pipelining, window, MBOX ids, COMPRESS."""

from __future__ import annotations

import random

import pytest

from replicad.blob import Blob
from replicad.errors import ProtocolError
from replicad.protocol import commands as c
from replicad.protocol.connection import (
    CommandReceived,
    CompressionStarted,
    Connection,
    ConnectionClosed,
    HandshakeComplete,
    LinkConfig,
    LinkStateError,
    ReplyReceived,
    State,
    UntaggedReceived,
    WindowFullError,
    plain_chunk,
)
from replicad.protocol.frames import LARGE_BYTES, FrameDecoder, FrameEncoder, encode_frame
from replicad.uidset import UidSet

GUID = bytes(range(16))


def pair(
    client: LinkConfig | None = None, server: LinkConfig | None = None
) -> tuple[Connection, Connection]:
    a = Connection(client or LinkConfig("c1", "n1"), is_client=True, expect_peer="n2")
    b = Connection(server or LinkConfig("c1", "n2"), is_client=False)
    assert isinstance(b.receive_data(a.data_to_send())[0], HandshakeComplete)
    assert isinstance(a.receive_data(b.data_to_send())[0], HandshakeComplete)
    return a, b


def mbox(i: int = 1) -> c.Mbox:
    return c.Mbox(i, "alice", "INBOX", GUID, 7, 10, 9, 100)


def store(i: int = 1) -> c.Store:
    return c.Store(i, UidSet.parse("1:3"), ("\\Seen",), (), None)


def fatal_text(data: bytes) -> str:
    decoder = FrameDecoder()
    decoder.feed(data)
    frames = decoder.frames()
    message = c.decode(frames[-1])
    assert isinstance(message, c.UntaggedFrame) and isinstance(message.data, c.Fatal)
    return message.data.reason


@pytest.mark.parametrize(
    ("server", "expect"),
    [
        (LinkConfig("c1", "n2", version=1), "protocol version mismatch"),
        (LinkConfig("other", "n2"), "cluster mismatch"),
        (LinkConfig("c1", "n3"), "does not match the certificate"),
        (LinkConfig("c1", "n1"), "our own node id"),
    ],
)
def test_handshake_mismatch_is_refused_with_reason(server: LinkConfig, expect: str) -> None:
    a = Connection(LinkConfig("c1", "n1"), is_client=True, expect_peer="n2")
    b = Connection(server, is_client=False)
    with pytest.raises(ProtocolError, match=expect):
        a.receive_data(b.data_to_send())
    assert a.state is State.CLOSED
    assert expect in fatal_text(a.data_to_send())


@pytest.mark.parametrize("peer_node", ["n3", "n2"])
def test_refused_peer_learns_the_reason(peer_node: str) -> None:
    a = Connection(LinkConfig("c1", "n1"), is_client=True, expect_peer=peer_node)
    b = Connection(LinkConfig("c1", "n2"), is_client=False)
    a_hello = a.data_to_send()
    if peer_node == "n3":
        with pytest.raises(ProtocolError, match="certificate"):
            a.receive_data(b.data_to_send())
        events = b.receive_data(a_hello + a.data_to_send())
        assert isinstance(events[0], HandshakeComplete)
        assert isinstance(events[1], ConnectionClosed)
        assert "does not match the certificate" in events[1].reason
        assert b.state is State.CLOSED
    else:
        assert isinstance(a.receive_data(b.data_to_send())[0], HandshakeComplete)


def test_first_frame_must_be_hello() -> None:
    a = Connection(LinkConfig("c1", "n1"), is_client=True)
    with pytest.raises(ProtocolError, match="HELLO"):
        a.receive_data(encode_frame(c.encode_command("1", c.Ping())))


def test_negotiates_limits_down() -> None:
    a, b = pair(server=LinkConfig("c1", "n2", max_frame=65536, max_inflight=2))
    a.send_command(c.Ping())
    a.send_command(c.Ping())
    assert not a.can_send()
    with pytest.raises(WindowFullError):
        a.send_command(c.Ping())
    b.receive_data(a.data_to_send())
    for tag in ("1", "2"):
        b.send_ok(tag, c.Pong(0))
    a.receive_data(b.data_to_send())
    a.send_command(mbox())
    with pytest.raises(ProtocolError, match="exceeds"):  # the peer's 64 KiB frame limit
        a.send_command(c.Save(1, 0, GUID, (), Blob.raw(b"x" * 70_000)))


def test_pipelining_and_tag_matching_out_of_order() -> None:
    a, b = pair()
    a.send_command(mbox())
    tags = [a.send_command(store()) for _ in range(5)]
    assert len(set(tags)) == 5
    events = b.receive_data(a.data_to_send())
    received = [e for e in events if isinstance(e, CommandReceived)]
    assert [e.tag for e in received[1:]] == tags
    for i, e in enumerate(reversed(received)):  # answer in reverse order
        b.send_ok(e.tag, c.StoreOk(200 + i, None) if isinstance(e.command, c.Store) else None)
    replies = a.receive_data(b.data_to_send())
    assert all(isinstance(r, ReplyReceived) for r in replies)
    by_tag = {r.tag: r for r in replies if isinstance(r, ReplyReceived)}
    assert by_tag[tags[-1]].payload == c.StoreOk(200, None)
    assert by_tag[tags[0]].payload == c.StoreOk(204, None)
    assert a.inflight == 0


def test_no_and_bad_replies_carry_code_and_text() -> None:
    a, b = pair()
    tag = a.send_command(c.Master("alice", "INBOX"))
    (event,) = b.receive_data(a.data_to_send())
    assert isinstance(event, CommandReceived)
    b.send_no(event.tag, "NOTMASTER", "ask n3")
    (reply,) = a.receive_data(b.data_to_send())
    assert isinstance(reply, ReplyReceived)
    assert (reply.tag, reply.status, reply.code, reply.text) == (
        tag,
        c.Status.NO,
        "NOTMASTER",
        "ask n3",
    )


def test_reply_to_unknown_tag_is_fatal() -> None:
    a, _b = pair()
    with pytest.raises(ProtocolError, match="unknown tag"):
        a.receive_data(encode_frame(c.encode_ok("zz")))


def test_duplicate_inflight_tag_is_fatal() -> None:
    _a, b = pair()
    frame = encode_frame(c.encode_command("7", c.Ping()))
    b.receive_data(frame)
    with pytest.raises(ProtocolError, match="reused"):
        b.receive_data(frame)


def test_peer_overrunning_our_window_is_fatal() -> None:
    _a, b = pair(server=LinkConfig("c1", "n2", max_inflight=2))
    b.receive_data(encode_frame(c.encode_command("1", c.Ping())))
    b.receive_data(encode_frame(c.encode_command("2", c.Ping())))
    with pytest.raises(ProtocolError, match="in flight"):
        b.receive_data(encode_frame(c.encode_command("3", c.Ping())))


def test_byte_window() -> None:
    a, b = pair(client=LinkConfig("c1", "n1", max_inflight_bytes=100_000))
    a.send_command(mbox())
    save = c.Save(1, 0, GUID, (), Blob.raw(b"x" * 60_000))
    a.send_command(save)
    assert not a.can_send(save)
    with pytest.raises(WindowFullError):
        a.send_command(save)
    events = b.receive_data(a.data_to_send())
    for e in events:
        assert isinstance(e, CommandReceived)
        b.send_ok(e.tag, c.SaveOk(1, 2, "n2", 1) if isinstance(e.command, c.Save) else None)
    a.receive_data(b.data_to_send())
    assert a.can_send(save)


def test_mbox_ids_per_direction() -> None:
    a, b = pair()
    with pytest.raises(LinkStateError, match="before MBOX"):
        a.send_command(store(1))
    a.send_command(mbox(1))
    a.send_command(store(1))
    b.receive_data(a.data_to_send())
    assert b.mbox_in[1] == mbox(1)
    assert 1 not in b.mbox_out  # b's own direction is separate
    with pytest.raises(LinkStateError):
        b.send_command(store(1))
    # A peer referencing an id it never defined is a protocol violation.
    with pytest.raises(ProtocolError, match="not defined"):
        a.receive_data(
            encode_frame(
                c.encode_untagged(c.ExpungeChange(1, 5, 1, UidSet.of([1]), 9, (bytes(16),)))
            )
        )


def test_change_stream_and_ack_are_untagged() -> None:
    a, b = pair()
    b.send_command(mbox(4))
    b.send_untagged(c.StoreChange(41, 4, 1, UidSet.of([2]), ("\\Seen",), (), 101, 7, (bytes(8),)))
    events = a.receive_data(b.data_to_send())
    assert isinstance(events[-1], UntaggedReceived)
    a.send_untagged(c.Ack(41))
    (ack,) = [e for e in b.receive_data(a.data_to_send()) if isinstance(e, UntaggedReceived)]
    assert ack.data == c.Ack(41)


def _exchange(compress: bool) -> list[object]:
    a, b = pair()
    if compress:
        a.start_compression()
        b.receive_data(a.data_to_send())
        assert any(isinstance(e, CompressionStarted) for e in a.receive_data(b.data_to_send()))
    b.send_command(mbox(2))
    for seq in range(1, 200):
        b.send_untagged(
            c.StoreChange(
                seq, 2, 1, UidSet.of([seq]), ("\\Seen",), (), 1000 + seq, seq, (GUID[:8],)
            )
        )
    body = Blob.raw(b"hello")
    b.send_untagged(c.SaveChange(200, 2, 1, 300, GUID, 1300, 0, (), 9, 5, b"h" * 32, body))
    wire = b.data_to_send()
    events: list[object] = []
    for i in range(0, len(wire), 7):  # arbitrary slicing through the zstd stream
        events += a.receive_data(wire[i : i + 7])
    return events


def test_compression_on_and_off_give_the_same_frames() -> None:
    plain = _exchange(False)
    assert len(plain) == 201
    assert plain == _exchange(True)


def test_compress_frames_are_smaller() -> None:
    a, b = pair()
    a.start_compression()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    a.send_command(mbox(1))
    for _ in range(100):
        a.send_command(store(1))
    assert len(a.data_to_send()) < 100 * 10


def test_commands_sent_while_compress_pending_are_deferred() -> None:
    a, b = pair()
    a.start_compression()
    a.send_command(c.Ping())  # must not leave before COMPRESS is answered
    first = a.data_to_send()
    events = b.receive_data(first)
    assert events == []  # only COMPRESS, answered internally
    a.receive_data(b.data_to_send())
    (ping,) = b.receive_data(a.data_to_send())
    assert isinstance(ping, CommandReceived) and ping.command == c.Ping()


def test_only_client_may_compress_and_only_once() -> None:
    a, b = pair()
    with pytest.raises(LinkStateError):
        b.start_compression()
    a.start_compression()
    with pytest.raises(LinkStateError):
        a.start_compression()


def test_compress_refused_without_capability() -> None:
    a, b = pair(server=LinkConfig("c1", "n2", capabilities=()))
    with pytest.raises(LinkStateError):
        a.start_compression()
    b.receive_data(encode_frame(c.encode_command("x", c.Compress("ZSTD"))))
    assert b"UNSUPPORTED" in b.data_to_send()
    assert not b.compressing


def test_eof_and_fatal_from_peer() -> None:
    a, b = pair()
    assert a.receive_data(b"") == [ConnectionClosed("peer closed the connection")]
    a, b = pair()
    b.close("shutting down")
    (closed,) = a.receive_data(b.data_to_send())
    assert isinstance(closed, ConnectionClosed) and "shutting down" in closed.reason
    assert a.state is State.CLOSED


def test_send_before_ready_is_refused() -> None:
    a = Connection(LinkConfig("c1", "n1"), is_client=True)
    with pytest.raises(LinkStateError):
        a.send_command(c.Ping())


def test_forward_table_maps_replies_back() -> None:
    from replicad.protocol.forwarding import ForwardTable, Origin

    table = ForwardTable()
    table.forwarded(Origin("link-a", "7"), "link-b", "1")
    table.forwarded(Origin("link-c", "7"), "link-b", "2")
    with pytest.raises(ValueError):
        table.forwarded(Origin("link-a", "8"), "link-b", "1")
    assert table.replied("link-b", "2") == Origin("link-c", "7")
    assert table.replied("link-b", "2") is None
    assert table.link_lost("link-b") == [Origin("link-a", "7")]
    assert len(table) == 0


def test_a_large_compressed_body_arrives_in_one_receive() -> None:
    """Regression: a frame inflating past zstd's output buffer must not wait
    in the decompressor for more input (the link would stall)."""
    a, b = pair()
    a.start_compression()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    a.send_command(mbox(2))
    # A raw-codec body this large crosses as one plain chunk (compression.md §2).
    body = Blob.raw(b"x" * (3 * 1024 * 1024))
    a.send_untagged(c.SaveChange(200, 2, 1, 300, GUID, 1300, 0, (), 9, body.size, b"h" * 32, body))
    events = b.receive_data(a.data_to_send())
    saves = [e for e in events if isinstance(e, UntaggedReceived)]
    assert len(saves) == 1
    assert isinstance(saves[0].data, c.SaveChange) and saves[0].data.body == body


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_a_batch_queued_then_written_once_arrives_intact(compress: bool) -> None:
    """Many SAVEs queued, one data_to_send (one zstd flush), read back in TLS-sized
    pieces: every body intact and in order, answers the same way back."""
    rng = random.Random(7)
    a, b = pair()
    if compress:
        a.start_compression()
        b.receive_data(a.data_to_send())
        a.receive_data(b.data_to_send())
    a.send_command(mbox(1))
    sizes = [rng.choice([0, 100, 5000, 16_384, 70_000, 300_000]) for _ in range(64)]
    text = b"line of mail text\r\n" * (300_000 // 19 + 1)
    # Every third body random (incompressible), the rest text.
    raw = [rng.randbytes(n) if i % 3 == 0 else text[:n] for i, n in enumerate(sizes)]
    bodies = [Blob.compress(body) for body in raw]
    tags = [a.send_command(c.Save(1, 0, GUID, ("\\Seen",), body)) for body in bodies]
    assert a.has_data_to_send
    wire = a.data_to_send()
    assert not a.has_data_to_send and a.data_to_send() == b""
    events = []
    for i in range(0, len(wire), 16_384):
        events += b.receive_data(wire[i : i + 16_384])
    saves = [e for e in events if isinstance(e, CommandReceived) and isinstance(e.command, c.Save)]
    assert [e.tag for e in saves] == tags
    assert [e.command.body for e in saves if isinstance(e.command, c.Save)] == bodies
    for event in events:
        assert isinstance(event, CommandReceived)
        b.send_ok(event.tag, c.SaveOk(1, 1, "n2", 1) if event.tag in tags else None)
    replies = a.receive_data(b.data_to_send())
    assert [r.tag for r in replies if isinstance(r, ReplyReceived)][1:] == tags
    assert a.inflight == 0


def test_large_bodies_go_around_the_compressor_in_plain_chunks() -> None:
    """compression.md §2: a frame with a body of 16 KiB or more is written as it
    is, in a plain chunk after a flushed zstd chunk holding the frames before
    it; smaller ones and every other frame go through the zstd stream."""
    a, b = pair()
    a.start_compression()
    b.receive_data(a.data_to_send())
    a.receive_data(b.data_to_send())
    a.send_command(mbox(1))
    text = random.Random(1).randbytes(30_000).hex().encode()  # compresses to about half
    large, small = Blob.compress(text), Blob.raw(b"x" * 2000)
    assert large.codec == 1
    assert len(large.stored) >= LARGE_BYTES
    a.send_command(c.Save(1, 0, GUID, (), large))
    a.send_command(c.Save(1, 0, GUID, (), small))
    a.send_command(c.Ping())
    wire = a.data_to_send()
    # Tags: 1 COMPRESS, 2 MBOX, 3 this SAVE.
    frame = b"".join(
        FrameEncoder().encode_parts(c.encode_command("3", c.Save(1, 0, GUID, (), large)))
    )
    at = wire.index(frame)
    assert wire[at - 4 : at] == plain_chunk(frame)
    assert small.stored not in wire  # compressed with the frame heads
    events = b.receive_data(wire)
    received = [e.command for e in events if isinstance(e, CommandReceived)]
    assert received[1:] == [
        c.Save(1, 0, GUID, (), large),
        c.Save(1, 0, GUID, (), small),
        c.Ping(),
    ]


def test_a_plain_chunk_of_an_uncompressed_link_is_not_a_thing() -> None:
    """Chunks exist only after COMPRESS: before it a body is part of its frame."""
    a, b = pair()
    a.send_command(mbox(1))
    blob = Blob.raw(b"y" * 40_000)
    a.send_command(c.Save(1, 0, GUID, (), blob))
    wire = a.data_to_send()
    assert plain_chunk(blob.stored) not in wire
    events = b.receive_data(wire)
    assert [e.command for e in events if isinstance(e, CommandReceived)][1] == c.Save(
        1, 0, GUID, (), blob
    )
