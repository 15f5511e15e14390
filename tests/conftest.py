"""Shared fixtures: a real ``replicad serve`` process driven through the command line.

Every process a test starts is stopped by PID in the fixture's teardown
(SIGTERM, then SIGKILL if it does not exit), whatever the test did.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replicad.admin.client import AdminClient
from replicad.errors import ReplicadError

REPLICAD = [sys.executable, "-m", "replicad"]
# Upper bound for a node to come up or go down; generous for slow CI machines.
# It only bounds waiting, it is never what a test asserts.
STARTUP_LIMIT = 60.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    """A live process, not a zombie (an orphaned node may never be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def run_cli(
    *args: str | Path, input: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``replicad ARGS`` to completion; stdout/stderr captured as bytes."""
    return subprocess.run(
        [*REPLICAD, *map(str, args)],
        input=input,
        capture_output=True,
        env=env,
        check=False,
        timeout=300,
    )


class NodeProcess:
    """One node directory made by ``replicad init`` and its ``serve`` process."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "replicad.toml"
        self.socket = directory / "admin.sock"
        self.log_path = directory / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def set_option(self, section: str, key: str, value: str) -> None:
        """Replace ``key = …`` in ``[section]`` of the config (value is TOML)."""
        lines = self.config.read_text().splitlines()
        current = ""
        for i, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith("["):
                current = stripped.strip("[]")
            elif current == section and stripped.split("=")[0].strip() == key:
                lines[i] = f"{key} = {value}"
                break
        else:
            raise KeyError(f"{section}.{key} not in {self.config}")
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*REPLICAD, "serve", "-c", str(self.config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_LIMIT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"node exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with AdminClient(self.socket, timeout=5) as client:
                    client.call("ping")
                return
            except ReplicadError:
                if time.monotonic() > deadline:
                    pytest.fail(f"node did not answer on {self.socket}:\n{self.log()}")
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process by PID and wait for it; SIGKILL if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=STARTUP_LIMIT)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def cli(self, *args: str | Path, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return run_cli("-c", self.config, *args, input=input)

    def client(self) -> AdminClient:
        return AdminClient(self.socket, timeout=60).connect()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def node_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[NodeProcess]]:
    """Make (not start) nodes with short paths: unix socket paths are limited to 107 bytes."""
    made: list[NodeProcess] = []

    class Factory(NodeProcess):
        def __init__(self, name: str = "n1") -> None:
            base = tmp_path_factory.mktemp("node")
            result = run_cli("init", base / name, "--name", name, "--port", str(free_port()))
            assert result.returncode == 0, result.stderr.decode()
            super().__init__(base / name)
            made.append(self)

    try:
        yield Factory
    finally:
        for node in made:
            if node.proc is not None:
                node.stop()  # SIGTERM by PID, SIGKILL if it does not exit


@pytest.fixture
def node(node_factory: type[NodeProcess]) -> NodeProcess:
    """A started single node, stopped by PID at teardown."""
    n = node_factory()
    n.start()
    return n
