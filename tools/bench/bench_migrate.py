#!/usr/bin/env python3
"""W8 (architecture.md §10): ``replicad migrate`` against ``doveadm backup`` with imapc.

A private Dovecot serves the source.  Shapes (``--shape``):

* ``w3`` (default): ``tools/gen_corpus.py --users 1000 --mailboxes 3
  --messages 20 --seed 3`` (``--users`` scales it down);
* ``w1``: ``tools/gen_corpus.py --users 1 --mailboxes 5 --messages 10000
  --seed 1`` (~271 MB);
* ``uniform``: ``--users`` x ``--folders`` x ``--messages`` messages of
  ``--size`` octets, appended over IMAP.

The same mail is pulled, ``--runs`` times each (alternating, each into a
fresh target), by

* one replicad node (``migrate add`` with a master user, ``--workers``),
  until every user is synced, then a second, no-op pass (``migrate retry``);
* Dovecot's own migration path, ``doveadm backup -R`` from an ``imapc:``
  location into Maildirs, ``--workers`` users at once, then again (no-op).

Prints each run's wall times and the bytes the source served (Dovecot's
log, ``out=`` per session), then the medians and the ratios: throughput
(doveadm's first-pass time / replicad's) and replicad's no-op pass as a
fraction of its first pass.  ``--reuse-processes`` runs the source in
Dovecot's high-performance login mode (login and imap processes serve
many connections), as large sites do: with the default (a process pair
per connection) the source's process starts are most of a no-op pass.
Run from the repository root:
``PYTHONPATH=$PWD python tools/bench/bench_migrate.py --users 100``.

Figures (2 cores running other work at the same time: the 1-minute
load is noted, 3.3 to 8.7 during these runs; medians of 3; ``--runs 3``):

* ``--shape w3`` (1000 users, 482 MiB; load 4.9-8.6): replicad first pass
  38.5 s, doveadm 56.6 s: 1.47x; no-op pass 14.5 s, 0.38 of the first
  (doveadm's no-op 20.7 s).  An earlier run at load 3.6-5.1 (before the
  whole-folder FETCH): 30.3 s against 51.6 s, 1.70x; no-op 0.38.  With
  ``--reuse-processes`` (load 4.9-6.7): 21.4 s against 56.7 s, 2.65x;
  no-op 4.25 s, 0.20 of the first (doveadm's 16.9 s).
* ``--shape w1`` (1 user, 10,000 messages, 259 MiB; load 3.9-5.2):
  replicad 2.98 s, doveadm 11.8 s: 3.96x; no-op 0.02 s.
* ``--shape uniform --users 100`` (26 MiB; load 3.3-3.8): replicad 2.95 s,
  doveadm 9.19 s: 3.11x; no-op 1.14 s, 0.39 of the first.  With
  ``--reuse-processes`` (load 3.4-4.4): 2.64 s against 8.34 s, 3.16x;
  no-op 0.42 s, 0.16 of the first.  The same shape at load 0.7 before this
  work: 3.56 s against 3.57 s (1.00x), no-op 0.47 of the first; doveadm
  slows more than replicad under load, so ratios measured under load flatter
  replicad.

Where a no-op pass goes: with the default source configuration Dovecot
starts a login and an imap process per connection, serially in its master
(about 12 ms a user whatever the client); replicad's own work is a LOGIN,
one LIST-STATUS and a LOGOUT (about 3 ms of CPU a user, most of it in
imaplib).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from replicad.admin.client import AdminClient
from replicad.config import load_config
from tests.dovecot_source import NOBODY, DovecotSource, free_port

RD = [sys.executable, "-m", "replicad"]
MASTER, MASTER_PASSWORD = "migrator", "master-pw"


def run(*args: str | Path, input: bytes = b"") -> str:
    done = subprocess.run([str(a) for a in args], input=input, capture_output=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{args[:4]} exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return done.stdout.decode()


def populate(source: DovecotSource, folders: int, messages: int, size: int) -> int:
    total = 0
    for user in source.users:
        with source.client(user) as c:
            for f in range(folders):
                name = "INBOX" if f == 0 else f"Folder{f}"
                if f:
                    c.create_folder(name)
                for i in range(messages):
                    head = f"From: a@example.org\r\nSubject: {user} {f} {i}\r\n\r\n".encode()
                    body = head + b"y" * max(0, size - len(head) - 2) + b"\r\n"
                    c.append(name, body, ["\\Seen"] if i % 2 else [])
                    total += len(body)
    return total


def served_bytes(source: DovecotSource) -> int:
    log = (source.base / "dovecot.log").read_text(errors="replace")
    return sum(int(m) for m in re.findall(r" out=(\d+)", log))


@contextlib.contextmanager
def replicad_node(work: Path) -> Iterator[Path]:
    directory = work / "node"
    run(*RD, "init", directory, "--name", "n1", "--port", str(free_port()))
    config = directory / "replicad.toml"
    with (directory / "serve.log").open("ab") as log:
        proc = subprocess.Popen([*RD, "serve", "-c", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(RuntimeError):
                run(*RD, "-c", config, "migrate", "status")
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the node did not start")
            time.sleep(0.2)
        yield config
    finally:
        proc.terminate()
        proc.wait(timeout=120)


def wait_synced(config: Path, job: str, users: int) -> list[dict[str, object]]:
    """Polled on the admin socket (a command per poll would cost a process
    start); a status of every user costs the node about 5 us a user, so the
    polls thin out with the job's size (20 ms for 100 users, 50 ms for 1000)."""
    interval = max(0.02, users * 5e-5)
    with AdminClient(load_config(config).node.admin_socket).connect() as client:
        while True:
            rows: list[dict[str, object]] = client.call("migrate_status", job=job)
            if all(r["synced"] or r["phase"] == "failed" for r in rows):
                return rows
            time.sleep(interval)


