"""`replicad debug`: decode frame captures and speak the protocol by hand.

``debug decode FILE [--zstd]``
    FILE holds length-prefixed frames as they cross a link (``-`` for stdin);
    with ``--zstd`` the bytes are one direction after COMPRESS (zstd and plain
    chunks, protocol-spec/compression.md §2). Each frame
    is printed in its text form (protocol-spec/text-form.md), CRLF-terminated
    so the output parses back with ``parse_stream``. A malformed or truncated
    capture prints every frame decoded before the damage, then fails with a
    clear message (exit 65).

``debug connect -c CONFIG NODE``
    Opens a mutually authenticated link to NODE as configured in CONFIG's
    peers, exchanges HELLO, then sends each text-form line read from stdin
    as a frame and prints the text form of every frame received. Works
    interactively and from a pipe.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import trio
import zstandard

from replicad.config import load_config, resolve_config_path
from replicad.errors import (
    BadInputError,
    ConfigError,
    NotFoundError,
    ProtocolError,
    UnreachableError,
)
from replicad.protocol.connection import (
    CAP_COMPRESS_ZSTD,
    CAP_DEBUG,
    CHUNK_HEADER,
    CHUNK_PLAIN,
    MAX_CHUNK,
    MAX_ZSTD_WINDOW,
    CommandReceived,
    ConnectionClosed,
    Event,
    LinkConfig,
    ReplyReceived,
    UntaggedReceived,
)
from replicad.protocol.frames import Frame, FrameDecoder
from replicad.protocol.registry import (
    CommandFrame,
    Status,
    UntaggedFrame,
    decode,
    encode_bad,
    encode_command,
    encode_no,
    encode_ok,
    encode_untagged,
)
from replicad.protocol.text import parse, render
from replicad.transport import Link, LinkRefusedError, load_tls_contexts, open_link

#: Compressed input is fed to zstd in small pieces so one piece cannot
#: expand into an unbounded amount of memory before frames are drained.
_COMPRESSED_CHUNK = 4096
_PLAIN_CHUNK = 1 << 16


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``debug decode`` and ``debug connect`` to the ``replicad`` command."""
    debug = subparsers.add_parser("debug", help="decode captures, speak the protocol by hand")
    actions = debug.add_subparsers(dest="debug_action", metavar="ACTION", required=True)

    decode = actions.add_parser("decode", help="print a capture of frames in text form")
    decode.add_argument("capture", metavar="FILE", help="capture file, or - for stdin")
    decode.add_argument("--zstd", action="store_true", help="the capture is zstd-compressed")
    decode.set_defaults(handler=run_decode)

    connect = actions.add_parser("connect", help="open a link to NODE and send text-form frames")
    connect.add_argument("node", metavar="NODE", help="a peer name from the config")
    connect.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds allowed for connecting and HELLO (default 10)",
    )
    connect.add_argument(
        "--wait",
        type=float,
        default=5.0,
        help="after stdin ends, seconds to wait for outstanding replies (default 5)",
    )
    connect.set_defaults(handler=run_connect)


def _decompressed(source: BinaryIO) -> Iterator[bytes]:
    """The plain bytes of one direction of a link after COMPRESS: a sequence of
    chunks (compression.md §2), zstd chunks inflated, plain chunks as they are.

    A capture cut short yields what was complete; garbage raises BadInputError.
    """
    stream = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).decompressobj()
    while len(header := source.read(CHUNK_HEADER)) == CHUNK_HEADER:
        (word,) = struct.unpack(">I", header)
        left = word & MAX_CHUNK
        if not left:
            raise BadInputError("capture holds an empty chunk")
        while left and (piece := source.read(min(left, _COMPRESSED_CHUNK))):
            left -= len(piece)
            if word & CHUNK_PLAIN:
                yield piece
                continue
            try:
                out = stream.decompress(piece)
            except zstandard.ZstdError as exc:
                raise BadInputError(f"capture is not a valid zstd stream: {exc}") from None
            if out:
                yield out


def _plain(source: BinaryIO) -> Iterator[bytes]:
    while chunk := source.read(_PLAIN_CHUNK):
        yield chunk


def decode_capture(source: BinaryIO, *, compressed: bool) -> Iterator[Frame]:
    """Yield every frame of a capture; BadInputError for damage, after the good frames.

    Frames come from :class:`FrameDecoder`, the same decoder a link uses, so a
    capture that decodes here decodes on a node, and vice versa.
    """
    decoder = FrameDecoder()
    count = 0
    chunks = _decompressed(source) if compressed else _plain(source)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (frame := decoder.next_frame()) is not None:
                count += 1
                yield frame
    except ProtocolError as exc:
        raise BadInputError(f"capture damaged after {count} frames: {exc}") from None
    if decoder.buffered:
        raise BadInputError(
            f"capture truncated after {count} frames: "
            f"{decoder.buffered} bytes of an incomplete frame at the end"
        )


