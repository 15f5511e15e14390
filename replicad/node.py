"""One replicad node in the foreground: trio glue between config, store and admin socket.

Startup order matters and each step says why:

1. the data-directory lock (``flock`` on ``DATA_DIR/replicad.pid``): a second
   node on the same LMDB environment would break the single-writer design
   (docs/architecture.md §5); LMDB's own lock file allows several processes, so it cannot
   be relied on for this;
2. the admin socket path is checked: a stale file left by a killed node is
   removed, a live node answering on it makes this one refuse to start;
3. the store is opened (its group-commit writer starts);
4. the HTTP listener (``[metrics] listen``) is bound, if configured, so a port
   in use fails the start before the node joins the cluster;
5. the cluster runtime starts (its TLS listener, dialling the peers);
6. the LMTP listener (``[lmtp] listen``) is bound, if configured, and
   accepts mail from then on (:mod:`replicad.lmtp`);
7. the admin socket is bound under a restrictive umask, so it is never
   reachable with wider permissions than 0600, not even for a moment; only
   then does it answer, so "the socket answers" means "the node is ready";
8. systemd is told ``READY=1`` (:mod:`replicad.sdnotify`), the watchdog pings
   start, and ``STATUS=`` follows the node's health.

SIGTERM/SIGINT: ``STOPPING=1``; stop accepting client operations (the admin
socket and the LMTP listeners are closed, idle LMTP sessions get ``421``;
``/health`` says down), let in-flight ones (LMTP deliveries too) finish, then
wait until every linked peer acknowledged this node's change log, the two
together within ``node.shutdown_timeout`` seconds; cancel what is left,
close the store, exit 0.  A second SIGTERM/SIGINT cuts the wait short.
Every write a client saw acknowledged was durable before the reply (I1), so
a ``kill -9`` instead loses nothing acknowledged either; the clean path
avoids failing requests needlessly and leaves peers up to date.

SIGHUP: the config file is read again; ``node.map_size`` (the store's
ceiling), ``node.log_level``, ``node.shutdown_timeout``,
``metrics.health_token`` and the ``[[peers]]`` list take effect at once.
The TLS files (``tls.ca``, ``tls.cert``, ``tls.key``, read again even if
the config did not change, so replaced files are picked up) are checked as
at start and made into new contexts for the links set up from then on;
established links keep theirs; unusable files leave the running ones in
place (``node.reload_failed section=tls``).  Certificates ending within 30
days are warned of at start, daily and on reload; ``/health`` degrades
from 7 days (:mod:`replicad.health`).
A new peer gets an outbox cursor and a whole-node resync (its copy is
built by resync), and its links are accepted and dialled; a removed one
is disconnected, no longer accepted, and the log stops waiting for it; a
peer whose address changed is dialled there.  Going from no peers to some
(or back) changes what the node is (a single node or a cluster member)
and needs a restart, as do the other sections; they are reported, not
applied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from replicad.admin.dispatch import AdminDispatcher, default_identity
from replicad.admin.server import AdminServer
from replicad.auth import UserDirectory
from replicad.cluster.runtime import ClusterNode, ClusterSettings, PeerAddress, TlsNetwork
from replicad.cluster.writes import ClusterWrites
from replicad.config import DEFAULT_SHUTDOWN_TIMEOUT, NodeConfig, load_config
from replicad.errors import ReplicadError
from replicad.fsmode import PRIVATE_FILE, private_directory
from replicad.health import evaluate
from replicad.httpd import HttpServer
from replicad.imap.mailaccess import MailAccess
from replicad.imap.server import ImapListenConfig, ImapServer
from replicad.lmtp.delivery import NodeDelivery
from replicad.lmtp.protocol import LmtpConfig
from replicad.lmtp.server import LmtpServer
from replicad.metrics import LogEventCounter, NodeMetrics
from replicad.migrate.service import MigrationService
from replicad.migrate.target import LocalWrites
from replicad.observe import LinkMeter, MeteredNetwork, NodeState, Observer, Phase, Snapshot
from replicad.sdnotify import Notifier
from replicad.store.clock import HybridClock
from replicad.store.mailstore import MailStore
from replicad.transport import TlsContexts, load_tls_contexts
from replicad.transport.gate import HandshakeGate
from replicad.transport.logfmt import format_value
from replicad.transport.unixsocket import (
    bind_unix_socket,
    clear_stale_socket,
    remove_socket_if_ours,
)

log = logging.getLogger("replicad.node")

#: The default drain bound (``node.shutdown_timeout``); ``cluster down`` waits longer.
SHUTDOWN_GRACE = DEFAULT_SHUTDOWN_TIMEOUT
#: How often the systemd STATUS= line is brought up to date (sent only on change).
STATUS_INTERVAL = 5.0
#: A certificate (the node's or the CA's) ending this soon is warned of in
#: the log, at start, daily and on reload (``/health`` degrades from 7 days).
CERT_WARN_WITHIN = 30 * 86400.0
CERT_CHECK_INTERVAL = 86400.0
#: How often the drain checks whether the peers acknowledged everything.
DRAIN_POLL = 0.05
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
    root.propagate = False
    set_log_level(level)


def set_log_level(level: str) -> None:
    """Print events at ``level`` and above (also on SIGHUP).

    The level is set on the printing handlers; the logger itself stays at
    warning or lower, so warning events still reach the metrics'
    :class:`~replicad.metrics.LogEventCounter` when only errors are printed.
    """
    numeric = logging.getLevelName(level.upper())
    root = logging.getLogger("replicad")
    for handler in root.handlers:
        if not isinstance(handler, LogEventCounter):
            handler.setLevel(numeric)
    root.setLevel(min(numeric, logging.WARNING))


# --- the data directory lock --------------------------------------------------


@contextlib.contextmanager
def data_dir_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (the pid file) for the node's lifetime.

    The kernel drops the lock when the process dies, even by ``kill -9``, so
    a crashed node never leaves a lock that blocks its restart.
    """
    # Mail is private: the data directory is the node's alone (0700, an
    # existing one tightened), whatever the umask (replicad.fsmode).
    private_directory(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)  # the umask, or an older file, may differ
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


