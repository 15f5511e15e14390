"""Writes on both sides of a real partition, then heal: the resync merges them (architecture.md §7).

A 3-node ``cluster up --faults`` cluster (real processes, mutual TLS, the
fault proxy on every node-to-node link, 127.0.0.1, ports chosen by the
kernel), cut with ``cluster partition DIR n1 n2,n3`` and healed with
``cluster heal``, driven through the command line only.  After the heal
every node must hold the state protocol-spec/resync.md §4 prescribes:

* W4 (docs/architecture.md §10): both sides save 5 messages into INBOX (UIDs 11..15 on
  each: a collision, I2) and change flags concurrently (I5); after the heal
  every colliding message is moved above every used UID, in canonical order
  (old uid, GUID), flags are joined per flag, and all nodes agree (I4, I6).
* The seed's FIXME (I2/I3): one side expunges UID 4 while the other side
  gives UID 4 to a new message; the tombstone shows the reuse, so the new
  message moves to UID 5 and the expunged one stays gone.

Reads poll until the nodes agree, with deadlines: they bound the waiting
and are never what a test asserts.  The fixture calls ``cluster down`` at
teardown whatever the test did, then SIGKILLs by pid every node or proxy
of this directory still alive.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cluster_replication import LocalCluster

NODES = ("n1", "n2", "n3")
#: Bounds on waiting (never asserted): links and writes, and convergence after a heal.
WAIT = 30.0
CONVERGE = 60.0
POLL = 0.2
USER = "alice"
FETCH_FIELDS = "uid guid flags modseq"
STATUS_FIELDS = "messages uidnext uidvalidity highestmodseq guid"

pytestmark = pytest.mark.slow


def message(subject: str) -> bytes:
    return (
        f"From: resync@example.org\r\nTo: alice@example.net\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject}@example.org>\r\n\r\nbody of {subject}\r\n"
    ).encode()


class PartitionedCluster(LocalCluster):
    """A ``cluster up --faults`` directory (:class:`LocalCluster` sees its proxy too)."""

    # -- the command line --

    def on(
        self, node: str, *args: str | Path, input: bytes = b""
    ) -> subprocess.CompletedProcess[bytes]:
        """``replicad -c DIR/node/replicad.toml -f json ARGS``."""
        return self.cli("-c", self.config(node), "-f", "json", *args, input=input)

    def json(self, *args: str | Path) -> Any:
        """``replicad -f json ARGS`` (no node), which must succeed; its document."""
        result = self.cli("-f", "json", *args)
        assert result.returncode == 0, (
            f"replicad {' '.join(map(str, args))} exited {result.returncode}: "
            f"{result.stderr.decode(errors='replace')}\n{self.logs()}"
        )
        doc = json.loads(result.stdout)
        if isinstance(doc, list):
            self.pids.update(r["pid"] for r in doc if isinstance(r.get("pid"), int))
        return doc

    def write(self, node: str, *args: str, input: bytes = b"") -> Any:
        """A write through ``node``, retried while it answers 75 (no root or master yet)."""
        deadline = time.monotonic() + WAIT
        while True:
            result = self.on(node, *args, input=input)
            if result.returncode == 0:
                return json.loads(result.stdout)
            stderr = result.stderr.decode(errors="replace")
            assert result.returncode == 75 and time.monotonic() < deadline, (
                f"{node}: replicad {' '.join(args)} exited {result.returncode}: {stderr}\n"
                f"{self.logs()}"
            )
            time.sleep(POLL)

    def save(self, node: str, subject: str) -> dict[str, Any]:
        saved: dict[str, Any] = self.write(node, "save", "-u", USER, input=message(subject))
        assert isinstance(saved["uid"], int) and saved["uid"] > 0, saved
        assert re.fullmatch(r"[0-9a-f]{32}", saved["guid"]), saved
        return saved

    def flags(self, node: str, action: str, flags: str, uids: str) -> None:
        self.write(node, "flags", action, "-u", USER, flags, "mailbox", "INBOX", "uid", uids)

    # -- what nodes hold --

    def snapshot(self, node: str) -> dict[str, Any] | str:
        """``node``'s INBOX of alice: messages and status, or the error text."""
        fetched = self.on(node, "fetch", "-u", USER, FETCH_FIELDS, "mailbox", "INBOX", "all")
        status = self.on(node, "mailbox", "status", "-u", USER, STATUS_FIELDS, "INBOX")
        if fetched.returncode or status.returncode:
            return (
                f"exit {fetched.returncode}/{status.returncode}: "
                + (fetched.stderr + status.stderr).decode(errors="replace").strip()
            )
        [st] = json.loads(status.stdout)
        return {"messages": json.loads(fetched.stdout), "status": st}

    def snapshots(self, nodes: Sequence[str] = NODES) -> dict[str, Any]:
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return dict(zip(nodes, pool.map(self.snapshot, nodes), strict=True))

    def links(self) -> dict[str, dict[str, tuple[str, bool]]]:
        """node -> peer -> (link, reachable), as each running node reports them."""
        rows = self.json("cluster", "status", self.dir)
        return {
            r["node"]: {p["name"]: (p["link"], p["reachable"]) for p in r["peers"] or []}
            for r in rows
            if r["node"] in NODES
        }

    # -- waiting --

    def wait_until(
        self, what: str, probe: Callable[[], tuple[bool, Any]], timeout: float = WAIT
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

    def wait_links(self, expected: dict[str, dict[str, tuple[str, bool]]]) -> None:
        def probe() -> tuple[bool, Any]:
            links = self.links()
            return links == expected, links

        self.wait_until(f"links {expected}", probe)

    def wait_converged(
        self,
        nodes: Sequence[str] = NODES,
        until: Callable[[dict[str, Any]], bool] = lambda _state: True,
        timeout: float = WAIT,
    ) -> dict[str, Any]:
        """Until ``nodes`` hold the same INBOX and status (I4) and ``until(state)``."""

        def probe() -> tuple[bool, Any]:
            snaps = self.snapshots(nodes)
            first = snaps[nodes[0]]
            same = isinstance(first, dict) and all(s == first for s in snaps.values())
            return same and until(first), snaps

        snaps = self.wait_until(f"{', '.join(nodes)} converge", probe, timeout)
        state: dict[str, Any] = snaps[nodes[0]]
        return state

    # -- the cluster --

    def up(self) -> None:
        rows = {r["node"]: r for r in self.json("cluster", "up", "--faults", "-n", "3", self.dir)}
        assert set(rows) == {*NODES, "proxy"}, rows
        self.wait_links(ALL_UP)

    def partition_n1(self) -> None:
        [cut] = self.json("cluster", "partition", self.dir, "n1", "n2,n3")
        assert cut["partition"] == [["n1"], ["n2", "n3"]], cut
        self.wait_links(N1_CUT_OFF)

    def heal(self) -> None:
        [healed] = self.json("cluster", "heal", self.dir)
        assert healed["partition"] == [], healed


ALL_UP = {n: {p: ("up", True) for p in NODES if p != n} for n in NODES}
N1_CUT_OFF = {
    "n1": {"n2": ("down", False), "n3": ("down", False)},
    "n2": {"n1": ("down", False), "n3": ("up", True)},
    "n3": {"n1": ("down", False), "n2": ("up", True)},
}


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PartitionedCluster]:
    # A short base path: admin socket paths are limited to 107 bytes.
    c = PartitionedCluster(tmp_path_factory.mktemp("rp"))
    try:
        yield c
    finally:
        c.stop_all()


