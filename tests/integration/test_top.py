"""``replicad top`` against real nodes (issue 7, part 1).

``top --once`` on a real 3-node cluster (``replicad cluster up -n 3``) shows
the root, every node, and — with one peer stopped and a few messages saved
meanwhile — that peer unreachable with a non-zero outbox; a stopped node
exits 69.  The live console, on a pseudo-terminal, quits on ``q``, Ctrl-C
(SIGINT) and SIGTERM with exit 0 and leaves the terminal as it found it.

Every process is stopped by pid in the fixtures (``LocalCluster.stop_all``,
``NodeProcess.stop``), whatever the test did; everything is on 127.0.0.1
with ports chosen by the kernel.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REPLICAD, NodeProcess
from tests.integration.test_cluster_replication import NODES, LocalCluster

pytestmark = pytest.mark.slow

#: Bounds waiting only (a frame to appear, a process to exit); never asserted.
LIMIT = 20.0


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("tp"))  # short: socket paths <= 107 bytes
    try:
        yield c
    finally:
        c.stop_all()


def row_of(text: str, node: str) -> list[str]:
    """The cells of ``node``'s row in a ``top`` table (rows start with the node
    name; a "NODE catching up: ..." line under the table is not a row)."""
    rows = [
        line.split()
        for line in text.splitlines()
        if line.split()[:1] == [node] and line.split()[1:2] != ["catching"]
    ]
    assert len(rows) == 1, f"no single row for {node} in:\n{text}"
    return rows[0]


def test_once_shows_the_root_every_node_and_the_outbox_of_a_stopped_peer(
    cluster: LocalCluster,
) -> None:
    cluster.up("-n", "3")
    root, epoch = cluster.wait_root()
    # Stop a node that is not the root (no failover needed); save through
    # another survivor, which masters the new user's mailbox and logs for it.
    stopped = next(n for n in reversed(NODES) if n != root)
    writer = next(n for n in NODES if n not in (root, stopped))

    up = cluster.json_on(writer, "top", "--once", "--interval", "0.2")
    assert up["root"] == root and up["epoch"] == epoch
    assert [n["name"] for n in up["nodes"]] == [writer, *sorted(set(NODES) - {writer})]
    assert all(n["reachable"] for n in up["nodes"]) and up["warnings"] == []
    assert up["cluster_size"] == 3 and up["max_outbox"] == 100000
    assert up["durability"] == "local"

    cluster.stop_node(stopped)
    for i in range(3):
        cluster.save(writer, "carol", f"while-{stopped}-down-{i}")

    def probe() -> tuple[bool, Any]:
        frame = cluster.json_on(writer, "top", "--once", "--interval", "0")
        [row] = [n for n in frame["nodes"] if n["name"] == stopped]
        return (not row["reachable"] and (row["outbox"] or 0) >= 3), frame

    frame = cluster.wait_until(f"{writer} sees {stopped} unreachable with an outbox", probe)
    assert ("unreachable", stopped) in [(w["kind"], w["subject"]) for w in frame["warnings"]]
    assert frame["root"] == root

    # The screen itself, as a script sees it (stdout is a pipe: no colours).
    result = cluster.cli("-c", cluster.config(writer), "top", "--once")
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    text = result.stdout.decode()
    assert "\x1b[" not in text
    assert f"root {root}  epoch {epoch}" in text
    for node in NODES:
        row_of(text, node)
    cells = row_of(text, stopped)
    # node role link reach via imap rtt masters outbox ...
    assert cells[2:5] == ["down", "no", "-"], cells
    assert int(cells[8]) >= 3, cells
    assert f"! {stopped} unreachable, " in text
    assert "self" in row_of(text, writer)[1]

    # The stopped node itself: node unreachable (docs/architecture.md §9).
    gone = cluster.cli("-c", cluster.config(stopped), "top", "--once")
    assert gone.returncode == 69, gone.stderr
    assert b"node unreachable" in gone.stderr


def test_save_rate_is_measured_between_two_samples(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    root, _epoch = cluster.wait_root()
    stop = time.monotonic() + 4.0

    def saves() -> None:
        i = 0
        while time.monotonic() < stop:
            cluster.save(root, "dave", f"rate-{i}")
            i += 1

    saver = threading.Thread(target=saves)
    saver.start()
    try:
        time.sleep(0.5)
        frame = cluster.json_on(root, "top", "--once", "--interval", "2")
    finally:
        saver.join()
    assert frame["rates"]["saves"] is not None and frame["rates"]["saves"] > 0, frame["rates"]
    assert frame["rates"]["changes_sent"] > 0, frame["rates"]


# --- the live console on a pseudo-terminal ----------------------------------------


def _read_until(fd: int, needle: bytes, count: int = 1, limit: float = LIMIT) -> bytes:
    seen = b""
    deadline = time.monotonic() + limit
    while seen.count(needle) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not shown within {limit:g}s; got {seen[-500:]!r}"
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the other end is gone
                break
    return seen


@pytest.mark.parametrize("how", ["q", "SIGINT", "SIGTERM"])
def test_live_console_quits_cleanly_and_restores_the_terminal(node: NodeProcess, how: str) -> None:
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(
        [*REPLICAD, "-c", str(node.config), "top", "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    try:
        shown = _read_until(master, b"q or Ctrl-C quits")
        assert b"\x1b[?1049h" in shown  # the alternate screen
        assert b"seen from n1" in shown
        # While it runs, the terminal is in cbreak mode (no echo, no line editing).
        assert not termios.tcgetattr(slave)[3] & termios.ICANON
        shown += _read_until(master, b"seen from n1", count=2)  # a second frame
        if how == "q":
            os.write(master, b"q")
        else:
            os.kill(proc.pid, getattr(signal, how))
        # Keep reading while it quits, as a terminal does: a console whose
        # output nobody drains blocks in write() once the pty buffer is full.
        rest = b""
        deadline = time.monotonic() + LIMIT
        while proc.poll() is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    rest += os.read(master, 65536)
                except OSError:
                    break
        assert proc.wait(timeout=1) == 0
        while select.select([master], [], [], 0.2)[0]:
            try:
                rest += os.read(master, 65536)
            except OSError:
                break
        assert b"\x1b[?1049l" in shown + rest  # back from the alternate screen
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_without_a_terminal_it_prints_a_frame_per_interval(node: NodeProcess) -> None:
    proc = subprocess.Popen(
        [*REPLICAD, "-c", str(node.config), "-f", "table", "top", "--interval", "0.2"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert first.startswith(b"replicad top"), first
        while not proc.stdout.readline().startswith(b"replicad top"):  # a second frame
            pass
        proc.stdin.write(b"q")
        proc.stdin.close()
        assert proc.wait(timeout=LIMIT) == 0
        assert b"\x1b[" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_single_node_shows_itself(node: NodeProcess) -> None:
    result = node.cli("-f", "json", "top", "--once", "--interval", "0")
    assert result.returncode == 0, result.stderr
    frame = json.loads(result.stdout)
    assert [n["name"] for n in frame["nodes"]] == ["n1"]
    assert frame["warnings"] == [] and frame["resyncs"] is None
