"""Real-process faults (architecture.md §8): ``cluster up --faults``, partition, kill -9.

A 3-node cluster whose node-to-node links all pass through the fault proxy
(replicad/faultproxy.py), driven through the command line only.  Reads poll
until the nodes agree, with a deadline (:data:`CONVERGE`): timings bound the
waiting, they are never what a test asserts.

The nodes and the proxy are started by the ``cluster up`` subprocess, not
by the test: the fixture calls ``cluster down`` at teardown, whatever the
test did, then SIGKILLs by pid every node or proxy of this directory still
alive (pids from the pid files and from every command's output).
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import alive, run_cli
from tests.integration.test_cluster_replication import LocalCluster

NODES = ("n1", "n2", "n3")
CONVERGE = 20.0
POLL = 0.1

pytestmark = pytest.mark.slow


def message(subject: str) -> bytes:
    return (
        f"From: chaos@example.org\r\nTo: rcpt@example.net\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.org>\r\n\r\nbody of {subject}\r\n"
    ).encode()


class FaultyCluster(LocalCluster):
    """A ``cluster up --faults`` directory (:class:`LocalCluster` sees its proxy too)."""

    def json(self, *args: str | Path, input: bytes = b"") -> Any:
        """``replicad -f json ARGS``, which must succeed; its document."""
        result = self.cli("-f", "json", *args, input=input)
        assert result.returncode == 0, (
            f"replicad {' '.join(map(str, args))} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')}\n{self.logs()}"
        )
        doc = json.loads(result.stdout)
        if isinstance(doc, list):
            self.pids.update(r["pid"] for r in doc if isinstance(r.get("pid"), int))
        return doc

    def on(self, node: str, *args: str) -> subprocess.CompletedProcess[bytes]:
        return self.cli("-c", self.config(node), "-f", "json", *args)

    def save(self, node: str, user: str, subject: str) -> dict[str, Any]:
        """Save through ``node``; retried while it answers 75 (e.g. no root elected yet)."""
        deadline = time.monotonic() + CONVERGE
        while True:
            result = self.cli(
                "-c", self.config(node), "-f", "json", "save", "-u", user, input=message(subject)
            )
            if result.returncode == 0:
                saved: dict[str, Any] = json.loads(result.stdout)
                return saved
            stderr = result.stderr.decode(errors="replace")
            assert result.returncode == 75 and time.monotonic() < deadline, (
                f"save on {node} exited {result.returncode}: {stderr}\n{self.logs()}"
            )
            time.sleep(POLL)

    def uid_map(self, node: str, user: str) -> dict[int, str] | str:
        """``node``'s UID -> GUID map of ``user``'s INBOX, or the error text."""
        result = self.on(node, "fetch", "-u", user, "uid guid", "mailbox", "INBOX", "all")
        if result.returncode != 0:
            return f"exit {result.returncode}: {result.stderr.decode(errors='replace').strip()}"
        return {row["uid"]: row["guid"] for row in json.loads(result.stdout)}

    def guids(self, node: str, user: str) -> set[str]:
        """The GUIDs in ``user``'s INBOX on ``node``; none if it has no such user yet."""
        found = self.uid_map(node, user)
        if isinstance(found, str):
            assert found.startswith(("exit 67", "exit 68")), found  # no user / mailbox
            return set()
        return set(found.values())

    def status(self) -> dict[str, dict[str, Any]]:
        return {r["node"]: r for r in self.json("cluster", "status", self.dir)}

    def links(self) -> dict[str, dict[str, str]]:
        """node -> peer -> "up"/"down", as each running node reports its links."""
        return {
            node: {p["name"]: p["link"] for p in row["peers"] or []}
            for node, row in self.status().items()
            if node in NODES
        }

    def wait_until(self, what: str, probe: Callable[[], tuple[bool, Any]]) -> Any:
        deadline = time.monotonic() + CONVERGE
        while True:
            done, value = probe()
            if done:
                return value
            if time.monotonic() >= deadline:
                pytest.fail(f"not within {CONVERGE:g}s: {what}; last seen: {value}\n{self.logs()}")
            time.sleep(POLL)

    def wait_links(self, expected: dict[str, dict[str, str]]) -> None:
        def probe() -> tuple[bool, Any]:
            links = self.links()
            return links == expected, links

        self.wait_until(f"links {expected}", probe)

    def wait_same(self, user: str, guids: Sequence[str]) -> dict[int, str]:
        """Until every node holds the same INBOX of ``user``, with all of ``guids``."""

        def probe() -> tuple[bool, Any]:
            maps = {node: self.uid_map(node, user) for node in NODES}
            first = maps[NODES[0]]
            ok = (
                isinstance(first, dict)
                and all(m == first for m in maps.values())
                and set(guids) <= set(first.values())
            )
            return ok, maps

        maps = self.wait_until(f"every node holds {user}'s {len(guids)} messages", probe)
        result: dict[int, str] = maps[NODES[0]]
        return result


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultyCluster]:
    # A short base path: unix socket paths are limited to 107 bytes.
    c = FaultyCluster(tmp_path_factory.mktemp("ch"))
    try:
        yield c
    finally:
        c.stop_all()