def by_uid(state: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {m["uid"]: m for m in state["messages"]}


def uid_map(state: dict[str, Any]) -> dict[int, str]:
    return {m["uid"]: m["guid"] for m in state["messages"]}


# --- W4: 5 saves and conflicting flag changes on each side of a partition ---------------


def test_w4_both_sides_write_during_a_partition_and_converge(cluster: PartitionedCluster) -> None:
    cluster.up()
    # Sequential: n1 becomes master of alice/INBOX with the first save, UIDs 1..10.
    before = [cluster.save("n1", f"before-{i}") for i in range(1, 11)]
    assert [s["uid"] for s in before] == list(range(1, 11))
    cluster.flags("n1", "add", r"\Flagged", "1")
    start = cluster.wait_converged(
        until=lambda st: len(st["messages"]) == 10 and by_uid(st)[1]["flags"] == [r"\Flagged"]
    )
    assert uid_map(start) == {s["uid"]: s["guid"] for s in before}
    assert start["status"]["uidnext"] == 11

    cluster.partition_n1()

    # n1's side (it masters INBOX, or elects itself root and takes it).
    n1_saves = [cluster.save("n1", f"n1-side-{i}") for i in range(1, 6)]
    cluster.flags("n1", "add", r"\Answered", "1")
    cluster.flags("n1", "add", "$A", "2:10")
    time.sleep(1.0)  # the other side's flag stamps are later (hybrid clock, ms)
    # The n2,n3 side: its root gives INBOX a master on that side.
    n23_saves = [cluster.save("n2", f"n23-side-{i}") for i in range(1, 6)]
    cluster.flags("n3", "add", r"\Seen", "1")
    cluster.flags("n3", "remove", r"\Flagged", "1")
    cluster.flags("n2", "add", "$B", "2:10")

    # The collision (I2 during the partition): each side handed out 11..15.
    assert [s["uid"] for s in n1_saves] == list(range(11, 16)), n1_saves
    assert [s["uid"] for s in n23_saves] == list(range(11, 16)), n23_saves

    # Each side holds only its own writes; n2 and n3 agree with each other.
    [n1_before] = cluster.snapshots(["n1"]).values()
    assert isinstance(n1_before, dict), n1_before
    assert uid_map(n1_before) == uid_map(start) | {s["uid"]: s["guid"] for s in n1_saves}
    assert by_uid(n1_before)[1]["flags"] == [r"\Answered", r"\Flagged"]
    n23_before = cluster.wait_converged(
        ["n2", "n3"],
        until=lambda st: (
            uid_map(st) == uid_map(start) | {s["uid"]: s["guid"] for s in n23_saves}
            and all("$B" in by_uid(st)[u]["flags"] for u in range(2, 11))
        ),
    )
    assert by_uid(n23_before)[1]["flags"] == [r"\Seen"]
    highest_before = max(
        n1_before["status"]["highestmodseq"], n23_before["status"]["highestmodseq"]
    )

    cluster.heal()
    every_guid = [s["guid"] for s in [*before, *n1_saves, *n23_saves]]
    assert len(set(every_guid)) == 20

    def merged(st: dict[str, Any]) -> bool:
        return sorted(uid_map(st).values()) == sorted(every_guid)

    state = cluster.wait_converged(until=merged, timeout=CONVERGE)
    cluster.wait_links(ALL_UP)

    messages = by_uid(state)
    status = state["status"]
    # I6: all 20 messages, each GUID exactly once.
    assert status["messages"] == len(messages) == 20, status
    assert Counter(uid_map(state).values()) == Counter(every_guid)
    # Untouched UIDs keep their messages.
    assert {u: messages[u]["guid"] for u in range(1, 11)} == uid_map(start)
    # I2: every colliding message moved, none kept 11..15; new UIDs from 16 (above
    # both UIDNEXTs) in canonical order (old uid, GUID) (resync.md §4.2-3).
    assert not set(messages) & set(range(11, 16)), sorted(messages)
    canonical = sorted((s["uid"], s["guid"]) for s in [*n1_saves, *n23_saves])
    assert {u: messages[u]["guid"] for u in range(16, 26)} == {
        16 + i: guid for i, (_old, guid) in enumerate(canonical)
    }
    assert status["uidnext"] == 26, status
    # Same mailbox on both sides: same GUID and UIDVALIDITY as before the partition.
    assert status["guid"] == start["status"]["guid"]
    assert status["uidvalidity"] == start["status"]["uidvalidity"]
    # I5: from (\Flagged), +\Answered on n1 and later +\Seen -\Flagged on n3.
    assert messages[1]["flags"] == [r"\Answered", r"\Seen"], messages[1]
    for uid in range(2, 11):
        assert messages[uid]["flags"] == ["$A", "$B"], messages[uid]
    # I3: every entry that no copy held as is takes a modseq above both sides'.
    for uid in [1, *range(2, 11), *range(16, 26)]:
        assert messages[uid]["modseq"] > highest_before, (uid, messages[uid], highest_before)
    assert status["highestmodseq"] >= max(m["modseq"] for m in messages.values())
    assert status["highestmodseq"] > highest_before


# --- The seed's FIXME: one side expunged the UID the other side reused ------------------


def test_uid_expunged_on_one_side_and_reused_on_the_other(cluster: PartitionedCluster) -> None:
    cluster.up()
    before = [cluster.save("n1", f"keep-{i}") for i in range(1, 4)]
    assert [s["uid"] for s in before] == [1, 2, 3]
    kept = {s["uid"]: s["guid"] for s in before}
    start = cluster.wait_converged(until=lambda st: uid_map(st) == kept)

    cluster.partition_n1()
    gone = cluster.save("n1", "expunged-on-n1")
    assert gone["uid"] == 4, gone
    expunged = cluster.write(
        "n1", "expunge", "-u", USER, "mailbox", "INBOX", "uid", str(gone["uid"])
    )
    assert expunged["uids"] == [4], expunged
    reused = cluster.save("n2", "saved-on-n2")
    assert reused["uid"] == 4, reused  # the UID n1 expunged, given to another message

    [n1_before] = cluster.snapshots(["n1"]).values()
    assert isinstance(n1_before, dict) and uid_map(n1_before) == kept, n1_before
    assert n1_before["status"]["uidnext"] == 5, n1_before

    cluster.heal()
    state = cluster.wait_converged(
        until=lambda st: reused["guid"] in uid_map(st).values(), timeout=CONVERGE
    )
    cluster.wait_links(ALL_UP)

    found = uid_map(state)
    # I2/I3: UID 4 names two messages, so it is retired; n2's message moves
    # above both UIDNEXTs (5), n1's expunge stands (I6 only keeps the unexpunged).
    assert 4 not in found, found
    assert gone["guid"] not in found.values(), found
    assert found == kept | {5: reused["guid"]}, found
    assert state["status"]["messages"] == 4, state["status"]
    assert state["status"]["uidnext"] == 6, state["status"]
    assert state["status"]["uidvalidity"] == start["status"]["uidvalidity"]
    assert state["status"]["guid"] == start["status"]["guid"]


# --- Folders renamed, created, deleted and copied into on both sides (I4, I6) ----------


def folders(cluster: PartitionedCluster, node: str) -> dict[str, Any] | str:
    """``node``'s mailboxes of alice: name -> (GUID, sorted message sizes), or
    the error.  Sizes tell the test's messages apart (their subjects differ
    in length); a copy has a GUID of its own (resync.md §4), checked apart."""
    listed = cluster.on(node, "mailbox", "list", "-u", USER)
    if listed.returncode:
        return f"list: exit {listed.returncode}: {listed.stderr.decode(errors='replace')}"
    out: dict[str, Any] = {}
    for row in json.loads(listed.stdout):
        name = row["mailbox"]
        status = cluster.on(node, "mailbox", "status", "-u", USER, "guid", name)
        fetched = cluster.on(node, "fetch", "-u", USER, "uid guid size", "mailbox", name, "all")
        if status.returncode or fetched.returncode:
            return f"{name}: exit {status.returncode}/{fetched.returncode}"
        [st] = json.loads(status.stdout)
        rows = json.loads(fetched.stdout)
        out[name] = [st["guid"], sorted(m["size"] for m in rows)]
        out.setdefault("", []).extend(m["guid"] for m in rows)
    return out


def test_folder_renames_creates_deletes_and_copies_on_both_sides_converge(
    cluster: PartitionedCluster,
) -> None:
    """Each mailbox GUID ends under one name on every node, the newest claim's
    (resync.md §5); a DELETE wins; every copied instance at its own UID is
    kept (I6); the nodes agree (I4)."""
    cluster.up()
    for i in range(1, 4):
        cluster.save("n1", "folder-" + "x" * i)
    s1, s2, s3 = (len(message("folder-" + "x" * i)) for i in range(1, 4))
    for name in ("Work", "Projects", "Old"):
        cluster.write("n1", "mailbox", "create", "-u", USER, name)
    cluster.write("n1", "copy", "-u", USER, "Work", "mailbox", "INBOX", "uid", "1")
    guids = {
        name: cluster.write("n1", "mailbox", "status", "-u", USER, "guid", name)[0]["guid"]
        for name in ("Work", "Projects", "Old")
    }

    def agree(expected: dict[str, Any] | None = None) -> dict[str, Any]:
        def shown(state: dict[str, Any] | str) -> Any:
            return state if isinstance(state, str) else {k: v for k, v in state.items() if k}

        def probe() -> tuple[bool, Any]:
            seen = {n: folders(cluster, n) for n in NODES}
            first = seen["n1"]
            same = isinstance(first, dict) and all(s == first for s in seen.values())
            return same and (expected is None or shown(first) == expected), seen

        found: dict[str, Any] = cluster.wait_until(
            f"every node lists {expected}", probe, CONVERGE
        )["n1"]
        # Every message is an instance with a GUID of its own (I6).
        every = found.pop("")
        assert len(every) == len(set(every)), every
        return found

    inbox = sorted([s1, s2, s3])
    before = agree()
    assert before == {
        "INBOX": [before["INBOX"][0], inbox],
        "Work": [guids["Work"], [s1]],
        "Projects": [guids["Projects"], []],
        "Old": [guids["Old"], []],
    }, before

    cluster.partition_n1()
    # n1's side: Work becomes Jobs, a new folder, a copy into Projects, Old deleted.
    cluster.write("n1", "mailbox", "rename", "-u", USER, "Work", "Jobs")
    side1 = cluster.write("n1", "mailbox", "create", "-u", USER, "Side1")[0]["guid"]
    cluster.write("n1", "copy", "-u", USER, "Projects", "mailbox", "INBOX", "uid", "1:2")
    cluster.write("n1", "mailbox", "delete", "-u", USER, "Old")
    time.sleep(1.0)  # the other side's claims are newer (hybrid clock, ms)
    # The n2,n3 side: Projects becomes Proj (newer than nothing on n1's side),
    # a copy into Work (renamed on the other side), a copy into the renamed
    # Projects at the UID n1's side also gave out, and a new folder.
    cluster.write("n2", "mailbox", "rename", "-u", USER, "Projects", "Proj")
    cluster.write("n3", "copy", "-u", USER, "Work", "mailbox", "INBOX", "uid", "2")
    cluster.write("n2", "copy", "-u", USER, "Proj", "mailbox", "INBOX", "uid", "3")
    side2 = cluster.write("n3", "mailbox", "create", "-u", USER, "Side2")[0]["guid"]

    cluster.heal()
    after = agree(
        {
            "INBOX": [before["INBOX"][0], inbox],
            "Jobs": [guids["Work"], sorted([s1, s2])],
            "Proj": [guids["Projects"], sorted([s1, s2, s3])],
            "Side1": [side1, []],
            "Side2": [side2, []],
        }
    )
    cluster.wait_links(ALL_UP)
    assert "Old" not in after and "Work" not in after and "Projects" not in after, after
