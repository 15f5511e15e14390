"""Operating a node as a service, against real ``replicad serve`` processes.

* sd_notify: the node gets a ``NOTIFY_SOCKET`` of its own (an abstract
  datagram socket bound here) and must send READY=1, WATCHDOG=1 pings and
  STOPPING=1, in that order.
* ``/metrics`` is parsed with prometheus-client's parser and checked against
  the operations just performed; ``/health`` of a 3-node cluster turns
  degraded when a peer is killed (``cluster up`` with a metrics listener per
  node).
* SIGTERM during a burst of saves: every save either returned a UID and is
  on disk after a restart, or failed with a clear error (exit 69 or 75).
* SIGHUP re-reads the log level and what else applies live (other sections
  are reported as needing a restart), and the peer list: a peer removed from
  a running 3-node cluster is disconnected (its data still arrives relayed
  through the third node), and added back it links again, is brought up to
  date by resync, and replicates both ways.
* The systemd unit passes ``systemd-analyze verify``; the sysusers.d and
  tmpfiles.d files are accepted by their tools (in a scratch root).

Every process is stopped by PID in a fixture's teardown, whatever happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from replicad.admin.client import AdminClient
from replicad.cli.cluster_cmd import create_cluster
from replicad.errors import ReplicadError
from tests.conftest import REPLICAD, NodeProcess, free_port
from tests.integration.test_cluster_replication import (
    NODES,
    LocalCluster,
    inbox_uids,
    message,
    peer_row,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WAIT = 20.0  # bounds waiting only; nothing asserts how fast


def add_metrics(config: Path, port: int, extra: str = "") -> None:
    with config.open("a") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n{extra}')


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus-client, by (name, labels)."""
    status, body = http_get(port, "/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def until(what: str, probe: Any, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:g}s: {what}"
        time.sleep(0.1)


def start_with_env(node: NodeProcess, env: dict[str, str]) -> None:
    """Like ``NodeProcess.start``, with extra environment variables."""
    with node.log_path.open("ab") as log:
        node.proc = subprocess.Popen(
            [*REPLICAD, "serve", "-c", str(node.config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
    node.wait_ready()


# --- sd_notify -------------------------------------------------------------------------


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """An abstract-namespace datagram socket, as systemd passes ``@…`` addresses."""
    name = f"replicad-notify-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(0.2)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def test_sd_notify_ready_watchdog_stopping_in_order(
    node_factory: type[NodeProcess], notify_socket: tuple[socket.socket, str]
) -> None:
    sock, address = notify_socket
    node = node_factory()
    start_with_env(node, {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000"})
    messages: list[str] = []

    def receive_until(done: Any) -> None:
        deadline = time.monotonic() + WAIT
        while not done() and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())

    receive_until(lambda: sum(m == "WATCHDOG=1" for m in messages) >= 2)
    assert node.stop() == 0
    receive_until(lambda: any(m.startswith("STOPPING=1") for m in messages))

    def first(prefix: str) -> int:
        found = [i for i, m in enumerate(messages) if m.startswith(prefix)]
        assert found, f"no {prefix} in {messages}\n{node.log()}"
        return found[0]

    ready, watchdog, stopping = first("READY=1"), first("WATCHDOG=1"), first("STOPPING=1")
    assert ready < watchdog < stopping, messages
    assert "STATUS=starting" in messages[0]  # before the store is open
    assert "STATUS=serving, health up" in messages[ready]
    assert "STATUS=stopping" in messages[stopping]


# --- /metrics and /health of one node ---------------------------------------------------


def test_metrics_count_what_was_just_done(node_factory: type[NodeProcess]) -> None:
    node = node_factory()
    port = free_port()
    add_metrics(node.config, port)
    node.start()
    saves = 5
    for i in range(saves):
        result = node.cli("save", "-u", "alice", input=message(f"m{i}"))
        assert result.returncode == 0, result.stderr
    missing = node.cli("fetch", "-u", "alice", "uid", "mailbox", "Nope", "all")
    assert missing.returncode == 68
    # A hostile frame on the admin socket: an error answer, a closed connection.
    with socket.socket(socket.AF_UNIX) as raw, contextlib.suppress(ConnectionResetError):
        raw.connect(str(node.socket))
        raw.sendall(b"\xff" * 64)
        raw.settimeout(10)
        while raw.recv(4096):
            pass

    found = scrape(port)
    assert found[("replicad_saves_total", ())] == saves
    assert found[("replicad_admin_requests_total", (("op", "save"), ("result", "ok")))] == saves
    assert found[("replicad_admin_requests_total", (("op", "fetch"), ("result", "not_found")))] == 1
    assert found[("replicad_write_ack_seconds_count", (("durability", "local"),))] == saves
    bucket = ("replicad_write_ack_seconds_bucket", (("durability", "local"), ("le", "+Inf")))
    assert found[bucket] == saves
    assert (
        found[("replicad_frame_errors_total", (("reason", "bad_frame"), ("source", "admin")))] == 1
    )
    assert found[("replicad_store_used_bytes", ())] > 0
    assert found[("replicad_store_commits_total", ())] >= saves
    assert found[("replicad_store_filesystem_free_bytes", ())] > 0
    assert found[("replicad_health_status", (("status", "up"),))] == 1
    assert found[("replicad_node_info", (("node", "n1"), ("version", "0.1.0")))] == 1
    assert found[("process_resident_memory_bytes", ())] > 0
    # A single node has no cluster: no replication series at all, none faked.
    assert not any(name.startswith("replicad_outbox") for name, _ in found)

    status, body = http_get(port, "/health")  # from loopback: the details
    document = json.loads(body)
    assert status == 200 and document["status"] == "up" and document["node"] == "n1"
    assert document["checks"]["store"]["used_bytes"] > 0
    assert http_get(port, "/nope")[0] == 404


# --- SIGHUP ----------------------------------------------------------------------------


def test_sighup_reloads_the_log_level_and_reports_what_needs_a_restart(
    node_factory: type[NodeProcess],
) -> None:
    node = node_factory()
    port = free_port()
    add_metrics(node.config, port)
    node.start()
    assert "event=httpd.request" not in node.log()
    node.set_option("node", "log_level", '"debug"')
    os.kill(node.pid, signal.SIGHUP)
    until("reload logged", lambda: "event=node.reloaded" in node.log())
    assert "applied=node.log_level" in node.log()
    http_get(port, "/health")
    until("debug lines printed", lambda: "event=httpd.request" in node.log())

    node.set_option("admin", "max_message_size", '"1MiB"')
    os.kill(node.pid, signal.SIGHUP)
    until("restart needed", lambda: "event=node.reload_needs_restart" in node.log())
    assert "changed=admin" in node.log()

    node.set_option("node", "log_level", '"loud"')  # invalid: the node keeps running
    os.kill(node.pid, signal.SIGHUP)
    until("bad config refused", lambda: "event=node.reload_failed" in node.log())
    with node.client() as client:  # not the CLI: it would refuse the broken config
        assert client.call("ping")["node"] == "n1"
    assert node.stop() == 0


def test_sighup_reloads_the_peer_list(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = LocalCluster(tmp_path_factory.mktemp("hup"))  # short: socket paths <= 107 bytes
    try:
        cluster.up("-n", "3")
        cluster.wait_root()
        configs = {n: cluster.config(n).read_text() for n in ("n1", "n3")}
        pids = {n: cluster.status()[n]["pid"] for n in ("n1", "n3")}
        logs = {n: cluster.dir / n / "replicad.log" for n in ("n1", "n3")}
        cluster.save("n1", "heidi", "before")
        cluster.wait_converged("heidi", until=lambda st: len(inbox_uids(st)) == 1)

        def link(node: str, peer: str) -> tuple[str, Any]:
            try:
                row = peer_row(cluster.status(), node, peer)
            except ValueError:
                # Not a member of node's cluster any more: no row at all
                # (a node learns of no node through routes, trust.md §1).
                return "down", None
            return row["link"], row["outbox"]

        def reload(node: str) -> None:
            applied = logs[node].read_text().count("applied=peers")
            os.kill(pids[node], signal.SIGHUP)
            until(
                f"{node} applied its new peer list",
                lambda: logs[node].read_text().count("applied=peers") > applied,
            )

        # n3 drops n1: it closes the link, and refuses n1 (which still dials it).
        cluster.keep_peers("n3", ["n2"])
        reload("n3")
        until("n3 refused n1", lambda: "reason=unknown-peer" in logs["n3"].read_text())
        assert link("n3", "n1") == ("down", None)
        # n1 drops n3 too: no outbox for it any more, so the log stops waiting.
        cluster.keep_peers("n1", ["n2"])
        reload("n1")
        until("n1 dropped n3", lambda: link("n1", "n3") == ("down", None))
        # n1's writes still reach n3, relayed by n2.
        cluster.save("n1", "heidi", "while n1 and n3 are not peers")
        cluster.wait_converged("heidi", until=lambda st: len(inbox_uids(st)) == 2)

        for node in ("n1", "n3"):
            cluster.config(node).write_text(configs[node])
            reload(node)
        until("n1 and n3 linked again", lambda: link("n1", "n3")[0] == "up")
        # A new peer is brought up to date by a whole-node resync, which ends.
        until(
            "n1's resync with n3 done",
            lambda: peer_row(cluster.status(), "n1", "n3")["resync"] == 0,
        )
        cluster.save("n3", "heidi", "after")
        cluster.save("n1", "heidi", "and from n1")
        state = cluster.wait_converged("heidi", until=lambda st: len(inbox_uids(st)) == 4)
        assert inbox_uids(state) == [1, 2, 3, 4]
        assert {n: cluster.status()[n]["pid"] for n in pids} == pids  # never restarted
    finally:
        cluster.stop_all()


# --- SIGTERM during a burst of saves --------------------------------------------------


def test_sigterm_during_a_save_burst(node_factory: type[NodeProcess]) -> None:
    node = node_factory()
    node.start()
    stop = threading.Event()
    lock = threading.Lock()
    acknowledged: dict[str, tuple[int, str]] = {}  # subject -> (uid, guid)
    failures: list[tuple[str, int, str]] = []  # (subject, exit code, message)

    def saver(worker: int) -> None:
        i = 0
        while not stop.is_set():
            subject = f"w{worker}-{i}"
            i += 1
            try:
                with AdminClient(node.socket, timeout=30) as client:
                    saved = client.call("save", user="alice", body=message(subject))
            except ReplicadError as exc:
                with lock:
                    failures.append((subject, int(exc.exit_code), str(exc)))
                time.sleep(0.01)
                continue
            with lock:
                acknowledged[subject] = (saved["uid"], saved["guid"].hex())

    def cli_saver() -> None:
        # The command line as an operator's script sees it: exit codes.
        i = 0
        while not stop.is_set():
            subject = f"cli-{i}"
            i += 1
            result = node.cli("-f", "json", "save", "-u", "alice", input=message(subject))
            with lock:
                if result.returncode == 0:
                    saved = json.loads(result.stdout)
                    acknowledged[subject] = (saved["uid"], saved["guid"])
                else:
                    failures.append((subject, result.returncode, result.stderr.decode()))

    threads = [threading.Thread(target=saver, args=(w,)) for w in range(4)]
    threads.append(threading.Thread(target=cli_saver))
    for t in threads:
        t.start()
    try:
        until("a burst under way", lambda: len(acknowledged) >= 100)
        assert node.proc is not None
        os.kill(node.pid, signal.SIGTERM)
        assert node.proc.wait(timeout=WAIT) == 0, node.log()
        until("clients noticed", lambda: len(failures) >= 5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)

    assert "event=node.stopping signal=SIGTERM" in node.log()
    assert "event=node.requests_cancelled" not in node.log()  # drained, not cut off
    for subject, code, text in failures:
        assert code in (69, 75), (subject, code, text)
        assert text.strip(), subject
    node.start()
    with node.client() as client:
        rows = client.call("fetch", user="alice", mailbox="INBOX", uids="all")
    on_disk = {(r["uid"], r["guid"].hex()) for r in rows}
    lost = {s: v for s, v in acknowledged.items() if v not in on_disk}
    assert not lost, f"acknowledged but not on disk after restart: {lost}"
    assert len(rows) >= len(acknowledged)


# --- /health of a cluster --------------------------------------------------------------


@pytest.fixture
def metered_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LocalCluster, dict[str, int]]]:
    c = LocalCluster(tmp_path_factory.mktemp("ops"))  # short: socket paths <= 107 bytes
    try:
        create_cluster(c.dir, len(NODES), None)
        ports = {name: free_port() for name in NODES}
        for name in NODES:
            add_metrics(
                c.config(name), ports[name], 'health_token = "t0k3n-for-the-health-check"\n'
            )
        yield c, ports
    finally:
        c.stop_all()


def test_health_turns_degraded_when_a_peer_is_killed(
    metered_cluster: tuple[LocalCluster, dict[str, int]],
) -> None:
    cluster, ports = metered_cluster
    cluster.up()
    cluster.wait_root()

    def health(node: str) -> dict[str, Any]:
        status, body = http_get(ports[node], "/health")
        document: dict[str, Any] = json.loads(body)
        document["http"] = status
        return document

    until("every node up", lambda: all(health(n)["status"] == "up" for n in NODES))
    saves = 3
    for i in range(saves):
        cluster.save("n1", "alice", f"m{i}")
    cluster.wait_converged("alice", until=lambda state: len(state["INBOX"]["messages"]) == saves)

    n1 = scrape(ports["n1"])
    assert n1[("replicad_master_saves_total", ())] == saves  # the first save made n1 master
    assert n1[("replicad_changes_sent_total", ())] >= 2 * saves
    for peer in ("n2", "n3"):
        assert n1[("replicad_link_sent_bytes_total", (("peer", peer),))] > 0
        assert n1[("replicad_link_received_bytes_total", (("peer", peer),))] > 0
        assert n1[("replicad_peer_link_up", (("peer", peer),))] == 1
    until(
        "n2 counts the applied changes",
        lambda: scrape(ports["n2"])[("replicad_changes_applied_total", ())] >= saves,
    )

    cluster.stop_node("n3", signal.SIGKILL)
    document = until(
        "n1 degraded",
        lambda: (d := health("n1"))["status"] == "degraded" and d,
    )
    assert document["http"] == 200  # degraded nodes stay in a load balancer's rotation
    assert "peer n3 unreachable" in document["reasons"]
    assert document["checks"]["cluster"]["peers"]["n3"]["status"] == "degraded"
    assert document["checks"]["cluster"]["peers"]["n2"]["status"] == "up"

    cluster.save("n1", "alice", "while n3 is down")
    n1 = scrape(ports["n1"])
    assert n1[("replicad_peer_link_up", (("peer", "n3"),))] == 0
    assert n1[("replicad_outbox_depth", (("peer", "n3"),))] >= 1
    assert n1[("replicad_health_status", (("status", "degraded"),))] == 1

    # With the token (as a remote monitor would send it), the details; with a
    # wrong one, 401.
    status, body = http_get(
        ports["n2"], "/health", {"Authorization": "Bearer t0k3n-for-the-health-check"}
    )
    assert status == 200 and "peer n3 unreachable" in json.loads(body)["reasons"]
    assert http_get(ports["n2"], "/health", {"Authorization": "Bearer wrong"})[0] == 401


# --- systemd files ---------------------------------------------------------------------


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed (no systemd on this machine); "
    "the unit cannot be verified without it",
)
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    unit = (ROOT / "deploy" / "systemd" / "replicad.service").read_text()
    assert "\nType=notify\n" in unit and "\nWatchdogSec=" in unit
    # verify checks that ExecStart's binary exists: point it at this
    # checkout's entry point instead of the installed /opt/replicad/bin/replicad.
    installed = Path(sys.executable).parent / "replicad"
    assert installed.exists(), "pip install -e . puts the replicad entry point beside python"
    copy = tmp_path / "replicad.service"
    copy.write_text(
        unit.replace("ExecStart=/opt/replicad/bin/replicad ", f"ExecStart={installed} ", 1)
    )
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    security = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # "OK" is systemd's best band short of a fully sandboxed unit (< 2.0).
    assert "Overall exposure level for replicad.service: 1." in security.stdout, security.stdout


@pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None,
    reason="systemd-sysusers/systemd-tmpfiles are not installed (no systemd here)",
)
def test_sysusers_and_tmpfiles_files_apply_in_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    sysusers = ROOT / "deploy" / "sysusers.d" / "replicad.conf"
    tmpfiles = ROOT / "deploy" / "tmpfiles.d" / "replicad.conf"
    made = subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(sysusers)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    passwd = (root / "etc" / "passwd").read_text()
    assert "replicad:x:" in passwd and ":/var/lib/replicad:/usr/sbin/nologin" in passwd
    if os.geteuid() != 0:
        pytest.skip("tmpfiles needs root to hand the directories to the replicad user")
    created = subprocess.run(
        ["systemd-tmpfiles", f"--root={root}", "--create", str(tmpfiles)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    state = (root / "var" / "lib" / "replicad").stat()
    assert oct(state.st_mode & 0o777) == "0o700" and state.st_uid != 0
