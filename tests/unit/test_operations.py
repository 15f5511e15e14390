"""Operations plumbing in process: the [metrics] and node.shutdown_timeout config
keys, health rules, sd_notify, per-peer traffic, log-event counters, and the
HTTP listener (bounded, GET-only, token-gated details)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import gc
import json
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from replicad import httpd
from replicad.cluster.durability import DurabilityLevel
from replicad.config import parse_config
from replicad.errors import ConfigError, ExitCode, TemporaryError
from replicad.health import Status, evaluate
from replicad.httpd import HttpServer, is_loopback, parse_head
from replicad.metrics import LogEventCounter, NodeMetrics
from replicad.node import _drain, _drain_outbox, status_line, warn_expiring_certificates
from replicad.observe import CertificateExpiry, LinkMeter, PeerTraffic, Phase, Snapshot
from replicad.sdnotify import Notifier
from replicad.store.mailstore import MailStore
from replicad.store.writer import ThreadExecutor
from replicad.transport.link import LinkTraffic
from replicad.transport.logfmt import log_event

BASE = Path("/srv/replicad/replicad.toml")
MINIMAL = '[node]\nname = "n1"\ndata_dir = "data"\n'
TOKEN = "s3cret-token-0123456789"


# --- config ------------------------------------------------------------------------------


def config_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, BASE)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    return str(info.value)


def test_metrics_section_is_off_by_default_and_parsed_when_present() -> None:
    config = parse_config(MINIMAL, BASE)
    assert config.metrics is None
    assert config.node.shutdown_timeout == 10.0
    config = parse_config(
        MINIMAL
        + "shutdown_timeout = 2.5\n"
        + f'[metrics]\nlisten = "[::1]:9187"\nhealth_token = "{TOKEN}"\n',
        BASE,
    )
    assert config.node.shutdown_timeout == 2.5
    assert config.metrics is not None
    assert (config.metrics.host, config.metrics.port) == ("::1", 9187)
    assert config.metrics.address == "[::1]:9187"
    assert config.metrics.health_token == TOKEN
    assert TOKEN not in repr(config)  # a config printed in a traceback keeps it secret


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[metrics]\n", "missing required key metrics.listen"),
        ('[metrics]\nlisten = "9187"\n', "metrics.listen '9187' is not host:port"),
        ('[metrics]\nlisten = "127.0.0.1:70000"\n', "port 70000 is outside 1..65535"),
        ("[metrics]\nlisten = 9187\n", "metrics.listen must be a string"),
        ('[metrics]\nlisen = "127.0.0.1:1"\n', "did you mean metrics.listen?"),
        (
            '[metrics]\nlisten = "127.0.0.1:7750"\n',
            "metrics.listen '127.0.0.1:7750' uses port 7750, the port of listen.port",
        ),
        (
            '[metrics]\nlisten = "127.0.0.1:9187"\nhealth_token = "short"\n',
            "metrics.health_token is shorter than 16 characters",
        ),
        (
            '[metrics]\nlisten = "127.0.0.1:9187"\nhealth_token = "with space 0123456789"\n',
            "metrics.health_token must be printable ASCII without spaces",
        ),
        (
            '[metrics]\nlisten = "127.0.0.1:9187"\nhealth_token = 98765432109876543\n',
            "metrics.health_token must be a string, not an integer",
        ),
        ("metrics = 1\n", "metrics must be a table"),
    ],
)
def test_bad_metrics_config_names_the_key(text: str, expected: str) -> None:
    # Top-level keys must come before [node] in TOML.
    doc = text + MINIMAL if text.startswith("metrics =") else MINIMAL + text
    message = config_error(doc)
    assert expected in message
    assert "with space" not in message  # the token is never echoed
    assert "98765432109876543" not in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("-1", "node.shutdown_timeout -1 is outside 0..600 seconds"),
        ("601", "node.shutdown_timeout 601 is outside 0..600 seconds"),
        ('"10s"', "node.shutdown_timeout must be a number of seconds"),
    ],
)
def test_bad_shutdown_timeout_names_the_key(value: str, expected: str) -> None:
    assert expected in config_error(MINIMAL + f"shutdown_timeout = {value}\n")


# --- health rules ------------------------------------------------------------------------


def peer_row(name: str, **fields: Any) -> dict[str, Any]:
    row = {"name": name, "link": "up", "reachable": True, "via": name, "outbox": 0, "lag_s": 0.0}
    row.update(fields)
    return row


def snapshot(**overrides: Any) -> Snapshot:
    base = Snapshot(
        node="n1",
        version="0",
        phase=Phase.SERVING,
        uptime=12.0,
        store_used_bytes=10 << 20,
        store_map_size=1 << 30,
        fs_free_bytes=50 << 30,
        fs_size_bytes=100 << 30,
        commits=3,
        write_operations=4,
        log_head=7,
        max_message_size=1 << 20,
        max_outbox=100,
        durability=(("node", DurabilityLevel("local", 1)),),
        configured_peers=("n2", "n3"),
        cluster={
            "root": "n1",
            "epoch": 2,
            "masters": 1,
            "stats": {"saves": 5, "changes_applied": 6, "changes_sent": 10, "forwarded": 0},
            "peers": [peer_row("n2"), peer_row("n3")],
        },
        resync={"running": {}, "queued": {"n2": 2}, "done": 3, "failed": 1, "merged_here": 1},
        verify_runs=4,
        verify_found=1,
        traffic={"n2": PeerTraffic(100, 200)},
    )
    return dataclasses.replace(base, **overrides)


def with_peers(*rows: dict[str, Any], **cluster: Any) -> Snapshot:
    status = {**snapshot().cluster, "peers": list(rows), **cluster}  # type: ignore[dict-item]
    return snapshot(cluster=status)


def test_a_healthy_node_is_up() -> None:
    health = evaluate(snapshot())
    assert health.status is Status.UP and health.reasons == []
    assert health.summary() == {"status": "up"}
    assert health.details()["checks"]["cluster"]["peers"]["n2"]["status"] == "up"


@pytest.mark.parametrize(
    ("snap", "status", "reason"),
    [
        (snapshot(phase=Phase.STARTING), Status.DOWN, "starting"),
        (snapshot(phase=Phase.STOPPING), Status.DOWN, "shutting down"),
        (
            with_peers(peer_row("n2"), peer_row("n3", link="down", reachable=False, via=None)),
            Status.DEGRADED,
            "peer n3 unreachable",
        ),
        (
            with_peers(peer_row("n2"), peer_row("n3", link="down", via="n2")),
            Status.DEGRADED,
            "no direct link to peer n3 (reached through n2)",
        ),
        (
            with_peers(peer_row("n2", outbox=85), peer_row("n3")),
            Status.DEGRADED,
            "outbox to n2 at 85 of 100 changes",
        ),
        (with_peers(peer_row("n2"), peer_row("n3"), root=None), Status.DEGRADED, "no root"),
        (snapshot(store_used_bytes=(1 << 30) - 1000), Status.DEGRADED, "store map full"),
        (
            snapshot(store_full="store full: the LMDB map reached node.map_size"),
            Status.DEGRADED,
            "store full, writes refused and replication paused",
        ),
        (snapshot(store_used_bytes=950 << 20), Status.DEGRADED, "store map 93% full"),
        (snapshot(fs_free_bytes=1000), Status.DEGRADED, "data file system full"),
        (snapshot(fs_free_bytes=5 << 30), Status.DEGRADED, "data file system 95% full"),
    ],
)
def test_health_reasons(snap: Snapshot, status: Status, reason: str) -> None:
    health = evaluate(snap)
    assert health.status is status, health.reasons
    assert any(reason in r for r in health.reasons), health.reasons


def certificate(cert: str, days: float) -> CertificateExpiry:
    end = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC)
    return CertificateExpiry(cert, f"/etc/replicad/{cert}.crt", end, days * 86400)


def test_certificates_ending_within_7_days_degrade_naming_file_and_date() -> None:
    fine = snapshot(certificates=(certificate("node", 20), certificate("ca", 400)))
    health = evaluate(fine)
    assert health.status is Status.UP and health.checks["tls"]["status"] == "up"
    assert health.checks["tls"]["node"]["file"] == "/etc/replicad/node.crt"
    soon = evaluate(snapshot(certificates=(certificate("node", 6.5), certificate("ca", 400))))
    assert soon.status is Status.DEGRADED
    assert soon.reasons == [
        "node certificate /etc/replicad/node.crt expires on 2030-01-02 03:04 UTC "
        "(in 6.5 days): replace it and reload"
    ]
    ended = evaluate(snapshot(certificates=(certificate("ca", -1),)))
    assert ended.status is Status.DEGRADED
    assert ended.reasons[0].startswith("ca certificate /etc/replicad/ca.crt expired on 2030-01-02")
    assert "tls" not in evaluate(snapshot()).checks  # a single node has no certificates


def test_certificate_expiry_metric() -> None:
    metrics = NodeMetrics(lambda user: "local")
    body, _ = metrics.render(
        snapshot(certificates=(certificate("node", 2), certificate("ca", 400))), ""
    )
    samples = {
        (s.name, tuple(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("replicad_tls_certificate_expiry_seconds", (("cert", "node"),))] == 2 * 86400
    assert samples[("replicad_tls_certificate_expiry_seconds", (("cert", "ca"),))] == 400 * 86400


def test_certificates_ending_within_30_days_are_warned_of(node_log: Records) -> None:
    observer = SimpleNamespace(
        certificates=lambda: (certificate("node", 29), certificate("ca", 31))
    )
    warn_expiring_certificates(observer)  # type: ignore[arg-type]
    warned = [r for r in node_log.records if r.getMessage() == "tls.certificate_expiring"]
    assert [r.kv["cert"] for r in warned] == ["node"]  # type: ignore[attr-defined]
    assert warned[0].levelno == logging.WARNING
    assert warned[0].kv["file"] == "/etc/replicad/node.crt"  # type: ignore[attr-defined]
    assert warned[0].kv["not_after"] == "2030-01-02T03:04:00Z"  # type: ignore[attr-defined]


def test_durability_that_cannot_be_met_degrades() -> None:
    levels = (("node", DurabilityLevel("quorum", 2)), ("user ceo", DurabilityLevel("all", 3)))
    rows = [peer_row("n2"), peer_row("n3", link="down", reachable=False, via=None)]
    snap = dataclasses.replace(with_peers(*rows), durability=levels)
    health = evaluate(snap)
    assert health.status is Status.DEGRADED
    [reason] = [r for r in health.reasons if "durability" in r]
    assert (
        reason == "durability all (user ceo) needs 3 nodes, 2 linked: such writes fail with exit 75"
    )
    assert health.checks["durability"]["status"] == "degraded"


def test_nodes_reached_only_through_peers_are_not_judged_here() -> None:
    snap = with_peers(peer_row("n2"), peer_row("n3"), peer_row("n9", link="down", reachable=False))
    assert evaluate(snap).status is Status.UP


# --- sd_notify ---------------------------------------------------------------------------


@pytest.fixture
def datagram_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def test_notifier_sends_to_a_path_socket(datagram_socket: tuple[socket.socket, str]) -> None:
    sock, path = datagram_socket
    notifier = Notifier(path)
    notifier.ready("serving")
    notifier.status("line one\nline two")
    notifier.stopping()
    notifier.close()
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    assert sock.recv(4096) == b"STATUS=line one line two"  # a newline cannot forge a key
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_notifier_abstract_namespace() -> None:
    name = f"replicad-test-{os.getpid()}-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier(f"@{name}").send("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_notifier_outside_systemd_and_with_a_dead_socket(tmp_path: Path) -> None:
    assert not Notifier.from_environment({}).enabled
    assert not Notifier.from_environment({}).send("READY=1")
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert gone.enabled and not gone.send("READY=1")  # logged, never raised


def test_watchdog_settings_follow_sd_watchdog_enabled() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000"}
    assert Notifier.from_environment(env, pid=42).watchdog_interval == 1.5
    other = {**env, "WATCHDOG_PID": "41"}
    assert Notifier.from_environment(other, pid=42).watchdog_interval is None
    assert Notifier.from_environment({**env, "WATCHDOG_PID": "42"}, pid=42).watchdog_usec
    assert Notifier.from_environment({"WATCHDOG_USEC": "1000"}).watchdog_interval is None


async def test_watchdog_pings_only_while_the_probe_answers(
    datagram_socket: tuple[socket.socket, str],
) -> None:
    sock, path = datagram_socket
    sock.setblocking(False)
    notifier = Notifier(path, watchdog_usec=20_000)  # a ping every 10 ms

    def received() -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(4096))
            except BlockingIOError:
                return out

    async def fine() -> None:
        await trio.sleep(0)

    with trio.move_on_after(0.1):
        await notifier.watchdog_loop(fine)
    pings = received()
    assert len(pings) >= 3 and set(pings) == {b"WATCHDOG=1"}

    async def wedged() -> None:
        await trio.sleep_forever()

    async def failing() -> None:
        raise TemporaryError("store closed")

    for probe in (wedged, failing):
        with trio.move_on_after(0.1):
            await notifier.watchdog_loop(probe)
        assert received() == []
    notifier.close()


async def test_a_saturated_reader_pool_does_not_delay_the_watchdog_probe(
    tmp_path: Path, datagram_socket: tuple[socket.socket, str]
) -> None:
    """Long reads (anti-entropy digests) holding every reader thread must not
    stop the watchdog pings: the probe has a thread of its own."""
    sock, path = datagram_socket
    sock.setblocking(False)
    executor = ThreadExecutor(readers=4)
    unblock = threading.Event()
    async with (
        MailStore.open(tmp_path / "store", map_size=1 << 24, executor=executor) as store,
        trio.open_nursery() as nursery,
    ):
        try:
            # Four long reads hold the pool, two more queue behind them.
            for _ in range(6):
                nursery.start_soon(executor.run_read, lambda: unblock.wait(30))
            await trio.sleep(0.1)
            with trio.move_on_after(0.3) as queued:
                await store.log_head()  # an ordinary read waits its turn
            assert queued.cancelled_caught
            with trio.fail_after(2):
                assert await store.probe() == 0
            notifier = Notifier(path, watchdog_usec=40_000)  # a ping every 20 ms
            with trio.move_on_after(0.3):
                await notifier.watchdog_loop(store.probe)
            notifier.close()
            pings = []
            with contextlib.suppress(BlockingIOError):
                while True:
                    pings.append(sock.recv(4096))
            assert len(pings) >= 3 and set(pings) == {b"WATCHDOG=1"}
        finally:
            unblock.set()


# --- per-peer traffic and log events ------------------------------------------------------


class FakeLink:
    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.traffic = LinkTraffic()


def test_link_meter_sums_links_across_reconnections() -> None:
    meter = LinkMeter()
    first = FakeLink("n2")
    meter.track(first)  # type: ignore[arg-type]
    first.traffic.sent, first.traffic.received = 10, 20
    assert meter.totals() == {"n2": PeerTraffic(10, 20)}
    first.traffic.sent = 15  # bytes written after the last look still count
    del first
    gc.collect()
    second = FakeLink("n2")
    meter.track(second)  # type: ignore[arg-type]
    second.traffic.sent = 1
    other = FakeLink("n3")
    meter.track(other)  # type: ignore[arg-type]
    assert meter.totals() == {"n2": PeerTraffic(16, 20), "n3": PeerTraffic(0, 0)}
    assert meter.totals() == {"n2": PeerTraffic(16, 20), "n3": PeerTraffic(0, 0)}


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return value


def test_log_events_are_counted_by_reason() -> None:
    metrics = NodeMetrics(lambda user: "local")
    logger = logging.getLogger("replicad.test-events")
    counter = LogEventCounter(metrics)
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        log_event(logger, logging.WARNING, "link-refused", reason="unknown-peer", detail="x")
        log_event(logger, logging.WARNING, "link-refused", reason="free text: no!", detail="x")
        log_event(logger, logging.WARNING, "link-error", peer="n2", reason="garbage")
        log_event(logger, logging.INFO, "link-up", peer="n2")
        logger.warning("admin.bad_frame", extra={"kv": {"error": "ProtocolError"}})
        logger.error("node.reload_failed")
    finally:
        logger.removeHandler(counter)
    assert sample(metrics, "replicad_link_refusals_total", reason="unknown-peer") == 1
    assert sample(metrics, "replicad_link_refusals_total", reason="other") == 1
    assert sample(metrics, "replicad_frame_errors_total", source="peer", reason="protocol") == 1
    assert sample(metrics, "replicad_frame_errors_total", source="admin", reason="bad_frame") == 1
    assert sample(metrics, "replicad_log_events_total", level="warning") == 4
    assert sample(metrics, "replicad_log_events_total", level="error") == 1


async def test_admin_requests_are_counted_and_writes_timed_by_durability() -> None:
    metrics = NodeMetrics(lambda user: "all" if user == "ceo" else "local")

    async def handler(op: str, args: dict[str, Any]) -> dict[str, Any]:
        if op == "fetch":
            return {"ok": False, "error": "NoSuchMailboxError", "message": "no"}
        if op == "append_many":
            return {"ok": True, "result": [{}, {}, {}]}
        return {"ok": True, "result": {}}

    handle = metrics.instrument(handler, ("save", "append_many", "fetch"))
    await handle("save", {"user": "alice"})
    await handle("save", {"user": "ceo"})
    await handle("append_many", {"user": "alice"})
    await handle("fetch", {"user": "alice"})
    await handle("made-up-op", {})
    assert sample(metrics, "replicad_saves_total") == 5
    assert sample(metrics, "replicad_admin_requests_total", op="save", result="ok") == 2
    assert sample(metrics, "replicad_admin_requests_total", op="fetch", result="not_found") == 1
    assert sample(metrics, "replicad_admin_requests_total", op="unknown", result="ok") == 1
    assert sample(metrics, "replicad_write_ack_seconds_count", durability="local") == 2
    assert sample(metrics, "replicad_write_ack_seconds_count", durability="all") == 1


def test_snapshot_metrics_export_what_the_runtime_tracks() -> None:
    metrics = NodeMetrics(lambda user: "local")
    body, content_type = metrics.render(
        with_peers(peer_row("n2", rtt_ms=1.5, lag_p50_ms=2.0, resync=1), peer_row("n3", outbox=4))
    )
    assert content_type.startswith("text/plain")
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    expected = {
        ("replicad_master_saves_total", ()): 5,
        ("replicad_changes_applied_total", ()): 6,
        ("replicad_changes_sent_total", ()): 10,
        ("replicad_peer_rtt_seconds", (("peer", "n2"),)): 0.0015,
        ("replicad_outbox_depth", (("peer", "n3"),)): 4,
        ("replicad_replication_ack_delay_seconds", (("peer", "n2"), ("quantile", "0.5"))): 0.002,
        ("replicad_resync_marks", (("peer", "n2"),)): 1,
        ("replicad_link_sent_bytes_total", (("peer", "n2"),)): 100,
        ("replicad_link_received_bytes_total", (("peer", "n2"),)): 200,
        ("replicad_resyncs_total", (("result", "done"),)): 3,
        ("replicad_resyncs_total", (("result", "failed"),)): 1,
        ("replicad_resyncs_queued", (("peer", "n2"),)): 2,
        ("replicad_conflicts_resolved_total", ()): 1,
        ("replicad_verify_runs_total", ()): 4,
        ("replicad_cluster_is_root", ()): 1,
        ("replicad_health_status", (("status", "up"),)): 1,
        ("replicad_store_filesystem_free_bytes", ()): 50 << 30,
    }
    for key, value in expected.items():
        assert found.get(key) == pytest.approx(value), key
    # A value the runtime does not have (n3's RTT) is left out, never faked.
    assert ("replicad_peer_rtt_seconds", (("peer", "n3"),)) not in found


# --- the HTTP listener -------------------------------------------------------------------


class FakeObserver:
    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    async def snapshot(self) -> Snapshot:
        return self.snap


@pytest.fixture
async def http(nursery: trio.Nursery) -> tuple[HttpServer, int]:
    server = HttpServer(
        NodeMetrics(lambda user: "local"),
        FakeObserver(snapshot()),  # type: ignore[arg-type]
        health_token=TOKEN,
    )
    listeners = await nursery.start(server.run, "127.0.0.1", 0)
    return server, listeners[0].socket.getsockname()[1]


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, body


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: x", *headers, "", ""]).encode()


async def test_http_metrics_and_head(http: tuple[HttpServer, int]) -> None:
    _, port = http
    status, headers, body = await exchange(port, get("/metrics?x=1"))
    assert status == 200 and headers["connection"] == "close"
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"replicad_changes_sent", "replicad_outbox_depth", "process_cpu_seconds"} <= names
    status, headers, body = await exchange(port, get("/metrics", method="HEAD"))
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    status, headers, body = await exchange(
        port, get("/metrics", "Accept: application/openmetrics-text; version=1.0.0")
    )
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_http_health_summary_details_and_token(http: tuple[HttpServer, int]) -> None:
    server, port = http
    # Loopback sees the details without a token.
    status, _, body = await exchange(port, get("/health"))
    assert status == 200
    document = json.loads(body)
    assert document["status"] == "up" and document["node"] == "n1" and "checks" in document
    status, _, body = await exchange(port, get("/health", f"Authorization: Bearer {TOKEN}"))
    assert status == 200 and "checks" in json.loads(body)
    status, headers, body = await exchange(port, get("/health", "Authorization: Bearer nope"))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert TOKEN.encode() not in body
    # Down is 503, so a load balancer takes the node out.
    server.observer = FakeObserver(snapshot(phase=Phase.STOPPING))  # type: ignore[assignment]
    status, _, body = await exchange(port, get("/health"))
    assert status == 503 and json.loads(body)["status"] == "down"


def test_health_details_need_loopback_or_the_token() -> None:
    server = HttpServer(
        NodeMetrics(lambda u: "local"), FakeObserver(snapshot()), health_token=TOKEN
    )  # type: ignore[arg-type]
    plain = parse_head(get("/health")[:-4])
    assert not server._may_see_details(plain, "192.0.2.7")
    assert server._may_see_details(plain, "127.0.0.1")
    assert server._may_see_details(plain, "::ffff:127.0.0.1")
    with_token = parse_head(get("/health", f"Authorization: Bearer {TOKEN}")[:-4])
    assert server._may_see_details(with_token, "192.0.2.7")
    server.health_token = None  # no token configured: a bearer never unlocks details
    with pytest.raises(httpd.HttpError):
        server._may_see_details(with_token, "192.0.2.7")
    assert is_loopback("::1") and not is_loopback("-") and not is_loopback("10.0.0.1")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (get("/nope"), 404),
        (get("/metrics", method="POST"), 405),
        (get("/health", method="DELETE"), 405),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (httpd.MAX_REQUEST_HEAD + 10), 431),
    ],
)
async def test_http_refusals(http: tuple[HttpServer, int], raw: bytes, status: int) -> None:
    _, port = http
    got, headers, _ = await exchange(port, raw)
    assert got == status
    if status == 405:
        assert headers["allow"] == "GET, HEAD"


async def test_http_slow_client_is_cut_off(
    http: tuple[HttpServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = http
    monkeypatch.setattr(httpd, "READ_TIMEOUT", 0.2)
    status, _, _ = await exchange(port, b"GET /metrics HTTP/1.1\r\n")  # never finishes
    assert status == 408


async def test_http_slowloris_is_dropped_at_the_read_deadline(
    http: tuple[HttpServer, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = http
    monkeypatch.setattr(httpd, "READ_TIMEOUT", 0.3)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        with trio.fail_after(5):
            # One byte every 50 ms keeps the socket busy but never finishes
            # a head: the deadline covers the whole head, not each read.
            with contextlib.suppress(trio.BrokenResourceError):
                for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.05)
            data = b""
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(4096):
                    data += chunk
    assert data.startswith(b"HTTP/1.1 408 ")


async def test_health_answers_while_64_idle_sockets_are_held_open(
    http: tuple[HttpServer, int],
) -> None:
    server, port = http
    idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(64)]
    try:
        await trio.sleep(0.1)  # every one of them accepted, none sends a byte
        with trio.fail_after(2):
            status, _, body = await exchange(port, get("/health"))
        assert status == 200 and json.loads(body)["status"] == "up"
        assert server.evicted >= 64 - httpd.MAX_CONNECTIONS
    finally:
        for stream in idle:
            await stream.aclose()


async def test_http_connection_limit_refuses_at_once_when_all_are_busy(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()

    class SlowObserver(FakeObserver):
        async def snapshot(self) -> Snapshot:
            await release.wait()
            return self.snap

    server = HttpServer(
        NodeMetrics(lambda user: "local"),
        SlowObserver(snapshot()),  # type: ignore[arg-type]
        max_connections=1,
    )
    listeners = await nursery.start(server.run, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    busy = await trio.open_tcp_stream("127.0.0.1", port)  # holds the only slot
    async with busy:
        await busy.send_all(get("/health"))
        await trio.sleep(0.05)
        refused = await trio.open_tcp_stream("127.0.0.1", port)
        async with refused:
            with trio.fail_after(5):
                assert await refused.receive_some(10) == b""  # closed at once
        release.set()
        with trio.fail_after(5):
            assert (await busy.receive_some(100)).startswith(b"HTTP/1.1 200 ")
    status, _, _ = await exchange(port, get("/health"))
    assert status == 200


async def test_an_idle_connection_gives_its_slot_to_a_newcomer(nursery: trio.Nursery) -> None:
    server = HttpServer(
        NodeMetrics(lambda user: "local"),
        FakeObserver(snapshot()),  # type: ignore[arg-type]
        max_connections=1,
    )
    listeners = await nursery.start(server.run, "127.0.0.1", 0)
    port = listeners[0].socket.getsockname()[1]
    idle = await trio.open_tcp_stream("127.0.0.1", port)  # holds the only slot
    async with idle:
        await trio.sleep(0.05)
        with trio.fail_after(2):
            status, _, _ = await exchange(port, get("/health"))
            assert status == 200
            assert await idle.receive_some(10) == b""  # it was closed for the newcomer
    assert server.evicted == 1


async def test_http_port_in_use_names_the_key(nursery: trio.Nursery) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = HttpServer(NodeMetrics(lambda u: "local"), FakeObserver(snapshot()))  # type: ignore[arg-type]
        with pytest.raises(Exception, match=rf"cannot listen on metrics.listen 127.0.0.1:{port}"):
            await server.run("127.0.0.1", port)


# --- the shutdown drain ------------------------------------------------------------------


class FakeHead:
    def __init__(self, head: int) -> None:
        self.head = head

    async def log_head(self) -> int:
        return self.head


def fake_cluster(**acked: int) -> Any:
    return SimpleNamespace(
        sessions={
            name: SimpleNamespace(closed=False, outbox=SimpleNamespace(acked=seq))
            for name, seq in acked.items()
        }
    )


class Records(logging.Handler):
    """Records of the ``replicad.node`` logger, whatever its propagation (the
    node's logging setup turns propagation off, which would hide them from caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def node_log() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("replicad.node")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def test_drain_waits_until_linked_peers_acknowledged_the_log(node_log: Records) -> None:
    store = FakeHead(5)
    cluster = fake_cluster(n2=3, n3=5)
    done = trio.Event()

    async def drain() -> None:
        await _drain_outbox(cluster, store, trio.current_time() + 10)  # type: ignore[arg-type]
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await trio.sleep(0.2)
        assert not done.is_set()  # n2 is two changes behind
        cluster.sessions["n2"].outbox.acked = 5
        with trio.fail_after(5):
            await done.wait()
    assert not [r for r in node_log.records if r.msg == "node.outbox_not_drained"]


async def test_drain_gives_up_at_the_deadline_and_skips_closed_links(node_log: Records) -> None:
    cluster = fake_cluster(n2=1, n3=0)
    cluster.sessions["n3"].closed = True  # a link going away: not waited for
    await _drain_outbox(cluster, FakeHead(4), trio.current_time() + 0.2)
    [record] = [r for r in node_log.records if r.msg == "node.outbox_not_drained"]
    assert record.kv == {"peers": "n2:3"}  # type: ignore[attr-defined]


def test_status_line_for_systemctl_status() -> None:
    assert status_line(snapshot()) == "serving, health up; 2/2 peers linked, root n1 epoch 2"
    down = with_peers(peer_row("n2"), peer_row("n3", link="down", reachable=False, via=None))
    assert status_line(down) == (
        "serving, health degraded; 1/2 peers linked, root n1 epoch 2; peer n3 unreachable"
    )


class FakeAdminServer:
    def __init__(self) -> None:
        self.closed = trio.Event()  # a client request that never finishes
        self.connection_count = 1
        self.draining = False

    def drain(self) -> None:
        self.draining = True


async def test_drain_is_bounded_and_a_second_sigterm_cuts_it_short(node_log: Records) -> None:
    server = FakeAdminServer()
    start = trio.current_time()
    await _drain(server, None, FakeHead(0), 0.2, _no_signals())  # type: ignore[arg-type]
    assert server.draining and trio.current_time() - start < 5
    assert [r.msg for r in node_log.records] == ["node.requests_cancelled"]

    async def impatient() -> AsyncIterator[int]:
        await trio.sleep(0.05)
        yield signal.SIGHUP  # a reload during the drain changes nothing
        await trio.sleep(0.05)
        yield signal.SIGTERM
        await trio.sleep_forever()

    node_log.records.clear()
    with trio.fail_after(5):
        await _drain(FakeAdminServer(), None, FakeHead(0), 600, impatient())  # type: ignore[arg-type]
    [record] = node_log.records
    assert record.msg == "node.drain_cut_short" and record.kv == {"signal": "SIGTERM"}  # type: ignore[attr-defined]


async def _no_signals() -> AsyncIterator[int]:
    await trio.sleep_forever()
    yield 0  # pragma: no cover (makes this an async generator)
