"""A local development cluster on disk: its node directories and their processes.

What ``replicad cluster up | down | status`` (:mod:`replicad.cli.cluster_cmd`)
and the fault commands ``kill | restart`` (:mod:`replicad.cli.chaos_cmd`)
share: finding the nodes ``DIR/n1..nN`` of a cluster directory, telling
whether a node's process runs, starting one detached and waiting until it
answers on its admin socket, stopping some with SIGTERM then SIGKILL.

A node is "running" when the pid in its lock file (``DATA_DIR/replicad.pid``)
is a live ``replicad serve`` process of *this* node's config: a pid file
left by a killed node may name a pid the kernel has since given to another
process, which must never be signalled.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from replicad.admin.client import AdminClient
from replicad.cli.node_cmds import CONFIG_NAME
from replicad.config import NodeConfig, load_config
from replicad.errors import (
    BadInputError,
    NotFoundError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
)
from replicad.processes import signal_if

LOG_NAME = "replicad.log"
DEFAULT_NODES = 3
# How long `up` waits for every node to answer, and `down` for each to exit
# after SIGTERM; the node's own shutdown grace (node.SHUTDOWN_GRACE) is 10 s.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 20

_NODE_DIR = re.compile(r"n([1-9][0-9]*)")


# --- the cluster directory ------------------------------------------------------


@dataclass(frozen=True)
class LocalNode:
    """Node nK of a local cluster's directory: where its files are, and its config.

    A directory on this machine and the ``replicad serve`` process started
    from it; not the engine's view of a peer."""

    name: str
    directory: Path
    config: NodeConfig

    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_NAME

    @property
    def port(self) -> int:
        return self.config.listen.port


def node_names(count: int) -> list[str]:
    return [f"n{k}" for k in range(1, count + 1)]


def find_nodes(directory: Path) -> list[LocalNode]:
    """The nodes of the cluster in ``directory`` (empty if it holds none), configs validated.

    A cluster is n1..nN with no gap: a gap means a node directory was removed
    by hand, and guessing what the operator wanted could restart the wrong set.
    """
    numbers: list[int] = []
    if directory.is_dir():
        for entry in directory.iterdir():
            match = _NODE_DIR.fullmatch(entry.name)
            if match and (entry / CONFIG_NAME).is_file():
                numbers.append(int(match.group(1)))
    numbers.sort()
    if numbers != list(range(1, len(numbers) + 1)):
        found = ", ".join(f"n{k}" for k in numbers)
        raise BadInputError(
            f"{directory} holds node configs for {found}, not n1..nN; fix or remove the directory"
        )
    return [
        LocalNode(name, directory / name, load_config(directory / name / CONFIG_NAME))
        for name in node_names(len(numbers))
    ]


def require_cluster(directory: Path) -> list[LocalNode]:
    nodes = find_nodes(directory)
    if not nodes:
        raise NotFoundError(
            f"no cluster in {directory} (no n1/{CONFIG_NAME}); "
            f"create one with `replicad cluster up -n {DEFAULT_NODES} {directory}`"
        )
    return nodes


# --- processes --------------------------------------------------------------------


def read_pid(config: NodeConfig) -> int | None:
    """The pid written in the node's lock file, or None (absent, empty after a clean stop)."""
    try:
        text = config.lock_path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() and int(text) > 0 else None


def is_node_process(pid: int, config_path: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) ``replicad serve`` of ``config_path``.

    A process started some other way (``$REPLICAD_CONFIG``, no ``-c``) is
    accepted on ``replicad serve`` alone; with ``-c`` its config must be ours,
    so a stale pid reused by a node of another cluster is left alone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process: not a node we started
    proc = Path("/proc") / str(pid)
    try:
        # A zombie still answers kill(0) but has exited: its state is 'Z'.
        stat_text = (proc / "stat").read_text(errors="replace")
        if stat_text.rpartition(")")[2].split()[:1] == ["Z"]:
            return False
        argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
    except OSError:
        return False
    argv = [a for a in argv if a]
    if "serve" not in argv or not any(Path(a).name == "replicad" for a in argv):
        return False
    given = _config_argument(argv)
    if given is None:
        return True
    path = Path(given)
    if not path.is_absolute():
        try:
            path = Path(os.readlink(proc / "cwd")) / path
        except OSError:
            return False
    try:
        return path.resolve() == config_path.resolve()
    except OSError:
        return False


