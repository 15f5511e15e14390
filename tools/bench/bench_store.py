#!/usr/bin/env python3
"""Store benchmark on workload W1 (docs/architecture.md §10), printed as ratios to machine limits.

Measures, in one run:

1. the anchor: raw py-lmdb writing the same bodies with the same batch sizes
   (one durable commit per batch), i.e. what this disk + LMDB can do;
2. ``replicad import`` of the W1 Maildir into a real node process: messages/s
   and MB/s as a ratio to the anchor (target >= 0.6), and the node's peak RSS
   (VmHWM; target <= 150 MB);
3. 50 concurrent single-message SAVE clients against the node over its admin
   socket: saves/s as a ratio to the disk's fsync rate (target >= 10: group
   commit), and to raw py-lmdb durable writes of the same body one per
   commit (the unbatched limit) and 500 per commit (LMDB's batch limit,
   which docs/architecture.md §5 says throughput must approach).

Usage:
    tools/bench/bench_store.py [--corpus DIR] [--messages 10000] [--runs 3]

Without --corpus the W1 corpus is generated with tools/gen_corpus.py
into a temporary directory.  Medians over --runs are reported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lmdb

ROOT = Path(__file__).resolve().parents[2]
GEN_CORPUS = ROOT / "tools" / "gen_corpus.py"
BATCH_MESSAGES = 500  # the import's batch bound (messages); see replicad/cli import
BATCH_BYTES = 4 << 20  # ... and bytes


def maildir_files(root: Path) -> list[Path]:
    files = []
    for sub in sorted([root, *[p for p in root.iterdir() if p.name.startswith(".")]]):
        for part in ("cur", "new"):
            d = sub / part
            if d.is_dir():
                files.extend(sorted(d.iterdir()))
    return files


def batches(bodies: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    cur: list[bytes] = []
    size = 0
    for body in bodies:
        if cur and (len(cur) >= BATCH_MESSAGES or size + len(body) > BATCH_BYTES):
            out.append(cur)
            cur, size = [], 0
        cur.append(body)
        size += len(body)
    if cur:
        out.append(cur)
    return out


def raw_lmdb(bodies: list[bytes], workdir: Path) -> float:
    """Seconds for raw py-lmdb to durably write the bodies in import-sized batches."""
    path = workdir / "raw-lmdb"
    shutil.rmtree(path, ignore_errors=True)
    env = lmdb.open(str(path), map_size=4 << 30, sync=True, metasync=True)
    start = time.perf_counter()
    n = 0
    for batch in batches(bodies):
        with env.begin(write=True) as txn:
            for body in batch:
                txn.put(n.to_bytes(8, "big"), body)
                n += 1
    elapsed = time.perf_counter() - start
    env.close()
    shutil.rmtree(path, ignore_errors=True)
    return elapsed


def fsync_rate(workdir: Path, count: int = 200) -> float:
    path = workdir / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        start = time.perf_counter()
        for i in range(count):
            os.pwrite(fd, b"x" * 4096, (i % 16) * 4096)
            os.fsync(fd)
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()


def lmdb_small_writes(workdir: Path, body: bytes, count: int, per_txn: int) -> float:
    """Durable raw py-lmdb writes of ``body`` per second, ``per_txn`` to a commit:
    1 is the unbatched limit (every write its own commit and fsyncs); a large
    ``per_txn`` approaches LMDB's batch limit for writes of this size."""
    path = workdir / "raw-small"
    shutil.rmtree(path, ignore_errors=True)
    env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True)
    start = time.perf_counter()
    n = 0
    while n < count:
        with env.begin(write=True) as txn:
            for _ in range(per_txn):
                txn.put(n.to_bytes(8, "big"), body)
                n += 1
    elapsed = time.perf_counter() - start
    env.close()
    shutil.rmtree(path, ignore_errors=True)
    return n / elapsed


