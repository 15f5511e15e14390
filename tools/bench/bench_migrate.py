#!/usr/bin/env python3
"""W8 (architecture.md §10 shapes): ``replicad migrate`` against ``doveadm backup`` with imapc.

A private Dovecot serves the source (W3's shape by default, scaled down:
``--users``, ``--folders``, ``--messages``; W3 itself is 1000 x 3 x 20, W1
is ``--users 1 --folders 5 --messages 2000 --size 27000``).  The same
mail is pulled

* by one replicad node (``migrate add`` with a master user, ``--workers``),
  until every user is synced, then a second, no-op pass (``migrate retry``);
* by Dovecot's own migration path, ``doveadm backup -R`` from an ``imapc:``
  location into Maildirs, ``--workers`` users at once, then again (no-op).

Prints wall times, the ratio, and the bytes the source served (from
Dovecot's log: ``out=`` per session).  Run from the repository root:
``PYTHONPATH=$PWD python tools/bench/bench_migrate.py --users 50``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
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


def wait_synced(config: Path, job: str) -> list[dict[str, object]]:
    """Polled on the admin socket (a command per poll would cost a process start)."""
    with AdminClient(load_config(config).node.admin_socket).connect() as client:
        while True:
            rows: list[dict[str, object]] = client.call("migrate_status", job=job)
            if all(r["synced"] or r["phase"] == "failed" for r in rows):
                return rows
            time.sleep(0.02)


def bench_replicad(work: Path, source: DovecotSource, workers: int) -> dict[str, float]:
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
        rows = wait_synced(config, job)
        first = time.perf_counter() - start
        failed = [r for r in rows if r["phase"] == "failed"]
        if failed:
            raise RuntimeError(f"failed users: {failed[:3]}")
        served = served_bytes(source) - before
        start = time.perf_counter()
        with AdminClient(load_config(config).node.admin_socket).connect() as client:
            client.call("migrate_retry", job=job)
        wait_synced(config, job)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--folders", type=int, default=3)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--size", type=int, default=4500, help="octets per message")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-migrate-"))
    try:
        users = {f"user{i:04d}@example.org": "pw" for i in range(args.users)}
        source = DovecotSource(work, users, {MASTER: MASTER_PASSWORD})
        source.start()
        try:
            octets = populate(source, args.folders, args.messages, args.size)
            print(f"corpus: {args.users} users, {octets / 2**20:.1f} MiB", flush=True)
            ours = bench_replicad(work, source, args.workers)
            print(f"replicad migrate: {ours}", flush=True)
            theirs = bench_doveadm(work, source, args.workers)
            print(f"doveadm backup (imapc): {theirs}", flush=True)
            print(
                f"throughput ratio (doveadm time / replicad time): "
                f"{theirs['first_s'] / ours['first_s']:.2f}x; "
                f"no-op pass: {ours['noop_s'] / ours['first_s']:.2f} of the first pass",
                flush=True,
            )
        finally:
            source.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
