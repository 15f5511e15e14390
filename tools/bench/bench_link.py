#!/usr/bin/env python3
"""Throughput of SAVE frames over one TLS 1.3 + zstd link, against raw TLS.

Anchor: a plain trio TLS 1.3 stream over loopback carrying exactly the
message bodies (no framing, no msgpack, no compression, no replies), written
in the same batches as the link writes them (``--batch`` bodies per
``send_all``: like with like, and faster than one write per body).  The
measured path: ``open_link`` (mutual TLS + HELLO), ``COMPRESS ZSTD``, one
``MBOX``, then one ``SAVE`` per message, pipelined within the link's window:
the sender queues up to ``--batch`` SAVEs and writes them with one flush
(as replicad.cluster.runtime's ``_pump`` does with its outbox batch of 64),
the receiving side answers each with an OK, queued and written once the
SAVEs already received are handled.  Both ends run in this one process and
one trio loop, so the figure is CPU cost per byte, not network.

Prints the median of ``--runs`` runs of each and their ratio
(link throughput / raw TLS throughput; the target is >= 0.7).
``--profile`` prints where the zstd link's time goes instead.

    tools/bench/bench_link.py --messages 2000          # quick
    tools/bench/bench_link.py --messages 10000         # W1 (~271 MB)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from replicad import pki
from replicad.protocol.commands import Mbox, Save, SaveOk
from replicad.protocol.connection import (
    CommandReceived,
    Connection,
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


def _answer(tag: str, payload: SaveOk | None, connection: Connection) -> None:
    connection.send_ok(tag, payload)


def _save(body: bytes, connection: Connection) -> str:
    return connection.send_command(Save(1, 1_600_000_000, b"\2" * 16, (), body))


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
            link.queue(partial(_answer, tag, payload))
            # One write for the answers to everything received so far.
            if not link.has_pending_events:
                await link.flush()


async def run_link(pki_dir: Path, bodies: list[bytes], compress: bool, batch: int) -> float:
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
        pending = iter(bodies)
        body = next(pending, None)
        while body is not None:
            # Queue a batch of SAVEs, as many as the window takes, then write
            # them at once.
            queued = 0
            while body is not None and queued < batch and link.connection.can_send():
                try:
                    link.queue(partial(_save, body))
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


async def run_raw_tls(pki_dir: Path, bodies: list[bytes], batch: int) -> float:
    total = sum(len(b) for b in bodies)
    server_ctx = contexts(pki_dir, "n1").server
    client_ctx = contexts(pki_dir, "n2").client
    # Joined outside the timed part: the anchor pays for nothing but TLS.
    writes = [b"".join(bodies[i : i + batch]) for i in range(0, len(bodies), batch)]

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
        for data in writes:
            await stream.send_all(data)
        assert await stream.receive_some(1) == b"k"
        elapsed = time.perf_counter() - start
        await stream.aclose()
        nursery.cancel_scope.cancel()
    return elapsed


def profile_link(pki_dir: Path, bodies: list[bytes], batch: int) -> None:
    """One zstd link run under cProfile: the functions with the most own time."""
    profiler = cProfile.Profile()
    profiler.runcall(trio.run, run_link, pki_dir, bodies, True, batch)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages in all (W1: 10000)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64, help="SAVEs (bodies) per write")
    parser.add_argument("--corpus", type=Path, help="an existing gen_corpus.py output")
    parser.add_argument("--generator", type=Path, default=GEN_CORPUS)
    parser.add_argument("--profile", action="store_true", help="profile one zstd link run")
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
        if args.profile:
            profile_link(pki_dir, bodies, args.batch)
            return

        runs: dict[str, Callable[[], float]] = {
            "raw TLS stream (anchor)": lambda: trio.run(run_raw_tls, pki_dir, bodies, args.batch),
            "link SAVE, zstd": lambda: trio.run(run_link, pki_dir, bodies, True, args.batch),
            "link SAVE, no zstd": lambda: trio.run(run_link, pki_dir, bodies, False, args.batch),
        }
        # Interleaved rounds, so that a noisy neighbour slows all three alike.
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, run in runs.items():
                times[name].append(run())
        results = {name: statistics.median(seconds) for name, seconds in times.items()}
        for name, median in results.items():
            print(f"{name:<26} {median:8.3f} s  {total / median / 1e6:8.1f} MB/s")
        anchor = results["raw TLS stream (anchor)"]
        for name, seconds in results.items():
            if name != "raw TLS stream (anchor)":
                print(f"ratio {name:<20} {anchor / seconds:6.2f}  (target >= 0.70)")


if __name__ == "__main__":
    main()