def bind_admin_socket(path: Path) -> tuple[socket.socket, int]:
    """The admin socket at ``path``, mode 0600, and its inode."""
    if not path.parent.exists():
        # Created 0700 whatever the umask; an existing directory is the
        # operator's (e.g. /run/replicad, 0750 for an LMTP socket's group).
        private_directory(path.parent)
    return bind_unix_socket(path, mode=0o600, backlog=ADMIN_BACKLOG, what="admin socket")


# --- the node -------------------------------------------------------------------------


async def run_node(config: NodeConfig, *, notifier: Notifier | None = None) -> None:
    """Run until SIGTERM/SIGINT, then shut down cleanly (see the module docstring)."""
    notify = notifier if notifier is not None else Notifier.from_environment()
    overrides = dict(config.cluster.user_durability)
    metrics = NodeMetrics(lambda user: overrides.get(user, config.node.durability).name)
    counter = LogEventCounter(metrics)
    logging.getLogger("replicad").addHandler(counter)
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            notify.status("starting: opening the store")
            with data_dir_lock(config.lock_path):
                await _run_locked(config, signals, notify, metrics)
    finally:
        logging.getLogger("replicad").removeHandler(counter)
        notify.close()


async def _run_locked(
    config: NodeConfig,
    signals: AsyncIterator[int],
    notify: Notifier,
    metrics: NodeMetrics,
) -> None:
    node = config.node
    clear_stale_socket(node.admin_socket, "admin socket")
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
    state = NodeState()
    # Before the store: a bad certificate or an unprotected key stops the
    # start with nothing created.
    contexts = _tls_contexts(config)
    tls_network = (
        TlsNetwork(
            contexts,
            (config.listen.address, config.listen.port),
            HandshakeGate(config.listen.max_handshakes, config.listen.max_handshakes_per_source),
        )
        if contexts is not None
        else None
    )
    async with MailStore.open(
        node.data_dir / "store",
        map_size=node.map_size,
        peers=peers,
        max_lag=config.cluster.max_outbox,
        clock=HybridClock(max_skew=config.cluster.max_clock_skew),
    ) as store:
        meter = LinkMeter()
        cluster = _cluster_node(config, store, meter, tls_network)
        writes = ClusterWrites(cluster) if cluster is not None else None
        migrations = MigrationService(
            store,
            writes if writes is not None else LocalWrites(store),
            node.data_dir / "migrate",
            metrics,
        )
        dispatcher = AdminDispatcher(
            store,
            default_identity(node.name),
            config.admin.max_message_size,
            cluster=writes,
            extra=migrations.handlers,
        )
        lmtp = _lmtp_server(config, store, writes, metrics)
        imap = _imap_server(config, store, writes, cluster, metrics)
        if cluster is not None and imap is not None:
            # Told to peers in PING replies: `replicad top` shows it per node.
            cluster.imap_sessions = lambda: imap.session_count
        server = AdminServer(
            metrics.instrument(dispatcher.handle, dispatcher.operations),
            max_frame=config.admin.max_message_size + FRAME_OVERHEAD,
        )
        observer = Observer(config, store, cluster, meter, state)
        observer.tls = contexts
        httpd = (
            HttpServer(metrics, observer, health_token=config.metrics.health_token)
            if config.metrics is not None
            else None
        )
        live = _LiveConfig(
            config, httpd, cluster, observer, store, tls_network=tls_network, imap=imap
        )
        async with trio.open_nursery() as nursery:
            if httpd is not None:
                assert config.metrics is not None
                await nursery.start(httpd.run, config.metrics.host, config.metrics.port)
            if cluster is not None:
                # Peer links come up before the admin socket answers, so
                # "the socket answers" still means "the node is ready".
                await nursery.start(cluster.run)
            if lmtp is not None:
                assert config.lmtp is not None
                await nursery.start(lmtp.run, config.lmtp.tcp, config.lmtp.unix)
            if imap is not None:
                await nursery.start(imap.run)
            # Jobs resume where they stood (their records are in the store).
            await nursery.start(migrations.run)
            raw, inode = bind_admin_socket(node.admin_socket)
            try:
                listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
                await nursery.start(server.run, listener)
                state.phase = Phase.SERVING
                log.info(
                    "node.ready", extra={"kv": {"node": node.name, "socket": node.admin_socket}}
                )
                notify.ready(status_line(await observer.snapshot()))
                # The probe has a thread of its own: long reads (anti-entropy
                # digests) filling the reader pool must not look like a hang.
                nursery.start_soon(notify.watchdog_loop, store.probe)
                if notify.enabled:
                    nursery.start_soon(_status_loop, observer, notify)
                if contexts is not None:
                    nursery.start_soon(_certificate_watch, observer)
                await _serve_until_stop(signals, live, notify, observer)
                state.phase = Phase.STOPPING
                notify.stopping("stopping: draining client requests and outbox sends")
                await _drain(
                    server,
                    cluster,
                    store,
                    live.config.node.shutdown_timeout,
                    signals,
                    lmtp=lmtp,
                    imap=imap,
                )
                nursery.cancel_scope.cancel()
            finally:
                remove_socket_if_ours(node.admin_socket, inode)
    log.info("node.stopped", extra={"kv": {"node": node.name}})


