"""A fault-injecting TCP proxy on every node-to-node link of a local cluster (architecture.md §8).

``replicad cluster up --faults -n N DIR`` writes node configs whose peer
addresses point at this proxy instead of at the peers' real ports, and runs
one proxy process for the whole cluster::

    python -m replicad.faultproxy DIR        (started and stopped by `cluster up/down`)

For every ordered pair of nodes (A, B) the proxy listens on its own
127.0.0.1 port, written into A's config as B's address, and forwards the
bytes of each connection to B's real listen port, unchanged (the mutual TLS
of the link passes through end to end; the proxy never sees plaintext).
Only the pairs where A dials (A's name sorts first, see the cluster
runtime) carry traffic today; the other direction costs an idle listener
and keeps the proxy independent of that rule.

Faults, set with ``replicad cluster partition | heal | delay DIR ...``:

* **partition** into groups of nodes: a pair whose nodes are in different
  groups is cut at once, mid-stream (both sockets reset), and every new
  connection on it is reset as soon as it is accepted.  Nodes in no group
  form one more group together.
* **heal**: every pair is allowed again; the nodes re-dial as soon as a
  reachability probe gets through (within a fraction of a second; a probe
  that the proxy resets tells the dialler the pair is still cut).
* **delay MS**: each direction of every connection holds each chunk it
  reads for MS milliseconds before forwarding it, in order.

Files in ``DIR/proxy/``:

    routes.json   the routes, written once by ``cluster up --faults``:
                  {"routes": [{"source": "n1", "target": "n2", "listen": P, "port": Q}, ...]}
    faults.json   the fault state, rewritten by the proxy after each change and
                  read when it starts, so a restarted proxy keeps the partition
    ctl.sock      control socket: one JSON request line, one JSON answer line
                  ({"op": "state" | "heal"} | {"op": "partition", "groups": [[..], ..]}
                  | {"op": "delay", "ms": N}; answer {"ok": true, ...} or
                  {"ok": false, "error": "..."}); a command is answered only once
                  it is in force, so ``cluster partition`` returning means cut.
                  Every answer carries "bytes": per route name ("n1->n2") the
                  octets forwarded since the proxy started, {"to_target": N,
                  "to_source": M} (what the benchmarks count as bytes on the wire)
    proxy.pid     the running proxy's pid, locked (flock) while it runs
    proxy.log     its output

The decision logic (:class:`FaultState`, :func:`normalize_groups`,
:func:`plan_routes`) is pure; the trio server is :class:`Proxy`; the
functions at the end start, stop and talk to the process from the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from replicad.errors import (
    BadInputError,
    ReplicadError,
    UnreachableError,
    UsageError,
)
from replicad.processes import signal_if

log = logging.getLogger("replicad.faultproxy")

PROXY_DIR = "proxy"
ROUTES_NAME = "routes.json"
STATE_NAME = "faults.json"
SOCKET_NAME = "ctl.sock"
PID_NAME = "proxy.pid"
LOG_NAME = "proxy.log"
LISTEN_ADDRESS = "127.0.0.1"
MODULE = "replicad.faultproxy"

#: sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: Bytes read per chunk, and chunks queued per direction before reading
#: stops (backpressure): at most 4 MiB held per direction of a connection.
CHUNK = 65536
CHUNKS_QUEUED = 64
MAX_DELAY_MS = 60_000
#: A control request is one short JSON line.
MAX_REQUEST = 65536
CONTROL_TIMEOUT = 5.0
CONNECT_TIMEOUT = 5.0
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
POLL_INTERVAL = 0.05
LOG_TAIL_LINES = 20

_NODE_NUMBER = re.compile(r"n([0-9]+)")


# --- the pure part ----------------------------------------------------------------------


def node_order(name: str) -> tuple[int, str]:
    """Sort key putting n2 before n10 (names the cluster does not number go last)."""
    match = _NODE_NUMBER.fullmatch(name)
    return (int(match.group(1)), name) if match else (sys.maxsize, name)


def normalize_groups(
    groups: Sequence[Sequence[str]], nodes: Sequence[str]
) -> tuple[frozenset[str], ...]:
    """Validate a partition of ``nodes`` into ``groups``; the canonical form.

    Nodes named in no group form one more group together, so ``n1`` alone
    means "n1 | everybody else".  Fewer than two groups cut nothing and give
    ``()`` (the healed state).  Raises :class:`UsageError` for an unknown
    node, a node named twice, or an empty group.
    """
    known = set(nodes)
    seen: set[str] = set()
    result: list[frozenset[str]] = []
    for group in groups:
        if not group:
            raise UsageError("an empty group (a stray comma?)")
        for name in group:
            if name not in known:
                raise UsageError(
                    f"unknown node {name!r}; the cluster has "
                    f"{', '.join(sorted(known, key=node_order))}"
                )
            if name in seen:
                raise UsageError(f"node {name} is named twice")
            seen.add(name)
        result.append(frozenset(group))
    rest = known - seen
    if rest:
        result.append(frozenset(rest))
    if len(result) < 2:
        return ()
    return tuple(sorted(result, key=lambda g: min(node_order(n) for n in g)))


def parse_groups(words: Sequence[str], nodes: Sequence[str]) -> tuple[frozenset[str], ...]:
    """``["n1,n2", "n3"]`` (the command line's words) -> a normalized partition."""
    return normalize_groups([word.split(",") for word in words], nodes)


def describe_groups(groups: Sequence[frozenset[str]]) -> str:
    """``n1 | n2,n3`` (or ``none``), the form the command line takes."""
    if not groups:
        return "none"
    return " | ".join(",".join(sorted(g, key=node_order)) for g in groups)


@dataclass(frozen=True)
class FaultState:
    """What the proxy does to traffic: a partition (``()``: none) and a delay."""

    groups: tuple[frozenset[str], ...] = ()
    delay_ms: int = 0

    def allows(self, source: str, target: str) -> bool:
        """Whether a connection from ``source`` to ``target`` may exist."""
        if not self.groups:
            return True
        return self._group_of(source) == self._group_of(target)

    def _group_of(self, node: str) -> int:
        for i, group in enumerate(self.groups):
            if node in group:
                return i
        return -1  # in no group: with the other nodes in no group (normalize_groups)

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [sorted(g, key=node_order) for g in self.groups],
            "delay_ms": self.delay_ms,
        }

    @classmethod
    def from_json(cls, doc: Any, nodes: Sequence[str]) -> FaultState:
        """Parse :meth:`to_json`'s form; :class:`BadInputError` on anything else."""
        if not isinstance(doc, dict) or set(doc) - {"groups", "delay_ms"}:
            raise BadInputError("fault state: expected an object with groups and delay_ms")
        groups = doc.get("groups", [])
        delay = doc.get("delay_ms", 0)
        if not isinstance(groups, list) or not all(
            isinstance(g, list) and all(isinstance(n, str) for n in g) for g in groups
        ):
            raise BadInputError("fault state: groups must be lists of node names")
        try:
            check_delay(delay)
            normalized = normalize_groups(groups, nodes)
        except UsageError as exc:
            raise BadInputError(f"fault state: {exc}") from None
        return cls(normalized, delay)


