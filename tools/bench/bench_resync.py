#!/usr/bin/env python3
"""Resync (issue 5) against Dovecot's dsync: W1 lost node, W2 incremental, W3 many users.

Every replicad figure comes from a real local cluster (``replicad cluster up
--faults``, 2 nodes unless ``--nodes``: each node-to-node link passes through
the fault proxy, whose byte counters, read from its control socket, give the
bytes on the wire: TLS + zstd, both directions, PINGs included).
Every Dovecot figure comes from ``doveadm`` run as ``nobody`` on a copy of the
same corpus (dovecot-core; as in bench_cluster.py).

W1, resync of a node that lost everything (the W1 corpus of docs/architecture.md §10,
10,000 messages; its 163 MB INBOX goes in several UPDATEs of at most 32 MiB
of bodies each)
    replicad: W1 imported through n1 and replicated; the last node is killed,
    its store directory deleted, the node started again; then
    ``replicad sync --all --peer nK`` on every other node; time from the sync
    until the wiped node's ``mailbox status`` equals n1's for every mailbox
    (``replicad verify --all`` exits 0 afterwards, checked, not timed).
    Anchor: ``doveadm backup`` of the corpus into an empty Maildir (dsync
    between two local stores, as bench_cluster.py).

W2, incremental (on the synced pair W1 left, both sides)
    The follower is cut off (``cluster partition``: the proxy resets the link);
    on the master, through the CLI, 200 new messages (corpus ``--seed 2``,
    ``replicad save``, 5 mailboxes), 1,000 flag changes (keyword ``$Bench``
    added on UIDs 1:200 of each of the 5 mailboxes) and 100 expunges (UIDs
    201:220 of each); then ``cluster heal``; time from the heal until the
    follower's ``mailbox status`` equals the master's for every mailbox, and
    proxy bytes from the heal until the master has nothing queued for the
    follower any more (stream caught up, no resync running, queued or marked).
    Anchor: the same changes made with ``doveadm save/flags/expunge`` on the
    source of a Dovecot pair synced by W1's backup, then an incremental
    ``doveadm backup`` whose other side is ``doveadm dsync-server`` behind a
    pipe: dsync's own "destination is a command" form, the command being this
    script's ``relay`` mode, which forwards stdin/stdout unchanged and counts
    the octets each way (dsync's stream is uncompressed; no TLS).  Measured
    twice on the same changes (the target is restored from a snapshot in
    between): stateful (``-s STATE`` from a no-op pass before the changes,
    what Dovecot's replicator does) and stateless.

W1 written while a node is down (on the pair W2 leaves)
    replicad: the follower is killed; a W1-shaped corpus with other bodies
    (``--seed 4``, so the follower holds none of them) is imported through
    n1 as another user; then ``cluster restart`` of the follower; time from
    the restart until its ``mailbox status`` equals n1's for that user (the
    node's start, about 1 s, included; the time from link up is printed
    too), and proxy bytes until idle.  The first catch-up progress line
    ``replicator status`` shows is printed.  Anchor: ``doveadm sync``
    (stateful, state from a no-op pass on the empty pair) after the same
    corpus appears on one side, through the relay as in W2.

W3, many users (``--users 1000 --mailboxes 3 --messages 20 --seed 3``)
    replicad: the corpus imported into n1 (in-process ``replicad import`` per
    user: the CLI's code without 1,000 interpreter start-ups) and replicated;
    n2 wiped as in W1; ``replicad sync --all --peer n2`` timed until
    ``verify`` finds no difference.  Then a no-op resync: ``replicad verify
    --all`` (wall time of the command; its JSON round_trips and bytes; proxy
    bytes around it).  Anchor: ``doveadm backup`` per user in a loop (``-A``
    needs a running Dovecot auth service to list users; a loop of the same
    command is what it does, one user after another), into empty Maildirs,
    then the same loop again as dsync's no-op pass.

W2 through a resync (``--w2-max-outbox N``): the same, with every node's
``cluster.max_outbox`` set to N (nodes restarted before W1), small enough
that the W2 changes overflow the follower's outbox: the master drops that
backlog, marks the mailboxes from the first change dropped, and after the
heal resyncs them with incremental SYNCs (``w2_incremental``: how many;
``w2_fallbacks``: how many fell back to a whole SYNC).

Prints every run, the medians over ``--runs`` and the ratios replicad/dsync.
``--quick`` shrinks every corpus to smoke-test the script (figures then mean
little).  Never run as a test.

    .venv/bin/python tools/bench/bench_resync.py [--runs 3] [--quick] [--only w1w2|w3]
        [--w2-max-outbox N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GEN_CORPUS = ROOT / "tools" / "gen_corpus.py"
RD = [sys.executable, "-m", "replicad"]
USER = "user00000"
#: The W1 corpus again, imported as another user while a node is down.
DOWN_USER = "user00001"
NOBODY = 65534
KEYWORD = "$Bench"
POLL = 0.05
#: Log events counted per phase: changes a copy refused, merges, failed resyncs.
EVENTS = ("change-diverged", "resync-merged", "resync-failed", "change-too-large")
TIMEOUT = 300.0
#: The relay runs as ``nobody``, which may not reach the venv's interpreter
#: (pyenv under /root): the system one will do, it needs only the stdlib.
RELAY_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


@dataclass(frozen=True)
class Sizes:
    w1_messages: int
    w2_new: int
    w2_flags: int  # in all, spread evenly over the W1 mailboxes
    w2_expunges: int
    w3_users: int


#: docs/architecture.md §10's sizes.
FULL = Sizes(w1_messages=10000, w2_new=200, w2_flags=1000, w2_expunges=100, w3_users=1000)
QUICK = Sizes(w1_messages=1000, w2_new=20, w2_flags=100, w2_expunges=10, w3_users=50)


# --- small helpers ---------------------------------------------------------------------------


def run(cmd: Sequence[str], check: bool = True, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    """Run ``cmd``, its output captured; RuntimeError (with its stderr) if it fails."""
    proc = subprocess.run(list(cmd), capture_output=True, check=False, **kw)
    if proc.returncode != 0 and check:
        raise RuntimeError(
            f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
            f"{proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc


def wait_for(
    what: str, test: Callable[[], bool], timeout: float = TIMEOUT, poll: float = POLL
) -> None:
    deadline = time.perf_counter() + timeout
    while not test():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def gen_corpus(out: Path, users: int, mailboxes: int, messages: int, seed: int) -> Path:
    if not out.exists():
        run(
            [
                sys.executable,
                str(GEN_CORPUS),
                str(out),
                "--users",
                str(users),
                "--mailboxes",
                str(mailboxes),
                "--messages",
                str(messages),
                "--seed",
                str(seed),
            ]
        )
    return out


def maildir_boxes(maildir: Path) -> dict[str, list[Path]]:
    """Mailbox name -> its message files (Maildir++: cur/ and new/, .A.B is A/B)."""
    boxes: dict[str, list[Path]] = {}
    for sub in [maildir, *sorted(p for p in maildir.iterdir() if p.name.startswith("."))]:
        if not sub.is_dir() or sub.name in (".", ".."):
            continue
        name = "INBOX" if sub == maildir else sub.name[1:].replace(".", "/")
        files = [f for d in ("cur", "new") if (sub / d).is_dir() for f in (sub / d).iterdir()]
        boxes[name] = sorted(files)
    return boxes


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def kb(n: float) -> str:
    return f"{n / 1024:.1f} KB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MB"


# --- dsync's byte counter ----------------------------------------------------------------------


def relay_main(argv: Sequence[str]) -> int:
    """``bench_resync.py relay COUNTS CMD...``: run CMD with our stdin/stdout relayed to it.

    doveadm runs this as the "remote" side of dsync.  Octets are counted as
    they pass, and COUNTS is rewritten in place ("TO_SERVER TO_CLIENT") before
    each chunk is forwarded: doveadm may be done (and kill us) as soon as it
    has the last chunk, so nothing may be left to write after it.
    """
    counts_path, cmd = Path(argv[0]), list(argv[1:])
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert child.stdin is not None and child.stdout is not None
    counts = [0, 0]
    lock = threading.Lock()
    fd = os.open(counts_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def forward(src: int, dst: int, index: int) -> None:
        while data := os.read(src, 65536):
            with lock:
                counts[index] += len(data)
                os.pwrite(fd, f"{counts[0]:20d} {counts[1]:20d}\n".encode(), 0)
            view = memoryview(data)
            while view:
                view = view[os.write(dst, view) :]

    def upstream() -> None:
        assert child.stdin is not None
        with contextlib.suppress(OSError):
            forward(0, child.stdin.fileno(), 0)
        with contextlib.suppress(OSError):
            child.stdin.close()

    threading.Thread(target=upstream, daemon=True).start()
    with contextlib.suppress(OSError):
        forward(child.stdout.fileno(), 1, 1)
    os.close(1)
    os._exit(child.wait())


def read_counts(path: Path) -> tuple[int, int]:
    to_server, to_client = path.read_text().split()
    return int(to_server), int(to_client)


# --- Dovecot ---------------------------------------------------------------------------------


class Dovecot:
    """doveadm as ``nobody`` on mail under ``base`` (Dovecot refuses to run as root)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        shutil.rmtree(base, ignore_errors=True)
        for sub in ("home", "run", "state", "counts"):
            (base / sub).mkdir(parents=True)
        self.root = os.getuid() == 0
        self.uid = NOBODY if self.root else os.getuid()
        self.gid = NOBODY if self.root else os.getgid()

    def config(self, name: str, location: str, users_file: Path | None = None) -> Path:
        conf = self.base / f"{name}.conf"
        userdb = (
            f"userdb {{\n  driver = passwd-file\n  args = {users_file}\n}}\n"
            if users_file is not None
            else f"userdb {{\n  driver = static\n  args = uid={self.uid} gid={self.gid} "
            f"home={self.base}/home\n}}\n"
        )
        conf.write_text(
            f"mail_location = {location}\n"
            f"mail_uid = {self.uid}\nmail_gid = {self.gid}\n"
            + userdb
            + "passdb {\n  driver = static\n  args = nopassword=y\n}\n"
            f"base_dir = {self.base}/run/{name}\nstate_dir = {self.base}/state/{name}\n"
            "ssl = no\nlog_path = /dev/stderr\n"
        )
        (self.base / "run" / name).mkdir(exist_ok=True)
        (self.base / "state" / name).mkdir(exist_ok=True)
        return conf

    def own(self) -> None:
        """Give everything under ``base`` to the user doveadm runs as."""
        if self.root:
            run(["chown", "-R", f"{self.uid}:{self.gid}", str(self.base)])
            for parent in self.base.parents:
                if parent == Path("/"):
                    break
                if parent.stat().st_mode & 0o005 != 0o005:
                    os.chmod(parent, parent.stat().st_mode | 0o005)

    def prefix(self, user: str) -> list[str]:
        drop = (
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
            if self.root
            else []
        )
        return [*drop, "env", f"USER={user}", f"HOME={self.base}/home"]

    def doveadm(
        self, conf: Path, args: Sequence[str], user: str = USER, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return run([*self.prefix(user), "doveadm", "-c", str(conf), *args], input=stdin)

    def remote(self, conf: Path, counts: Path, user: str = USER) -> list[str]:
        """dsync's destination command: the relay, then ``dsync-server`` with ``conf``.

        ``env -i``: doveadm passes its own configuration to children in the
        environment, which would make the server use the source's settings.
        """
        return [
            RELAY_PYTHON,
            str(Path(__file__).resolve()),
            "relay",
            str(counts),
            "env",
            "-i",
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            f"USER={user}",
            f"HOME={self.base}/home",
            "doveadm",
            "-c",
            str(conf),
            "dsync-server",
        ]

    def backup_remote(
        self, src: Path, dst: Path, name: str, state: str | None = None, verb: str = "backup"
    ) -> tuple[float, int, int, str]:
        """``doveadm backup`` (or ``verb``: ``sync``) of ``src``'s config into
        ``dst``'s through the relay: (seconds, octets to the server, octets
        back, the new state if stateful)."""
        counts = self.base / "counts" / name
        counts.unlink(missing_ok=True)
        stateful = ["-s", state] if state is not None else []
        start = time.perf_counter()
        proc = self.doveadm(src, [verb, *stateful, *self.remote(dst, counts)])
        elapsed = time.perf_counter() - start
        up, down = read_counts(counts)
        return elapsed, up, down, proc.stdout.decode().strip()


def copy_for_dovecot(corpus: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(corpus, target)


# --- replicad --------------------------------------------------------------------------------


class Cluster:
    """A ``replicad cluster up --faults`` cluster in ``directory``."""

    def __init__(self, directory: Path, nodes: int) -> None:
        self.directory = directory
        self.names = [f"n{k}" for k in range(1, nodes + 1)]
        shutil.rmtree(directory, ignore_errors=True)
        run([*RD, "cluster", "up", "--faults", "-n", str(nodes), str(directory)])
        wait_for("root election", self.elected, 60)

    def conf(self, node: str) -> Path:
        return self.directory / node / "replicad.toml"

    def set_max_outbox(self, limit: int) -> None:
        """``cluster.max_outbox = limit`` on every node, each restarted (behind the proxy)."""
        for node in self.names:
            path = self.conf(node)
            text = path.read_text()
            line = f"max_outbox = {limit}"
            if re.search(r"(?m)^max_outbox\s*=", text):
                text = re.sub(r"(?m)^max_outbox\s*=.*$", line, text)
            elif re.search(r"(?m)^\[cluster\]\s*$", text):
                text = re.sub(r"(?m)^\[cluster\]\s*$", f"[cluster]\n{line}", text, count=1)
            else:
                text += f"\n[cluster]\n{line}\n"
            path.write_text(text)
            run([*RD, "cluster", "restart", str(self.directory), node])
        wait_for("root election after the restarts", self.elected, 60)

    def cli(self, node: str, *args: str, stdin: bytes | None = None, check: bool = True) -> Any:
        return run([*RD, "-c", str(self.conf(node)), *args], input=stdin, check=check)

    def call(self, node: str, op: str, **kw: Any) -> Any:
        from replicad.admin.client import AdminClient

        with AdminClient(self.directory / node / "admin.sock") as client:
            return client.call(op, **kw)

    def elected(self) -> bool:
        try:
            for node in self.names:
                status = self.call(node, "cluster_status")
                if not status.get("root") or any(
                    p["link"] != "up" for p in status.get("peers", [])
                ):
                    return False
        except Exception:  # not answering yet
            return False
        return True

    def link_up(self, node: str, peer: str) -> bool:
        try:
            status = self.call(node, "cluster_status")
        except Exception:
            return False
        return any(p["name"] == peer and p["link"] == "up" for p in status.get("peers", []))

    def idle_towards(self, node: str, peer: str) -> bool:
        """Nothing left for ``peer`` on ``node``: stream caught up, no resync or mark."""
        status = self.call(node, "cluster_status")
        [info] = [p for p in status["peers"] if p["name"] == peer]
        if info.get("outbox") or info.get("resync"):
            return False
        work = self.call(node, "dsync_status")
        return not work["running"] and not any(work["queued"].values()) and not work["marks"]

    def statuses(self, node: str, users: Sequence[str]) -> dict[tuple[str, str], tuple[int, ...]]:
        from replicad.errors import ReplicadError

        out: dict[tuple[str, str], tuple[int, ...]] = {}
        for user in users:
            try:
                rows = self.call(node, "mailbox_list", user=user)
            except ReplicadError:
                continue
            for s in rows:
                out[user, s["name"]] = (s["messages"], s["uidnext"], s["highestmodseq"])
        return out

    def same(self, a: str, b: str, users: Sequence[str]) -> bool:
        """Whether ``b`` holds what ``a`` does: equal (messages, UIDNEXT, HIGHESTMODSEQ)
        for every mailbox (read from ``a`` each time: a merge may move it too)."""
        here = self.statuses(a, users)
        return bool(here) and self.statuses(b, users) == here

    def log_mark(self) -> dict[str, int]:
        return {n: (self.directory / n / "replicad.log").stat().st_size for n in self.names}

    def events_since(self, mark: dict[str, int]) -> dict[str, int]:
        """How many of the resync-related log events every node logged since
        ``mark``, and ``frame-refused``: links a receiver closed on a frame
        it would not take (``link-closed reason=protocol``)."""
        counts = dict.fromkeys((*EVENTS, "frame-refused"), 0)
        for node, offset in mark.items():
            with (self.directory / node / "replicad.log").open("rb") as fh:
                fh.seek(offset)
                for line in fh:
                    for event in EVENTS:
                        if f" event={event} ".encode() in line:
                            counts[event] += 1
                    if b" event=link-closed " in line and b" reason=protocol" in line:
                        counts["frame-refused"] += 1
        return counts

    def wire_bytes(self) -> int:
        """Octets the proxy forwarded on every link so far, both directions."""
        from replicad import faultproxy

        answer = faultproxy.control(self.directory, {"op": "state"})
        return sum(c["to_target"] + c["to_source"] for c in answer["bytes"].values())

    def faults(self, request: dict[str, Any]) -> None:
        from replicad import faultproxy

        faultproxy.control(self.directory, request)

    def kill(self, node: str) -> None:
        """SIGKILL ``node`` and wait until every peer sees its link down."""
        run([*RD, "cluster", "kill", str(self.directory), node])
        for other in self.names:
            if other != node:
                wait_for(f"{other} sees {node} down", partial(self.link_down, other, node))

    def link_down(self, node: str, peer: str) -> bool:
        return not self.link_up(node, peer)

    def restart(self, node: str) -> None:
        """Start ``node`` again (the command waits until it answers)."""
        run([*RD, "cluster", "restart", str(self.directory), node])

    def catchup_line(self, node: str, peer: str) -> str | None:
        """``node``'s catch-up progress towards ``peer`` as ``replicator status`` prints it."""
        from replicad.cluster.catchup import CatchUpProgress, describe

        try:
            status = self.call(node, "cluster_status")
        except Exception:
            return None
        for info in status.get("peers", []):
            if info["name"] == peer and info.get("catchup"):
                return describe(peer, CatchUpProgress.from_json(info["catchup"]))
        return None

    def wipe(self, node: str) -> None:
        """Kill ``node``, delete its store, start it again; wait until every peer links to it."""
        run([*RD, "cluster", "kill", str(self.directory), node])
        shutil.rmtree(self.directory / node / "data" / "store")
        run([*RD, "cluster", "up", str(self.directory)])
        for other in self.names:
            if other != node:
                wait_for(f"{other} linked to {node}", partial(self.link_up, other, node), 60)

    def resync_lost(self, lost: str) -> None:
        """``replicad sync --all --peer LOST`` on every other node at once."""
        procs = [
            subprocess.Popen(
                [*RD, "-c", str(self.conf(n)), "sync", "--all", "--peer", lost],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for n in self.names
            if n != lost
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=TIMEOUT)
            if proc.returncode != 0:
                raise RuntimeError(f"sync exited {proc.returncode}: {err.decode()[-2000:]}")

    def problems(self, last: int = 6) -> list[str]:
        """The last failed resyncs and link errors the nodes logged."""
        lines: list[str] = []
        for node in self.names:
            with contextlib.suppress(OSError):
                text = (self.directory / node / "replicad.log").read_text(errors="replace")
                lines += [
                    f"{node}: {line}"
                    for line in text.splitlines()
                    if "event=resync-failed" in line or "event=link-error" in line
                ][-last:]
        return lines

    def down(self) -> None:
        from replicad import faultproxy

        run([*RD, "cluster", "down", str(self.directory)], check=False)
        for pidfile in self.directory.glob("n*/data/replicad.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        with contextlib.suppress(Exception):
            faultproxy.stop_proxy(self.directory)


@contextlib.contextmanager
def cluster(directory: Path, nodes: int) -> Iterator[Cluster]:
    c: Cluster | None = None
    try:
        c = Cluster(directory, nodes)
        yield c
    except BaseException:
        if c is not None:
            for line in c.problems():
                print(f"  | {line}", flush=True)
        raise
    finally:
        if c is None:  # `up` failed half way: stop whatever it started
            c = Cluster.__new__(Cluster)
            c.directory = directory
            c.names = [f"n{k}" for k in range(1, nodes + 1)]
        c.down()


# --- W1 + W2 ---------------------------------------------------------------------------------


@dataclass
class W2Changes:
    new: list[tuple[str, Path]]  # (mailbox, message file)
    flags: dict[str, str]  # mailbox -> UID set
    expunges: dict[str, str]


def w2_changes(w1: dict[str, list[Path]], w2: dict[str, list[Path]], sizes: Sizes) -> W2Changes:
    boxes = sorted(w1)
    new = [(box, f) for box in sorted(w2) for f in w2[box]][: sizes.w2_new]
    per_flags, per_exp = sizes.w2_flags // len(boxes), sizes.w2_expunges // len(boxes)
    smallest = min(len(w1[b]) for b in boxes)
    if per_flags + per_exp > smallest:
        raise RuntimeError(f"W1 mailboxes too small ({smallest}) for the W2 changes")
    return W2Changes(
        new,
        {b: f"1:{per_flags}" for b in boxes},
        {b: f"{per_flags + 1}:{per_flags + per_exp}" for b in boxes},
    )


def replicad_w1_w2(
    out: dict[str, float],
    work: Path,
    maildir: Path,
    changes: W2Changes,
    nodes: int,
    log: Callable[[str], None],
    max_outbox: int | None = None,
    down_maildir: Path | None = None,
) -> None:
    with cluster(work / "cl", nodes) as c:
        if max_outbox is not None:
            c.set_max_outbox(max_outbox)
        lost = c.names[-1]
        start = time.perf_counter()
        mark = c.log_mark()
        c.cli("n1", "import", "-u", USER, str(maildir))
        for n in c.names[1:]:
            wait_for(f"W1 on {n}", partial(c.same, "n1", n, [USER]))
        out["w1_import_replicated_s"] = time.perf_counter() - start
        wait_for("W1 idle", lambda: all(c.idle_towards("n1", p) for p in c.names[1:]), 300)
        out |= {f"w1_import_{k}": v for k, v in c.events_since(mark).items()}

        # W1: a node that lost everything.
        c.wipe(lost)
        mark = c.log_mark()
        b0, t0 = c.wire_bytes(), time.perf_counter()
        c.resync_lost(lost)
        out["w1_sync_cmd_s"] = time.perf_counter() - t0
        wait_for(f"W1 back on {lost}", lambda: c.same("n1", lost, [USER]))
        out["w1_resync_s"] = time.perf_counter() - t0
        out["w1_resync_bytes"] = c.wire_bytes() - b0
        verify = c.cli("n1", "verify", "--all", check=False)
        if verify.returncode != 0:
            log(f"  ! W1: verify --all exited {verify.returncode}: {verify.stdout.decode()}")
        wait_for("W1 idle", lambda: all(c.idle_towards("n1", p) for p in c.names[1:]), 120)
        out |= {f"w1_{k}": v for k, v in c.events_since(mark).items()}

        # W2: the follower cut off, changes on the master, heal.
        follower = lost
        c.faults({"op": "partition", "groups": [[follower]]})
        t0 = time.perf_counter()
        conf = str(c.conf("n1"))

        def save(item: tuple[str, Path]) -> None:
            box, path = item
            run([*RD, "-c", conf, "save", "-u", USER, "-m", box], input=path.read_bytes())

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(save, changes.new))
        for box, uids in changes.flags.items():
            c.cli("n1", "flags", "-u", USER, "add", KEYWORD, "mailbox", box, "uid", uids)
        for box, uids in changes.expunges.items():
            c.cli("n1", "expunge", "-u", USER, "mailbox", box, "uid", uids)
        out["w2_changes_made_s"] = time.perf_counter() - t0
        time.sleep(1.0)  # nothing moves on a cut link; let the master settle
        mark = c.log_mark()
        b0, t0 = c.wire_bytes(), time.perf_counter()
        c.faults({"op": "heal"})
        wait_for("W2 link up", lambda: c.link_up("n1", follower), 60)
        out["w2_link_up_s"] = time.perf_counter() - t0
        wait_for("W2 on the follower", lambda: c.same("n1", follower, [USER]))
        out["w2_s"] = time.perf_counter() - t0
        out["w2_bytes_converged"] = c.wire_bytes() - b0
        wait_for("W2 idle", lambda: c.idle_towards("n1", follower), 300)
        out["w2_idle_s"] = time.perf_counter() - t0
        out["w2_bytes"] = c.wire_bytes() - b0
        out |= {f"w2_{k}": v for k, v in c.events_since(mark).items()}
        counters = c.call("n1", "dsync_status")
        out["w2_incremental"] = float(counters.get("incremental", 0))
        out["w2_fallbacks"] = float(counters.get("fallbacks", 0))
        verify = c.cli("n1", "verify", "--all", check=False)
        if verify.returncode != 0:
            log(f"  ! W2: verify --all exited {verify.returncode}: {verify.stdout.decode()}")
        if c.statuses(follower, [USER]) != c.statuses("n1", [USER]):
            log("  ! W2: the follower differs from the master after idle")

        # W1 written while a node is down: it catches up when started.
        c.kill(follower)
        mark = c.log_mark()
        c.cli("n1", "import", "-u", DOWN_USER, str(down_maildir or maildir))
        wait_for("W1 written", lambda: bool(c.statuses("n1", [DOWN_USER])))
        time.sleep(1.0)  # nothing moves towards a dead node; let the master settle
        b0, t0 = c.wire_bytes(), time.perf_counter()
        c.restart(follower)
        out["down_started_s"] = time.perf_counter() - t0
        progress: list[str] = []

        def caught_up() -> bool:
            if "down_link_up_s" not in out and c.link_up("n1", follower):
                out["down_link_up_s"] = time.perf_counter() - t0
            line = c.catchup_line("n1", follower)
            if line and not progress:
                progress.append(line)
            return c.same("n1", follower, [DOWN_USER])

        wait_for("W1 on the restarted node", caught_up, poll=0.1)
        out["down_s"] = time.perf_counter() - t0
        out["down_bytes_converged"] = c.wire_bytes() - b0
        wait_for("W1 idle after the restart", lambda: c.idle_towards("n1", follower), 300)
        out["down_idle_s"] = time.perf_counter() - t0
        out["down_bytes"] = c.wire_bytes() - b0
        out |= {f"down_{k}": v for k, v in c.events_since(mark).items()}
        out["down_progress_seen"] = float(bool(progress))
        if progress:
            log(f"  catch-up progress, first seen: {progress[0]}")
        if c.statuses(follower, [DOWN_USER]) != c.statuses("n1", [DOWN_USER]):
            log("  ! W1 down: the restarted node differs from the master after idle")


def dsync_w1_w2(
    out: dict[str, float],
    work: Path,
    corpus_maildir: Path,
    changes: W2Changes,
    down_maildir: Path | None = None,
) -> None:
    d = Dovecot(work / "dsync")
    src_dir, dst_dir = d.base / "src", d.base / "dst"
    copy_for_dovecot(corpus_maildir, src_dir / "Maildir")
    dst_dir.mkdir()
    src = d.config("src", f"maildir:{src_dir}/Maildir")
    dst = d.config("dst", f"maildir:{dst_dir}/Maildir")
    d.own()

    start = time.perf_counter()
    d.doveadm(src, ["backup", f"maildir:{dst_dir}/Maildir"])
    out["w1_dsync_s"] = time.perf_counter() - start

    # A no-op stateful pass: dsync's state for the incremental one.
    secs, up, down, state = d.backup_remote(src, dst, "noop", state="")
    out["w1_dsync_noop_s"], out["w1_dsync_noop_bytes"] = secs, up + down

    for box, path in changes.new:
        d.doveadm(src, ["save", "-m", box], stdin=path.read_bytes())
    for box, uids in changes.flags.items():
        d.doveadm(src, ["flags", "add", KEYWORD, "mailbox", box, "uid", uids])
    for box, uids in changes.expunges.items():
        d.doveadm(src, ["expunge", "mailbox", box, "uid", uids])

    snapshot = d.base / "dst.snapshot"
    run(["cp", "-a", str(dst_dir), str(snapshot)])  # -a: keeps nobody's ownership
    secs, up, down, _ = d.backup_remote(src, dst, "stateful", state=state)
    out["w2_dsync_stateful_s"], out["w2_dsync_stateful_bytes"] = secs, up + down
    expected = {b: len(f) for b, f in maildir_boxes(src_dir / "Maildir").items()}
    got = {b: len(f) for b, f in maildir_boxes(dst_dir / "Maildir").items()}
    if got != expected:
        raise RuntimeError(f"dsync stateful incremental: {got} != {expected}")
    shutil.rmtree(dst_dir)
    snapshot.rename(dst_dir)
    secs, up, down, _ = d.backup_remote(src, dst, "stateless")
    out["w2_dsync_s"], out["w2_dsync_bytes"] = secs, up + down
    got = {b: len(f) for b, f in maildir_boxes(dst_dir / "Maildir").items()}
    if got != expected:
        raise RuntimeError(f"dsync stateless incremental: {got} != {expected}")

    # W1 written on one side of a pair synced before (empty): `doveadm sync`
    # of that change, stateful as Dovecot's replicator runs it.
    down_src, down_dst = d.base / "down-src", d.base / "down-dst"
    (down_src / "Maildir").mkdir(parents=True)
    down_dst.mkdir()
    dsrc = d.config("downsrc", f"maildir:{down_src}/Maildir")
    ddst = d.config("downdst", f"maildir:{down_dst}/Maildir")
    d.own()
    _, _, _, state = d.backup_remote(dsrc, ddst, "down-noop", state="", verb="sync")
    # Into the Maildir dsync already knows (its index stays): the change.
    down_corpus = down_maildir or corpus_maildir
    shutil.copytree(down_corpus, down_src / "Maildir", dirs_exist_ok=True)
    d.own()
    secs, up, down, _ = d.backup_remote(dsrc, ddst, "down", state=state, verb="sync")
    out["down_dsync_s"], out["down_dsync_bytes"] = secs, up + down
    expected = {b: len(f) for b, f in maildir_boxes(down_corpus).items()}
    got = {b: len(f) for b, f in maildir_boxes(down_dst / "Maildir").items()}
    if got != expected:
        raise RuntimeError(f"dsync of W1 written on one side: {got} != {expected}")
    shutil.rmtree(d.base)


# --- W3 --------------------------------------------------------------------------------------


def import_users(c: Cluster, corpus: Path, users: Sequence[str]) -> None:
    """``replicad import`` per user, in this process (the CLI's own code)."""
    from replicad.cli.main import main as replicad_main

    for user in users:
        with contextlib.redirect_stdout(io.StringIO()):
            code = replicad_main(
                ["-c", str(c.conf("n1")), "import", "-u", user, str(corpus / user / "Maildir")]
            )
        if code != 0:
            raise RuntimeError(f"import of {user} exited {code}")


def verify_clean(c: Cluster) -> bool:
    return not c.call("n1", "verify", user="")["differences"]


def replicad_w3(
    out: dict[str, float],
    work: Path,
    corpus: Path,
    users: Sequence[str],
    nodes: int,
    log: Callable[[str], None],
) -> None:
    with cluster(work / "cl3", nodes) as c:
        start = time.perf_counter()
        mark = c.log_mark()
        import_users(c, corpus, users)
        out["w3_import_s"] = time.perf_counter() - start

        def idle() -> bool:
            return all(c.idle_towards("n1", p) for p in c.names[1:])

        wait_for("W3 replicated", lambda: idle() and verify_clean(c), poll=0.5)
        out["w3_import_replicated_s"] = time.perf_counter() - start
        out |= {f"w3_import_{k}": v for k, v in c.events_since(mark).items()}

        lost = c.names[-1]
        c.wipe(lost)
        mark = c.log_mark()
        b0, t0 = c.wire_bytes(), time.perf_counter()
        c.resync_lost(lost)
        out["w3_sync_cmd_s"] = time.perf_counter() - t0
        wait_for(f"W3 back on {lost}", lambda: verify_clean(c), poll=0.2)
        out["w3_resync_s"] = time.perf_counter() - t0
        out["w3_resync_bytes"] = c.wire_bytes() - b0
        if c.statuses(lost, users) != c.statuses("n1", users):
            log(f"  ! W3: {lost}'s mailbox status differs from n1's though verify is clean")
        wait_for("W3 idle", idle, 300)
        out |= {f"w3_{k}": v for k, v in c.events_since(mark).items()}

        # The no-op resync: verify --all through the CLI, as an operator runs it.
        b0, t0 = c.wire_bytes(), time.perf_counter()
        proc = c.cli("n1", "-f", "json", "verify", "--all", check=False)
        out["w3_noop_s"] = time.perf_counter() - t0
        out["w3_noop_wire_bytes"] = c.wire_bytes() - b0
        doc = json.loads(proc.stdout)
        out["w3_noop_round_trips"] = doc["round_trips"]
        out["w3_noop_bytes"] = doc["bytes"]
        if proc.returncode != 0:
            log(f"  ! W3: no-op verify exited {proc.returncode}: {doc['differences'][:3]}")
        # The same request without the interpreter's start-up (the node's own cost).
        t0 = time.perf_counter()
        c.call("n1", "verify", user="")
        out["w3_noop_admin_s"] = time.perf_counter() - t0
        # And a no-op `sync --all` through the CLI (I8: the digest exchange
        # first, then nothing to resync), like-for-like with dsync's no-op pass.
        b0, t0 = c.wire_bytes(), time.perf_counter()
        proc = c.cli("n1", "-f", "json", "sync", "--all", check=False)
        out["w3_noop_sync_s"] = time.perf_counter() - t0
        out["w3_noop_sync_bytes"] = c.wire_bytes() - b0
        if proc.returncode != 0:
            log(f"  ! W3: no-op sync --all exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
        else:
            [row] = json.loads(proc.stdout)
            out["w3_noop_sync_round_trips"] = row["round_trips"]
            out["w3_noop_sync_resynced"] = row["resynced"]
            out["w3_noop_sync_compared"] = row["compared"]


def dsync_w3(out: dict[str, float], work: Path, corpus: Path, users: Sequence[str]) -> None:
    d = Dovecot(work / "dsync3")
    src_dir, dst_dir = d.base / "src", d.base / "dst"
    src_dir.mkdir()
    for user in users:
        shutil.copytree(corpus / user, src_dir / user)
    dst_dir.mkdir()
    src = d.config("src", f"maildir:{src_dir}/%u/Maildir")
    d.own()

    def one_pass() -> float:
        start = time.perf_counter()
        for user in users:
            d.doveadm(src, ["backup", f"maildir:{dst_dir}/{user}/Maildir"], user=user)
        return time.perf_counter() - start

    out["w3_dsync_s"] = one_pass()
    out["w3_dsync_noop_s"] = one_pass()
    # The fairer anchor: one doveadm process for every user (`backup -A`),
    # without 1,000 process start-ups.  Listing users needs Dovecot's auth
    # service, so a private dovecot daemon runs for it; each user's home is
    # its destination, so the destination location is `~/Maildir`.
    users_file = d.base / "users"
    users_file.write_text("".join(f"{u}::{d.uid}:{d.gid}::{dst_dir}/{u}::\n" for u in users))
    src_all = d.config("srcall", f"maildir:{src_dir}/%u/Maildir", users_file=users_file)
    with src_all.open("a") as conf:
        # A daemon must not keep our stderr pipe open: it logs to a file.
        conf.write(
            "protocols =\ndefault_internal_user = nobody\ndefault_login_user = nobody\n"
            f"log_path = {d.base}/dovecot.log\n"
        )
    d.own()
    # Not run(): the daemon would hold the captured pipes open for ever.
    subprocess.run(
        ["dovecot", "-c", str(src_all)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    try:
        start = time.perf_counter()
        run(["doveadm", "-c", str(src_all), "backup", "-A", "maildir:~/Maildir"])
        out["w3_dsync_all_noop_s"] = time.perf_counter() - start
    finally:
        run(["doveadm", "-c", str(src_all), "stop"], check=False)
    shutil.rmtree(d.base)


# --- main ------------------------------------------------------------------------------------


def attempt(what: str, log: Callable[[str], None], fn: Callable[..., None], *args: Any) -> None:
    """Run one workload; a failure is reported and the others go on."""
    try:
        fn(*args)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        log(f"{what} FAILED: {exc}")


def fmt(r: dict[str, float], key: str, spec: str = ".2f", unit: str = " s") -> str:
    if key not in r:
        return "-"
    return kb(r[key]) if unit == "bytes" else f"{r[key]:{spec}}{unit}"


def log_w1_w2(n: int, r: dict[str, float], log: Callable[[str], None]) -> None:
    if "down_s" in r and "down_link_up_s" in r:
        r["down_from_link_s"] = r["down_s"] - r["down_link_up_s"]
    if "w2_s" in r and "w2_link_up_s" in r:
        r["w2_from_link_s"] = r["w2_s"] - r["w2_link_up_s"]
    log(
        f"run {n + 1} W1: dsync backup {fmt(r, 'w1_dsync_s')}; replicad resync "
        f"{fmt(r, 'w1_resync_s')} ({fmt(r, 'w1_resync_bytes', unit='bytes')} on the wire)"
    )
    log(
        f"run {n + 1} W1 down: dsync sync {fmt(r, 'down_dsync_s')} "
        f"{fmt(r, 'down_dsync_bytes', unit='bytes')}; replicad {fmt(r, 'down_s')} from the "
        f"restart ({fmt(r, 'down_started_s')} to start, link up after "
        f"{fmt(r, 'down_link_up_s')}), "
        f"{fmt(r, 'down_bytes_converged', unit='bytes')} until converged, "
        f"{fmt(r, 'down_bytes', unit='bytes')} until idle ({fmt(r, 'down_idle_s')}); "
        f"frames refused {fmt(r, 'down_frame-refused', '.0f', '')}, during the W1 import "
        f"{fmt(r, 'w1_import_frame-refused', '.0f', '')}"
    )
    log(
        f"run {n + 1} W2: dsync stateful {fmt(r, 'w2_dsync_stateful_s', '.3f')} "
        f"{fmt(r, 'w2_dsync_stateful_bytes', unit='bytes')}, stateless "
        f"{fmt(r, 'w2_dsync_s', '.3f')} {fmt(r, 'w2_dsync_bytes', unit='bytes')}; replicad "
        f"{fmt(r, 'w2_s', '.3f')} from heal (link up after {fmt(r, 'w2_link_up_s', '.3f')}), "
        f"{fmt(r, 'w2_bytes_converged', unit='bytes')} until converged, "
        f"{fmt(r, 'w2_bytes', unit='bytes')} until idle ({fmt(r, 'w2_idle_s')}); "
        f"{fmt(r, 'w2_incremental', '.0f', '')} incremental SYNCs, "
        f"{fmt(r, 'w2_fallbacks', '.0f', '')} fallbacks"
    )


def log_w3(n: int, r: dict[str, float], log: Callable[[str], None]) -> None:
    log(
        f"run {n + 1} W3: dsync first {fmt(r, 'w3_dsync_s')}, no-op {fmt(r, 'w3_dsync_noop_s')}; "
        f"replicad import+replicate {fmt(r, 'w3_import_replicated_s')}, resync "
        f"{fmt(r, 'w3_resync_s')} ({fmt(r, 'w3_resync_bytes', unit='bytes')}), no-op verify "
        f"{fmt(r, 'w3_noop_s', '.3f')} ({fmt(r, 'w3_noop_round_trips', '.0f', '')} round trips, "
        f"{fmt(r, 'w3_noop_bytes', '.0f', ' B')} by its count, "
        f"{fmt(r, 'w3_noop_wire_bytes', unit='bytes')} on the wire), admin call "
        f"{fmt(r, 'w3_noop_admin_s', '.3f')}, no-op sync --all {fmt(r, 'w3_noop_sync_s', '.3f')} "
        f"({fmt(r, 'w3_noop_sync_round_trips', '.0f', '')} round trips, "
        f"{fmt(r, 'w3_noop_sync_resynced', '.0f', '')} resynced of "
        f"{fmt(r, 'w3_noop_sync_compared', '.0f', '')}, "
        f"{fmt(r, 'w3_noop_sync_bytes', unit='bytes')} on the wire); "
        f"dsync backup -A no-op {fmt(r, 'w3_dsync_all_noop_s')}"
    )


def report(
    results: list[dict[str, float]], log: Callable[[str], None], overflow: bool = False
) -> None:
    """Medians and ratios; ``overflow``: W2 went through an outbox overflow,
    whose targets are dsync's cost (issue 21), not half of it."""
    med = {k: median([r[k] for r in results if k in r]) for r in results for k in r}

    def ratio(a: str, b: str) -> str:
        if a not in med or b not in med or not med[b]:
            return "n/a"
        return f"{med[a] / med[b]:.3f}"

    log("")
    log(f"medians over {len(results)} run(s):")
    for k in sorted(med):
        v = med[k]
        log(f"  {k:28} {v:.0f}" if "bytes" in k or "trips" in k else f"  {k:28} {v:.3f}")
    log("")
    log("ratios replicad/dsync (medians):")
    w2_time, w2_bytes = ("<= 1.0", "<= 1.0") if overflow else ("<= 0.5", "<= 0.5")
    rows = [
        ("W1 resync of a lost node, time", "w1_resync_s", "w1_dsync_s", "<= 1.0"),
        (
            "W1 written while down: time from restart / dsync sync",
            "down_s",
            "down_dsync_s",
            "<= 0.5",
        ),
        (
            "W1 written while down: time from link up / dsync sync",
            "down_from_link_s",
            "down_dsync_s",
            "-",
        ),
        ("W1 written while down: bytes / dsync sync", "down_bytes", "down_dsync_bytes", "-"),
        ("W2 time from heal / dsync stateful", "w2_s", "w2_dsync_stateful_s", w2_time),
        ("W2 time from heal / dsync stateless", "w2_s", "w2_dsync_s", "<= 0.5"),
        ("W2 time from link up / dsync stateful", "w2_from_link_s", "w2_dsync_stateful_s", "-"),
        ("W2 bytes until idle / dsync stateful", "w2_bytes", "w2_dsync_stateful_bytes", w2_bytes),
        ("W2 bytes until idle / dsync stateless", "w2_bytes", "w2_dsync_bytes", "<= 0.5"),
        (
            "W2 bytes until converged / stateful",
            "w2_bytes_converged",
            "w2_dsync_stateful_bytes",
            "-",
        ),
        ("W3 first sync of an empty node, time", "w3_resync_s", "w3_dsync_s", "<= 1.0"),
        ("W3 no-op verify --all (CLI), time", "w3_noop_s", "w3_dsync_noop_s", "<= 0.1"),
        ("W3 no-op verify (admin call), time", "w3_noop_admin_s", "w3_dsync_noop_s", "-"),
        ("W3 no-op sync --all (CLI), time", "w3_noop_sync_s", "w3_dsync_noop_s", "<= 0.1"),
        (
            "W3 no-op sync --all (CLI) vs doveadm backup -A, time",
            "w3_noop_sync_s",
            "w3_dsync_all_noop_s",
            "-",
        ),
    ]
    for label, a, b, target in rows:
        log(f"  {label:45} {ratio(a, b):>7}   target {target}")
    if "w3_noop_round_trips" in med:
        log(
            f"  W3 no-op verify: {med['w3_noop_round_trips']:.0f} round trip(s) (target <= 3), "
            f"{med['w3_noop_bytes']:.0f} B payload by its count, "
            f"{kb(med['w3_noop_wire_bytes'])} on the wire (target <= 16 KB)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["relay"]:
        return relay_main(argv[1:])
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs to take medians over (default 3)")
    ap.add_argument("--quick", action="store_true", help="small corpora: a smoke test")
    ap.add_argument("--nodes", type=int, default=2, help="cluster size (default 2)")
    ap.add_argument(
        "--only",
        choices=("all", "w1w2", "w3"),
        default="all",
        help="w1w2: W1 and W2 (W2 starts from the pair W1 leaves); w3: W3 (default: all)",
    )
    ap.add_argument(
        "--w1-messages",
        type=int,
        help="W1 corpus size (default 10000, 1000 with --quick)",
    )
    ap.add_argument("--w3-users", type=int, help="W3 users (default 1000, 50 with --quick)")
    ap.add_argument(
        "--w2-max-outbox",
        type=int,
        metavar="N",
        help="cluster.max_outbox on every node: W2 overflows it and goes through resync",
    )
    ap.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    if shutil.which("doveadm") is None:
        print("doveadm not found: install dovecot-core for the anchors", file=sys.stderr)
        return 69
    sizes = QUICK if args.quick else FULL
    if args.w3_users:
        sizes = dataclasses.replace(sizes, w3_users=args.w3_users)
    if args.w1_messages:
        sizes = dataclasses.replace(sizes, w1_messages=args.w1_messages)
    w12, w3_on = args.only in ("all", "w1w2"), args.only in ("all", "w3")

    def log(line: str) -> None:
        print(line, flush=True)

    with contextlib.ExitStack() as stack:
        if args.work is None:
            # Short: the fault proxy's control socket path is limited to 107 bytes.
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rs-", dir="/tmp")))
        else:
            work = args.work.absolute()
            work.mkdir(parents=True, exist_ok=True)
        corpora = work / "corpora"
        w1 = gen_corpus(corpora / f"w1-{sizes.w1_messages}", 1, 5, sizes.w1_messages, 1)
        w2 = gen_corpus(corpora / f"w2-{sizes.w2_new}", 1, 5, sizes.w2_new, 2)
        w3 = gen_corpus(corpora / f"w3-{sizes.w3_users}", sizes.w3_users, 3, 20, 3)
        w1_maildir = w1 / USER / "Maildir"
        # Written while a node is down: W1's shape, other bodies (the node
        # holds W1's already, and the single-instance store would not send them).
        w1d = gen_corpus(corpora / f"w1d-{sizes.w1_messages}", 1, 5, sizes.w1_messages, 4)
        down_maildir = w1d / USER / "Maildir"
        w1_boxes = maildir_boxes(w1_maildir)
        changes = w2_changes(w1_boxes, maildir_boxes(w2 / USER / "Maildir"), sizes)
        users = sorted(p.name for p in w3.iterdir() if p.is_dir())
        log(
            f"W1: {sum(map(len, w1_boxes.values()))} messages in {len(w1_boxes)} mailboxes; "
            f"W2: {len(changes.new)} new, {sizes.w2_flags} flag changes, "
            f"{sizes.w2_expunges} expunges; W3: {len(users)} users x 3 mailboxes x 20 messages; "
            f"{args.nodes}-node cluster; {os.cpu_count()} CPUs"
        )
        results: list[dict[str, float]] = []
        for n in range(args.runs):
            r: dict[str, float] = {}
            t_run = time.perf_counter()
            if w12:
                attempt(
                    f"run {n + 1} dsync W1+W2",
                    log,
                    dsync_w1_w2,
                    r,
                    work,
                    w1_maildir,
                    changes,
                    down_maildir,
                )
                attempt(
                    f"run {n + 1} replicad W1+W2",
                    log,
                    replicad_w1_w2,
                    r,
                    work,
                    w1_maildir,
                    changes,
                    args.nodes,
                    log,
                    args.w2_max_outbox,
                    down_maildir,
                )
                log_w1_w2(n, r, log)
            if w3_on:
                attempt(f"run {n + 1} dsync W3", log, dsync_w3, r, work, w3, users)
                attempt(
                    f"run {n + 1} replicad W3",
                    log,
                    replicad_w3,
                    r,
                    work,
                    w3,
                    users,
                    args.nodes,
                    log,
                )
                log_w3(n, r, log)
            log(f"run {n + 1}: {time.perf_counter() - t_run:.0f} s")
            results.append(r)
        report(results, log, overflow=args.w2_max_outbox is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
