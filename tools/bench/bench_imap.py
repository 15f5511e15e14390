#!/usr/bin/env python3
"""W7: mail out over IMAP, against Dovecot's imapd (DESIGN §10, the "Mail out: IMAP" issue).

The mail is the W1 corpus (``gen_corpus.py --users 1 --mailboxes 5
--messages N --seed 1``; N = ``--messages``, 10000 by default: an INBOX of
about 6,000 messages, 160 MB).  Targets, all up at once and measured side
by side in every run, on the same disk (a temporary directory under
``--dir``):

1. ``dovecot``: the anchor.  Dovecot's imapd (``dovecot -c CONF``, a private
   config: its own base_dir, ``mail_location = maildir:~/Maildir`` holding a
   copy of the corpus, default ``mail_fsync``).  Under root the mail belongs
   to ``nobody`` (Dovecot refuses to write mail as root).
2. ``replicad``: one node (``replicad init``, durability ``local``), the
   corpus brought in with ``replicad import``.
3. ``quorum``: n1 of a 3-node ``replicad cluster up`` at durability
   ``quorum`` (APPENDs only; it holds no corpus).

Measured per run (each on a fresh connection, after one untimed warm-up
pass that builds Dovecot's index and fills the page cache):

* ``SELECT INBOX``; ``UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)``:
  seconds, target replicad <= 2x Dovecot's time;
* ``FETCH 1:* BODY.PEEK[]``: MB/s of message bytes, target >= 0.5x Dovecot;
* ``UID SEARCH HEADER Subject x`` and ``UID SEARCH UNSEEN``: seconds;
* APPEND: ``--appends`` (1,000) messages of the corpus from ``--clients``
  (10) connections into a new mailbox (LITERAL+, so no round trip per
  literal), rate from the last client logged in to the last reply; target
  for ``quorum`` >= 1.0x Dovecot's rate on one node;
* imaptest's stress mix (``clients=50 secs=30``, its ``default.mbox``) on a
  throwaway user: commands/s and errors, target >= 0.5x Dovecot, 0 errors.
  The binary comes from ``--imaptest`` or ``$IMAPTEST``; without it that
  part is skipped.  Every user's password is ``{PLAIN}`` in both servers'
  passwd-files; ``--hashed-stress-password`` stores the stress user's the
  way ``replicad user add`` does (ARGON2ID, in both): imaptest logs in and
  out all the time, so then the hash's cost dominates what it measures;
* memory (replicad only, after the rest, on the single node restarted for
  each run with nothing else running): RSS of the node with
  ``--idle-sessions`` (500) sessions logged in, INBOX (``--idle-mailbox``)
  selected and in IDLE, per session above the node's RSS before they came;
  target <= 100 KB/session.

Medians over ``--runs`` (3), a table with the ratios and one JSON line.
``--quick`` is a smoke run (1,000 messages, small counts, one run).
``--profile FILE`` restarts the single node after the import under cProfile,
one profiler per thread (the store's reads run in worker threads), and
prints the merged top functions at the end; ``--only`` picks the phases.
The times are wall time per thread: a worker's wait for the GIL shows as
time in the C call it returns from (LMDB ``get``, ``acquire``).

    .venv/bin/python tools/bench/bench_imap.py [--runs 3] [--imaptest PATH] [--quick]

Needs ``dovecot`` with imapd (Debian: dovecot-core dovecot-imapd); without it
``--no-dovecot`` runs replicad alone.  Never a test: it prints figures.

Figures (W1 INBOX of 5,983 messages, 162 MB; 2 cores shared with other
test runs, load average 12-17 throughout, so Dovecot's own figures moved
by up to 3x between runs: only the ratios within one run mean anything):

    tools/gen_corpus.py --users 1 --mailboxes 5 --messages 10000 --seed 1 W1
    tools/bench/bench_imap.py --runs 3 --only reads,memory --no-cluster --corpus W1

  ==================================  ======  ===================  =======  ========
  replicad / Dovecot                  before  after: 3 benches,    9 runs   target
                                              each a median of 3   median
  ==================================  ======  ===================  =======  ========
  SELECT INBOX                        72x     6.1x   0.17x 0.21x   0.68x    <= 2x
  UID FETCH 1:* (UID FLAGS            4.3x    2.0x   0.99x 0.36x   1.33x    <= 2x
  RFC822.SIZE INTERNALDATE)
  FETCH 1:* BODY.PEEK[] (MB/s)        0.51x   0.73x  0.48x 0.71x   0.61x    >= 0.5x
  RSS per IDLE session on INBOX       1468    14.2   14.3  14.2             <= 100
  (KiB)
  ==================================  ======  ===================  =======  ========

"Before": one bench (three runs) on the code before the shared snapshots;
"after": three benches, one after each of the last three code changes (the last on the final code).
In-process, SELECT takes about 0.5 ms (no store read while nothing was
committed since the node's snapshot was read) and metadata FETCH about
50 ms of CPU; the spread of their ratios is the scheduler's on a loaded
machine.  BODY[] is bound by zstd decompression on the reader threads
(about two thirds of the node's CPU time for it).  Where the time went and
what changed (replicad.imap.mailboxindex): SELECT and metadata FETCH
decoded every index row again per command and session, and each session's
view held a tuple and a dict entry per message; now the node keeps one
columnar snapshot per mailbox, brought forward by the changes since its
modseq, which every session's view shares.
"""

