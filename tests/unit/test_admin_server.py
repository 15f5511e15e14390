"""The admin server's connection handling and two-phase shutdown, in process.

The request handler here is a small stand-in that can be held mid-request,
so the tests can see exactly what drain() does to idle and busy connections.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from replicad.admin.framing import FrameDecoder, decode_document, encode_frame, request
from replicad.admin.server import AdminServer
from replicad.errors import ProtocolError
from replicad.node import bind_admin_socket


class HeldHandler:
    """Echoes ``args``; the ``hold`` op waits until ``release`` is set."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.holding = trio.Event()

    async def __call__(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "hold":
            self.holding.set()
            await self.release.wait()
        return {"ok": True, "result": {"op": op, "args": args}}


async def roundtrip(stream: trio.SocketStream, document: Any) -> Any:
    await stream.send_all(encode_frame(document))
    return await receive(stream)


async def receive(stream: trio.SocketStream) -> Any:
    decoder = FrameDecoder(1 << 20)
    while (body := decoder.next_body()) is None:
        data = await stream.receive_some(65536)
        if not data:
            return None  # closed by the server
        decoder.feed(data)
    return decode_document(body)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "a.sock"


async def start(nursery: trio.Nursery, path: Path, handler: HeldHandler) -> AdminServer:
    server = AdminServer(handler, max_frame=4096)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(bind_admin_socket(path)[0]))
    await nursery.start(server.run, listener)
    return server


async def test_several_requests_per_connection_and_concurrent_connections(sock_path: Path) -> None:
    handler = HeldHandler()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, sock_path, handler)
        a = await trio.open_unix_socket(str(sock_path))
        b = await trio.open_unix_socket(str(sock_path))
        for i in range(3):
            reply = await roundtrip(a, request("echo", {"i": i}))
            assert reply == {"ok": True, "result": {"op": "echo", "args": {"i": i}}}
        assert (await roundtrip(b, request("echo", {})))["ok"] is True
        await a.aclose()
        await b.aclose()
        server.drain()
    assert server.closed.is_set()


async def test_hostile_frames_close_only_their_connection(sock_path: Path) -> None:
    handler = HeldHandler()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, sock_path, handler)
        good = await trio.open_unix_socket(str(sock_path))
        for payload in (
            struct.pack(">I", 4097),  # above max_frame: refused before reading the body
            struct.pack(">I", 2) + b"\xc1\xc1",  # not msgpack
            encode_frame(["op", "args"]),  # msgpack, but not a request map
            encode_frame({"op": "x", "args": {}, "extra": 1}),
            struct.pack(">I", 100) + b"short",  # closed mid-frame
        ):
            bad = await trio.open_unix_socket(str(sock_path))
            await bad.send_all(payload)
            if payload.endswith(b"short"):
                await bad.send_eof()
            reply = await receive(bad)
            assert reply is not None and reply["ok"] is False
            assert reply["error"] == ProtocolError.__name__
            assert await receive(bad) is None  # and the connection is closed
            await bad.aclose()
        assert (await roundtrip(good, request("echo", {})))["ok"] is True
        await good.aclose()
        server.drain()


async def test_drain_closes_idle_connections_and_finishes_busy_ones(sock_path: Path) -> None:
    handler = HeldHandler()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, sock_path, handler)
        idle = await trio.open_unix_socket(str(sock_path))
        assert (await roundtrip(idle, request("echo", {})))["ok"] is True
        busy = await trio.open_unix_socket(str(sock_path))
        await busy.send_all(encode_frame(request("hold", {"n": 1})))
        await handler.holding.wait()

        server.drain()
        assert await receive(idle) is None  # idle: closed at once
        with pytest.raises(OSError):  # no longer accepting
            await trio.open_unix_socket(str(sock_path))
        assert not server.closed.is_set()  # the busy request is still running

        handler.release.set()
        reply = await receive(busy)
        assert reply == {"ok": True, "result": {"op": "hold", "args": {"n": 1}}}
        assert await receive(busy) is None  # then closed
        await server.closed.wait()
        await idle.aclose()
        await busy.aclose()


async def test_cancellation_stops_the_server_with_requests_in_flight(sock_path: Path) -> None:
    handler = HeldHandler()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, sock_path, handler)
        busy = await trio.open_unix_socket(str(sock_path))
        await busy.send_all(encode_frame(request("hold", {})))
        await handler.holding.wait()
        nursery.cancel_scope.cancel()
    assert server.closed.is_set()
    assert await receive(busy) is None
    await busy.aclose()


def test_oversized_length_is_rejected_before_buffering() -> None:
    decoder = FrameDecoder(10)
    decoder.feed(struct.pack(">I", 11))
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        decoder.next_body()
    ok = FrameDecoder(10)
    frame = encode_frame({"a": 1})
    for byte in frame:  # byte by byte: partial frames wait for more input
        assert ok.next_body() is None
        ok.feed(bytes([byte]))
    assert msgpack.unpackb(ok.next_body()) == {"a": 1}
