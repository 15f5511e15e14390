#!/usr/bin/env python3
"""Throughput of SAVE frames over one TLS 1.3 + zstd link, against raw TLS.

The measured path is production's: ``open_link`` (mutual TLS + HELLO),
``COMPRESS ZSTD``, one ``MBOX``, then one ``SAVE`` per message carrying its
body as the store keeps it (replicad.blob: the codec octet and, for most
mail, one zstd frame).  The bodies are compressed before the timed part:
the store did that when it first wrote them.  The link sends them outside
its zstd stream, in plain chunks (protocol-spec/compression.md §2).  The
sender queues up to ``--batch`` SAVEs and writes them with one flush (as
replicad.cluster.streams' ``pump`` does with its outbox batch of 64);
the receiver checks every body as its store would before keeping it
(``PreparedBody.of``: one zstd frame of the declared size, its SHA-256),
in a worker thread as the store does, and answers each SAVE with an OK,
the answers to a burst queued and written at once.  Both ends run in this
one process and one trio loop, so the figure is CPU cost per byte, not
network.

Two anchors, plain trio TLS 1.3 streams over loopback written in the same
batches (``--batch`` bodies per ``send_all``), no framing, no replies:

* *raw bodies*: the messages themselves, the issue's anchor (target >= 0.7);
* *bytes sent*: as many octets as the link actually wrote (the stored
  bodies plus frame heads and chunk headers): the link's own overhead.

Prints the median of ``--runs`` interleaved runs of each and both ratios
(anchor time / link time).  ``--profile`` prints where the link's time goes.

    tools/bench/bench_link.py --messages 2000          # quick
    tools/bench/bench_link.py --messages 10000         # W1 (~271 MB)
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import math
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import trio

from replicad import pki
from replicad.blob import Blob
from replicad.protocol.commands import Mbox, Save, SaveOk
from replicad.protocol.connection import (
    CommandReceived,
    Connection,
    ConnectionClosed,
    ReplyReceived,
    WindowFullError,
)
from replicad.store.blobs import PreparedBody
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


def _save(blob: Blob, connection: Connection) -> str:
    return connection.send_command(Save(1, 1_600_000_000, b"\2" * 16, (), blob))


def _verify(blobs: list[Blob]) -> None:
    """What the receiving store does with each body before its write (replicad.store.blobs)."""
    for blob in blobs:
        PreparedBody.of(blob)


def save_sink(verify: bool) -> Callable[[Link], Awaitable[None]]:
    """The receiving node: each burst of SAVEs read is checked in a worker thread
    while the next is read, then answered with one write."""

    async def sink(link: Link) -> None:
        # Unbounded: the link's window (max_inflight commands and bytes) is
        # what bounds the SAVEs waiting here, and a bounded channel would
        # stop the reading while a check is in the worker thread.
        send, receive = trio.open_memory_channel[list[tuple[str, Blob | None]]](math.inf)

        async def answer() -> None:
            uid = 0
            async for first in receive:
                # Whatever else arrived meanwhile joins it: one thread hop and
                # one write for all of it, as the store's group commit does.
                burst = first
                with contextlib.suppress(trio.WouldBlock):
                    while True:
                        burst = burst + receive.receive_nowait()
                if verify:
                    await trio.to_thread.run_sync(_verify, [b for _, b in burst if b is not None])
                for tag, blob in burst:
                    payload = None
                    if blob is not None:
                        uid += 1
                        payload = SaveOk(uid, uid, "n1", 1)
                    link.queue(partial(_answer, tag, payload))
                await link.flush()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            burst: list[tuple[str, Blob | None]] = []
            while True:
                event = await link.next_event()
                if isinstance(event, ConnectionClosed):
                    break
                if isinstance(event, CommandReceived):
                    command = event.command
                    burst.append((event.tag, command.body if isinstance(command, Save) else None))
                if burst and not link.has_pending_events:
                    await send.send(burst)
                    burst = []
            await send.aclose()

    return sink


async def run_link(
    pki_dir: Path, blobs: list[Blob], compress: bool, batch: int, verify: bool = True
) -> tuple[float, int]:
    """Seconds to send every SAVE and read every answer, and the octets the link wrote."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            lambda task_status: serve_links(
                contexts(pki_dir, "n1"), save_sink(verify), task_status=task_status
            )
        )
        port = listeners[0].socket.getsockname()[1]
        link = await open_link("127.0.0.1", port, "n1", contexts(pki_dir, "n2"))
        if compress:
            assert await link.start_compression()
        await link.send(lambda c: c.send_command(Mbox(1, "u1", "INBOX", b"\1" * 16, 1, 1, 0, 0)))
        window_open = trio.Event()
        done = trio.Event()
        expected = len(blobs) + 1
        replies = 0

        async def read_replies() -> None:
            nonlocal replies, window_open
            while replies < expected:
                event = await link.next_event()
                assert isinstance(event, ReplyReceived), event
                assert event.status.value == "OK", event
                replies += 1
                window_open.set()
            done.set()

        sent_before = link.traffic.sent
        start = time.perf_counter()
        nursery.start_soon(read_replies)
        pending = iter(blobs)
        blob = next(pending, None)
        while blob is not None:
            # Queue a batch of SAVEs, as many as the window takes, then write
            # them at once.
            queued = 0
            while blob is not None and queued < batch and link.connection.can_send():
                try:
                    link.queue(partial(_save, blob))
                except WindowFullError:
                    break
                queued += 1
                blob = next(pending, None)
            if queued:
                await link.flush()
            else:
                window_open = trio.Event()
                await window_open.wait()
        await done.wait()
        elapsed = time.perf_counter() - start
        sent = link.traffic.sent - sent_before
        await link.aclose()
        nursery.cancel_scope.cancel()
    return elapsed, sent


