"""A node's files and its TLS key, against real ``replicad serve`` processes.

* Under a permissive umask (0022) and with a data directory that exists
  0755 and a store left 0644, every file the node creates or keeps is 0600
  and every directory 0700: the data directory, the store, the pid file,
  the epoch file, the admin socket's directory.
* A node whose TLS key is readable (or writable) by others, or writable
  by its group, refuses to start, with exit 65 and a message naming the
  file and the fix, before it creates anything (the rule itself, with
  owners other than the test's user, is unit-tested in test_pki.py).
* Certificate ends: the expiry metric, warnings in the log, ``/health``
  degraded within 7 days naming the file and date, and SIGHUP reading the
  certificate again, which new links then present.

Every process is stopped by PID in the ``node_factory`` teardown.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import lmdb
import pytest
import trio
from cryptography import x509

from replicad import pki
from replicad.config import load_config
from replicad.transport import TlsContexts, client_context, open_link, server_context
from tests.conftest import REPLICAD, NodeProcess, free_port
from tests.integration.test_operations import http_get, scrape

pytestmark = pytest.mark.slow

WAIT = 30.0  # bounds waiting only


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def make_cluster_member(node: NodeProcess, *, key_mode: int = 0o600) -> None:
    """Give ``node`` (n1) a certificate and a peer n2 that never answers, so it
    runs the cluster runtime (and, alone, elects itself and writes an epoch)."""
    ca = node.dir / "pki"
    pki.init_cluster_ca(ca, "test")
    pki.issue_node_certificate(ca, "n1")
    (ca / "n1.key").chmod(key_mode)
    with node.config.open("a") as f:
        f.write(
            "\n[tls]\n"
            f'ca = "{ca / "ca.pem"}"\ncert = "{ca / "n1.pem"}"\nkey = "{ca / "n1.key"}"\n'
            'cluster = "test"\n'
            f'\n[[peers]]\nname = "n2"\naddress = "127.0.0.1:{free_port()}"\n'
        )


def start(node: NodeProcess, *, umask: int) -> None:
    with node.log_path.open("ab") as log:
        node.proc = subprocess.Popen(
            [*REPLICAD, "serve", "-c", str(node.config)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            umask=umask,
        )
    node.wait_ready()


def test_files_are_private_whatever_the_umask(node_factory: type[NodeProcess]) -> None:
    node = node_factory()
    make_cluster_member(node)
    # The admin socket in a directory that does not exist yet.
    node.set_option("node", "admin_socket", '"run/admin.sock"')
    node.socket = node.dir / "run" / "admin.sock"
    # A data directory made by hand 0755, holding a store an older version
    # left with LMDB's default modes.
    data = node.dir / "data"
    data.mkdir()
    data.chmod(0o755)
    (data / "store").mkdir()
    (data / "store").chmod(0o755)
    env = lmdb.open(str(data / "store"), max_dbs=20, map_size=1 << 20, mode=0o644)
    env.close()
    assert _mode(data / "store" / "data.mdb") == 0o644

    start(node, umask=0o022)
    epoch = data / "cluster-epoch"
    deadline = time.monotonic() + WAIT
    while not epoch.exists():
        assert time.monotonic() < deadline, f"no epoch written:\n{node.log()}"
        time.sleep(0.1)

    seen: dict[str, int] = {}
    for top in (data, node.dir / "run"):
        seen[str(top)] = _mode(top)
        for path in top.rglob("*"):
            seen[str(path.relative_to(node.dir))] = _mode(path)
            if path.is_dir():
                assert _mode(path) == 0o700, path
            else:
                assert _mode(path) == 0o600, path
    assert _mode(data) == 0o700 and _mode(node.dir / "run") == 0o700
    for name in ("replicad.pid", "cluster-epoch", "store/data.mdb", "store/lock.mdb"):
        assert _mode(data / name) == 0o600, name
    assert stat.S_ISSOCK(node.socket.lstat().st_mode)
    log = node.log()
    assert "event=fs.mode_tightened" in log and f"path={data} was=0755 now=0700" in log
    assert node.stop() == 0


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660])
def test_a_key_readable_by_others_is_refused_at_start(
    node_factory: type[NodeProcess], mode: int
) -> None:
    node = node_factory()
    make_cluster_member(node, key_mode=mode)
    result = subprocess.run(
        [*REPLICAD, "serve", "-c", str(node.config)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert result.returncode == 65, result.stderr.decode()
    message = result.stderr.decode()
    assert str(node.dir / "pki" / "n1.key") in message
    assert f"mode {mode:04o}" in message and "chmod 6" in message
    assert not (node.dir / "admin.sock").exists()
    assert not (node.dir / "data" / "store").exists()  # refused before the store was made


def test_a_private_key_is_accepted(node_factory: type[NodeProcess]) -> None:
    node = node_factory()
    make_cluster_member(node, key_mode=0o600)
    start(node, umask=0o077)
    assert node.stop() == 0


# --- certificate ends: metric, warnings, /health, reload on SIGHUP ---------------------------


def file_end(path: Path) -> dt.datetime:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def served_certificate_end(port: int, certs: Path) -> dt.datetime:
    """Dial the node as its peer n2 and return the end of the certificate it presents."""

    async def dial() -> dt.datetime:
        contexts = TlsContexts(
            node="n2",
            cluster="test",
            server=server_context(certs / "ca.pem", certs / "n2.pem", certs / "n2.key"),
            client=client_context(certs / "ca.pem", certs / "n2.pem", certs / "n2.key"),
        )
        link = await open_link("127.0.0.1", port, "n1", contexts)
        try:
            stream = link.channel.stream
            assert isinstance(stream, trio.SSLStream)
            der = stream.getpeercert(binary_form=True)
            assert der is not None
            return x509.load_der_x509_certificate(der).not_valid_after_utc
        finally:
            await link.aclose()

    return trio.run(dial)


def test_certificate_ends_are_watched_and_reloaded_on_sighup(
    node_factory: type[NodeProcess],
) -> None:
    node = node_factory()
    ca = node.dir / "pki"
    pki.init_cluster_ca(ca, "test", days=25)
    first = pki.issue_node_certificate(ca, "n1", days=5)
    pki.issue_node_certificate(ca, "n2", days=20)
    metrics_port = free_port()
    with node.config.open("a") as f:
        f.write(
            f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
            "\n[tls]\n"
            f'ca = "{ca / "ca.pem"}"\ncert = "{ca / "n1.pem"}"\nkey = "{ca / "n1.key"}"\n'
            'cluster = "test"\n'
            f'\n[[peers]]\nname = "n2"\naddress = "127.0.0.1:{free_port()}"\n'
        )
    port = load_config(node.config).listen.port
    start(node, umask=0o077)

    samples = scrape(metrics_port)
    node_left = samples[("replicad_tls_certificate_expiry_seconds", (("cert", "node"),))]
    ca_left = samples[("replicad_tls_certificate_expiry_seconds", (("cert", "ca"),))]
    assert 4.9 * 86400 < node_left <= 5 * 86400
    assert 24.9 * 86400 < ca_left <= 25 * 86400
    status, body = http_get(metrics_port, "/health")
    assert status == 200  # degraded, still serving
    reasons = json.loads(body)["reasons"]
    end = f"{first.not_valid_after:%Y-%m-%d %H:%M} UTC"
    assert f"node certificate {ca / 'n1.pem'} expires on {end}" in " ".join(reasons)
    assert not any("ca certificate" in r for r in reasons)  # 25 days: warned, not degraded
    log = node.log()
    assert "event=tls.certificate_expiring cert=node" in log
    assert "event=tls.certificate_expiring cert=ca" in log
    assert served_certificate_end(port, ca) == file_end(ca / "n1.pem")

    pki.issue_node_certificate(ca, "n1", days=20, force=True)
    os.kill(node.pid, signal.SIGHUP)
    deadline = time.monotonic() + WAIT
    while "event=tls.reloaded" not in node.log():
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    assert "applied=tls" in node.log()
    samples = scrape(metrics_port)
    node_left = samples[("replicad_tls_certificate_expiry_seconds", (("cert", "node"),))]
    assert 19.9 * 86400 < node_left <= 20 * 86400
    _, body = http_get(metrics_port, "/health")
    assert not any("certificate" in r for r in json.loads(body)["reasons"])
    # New links present the new certificate.
    assert served_certificate_end(port, ca) == file_end(ca / "n1.pem")
    assert file_end(ca / "n1.pem") > first.not_valid_after + dt.timedelta(days=14)
    assert node.stop() == 0
