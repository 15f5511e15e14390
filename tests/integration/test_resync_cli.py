"""Damage behind replication's back, found and repaired (I4, I8; seed goal 2).

A real 3-node cluster; one node is stopped and its store edited by hand (a
flag record changed, a mailbox deleted: no change record, no resync mark).
``replicad verify`` must list exactly the damaged mailboxes, ``replicad
sync`` must repair them, and, in the second test, the background check must
repair them alone.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from replicad.store.mailstore import MailStore
from replicad.store.schema import message_key
from tests.integration.test_cluster_replication import NODES, LocalCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("rs"))  # short: socket paths <= 107 bytes
    try:
        yield c
    finally:
        c.stop_all()


def damage(store_dir: Path) -> None:
    """Change alice/INBOX UID 2's flags and delete alice/Work, writing LMDB directly."""

    async def run() -> None:
        async with MailStore.open(store_dir, map_size=64 << 20) as store:

            def edit(txn: Any) -> None:
                # Lost, not deleted by a client: no record of a DELETE either.
                lost = store.index._mailbox_guid(txn, "alice", "Work")
                store.index.delete_mailbox(txn, "alice", "Work")
                txn.delete(lost, db=store.index.dbs.deleted)
                guid = store.index._mailbox_guid(txn, "alice", "INBOX")
                row = store.index._message(txn, guid, 2)
                assert row is not None and row.flags == ("\\Seen",)
                txn.put(
                    message_key(guid, 2),
                    replace(row, flags=("\\Deleted",)).encode(),
                    db=store.index.dbs.messages,
                )

            await store.writer.submit(edit)

    trio.run(run)


def seed_mail(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.wait_root()
    assert cluster.on("n1", "mailbox", "create", "-u", "alice", "Work").returncode == 0
    for i in range(3):
        cluster.save("n1", "alice", f"in-{i}")
        cluster.save("n2", "alice", f"work-{i}", mailbox="Work")
    flagged = cluster.on(
        "n1", "flags", "add", "-u", "alice", "\\Seen", "mailbox", "INBOX", "uid", "2"
    )
    assert flagged.returncode == 0, flagged.stderr
    cluster.wait_converged("alice", until=lambda s: len(s.get("Work", {}).get("messages", [])) == 3)


def verify(cluster: LocalCluster, node: str, *who: str) -> tuple[int, dict[str, Any]]:
    """``verify`` once every peer is linked (it compares with linked peers only)."""

    def probe() -> tuple[bool, Any]:
        result = cluster.on(node, "verify", *(who or ("--all",)))
        assert result.returncode in (0, 1), result.stderr.decode(errors="replace")
        found = json.loads(result.stdout)
        return found["peers"] == len(NODES) - 1, (result.returncode, found)

    code, found = cluster.wait_until(f"{node} linked to every peer", probe)
    return int(code), dict(found)


def set_cluster_option(config: Path, key: str, value: str) -> None:
    text = config.read_text()
    text, count = re.subn(r"(?m)^\[cluster\]$", f"[cluster]\n{key} = {value}", text)
    if not count:
        text += f"\n[cluster]\n{key} = {value}\n"
    config.write_text(text)
    assert tomllib.loads(text)["cluster"][key] == float(value)


def test_verify_lists_the_damage_and_sync_repairs_it(cluster: LocalCluster) -> None:
    seed_mail(cluster)
    healthy = cluster.snapshot("n1", "alice")
    code, clean = verify(cluster, "n1")
    assert code == 0 and clean["differences"] == [] and clean["peers"] == 2
    assert clean["round_trips"] == 2  # one DIGEST per peer: equal whole digests (I8)

    cluster.stop_node("n3")
    damage(cluster.dir / "n3" / "data" / "store")
    cluster.up("-n", "3")  # restarts the stopped node
    cluster.wait_root()

    code, found = verify(cluster, "n1", "-u", "alice")
    assert code == 1
    assert sorted((d["peer"], d["mailbox"], d["why"]) for d in found["differences"]) == [
        ("n3", "INBOX", "state differs"),
        ("n3", "Work", "missing on peer"),
    ]
    code, whole = verify(cluster, "n2")  # the descent through the digest tree finds the same
    assert code == 1
    assert sorted((d["peer"], d["mailbox"]) for d in whole["differences"]) == [
        ("n3", "INBOX"),
        ("n3", "Work"),
    ]

    for node in NODES:  # whichever node masters each mailbox
        synced = cluster.on(node, "sync", "-u", "alice")
        assert synced.returncode == 0, synced.stderr.decode(errors="replace")
    state = cluster.wait_converged("alice")
    assert {m["uid"]: m["flags"] for m in state["INBOX"]["messages"]}[2] == ["\\Seen"]
    assert [m["guid"] for m in state["Work"]["messages"]] == [
        m["guid"]
        for m in healthy["Work"]["messages"]  # type: ignore[index]
    ]
    for node in NODES:
        assert verify(cluster, node)[0] == 0


def test_the_background_check_repairs_damage_alone(cluster: LocalCluster) -> None:
    cluster.up("-n", "3")
    cluster.down()
    for node in NODES:
        set_cluster_option(cluster.config(node), "verify_interval", "2")
    seed_mail(cluster)
    cluster.stop_node("n3")
    damage(cluster.dir / "n3" / "data" / "store")
    cluster.up("-n", "3")
    state = cluster.wait_converged(
        "alice",
        until=lambda s: (
            "Work" in s
            and {m["uid"]: m["flags"] for m in s["INBOX"]["messages"]}.get(2) == ["\\Seen"]
        ),
    )
    assert len(state["Work"]["messages"]) == 3
    status = cluster.json_on("n1", "replicator", "dsync-status")
    assert status["verify_runs"] >= 1
