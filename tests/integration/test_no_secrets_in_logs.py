"""Secrets never reach a node's log: not the health token, not the TLS key.

A real two-node cluster (own CA, mutual TLS) with ``[metrics] health_token``
set on n1 at debug level; the test saves, fails an operation, asks /health
with a wrong token and the right one, scrapes /metrics, reloads with SIGHUP
(with a new token), stops the node, and reads every byte it logged.
"""

from __future__ import annotations

import http.client
import signal
import time
from pathlib import Path

from tests.conftest import STARTUP_LIMIT, NodeProcess, free_port, run_cli

TOKEN = "health-token-Zq8XkT3vR9mW2pL6"
NEW_TOKEN = "rotated-token-Hc4NbY7sJ1eU5aD0"


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def join_cluster(node: NodeProcess, pki: Path, peer: NodeProcess, peer_port: int) -> None:
    name = node.dir.name
    text = node.config.read_text()
    text += (
        f'\n[tls]\nca = "{pki / "ca.pem"}"\ncert = "{pki / f"{name}.pem"}"\n'
        f'key = "{pki / f"{name}.key"}"\ncluster = "secrets"\n'
        f'\n[[peers]]\nname = "{peer.dir.name}"\naddress = "127.0.0.1:{peer_port}"\n'
    )
    node.config.write_text(text)


def private_key_lines(path: Path) -> list[str]:
    """The base64 body lines of a PEM private key."""
    lines = path.read_text().splitlines()
    body = [line for line in lines if line and not line.startswith("-----")]
    assert body and all(len(line) >= 16 for line in body)
    return body


def test_no_secrets_in_logs(node_factory: type[NodeProcess], tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert run_cli("pki", "init", pki, "--cluster", "secrets").returncode == 0
    for name in ("n1", "n2"):
        assert run_cli("pki", "issue", pki, name).returncode == 0

    n1, n2 = node_factory("n1"), node_factory("n2")

    def port_of(node: NodeProcess) -> int:
        for line in node.config.read_text().splitlines():
            if line.startswith("port = "):
                return int(line.split("=")[1])
        raise AssertionError("no port")

    join_cluster(n1, pki, n2, port_of(n2))
    join_cluster(n2, pki, n1, port_of(n1))
    metrics_port = free_port()
    n1.set_option("node", "log_level", '"debug"')
    with n1.config.open("a") as f:
        f.write(f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\nhealth_token = "{TOKEN}"\n')

    n2.start()
    n1.start()

    # Writes, one replicated to n2, and a failing operation.
    saved = n1.cli("save", "-u", "alice", input=b"Subject: hi\r\n\r\nbody\r\n")
    assert saved.returncode == 0, saved.stderr.decode()
    failed = n1.cli("fetch", "-u", "nobody", "uid", "mailbox", "INBOX", "all")
    assert failed.returncode != 0
    bad = n1.cli("save", "-u", "", input=b"x")
    assert bad.returncode != 0

    # /health with a wrong token (401), the right one, none; /metrics.
    assert http_get(metrics_port, "/health", "wrong-token-0000000000000")[0] == 401
    assert http_get(metrics_port, "/health", TOKEN)[0] in (200, 503)
    assert http_get(metrics_port, "/health")[0] in (200, 503)
    status, body = http_get(metrics_port, "/metrics")
    assert status == 200 and b"replicad_saves_total" in body

    # Reload with a new token (applied live) and a change that needs a restart.
    n1.config.write_text(n1.config.read_text().replace(TOKEN, NEW_TOKEN))
    n1.set_option("admin", "max_message_size", '"32MiB"')
    n1.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    deadline = time.monotonic() + STARTUP_LIMIT
    while "node.reloaded" not in n1.log():
        assert time.monotonic() < deadline, n1.log()
        time.sleep(0.05)
    assert http_get(metrics_port, "/health", TOKEN)[0] == 401
    assert http_get(metrics_port, "/health", NEW_TOKEN)[0] in (200, 503)

    assert n1.stop() == 0
    assert n2.stop() == 0

    for node in (n1, n2):
        log = node.log()
        assert "event=node.starting" in log  # the log is the node's, and not empty
        assert TOKEN not in log
        assert NEW_TOKEN not in log
        assert "PRIVATE KEY" not in log
        for key in (pki / "n1.key", pki / "n2.key", pki / "ca.key"):
            for line in private_key_lines(key):
                assert line not in log, f"{key} material in {node.log_path}"
    assert "event=link-up" in n1.log()  # TLS with the node key was in use
    assert "event=node.reload_needs_restart" in n1.log()
    assert "event=node.reloaded" in n1.log()
    assert "httpd.unauthorized" in n1.log()
