#!/usr/bin/env python3
"""W6: mail in over LMTP, against Dovecot's own LMTP (DESIGN §10, the "Mail in: LMTP" issue).

The messages are the W1 corpus's (``gen_corpus.py --users 1 --mailboxes 5
--messages N --seed 1``, in corpus order; N = ``--messages``, 2000 by
default to keep a run within a few minutes, 10000 for all of W1).  A
client in this process keeps ``--sessions`` (20) LMTP sessions busy, each
sending MAIL, RCPT and DATA pipelined and the message dot-stuffed, one
transaction after another, until every message is delivered.  Targets,
each fresh, on the same disk (a temporary directory under ``--dir``):

1. ``dovecot``: the anchor.  Dovecot's LMTP (``dovecot -c CONF``, a private
   config: its own base_dir, ``mail_location = maildir:...``, default
   ``mail_fsync``, passdb/userdb passwd-file, LMTP on a loopback port).
   Dovecot refuses to write mail as root, so under root the mail belongs
   to ``nobody`` (uid/gid 65534); otherwise to the running user.
2. ``replicad``: one node (``replicad init``, durability ``local``).
3. ``quorum``: n1 of a 3-node ``replicad cluster up`` at durability ``quorum``.
4. ``replicad-3rcpt`` (and ``dovecot-3rcpt``): three recipients per message,
   one node; the body is stored once per node, so the store grows by about
   a third per delivery of what it grows with one recipient.

For each: deliveries/s (accepted recipients per second of wall time from
the first connection to the last reply), messages/s, p99 latency of a
transaction (MAIL to the last reply after DATA) and the store's bytes per
delivery (replicad: LMDB pages in use; Dovecot: the Maildir's files); the
ratio of each rate to Dovecot's single-node rate, and medians over
``--runs``.  Targets: replicad >= 1.5x Dovecot; quorum >= 1.0x Dovecot.

    .venv/bin/python tools/bench/bench_lmtp.py [--messages 2000] [--runs 3] [--sessions 20]

Needs ``dovecot`` with LMTP (Debian: dovecot-core dovecot-lmtpd); without it
``--no-dovecot`` runs replicad alone.  Never a test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN_CORPUS = ROOT / "tools" / "gen_corpus.py"
RD = [sys.executable, "-m", "replicad"]
RCPTS = ("rcpt1@example.org", "rcpt2@example.org", "rcpt3@example.org")
SENDER = "bench@example.net"
NOBODY = 65534


# --- the corpus ----------------------------------------------------------------


def corpus_messages(corpus: Path) -> list[bytes]:
    """The corpus's messages in the order gen_corpus wrote them (``M<n>`` in the name)."""
    files = list(corpus.glob("*/Maildir/**/cur/*"))
    files.sort(key=lambda p: int(re.search(r"\.M(\d+)P", p.name).group(1)))  # type: ignore[union-attr]
    return [p.read_bytes() for p in files]


def dot_stuffed(message: bytes) -> bytes:
    text = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not text.endswith(b"\r\n"):
        text += b"\r\n"
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\r\n.", b"\r\n..") + b".\r\n"


# --- the LMTP client -----------------------------------------------------------


@dataclass
class Result:
    seconds: float
    messages: int
    deliveries: int
    latencies: list[float]
    refused: int


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return line