def check_delay(delay: object) -> int:
    """``delay`` as milliseconds in 0..:data:`MAX_DELAY_MS`, else :class:`UsageError`."""
    if not isinstance(delay, int) or isinstance(delay, bool) or not 0 <= delay <= MAX_DELAY_MS:
        raise UsageError(f"delay must be a whole number of milliseconds in 0..{MAX_DELAY_MS}")
    return delay


@dataclass(frozen=True)
class Route:
    """Connections from ``source`` to ``target``: accepted on ``listen``, sent to ``port``."""

    source: str
    target: str
    listen: int
    port: int

    @property
    def name(self) -> str:
        return f"{self.source}->{self.target}"


def route_count(nodes: int) -> int:
    return nodes * (nodes - 1)


def plan_routes(ports: Mapping[str, int], listen_ports: Sequence[int]) -> list[Route]:
    """One route per ordered pair of the nodes in ``ports`` (node -> real port),
    taking the proxy's ports from ``listen_ports`` in order."""
    pairs = [(a, b) for a in ports for b in ports if a != b]
    if len(listen_ports) != len(pairs) or len(set(listen_ports)) != len(listen_ports):
        raise ValueError(f"{len(pairs)} distinct proxy ports needed, got {list(listen_ports)}")
    if set(listen_ports) & set(ports.values()):
        raise ValueError("a proxy port is also a node's port")
    return [
        Route(a, b, listen, ports[b]) for (a, b), listen in zip(pairs, listen_ports, strict=True)
    ]


