"""One replicad node in the foreground: trio glue between config, store and admin socket.

Startup order matters and each step says why:

1. the data-directory lock (``flock`` on ``DATA_DIR/replicad.pid``): a second
   node on the same LMDB environment would break the single-writer design
   (DESIGN §5); LMDB's own lock file allows several processes, so it cannot
   be relied on for this;
2. the admin socket path is checked: a stale file left by a killed node is
   removed, a live node answering on it makes this one refuse to start;
3. the store is opened (its group-commit writer starts);
4. the admin socket is bound under a restrictive umask, so it is never
   reachable with wider permissions than 0600, not even for a moment; only
   then does it answer, so "the socket answers" means "the node is ready".

SIGTERM/SIGINT: stop accepting, let in-flight requests finish within
:data:`SHUTDOWN_GRACE` seconds, cancel what is left, close the store, exit 0.
Every write a client saw acknowledged was durable before the reply (I1), so a
``kill -9`` instead loses nothing acknowledged either; the clean path just
avoids failing requests needlessly.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from replicad.admin.dispatch import AdminDispatcher, default_identity
from replicad.admin.server import AdminServer
from replicad.cluster.runtime import ClusterNode, ClusterSettings, PeerAddress, TlsNetwork
from replicad.cluster.writes import ClusterWrites
from replicad.config import NodeConfig
from replicad.errors import ReplicadError
from replicad.store.mailstore import MailStore
from replicad.transport import load_tls_contexts
from replicad.transport.logfmt import format_value

log = logging.getLogger("replicad.node")

SHUTDOWN_GRACE = 10.0
# Room for the msgpack envelope around a body of admin.max_message_size bytes.
FRAME_OVERHEAD = 1 << 20
ADMIN_BACKLOG = 128


# --- logging: one line per event, key=value fields ---------------------------


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=… event=… k=v …`` on one line; values quoted when needed.

    Callers log the event name as the message and the fields in
    ``extra={"kv": {...}}``; a traceback becomes one escaped field so a log
    line is always one event (grep- and journald-friendly).
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        # Link-layer events (transport.logfmt.log_event) carry their name and
        # fields on the record; use them so the line is not quoted twice.
        event = getattr(record, "event", None) or record.getMessage()
        parts = [
            f"ts={ts}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"event={_kv_value(event)}",
        ]
        fields: dict[str, Any] = getattr(record, "kv", None) or getattr(record, "fields", {})
        parts.extend(f"{key}={_kv_value(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append(f"traceback={_kv_value(self.formatException(record.exc_info))}")
        return " ".join(parts)


def _kv_value(value: object) -> str:
    # One escaping rule for every log line: control characters from hostile
    # input (a peer's HELLO, a client's user name) can never forge a line.
    return format_value(value)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("replicad")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# --- the data directory lock --------------------------------------------------


@contextlib.contextmanager
def data_dir_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (the pid file) for the node's lifetime.

    The kernel drops the lock when the process dies, even by ``kill -9``, so
    a crashed node never leaves a lock that blocks its restart.
    """
    # Mail is private: a data directory we create is readable by the node only.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise ReplicadError(
                f"data directory {path.parent} is in use by another replicad node "
                f"(pid {holder}, lock file {path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


# --- the admin socket ---------------------------------------------------------