class Node:
    """A real ``replicad serve`` process in its own directory."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "node"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.exe = [sys.executable, "-m", "replicad"]
        subprocess.run([*self.exe, "init", str(self.dir), "--name", "bench"], check=True,
                       capture_output=True)
        self.config = self.dir / "replicad.toml"
        self.proc = subprocess.Popen([*self.exe, "serve", "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = subprocess.run([*self.exe, "-c", str(self.config), "mailbox", "list", "-u",
                                    "nobody"], capture_output=True)
            if probe.returncode in (0, 67):  # 67: no such user, the node answers
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("node did not come up")

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*self.exe, "-c", str(self.config), *args], input=stdin,
                              capture_output=True, check=True)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class AnonSampler:
    """Peak RssAnon of a process, sampled in a thread (VmHWM mixes in the LMDB
    file pages the kernel maps, which are page cache, not the node's memory)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        self.peak = max(self.peak, int(line.split()[1]))
            except OSError:
                return
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 1024


def node_usage(node: Node) -> dict[str, int]:
    from replicad.admin.client import AdminClient

    with AdminClient(node.dir / "admin.sock") as client:
        usage: dict[str, int] = client.call("usage")
    return usage


def concurrent_saves(node: Node, clients: int, per_client: int, body: bytes) -> float:
    """saves/s with ``clients`` threads each doing sequential single-message saves."""
    from replicad.admin.client import AdminClient  # the node's local admin socket client

    sock = node.dir / "admin.sock"
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with AdminClient(sock) as client:
                for _ in range(per_client):
                    client.call("save", user=f"load{i % 10}", mailbox="INBOX", body=body)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} save clients failed: {errors[0]!r}")
    return clients * per_client / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="W1 corpus root (OUT of gen_corpus.py)")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--saves-per-client", type=int, default=40)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="replicad-bench-") as tmp:
        workdir = Path(tmp)
        corpus = args.corpus
        if corpus is None:
            corpus = workdir / "corpus"
            subprocess.run([sys.executable, str(GEN_CORPUS), str(corpus), "--users", "1",
                            "--mailboxes", "5", "--messages", str(args.messages), "--seed", "1"],
                           check=True, capture_output=True)
        maildir = corpus / "user00000" / "Maildir"
        files = maildir_files(maildir)
        bodies = [f.read_bytes() for f in files]
        total_mb = sum(map(len, bodies)) / 1e6
        print(f"corpus: {len(bodies)} messages, {total_mb:.1f} MB")

        raw_times, import_times, rss, anon = [], [], [], []
        for run in range(args.runs):
            raw_times.append(raw_lmdb(bodies, workdir))
            node = Node(workdir)
            try:
                sampler = AnonSampler(node.proc.pid)
                start = time.perf_counter()
                node.cli("import", "-u", "user00000", str(maildir))
                import_times.append(time.perf_counter() - start)
                anon.append(sampler.stop())
                rss.append(node.peak_rss_mb())
                if run == args.runs - 1:
                    fs = fsync_rate(node.dir)
                    small = b"Subject: load\r\n\r\n" + b"hello\r\n" * 200
                    unbatched = lmdb_small_writes(node.dir, small, 500, 1)
                    batched = lmdb_small_writes(node.dir, small, 20000, 500)
                    before = node_usage(node)
                    save_rates = [concurrent_saves(node, args.clients, args.saves_per_client,
                                                   small) for _ in range(args.runs)]
                    after = node_usage(node)
                    commits = after["commits"] - before["commits"]
                    per_commit = (after["write_operations"] - before["write_operations"]) / max(
                        1, commits
                    )
            finally:
                node.stop()
            print(f"run {run + 1}: raw {raw_times[-1]:.2f}s import {import_times[-1]:.2f}s "
                  f"peak RSS {rss[-1]:.0f} MB (anonymous {anon[-1]:.0f} MB)")
        del bodies

    raw = statistics.median(raw_times)
    imp = statistics.median(import_times)
    n = len(files)
    print()
    print(f"raw py-lmdb (anchor): {n / raw:8.0f} msg/s {total_mb / raw:7.1f} MB/s")
    print(f"replicad import     : {n / imp:8.0f} msg/s {total_mb / imp:7.1f} MB/s  "
          f"ratio {raw / imp:.2f} (target >= 0.6)")
    print(f"node peak RSS       : {statistics.median(rss):8.0f} MB (target <= 150; VmHWM, counts "
          "LMDB file pages)")
    print(f"node peak anonymous : {statistics.median(anon):8.0f} MB (RssAnon sampled every 20 ms: "
          "heap, buffers)")
    saves = statistics.median(save_rates)
    print(f"disk fsync rate     : {fs:8.0f} fsync/s")
    print(f"{args.clients} save clients     : {saves:8.0f} saves/s  ratio {saves / fs:.1f} "
          "to fsync rate (target >= 10)")
    print(f"group commit        : {per_commit:8.1f} saves per transaction (one fsync each) "
          f"during the save runs")
    print(f"raw LMDB, 1 per commit : {unbatched:8.0f} writes/s of the same body; saves are "
          f"{saves / unbatched:.1f}x that (what batching buys)")
    print(f"raw LMDB, 500 per commit: {batched:8.0f} writes/s (LMDB's batch limit); saves are "
          f"{saves / batched:.2f} of it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