def bench_replicad(work: Path, source: DovecotSource, workers: int) -> dict[str, float]:
    work.mkdir(parents=True)
    users = work / "users.txt"
    users.write_text("".join(f"{u}\n" for u in source.users))
    pw = work / "master.pw"
    pw.write_text(MASTER_PASSWORD + "\n")
    with replicad_node(work) as config:
        before = served_bytes(source)
        start = time.perf_counter()
        job = json.loads(
            run(
                *RD,
                "-c",
                config,
                "-f",
                "json",
                "migrate",
                "add",
                "--source",
                f"imap://127.0.0.1:{source.port}",
                "--users",
                users,
                "--master-user",
                MASTER,
                "--password-file",
                pw,
                "--workers",
                str(workers),
            )
        )["job"]
        rows = wait_synced(config, job, len(source.users))
        first = time.perf_counter() - start
        failed = [r for r in rows if r["phase"] == "failed"]
        if failed:
            raise RuntimeError(f"failed users: {failed[:3]}")
        served = served_bytes(source) - before
        start = time.perf_counter()
        with AdminClient(load_config(config).node.admin_socket).connect() as client:
            client.call("migrate_retry", job=job)
        wait_synced(config, job, len(source.users))
        again = time.perf_counter() - start
    return {"first_s": first, "noop_s": again, "source_bytes": served}


def bench_doveadm(work: Path, source: DovecotSource, workers: int) -> dict[str, float]:
    target = work / "doveadm-target"
    for sub in ("run", "state", "mail"):
        (target / sub).mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(target / "mail")], check=True)
    conf = target / "dovecot.conf"
    conf.write_text(
        f"base_dir = {target}/run\nstate_dir = {target}/state\nlog_path = {target}/log\n"
        "protocols =\nssl = no\nmail_fsync = optimized\n"
        f"mail_location = maildir:~/Maildir\n"
        f"userdb {{\n  driver = static\n  args = uid={NOBODY} gid={NOBODY} "
        f"home={target}/mail/%u\n}}\n"
        "passdb {\n  driver = static\n  args = nopassword=y\n}\n"
        "first_valid_uid = 500\nfirst_valid_gid = 500\n"
        f"imapc_host = 127.0.0.1\nimapc_port = {source.port}\n"
        f"imapc_master_user = {MASTER}\nimapc_password = {MASTER_PASSWORD}\n"
        "imapc_user = %u\nimapc_features = rfc822.size fetch-headers modseq\n"
    )
    command = ["doveadm", "-c", str(conf), "backup", "-R"]

    def one(user: str) -> None:
        run(*command, "-u", user, "imapc:")

    def everyone() -> float:
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, source.users))
        return time.perf_counter() - start

    # The target's auth service answers doveadm's user lookups.
    subprocess.run(["dovecot", "-c", str(conf)], check=True, stdin=subprocess.DEVNULL)
    try:
        before = served_bytes(source)
        first = everyone()
        served = served_bytes(source) - before
        again = everyone()
    finally:
        subprocess.run(["dovecot", "-c", str(conf), "stop"], check=False)
    return {"first_s": first, "noop_s": again, "source_bytes": served}


