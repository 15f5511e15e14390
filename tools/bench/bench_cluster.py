#!/usr/bin/env python3
"""W1 replicated across a 3-node cluster, against Dovecot's dsync (architecture.md §10, issue 4).

1. The anchor: ``doveadm backup`` of the W1 Maildir into an empty local
   Maildir (dsync between two local stores), wall time.
2. replicad: ``replicad cluster up -n 3`` on loopback (mutual TLS), W1
   imported into n1 (level ``local``), and the time from the start of the
   import until n2 and n3 hold every message (polled through ``mailbox
   status`` on each node).

Prints both times, the ratio replicad/dsync (target <= 1.0), and the
medians over ``--runs``.  Needs ``doveadm`` (Debian: dovecot-core).

    .venv/bin/python tools/bench/bench_cluster.py [--corpus DIR] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN_CORPUS = ROOT / "tools" / "gen_corpus.py"
USER = "user00000"
RD = [sys.executable, "-m", "replicad"]


def maildir_counts(maildir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sub in [maildir, *sorted(p for p in maildir.iterdir() if p.name.startswith("."))]:
        name = "INBOX" if sub == maildir else sub.name[1:].replace(".", "/")
        counts[name] = sum(
            len(list((sub / d).iterdir())) for d in ("cur", "new") if (sub / d).is_dir()
        )
    return counts


def dsync_backup(maildir: Path, work: Path) -> float:
    """Seconds for ``doveadm backup`` of ``maildir`` into an empty Maildir.

    Dovecot refuses to touch mail as root, so under root it runs as
    ``nobody`` (setpriv) on a copy of the corpus that user may read.
    """
    base = work / "dsync"
    shutil.rmtree(base, ignore_errors=True)
    for sub in ("dest", "home", "run", "state"):
        (base / sub).mkdir(parents=True)
    source = maildir
    uid, gid, prefix = os.getuid(), os.getgid(), []
    if uid == 0:
        uid = gid = 65534
        source = base / "source"
        shutil.copytree(maildir, source)
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(base)], check=True)
        os.chmod(work, 0o755)
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
    conf = base / "dovecot.conf"
    conf.write_text(
        f"mail_location = maildir:{source}\n"
        f"mail_uid = {uid}\nmail_gid = {gid}\n"
        f"userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={base}/home\n}}\n"
        "passdb {\n  driver = static\n  args = nopassword=y\n}\n"
        f"base_dir = {base}/run\nstate_dir = {base}/state\n"
        "ssl = no\nlog_path = /dev/stderr\n"
    )
    env = ["env", f"USER={USER}", f"HOME={base}/home"]
    start = time.perf_counter()
    subprocess.run(
        [*prefix, *env, "doveadm", "-c", str(conf), "backup", f"maildir:{base}/dest/Maildir"],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def status_counts(directory: Path, node: str) -> dict[str, int]:
    """Messages per mailbox on ``node``, over its admin socket (no CLI start-up cost)."""
    from replicad.admin.client import AdminClient
    from replicad.errors import ReplicadError

    try:
        with AdminClient(directory / node / "admin.sock") as client:
            return {s["name"]: s["messages"] for s in client.call("mailbox_list", user=USER)}
    except ReplicadError:
        return {}


def replicad_run(maildir: Path, work: Path, expected: dict[str, int]) -> tuple[float, float]:
    """(import seconds, seconds until n2 and n3 hold everything)."""
    directory = work / "cluster"
    shutil.rmtree(directory, ignore_errors=True)
    subprocess.run(
        [*RD, "cluster", "up", "-n", "3", str(directory)], check=True, capture_output=True
    )
    try:
        time.sleep(2.5)  # root election
        start = time.perf_counter()
        subprocess.run(
            [
                *RD,
                "-c",
                str(directory / "n1" / "replicad.toml"),
                "import",
                "-u",
                USER,
                str(maildir),
            ],
            check=True,
            capture_output=True,
        )
        imported = time.perf_counter() - start
        pending = {"n2", "n3"}
        while pending:
            for node in sorted(pending):
                if status_counts(directory, node) == expected:
                    pending.discard(node)
            if pending:
                time.sleep(0.2)
                if time.perf_counter() - start > 900:
                    raise RuntimeError(f"{pending} did not converge in 900 s")
        return imported, time.perf_counter() - start
    finally:
        subprocess.run([*RD, "cluster", "down", str(directory)], capture_output=True)
        for pidfile in directory.glob("n*/data/replicad.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, help="W1 corpus root (OUT of gen_corpus.py)")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if shutil.which("doveadm") is None:
        print("doveadm not found: install dovecot-core for the anchor", file=sys.stderr)
        return 69
    with tempfile.TemporaryDirectory(prefix="replicad-bench-") as tmp:
        work = Path(tmp)
        corpus = args.corpus
        if corpus is None:
            corpus = work / "corpus"
            subprocess.run(
                [
                    sys.executable,
                    str(GEN_CORPUS),
                    str(corpus),
                    "--users",
                    "1",
                    "--mailboxes",
                    "5",
                    "--messages",
                    str(args.messages),
                    "--seed",
                    "1",
                ],
                check=True,
                capture_output=True,
            )
        maildir = corpus / USER / "Maildir"
        expected = maildir_counts(maildir)
        print(f"corpus: {sum(expected.values())} messages in {len(expected)} mailboxes")
        dsync, imports, replicated = [], [], []
        for run in range(args.runs):
            dsync.append(dsync_backup(maildir, work))
            imp, rep = replicad_run(maildir, work, expected)
            imports.append(imp)
            replicated.append(rep)
            print(
                f"run {run + 1}: dsync backup {dsync[-1]:.2f} s; replicad import {imp:.2f} s, "
                f"on n2+n3 after {rep:.2f} s; ratio {rep / dsync[-1]:.2f}"
            )
        d, r = statistics.median(dsync), statistics.median(replicated)
        print(
            f"median: dsync {d:.2f} s, replicad 3-node {r:.2f} s, ratio {r / d:.2f} (target <= 1.0)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
