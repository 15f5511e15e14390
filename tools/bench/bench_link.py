#!/usr/bin/env python3
"""Throughput of SAVE frames over one TLS 1.3 + zstd link, against raw TLS.

Anchor: a plain trio TLS 1.3 stream over loopback carrying exactly the
message bodies (no framing, no msgpack, no compression, no replies). The
measured path: ``open_link`` (mutual TLS + HELLO), ``COMPRESS ZSTD``, one
``MBOX``, then one ``SAVE`` per message, pipelined within the link's window,
each answered by the receiving side with an OK. Both ends run in this one
process and one trio loop, so the figure is CPU cost per byte, not network.

Prints the median of ``--runs`` runs of each and their ratio
(link throughput / raw TLS throughput; the target is >= 0.7).

    tools/bench/bench_link.py --messages 2000          # quick
    tools/bench/bench_link.py --messages 10000         # W1 (~271 MB)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from replicad import pki
from replicad.protocol.commands import Mbox, Save, SaveOk
from replicad.protocol.connection import (
    CommandReceived,
    ConnectionClosed,
    ReplyReceived,
    WindowFullError,
)
from replicad.transport import Link, TlsContexts, load_tls_contexts, open_link, serve_links

GEN_CORPUS = Path(__file__).resolve().parents[3] / "shared" / "tools" / "gen_corpus.py"


def load_bodies(corpus: Path) -> list[bytes]:
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and p.parent.name in ("cur", "new"))
    return [p.read_bytes() for p in files]


def make_corpus(directory: Path, messages: int, generator: Path) -> list[bytes]:
    subprocess.run(
        [
            sys.executable,
            str(generator),
            str(directory),
            "--users",
            "1",
            "--mailboxes",
            "5",
            "--messages",
            str(messages),
            "--seed",
            "1",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return load_bodies(directory)


def contexts(directory: Path, node: str) -> TlsContexts:
    return load_tls_contexts(
        directory / "ca.pem",
        directory / f"{node}.pem",
        directory / f"{node}.key",
        node=node,
        cluster="bench",
    )


async def save_sink(link: Link) -> None:
    uid = 0
    while True:
        event = await link.next_event()
        if isinstance(event, ConnectionClosed):
            return
        if isinstance(event, CommandReceived):
            tag = event.tag
            if isinstance(event.command, Save):
                uid += 1
                payload: SaveOk | None = SaveOk(uid, uid, "n1")
            else:
                payload = None
            await link.send(lambda c, t=tag, p=payload: c.send_ok(t, p))  # type: ignore[misc]


async def run_link(pki_dir: Path, bodies: list[bytes], compress: bool) -> float:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_links(
                contexts(pki_dir, "n1"), save_sink, task_status=task_status
            )
        )
        port = listeners[0].socket.getsockname()[1]
        link = await open_link("127.0.0.1", port, "n1", contexts(pki_dir, "n2"))
        if compress:
            assert await link.start_compression()
        await link.send(lambda c: c.send_command(Mbox(1, "u1", "INBOX", b"\1" * 16, 1, 1, 0, 0)))
        window_open = trio.Event()
        done = trio.Event()
        expected = len(bodies) + 1
        replies = 0

        async def read_replies() -> None:
            nonlocal replies, window_open
            while replies < expected:
                event = await link.next_event()
                assert isinstance(event, ReplyReceived), event
                replies += 1
                window_open.set()
            done.set()

        start = time.perf_counter()
        nursery.start_soon(read_replies)
        guid = b"\2" * 16
        pending = iter(bodies)
        body = next(pending, None)
        while body is not None:
            # Queue as many SAVEs as the window takes, then write them at once.
            queued = 0
            # With zstd, one frame per write: replicad.protocol.connection's
            # zstd stream_writer leaves output pending when one write inflates
            # to more than its 64 KiB write_size, which stalls batched input.
            while body is not None and link.connection.can_send() and not (compress and queued):
                try:
                    link.queue(
                        lambda c, b=body: c.send_command(Save(1, 1_600_000_000, guid, (), b))
                    )  # type: ignore[misc]
                except WindowFullError:
                    break
                queued += 1
                body = next(pending, None)
            if queued:
                await link.flush()
            else:
                window_open = trio.Event()
                await window_open.wait()
        await done.wait()
        elapsed = time.perf_counter() - start
        await link.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


async def run_raw_tls(pki_dir: Path, bodies: list[bytes]) -> float:
    total = sum(len(b) for b in bodies)
    server_ctx = contexts(pki_dir, "n1").server
    client_ctx = contexts(pki_dir, "n2").client

    async def sink(tcp: trio.SocketStream) -> None:
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        received = 0
        while received < total:
            chunk = await stream.receive_some(256 * 1024)
            if not chunk:
                return
            received += len(chunk)
        await stream.send_all(b"k")
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, sink, 0)
        port = listeners[0].socket.getsockname()[1]
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_ctx, server_hostname="n1")
        await stream.do_handshake()
        start = time.perf_counter()
        for body in bodies:
            await stream.send_all(body)
        assert await stream.receive_some(1) == b"k"
        elapsed = time.perf_counter() - start
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages in all (W1: 10000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--corpus", type=Path, help="an existing gen_corpus.py output")
    parser.add_argument("--generator", type=Path, default=GEN_CORPUS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-link-") as tmp:
        tmpdir = Path(tmp)
        if args.corpus:
            bodies = load_bodies(args.corpus)
        else:
            bodies = make_corpus(tmpdir / "corpus", args.messages, args.generator)
        pki_dir = tmpdir / "pki"
        pki.init_cluster_ca(pki_dir, "bench")
        pki.issue_node_certificate(pki_dir, "n1")
        pki.issue_node_certificate(pki_dir, "n2")
        total = sum(len(b) for b in bodies)
        print(f"{len(bodies)} messages, {total / 1e6:.1f} MB, {args.runs} runs each")

        results: dict[str, float] = {}
        for name, run in (
            ("raw TLS stream (anchor)", lambda: trio.run(run_raw_tls, pki_dir, bodies)),
            ("link SAVE, zstd", lambda: trio.run(run_link, pki_dir, bodies, True)),
            ("link SAVE, no zstd", lambda: trio.run(run_link, pki_dir, bodies, False)),
        ):
            median = statistics.median(run() for _ in range(args.runs))
            results[name] = median
            print(f"{name:<26} {median:8.3f} s  {total / median / 1e6:8.1f} MB/s")
        anchor = results["raw TLS stream (anchor)"]
        for name, seconds in results.items():
            if name != "raw TLS stream (anchor)":
                print(f"ratio {name:<20} {anchor / seconds:6.2f}  (target >= 0.70)")


if __name__ == "__main__":
    main()