GEN_CORPUS = Path(__file__).resolve().parents[1] / "gen_corpus.py"
SHAPES = {"w3": (1000, 3, 20, 3), "w1": (1, 5, 10000, 1)}


def generate(source: DovecotSource, users: int, mailboxes: int, messages: int, seed: int) -> int:
    """gen_corpus's Maildir++ trees as the source users' mail (Dovecot indexes
    them at the warm-up logins, before anything is timed)."""
    out = run(
        sys.executable,
        GEN_CORPUS,
        source.base / "mail",
        "--users",
        str(users),
        "--mailboxes",
        str(mailboxes),
        "--messages",
        str(messages),
        "--seed",
        str(seed),
    )
    if os.getuid() == 0:
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(source.base / "mail")], check=True)
    return int(out.split()[2])


def warm(source: DovecotSource) -> None:
    """Every folder selected once: Dovecot's indexes exist before either tool runs."""
    for user in source.users:
        with source.client(user) as c:
            for flags, _delim, name in c.list_folders():
                if b"\\Noselect" not in flags:
                    c.select_folder(name, readonly=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=("w3", "w1", "uniform"), default="w3")
    parser.add_argument("--users", type=int, help="w3: 1000; uniform: 50")
    parser.add_argument("--folders", type=int, default=3, help="uniform only")
    parser.add_argument("--messages", type=int, default=20, help="uniform only")
    parser.add_argument("--size", type=int, default=4500, help="uniform only: octets per message")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reuse-processes", action="store_true")
    parser.add_argument("--no-doveadm", action="store_true", help="time replicad only")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    try:
        if args.shape == "uniform":
            count = args.users or 50
        else:
            count = args.users or SHAPES[args.shape][0]
        if args.shape == "uniform":
            users = {f"user{i:04d}@example.org": "pw" for i in range(count)}
        else:
            users = {f"user{i:05d}": "pw" for i in range(count)}
        source = DovecotSource(
            work, users, {MASTER: MASTER_PASSWORD}, reuse_processes=args.reuse_processes
        )
        if args.shape != "uniform":
            _, mailboxes, messages, seed = SHAPES[args.shape]
            octets = generate(source, count, mailboxes, messages, seed)
        source.start()
        try:
            if args.shape == "uniform":
                octets = populate(source, args.folders, args.messages, args.size)
            warm(source)
            print(
                f"corpus: {args.shape}, {count} users, {octets / 2**20:.1f} MiB; "
                f"workers {args.workers}; reuse processes {args.reuse_processes}",
                flush=True,
            )
            ours: list[dict[str, float]] = []
            theirs: list[dict[str, float]] = []
            for i in range(args.runs):
                print(f"run {i + 1}: load {os.getloadavg()[0]:.2f}", flush=True)
                ours.append(bench_replicad(work / f"r{i}", source, args.workers))
                print(f"  replicad migrate: {ours[-1]}", flush=True)
                if not args.no_doveadm:
                    theirs.append(bench_doveadm(work / f"d{i}", source, args.workers))
                    print(f"  doveadm backup (imapc): {theirs[-1]}", flush=True)
                shutil.rmtree(work / f"r{i}", ignore_errors=True)
                shutil.rmtree(work / f"d{i}", ignore_errors=True)
            first = median([r["first_s"] for r in ours])
            noop = median([r["noop_s"] for r in ours])
            line = f"median replicad: first {first:.2f} s, no-op {noop:.2f} s"
            line += f" ({noop / first:.2f} of the first pass)"
            if theirs:
                d_first = median([r["first_s"] for r in theirs])
                d_noop = median([r["noop_s"] for r in theirs])
                line += f"; doveadm: first {d_first:.2f} s, no-op {d_noop:.2f} s"
                line += f"; throughput ratio (doveadm time / replicad time) {d_first / first:.2f}x"
            print(line, flush=True)
            print(f"load after: {os.getloadavg()}", flush=True)
        finally:
            source.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