from __future__ import annotations

import argparse
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
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GEN_CORPUS = ROOT / "tools" / "gen_corpus.py"
RD = [sys.executable, "-m", "replicad"]
USER = "user00000"  # gen_corpus's first user: W1's mail
APPENDER = "appender"
STRESS = "stress"
PASSWORD = "bench"
NOBODY = 65534
PHASES = ("reads", "appends", "stress", "memory")


# --- a minimal IMAP client ------------------------------------------------------------


class ImapError(RuntimeError):
    pass


@dataclass
class Reply:
    status: bytes  # the tagged line
    untagged: list[bytes] = field(default_factory=list)  # lines without their literals
    literal_bytes: int = 0
    literals: int = 0


class Client:
    """Blocking IMAP client reading with a C buffered reader: the client costs little CPU.

    Literals are read by their announced size, so a body never passes for a
    response line.
    """

    def __init__(self, port: int, timeout: float = 600) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb", buffering=1 << 20)
        self.counter = 0
        greeting = self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting!r}")

    def send(self, line: bytes) -> bytes:
        self.counter += 1
        tag = b"b%d" % self.counter
        self.sock.sendall(tag + b" " + line + b"\r\n")
        return tag

    def read_until(self, tag: bytes) -> Reply:
        reply = Reply(b"")
        prefix = tag + b" "
        while True:
            line = self.reader.readline()
            if not line:
                raise ImapError("connection closed")
            while line.endswith(b"}\r\n"):
                start = line.rfind(b"{")
                size = int(line[start + 1 : -3].rstrip(b"+"))
                got = self.reader.read(size)
                if len(got) != size:
                    raise ImapError("connection closed in a literal")
                reply.literal_bytes += size
                reply.literals += 1
                rest = self.reader.readline()
                line = line[:start] + b"{}" + rest
            if line.startswith(prefix):
                reply.status = line
                return reply
            reply.untagged.append(line)

    def run(self, line: bytes, ok: bool = True) -> Reply:
        reply = self.read_until(self.send(line))
        if ok and not reply.status.split(b" ", 2)[1:2] == [b"OK"]:
            raise ImapError(f"{line[:60]!r}: {reply.status!r}")
        return reply

    def login(self, user: str, password: str = PASSWORD) -> None:
        self.run(f'LOGIN "{user}" "{password}"'.encode())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def timed(client: Client, line: bytes) -> tuple[float, Reply]:
    start = time.perf_counter()
    reply = client.run(line)
    return time.perf_counter() - start, reply


# --- the corpus -----------------------------------------------------------------------