async def _serve_until_stop(
    signals: AsyncIterator[int], live: _LiveConfig, notify: Notifier, observer: Observer
) -> None:
    """Serve (the other tasks do) until SIGTERM/SIGINT; SIGHUP reloads the config."""
    async for signum in signals:
        if signum == signal.SIGHUP:
            notify.reloading()
            await live.reload()
            notify.ready(status_line(await observer.snapshot()))
            continue
        log.info("node.stopping", extra={"kv": {"signal": signal.Signals(signum).name}})
        return


async def _drain(
    server: AdminServer,
    cluster: ClusterNode | None,
    store: MailStore,
    timeout: float,
    signals: AsyncIterator[int],
    *,
    lmtp: LmtpServer | None = None,
    imap: ImapServer | None = None,
) -> None:
    """Let client operations (admin requests, LMTP deliveries, IMAP commands) finish, then
    outbox sends, within ``timeout`` in all.

    A second SIGTERM/SIGINT (an impatient operator, Ctrl-C twice) ends the
    wait at once; what is cut off then is what the timeout would have cut.
    """
    deadline = trio.current_time() + timeout
    async with trio.open_nursery() as nursery:

        async def cut_short() -> None:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    name = signal.Signals(signum).name
                    log.warning("node.drain_cut_short", extra={"kv": {"signal": name}})
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(cut_short)
        server.drain()
        if lmtp is not None:
            lmtp.drain()
        if imap is not None:
            imap.drain()
        with trio.move_on_at(deadline):
            await server.closed.wait()
            if lmtp is not None:
                await lmtp.closed.wait()
            if imap is not None:
                await imap.closed.wait()
        if not server.closed.is_set():
            log.warning(
                "node.requests_cancelled",
                extra={"kv": {"connections": server.connection_count, "timeout": timeout}},
            )
        if lmtp is not None and not lmtp.closed.is_set():
            log.warning(
                "node.lmtp_sessions_cancelled",
                extra={"kv": {"sessions": lmtp.session_count, "timeout": timeout}},
            )
        if cluster is not None:
            await _drain_outbox(cluster, store, deadline)
        nursery.cancel_scope.cancel()


