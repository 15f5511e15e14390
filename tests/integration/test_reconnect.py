"""A healed link comes back within a fraction of a second (cluster/redial.py, real processes).

A 2-node ``cluster up --faults`` cluster: the fault proxy cuts n1-n2 for
long enough that n1's dial backoff reaches its cap (3 s, up to 4.5 s with
jitter), then heals; n1's reachability probes see the proxy forward again
and the link is up well before the backoff would have dialled.  Three
rounds, so a dial that happened to fall just after the heal cannot pass
the test alone.  Waits poll the admin socket (no interpreter start-up in
the measured time).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from replicad import faultproxy
from replicad.admin.client import AdminClient
from tests.integration.test_cluster_replication import LocalCluster

pytestmark = pytest.mark.slow

#: Long enough for the backoff to reach its cap (0.1+0.2+…+1.6 s, then 3 s).
PARTITION_S = 6.0
#: The bound asserted: a probe interval (0.1 s) plus TLS and HELLO, with room
#: for a loaded 2-core machine; the backoff alone takes 1.5-4.5 s here.
RELINK_S = 1.0
WAIT_S = 30.0


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("rc"))  # short: socket paths are limited
    try:
        yield c
    finally:
        c.stop_all()


def link_up(c: LocalCluster) -> bool:
    try:
        with AdminClient(c.dir / "n1" / "admin.sock") as client:
            status = client.call("cluster_status")
    except Exception:  # not answering yet
        return False
    return any(p["name"] == "n2" and p["link"] == "up" for p in status.get("peers", []))


def wait_link(c: LocalCluster, up: bool, timeout: float = WAIT_S) -> float:
    """Seconds until n1's link to n2 is ``up`` (or down); fails after ``timeout``."""
    start = time.monotonic()
    while link_up(c) != up:
        assert time.monotonic() - start < timeout, f"n1-n2 link not {'up' if up else 'down'}"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_healed_partition_relinks_within_a_second(cluster: LocalCluster) -> None:
    cluster.up("--faults", "-n", "2")
    wait_link(cluster, up=True)
    took = []
    for _ in range(3):
        faultproxy.control(cluster.dir, {"op": "partition", "groups": [["n1"], ["n2"]]})
        wait_link(cluster, up=False)
        time.sleep(PARTITION_S)
        assert not link_up(cluster)  # the proxy refuses every dial meanwhile
        faultproxy.control(cluster.dir, {"op": "heal"})
        took.append(wait_link(cluster, up=True))
    assert max(took) <= RELINK_S, took
