"""Secrets never reach a node's log: not the health token, not the TLS key,
not a password or a password hash.

A real two-node cluster (own CA, mutual TLS) with ``[metrics] health_token``
set on n1 at debug level; the test saves, fails an operation, asks /health
with a wrong token and the right one, scrapes /metrics, reloads with SIGHUP
(with a new token), stops the node, and reads every byte it logged.

The auth paths: ``replicad user add``, ``user passwd`` and ``pw`` (and their
failures) beside a running node at debug level, then the node's user
directory, logging through the node's own formatter at debug level, loads
the file with a broken line and fails verifications; no password or hash is
in the node's log, those lines, or anything the commands print (but the
hash ``pw`` is asked for).
"""

from __future__ import annotations

import http.client
import io
import logging
import signal
import time
from pathlib import Path

import trio

from replicad.auth import UserDirectory
from replicad.config import load_config
from replicad.node import KeyValueFormatter
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


PASSWORD = "first-Passw0rd-kQ7xT2"
NEW_PASSWORD = "second-Passw0rd-Lm4zV8"
WRONG_PASSWORD = "wrong-Passw0rd-Rb9cW1"
PW_PASSWORD = "pw-Passw0rd-Yd3hN6"
BROKEN_HASH = "broken-hash-Ux5pS0"


def test_no_secrets_in_auth_paths(node_factory: type[NodeProcess]) -> None:
    n1 = node_factory("n1")
    n1.set_option("node", "log_level", '"debug"')
    n1.start()
    users = n1.dir / "users"

    printed: list[bytes] = []

    def cli(*args: str, input: str) -> int:
        result = n1.cli(*args, input=input.encode())
        printed.extend((result.stdout, result.stderr))
        return result.returncode

    assert cli("user", "add", "alice", "--password-stdin", input=PASSWORD) == 0
    first_hash = users.read_text().split(":")[1]
    assert cli("user", "passwd", "Alice", "--password-stdin", input=NEW_PASSWORD) == 0
    assert cli("user", "add", "alice", "--password-stdin", input=PASSWORD) == 65
    assert cli("user", "add", "bad:name", "--password-stdin", input=PASSWORD) == 65
    assert cli("user", "add", "bob", "--password-stdin", input=PASSWORD + "\0") == 65
    assert cli("user", "passwd", "nobody", "--password-stdin", input=PASSWORD) == 67
    assert cli("user", "list", input="") == 0
    made = n1.cli("pw", "-s", "SHA512-CRYPT", input=PW_PASSWORD.encode())
    assert made.returncode == 0
    printed.append(made.stderr)  # its stdout is the hash it was asked for
    assert cli("pw", "-s", "NOSUCH", input=PW_PASSWORD) == 64
    hashes = [first_hash, users.read_text().split(":")[1], made.stdout.decode().strip()]

    # The node's user directory, logging as the node does, at debug level.
    with users.open("a") as fh:
        fh.write(f"carol:{{MD5}}{BROKEN_HASH}\n{PASSWORD}\n")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    logger = logging.getLogger("replicad")
    saved_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        directory = UserDirectory.from_config(load_config(n1.config))

        async def logins() -> None:
            assert await directory.verify("alice", NEW_PASSWORD)
            assert not await directory.verify("alice", WRONG_PASSWORD)
            assert not await directory.verify("ALICE", PASSWORD)
            assert not await directory.verify("nobody", WRONG_PASSWORD)
            assert not await directory.verify("carol", BROKEN_HASH)

        trio.run(logins)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved_level)
    assert n1.stop() == 0

    auth_log = stream.getvalue()
    assert "event=auth.passwd_file_bad_line" in auth_log and "line=3" in auth_log
    assert "event=auth.verify_failed user=alice reason=password_mismatch" in auth_log
    assert "event=node.starting" in n1.log()
    secrets = [PASSWORD, NEW_PASSWORD, WRONG_PASSWORD, PW_PASSWORD, BROKEN_HASH, *hashes]
    # Each hash whole, and its salt and digest on their own.
    secrets += [part for h in hashes for part in h.split("$") if len(part) >= 16]
    for text in [n1.log(), auth_log, *(p.decode(errors="replace") for p in printed)]:
        for secret in secrets:
            assert secret not in text