async def _drain_outbox(cluster: ClusterNode, store: MailStore, deadline: float) -> None:
    """Until every linked peer acknowledged the whole change log, or ``deadline``.

    Peers without a link are not waited for: their changes stay in the
    durable log and stream when they are back.  Writes forwarded here by
    peers are still served meanwhile, and are waited for too.
    """
    behind: dict[str, int] = {}
    with trio.move_on_at(deadline):
        while True:
            head = await store.log_head()
            behind = {
                name: head - session.outbox.acked
                for name, session in cluster.sessions.items()
                if not session.closed and session.outbox.acked < head
            }
            if not behind:
                return
            await trio.sleep(DRAIN_POLL)
    log.warning(
        "node.outbox_not_drained",
        extra={"kv": {"peers": ",".join(f"{p}:{n}" for p, n in sorted(behind.items()))}},
    )


def status_line(snap: Snapshot) -> str:
    """The one line ``systemctl status`` shows: health, links, root, reasons."""
    health = evaluate(snap)
    parts = [f"{snap.phase.value}, health {health.status.label}"]
    if snap.cluster is not None:
        root = snap.cluster.get("root") or "none"
        parts.append(
            f"{len(snap.linked_peers)}/{len(snap.configured_peers)} peers linked, "
            f"root {root} epoch {snap.cluster.get('epoch')}"
        )
    parts.extend(health.reasons[:3])
    return "; ".join(parts)


async def _status_loop(observer: Observer, notify: Notifier) -> None:
    last = ""
    while True:
        await trio.sleep(STATUS_INTERVAL)
        try:
            line = status_line(await observer.snapshot())
        except ReplicadError as exc:
            line = f"status unavailable: {exc}"
        if line != last:
            notify.status(line)
            last = line


def warn_expiring_certificates(observer: Observer) -> None:
    """Log ``tls.certificate_expiring`` (warning) for each certificate in
    force that ends within :data:`CERT_WARN_WITHIN` (or has ended)."""
    for cert in observer.certificates():
        if cert.seconds_left <= CERT_WARN_WITHIN:
            log.warning(
                "tls.certificate_expiring",
                extra={
                    "kv": {
                        "cert": cert.cert,
                        "file": cert.path,
                        "not_after": f"{cert.not_after:%Y-%m-%dT%H:%M:%SZ}",
                        "days_left": round(cert.seconds_left / 86400, 1),
                    }
                },
            )


async def _certificate_watch(observer: Observer) -> None:
    """At start and then daily: warn of certificates about to end (the
    metric and ``/health`` say it too, but a log line reaches whoever reads
    only the journal)."""
    while True:
        warn_expiring_certificates(observer)
        await trio.sleep(CERT_CHECK_INTERVAL)


