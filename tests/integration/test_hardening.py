"""A node's files and its TLS key, against real ``replicad serve`` processes.

* Under a permissive umask (0022) and with a data directory that exists
  0755 and a store left 0644, every file the node creates or keeps is 0600
  and every directory 0700: the data directory, the store, the pid file,
  the epoch file, the admin socket's directory.
* A node whose TLS key is readable (or writable) by others, or writable
  by its group, refuses to start, with exit 65 and a message naming the
  file and the fix, before it creates anything (the rule itself, with
  owners other than the test's user, is unit-tested in test_pki.py).

Every process is stopped by PID in the ``node_factory`` teardown.
"""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path

import lmdb
import pytest

from replicad import pki
from tests.conftest import REPLICAD, NodeProcess, free_port

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
