"""``replicad migrate`` from a real Dovecot into a 3-node cluster (architecture.md §12).

The source holds several folders (one with a non-ASCII name, one nested),
UID gaps, flags, keywords and internal dates.  After a pre-sync every node
shows, over IMAP, every folder under the source's UIDVALIDITY with every
message at its source UID, with its flags, keywords, INTERNALDATE and
octets; then the source changes (new mail, flag changes, an expunge) and
the cutover brings exactly those.  A user whose password is wrong fails
with class ``auth`` while the others finish; a master user logs in for a
user with SASL PLAIN's authorization identity.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from imapclient import IMAPClient  # type: ignore[import-untyped]

from replicad.admin.client import AdminClient
from replicad.config import load_config
from tests.dovecot_source import DovecotSource
from tests.integration.test_cluster_replication import NODES, LocalCluster
from tests.integration.test_imap_cluster import imap_port

pytestmark = pytest.mark.slow

ALICE, BOB = "alice@example.org", "bob@example.org"
SOURCE_PASSWORDS = {ALICE: "alice-source-pw", BOB: "bob-source-pw"}
TARGET_PASSWORD = "pw"
MASTER, MASTER_PASSWORD = "migrator", "master-pw"
NON_ASCII = "Entwürfe"
WAIT = 120.0


def message(subject: str, size: int = 200) -> bytes:
    head = f"From: src@example.org\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n".encode()
    return head + (b"x" * (size - len(head) - 2)) + b"\r\n"


def date(day: int) -> datetime:
    return datetime(2024, 3, day, 10, 30, tzinfo=UTC)


def populate(source: DovecotSource) -> None:
    with source.client(ALICE) as c:
        for name in ("Work", "Work.Projects", NON_ASCII, "Sent"):
            c.create_folder(name)
        for i in range(1, 7):
            c.append("INBOX", message(f"inbox {i}", 300 + i), (), date(i))
        c.select_folder("INBOX")
        c.add_flags([1, 3], ["\\Seen"])
        c.add_flags([2], ["\\Flagged", "$Work"])
        c.add_flags([4], ["\\Answered", "Urgent"])
        c.add_flags([5], ["\\Deleted"])
        c.expunge()  # a gap at UID 5
        c.append("Work.Projects", message("project", 5000), ["\\Seen", "$Label1"], date(7))
        c.append(NON_ASCII, message("draft", 900), ["\\Draft"], date(8))
        c.append(NON_ASCII, message("draft 2", 901), [], date(9))
        c.append("Sent", message("sent", 400), ["\\Seen"], date(10))
    with source.client(BOB) as c:
        for i in range(1, 4):
            c.append("INBOX", message(f"bob {i}"), ["\\Seen"] if i == 2 else [], date(i))


def view(client: IMAPClient) -> dict[str, Any]:
    """Every selectable folder: UIDVALIDITY and uid -> (flags, date, octets)."""
    out: dict[str, Any] = {}
    for flags, delimiter, name in client.list_folders():
        if any(f.lower() in (b"\\noselect", b"\\nonexistent") for f in flags):
            continue
        info = client.select_folder(name, readonly=True)
        shown = name.replace(delimiter.decode(), "/") if delimiter else name
        messages = {}
        if int(info[b"EXISTS"]):
            uids = client.search(["ALL"])
            fetched = client.fetch(uids, ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])
            for uid, data in fetched.items():
                flags_ = sorted(f.decode() for f in data[b"FLAGS"] if f != b"\\Recent")
                messages[uid] = (flags_, int(data[b"INTERNALDATE"].timestamp()), data[b"BODY[]"])
        out[shown] = {"uidvalidity": int(info[b"UIDVALIDITY"]), "messages": messages}
    return out


def target_view(cluster: LocalCluster, node: str, user: str) -> dict[str, Any]:
    client = IMAPClient("127.0.0.1", port=imap_port(cluster, node), ssl=False, timeout=30)
    client.normalise_times = False
    try:
        client.login(user, TARGET_PASSWORD)
        return view(client)
    finally:
        client.logout()


def source_view(source: DovecotSource, user: str) -> dict[str, Any]:
    with source.client(user) as client:
        return view(client)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[DovecotSource]:
    s = DovecotSource(tmp_path, SOURCE_PASSWORDS, {MASTER: MASTER_PASSWORD})
    s.start()
    try:
        populate(s)
        yield s
    finally:
        s.stop()


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path_factory.mktemp("mig"))
    try:
        c.up("-n", "3")
        c.down()
        for node in NODES:
            for user in (ALICE, BOB):
                added = c.cli(
                    "-c",
                    c.config(node),
                    "user",
                    "add",
                    user,
                    "--password-stdin",
                    input=TARGET_PASSWORD.encode() + b"\n",
                )
                assert added.returncode == 0, added.stderr.decode()
        c.up()
        c.wait_root()
        yield c
    finally:
        c.stop_all()


def statuses(cluster: LocalCluster, job: str) -> dict[str, dict[str, Any]]:
    rows = cluster.json_on("n1", "migrate", "status", job)
    return {r["user"]: r for r in rows}


def wait_for(cluster: LocalCluster, job: str, done: Any) -> dict[str, dict[str, Any]]:
    def probe() -> tuple[bool, Any]:
        rows = statuses(cluster, job)
        return done(rows), rows

    result: dict[str, dict[str, Any]] = cluster.wait_until(f"job {job}", probe, timeout=WAIT)
    return result


def converged(cluster: LocalCluster, user: str, expected: dict[str, Any]) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        views = {n: target_view(cluster, n, user) for n in NODES}
        if all(v == expected for v in views.values()):
            return
        if time.monotonic() > deadline:
            for node, seen in views.items():
                assert seen == expected, f"{node} differs from the source\n{cluster.logs()}"
        time.sleep(0.5)


def test_presync_then_cutover_keeps_uids_flags_dates_and_bytes_on_every_node(
    source: DovecotSource, cluster: LocalCluster, tmp_path: Path
) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"# source target\n{ALICE}\n{BOB}\n")
    passwords = tmp_path / "passwords"
    passwords.write_text(f"{ALICE} {SOURCE_PASSWORDS[ALICE]}\n{BOB} wrong-password\n")
    added = cluster.json_on(
        "n1",
        "migrate",
        "add",
        "--source",
        f"imap://127.0.0.1:{source.port}",
        "--users",
        users,
        "--password-file",
        passwords,
        "--workers",
        "2",
    )
    job = added["job"]
    rows = wait_for(
        cluster,
        job,
        lambda r: r[ALICE]["synced"] and r[BOB]["phase"] == "failed",
    )
    # The JSON contract: exactly these keys per user.
    assert set(rows[ALICE]) == {
        "user",
        "phase",
        "synced",
        "folders",
        "messages",
        "expunged",
        "flags_changed",
        "bytes",
        "rate",
        "eta",
        "error",
    }
    assert rows[BOB]["error"].startswith("auth:"), rows[BOB]
    # --follow returns once every user has synced or failed; stdout stays JSON.
    followed = cluster.json_on("n1", "migrate", "status", job, "--follow")
    assert {r["user"] for r in followed} == {ALICE, BOB}
    assert rows[ALICE]["phase"] == "pre-sync" and rows[ALICE]["error"] is None
    expected = source_view(source, ALICE)
    assert set(expected) == {"INBOX", "Work", "Work/Projects", NON_ASCII, "Sent"}
    assert sorted(expected["INBOX"]["messages"]) == [1, 2, 3, 4, 6]  # the gap at 5 is kept
    assert rows[ALICE]["messages"] == 9
    assert rows[ALICE]["bytes"] == sum(
        len(m[2]) for f in expected.values() for m in f["messages"].values()
    )
    converged(cluster, ALICE, expected)

    # The source changes while users still live on it; the cutover brings exactly that.
    with source.client(ALICE) as c:
        c.append("INBOX", message("late arrival", 777), ["$Late"], date(20))
        c.select_folder("INBOX")
        c.add_flags([1], ["\\Flagged"])
        c.remove_flags([2], ["$Work"])
        c.select_folder(NON_ASCII)
        c.add_flags([2], ["\\Deleted"])
        c.expunge()
    before = rows[ALICE]
    moved = cluster.json_on("n1", "migrate", "cutover", job)
    assert moved == {"job": job, "users": 2}
    rows = wait_for(cluster, job, lambda r: r[ALICE]["phase"] == "done")
    after = rows[ALICE]
    assert after["messages"] - before["messages"] == 1
    assert after["expunged"] - before["expunged"] == 1
    assert after["flags_changed"] - before["flags_changed"] == 2
    expected = source_view(source, ALICE)
    converged(cluster, ALICE, expected)

    # The failed user: a master user logs in for him (SASL PLAIN authzid).
    master_password = tmp_path / "master"
    master_password.write_text(MASTER_PASSWORD + "\n")
    second = cluster.json_on(
        "n1",
        "migrate",
        "add",
        "--source",
        f"imap://127.0.0.1:{source.port}",
        "-u",
        BOB,
        "--master-user",
        MASTER,
        "--password-file",
        master_password,
        "--phase",
        "cutover",
    )
    rows = wait_for(cluster, second["job"], lambda r: r[BOB]["phase"] == "done")
    converged(cluster, BOB, source_view(source, BOB))
    # Cancelled: the job is forgotten (what it copied stays).
    cancelled = cluster.json_on("n1", "migrate", "cancel", second["job"])
    assert cancelled == {"job": second["job"], "users": 1}
    assert cluster.on("n1", "migrate", "status", second["job"]).returncode == 68
    converged(cluster, BOB, source_view(source, BOB))

    # The source was only read: no password in the node's logs, no flag set by a fetch.
    logs = "".join(p.read_text(errors="replace") for p in cluster.dir.glob("n*/replicad.log"))
    assert SOURCE_PASSWORDS[ALICE] not in logs and MASTER_PASSWORD not in logs
    assert json.dumps(rows)  # status rows are plain JSON


def bulk(source: DovecotSource, user: str, folders: int, per_folder: int, tag: str) -> None:
    with source.client(user) as c:
        existing = {name for _flags, _delim, name in c.list_folders()}
        for f in range(folders):
            name = f"Bulk.F{f:02d}"
            if name not in existing:
                c.create_folder(name)
            for i in range(per_folder):
                c.append(name, message(f"{tag} {f}/{i}", 20_000), ["\\Seen"] if i % 3 else [])


def wait_mid_copy(cluster: LocalCluster, job: str, user: str, floor: int) -> dict[str, Any]:
    """Until the user's pass has copied more than ``floor`` messages and not finished."""
    socket = load_config(cluster.config("n1")).node.admin_socket
    deadline = time.monotonic() + WAIT
    with AdminClient(socket).connect() as client:  # faster than a command per poll
        while time.monotonic() < deadline:
            [row] = client.call("migrate_status", job=job)
            assert not row["synced"], f"the pass finished before it could be cut: {row}"
            if row["messages"] > floor:
                return dict(row)
            time.sleep(0.02)
    pytest.fail(f"no progress: {statuses(cluster, job)}\n{cluster.logs()}")