class _LiveConfig:
    """The configuration in force, and what a SIGHUP may change in it."""

    def __init__(
        self,
        config: NodeConfig,
        httpd: HttpServer | None,
        cluster: ClusterNode | None,
        observer: Observer,
        store: MailStore | None = None,
        *,
        tls_network: TlsNetwork | None = None,
        imap: ImapServer | None = None,
    ) -> None:
        self.config = config
        self.imap = imap
        self.httpd = httpd
        self.cluster = cluster
        self.observer = observer
        self.store = store
        self.tls_network = tls_network

    def _reload_tls(self, new: NodeConfig) -> bool:
        """Read the certificates and key again (the same files, or those the
        new ``[tls]`` names) into new contexts for new links; False if they
        are unusable (the running ones stay) or the cluster name changed
        (a restart: HELLO carries it)."""
        old = self.config.tls
        if self.tls_network is None or old is None or new.tls is None:
            return False
        if new.tls.cluster != old.cluster:
            return False
        tls = new.tls
        try:
            contexts = load_tls_contexts(
                tls.ca, tls.cert, tls.key, node=self.config.name, cluster=tls.cluster
            )
        except ReplicadError as exc:
            log.error(
                "node.reload_failed",
                extra={"kv": {"config": new.path, "section": "tls", "reason": str(exc)}},
            )
            return False
        self.tls_network.contexts = contexts
        self.observer.tls = contexts
        log.info(
            "tls.reloaded",
            extra={
                "kv": {
                    f"{c.cert}_not_after": f"{c.not_after:%Y-%m-%dT%H:%M:%SZ}"
                    for c in contexts.certificates
                }
            },
        )
        warn_expiring_certificates(self.observer)
        return True

    async def reload(self) -> None:
        """Read the config file again; apply what can change live, report the rest."""
        old = self.config
        try:
            new = load_config(old.path)
        except ReplicadError as exc:
            log.error("node.reload_failed", extra={"kv": {"config": old.path, "reason": str(exc)}})
            return
        applied: list[str] = []
        node = old.node
        if new.node.log_level != node.log_level:
            set_log_level(new.node.log_level)
            applied.append("node.log_level")
        if new.node.shutdown_timeout != node.shutdown_timeout:
            applied.append("node.shutdown_timeout")
        map_size = node.map_size
        if new.node.map_size != node.map_size and self.store is not None:
            # The map's ceiling: a full store grows into it from its next
            # write, and replication into it resumes by itself.
            self.store.set_map_ceiling(new.node.map_size)
            map_size = new.node.map_size
            applied.append("node.map_size")
        node = dataclasses.replace(
            node,
            log_level=new.node.log_level,
            shutdown_timeout=new.node.shutdown_timeout,
            map_size=map_size,
        )
        metrics = old.metrics
        if (
            self.httpd is not None
            and metrics is not None
            and new.metrics is not None
            and (new.metrics.host, new.metrics.port) == (metrics.host, metrics.port)
            and new.metrics.health_token != metrics.health_token
        ):
            self.httpd.health_token = new.metrics.health_token
            metrics = new.metrics
            applied.append("metrics.health_token")
        peers = old.peers
        if new.peers != peers and self.cluster is not None and new.peers:
            try:
                await self.cluster.set_peers(
                    tuple(PeerAddress(p.name, p.host, p.port) for p in new.peers)
                )
            except ReplicadError as exc:
                log.error(
                    "node.reload_failed",
                    extra={"kv": {"config": old.path, "section": "peers", "reason": str(exc)}},
                )
            else:
                peers = new.peers
                applied.append("peers")
        tls = old.tls
        if self._reload_tls(new):
            tls = new.tls
            applied.append("tls")
        if self.imap is not None:
            self.imap.reload_tls()  # the same files, re-read (a renewed certificate)
            applied.append("imap.tls")
        self.config = dataclasses.replace(old, node=node, metrics=metrics, peers=peers, tls=tls)
        self.observer.config = self.config
        pending = _needs_restart(self.config, new)
        log.info(
            "node.reloaded",
            extra={
                "kv": {
                    "applied": ",".join(applied) or "-",
                    "needs_restart": ",".join(pending) or "-",
                }
            },
        )
        if pending:
            log.warning(
                "node.reload_needs_restart",
                extra={"kv": {"changed": ",".join(pending), "config": old.path}},
            )


