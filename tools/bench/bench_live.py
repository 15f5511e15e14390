#!/usr/bin/env python3
"""W5 (architecture.md §10): 3 nodes, a steady stream of SAVEs; replication lag and ack latency.

A local 3-node cluster (``replicad cluster up``); clients save W5-sized
messages into n1 (the master of their mailboxes) at a fixed rate, first
with every node at durability ``local``, then at ``quorum``.  Printed:

* SAVE ack latency p50/p99 as the client sees it, per level, and the
  difference quorum - local (target: within 2 ms on loopback);
* replication lag p50/p99 per peer: from the master's commit to the peer's
  acknowledgement that the change is on its disk (n1's ``cluster_status``;
  target p99 <= 50 ms on loopback).

With ``--delay MS`` every node-to-node link goes through a proxy that
delays each direction by MS milliseconds (RTT = 2 x MS), and the quorum
latency is compared with 1 RTT + 10 ms (the seed's goal 6).

    .venv/bin/python tools/bench/bench_live.py [--rate 200] [--seconds 60] [--delay 50]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

from replicad.admin.client import AdminClient

RD = [sys.executable, "-m", "replicad"]
NODES = ("n1", "n2", "n3")
BODY = (
    b"From: load@example.org\r\nTo: w5@example.org\r\nSubject: steady\r\n\r\n"
    + b"a steady stream of mail " * 120
    + b"\r\n"
)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- a delaying TCP proxy (one direction delayed by `delay` seconds) -----------


async def _pipe(src: trio.SocketStream, dst: trio.SocketStream, delay: float) -> None:
    send, receive = trio.open_memory_channel[tuple[float, bytes]](10_000)

    async def reader() -> None:
        async with send:
            while data := await src.receive_some(65536):
                await send.send((trio.current_time() + delay, data))

    async def writer() -> None:
        async with receive:
            async for due, data in receive:
                await trio.sleep_until(due)
                await dst.send_all(data)
        await dst.send_eof()

    # A node killed at the end of a run breaks its connections: that ends the
    # pipe, it is not an error of the proxy.
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(writer)
    except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def _proxy(listen_port: int, target_port: int, delay: float) -> None:
    async def handle(client: trio.SocketStream) -> None:
        try:
            server = await trio.open_tcp_stream("127.0.0.1", target_port)
        except OSError:
            await client.aclose()
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_pipe, client, server, delay)
                nursery.start_soon(_pipe, server, client, delay)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(server)

    await trio.serve_tcp(handle, listen_port, host="127.0.0.1")


def start_proxies(routes: list[tuple[int, int]], delay: float) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for listen, target in routes:
                nursery.start_soon(_proxy, listen, target, delay)

    threading.Thread(target=trio.run, args=(main,), daemon=True).start()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the cluster ------------------------------------------------------------------


class Cluster:
    def __init__(self, directory: Path, level: str, delay_ms: float) -> None:
        self.dir = directory
        shutil.rmtree(directory, ignore_errors=True)
        subprocess.run(
            [*RD, "cluster", "up", "-n", "3", str(directory)], check=True, capture_output=True
        )
        subprocess.run([*RD, "cluster", "down", str(directory)], check=True, capture_output=True)
        for node in NODES:
            cfg = directory / node / "replicad.toml"
            text = re.sub(
                r"^durability = .*$", f'durability = "{level}"', cfg.read_text(), flags=re.M
            )
            cfg.write_text(text)
        if delay_ms:
            self._proxy_links(delay_ms / 1000)
        subprocess.run([*RD, "cluster", "up", str(directory)], check=True, capture_output=True)
        time.sleep(3 + 4 * delay_ms / 1000)  # links, routes, root election

    def _proxy_links(self, delay: float) -> None:
        # Each peer address in every config points at a proxy in front of the
        # peer's real port, so both directions of every link are delayed.
        routes = []
        for node in NODES:
            cfg = self.dir / node / "replicad.toml"
            text = cfg.read_text()

            def repl(match: re.Match[str]) -> str:
                port = free_port()
                routes.append((port, int(match.group(1))))
                return f'address = "127.0.0.1:{port}"'

            cfg.write_text(re.sub(r'^address = "127\.0\.0\.1:(\d+)"$', repl, text, flags=re.M))
        start_proxies(routes, delay)

    def sock(self, node: str) -> Path:
        return self.dir / node / "admin.sock"

    def stop(self) -> None:
        subprocess.run([*RD, "cluster", "down", str(self.dir)], capture_output=True)
        for pidfile in self.dir.glob("n*/data/replicad.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def steady_saves(cluster: Cluster, rate: float, seconds: float, clients: int) -> list[float]:
    """Save at ``rate``/s for ``seconds`` from ``clients`` threads into n1; latencies (s)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    interval = clients / rate
    start = time.perf_counter() + 0.2

    def client(i: int) -> None:
        try:
            with AdminClient(cluster.sock("n1")) as c:
                n = 0
                while True:
                    due = start + i * interval / clients + n * interval
                    if due - start > seconds:
                        return
                    pause = due - time.perf_counter()
                    if pause > 0:
                        time.sleep(pause)
                    t0 = time.perf_counter()
                    c.call("save", user=f"w5user{i}", mailbox="INBOX", body=BODY)
                    latencies.append(time.perf_counter() - t0)
                    n += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} clients failed: {errors[0]!r}")
    return latencies


def run(level: str, args: argparse.Namespace, work: Path) -> tuple[list[float], dict[str, Any]]:
    cluster = Cluster(work / f"cluster-{level}", level, args.delay)
    try:
        with AdminClient(cluster.sock("n1")) as c:  # warm up: masters assigned, links busy
            for i in range(4):
                c.call("save", user=f"w5user{i}", mailbox="INBOX", body=BODY)
        # Enough clients that each waits for its reply well within its turn.
        clients = 4 if not args.delay else max(4, int(args.rate * 4 * args.delay / 1000) + 1)
        begin = time.perf_counter()
        latencies = steady_saves(cluster, args.rate, args.seconds, clients)
        status_rate = len(latencies) / (time.perf_counter() - begin)
        print(f"{level:6}: achieved {status_rate:.0f} saves/s with {clients} clients")
        time.sleep(1 + 4 * args.delay / 1000)
        with AdminClient(cluster.sock("n1")) as c:
            status: dict[str, Any] = c.call("cluster_status")
        return latencies, status
    finally:
        cluster.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=200.0, help="saves per second")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--delay", type=float, default=0.0, help="one-way delay per link, ms")
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="replicad-w5-") as tmp:
        for level in ("local", "quorum"):
            latencies, status = run(level, args, Path(tmp))
            results[level] = latencies
            p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
            print(
                f"{level:6}: {len(latencies)} saves at {args.rate:g}/s, "
                f"ack latency p50 {p50:.2f} ms p99 {p99:.2f} ms"
            )
            for peer in status["peers"]:
                print(
                    f"        lag to {peer['name']}: p50 {peer.get('lag_p50_ms')} ms, "
                    f"p99 {peer.get('lag_p99_ms')} ms (commit -> peer on disk)"
                )
    local50 = statistics.median(results["local"]) * 1000
    quorum50 = statistics.median(results["quorum"]) * 1000
    if not args.delay:
        print(f"quorum - local (p50): {quorum50 - local50:+.2f} ms (target: within 2 ms)")
    else:
        rtt = 2 * args.delay
        print(f"quorum p50 {quorum50:.1f} ms vs 1 RTT + 10 ms = {rtt + 10:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