def run_decode(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    try:
        with (
            open(sys.stdin.fileno(), "rb", closefd=False)
            if args.capture == "-"
            else Path(args.capture).open("rb")
        ) as source:
            try:
                for frame in decode_capture(source, compressed=args.zstd):
                    try:
                        out.write(render(frame) + b"\r\n")
                    except ProtocolError as exc:
                        raise BadInputError(f"frame cannot be rendered: {exc}") from None
            finally:
                out.flush()
    except FileNotFoundError:
        raise BadInputError(f"capture file {args.capture} does not exist") from None
    except IsADirectoryError:
        raise BadInputError(f"{args.capture} is a directory, not a capture file") from None
    return 0


class _AsyncReader(Protocol):
    async def readline(self) -> bytes: ...

    async def read(self, size: int) -> bytes: ...


_LITERAL_AT_END = re.compile(rb"~?\{([0-9]{1,10})\}$")


async def _read_text_frame(stdin: _AsyncReader) -> bytes | None:
    """One text-form frame from ``stdin``: a line, plus the octets of any
    literals (``{n}`` / ``~{n}`` at a line end) and the lines that follow them."""
    line = await stdin.readline()
    if not line:
        return None
    text = bytearray(line.rstrip(b"\r\n"))
    while match := _LITERAL_AT_END.search(text):
        size = int(match.group(1))
        literal = await stdin.read(size)
        if len(literal) < size:
            raise BadInputError("stdin ended inside a literal")
        text += b"\r\n" + literal
        text += (await stdin.readline()).rstrip(b"\r\n")
    return bytes(text)


def _event_frame(event: Event) -> Frame | None:
    if isinstance(event, CommandReceived):
        return encode_command(event.tag, event.command)
    if isinstance(event, UntaggedReceived):
        return encode_untagged(event.data)
    if isinstance(event, ReplyReceived):
        if event.status is Status.OK:
            return encode_ok(event.tag, event.payload)
        if event.status is Status.NO:
            return encode_no(event.tag, event.code or "", event.text)
        return encode_bad(event.tag, event.text)
    return None


async def _speak(link: Link, out: BinaryIO, wait: float) -> None:
    """Send stdin's frames, print the peer's, until stdin ends and replies are in."""
    err = sys.stderr

    async def print_events(cancel: trio.CancelScope) -> None:
        while True:
            event = await link.next_event()
            if isinstance(event, ConnectionClosed):
                print(f"link closed: {event.reason}", file=err)
                cancel.cancel()
                return
            frame = _event_frame(event)
            if frame is not None:
                out.write(render(frame) + b"\r\n")
                out.flush()

    stdin = trio.wrap_file(open(sys.stdin.fileno(), "rb", closefd=False))  # noqa: SIM115
    async with trio.open_nursery() as nursery:
        nursery.start_soon(print_events, nursery.cancel_scope)
        while (text := await _read_text_frame(stdin)) is not None:
            if not text.strip():
                continue
            try:
                message = decode(parse(text))
            except ProtocolError as exc:
                print(f"not sent: {exc}", file=err)
                continue
            if isinstance(message, CommandFrame):
                command = message.command
                # The link numbers its own tags; the typed tag is only a label.
                tag = await link.send(lambda c, cmd=command: c.send_command(cmd))  # type: ignore[misc]
                print(f"sent {message.tag} as tag {tag}", file=err)
            elif isinstance(message, UntaggedFrame):
                data = message.data
                await link.send(lambda c, d=data: c.send_untagged(d))  # type: ignore[misc]
            else:
                print("not sent: only commands and untagged frames can be typed", file=err)
        with trio.move_on_after(wait):
            while link.connection.inflight:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def _connect_and_speak(args: argparse.Namespace) -> None:
    config = load_config(resolve_config_path(getattr(args, "config", None)))
    if config.tls is None:
        raise ConfigError(f"{config.path} has no [tls] section: links need the cluster CA")
    peer = next((p for p in config.peers if p.name == args.node), None)
    if peer is None:
        known = ", ".join(p.name for p in config.peers) or "none"
        raise NotFoundError(f"no peer {args.node!r} in {config.path} (peers: {known})")
    tls = config.tls
    contexts = load_tls_contexts(tls.ca, tls.cert, tls.key, node=config.name, cluster=tls.cluster)
    # DEBUG tells the node this is a person at a terminal, not the node of the
    # same name: it serves the commands without replacing the real link.
    link_config = LinkConfig(
        cluster=tls.cluster, node=config.name, capabilities=(CAP_COMPRESS_ZSTD, CAP_DEBUG)
    )
    link = await open_link(
        peer.host,
        peer.port,
        peer.name,
        contexts,
        config=link_config,
        handshake_timeout=args.timeout,
    )
    try:
        hello = link.hello
        print(
            f"connected to {hello.node} (cluster {hello.cluster}, version {hello.version}, "
            f"capabilities {' '.join(hello.capabilities) or '-'})",
            file=sys.stderr,
        )
        await _speak(link, sys.stdout.buffer, args.wait)
    finally:
        await link.aclose()


def run_connect(args: argparse.Namespace) -> int:
    try:
        trio.run(_connect_and_speak, args)
    except LinkRefusedError as exc:
        raise UnreachableError(f"link to {args.node} refused ({exc.reason}): {exc}") from None
    return 0