async def _session(
    port: int,
    queue: list[bytes],
    rcpts: Sequence[str],
    latencies: list[float],
    counts: list[int],
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        writer.write(b"LHLO bench.example.net\r\n")
        await _reply(reader)
        envelope = f"MAIL FROM:<{SENDER}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
        head = envelope.encode() + b"DATA\r\n"
        while queue:
            data = queue.pop()
            start = time.perf_counter()
            writer.write(head)
            for _ in range(len(rcpts) + 2):
                line = await _reply(reader)
                if line[:1] not in (b"2", b"3"):
                    raise RuntimeError(f"refused before DATA: {line!r}")
            writer.write(data)
            await writer.drain()
            for _ in rcpts:
                line = await _reply(reader)
                counts[0 if line.startswith(b"250") else 1] += 1
            latencies.append(time.perf_counter() - start)
        writer.write(b"QUIT\r\n")
        await _reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def deliver(port: int, messages: Sequence[bytes], rcpts: Sequence[str], sessions: int) -> Result:
    async def main() -> Result:
        queue = list(reversed(messages))  # pop() takes them in corpus order
        latencies: list[float] = []
        counts = [0, 0]
        start = time.perf_counter()
        await asyncio.gather(
            *(_session(port, queue, rcpts, latencies, counts) for _ in range(sessions))
        )
        seconds = time.perf_counter() - start
        return Result(seconds, len(latencies), counts[0], latencies, counts[1])

    return asyncio.run(main())


def warm_up(port: int, rcpts: Sequence[str]) -> None:
    """One small message per recipient: mailboxes (and, in a cluster, masters) exist."""
    message = dot_stuffed(b"Subject: warm-up\r\n\r\nwarm-up\r\n")
    result = deliver(port, [message], rcpts, 1)
    if result.deliveries != len(rcpts):
        raise RuntimeError(f"warm-up refused: {result}")


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


# --- targets ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.1)


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def lmdb_used(data_dir: Path) -> int:
    """Bytes of the store's LMDB pages in use (the file itself is pre-grown)."""
    import lmdb

    [mdb] = list(data_dir.rglob("data.mdb"))
    env = lmdb.open(str(mdb.parent), readonly=True, lock=False, subdir=True)
    try:
        return (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    finally:
        env.close()


def run(*args: str | Path, input: bytes = b"") -> str:
    result = subprocess.run(list(map(str, args)), input=input, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode(errors="replace")


def add_users(config: Path) -> None:
    for rcpt in RCPTS:
        run(*RD, "-c", config, "user", "add", rcpt, "--password-stdin", input=b"bench\n")


@contextlib.contextmanager
def dovecot(work: Path) -> Iterator[tuple[int, Path]]:
    """Dovecot's LMTP on a loopback port, its mail in ``work/mail``; (port, mail dir)."""
    base = work / "dovecot"
    for sub in ("run", "state", "mail"):
        (base / sub).mkdir(parents=True)
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        uid = gid = NOBODY
        os.chown(base / "mail", uid, gid)
        for p in (base, base.parent, base.parent.parent):  # up to the temporary directory
            p.chmod(p.stat().st_mode | 0o005)  # the mail user walks down to its mail
    port = free_port()
    (base / "users").write_text(
        "".join(f"{r}:{{PLAIN}}bench:{uid}:{gid}::{base}/mail/{r}::\n" for r in RCPTS)
    )
    conf = base / "dovecot.conf"
    conf.write_text(
        f"base_dir = {base}/run\nstate_dir = {base}/state\n"
        f"log_path = {base}/dovecot.log\n"
        "protocols = lmtp\nssl = no\nlisten = 127.0.0.1\n"
        "mail_location = maildir:~/Maildir\n"
        f"first_valid_uid = {min(uid, 500) or 1}\nfirst_valid_gid = {min(gid, 500) or 1}\n"
        "postmaster_address = postmaster@example.org\n"
        f"passdb {{\n  driver = passwd-file\n  args = {base}/users\n}}\n"
        f"userdb {{\n  driver = passwd-file\n  args = {base}/users\n}}\n"
        "service lmtp {\n"
        f"  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n"
        "}\n"
    )
    # Dovecot goes into the background: no pipes for it to keep open.
    subprocess.run(
        ["dovecot", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    try:
        wait_port(port)
        yield port, base / "mail"
    finally:
        subprocess.run(
            ["dovecot", "-c", str(conf), "stop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        pid_file = base / "run" / "master.pid"
        deadline = time.monotonic() + 15
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def lmtp_port(config: Path) -> int:
    m = re.search(r'^listen = "127\.0\.0\.1:(\d+)"', config.read_text(), re.M)
    assert m, f"no [lmtp] listen in {config}"
    return int(m.group(1))


@contextlib.contextmanager
def replicad_node(work: Path) -> Iterator[tuple[int, Path]]:
    directory = work / "node"
    run(*RD, "init", directory, "--name", "n1", "--port", str(free_port()))
    config = directory / "replicad.toml"
    add_users(config)
    with (directory / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [*RD, "serve", "-c", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
        )
    try:
        port = lmtp_port(config)
        wait_port(port)
        yield port, directory
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def replicad_cluster(work: Path, level: str) -> Iterator[tuple[int, Path]]:
    directory = work / "cluster"
    nodes = ("n1", "n2", "n3")
    try:
        run(*RD, "cluster", "up", "-n", "3", directory)
        run(*RD, "cluster", "down", directory)
        for node in nodes:
            config = directory / node / "replicad.toml"
            text = re.sub(
                r"^durability = .*$", f'durability = "{level}"', config.read_text(), flags=re.M
            )
            config.write_text(text)
            add_users(config)
        run(*RD, "cluster", "up", directory)
        deadline = time.monotonic() + 60
        while True:  # every node running and following one root
            rows = json.loads(run(*RD, "-f", "json", "cluster", "status", directory))
            roots = {r["root"] for r in rows}
            if all(r["state"] == "running" for r in rows) and len(roots) == 1 and None not in roots:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no root: {rows}")
            time.sleep(0.2)
        yield lmtp_port(directory / "n1" / "replicad.toml"), directory / "n1"
    finally:
        subprocess.run([*RD, "cluster", "down", str(directory)], capture_output=True, check=False)
        for pidfile in directory.glob("n*/data/replicad.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


# --- the run -------------------------------------------------------------------------


@dataclass
class Figures:
    rate: float  # deliveries/s
    msg_rate: float
    p99_ms: float
    bytes_per_delivery: float


def measure(
    name: str,
    target: contextlib.AbstractContextManager[tuple[int, Path]],
    messages: Sequence[bytes],
    rcpts: Sequence[str],
    sessions: int,
    store_bytes: str,
) -> Figures:
    with target as (port, where):
        warm_up(port, rcpts)
        before = lmdb_used(where) if store_bytes == "lmdb" else tree_bytes(where)
        result = deliver(port, messages, rcpts, sessions)
        if store_bytes == "lmdb":
            time.sleep(0.5)  # the last group commit
        after = lmdb_used(where) if store_bytes == "lmdb" else tree_bytes(where)
    if result.refused or result.deliveries != len(messages) * len(rcpts):
        raise RuntimeError(f"{name}: {result.refused} recipients refused")
    figures = Figures(
        result.deliveries / result.seconds,
        result.messages / result.seconds,
        p99(result.latencies) * 1000,
        (after - before) / result.deliveries,
    )
    print(
        f"  {name:15} {figures.rate:8.1f} deliveries/s {figures.msg_rate:8.1f} msg/s "
        f"p99 {figures.p99_ms:7.1f} ms  {figures.bytes_per_delivery / 1024:7.1f} KiB/delivery "
        f"({result.seconds:.1f} s)",
        flush=True,
    )
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000, help="the first N of W1 (10000: all)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go (default: TMPDIR)")
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument(
        "--only", default="", help="comma-separated targets (dovecot,replicad,quorum,...3rcpt)"
    )
    a = ap.parse_args()
    use_dovecot = not a.no_dovecot
    if use_dovecot and shutil.which("dovecot") is None:
        print("dovecot not found: install dovecot-core dovecot-lmtpd, or --no-dovecot")
        return 69
    with tempfile.TemporaryDirectory(prefix="replicad-w6-", dir=a.dir) as tmp:
        work = Path(tmp)
        run(
            sys.executable,
            GEN_CORPUS,
            work / "corpus",
            "--users",
            "1",
            "--mailboxes",
            "5",
            "--messages",
            str(a.messages),
            "--seed",
            "1",
        )
        raw = corpus_messages(work / "corpus")
        messages = [dot_stuffed(m) for m in raw]
        print(
            f"W6: {len(messages)} messages of W1 ({sum(map(len, raw)) / 1e6:.1f} MB), "
            f"{a.sessions} LMTP sessions, {os.cpu_count()} CPUs, stores in {work}"
        )
        one, three = RCPTS[:1], RCPTS
        targets: list[tuple[str, object, Sequence[str], str]] = []
        if use_dovecot:
            targets.append(("dovecot", lambda w: dovecot(w), one, "tree"))
        targets += [
            ("replicad", lambda w: replicad_node(w), one, "lmdb"),
            ("quorum", lambda w: replicad_cluster(w, "quorum"), one, "lmdb"),
            ("replicad-3rcpt", lambda w: replicad_node(w), three, "lmdb"),
        ]
        if use_dovecot:
            targets.append(("dovecot-3rcpt", lambda w: dovecot(w), three, "tree"))
        if a.only:
            wanted = set(a.only.split(","))
            targets = [t for t in targets if t[0] in wanted]
        results: dict[str, list[Figures]] = {t[0]: [] for t in targets}
        for n in range(a.runs):
            print(f"run {n + 1}:")
            for name, make, rcpts, kind in targets:
                place = work / f"run{n}-{name}"
                place.mkdir()
                target = make(place)  # type: ignore[operator]
                results[name].append(measure(name, target, messages, rcpts, a.sessions, kind))
                shutil.rmtree(place, ignore_errors=True)
        med = {
            name: Figures(
                statistics.median(f.rate for f in figs),
                statistics.median(f.msg_rate for f in figs),
                statistics.median(f.p99_ms for f in figs),
                statistics.median(f.bytes_per_delivery for f in figs),
            )
            for name, figs in results.items()
        }
        print(f"median of {a.runs}:")
        anchor = med["dovecot"].rate if "dovecot" in med else None
        targets_for = {"replicad": 1.5, "quorum": 1.0}
        for name, f in med.items():
            ratio = f"  {f.rate / anchor:5.2f}x dovecot" if anchor else ""
            goal = f" (target >= {targets_for[name]}x)" if name in targets_for and anchor else ""
            print(
                f"  {name:15} {f.rate:8.1f} deliveries/s {f.msg_rate:8.1f} msg/s "
                f"p99 {f.p99_ms:7.1f} ms  {f.bytes_per_delivery / 1024:7.1f} KiB/delivery"
                f"{ratio}{goal}"
            )
        if "replicad" in med and "replicad-3rcpt" in med:
            share = med["replicad-3rcpt"].bytes_per_delivery / med["replicad"].bytes_per_delivery
            print(f"  store bytes per delivery, 3 recipients vs 1: {share:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
