"""Replication across a real 3-node cluster (architecture.md §2, I1/I2/I4/I7, §6), by the CLI.

Every test starts its own cluster with ``replicad cluster up`` (real
processes, mutual TLS with the cluster's own CA, 127.0.0.1, ports chosen by
the kernel), writes through different nodes with ``replicad -c nK/… CMD``,
and reads every node back with ``-f json``.  Replication is asynchronous,
so reads poll until the nodes agree, with a deadline (:data:`CONVERGE`);
there are no fixed sleeps.

The nodes are children of the ``cluster up`` subprocess, not of the test:
the fixture collects every pid the nodes wrote to their pid files or that
``cluster status`` reported, and at teardown, whatever the test did, sends
SIGTERM to each one still alive (only to processes of this cluster
directory), then SIGKILL to whatever did not exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import alive, run_cli

NODES = ("n1", "n2", "n3")
#: How long replication, failover or a restart may take before a test fails.
#: It only bounds waiting; the tests never assert how fast anything was.
CONVERGE = 15.0
POLL = 0.1
#: Longer than a starting node's settle period (1.5 s, ClusterSettings.settle):
#: after this, a restarted node that wanted to take over as root would have.
SETTLE_MARGIN = 3.0
STOP_WAIT = 20.0
STATUS_FIELDS = "messages uidnext uidvalidity highestmodseq guid"
FETCH_FIELDS = "uid guid flags modseq"

pytestmark = pytest.mark.slow


def message(subject: str) -> bytes:
    return (
        f"From: sender@example.org\r\nTo: rcpt@example.net\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.org>\r\n\r\nbody of {subject}\r\n"
    ).encode()



class LocalCluster:
    """A ``replicad cluster up`` directory, the CLI against it, and every node pid seen."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.pids: set[int] = set()

    # -- the command line --

    def cli(self, *args: str | Path, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        result = run_cli(*args, input=input)
        self.remember()
        return result

    def on(
        self, node: str, *args: str | Path, input: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        """``replicad -c DIR/node/replicad.toml -f json ARGS``."""
        return self.cli("-c", self.config(node), "-f", "json", *args, input=input)

    def json_on(self, node: str, *args: str | Path, input: bytes = b"") -> Any:
        result = self.on(node, *args, input=input)
        assert result.returncode == 0, (
            f"{node}: replicad {' '.join(map(str, args))} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')}\n{self.logs()}"
        )
        return json.loads(result.stdout)

    def save(self, node: str, user: str, subject: str, mailbox: str = "INBOX") -> dict[str, Any]:
        saved: dict[str, Any] = self.json_on(
            node, "save", "-u", user, "-m", mailbox, input=message(subject)
        )
        assert isinstance(saved["uid"], int) and saved["uid"] > 0, saved
        assert re.fullmatch(r"[0-9a-f]{32}", saved["guid"]), saved
        return saved

    def fetch(self, node: str, user: str, mailbox: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.json_on(
            node, "fetch", "-u", user, FETCH_FIELDS, "mailbox", mailbox, "all"
        )
        return rows

    # -- the cluster as a whole --

    def up(self, *args: str) -> list[dict[str, Any]]:
        result = self.cli("-f", "json", "cluster", "up", *args, self.dir)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        self.pids.update(r["pid"] for r in rows if r["pid"] is not None)
        return rows

    def down(self) -> None:
        result = self.cli("cluster", "down", self.dir)
        assert result.returncode == 0, result.stderr.decode(errors="replace")

    def status(self) -> dict[str, dict[str, Any]]:
        """``cluster status``, by node name."""
        result = self.cli("-f", "json", "cluster", "status", self.dir)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        self.pids.update(r["pid"] for r in rows if r["pid"] is not None)
        return {r["node"]: r for r in rows}

    def config(self, node: str) -> Path:
        return self.dir / node / "replicad.toml"

    def remember(self) -> None:
        # Nodes, and the fault proxy of a ``cluster up --faults`` directory.
        for pid_file in [*self.dir.glob("n*/data/replicad.pid"), self.dir / "proxy/proxy.pid"]:
            with contextlib.suppress(OSError, ValueError):
                text = pid_file.read_text().strip()
                if text:
                    self.pids.add(int(text))

    def logs(self, lines: int = 15) -> str:
        parts = []
        for path in [*sorted(self.dir.glob("n*/replicad.log")), self.dir / "proxy/proxy.log"]:
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- end of {path}\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- processes, by pid --

    def running_pid(self, node: str) -> int:
        row = self.status()[node]
        assert row["state"] == "running" and row["pid"] is not None, row
        pid: int = row["pid"]
        return pid

    def stop_node(self, node: str, sig: int = signal.SIGTERM) -> None:
        """Signal ``node``'s process by pid and wait until it is gone."""
        pid = self.running_pid(node)
        os.kill(pid, sig)
        deadline = time.monotonic() + STOP_WAIT
        while alive(pid):
            assert time.monotonic() < deadline, f"{node} (pid {pid}) still alive after {sig}"
            time.sleep(POLL)

    def ours(self, pid: int) -> bool:
        # Only a node of this directory: a stale pid may belong to anyone by now.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        return alive(pid) and os.fsencode(self.dir) in cmdline

    def stop_all(self) -> None:
        """SIGTERM every node process of this directory still alive, SIGKILL leftovers."""
        self.remember()
        for sig, wait in ((signal.SIGTERM, STOP_WAIT), (signal.SIGKILL, 5.0)):
            targets = [pid for pid in self.pids if self.ours(pid)]
            for pid in targets:
                with contextlib.suppress(OSError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while any(alive(pid) for pid in targets) and time.monotonic() < deadline:
                time.sleep(POLL)

    # -- editing the generated configs (nodes stopped) --

    def set_durability(self, level: str) -> None:
        for node in NODES:
            path = self.config(node)
            text, count = re.subn(
                r"^durability = .*$", f'durability = "{level}"', path.read_text(), flags=re.M
            )
            assert count == 1, f"no single durability line in {path}"
            path.write_text(text)
            assert tomllib.loads(text)["node"]["durability"] == level

    def keep_peers(self, node: str, names: Sequence[str]) -> None:
        """Drop every ``[[peers]]`` entry of ``node`` whose name is not in ``names``."""
        path = self.config(node)
        head, *blocks = re.split(r"(?m)^(?=\[\[peers\]\])", path.read_text())
        kept = [b for b in blocks if tomllib.loads(b)["peers"][0]["name"] in names]
        text = head + "".join(kept)
        path.write_text(text)
        assert sorted(p["name"] for p in tomllib.loads(text)["peers"]) == sorted(names)

    def add_members(self, node: str, names: Sequence[str]) -> None:
        """List ``names`` in ``node``'s ``cluster.members`` (reached through others)."""
        path = self.config(node)
        text = path.read_text()
        members = "members = [" + ", ".join(f'"{n}"' for n in names) + "]\n"
        if re.search(r"(?m)^\[cluster\]$", text):
            text = re.sub(r"(?m)^\[cluster\]\n", "[cluster]\n" + members, text, count=1)
        else:
            head, sep, rest = text.partition("[[peers]]")
            text = head + "[cluster]\n" + members + "\n" + sep + rest
        path.write_text(text)
        assert tomllib.loads(text)["cluster"]["members"] == list(names)

    # -- waiting --

    def wait_until(
        self, what: str, probe: Callable[[], tuple[bool, Any]], timeout: float = CONVERGE
    ) -> Any:
        """Poll ``probe`` (-> done, value) until done; fail with the last value and the logs."""
        deadline = time.monotonic() + timeout
        while True:
            done, value = probe()
            if done:
                return value
            if time.monotonic() >= deadline:
                shown = json.dumps(value, indent=1, sort_keys=True, default=str)
                pytest.fail(f"not within {timeout:g}s: {what}; last seen:\n{shown}\n{self.logs()}")
            time.sleep(POLL)

    def wait_root(self, nodes: Sequence[str] = NODES) -> tuple[str, int]:
        """Until every node of ``nodes`` runs and follows one root; (root, epoch)."""

        def probe() -> tuple[bool, Any]:
            rows = self.status()
            seen = {n: (rows[n]["state"], rows[n]["root"], rows[n]["epoch"]) for n in nodes}
            gone = [n for n in nodes if rows[n]["state"] == "stopped"]
            if gone:  # it exited (crashed): waiting longer cannot help
                pytest.fail(
                    f"{', '.join(gone)} stopped while electing a root: {seen}\n{self.logs()}"
                )
            roots = {(root, epoch) for _state, root, epoch in seen.values()}
            ok = all(s == "running" for s, _r, _e in seen.values()) and len(roots) == 1
            return ok and None not in next(iter(roots)), seen

        seen = self.wait_until(f"{', '.join(nodes)} agree on a root", probe)
        _state, root, epoch = seen[nodes[0]]
        return root, epoch

    # -- what a node holds --

    def snapshot(self, node: str, user: str) -> dict[str, Any] | str:
        """Every mailbox of ``user`` on ``node``: messages and status (or the error text)."""
        listed = self.on(node, "mailbox", "list", "-u", user)
        if listed.returncode != 0:
            return f"exit {listed.returncode}: {listed.stderr.decode(errors='replace').strip()}"
        state: dict[str, Any] = {}
        for row in json.loads(listed.stdout):
            name = row["mailbox"]
            fetched = self.on(node, "fetch", "-u", user, FETCH_FIELDS, "mailbox", name, "all")
            status = self.on(node, "mailbox", "status", "-u", user, STATUS_FIELDS, name)
            if fetched.returncode or status.returncode:
                return f"{name}: {(fetched.stderr + status.stderr).decode(errors='replace')}"
            [st] = json.loads(status.stdout)
            state[name] = {"messages": json.loads(fetched.stdout), "status": st}
        return state

    def snapshots(self, nodes: Sequence[str], user: str) -> dict[str, Any]:
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            found = pool.map(lambda n: self.snapshot(n, user), nodes)
            return dict(zip(nodes, found, strict=True))

    def wait_converged(
        self,
        user: str,
        nodes: Sequence[str] = NODES,
        until: Callable[[dict[str, Any]], bool] = lambda _state: True,
    ) -> dict[str, Any]:
        """Until ``nodes`` hold the same state for ``user`` (I4) and ``until(state)``."""

        def probe() -> tuple[bool, Any]:
            snaps = self.snapshots(nodes, user)
            first = snaps[nodes[0]]
            same = isinstance(first, dict) and all(s == first for s in snaps.values())
            return same and until(first), snaps

        snaps = self.wait_until(f"{', '.join(nodes)} converge for {user}", probe)
        state: dict[str, Any] = snaps[nodes[0]]
        return state


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # A short base path: admin socket paths are limited to 107 bytes.
    c = LocalCluster(tmp_path_factory.mktemp("rc"))
    try:
        yield c
    finally:
        c.stop_all()


def uid_map(rows: list[dict[str, Any]]) -> dict[int, str]:
    return {r["uid"]: r["guid"] for r in rows}


def inbox_uids(state: dict[str, Any]) -> list[int]:
    """The UIDs in a snapshot's INBOX (empty if it has none yet)."""
    return [m["uid"] for m in state.get("INBOX", {}).get("messages", [])]


def peer_row(status: dict[str, dict[str, Any]], node: str, peer: str) -> dict[str, Any]:
    """``node``'s row about ``peer`` in ``cluster status`` output."""
    rows: list[dict[str, Any]] = [p for p in status[node]["peers"] or [] if p["name"] == peer]
    [row] = rows
    return row


def flags_by_uid(rows: list[dict[str, Any]]) -> dict[int, set[str]]:
    return {r["uid"]: set(r["flags"]) for r in rows}


# --- 1. every kind of write, through every node: identical state everywhere (I4) ----------


def test_writes_through_every_node_converge(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")

    # The first save makes n1 master of INBOX; the others are forwarded to it.
    saved = [cluster.save(node, "alice", f"m{i}") for i, node in enumerate(NODES, 1)]
    assert [s["uid"] for s in saved] == [1, 2, 3]
    g1, g2, g3 = (s["guid"] for s in saved)

    for args in (
        ("n2", "add", r"\Seen \Flagged", "1:3"),
        ("n3", "remove", r"\Flagged", "2"),
        # Replace on the master: it computes the -deltas from its own view.
        ("n1", "replace", r"\Answered $Label1", "3"),
    ):
        node, action, flags, uids = args
        cluster.json_on(
            node, "flags", action, "-u", "alice", flags, "mailbox", "INBOX", "uid", uids
        )

    cluster.json_on("n3", "mailbox", "create", "-u", "alice", "Archive")

    # Durability "local": the create reaches n1 asynchronously; COPY needs it there.
    def archive_on_n1() -> tuple[bool, Any]:
        listed = cluster.json_on("n1", "mailbox", "list", "-u", "alice")
        return {"mailbox": "Archive"} in listed, listed

    cluster.wait_until("Archive replicated to n1", archive_on_n1)
    copied = cluster.json_on(
        "n1", "copy", "-u", "alice", "Archive", "mailbox", "INBOX", "uid", "1:2"
    )
    assert copied == [{"uid": 1, "dest_uid": 1}, {"uid": 2, "dest_uid": 2}]
    cluster.json_on("n2", "mailbox", "rename", "-u", "alice", "Archive", "Old")
    expunged = cluster.json_on("n3", "expunge", "-u", "alice", "mailbox", "INBOX", "uid", "2")
    assert expunged["uids"] == [2]

    def done(state: dict[str, Any]) -> bool:
        return set(state) == {"INBOX", "Old"} and inbox_uids(state) == [1, 3]

    state = cluster.wait_converged("alice", until=done)
    inbox, old = state["INBOX"], state["Old"]
    assert uid_map(inbox["messages"]) == {1: g1, 3: g3}  # uid 2 expunged everywhere
    assert flags_by_uid(inbox["messages"]) == {
        1: {r"\Seen", r"\Flagged"},
        3: {r"\Answered", "$Label1"},
    }
    assert (inbox["status"]["messages"], inbox["status"]["uidnext"]) == (2, 4)
    # The copies are messages of their own (new GUIDs, the same octets) with
    # the flags they had when copied (resync.md §4, copies are instances).
    copies = uid_map(old["messages"])
    assert sorted(copies) == [1, 2] and not set(copies.values()) & {g1, g2, g3}
    assert len(set(copies.values())) == 2
    copy_text, source_text = (
        cluster.json_on("n2", "fetch", "-u", "alice", "text", "mailbox", box, "uid", "1")
        for box in ("Old", "INBOX")
    )
    assert copy_text["text"] == source_text["text"]
    assert flags_by_uid(old["messages"]) == {1: {r"\Seen", r"\Flagged"}, 2: {r"\Seen"}}
    assert (old["status"]["messages"], old["status"]["uidnext"]) == (2, 3)
    assert inbox["status"]["guid"] != old["status"]["guid"]
    modseqs = [m["modseq"] for m in inbox["messages"]]
    assert inbox["status"]["highestmodseq"] >= max(modseqs)


# --- 2. concurrent saves through all three nodes: distinct UIDs (I2) -----------------------


def test_concurrent_saves_get_distinct_uids(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.json_on("n1", "mailbox", "create", "-u", "bob", "Shared")
    # Whichever node asks first becomes the master of Shared: it must have it.
    cluster.wait_converged("bob", until=lambda state: "Shared" in state)

    per_thread = 15
    results: dict[str, list[subprocess.CompletedProcess[bytes]]] = {}

    def saver(node: str) -> None:
        results[node] = [
            cluster.on(node, "save", "-u", "bob", "-m", "Shared", input=message(f"{node}-{i}"))
            for i in range(per_thread)
        ]

    threads = [threading.Thread(target=saver, args=(node,)) for node in NODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    saved: list[dict[str, Any]] = []
    for node in NODES:
        for r in results[node]:
            assert r.returncode == 0, f"{node}: save exited {r.returncode}: {r.stderr.decode()}"
            saved.append(json.loads(r.stdout))
    uids = [s["uid"] for s in saved]
    assert len(set(uids)) == len(uids) == 3 * per_thread, sorted(uids)  # I2
    assert sorted(uids) == list(range(1, 3 * per_thread + 1))
    expected = {s["uid"]: s["guid"] for s in saved}
    assert len(set(expected.values())) == len(expected)

    state = cluster.wait_converged(
        "bob", until=lambda st: len(st.get("Shared", {}).get("messages", [])) == len(expected)
    )
    assert uid_map(state["Shared"]["messages"]) == expected
    assert state["Shared"]["status"]["uidnext"] == 3 * per_thread + 1


# --- 3. kill -9 the root: failover, and the old root neither takes over nor loses mail ---


def test_root_killed_survivors_elect_and_old_root_catches_up(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    old_root, old_epoch = cluster.wait_root()
    survivors = [n for n in NODES if n != old_root]
    # The old root masters INBOX (first requester), so failover must reassign it.
    before = cluster.save(old_root, "carol", "before")
    cluster.wait_converged("carol", until=lambda st: inbox_uids(st) == [before["uid"]])

    cluster.stop_node(old_root, signal.SIGKILL)
    new_root, new_epoch = cluster.wait_root(survivors)
    assert new_root != old_root and new_root in survivors
    assert new_epoch > old_epoch

    during = [cluster.save(node, "carol", f"during-{node}") for node in survivors]
    during.append(cluster.save(survivors[1], "carol", "during-2", mailbox="INBOX"))
    assert len({s["uid"] for s in [before, *during]}) == 4

    restarted = time.monotonic()
    rows = {r["node"]: r for r in cluster.up()}
    assert rows[old_root]["state"] == "started"
    assert {rows[n]["state"] for n in survivors} == {"running"}

    expected = {s["uid"]: s["guid"] for s in [before, *during]}

    def probe() -> tuple[bool, Any]:
        status = cluster.status()
        seen = {n: (status[n]["root"], status[n]["epoch"]) for n in NODES}
        # At no point may anybody follow another root (the old root: None while settling).
        for root, epoch in seen.values():
            assert root in (new_root, None) and (root is None or epoch == new_epoch), seen
        snaps = cluster.snapshots(NODES, "carol")
        caught_up = all(
            isinstance(s, dict) and uid_map(s.get("INBOX", {}).get("messages", [])) == expected
            for s in snaps.values()
        )
        agreed = all(v == (new_root, new_epoch) for v in seen.values())
        settled = time.monotonic() - restarted > SETTLE_MARGIN
        return agreed and caught_up and settled, {"roots": seen, "nodes": snaps}

    cluster.wait_until(f"{old_root} follows {new_root} and catches up", probe)
    cluster.wait_converged("carol")


# --- 4. a stopped peer catches up from the others' outboxes -----------------------------


def test_stopped_peer_catches_up_and_outboxes_drain(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    # n1 masters dave's INBOX, n2 erin's: both keep an outbox for n3.
    cluster.save("n1", "dave", "d0")
    cluster.save("n2", "erin", "e0")
    cluster.wait_converged("dave")
    cluster.wait_converged("erin")

    def links_to_n3() -> dict[str, dict[str, Any]]:
        status = cluster.status()
        return {node: peer_row(status, node, "n3") for node in ("n1", "n2")}

    def n3_down() -> tuple[bool, Any]:
        links = links_to_n3()
        return all(p["link"] == "down" for p in links.values()), links

    cluster.stop_node("n3", signal.SIGTERM)
    cluster.wait_until("n1 and n2 see n3 down", n3_down)
    for i in range(1, 4):
        cluster.save("n1", "dave", f"d{i}")
        cluster.save("n2", "erin", f"e{i}")
    cluster.json_on("n2", "flags", "add", "-u", "dave", r"\Seen", "mailbox", "INBOX", "uid", "1")
    cluster.json_on("n1", "expunge", "-u", "erin", "mailbox", "INBOX", "uid", "1")

    assert cluster.status()["n3"]["state"] == "stopped"
    for node, to_n3 in links_to_n3().items():
        assert to_n3["link"] == "down" and to_n3["outbox"] > 0, (node, to_n3)

    cluster.up()
    dave = cluster.wait_converged("dave", until=lambda st: len(inbox_uids(st)) == 4)
    assert flags_by_uid(dave["INBOX"]["messages"])[1] == {r"\Seen"}
    erin = cluster.wait_converged("erin", until=lambda st: inbox_uids(st) == [2, 3, 4])
    assert erin["INBOX"]["status"]["uidnext"] == 5

    def drained() -> tuple[bool, Any]:
        links = links_to_n3()
        return all(p["link"] == "up" and p["outbox"] == 0 for p in links.values()), links

    cluster.wait_until("n1 and n2 have nothing left for n3", drained)


# --- 5. durability quorum: a clear retryable error, nothing lost (I1, I7) ----------------


def test_quorum_refuses_without_a_majority(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.down()
    cluster.set_durability("quorum")
    cluster.up()

    first = cluster.save("n1", "frank", "q0")  # n1 masters frank's INBOX

    def link_down(node: str) -> Callable[[], tuple[bool, Any]]:
        def probe() -> tuple[bool, Any]:
            row = peer_row(cluster.status(), "n1", node)
            return row["link"] == "down", row

        return probe

    cluster.stop_node("n3")
    cluster.wait_until("n1 sees n3 down", link_down("n3"))
    second = cluster.save("n1", "frank", "q1")  # n1 + n2: a majority
    third = cluster.save("n2", "frank", "q2")  # forwarded to n1, acked by n2
    kept = {s["uid"]: s["guid"] for s in (first, second, third)}
    assert len(kept) == 3

    cluster.stop_node("n2")
    cluster.wait_until("n1 sees n2 down", link_down("n2"))
    refused = cluster.on("n1", "save", "-u", "frank", input=message("q3"))
    assert refused.returncode == 75, (refused.returncode, refused.stderr)
    assert b"durability" in refused.stderr.lower(), refused.stderr
    assert uid_map(cluster.fetch("n1", "frank", "INBOX")) == kept

    # Retryable: with the nodes back, the same save succeeds.
    cluster.up()
    cluster.wait_root()
    cluster.save("n1", "frank", "q3")
    state = cluster.wait_converged("frank", until=lambda st: len(inbox_uids(st)) == 4)
    assert set(kept.items()) < set(uid_map(state["INBOX"]["messages"]).items())


# --- 6. A-B-C chain: writes forwarded hop by hop to the master ---------------------------


def test_chain_forwards_writes_and_relays_changes_through_the_middle_node(
    cluster: LocalCluster,
) -> None:
    cluster.up("-n", "3")
    cluster.down()
    cluster.keep_peers("n1", ["n2"])
    cluster.keep_peers("n2", ["n1", "n3"])
    cluster.keep_peers("n3", ["n2"])
    # n1 and n3 know of each other only as members reached through n2.
    cluster.add_members("n1", ["n3"])
    cluster.add_members("n3", ["n1"])
    cluster.up()
    cluster.wait_root()

    # n3 asks the root first for grace's INBOX, so it becomes its master.
    first = cluster.save("n3", "grace", "from-n3")
    assert first["uid"] == 1
    # n1 has no link to n3: the save goes n1 -> n2 -> n3, and n3 assigns the UID.
    second = cluster.save("n1", "grace", "from-n1")
    assert second["uid"] == 2
    third = cluster.save("n2", "grace", "from-n2")
    assert third["uid"] == 3

    # n2 relays what it gets from n3 to n1 and from n1's master writes to n3:
    # every node ends with the same mailbox although n1 and n3 share no link.
    cluster.json_on("n1", "mailbox", "create", "-u", "grace", "Notes")
    n1_master = cluster.save("n1", "grace", "n1 masters this", mailbox="Notes")
    assert n1_master["uid"] == 1
    expected = {s["uid"]: s["guid"] for s in (first, second, third)}
    state = cluster.wait_converged(
        "grace",
        until=lambda st: (
            len(inbox_uids(st)) == 3 and len(st.get("Notes", {}).get("messages", [])) == 1
        ),
    )
    assert uid_map(state["INBOX"]["messages"]) == expected
    assert uid_map(state["Notes"]["messages"]) == {1: n1_master["guid"]}

    # Routing: n1 reaches n3 (and n3 reaches n1) through n2.
    def routed() -> tuple[bool, Any]:
        st = cluster.status()
        views = {
            node: {
                p["name"]: (p["link"], p["reachable"], p["via"]) for p in st[node]["peers"] or []
            }
            for node in NODES
        }
        ok = (
            views["n1"].get("n2") == ("up", True, "n2")
            and views["n1"].get("n3", (None, None, None))[1:] == (True, "n2")
            and views["n3"].get("n1", (None, None, None))[1:] == (True, "n2")
            and views["n2"].get("n1") == ("up", True, "n1")
            and views["n2"].get("n3") == ("up", True, "n3")
        )
        return ok, views

    cluster.wait_until("cluster status shows n1 and n3 reaching each other via n2", routed)


# --- 7. MASTER-MOVE under concurrent writes: nothing lost, nothing failed ---


def test_master_move_under_concurrent_writes(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.wait_root()
    first = cluster.save("n2", "dora", "first")  # n2 asks first: it masters dora/INBOX
    status = cluster.json_on("n1", "master", "status", "-u", "dora")
    assert status["masters"] == [] or status["masters"][0]["master"] == "n2", status

    results: dict[str, list[subprocess.CompletedProcess[bytes]]] = {}
    moving = threading.Event()

    def saver(node: str) -> None:
        out = []
        for i in range(12):
            if i == 3:
                moving.set()
            out.append(cluster.on(node, "save", "-u", "dora", input=message(f"{node}-{i}")))
        results[node] = out

    threads = [threading.Thread(target=saver, args=(n,)) for n in NODES]
    for t in threads:
        t.start()
    moving.wait(30)
    moved = cluster.json_on("n1", "master", "move", "-u", "dora", "INBOX", "n3")
    for t in threads:
        t.join()
    assert moved == [
        {"user": "dora", "mailbox": "INBOX", "master": "n3", "epoch": moved[0]["epoch"]}
    ]

    saved = [first]
    for node in NODES:
        for r in results[node]:
            assert r.returncode == 0, f"{node}: save failed during the move: {r.stderr.decode()}"
            saved.append(json.loads(r.stdout))
    uids = [s["uid"] for s in saved]
    assert sorted(uids) == list(range(1, len(saved) + 1))  # I2: no UID twice, none skipped

    # The root records the move; a later write gets its UID from n3.
    root, _ = cluster.wait_root()
    assert cluster.json_on(root, "master", "status", "-u", "dora")["masters"] == [
        {"user": "dora", "mailbox": "INBOX", "master": "n3"}
    ]
    expected = {s["uid"]: s["guid"] for s in saved}
    state = cluster.wait_converged(
        "dora", until=lambda st: len(st.get("INBOX", {}).get("messages", [])) == len(expected)
    )
    assert uid_map(state["INBOX"]["messages"]) == expected


def test_replicator_status_shows_the_outbox_of_a_stopped_peer(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.wait_root()
    cluster.save("n1", "erin", "one")
    cluster.stop_node("n3")

    def backlog() -> tuple[bool, Any]:
        cluster.save("n1", "erin", "while n3 is down")
        rows = {r["peer"]: r for r in cluster.json_on("n1", "replicator", "status")}
        n3 = rows["n3"]
        # Right after the link drops, n1 may still route to n3 through n2 until
        # n2's next ROUTES arrives (distance vector): wait for that as well.
        return n3["link"] == "down" and not n3["reachable"] and n3["outbox"] > 0 and (
            n3["resync"] == 1
        ), rows

    rows = cluster.wait_until("n1 reports an outbox for stopped n3", backlog)
    assert rows["n2"]["link"] == "up" and rows["n2"]["reachable"] is True
    assert rows["n3"]["reachable"] is False
    assert rows["n3"]["lag_s"] > 0 and rows["n2"]["lag_s"] == 0, rows
    assert isinstance(rows["n3"]["acked"], int) and rows["n3"]["acked"] < rows["n2"]["acked"], rows
    # I7: writes made while n3 was unreachable are recorded as possible divergence
    # (the mark stored as "partition", shown as what happened: n3 was unreachable).
    assert rows["n3"]["resync"] == 1 and rows["n3"]["why"] == ["unreachable"], rows
    assert rows["n2"]["resync"] == 0, rows
    # What n3 will catch up on when it starts: the log entries and their octets.
    catchup = rows["n3"]["catchup"]
    assert catchup["changes_left"] == rows["n3"]["outbox"] and catchup["bytes_left"] > 0, rows
    assert rows["n2"]["catchup"] is None, rows


def test_an_overflowing_outbox_marks_the_peer_for_resync(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.down()
    for node in NODES:  # a tiny bound so a few writes overflow it
        path = cluster.config(node)
        path.write_text(path.read_text() + "\n[cluster]\nmax_outbox = 3\n")
    cluster.up()
    cluster.wait_root()
    cluster.save("n1", "fred", "before")
    cluster.stop_node("n3")
    for i in range(6):
        cluster.save("n1", "fred", f"while n3 is down {i}")

    rows = {r["peer"]: r for r in cluster.json_on("n1", "replicator", "status")}
    # n3's backlog was dropped at the bound: the mailbox is marked for resync
    # with n3 (the resync layer repairs it), and the outbox no longer grows.
    assert "outbox-overflow" in rows["n3"]["why"], rows
    assert rows["n3"]["outbox"] <= 3, rows
    assert rows["n2"]["resync"] == 0, rows


def test_debug_connect_speaks_to_a_live_node_without_disturbing_its_links(
    cluster: LocalCluster,
) -> None:
    cluster.up("-n", "3")
    root, epoch = cluster.wait_root()
    cluster.save("n1", "hank", "one")
    typed = b"a PING\r\nb MASTER hank INBOX\r\nc ROOT 99 n1\r\n"
    result = cluster.cli("-c", cluster.config("n1"), "debug", "connect", "n2", input=typed)
    assert result.returncode == 0, result.stderr.decode()
    # The link numbers its own tags 1, 2, 3 in send order; replies may come in any order.
    replies = dict(line.split(" ", 1) for line in result.stdout.decode().splitlines())
    assert replies == {
        '"1"': "OK 0",  # PING: the node's open IMAP sessions (none)
        '"2"': f"OK n1 {epoch}",  # n1 asked first: it masters hank/INBOX
        '"3"': 'NO UNSUPPORTED "ROOT is not taken from debug"',
    }, replies
    # The debug link came in with n1's certificate; n1's real link to n2 stayed up.
    rows = {r["peer"]: r for r in cluster.json_on("n2", "replicator", "status")}
    assert rows["n1"]["link"] == "up"
    assert cluster.wait_root() == (root, epoch)
    cluster.save("n2", "hank", "two")
    state = cluster.wait_converged("hank", until=lambda st: len(inbox_uids(st)) == 2)
    assert inbox_uids(state) == [1, 2]


def test_user_granularity_gives_one_master_per_user(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.down()
    for node in NODES:
        path = cluster.config(node)
        path.write_text(path.read_text() + '\n[cluster]\ngranularity = "user"\n')
    cluster.up()
    root, _ = cluster.wait_root()
    cluster.save("n2", "ivy", "first")  # n2 asks first: it masters all of ivy
    cluster.json_on("n3", "mailbox", "create", "-u", "ivy", "Work")
    cluster.save("n3", "ivy", "work", mailbox="Work")
    masters = cluster.json_on(root, "master", "status", "-u", "ivy")["masters"]
    assert masters == [{"user": "ivy", "mailbox": "", "master": "n2"}], masters
    state = cluster.wait_converged(
        "ivy", until=lambda st: len(st.get("Work", {}).get("messages", [])) == 1
    )
    assert set(state) == {"INBOX", "Work"}