def _needs_restart(running: NodeConfig, new: NodeConfig) -> list[str]:
    """Sections of ``new`` that differ from the running config (none apply live)."""
    return [
        name
        for name in (
            "node",
            "listen",
            "tls",
            "peers",
            "admin",
            "cluster",
            "metrics",
            "auth",
            "lmtp",
            "imap",
        )
        if getattr(running, name) != getattr(new, name)
    ]


def _user_lookup(config: NodeConfig, store: MailStore) -> Callable[[str], Awaitable[bool]]:
    """Who gets mail: the users of ``[auth] passwd_file`` when there is one
    (authoritative, as Dovecot's userdb is: a user deleted there gets no
    more mail, one added gets it at once); else any user the store holds a
    mailbox of."""
    if config.auth.passwd_file is None:
        return store.has_user
    directory = UserDirectory.from_config(config)

    async def known(user: str) -> bool:
        return directory.lookup(user) is not None

    return known


def _lmtp_server(
    config: NodeConfig, store: MailStore, writes: ClusterWrites | None, metrics: NodeMetrics
) -> LmtpServer | None:
    """The LMTP listener, if ``[lmtp]`` is configured: deliveries take the
    admin ``save``'s write path (the cluster's, in a cluster)."""
    if config.lmtp is None:
        return None
    section = config.lmtp
    delivery = NodeDelivery(
        store,
        writes if writes is not None else store,
        user_exists=_user_lookup(config, store),
        username_format=config.auth.username_format,
    )
    protocol = LmtpConfig(
        hostname=config.name,
        max_message_size=section.max_message_size,
        max_recipients=section.max_recipients,
    )
    return LmtpServer(delivery, protocol, timeout=section.timeout, metrics=metrics)


def _imap_server(
    config: NodeConfig,
    store: MailStore,
    writes: ClusterWrites | None,
    cluster: ClusterNode | None,
    metrics: NodeMetrics,
) -> ImapServer | None:
    """The IMAP listeners, if ``[imap]`` is configured: reads from this
    store, writes through the admin ``save``'s write path."""
    if config.imap is None:
        return None
    section = config.imap
    users = UserDirectory.from_config(config) if config.auth.passwd_file is not None else None
    access = MailAccess(
        store,
        writes if writes is not None else store,
        users,
        catch_up=section.select_wait,
        masters=cluster,
    )
    listen = ImapListenConfig(
        tcp=section.tcp,
        tls_tcp=section.tls_tcp,
        tls_cert=section.tls_cert,
        tls_key=section.tls_key,
        max_line=section.max_line,
        max_literal=section.max_literal,
        max_sessions_per_user=section.max_sessions_per_user,
        max_sessions_per_ip=section.max_sessions_per_ip,
        idle_timeout=section.idle_timeout,
        allow_plaintext_auth=section.allow_plaintext_auth,
    )
    from replicad import __version__

    return ImapServer(access, listen, version=__version__, metrics=metrics)


def _tls_contexts(config: NodeConfig) -> TlsContexts | None:
    """The TLS identity of a cluster member (checked: certificate, key mode),
    None for a single node (no peers, so no links to authenticate)."""
    if not config.peers:
        return None
    assert config.tls is not None  # config validation refuses peers without [tls]
    tls = config.tls
    return load_tls_contexts(tls.ca, tls.cert, tls.key, node=config.name, cluster=tls.cluster)


def _cluster_node(
    config: NodeConfig, store: MailStore, meter: LinkMeter, network: TlsNetwork | None
) -> ClusterNode | None:
    """The cluster runtime, if the config names peers (``network`` then given)."""
    if network is None:
        return None
    return ClusterNode(
        name=config.name,
        peers=tuple(PeerAddress(p.name, p.host, p.port) for p in config.peers),
        store=store,
        network=MeteredNetwork(network, meter),
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
            probe_interval=config.cluster.probe_interval,
            members=frozenset(config.cluster.members),
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
