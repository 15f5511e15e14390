"""``replicad cluster up | down | status`` end to end, with real node processes.

The nodes are started by the ``replicad cluster up`` subprocess, not by the
test, so the fixture finds them by the pid files the nodes write
(``DATA_DIR/replicad.pid``) and by every pid a command reported, and SIGKILLs
whatever is still alive at teardown, whatever the test did.

Orphaned nodes are re-parented to PID 1, which may never reap them: a zombie
counts as stopped here, as it does in ``cluster_cmd``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replicad.admin.client import AdminClient
from replicad.admin.framing import (
    FrameDecoder,
    decode_document,
    encode_frame,
    error_response,
    ok_response,
    parse_request,
)
from replicad.cli import cluster_cmd
from replicad.config import load_config
from replicad.errors import ProtocolError
from tests.conftest import alive, run_cli

NODES = ("n1", "n2", "n3")
MESSAGE = b"From: a@example.org\r\nTo: alice@example.net\r\nSubject: kept\r\n\r\nbody\r\n"


def pid_file(directory: Path, node: str) -> Path:
    return directory / node / "data" / "replicad.pid"


def pid_in_file(directory: Path, node: str) -> int | None:
    try:
        text = pid_file(directory, node).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() else None


class Cluster:
    """A cluster directory and every node pid seen in it."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pids: set[int] = set()

    def cli(self, *args: str | Path, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        result = run_cli(*args, input=input)
        self.remember()
        return result

    def remember(self) -> None:
        for node in NODES:
            pid = pid_in_file(self.dir, node)
            if pid is not None:
                self.pids.add(pid)

    def status(self) -> list[dict[str, Any]]:
        result = self.cli("-f", "json", "cluster", "status", self.dir)
        assert result.returncode == 0, result.stderr.decode()
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        for row in rows:
            if row["pid"] is not None:
                self.pids.add(row["pid"])
        return rows

    def config(self, node: str) -> Path:
        return self.dir / node / "replicad.toml"

    def kill_all(self) -> None:
        self.remember()
        for pid in self.pids:
            # Only a node of this directory: a stale pid may belong to anyone by now.
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if alive(pid) and os.fsencode(self.dir) in cmdline:
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A short base path: admin socket paths are limited to 107 bytes.
    c = Cluster(tmp_path_factory.mktemp("cl"))
    try:
        yield c
    finally:
        c.kill_all()


def test_up_status_down_restart_keeps_data(cluster: Cluster) -> None:
    up = cluster.cli("cluster", "up", "-n", "3", cluster.dir)
    assert up.returncode == 0, up.stderr.decode()
    assert f"-c {cluster.config('n1')} save -u alice" in up.stdout.decode()

    # Valid configs forming one cluster, with private keys that stay private.
    configs = {node: load_config(cluster.config(node)) for node in NODES}
    ports = {node: config.listen.port for node, config in configs.items()}
    assert len(set(ports.values())) == 3
    for node, config in configs.items():
        assert config.tls is not None and config.tls.cluster == "dev"
        assert {(p.name, p.host, p.port) for p in config.peers} == {
            (other, "127.0.0.1", ports[other]) for other in NODES if other != node
        }
        assert stat.S_IMODE(config.tls.key.stat().st_mode) == 0o600
        assert stat.S_IMODE((cluster.dir / "pki" / f"{node}.key").stat().st_mode) == 0o600
        # Each node its own empty passwd-file, as `replicad init` makes one.
        assert config.auth.passwd_file == cluster.dir.resolve() / node / "users"
        assert config.auth.passwd_file.read_bytes() == b""
        assert stat.S_IMODE(config.auth.passwd_file.stat().st_mode) == 0o600
        with AdminClient(config.node.admin_socket, timeout=10) as client:
            assert client.call("ping")["node"] == node
    assert stat.S_IMODE((cluster.dir / "pki" / "ca.key").stat().st_mode) == 0o600

    rows = cluster.status()
    assert [(r["node"], r["state"], r["port"]) for r in rows] == [
        (node, "running", ports[node]) for node in NODES
    ]
    first_pids = [r["pid"] for r in rows]
    assert all(alive(pid) for pid in first_pids)

    again = cluster.cli("cluster", "up", "-n", "3", cluster.dir)
    assert again.returncode == 65
    assert b"already running" in again.stderr

    save = cluster.cli("-c", cluster.config("n1"), "save", "-u", "alice", input=MESSAGE)
    assert save.returncode == 0, save.stderr.decode()

    down = cluster.cli("cluster", "down", cluster.dir)
    assert down.returncode == 0, down.stderr.decode()
    assert down.stdout.decode().count("stopped") == 3
    assert not any(alive(pid) for pid in first_pids)
    assert [(r["state"], r["pid"]) for r in cluster.status()] == [("stopped", None)] * 3

    # Restart: same configs, same certificates, same data.
    key_before = (cluster.dir / "n1" / "n1.key").read_bytes()
    restart = cluster.cli("-f", "json", "cluster", "up", cluster.dir)
    assert restart.returncode == 0, restart.stderr.decode()
    assert [r["state"] for r in json.loads(restart.stdout)] == ["started"] * 3
    assert (cluster.dir / "n1" / "n1.key").read_bytes() == key_before
    assert {n: load_config(cluster.config(n)).listen.port for n in NODES} == ports
    fetched = cluster.cli(
        "-c", cluster.config("n1"), "fetch", "-u", "alice", "text", "mailbox", "INBOX", "uid", "1"
    )
    assert fetched.returncode == 0, fetched.stderr.decode()
    assert fetched.stdout == MESSAGE

    second_pids = [r["pid"] for r in cluster.status()]
    assert all(alive(pid) for pid in second_pids)
    down = cluster.cli("-f", "json", "cluster", "down", cluster.dir)
    assert down.returncode == 0, down.stderr.decode()
    assert [r["result"] for r in json.loads(down.stdout)] == ["stopped"] * 3
    assert not any(alive(pid) for pid in second_pids)

    # Nothing left to stop is not an error.
    idle = cluster.cli("cluster", "down", cluster.dir)
    assert idle.returncode == 0, idle.stderr.decode()
    assert idle.stdout.decode().count("not running") == 3


def test_failed_start_reports_the_log_and_stops_the_others(cluster: Cluster) -> None:
    up = cluster.cli("cluster", "up", "-n", "2", cluster.dir)
    assert up.returncode == 0, up.stderr.decode()
    assert cluster.cli("cluster", "down", cluster.dir).returncode == 0
    # A regular file where n2's admin socket goes: n2 refuses to start.
    (cluster.dir / "n2" / "admin.sock").write_text("in the way\n")

    failed = cluster.cli("cluster", "up", cluster.dir)
    assert failed.returncode == 69
    assert b"node n2" in failed.stderr and b"is not a socket" in failed.stderr
    assert [r["state"] for r in cluster.status()] == ["stopped", "stopped"]


def test_stale_pid_file_never_signals_another_process(cluster: Cluster) -> None:
    up = cluster.cli("cluster", "up", "-n", "1", cluster.dir)
    assert up.returncode == 0, up.stderr.decode()
    assert cluster.cli("cluster", "down", cluster.dir).returncode == 0
    # A node killed -9 leaves its pid behind; the kernel may give it to anyone.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file(cluster.dir, "n1").write_text(f"{stranger.pid}\n")
        [row] = cluster.status()
        assert (row["state"], row["pid"]) == ("stopped", None)
        down = cluster.cli("cluster", "down", cluster.dir)
        assert down.returncode == 0, down.stderr.decode()
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_no_cluster_and_bad_arguments(tmp_path: Path) -> None:
    assert run_cli("cluster", "down", tmp_path).returncode == 68
    assert run_cli("cluster", "status", tmp_path).returncode == 68
    assert run_cli("cluster", "down", tmp_path / "missing").returncode == 68
    too_many = run_cli("cluster", "up", "-n", "11", tmp_path / "c")
    assert too_many.returncode == 64
    assert not (tmp_path / "c").exists()


def _answer_once(sock: socket.socket, response: dict[str, Any]) -> None:
    conn, _ = sock.accept()
    with conn:
        decoder = FrameDecoder(1 << 20)
        while (body := decoder.next_body()) is None:
            decoder.feed(conn.recv(4096))
        op, _args = parse_request(decode_document(body))
        assert op == "cluster_status"
        conn.sendall(encode_frame(response))


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (
            ok_response(
                {
                    "node": "n1",
                    "root": "n2",
                    "epoch": 3,
                    "peers": [
                        {"name": "n2", "link": "up", "reachable": True, "via": "n2", "outbox": 0},
                        {"name": "n3", "link": "down", "reachable": True, "via": "n2", "outbox": 7},
                    ],
                }
            ),
            ("n2", 3, "n2:up n3:down,via=n2,outbox=7"),
        ),
        # Right after `up`: linked, but the first election is not decided yet.
        (
            ok_response(
                {
                    "node": "n1",
                    "root": None,
                    "epoch": 0,
                    "peers": [{"name": "n2", "link": "up", "reachable": True, "via": "n2"}],
                }
            ),
            ("electing", 0, "n2:up"),
        ),
        (error_response(ProtocolError("unknown operation 'cluster_status'")), ("-", "-", "-")),
    ],
)
def test_status_shows_cluster_status_or_dashes(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    response: dict[str, Any],
    expected: tuple[Any, ...],
) -> None:
    # A stand-in node: the real cluster_status op is not in every node yet.
    directory = tmp_path_factory.mktemp("cs")
    [node] = cluster_cmd.create_cluster(directory, 1, None)
    monkeypatch.setattr(cluster_cmd, "running_pid", lambda _node: 4242)
    for fmt in ("table", "json"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(node.config.node.admin_socket))
            server.listen(1)
            answering = threading.Thread(target=_answer_once, args=(server, response))
            answering.start()
            row = cluster_cmd.status_row(node, fmt)
            answering.join(timeout=10)
        node.config.node.admin_socket.unlink()
        assert (row["state"], row["pid"]) == ("running", 4242)
        if fmt == "json":
            result = response.get("result") or {}
            assert (row["root"], row["epoch"], row["peers"]) == (
                result.get("root"),
                result.get("epoch"),
                result.get("peers"),
            )
        else:
            [shown] = cluster_cmd._dashes([row], fmt)
            assert (shown["root"], shown["epoch"], shown["peers"]) == expected


def test_each_node_gets_an_lmtp_port_shown_by_status(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path_factory.mktemp("lm")
    nodes = cluster_cmd.create_cluster(directory, 3, None)
    lmtp = {}
    for node in nodes:
        section = node.config.lmtp
        assert section is not None and section.tcp[0][0] == "127.0.0.1"
        lmtp[node.name] = section.port
    node_ports = {node.port for node in nodes}
    assert len(set(lmtp.values())) == 3 and not node_ports & set(lmtp.values())
    monkeypatch.setattr(cluster_cmd, "running_pid", lambda _node: None)
    for node in nodes:
        row = cluster_cmd.status_row(node, "json")
        assert (row["state"], row["lmtp"]) == ("stopped", lmtp[node.name])
    result = run_cli("cluster", "status", directory)
    assert result.returncode == 0, result.stderr.decode()
    header, *rows = result.stdout.decode().splitlines()
    assert header.split() == ["node", "state", "pid", "port", "lmtp", "root", "epoch", "peers"]
    assert [row.split()[4] for row in rows] == [str(lmtp[n]) for n in NODES]