def _config_argument(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
        if arg.startswith("-c") and len(arg) > 2:
            return arg[2:]
    return None


def running_pid(node: LocalNode) -> int | None:
    """The pid of the node's live process, or None if it is stopped."""
    pid = read_pid(node.config)
    if pid is not None and is_node_process(pid, node.config_path):
        return pid
    return None


def start_node(node: LocalNode) -> subprocess.Popen[bytes]:
    """Start ``replicad serve`` for ``node``, detached, output appended to its log.

    A new session: the node must outlive this command and not receive the
    terminal's Ctrl-C meant for it.  stdin/stdout/stderr are never this
    command's own, or a caller reading our output would wait for the nodes.
    """
    with node.log_path.open("ab") as log:
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "replicad", "serve", "-c", str(node.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=node.directory,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise ReplicadError(f"cannot start node {node.name}: {exc}") from None


def signal_node(pid: int, node: LocalNode, signum: int) -> bool:
    """Send ``signum`` to ``pid`` if it still is ``node``'s process; False if it is gone."""
    return signal_if(pid, lambda: is_node_process(pid, node.config_path), signum)


def stop_processes(targets: Sequence[tuple[LocalNode, int]]) -> dict[str, str]:
    """SIGTERM every (node, pid), SIGKILL those alive after :data:`STOP_TIMEOUT`.

    All nodes are signalled first and waited for together, so stopping N
    nodes takes one grace period, not N.  Returns node name -> what happened.
    """
    result: dict[str, str] = {}
    waiting: list[tuple[LocalNode, int]] = []
    for node, pid in targets:
        if signal_node(pid, node, signal.SIGTERM):
            waiting.append((node, pid))
        else:
            result[node.name] = "already stopped"
    for node, _pid in waiting:
        result[node.name] = "stopped"
    for node, pid in _wait_gone(waiting, STOP_TIMEOUT):
        signal_node(pid, node, signal.SIGKILL)
        result[node.name] = "killed"
    waiting = [(n, p) for n, p in waiting if result[n.name] == "killed"]
    for node, pid in _wait_gone(waiting, KILL_TIMEOUT):
        result[node.name] = f"still running after SIGKILL (pid {pid})"
    return result


def _wait_gone(
    targets: Sequence[tuple[LocalNode, int]], timeout: float
) -> list[tuple[LocalNode, int]]:
    deadline = time.monotonic() + timeout
    alive = list(targets)
    while alive:
        alive = [(n, p) for n, p in alive if is_node_process(p, n.config_path)]
        if not alive or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return alive


def log_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``path`` written after byte ``offset``."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    text = data.decode(errors="replace").rstrip("\n")
    if not text:
        return "(the log is empty)"
    return "\n".join(text.splitlines()[-lines:])


# --- starting and waiting ----------------------------------------------------------


def start_and_wait(nodes: Sequence[LocalNode]) -> dict[str, subprocess.Popen[bytes]]:
    """Start ``nodes`` and wait until each answers ``ping``; on failure stop them again.

    Raises :class:`UnreachableError` (exit 69) naming the first node that
    exited or did not answer within :data:`READY_TIMEOUT`, with the end of
    what it logged during this start.
    """
    offsets = {node.name: _size(node.log_path) for node in nodes}
    started: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for node in nodes:
            started[node.name] = start_node(node)
        deadline = time.monotonic() + READY_TIMEOUT
        for node in nodes:
            _wait_ready(node, started[node.name], deadline, offsets[node.name])
    except BaseException:
        stop_processes([(n, started[n.name].pid) for n in nodes if n.name in started])
        for proc in started.values():
            # Our own children: reap them so they do not linger as zombies.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_TIMEOUT)
        raise
    return started


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _wait_ready(
    node: LocalNode, proc: subprocess.Popen[bytes], deadline: float, log_offset: int
) -> None:
    while True:
        code = proc.poll()
        if code is not None:
            raise UnreachableError(
                f"node {node.name} exited with status {code} during start-up; "
                f"end of {node.log_path}:\n{log_tail(node.log_path, log_offset)}"
            )
        try:
            with AdminClient(node.config.node.admin_socket, timeout=2.0) as client:
                answer = client.call("ping")
            if isinstance(answer, dict) and answer.get("node") == node.name:
                return
        except (UnreachableError, TemporaryError):
            pass  # not listening yet
        if time.monotonic() >= deadline:
            raise UnreachableError(
                f"node {node.name} did not answer on {node.config.node.admin_socket} "
                f"within {READY_TIMEOUT:g}s; end of {node.log_path}:\n"
                f"{log_tail(node.log_path, log_offset)}"
            )
        time.sleep(POLL_INTERVAL)