async def run_raw_tls(pki_dir: Path, payloads: list[bytes], batch: int, pad: int = 0) -> float:
    """Seconds to stream ``payloads`` (and ``pad`` more octets) over plain TLS."""
    server_ctx = contexts(pki_dir, "n1").server
    client_ctx = contexts(pki_dir, "n2").client
    # Joined outside the timed part: the anchor pays for nothing but TLS.
    writes = [b"".join(payloads[i : i + batch]) for i in range(0, len(payloads), batch)]
    if pad:
        writes.append(bytes(pad))
    total = sum(map(len, writes))

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


def profile_link(pki_dir: Path, blobs: list[Blob], batch: int) -> None:
    """One zstd link run under cProfile: the functions with the most own time."""
    profiler = cProfile.Profile()
    profiler.runcall(trio.run, run_link, pki_dir, blobs, True, batch)
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
        # The store's work at write time, not the link's: outside the timed part.
        blobs = [Blob.compress(body) for body in bodies]
        total = sum(map(len, bodies))
        stored = [blob.stored for blob in blobs]
        zstd = sum(b.codec for b in blobs)
        print(
            f"{len(bodies)} messages, {total / 1e6:.1f} MB, stored"
            f" {sum(map(len, stored)) / 1e6:.1f} MB ({zstd} zstd, {len(blobs) - zstd} raw),"
            f" {args.runs} runs each"
        )
        if args.profile:
            profile_link(pki_dir, blobs, args.batch)
            return

        # The receiver's check of every body, alone (it runs in the store's
        # worker thread, overlapping the link's own work in the timed runs).
        start = time.perf_counter()
        _verify(blobs)
        print(f"checking every body as the store does: {time.perf_counter() - start:.3f} s")
        # How many octets the link writes for these SAVEs (untimed run).
        _, link_sent = trio.run(run_link, pki_dir, blobs, True, args.batch, False)
        pad = link_sent - sum(map(len, stored))
        print(f"link writes {link_sent / 1e6:.1f} MB (frame heads, chunk headers: {pad} octets)")

        runs: dict[str, Callable[[], float]] = {
            RAW: lambda: trio.run(run_raw_tls, pki_dir, bodies, args.batch),
            SENT: lambda: trio.run(run_raw_tls, pki_dir, stored, args.batch, pad),
            "link SAVE, zstd": lambda: trio.run(run_link, pki_dir, blobs, True, args.batch)[0],
            "link SAVE, no zstd": lambda: trio.run(run_link, pki_dir, blobs, False, args.batch)[0],
            # The link alone: what the receiver's check costs, by difference.
            "link SAVE, zstd, no check": lambda: trio.run(
                run_link, pki_dir, blobs, True, args.batch, False
            )[0],
        }
        # Interleaved rounds, so that a noisy neighbour slows all of them alike.
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.runs):
            for name, run in runs.items():
                times[name].append(run())
        results = {name: statistics.median(seconds) for name, seconds in times.items()}
        for name, median in results.items():
            print(f"{name:<34} {median:8.3f} s  {total / median / 1e6:8.1f} MB/s of mail")
        for name, seconds in results.items():
            if name not in (RAW, SENT):
                print(
                    f"ratio {name:<28} {results[RAW] / seconds:6.2f} vs raw bodies"
                    f" (target >= 0.70)  {results[SENT] / seconds:6.2f} vs bytes sent"
                )


RAW = "raw TLS, raw bodies (anchor)"
SENT = "raw TLS, bytes sent"


if __name__ == "__main__":
    main()
