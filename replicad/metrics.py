"""Prometheus metrics of one node (``GET /metrics``), made with prometheus-client.

Two kinds of metrics, one dedicated :class:`~prometheus_client.CollectorRegistry`
(never the library's global one: a test process or the simulator may hold
several nodes, and the global registry would mix them):

* **Events** counted as they happen, where they pass through code this
  module owns: client requests on the admin socket (count, outcome, the
  time until a write was acknowledged by its durability level), and
  warnings in the log (link refusals and protocol errors by reason; see
  :class:`LogEventCounter`).
* **State** read at scrape time from an :class:`~replicad.observe.Snapshot`
  (:class:`SnapshotCollector`): the runtime's own counters (saves as master,
  changes applied and sent, resyncs, merges, verify runs), per-peer link,
  outbox, lag and traffic, the root, the store's size and free space.
  These are counters the runtime already keeps, so they are exported as
  Prometheus counters from the snapshot rather than duplicated.

Names follow Prometheus conventions: ``replicad_`` prefix, base units
(seconds, bytes), ``_total`` for counters.  Peer names are the only
unbounded label and are bounded by the cluster's size; user names never
become labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from replicad.errors import ExitCode, error_from_name
from replicad.health import Status, evaluate
from replicad.observe import Snapshot

#: Admin operations that write; their latency is the acknowledgement latency
#: at the durability level of the user they write for.
WRITE_OPS = frozenset(
    {
        "save",
        "append_many",
        "store_flags",
        "expunge",
        "copy",
        "mailbox_create",
        "mailbox_delete",
        "mailbox_rename",
    }
)
#: Up to the cluster's write deadline (15 s), with room below a millisecond
#: for local fsyncs on fast disks.
ACK_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
)

AdminHandler = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]


class NodeMetrics:
    """The registry of one node and the instruments its code updates."""

    def __init__(self, durability_of: Callable[[str], str]) -> None:
        """``durability_of(user)`` names the durability level of ``user``'s writes."""
        self.registry = CollectorRegistry()
        self._durability_of = durability_of
        r = self.registry
        self.requests = Counter(
            "replicad_admin_requests",
            "Client requests on the admin socket, by operation and outcome "
            "(ok, or the error class of the exit code: bad_input, not_found, "
            "unreachable, temporary, usage, other).",
            ["op", "result"],
            registry=r,
        )
        self.saves = Counter(
            "replicad_saves",
            "Messages saved through this node's admin socket and acknowledged to the client.",
            registry=r,
        )
        self.write_ack = Histogram(
            "replicad_write_ack_seconds",
            "Time from a client write arriving to its acknowledgement, successful "
            "writes only, by the durability level that applied (local: on this "
            "node's disk; quorum/all/N: on that many nodes' disks).",
            ["durability"],
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.log_events = Counter(
            "replicad_log_events",
            "Log events at warning level or above, by level.",
            ["level"],
            registry=r,
        )
        self.frame_errors = Counter(
            "replicad_frame_errors",
            "Frames that broke the protocol, by source (peer: an established "
            "node-to-node link, closed; admin: the admin socket, connection "
            "closed) and reason.",
            ["source", "reason"],
            registry=r,
        )
        self.link_refusals = Counter(
            "replicad_link_refusals",
            "Node-to-node links refused during setup (TLS or HELLO), by reason.",
            ["reason"],
            registry=r,
        )
        self.lmtp_deliveries = Counter(
            "replicad_lmtp_deliveries",
            "LMTP recipients by outcome: saved (250 after DATA), tempfail (451/452: "
            "durability level not reachable, store full, lookup or write failed; the "
            "MTA retries), rejected (550 unknown user at RCPT, 552 too large, 554 NUL).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("saved", "tempfail", "rejected"):
            self.lmtp_deliveries.labels(outcome)
        self.lmtp_delivery_seconds = Histogram(
            "replicad_lmtp_delivery_seconds",
            "Time from the end of an LMTP message's data to its per-recipient "
            "results (every recipient's copy saved at its durability level, or failed).",
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.imap_commands = Counter(
            "replicad_imap_commands",
            "IMAP commands by name and result: ok, no (refused: e.g. a mailbox that "
            "does not exist, or [UNAVAILABLE] when the durability level cannot be met), "
            "bad (syntax or state), error (an internal error, logged).",
            ["command", "result"],
            registry=r,
        )
        self.imap_command_seconds = Histogram(
            "replicad_imap_command_seconds",
            "Time from an IMAP command's last octet to its tagged answer.",
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self.imap_sessions = Gauge(
            "replicad_imap_sessions",
            "IMAP connections open on this node, authenticated or not.",
            registry=r,
        )
        self.migrate_items = Counter(
            "replicad_migrate",
            "What migrations from other IMAP servers did, by kind: messages copied, "
            "expunged, flags_changed (messages re-flagged), bytes (of copied messages).",
            ["kind"],
            registry=r,
        )
        self.migrate_passes = Counter(
            "replicad_migrate_passes",
            "Per-user migration passes by outcome: synced, retry (a transient "
            "failure, retried after a backoff), failed (stopped with its error class).",
            ["outcome"],
            registry=r,
        )
        self.snapshots = SnapshotCollector()
        r.register(self.snapshots)
        # Real process figures (CPU, memory, open files), read from /proc.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    # -- admin requests --

    def instrument(self, handler: AdminHandler, operations: Iterable[str]) -> AdminHandler:
        """``handler`` (the admin dispatcher), counting and timing each request.

        Only ``operations`` (the dispatcher's) become label values; any other
        name is counted as ``unknown``, so a hostile client cannot create
        series at will.
        """
        known = frozenset(operations)

        async def handle(op: str, args: dict[str, Any]) -> dict[str, Any]:
            start = time.perf_counter()
            response = await handler(op, args)
            self.observe(
                op if op in known else "unknown", args, response, time.perf_counter() - start
            )
            return response

        return handle

    def observe(
        self, op: str, args: dict[str, Any], response: dict[str, Any], seconds: float
    ) -> None:
        ok = bool(response.get("ok"))
        label = op
        self.requests.labels(label, "ok" if ok else _error_class(response)).inc()
        if not ok:
            return
        if op == "save":
            self.saves.inc()
        elif op == "append_many":
            result = response.get("result")
            self.saves.inc(len(result) if isinstance(result, list) else 0)
        user = args.get("user")
        if op in WRITE_OPS and isinstance(user, str):
            self.write_ack.labels(self._durability_of(user)).observe(seconds)

    # -- IMAP (replicad.imap.server.CommandMetrics) --

    def imap_command(self, command: str, result: str, seconds: float) -> None:
        self.imap_commands.labels(command, result).inc()
        self.imap_command_seconds.observe(seconds)

    def count_imap_sessions(self, count: Callable[[], int]) -> None:
        self.imap_sessions.set_function(count)

    # -- LMTP deliveries (replicad.lmtp.server.DeliveryMetrics) --

    def lmtp_outcome(self, outcome: str, recipients: int = 1) -> None:
        self.lmtp_deliveries.labels(outcome).inc(recipients)

    def lmtp_latency(self, seconds: float) -> None:
        self.lmtp_delivery_seconds.observe(seconds)

    # -- migrations (replicad.migrate.service) --

    def migrate_counts(self, messages: int, expunged: int, flags_changed: int, octets: int) -> None:
        for kind, value in (
            ("messages", messages),
            ("expunged", expunged),
            ("flags_changed", flags_changed),
            ("bytes", octets),
        ):
            self.migrate_items.labels(kind).inc(value)

    def migrate_pass(self, outcome: str) -> None:
        self.migrate_passes.labels(outcome).inc()

    # -- exposition --

    def render(self, snapshot: Snapshot, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header: (body, content type).

        Synchronous from the snapshot on, so two concurrent scrapes cannot
        see each other's half-set state.
        """
        self.snapshots.snapshot = snapshot
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _error_class(response: dict[str, Any]) -> str:
    name = response.get("error")
    if not isinstance(name, str):
        return ExitCode.OTHER.name.lower()
    return error_from_name(name, "").exit_code.name.lower()


# --- state at scrape time -------------------------------------------------------------


class SnapshotCollector:
    """Families built from the latest :class:`Snapshot` (set just before rendering)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def describe(self) -> Iterable[Metric]:
        return ()  # names vary with the peers; no collision check needed

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        yield from _node_families(snap)
        yield from _store_families(snap)
        yield from _tls_families(snap)
        if snap.cluster is not None:
            yield from _cluster_families(snap, snap.cluster)


def _gauge(name: str, doc: str, value: float | None = None, unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value, unit=unit)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _tls_families(snap: Snapshot) -> Iterable[Metric]:
    if not snap.certificates:
        return
    expiry = GaugeMetricFamily(
        "replicad_tls_certificate_expiry_seconds",
        "Seconds until the node's certificate (cert=node, tls.cert) or its CA "
        "(cert=ca, tls.ca: the first to end) stops being valid; negative once it has.",
        labels=["cert"],
    )
    for cert in snap.certificates:
        expiry.add_metric([cert.cert], cert.seconds_left)
    yield expiry


def _node_families(snap: Snapshot) -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "replicad_node_info", "The node's name and version (always 1).", labels=["node", "version"]
    )
    info.add_metric([snap.node, snap.version], 1)
    yield info
    health = evaluate(snap).status
    state = GaugeMetricFamily(
        "replicad_health_status",
        "1 for the node's current health (up, degraded, down; see /health), 0 for the others.",
        labels=["status"],
    )
    for status in Status:
        state.add_metric([status.label], 1 if status is health else 0)
    yield state
    yield _gauge("replicad_uptime_seconds", "Seconds since the node started.", snap.uptime)


def _store_families(snap: Snapshot) -> Iterable[Metric]:
    yield _gauge(
        "replicad_store_used_bytes",
        "Bytes of the LMDB map in use (index and compressed bodies).",
        snap.store_used_bytes,
    )
    yield _gauge(
        "replicad_store_map_size_bytes",
        "Largest size the LMDB map may grow to (node.map_size).",
        snap.store_map_size,
    )
    yield _gauge(
        "replicad_store_full",
        "1 while writes fail for lack of room (node.map_size reached or disk full): "
        "client writes get a temporary error and replication into this node pauses.",
        1 if snap.store_full else 0,
    )
    if snap.fs_free_bytes is not None and snap.fs_size_bytes is not None:
        yield _gauge(
            "replicad_store_filesystem_free_bytes",
            "Bytes free to the node on the file system of node.data_dir.",
            snap.fs_free_bytes,
        )
        yield _gauge(
            "replicad_store_filesystem_size_bytes",
            "Size of the file system of node.data_dir.",
            snap.fs_size_bytes,
        )
    yield _counter(
        "replicad_store_commits",
        "Store write transactions committed (group commit: one fsync each).",
        snap.commits,
    )
    yield _counter(
        "replicad_store_write_operations",
        "Store write operations committed (several per transaction under load).",
        snap.write_operations,
    )
    yield _gauge(
        "replicad_change_log_head",
        "Sequence number of the newest entry in this node's change log.",
        snap.log_head,
    )


def _cluster_families(snap: Snapshot, status: dict[str, Any]) -> Iterable[Metric]:
    stats: dict[str, int] = status.get("stats", {})
    for key, name, doc in (
        ("saves", "replicad_master_saves", "Saves executed here as the mailbox's master."),
        (
            "changes_applied",
            "replicad_changes_applied",
            "Change records received from peers and applied to the store.",
        ),
        ("changes_sent", "replicad_changes_sent", "Change records streamed to peers."),
        (
            "changes_held_back",
            "replicad_changes_held_back",
            "Change records not streamed to a peer whose copy of the mailbox has a gap "
            "(outbox overflow, oversized change): the resync that closes it brings them.",
        ),
        (
            "changes_refused_skew",
            "replicad_changes_refused_clock_skew",
            "Peer changes refused (and marked for resync) for a stamp beyond "
            "cluster.max_clock_skew ahead of this node's clock.",
        ),
        (
            "forwarded",
            "replicad_writes_forwarded",
            "Client writes forwarded towards another node, their mailbox's master.",
        ),
    ):
        if key in stats:
            yield _counter(name, doc, stats[key])
    yield _gauge("replicad_cluster_epoch", "The root's epoch this node follows.", status["epoch"])
    yield _gauge(
        "replicad_cluster_is_root",
        "1 if this node is the cluster's root.",
        1 if status.get("root") == snap.node else 0,
    )
    yield _gauge(
        "replicad_masters",
        "Mailboxes (keys of cluster.granularity) this node masters, as far as it knows.",
        status.get("masters", 0),
    )
    yield _gauge(
        "replicad_outbox_limit",
        "Unacknowledged changes kept per peer before its mailboxes are marked "
        "for resync (cluster.max_outbox).",
        snap.max_outbox,
    )

    peers: list[dict[str, Any]] = status.get("peers", [])
    per_peer: dict[str, GaugeMetricFamily] = {
        "link": GaugeMetricFamily(
            "replicad_peer_link_up",
            "1 if this node has a direct link to the peer.",
            labels=["peer"],
        ),
        "reachable": GaugeMetricFamily(
            "replicad_peer_reachable",
            "1 if the peer is reachable (directly or through other nodes).",
            labels=["peer"],
        ),
        "rtt": GaugeMetricFamily(
            "replicad_peer_rtt_seconds", "Round trip of the last PING on the link.", labels=["peer"]
        ),
        "outbox": GaugeMetricFamily(
            "replicad_outbox_depth",
            "Changes in this node's log the peer has not acknowledged yet.",
            labels=["peer"],
        ),
        "lag": GaugeMetricFamily(
            "replicad_replication_lag_seconds",
            "How far the peer is behind: age of the oldest change it has not "
            "acknowledged (0 when caught up).",
            labels=["peer"],
        ),
        "marks": GaugeMetricFamily(
            "replicad_resync_marks",
            "Mailboxes marked for a resync with the peer.",
            labels=["peer"],
        ),
    }
    ack_delay = GaugeMetricFamily(
        "replicad_replication_ack_delay_seconds",
        "Time from a write here to the peer's acknowledgement, over the last "
        "1000 acknowledged changes of the current link, by quantile.",
        labels=["peer", "quantile"],
    )
    for row in peers:
        name = row["name"]
        per_peer["link"].add_metric([name], 1 if row.get("link") == "up" else 0)
        per_peer["reachable"].add_metric([name], 1 if row.get("reachable") else 0)
        if row.get("rtt_ms") is not None:
            per_peer["rtt"].add_metric([name], row["rtt_ms"] / 1000)
        if row.get("outbox") is not None:
            per_peer["outbox"].add_metric([name], row["outbox"])
        if row.get("lag_s") is not None:
            per_peer["lag"].add_metric([name], row["lag_s"])
        if row.get("resync") is not None:
            per_peer["marks"].add_metric([name], row["resync"])
        for key, q in (("lag_p50_ms", "0.5"), ("lag_p99_ms", "0.99")):
            if row.get(key) is not None:
                ack_delay.add_metric([name, q], row[key] / 1000)
    yield from per_peer.values()
    yield ack_delay

    sent = CounterMetricFamily(
        "replicad_link_sent_bytes",
        "Bytes written to the peer over node-to-node links since start "
        "(protocol bytes: compressed when zstd is on, before TLS).",
        labels=["peer"],
    )
    received = CounterMetricFamily(
        "replicad_link_received_bytes",
        "Bytes read from the peer over node-to-node links since start (as for sent).",
        labels=["peer"],
    )
    for peer, traffic in sorted(snap.traffic.items()):
        sent.add_metric([peer], traffic.sent)
        received.add_metric([peer], traffic.received)
    yield sent
    yield received

    resync = snap.resync or {}
    resyncs = CounterMetricFamily(
        "replicad_resyncs",
        "Mailbox resyncs run by this node as master, by result (done, failed).",
        labels=["result"],
    )
    resyncs.add_metric(["done"], resync.get("done", 0))
    resyncs.add_metric(["failed"], resync.get("failed", 0))
    yield resyncs
    queued = GaugeMetricFamily(
        "replicad_resyncs_queued", "Mailbox resyncs waiting, per peer.", labels=["peer"]
    )
    for peer, count in sorted(resync.get("queued", {}).items()):
        queued.add_metric([peer], count)
    yield queued
    yield _gauge(
        "replicad_resyncs_running",
        "Mailbox resyncs running now (at most four per peer).",
        sum(len(boxes) for boxes in resync.get("running", {}).values()),
    )
    yield _counter(
        "replicad_conflicts_resolved",
        "Resyncs in which this node, as master, merged a differing copy into its "
        "own (UID collisions, flag conflicts, expunges resolved).",
        resync.get("merged_here", 0),
    )
    yield _counter(
        "replicad_verify_runs",
        "Digest comparisons with a peer (anti-entropy, cluster.verify_interval).",
        snap.verify_runs,
    )
    yield _counter(
        "replicad_verify_differences",
        "Mailboxes found to differ by those comparisons.",
        snap.verify_found,
    )


# --- warnings in the log ---------------------------------------------------------------


class LogEventCounter(logging.Handler):
    """Counts warning-level events by level and, for protocol trouble, by reason.

    Link refusals and protocol errors are already reported at one place
    each, as one structured log event (``link-refused reason=…``,
    ``link-error``, ``admin.bad_frame``); counting them there keeps every
    counting line out of the transport and cluster code and means the
    metric can never disagree with the log.  The node keeps its loggers at
    warning level or lower for this (see ``replicad.node.configure_logging``),
    whatever level is printed.
    """

    def __init__(self, metrics: NodeMetrics) -> None:
        super().__init__(logging.WARNING)
        self.metrics = metrics

    def emit(self, record: logging.LogRecord) -> None:
        m = self.metrics
        m.log_events.labels(record.levelname.lower()).inc()
        event = getattr(record, "event", None) or record.msg
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        if event == "link-refused":
            m.link_refusals.labels(_reason(fields.get("reason"))).inc()
        elif event == "link-error" or (
            event == "link-closed" and fields.get("reason") == "protocol"
        ):
            m.frame_errors.labels("peer", "protocol").inc()
        elif event == "admin.bad_frame":
            m.frame_errors.labels("admin", "bad_frame").inc()
        elif event == "admin.bad_request":
            m.frame_errors.labels("admin", "bad_request").inc()


def _reason(value: object) -> str:
    # Refusal reasons are short codes (LinkRefusedError.reason); anything
    # else is folded so a label can never carry free text.
    text = str(value or "unknown")
    return text if len(text) <= 32 and text.replace("-", "").isalnum() else "other"