def corpus_messages(corpus: Path, count: int) -> list[bytes]:
    """The first ``count`` messages in the order gen_corpus wrote them (``M<n>`` in the name)."""
    files = list(corpus.glob("*/Maildir/**/cur/*"))
    files.sort(key=lambda p: int(re.search(r"\.M(\d+)P", p.name).group(1)))  # type: ignore[union-attr]
    out = []
    for p in files[:count]:
        data = p.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out.append(data)
    return out


def make_corpus(work: Path, messages: int) -> Path:
    out = work / "corpus"
    run(
        sys.executable,
        GEN_CORPUS,
        out,
        "--users",
        "1",
        "--mailboxes",
        "5",
        "--messages",
        str(messages),
        "--seed",
        "1",
    )
    return out


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            if s.recv(4):  # a greeting: the server is past its start-up
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on {port}")
        time.sleep(0.1)


def run(*args: str | Path, input: bytes = b"") -> str:
    result = subprocess.run(list(map(str, args)), input=input, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode(errors="replace")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop(pid: int, timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL if ``pid`` is still there after ``timeout``."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    pid: int | None  # the server process whose RSS counts (replicad)


# --- Dovecot --------------------------------------------------------------------------


@contextlib.contextmanager
def dovecot(work: Path, corpus: Path, users_lines: dict[str, str]) -> Iterator[Target]:
    """Dovecot's imapd on a loopback port, W1's Maildir copied to its user's home."""
    base = work / "dovecot"
    for sub in ("run", "state", "mail"):
        (base / sub).mkdir(parents=True)
    shutil.copytree(corpus / USER / "Maildir", base / "mail" / USER / "Maildir")
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        uid = gid = NOBODY
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(base / "mail")], check=True)
        for p in (base, base.parent, base.parent.parent):  # up to the temporary directory
            p.chmod(p.stat().st_mode | 0o005)  # the mail user walks down to its mail
    port = free_port()
    (base / "users").write_text("".join(f"{u}:{pw}\n" for u, pw in users_lines.items()))
    conf = base / "dovecot.conf"
    conf.write_text(
        f"base_dir = {base}/run\nstate_dir = {base}/state\n"
        f"log_path = {base}/dovecot.log\n"
        "protocols = imap\nssl = no\nlisten = 127.0.0.1\n"
        "disable_plaintext_auth = no\nauth_mechanisms = plain login\n"
        "mail_location = maildir:~/Maildir\n"
        f"first_valid_uid = {min(uid, 500) or 1}\nfirst_valid_gid = {min(gid, 500) or 1}\n"
        "default_process_limit = 1000\ndefault_client_limit = 4000\n"
        f"passdb {{\n  driver = passwd-file\n  args = {base}/users\n}}\n"
        f"userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={base}/mail/%u\n}}\n"
        "protocol imap {\n  mail_max_userip_connections = 2000\n}\n"
        "service imap-login {\n"
        f"  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n"
        "  inet_listener imaps {\n    port = 0\n  }\n"
        "}\n"
        "service stats {\n  unix_listener stats-writer {\n    mode = 0666\n  }\n}\n"
    )
    # Dovecot goes into the background: no pipes for it to keep open.
    subprocess.run(
        ["dovecot", "-c", str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
    )
    pid: int | None = None
    try:
        wait_port(port)
        pid = int((base / "run" / "master.pid").read_text().strip())
        yield Target("dovecot", port, None)
    finally:
        subprocess.run(
            ["dovecot", "-c", str(conf), "stop"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        if pid is None:
            with contextlib.suppress(OSError, ValueError):
                pid = int((base / "run" / "master.pid").read_text().strip())
        if pid is not None:
            stop(pid, 15)


# --- replicad -------------------------------------------------------------------------


def imap_port(config: Path) -> int:
    doc = tomllib.loads(config.read_text())
    host, _, port = doc["imap"]["listen"].rpartition(":")
    assert host == "127.0.0.1", doc["imap"]
    return int(port)


def allow_many_sessions(config: Path) -> None:
    """Raise the per-user and per-IP session limits: a bench's clients are one user, one IP."""
    listen = tomllib.loads(config.read_text())["imap"]["listen"]
    line = f'listen = "{listen}"\n'
    text = config.read_text()
    assert text.count(line) == 1, line
    config.write_text(
        text.replace(line, line + "max_sessions_per_user = 5000\nmax_sessions_per_ip = 5000\n")
    )


def add_users(config: Path, users_lines: dict[str, str]) -> None:
    """The same passwd-file lines Dovecot gets (``{SCHEME}hash`` fields)."""
    doc = tomllib.loads(config.read_text())
    users = config.parent / doc["auth"]["passwd_file"]
    with users.open("a") as f:
        f.write("".join(f"{u}:{pw}\n" for u, pw in users_lines.items()))


def hashed_password(work: Path) -> str:
    """The password field ``replicad user add`` writes for PASSWORD (its default scheme)."""
    scratch = work / "hash-node"
    run(*RD, "init", scratch, "--name", "h1", "--port", str(free_port()))
    config = scratch / "replicad.toml"
    run(
        *RD,
        "-c",
        config,
        "user",
        "add",
        "someone",
        "--password-stdin",
        input=f"{PASSWORD}\n".encode(),
    )
    users = config.parent / str(tomllib.loads(config.read_text())["auth"]["passwd_file"])
    [line] = [ln for ln in users.read_text().splitlines() if ln.startswith("someone:")]
    shutil.rmtree(scratch)
    return line.split(":")[1]


# ``python -c PROFILED OUT ARGS...`` runs ``replicad ARGS...`` with a profiler in
# every thread: the store's reads run in worker threads (trio.to_thread), which
# ``python -m cProfile`` would not see.  The merged stats go to OUT at exit.
PROFILED = """
import cProfile, pstats, runpy, sys, threading
out, sys.argv = sys.argv[1], ["replicad", *sys.argv[2:]]
profiles, lock, original = [], threading.Lock(), threading.Thread.run
def run(self):
    p = cProfile.Profile()
    with lock:
        profiles.append(p)
    p.runcall(original, self)
threading.Thread.run = run
main = cProfile.Profile()
try:
    main.runcall(runpy.run_module, "replicad", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    stats = pstats.Stats(main)
    with lock:
        for p in profiles:
            stats.add(pstats.Stats(p))
    stats.dump_stats(out)
"""


@contextlib.contextmanager
def replicad_node(
    work: Path, corpus: Path, users_lines: dict[str, str], profile: Path | None
) -> Iterator[Target]:
    """One node holding the corpus; under ``profile``, restarted profiled after the import
    (so the profile holds the measurements only)."""
    directory = work / "node"
    run(*RD, "init", directory, "--name", "n1", "--port", str(free_port()))
    config = directory / "replicad.toml"
    allow_many_sessions(config)
    add_users(config, users_lines)
    serve = ["serve", "-c", str(config)]
    port = imap_port(config)
    with serving(directory, [*RD, *serve], port):
        start = time.perf_counter()
        run(*RD, "-c", config, "import", "-u", USER, corpus / USER / "Maildir")
        print(f"  replicad import of the corpus: {time.perf_counter() - start:.1f} s", flush=True)
        if profile is None:
            yield Target("replicad", port, _serving_pid(directory))
            return
    profiled = [sys.executable, "-c", PROFILED, str(profile), *serve]
    with serving(directory, profiled, port):
        yield Target("replicad", port, _serving_pid(directory))


@contextlib.contextmanager
def restarted(directory: Path) -> Iterator[Target]:
    """The node of :func:`replicad_node`, started anew on its data (a fresh process)."""
    config = directory / "replicad.toml"
    port = imap_port(config)
    with serving(directory, [*RD, "serve", "-c", str(config)], port):
        yield Target("replicad", port, _serving_pid(directory))


def _serving_pid(directory: Path) -> int:
    return int((directory / "bench.pid").read_text())


@contextlib.contextmanager
def serving(directory: Path, command: list[str], port: int) -> Iterator[None]:
    """``command`` (a node's ``serve``) running until the block ends; its pid in bench.pid."""
    with (directory / "serve.log").open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    (directory / "bench.pid").write_text(str(proc.pid))
    try:
        wait_port(port)
        yield
    finally:
        proc.terminate()  # our child: wait() reaps it (a zombie still answers kill -0)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def replicad_cluster(work: Path, users_lines: dict[str, str], level: str) -> Iterator[Target]:
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
            allow_many_sessions(config)
            add_users(config, users_lines)
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
        port = imap_port(directory / "n1" / "replicad.toml")
        wait_port(port)
        yield Target(level, port, None)
    finally:
        subprocess.run([*RD, "cluster", "down", str(directory)], capture_output=True, check=False)
        for pidfile in directory.glob("n*/data/replicad.pid"):
            with contextlib.suppress(OSError, ValueError):
                stop(int(pidfile.read_text().strip()), 10)


# --- the measurements -----------------------------------------------------------------


def reads(target: Target) -> dict[str, float]:
    """One pass of the read commands on W1's INBOX, each timed."""
    client = Client(target.port)
    try:
        client.login(USER)
        select_s, selected = timed(client, b"SELECT INBOX")
        exists = next(int(ln.split()[1]) for ln in selected.untagged if ln.endswith(b" EXISTS\r\n"))
        meta_s, meta = timed(client, b"UID FETCH 1:* (UID FLAGS RFC822.SIZE INTERNALDATE)")
        fetched = sum(1 for ln in meta.untagged if b" FETCH " in ln)
        body_s, body = timed(client, b"FETCH 1:* BODY.PEEK[]")
        header_s, header = timed(client, b"UID SEARCH HEADER Subject x")
        unseen_s, unseen = timed(client, b"UID SEARCH UNSEEN")
        client.run(b"LOGOUT", ok=False)
    finally:
        client.close()
    if fetched != exists or body.literals != exists:
        raise RuntimeError(f"{target.name}: {exists} messages, {fetched} FETCH, {body.literals}")
    hits = sum(len(ln.split()) - 2 for ln in unseen.untagged if ln.startswith(b"* SEARCH"))
    return {
        "messages": exists,
        "select_ms": select_s * 1000,
        "uid_fetch_meta_ms": meta_s * 1000,
        "body_mb": body.literal_bytes / 1e6,
        "body_mb_s": body.literal_bytes / 1e6 / body_s,
        "search_header_ms": header_s * 1000,
        "search_unseen_ms": unseen_s * 1000,
        "unseen_hits": hits,
        "header_hits": sum(
            len(ln.split()) - 2 for ln in header.untagged if ln.startswith(b"* SEARCH")
        ),
    }


def appends(
    target: Target, mailbox: str, messages: Sequence[bytes], clients: int
) -> dict[str, float]:
    """``messages`` APPENDed into a new ``mailbox`` of APPENDER from ``clients`` connections."""
    setup = Client(target.port)
    setup.login(APPENDER)
    setup.run(f'CREATE "{mailbox}"'.encode())
    setup.run(b"LOGOUT", ok=False)
    setup.close()
    conns = []
    for _ in range(clients):
        c = Client(target.port)
        c.login(APPENDER)
        conns.append(c)
    queue = list(reversed(messages))
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    go = threading.Barrier(clients + 1)

    def worker(c: Client) -> None:
        go.wait()
        while True:
            with lock:
                if not queue:
                    return
                data = queue.pop()
            start = time.perf_counter()
            c.sock.sendall(
                b'b%d APPEND "%s" (\\Seen) {%d+}\r\n' % (c.counter + 1, mailbox.encode(), len(data))
                + data
                + b"\r\n"
            )
            c.counter += 1
            reply = c.read_until(b"b%d" % c.counter)
            with lock:
                latencies.append(time.perf_counter() - start)
                if b" OK" not in reply.status[:12]:
                    failures.append(reply.status.decode(errors="replace"))

    threads = [threading.Thread(target=worker, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for c in conns:
        c.close()
    if failures:
        raise RuntimeError(f"{target.name}: {len(failures)} APPENDs failed: {failures[:3]}")
    ordered = sorted(latencies)
    return {
        "appends_s": len(messages) / seconds,
        "append_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
    }


def stress(target: Target, imaptest: Path, clients: int, secs: int, work: Path) -> dict[str, float]:
    """imaptest's default stress mix; commands/s from its Totals, errors from its Error lines."""
    mbox = imaptest.parent / "tests" / "default.mbox"
    out = work / f"imaptest-{target.name}-{time.time_ns()}.log"
    with out.open("wb") as f:
        subprocess.run(
            [
                str(imaptest),
                "host=127.0.0.1",
                f"port={target.port}",
                f"user={STRESS}",
                f"pass={PASSWORD}",
                f"mbox={mbox}",
                f"clients={clients}",
                f"secs={secs}",
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
            timeout=secs + 300,
            cwd=work,
        )
    text = out.read_text(errors="replace")
    lines = text.splitlines()
    totals = lines.index("Totals:") if "Totals:" in lines else None
    if totals is None:
        raise RuntimeError(f"{target.name}: imaptest printed no Totals (see {out})")
    counts = [int(x) for x in lines[totals + 4].split()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    for e in errors[:3]:
        print(f"    {target.name} imaptest: {e[:150]}")
    return {"commands_s": sum(counts) / secs, "stress_errors": len(errors)}


def idle_memory(target: Target, sessions: int, mailbox: str = "INBOX") -> dict[str, float]:
    """RSS of the node before and with ``sessions`` sessions in IDLE on ``mailbox`` of W1."""
    assert target.pid is not None
    select = f'SELECT "{mailbox}"'.encode()
    warm = Client(target.port)
    warm.login(USER)
    warm.run(select)
    warm.run(b"LOGOUT", ok=False)
    warm.close()
    time.sleep(2)
    base = rss_kib(target.pid)
    conns: list[Client] = []
    start = time.perf_counter()
    try:
        batch = 50  # pipelined: LOGIN and SELECT, answered while the others' are sent
        for i in range(0, sessions, batch):
            group = [Client(target.port) for _ in range(min(batch, sessions - i))]
            conns += group
            tags = [
                (c, c.send(f'LOGIN "{USER}" "{PASSWORD}"'.encode()), c.send(select)) for c in group
            ]
            for c, login_tag, select_tag in tags:
                for tag in (login_tag, select_tag):
                    status = c.read_until(tag).status
                    if b" OK" not in status[:12]:
                        raise RuntimeError(f"idle session: {status!r}")
                c.send(b"IDLE")
                line = c.reader.readline()
                if not line.startswith(b"+"):
                    raise RuntimeError(f"IDLE: {line!r}")
        opened = time.perf_counter() - start
        time.sleep(3)
        with_sessions = rss_kib(target.pid)
    finally:
        for c in conns:
            with contextlib.suppress(OSError):
                c.sock.sendall(b"DONE\r\n")
            c.close()
    return {
        "rss_base_mib": base / 1024,
        "rss_idle_mib": with_sessions / 1024,
        "kib_per_session": (with_sessions - base) / sessions,
        "open_sessions_s": opened,
    }


# --- the run --------------------------------------------------------------------------


TARGETS_FOR = {  # (figure, the better direction, target ratio to Dovecot)
    "select_ms": ("<=", 2.0),
    "uid_fetch_meta_ms": ("<=", 2.0),
    "body_mb_s": (">=", 0.5),
    "appends_s": (">=", 1.0),
    "commands_s": (">=", 0.5),
}
RATIO_ONLY = ("search_header_ms", "search_unseen_ms", "append_p99_ms")
UNITS = {
    "select_ms": "ms",
    "uid_fetch_meta_ms": "ms",
    "body_mb_s": "MB/s",
    "search_header_ms": "ms",
    "search_unseen_ms": "ms",
    "appends_s": "/s",
    "append_p99_ms": "ms",
    "commands_s": "/s",
    "stress_errors": "",
    "kib_per_session": "KiB",
    "rss_base_mib": "MiB",
    "rss_idle_mib": "MiB",
}


def record(
    results: dict[str, dict[str, list[float]]], name: str, figures: dict[str, float]
) -> None:
    print(f"  {name:9} " + "  ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    for key, value in figures.items():
        results.setdefault(name, {}).setdefault(key, []).append(value)


def report(results: dict[str, dict[str, list[float]]], runs: int) -> dict[str, object]:
    med = {n: {k: statistics.median(v) for k, v in figs.items()} for n, figs in results.items()}
    anchor = med.get("dovecot", {})
    print(f"\nW7, median of {runs} run(s):")
    print(f"  {'figure':20} {'dovecot':>10} {'replicad':>10} {'quorum':>10}  ratio (target)")
    ratios: dict[str, float] = {}
    for key, unit in UNITS.items():
        row = [med.get(n, {}).get(key) for n in ("dovecot", "replicad", "quorum")]
        if all(v is None for v in row):
            continue
        cells = " ".join(f"{'-' if v is None else f'{v:.1f}':>10}" for v in row)
        note = ""
        if key in TARGETS_FOR and anchor.get(key):
            way, goal = TARGETS_FOR[key]
            for n, v in zip(("replicad", "quorum"), row[1:], strict=True):
                if v is None:
                    continue
                ratios[f"{n}.{key}"] = r = v / anchor[key]
                met = r <= goal if way == "<=" else r >= goal
                note += f" {n} {r:.2f}x ({way} {goal}x {'ok' if met else 'MISSED'})"
        elif key in RATIO_ONLY and anchor.get(key) and row[1] is not None:
            ratios[f"replicad.{key}"] = r = row[1] / anchor[key]
            note = f" replicad {r:.2f}x (no target)"
        elif key == "kib_per_session" and row[1] is not None:
            note = f" ({'ok' if row[1] <= 100 else 'MISSED'}: target <= 100 KiB)"
        elif key == "stress_errors" and row[1] is not None:
            note = f" ({'ok' if row[1] == 0 else 'MISSED'}: target 0)"
        print(f"  {key + (' ' + unit if unit else ''):20} {cells} {note}")
    return {"medians": med, "ratios": ratios}


def print_profile(profile: Path) -> None:
    import pstats

    print(f"\nreplicad node under cProfile, every thread ({profile}), top by own time:")
    stats = pstats.Stats(str(profile))
    stats.sort_stats("tottime").print_stats(25)
    print("top by cumulative time:")
    stats.sort_stats("cumulative").print_stats(40)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10000, help="W1's size (all of it: 10000)")
    ap.add_argument("--corpus", type=Path, help="an existing gen_corpus.py OUT (W1's options)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--appends", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=10, help="APPEND connections")
    ap.add_argument("--stress-clients", type=int, default=50)
    ap.add_argument("--stress-secs", type=int, default=30)
    ap.add_argument("--idle-sessions", type=int, default=500)
    ap.add_argument("--idle-mailbox", default="INBOX", help="what the IDLE sessions select")
    ap.add_argument(
        "--imaptest",
        type=Path,
        default=os.environ.get("IMAPTEST") or None,
        help="imaptest binary (default $IMAPTEST; absent: no stress part)",
    )
    ap.add_argument(
        "--hashed-stress-password",
        action="store_true",
        help="imaptest's user as `replicad user add` stores it (ARGON2ID) in both "
        "servers, not {PLAIN}",
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: small counts, one run")
    ap.add_argument("--only", default=",".join(PHASES), help=f"phases, of {','.join(PHASES)}")
    ap.add_argument("--profile", type=Path, help="cProfile output of the single node")
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go (default: TMPDIR)")
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--no-cluster", action="store_true", help="skip the 3-node quorum APPENDs")
    a = ap.parse_args()
    if a.quick:
        a.messages, a.runs, a.appends, a.stress_clients = min(a.messages, 1000), 1, 100, 10
        a.stress_secs, a.idle_sessions = 5, 50
    phases = set(a.only.split(","))
    if phases - set(PHASES):
        ap.error(f"--only: unknown {phases - set(PHASES)}")
    use_dovecot = not a.no_dovecot
    if use_dovecot and shutil.which("dovecot") is None:
        print("dovecot not found: install dovecot-core dovecot-imapd, or --no-dovecot")
        return 69
    imaptest: Path | None = a.imaptest
    if "stress" in phases and (imaptest is None or not imaptest.is_file()):
        print(f"imaptest not found ({imaptest or 'give --imaptest or $IMAPTEST'}): no stress part")
        phases.discard("stress")
    with tempfile.TemporaryDirectory(prefix="replicad-w7-", dir=a.dir) as tmp:
        work = Path(tmp)
        corpus = a.corpus or make_corpus(work, a.messages)
        appended = corpus_messages(corpus, a.appends)
        inbox = corpus / USER / "Maildir"
        inbox_files = [p for d in ("cur", "new") for p in (inbox / d).iterdir()]
        stress_pw = hashed_password(work) if a.hashed_stress_password else "{PLAIN}" + PASSWORD
        users = {USER: "{PLAIN}" + PASSWORD, APPENDER: "{PLAIN}" + PASSWORD, STRESS: stress_pw}
        print(
            f"W7: INBOX of {len(inbox_files)} messages "
            f"({sum(p.stat().st_size for p in inbox_files) / 1e6:.0f} MB); phases "
            + "; ".join(
                {
                    "reads": "SELECT/FETCH/SEARCH",
                    "appends": f"{a.appends} APPENDs from {a.clients} clients",
                    "stress": f"imaptest {a.stress_clients} clients {a.stress_secs} s "
                    f"(password {stress_pw.split('}')[0]}}})",
                    "memory": f"{a.idle_sessions} IDLE sessions on {a.idle_mailbox}",
                }[p]
                for p in PHASES
                if p in phases
            )
            + "; "
            f"{os.cpu_count()} CPUs, stores in {work}",
            flush=True,
        )
        results: dict[str, dict[str, list[float]]] = {}
        with contextlib.ExitStack() as stack:
            targets: list[Target] = []
            if use_dovecot:
                targets.append(stack.enter_context(dovecot(work, corpus, users)))
            targets.append(stack.enter_context(replicad_node(work, corpus, users, a.profile)))
            cluster: Target | None = None
            if "appends" in phases and not a.no_cluster:
                cluster = stack.enter_context(replicad_cluster(work, users, "quorum"))
            if "reads" in phases:
                for t in targets:  # warm-up: Dovecot's index, the page cache
                    reads(t)
            for n in range(a.runs):
                if phases - {"memory"}:
                    print(f"run {n + 1}:", flush=True)
                if "reads" in phases:
                    for t in targets:
                        record(results, t.name, reads(t))
                if "appends" in phases:
                    for t in [*targets, *([cluster] if cluster else [])]:
                        record(results, t.name, appends(t, f"Bench{n}", appended, a.clients))
                if "stress" in phases and imaptest is not None:
                    for t in targets:
                        record(
                            results,
                            t.name,
                            stress(t, imaptest, a.stress_clients, a.stress_secs, work),
                        )
        # Memory on a node of its own per run, nothing else running: CPython keeps
        # the memory of closed sessions for reuse, so a second measurement in the
        # same process would find its sessions' memory already there.
        if "memory" in phases:
            print("memory:", flush=True)
            for _ in range(a.runs):
                with restarted(work / "node") as node:
                    record(results, node.name, idle_memory(node, a.idle_sessions, a.idle_mailbox))
        summary = report(results, a.runs)
        print(
            json.dumps(
                {
                    "bench": "W7",
                    "runs": a.runs,
                    "quick": a.quick,
                    "messages": len(inbox_files),
                    "phases": sorted(phases),
                    **summary,
                }
            )
        )
    if a.profile:
        print_profile(a.profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