def peer_ports(routes: Sequence[Route], node: str) -> dict[str, int]:
    """The port ``node`` must dial for each peer: that pair's proxy port."""
    return {r.target: r.listen for r in routes if r.source == node}


def nodes_of(routes: Sequence[Route]) -> list[str]:
    return sorted({r.source for r in routes} | {r.target for r in routes}, key=node_order)


# --- files -------------------------------------------------------------------------------


def proxy_dir(directory: Path) -> Path:
    return directory / PROXY_DIR


def socket_path(directory: Path) -> Path:
    return directory / PROXY_DIR / SOCKET_NAME


def is_proxied(directory: Path) -> bool:
    """Whether the cluster in ``directory`` was made with ``--faults``."""
    return (directory / PROXY_DIR / ROUTES_NAME).is_file()


def check_socket_path(directory: Path) -> None:
    """:class:`BadInputError` if the control socket's path is too long for a unix socket."""
    path = socket_path(directory.absolute())
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise BadInputError(
            f"{path} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes); "
            "use a shorter DIR"
        )


def _write_json(path: Path, doc: Any) -> None:
    # Renamed into place: a reader (or a proxy starting) never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_routes(directory: Path, routes: Sequence[Route]) -> None:
    """Create ``DIR/proxy/`` (it must not exist) with the routes file."""
    pdir = proxy_dir(directory)
    pdir.mkdir(mode=0o750)
    _write_json(
        pdir / ROUTES_NAME,
        {
            "routes": [
                {"source": r.source, "target": r.target, "listen": r.listen, "port": r.port}
                for r in routes
            ]
        },
    )


def load_routes(directory: Path) -> list[Route]:
    path = proxy_dir(directory) / ROUTES_NAME
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        routes = [
            Route(str(r["source"]), str(r["target"]), int(r["listen"]), int(r["port"]))
            for r in doc["routes"]
        ]
    except FileNotFoundError:
        raise BadInputError(f"{path} is missing: the cluster was not made with --faults") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"{path} is not a valid routes file: {exc}") from None
    if not routes:
        raise BadInputError(f"{path} lists no routes")
    return routes


def load_state(directory: Path, nodes: Sequence[str]) -> FaultState:
    """The saved fault state; none saved yet means no faults."""
    path = proxy_dir(directory) / STATE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return FaultState()
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return FaultState.from_json(json.loads(text), nodes)
    except (ValueError, BadInputError) as exc:
        raise BadInputError(f"{path}: {exc} (fix or remove the file)") from None


def save_state(directory: Path, state: FaultState) -> None:
    _write_json(proxy_dir(directory) / STATE_NAME, state.to_json())


# --- the proxy (trio) ----------------------------------------------------------------------