def test_kill_9_mid_copy_resumes_exactly_and_a_source_outage_is_retried(
    source: DovecotSource, cluster: LocalCluster, tmp_path: Path
) -> None:
    bulk(source, ALICE, folders=40, per_folder=12, tag="first")
    passwords = tmp_path / "pw"
    passwords.write_text(SOURCE_PASSWORDS[ALICE] + "\n")
    job = cluster.json_on(
        "n1",
        "migrate",
        "add",
        "--source",
        f"imap://127.0.0.1:{source.port}",
        "-u",
        ALICE,
        "--password-file",
        passwords,
        "--workers",
        "1",
    )["job"]
    wait_mid_copy(cluster, job, ALICE, 0)
    cluster.stop_node("n1", signal.SIGKILL)
    cluster.up()
    cluster.wait_root()
    wait_for(cluster, job, lambda r: r[ALICE]["synced"])
    converged(cluster, ALICE, source_view(source, ALICE))

    # The source goes away in the middle of the next pass: the pass fails
    # "network" and is retried after a backoff until the source is back, then
    # brings exactly the rest of the new mail (nothing twice, nothing lost).
    floor = statuses(cluster, job)[ALICE]["messages"]
    bulk(source, ALICE, folders=40, per_folder=30, tag="second")
    assert cluster.json_on("n1", "migrate", "retry", job) == {"job": job, "users": 1}
    wait_mid_copy(cluster, job, ALICE, floor)
    source.kill()
    down = wait_for(cluster, job, lambda r: (r[ALICE]["error"] or "").startswith("network:"))
    assert not down[ALICE]["synced"] and down[ALICE]["phase"] == "pre-sync", down
    assert floor < down[ALICE]["messages"] < floor + 1200, down  # cut mid-pass
    source.start()
    rows = wait_for(cluster, job, lambda r: r[ALICE]["synced"])
    assert rows[ALICE]["error"] is None
    converged(cluster, ALICE, source_view(source, ALICE))