ALL_UP = {n: {p: "up" for p in NODES if p != n} for n in NODES}


def test_partition_heal_kill_and_restart_through_the_proxy(cluster: FaultyCluster) -> None:
    rows = {r["node"]: r for r in cluster.json("cluster", "up", "--faults", "-n", "3", cluster.dir)}
    assert set(rows) == {*NODES, "proxy"} and rows["proxy"]["state"] == "started"
    # Every peer address is a proxy port, never a node's own port.
    configs = {n: tomllib.loads(cluster.config(n).read_text()) for n in NODES}
    node_ports = {c["listen"]["port"] for c in configs.values()}
    peer_ports = {
        int(p["address"].rpartition(":")[2]) for c in configs.values() for p in c["peers"]
    }
    assert len(peer_ports) == 6 and not peer_ports & node_ports
    cluster.wait_links(ALL_UP)

    saved = [cluster.save(node, "alice", f"before-{node}") for node in NODES]
    cluster.wait_same("alice", [s["guid"] for s in saved])

    # --- partition n1 | n2,n3: n1's links cut at once, n2-n3 kept ---
    bad = cluster.cli("cluster", "partition", cluster.dir, "n1", "n4")
    assert bad.returncode == 64 and b"unknown node 'n4'" in bad.stderr, bad.stderr
    [cut] = cluster.json("cluster", "partition", cluster.dir, "n1", "n2,n3")
    assert cut["partition"] == [["n1"], ["n2", "n3"]] and cut["cut"] >= 2, cut
    cluster.wait_links(
        {
            "n1": {"n2": "down", "n3": "down"},
            "n2": {"n1": "down", "n3": "up"},
            "n3": {"n1": "down", "n2": "up"},
        }
    )
    # Durability `local` (the generated configs): n2 accepts while n1 is cut off.
    during = cluster.save("n2", "bob", "during-partition")

    def on_n3() -> tuple[bool, Any]:
        found = cluster.uid_map("n3", "bob")
        return isinstance(found, dict) and during["guid"] in found.values(), found

    cluster.wait_until("n3 (same side) gets bob's message", on_n3)
    # n2 streams to n1 and n3 alike: n3 has it, so n1 would too if not cut off.
    assert during["guid"] not in cluster.guids("n1", "bob")

    # --- heal: the links come back, n1 catches up ---
    [healed] = cluster.json("cluster", "heal", cluster.dir)
    assert healed["partition"] == [], healed
    cluster.wait_links(ALL_UP)
    bob = cluster.wait_same("bob", [during["guid"]])
    assert bob == {during["uid"]: during["guid"]}
    cluster.wait_same("alice", [s["guid"] for s in saved])

    # --- kill -9 n3, write without it, restart it: it catches up ---
    n3_pid = cluster.status()["n3"]["pid"]
    [killed] = cluster.json("cluster", "kill", cluster.dir, "n3")
    assert killed == {"node": "n3", "pid": n3_pid, "result": "killed"}
    assert not alive(n3_pid)
    assert cluster.status()["n3"]["state"] == "stopped"
    again = cluster.cli("cluster", "kill", cluster.dir, "n3")
    assert again.returncode == 65, again.stderr
    while_dead = cluster.save("n1", "alice", "while-n3-is-dead")
    [restarted] = cluster.json("cluster", "restart", cluster.dir, "n3")
    assert restarted["state"] == "started" and restarted["pid"] != n3_pid
    cluster.wait_links(ALL_UP)
    alice = cluster.wait_same("alice", [s["guid"] for s in [*saved, while_dead]])
    assert alice == {s["uid"]: s["guid"] for s in [*saved, while_dead]}

    # `down` stops the proxy with the nodes.
    down = {r["node"]: r for r in cluster.json("cluster", "down", cluster.dir)}
    assert down["proxy"]["result"] == "stopped", down
    proxy_row = cluster.status()["proxy"]
    assert proxy_row["state"] == "stopped", proxy_row


def test_fault_commands_need_a_faults_cluster(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.mktemp("nf")
    # A one-node "cluster" made by `init` (never started): no proxy in front of it.
    assert run_cli("init", base / "n1", "--name", "n1").returncode == 0
    for args in (["partition", base, "n1"], ["heal", base], ["delay", base, "10"]):
        result = run_cli("cluster", *args)
        assert result.returncode == 64, (args, result.stderr)
        assert b"not made with --faults" in result.stderr, result.stderr
    unknown = run_cli("cluster", "kill", base, "n2")
    assert unknown.returncode == 64 and b"unknown node 'n2'" in unknown.stderr, unknown.stderr
    stopped = run_cli("cluster", "kill", base, "n1")
    assert stopped.returncode == 65 and b"not running" in stopped.stderr, stopped.stderr
    nothing = run_cli("cluster", "heal", base / "nowhere")
    assert nothing.returncode == 68, nothing.stderr