def _reset(sock: trio.socket.SocketType) -> None:
    """Close ``sock`` at once with a TCP reset, as a cut link looks to its ends.

    SO_LINGER 0 drops whatever is still queued instead of sending it: data
    must not trickle through a link that is cut.  Closing also wakes any task
    blocked on the socket (with ClosedResourceError).
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Connection:
    """One proxied connection: the dialling node's socket and the target's."""

    def __init__(self, route: Route, client: trio.SocketStream, server: trio.SocketStream) -> None:
        self.route = route
        self.client = client
        self.server = server
        self.scope = trio.CancelScope()
        self.cut_off = False

    def cut(self) -> None:
        """Reset both sockets now (synchronously: done when this returns)."""
        self.cut_off = True
        _reset(self.client.socket)
        _reset(self.server.socket)
        self.scope.cancel()


class Proxy:
    """Routes, the fault state, and the live connections it applies to."""

    def __init__(self, directory: Path, routes: Sequence[Route], state: FaultState) -> None:
        self.directory = directory
        self.routes = list(routes)
        self.nodes = nodes_of(routes)
        self.state = state
        self.connections: set[Connection] = set()
        #: Octets forwarded per route name: [source -> target, target -> source].
        self.forwarded: dict[str, list[int]] = {r.name: [0, 0] for r in self.routes}

    def byte_counts(self) -> dict[str, dict[str, int]]:
        """Octets forwarded per route since the proxy started, both directions."""
        return {
            name: {"to_target": out, "to_source": back}
            for name, (out, back) in self.forwarded.items()
        }

    # -- faults --

    def apply(self, state: FaultState) -> int:
        """Put ``state`` in force: cut every connection it no longer allows; how many."""
        self.state = state
        doomed = [c for c in self.connections if not state.allows(c.route.source, c.route.target)]
        for conn in doomed:
            conn.cut()
            self.connections.discard(conn)
        save_state(self.directory, state)
        log.info(
            "faults: partition %s, delay %d ms; %d connection(s) cut",
            describe_groups(state.groups),
            state.delay_ms,
            len(doomed),
        )
        return len(doomed)

    def answer(self, request: Any) -> dict[str, Any]:
        """The control socket's dispatch: a request document -> the answer document."""
        cut = 0
        try:
            if not isinstance(request, dict) or not isinstance(request.get("op"), str):
                raise BadInputError('a request is a JSON object with "op"')
            op = request["op"]
            if op == "partition":
                raw = request.get("groups")
                if not isinstance(raw, list) or not all(
                    isinstance(g, list) and all(isinstance(n, str) for n in g) for g in raw
                ):
                    raise BadInputError("partition: groups must be lists of node names")
                try:
                    groups = normalize_groups(raw, self.nodes)
                except UsageError as exc:
                    raise BadInputError(f"partition: {exc}") from None
                cut = self.apply(FaultState(groups, self.state.delay_ms))
            elif op == "heal":
                cut = self.apply(FaultState((), self.state.delay_ms))
            elif op == "delay":
                cut = self.apply(FaultState(self.state.groups, check_delay(request.get("ms"))))
            elif op != "state":
                raise BadInputError(f"unknown op {op!r} (state, partition, heal, delay)")
        except ReplicadError as exc:
            return {"ok": False, "error": str(exc)}
        return {
            "ok": True,
            "pid": os.getpid(),
            **self.state.to_json(),
            "cut": cut,
            "connections": len(self.connections),
            "bytes": self.byte_counts(),
        }

    # -- serving --

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on every route and on the control socket; runs until cancelled.

        Every port is bound before anything is served, and the control socket
        last: once it answers (what `cluster up` waits for), nodes can dial
        through every route.  A port that cannot be bound is a ReplicadError.
        """
        bound: list[tuple[Route, list[trio.SocketListener]]] = []
        for route in self.routes:
            try:
                bound.append(
                    (route, await trio.open_tcp_listeners(route.listen, host=LISTEN_ADDRESS))
                )
            except OSError as exc:
                raise ReplicadError(
                    f"cannot listen on {LISTEN_ADDRESS}:{route.listen} for {route.name}: "
                    f"{exc.strerror or exc}"
                ) from None
        path = socket_path(self.directory)
        control = await self._bind_control(path)
        try:
            async with trio.open_nursery() as nursery:
                for route, listeners in bound:
                    nursery.start_soon(trio.serve_listeners, self._handler(route), listeners)
                nursery.start_soon(trio.serve_listeners, self._control_client, [control])
                log.info(
                    "fault proxy %d: %d routes for %s; partition %s, delay %d ms",
                    os.getpid(),
                    len(self.routes),
                    ",".join(self.nodes),
                    describe_groups(self.state.groups),
                    self.state.delay_ms,
                )
                task_status.started()
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _handler(self, route: Route) -> Callable[[trio.SocketStream], Awaitable[None]]:
        async def handle(client: trio.SocketStream) -> None:
            await self.forward(route, client)

        return handle

    async def forward(self, route: Route, client: trio.SocketStream) -> None:
        """Carry one connection of ``route`` until either end closes it or it is cut."""
        if not self.state.allows(route.source, route.target):
            _reset(client.socket)  # refused: the dialler's TLS handshake fails at once
            return
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                server = await trio.open_tcp_stream(LISTEN_ADDRESS, route.port)
        except (OSError, trio.TooSlowError):
            # The target is down: the dialler sees its connection fail, as it
            # would without the proxy, and backs off.
            _reset(client.socket)
            return
        conn = Connection(route, client, server)
        if not self.state.allows(route.source, route.target):
            conn.cut()  # a partition came while connecting
            return
        self.connections.add(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    counts = self.forwarded[route.name]
                    nursery.start_soon(self._pipe, client, server, counts, 0)
                    nursery.start_soon(self._pipe, server, client, counts, 1)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # an end reset the connection (a killed node), or it was cut
        finally:
            self.connections.discard(conn)
            if not conn.cut_off:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(client)
                    await trio.aclose_forcefully(server)

    async def _pipe(
        self, src: trio.SocketStream, dst: trio.SocketStream, counts: list[int], index: int
    ) -> None:
        """One direction: read chunks, hold each for the delay, write them in order;
        ``counts[index]`` grows by every octet written."""
        send, receive = trio.open_memory_channel[tuple[float, bytes]](CHUNKS_QUEUED)

        async def read() -> None:
            async with send:
                while data := await src.receive_some(CHUNK):
                    # A chunk gets the delay in force when it arrives; the
                    # queue keeps the order whatever the delay does later.
                    await send.send((trio.current_time() + self.state.delay_ms / 1000, data))

        async def write() -> None:
            async with receive:
                async for due, data in receive:
                    await trio.sleep_until(due)
                    await dst.send_all(data)
                    counts[index] += len(data)
            # End of stream on one side is passed on, the other direction goes on.
            await dst.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            nursery.start_soon(write)

    async def _bind_control(self, path: Path) -> trio.SocketListener:
        # Only the holder of the pid lock gets here: a socket file left by a
        # killed proxy is stale, never another proxy's.
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(str(path))
            sock.listen(16)
        except OSError as exc:
            sock.close()
            raise ReplicadError(f"cannot listen on {path}: {exc.strerror or exc}") from None
        return trio.SocketListener(sock)

    async def _control_client(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(CONTROL_TIMEOUT):
                data = b""
                while b"\n" not in data and len(data) <= MAX_REQUEST:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    data += chunk
                try:
                    request = json.loads(data.partition(b"\n")[0])
                except ValueError:
                    request = None
                answer = self.answer(request)
                await stream.send_all(json.dumps(answer).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to answer
        finally:
            await trio.aclose_forcefully(stream)


async def serve(directory: Path, routes: Sequence[Route]) -> None:
    """The proxy process's main task: serve ``routes`` until SIGTERM or SIGINT."""
    proxy = Proxy(directory, routes, load_state(directory, nodes_of(routes)))
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            async for signum in signals:
                log.info("fault proxy %d: %s, stopping", os.getpid(), signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m replicad.faultproxy DIR``: run the proxy of DIR in the foreground."""
    ap = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description="Fault-injecting proxy of a `replicad cluster up --faults` cluster "
        "(normally started by `cluster up` and stopped by `cluster down`).",
    )
    ap.add_argument("directory", metavar="DIR", type=Path)
    args = ap.parse_args(argv)
    directory: Path = args.directory.absolute()
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
    )
    code = 0
    try:
        routes = load_routes(directory)
        with _pid_lock(directory):
            trio.run(serve, directory, routes)
    except* ReplicadError as group:
        # trio's nurseries wrap errors in groups; each is a clear message of ours.
        errors = _leaves(group)
        for exc in errors:
            log.error("fault proxy: %s", exc)
        code = int(errors[0].exit_code)
    return code


def _leaves(group: BaseExceptionGroup[ReplicadError]) -> list[ReplicadError]:
    found: list[ReplicadError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found += _leaves(exc)
        else:
            found.append(exc)
    return found


@contextlib.contextmanager
def _pid_lock(directory: Path) -> Iterator[None]:
    """Hold ``proxy.pid`` locked with our pid in it; emptied again on a clean exit."""
    path = proxy_dir(directory) / PID_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise BadInputError(f"cannot open {path}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise BadInputError(
                f"another fault proxy (pid {other or '?'}) already serves {directory}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)


# --- the process, seen from the command line -----------------------------------------------


def read_pid(directory: Path) -> int | None:
    try:
        text = (proxy_dir(directory) / PID_NAME).read_text(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdecimal() and int(text) > 0 else None


def is_proxy_process(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a live (not zombie) fault proxy of ``directory``.

    The pid file of a killed proxy may name a pid given since to another
    process, which must never be signalled.
    """
    proc = Path("/proc") / str(pid)
    try:
        stat_text = (proc / "stat").read_text(errors="replace")
        if stat_text.rpartition(")")[2].split()[:1] == ["Z"]:
            return False
        argv = [a for a in (proc / "cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return False
    if MODULE.encode() not in argv:
        return False
    try:
        return Path(os.fsdecode(argv[-1])).resolve() == directory.resolve()
    except OSError:
        return False


def running_pid(directory: Path) -> int | None:
    """The pid of ``directory``'s live proxy, or None."""
    pid = read_pid(directory)
    return pid if pid is not None and is_proxy_process(pid, directory) else None


def control(
    directory: Path, request: Mapping[str, Any], timeout: float = CONTROL_TIMEOUT
) -> dict[str, Any]:
    """Send one request to the proxy of ``directory``; its answer (``ok`` true).

    :class:`UnreachableError` (exit 69) if no proxy answers, and
    :class:`BadInputError` (exit 65) if it refuses the request.
    """
    path = socket_path(directory)
    not_running = (
        f"the fault proxy of {directory} is not running (nothing answers on {path}); "
        f"`replicad cluster up {directory}` starts it"
    )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(dict(request)).encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise UnreachableError(not_running) from None
    except TimeoutError:
        raise UnreachableError(
            f"the fault proxy of {directory} did not answer on {path} within {timeout:g}s"
        ) from None
    except OSError as exc:
        raise UnreachableError(f"{not_running} ({exc.strerror or exc})") from None
    try:
        answer = json.loads(data.partition(b"\n")[0])
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise UnreachableError(f"the fault proxy of {directory} closed without a valid answer")
    if not answer.get("ok"):
        raise BadInputError(f"fault proxy: {answer.get('error', 'refused')}")
    return answer


def _log_tail(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace").rstrip("\n")
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-LOG_TAIL_LINES:]) if text else "(the log is empty)"


def start_proxy(directory: Path) -> int:
    """Start the proxy of ``directory``, detached, and wait until it answers; its pid.

    Like a node started by ``cluster up``: a new session (it outlives the
    command and ignores the terminal's Ctrl-C), output appended to
    ``proxy.log``.  :class:`UnreachableError` (exit 69) with the end of the
    log if it exits or does not answer within :data:`READY_TIMEOUT`.
    """
    log_path = proxy_dir(directory) / LOG_NAME
    try:
        offset = log_path.stat().st_size
    except OSError:
        offset = 0
    with log_path.open("ab") as out:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", MODULE, str(directory)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=proxy_dir(directory),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise ReplicadError(f"cannot start the fault proxy: {exc}") from None
    deadline = time.monotonic() + READY_TIMEOUT
    try:
        while True:
            code = proc.poll()
            if code is not None:
                raise UnreachableError(
                    f"the fault proxy exited with status {code} during start-up; "
                    f"end of {log_path}:\n{_log_tail(log_path, offset)}"
                )
            with contextlib.suppress(UnreachableError):
                if control(directory, {"op": "state"}, timeout=2.0).get("pid") == proc.pid:
                    return proc.pid
            if time.monotonic() >= deadline:
                raise UnreachableError(
                    f"the fault proxy did not answer on {socket_path(directory)} within "
                    f"{READY_TIMEOUT:g}s; end of {log_path}:\n{_log_tail(log_path, offset)}"
                )
            time.sleep(POLL_INTERVAL)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT)
        raise


def _signal(pid: int, directory: Path, signum: int) -> bool:
    """Signal ``pid`` if it still is the proxy of ``directory``."""
    return signal_if(pid, lambda: is_proxy_process(pid, directory), signum)


def _gone(pid: int, directory: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_proxy_process(pid, directory):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def stop_proxy(directory: Path) -> tuple[int | None, str]:
    """SIGTERM the proxy of ``directory``, SIGKILL after :data:`STOP_TIMEOUT`; (pid, result)."""
    pid = running_pid(directory)
    if pid is None:
        return None, "not running"
    if not _signal(pid, directory, signal.SIGTERM):
        return pid, "already stopped"
    if _gone(pid, directory, STOP_TIMEOUT):
        return pid, "stopped"
    _signal(pid, directory, signal.SIGKILL)
    if _gone(pid, directory, STOP_TIMEOUT):
        return pid, "killed"
    return pid, f"still running after SIGKILL (pid {pid})"


if __name__ == "__main__":
    sys.exit(main())