def clear_stale_socket(path: Path) -> None:
    """Remove a socket file left by a dead node; refuse if a live node answers on it."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ReplicadError(f"admin socket path {path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(str(path))
    except ConnectionRefusedError:
        # Nobody listens: the owner died without cleaning up.
        log.info("admin.stale_socket_removed", extra={"kv": {"socket": path}})
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise ReplicadError(f"cannot check admin socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ReplicadError(f"another node is already serving on admin socket {path}")


def bind_admin_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path`` with mode 0600, never wider even briefly."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask is process-wide, but bind() is one syscall on this thread and
        # any other file created meanwhile only ends up more restrictive.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)  # belt and braces for filesystems that ignore umask
        sock.listen(ADMIN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ReplicadError(f"cannot listen on admin socket {path}: {exc.strerror}") from None
    return sock


def remove_socket_if_ours(path: Path, inode: int) -> None:
    """Unlink the socket file unless another process replaced it meanwhile."""
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_ino == inode:
            path.unlink()


# --- systemd readiness ----------------------------------------------------------


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about ``state``; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with (
        contextlib.suppress(OSError),
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock,
    ):
        sock.sendto(state.encode(), address)


# --- the node -------------------------------------------------------------------


async def run_node(config: NodeConfig, *, grace: float = SHUTDOWN_GRACE) -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly (see the module docstring)."""
    node = config.node
    with (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        data_dir_lock(config.lock_path),
    ):
        clear_stale_socket(node.admin_socket)
        log.info(
            "node.starting",
            extra={
                "kv": {
                    "node": node.name,
                    "pid": os.getpid(),
                    "data_dir": node.data_dir,
                    "map_size": node.map_size,
                    "durability": node.durability.name,
                }
            },
        )
        peers = tuple(p.name for p in config.peers)
        async with MailStore.open(
            node.data_dir / "store",
            map_size=node.map_size,
            peers=peers,
            max_lag=config.cluster.max_outbox,
        ) as store:
            cluster = _cluster_node(config, store)
            dispatcher = AdminDispatcher(
                store,
                default_identity(node.name),
                config.admin.max_message_size,
                cluster=ClusterWrites(cluster) if cluster is not None else None,
            )
            server = AdminServer(
                dispatcher.handle, max_frame=config.admin.max_message_size + FRAME_OVERHEAD
            )
            raw = bind_admin_socket(node.admin_socket)
            inode = node.admin_socket.lstat().st_ino
            try:
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
                async with trio.open_nursery() as nursery:
                    if cluster is not None:
                        # Peer links come up before the admin socket answers, so
                        # "the socket answers" still means "the node is ready".
                        await nursery.start(cluster.run)
                    await nursery.start(server.run, listener)
                    log.info(
                        "node.ready", extra={"kv": {"node": node.name, "socket": node.admin_socket}}
                    )
                    sd_notify("READY=1")
                    async for signum in signals:
                        log.info(
                            "node.stopping",
                            extra={"kv": {"signal": signal.Signals(signum).name}},
                        )
                        break
                    sd_notify("STOPPING=1")
                    server.drain()
                    with trio.move_on_after(grace) as grace_scope:
                        await server.closed.wait()
                    if grace_scope.cancelled_caught:
                        log.warning(
                            "node.requests_cancelled",
                            extra={"kv": {"connections": server.connection_count, "grace": grace}},
                        )
                    nursery.cancel_scope.cancel()
            finally:
                remove_socket_if_ours(node.admin_socket, inode)
        log.info("node.stopped", extra={"kv": {"node": node.name}})


def _cluster_node(config: NodeConfig, store: MailStore) -> ClusterNode | None:
    """The cluster runtime, if the config names peers (a [tls] section is then required)."""
    if not config.peers:
        return None
    assert config.tls is not None  # config validation refuses peers without [tls]
    tls = config.tls
    contexts = load_tls_contexts(tls.ca, tls.cert, tls.key, node=config.name, cluster=tls.cluster)
    return ClusterNode(
        name=config.name,
        peers=tuple(PeerAddress(p.name, p.host, p.port) for p in config.peers),
        store=store,
        network=TlsNetwork(contexts, (config.listen.address, config.listen.port)),
        data_dir=config.node.data_dir,
        settings=ClusterSettings(
            granularity=config.cluster.granularity,
            ping_interval=config.cluster.ping_interval,
            dead_after=config.cluster.dead_after,
            durability=config.node.durability,
            user_durability=dict(config.cluster.user_durability),
            compress=config.cluster.compress,
            resync_interval=config.cluster.resync_interval,
            verify_interval=config.cluster.verify_interval,
        ),
    )


def serve(config: NodeConfig) -> None:
    """Blocking entry point of ``replicad serve``."""
    configure_logging(config.node.log_level)
    try:
        trio.run(run_node, config)
    except BaseExceptionGroup as group:
        # Startup errors surface from inside nurseries wrapped in a group; the
        # operator wants the one clear message (and its exit code), not a tree.
        first = _first_replicad_error(group)
        if first is None:
            raise
        raise first from None


def _first_replicad_error(group: BaseExceptionGroup[BaseException]) -> ReplicadError | None:
    for exc in group.exceptions:
        if isinstance(exc, ReplicadError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_replicad_error(exc)
            if found is not None:
                return found
    return None
