"""How ``replicator status``, ``replicator dsync-status`` and ``master status``
explain what they show (the node's answers are stood in for)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from replicad.cli import replication_cmd, resync_cmd
from replicad.store.changelog import RESYNC_PARTITION

STATUS: dict[str, Any] = {
    "node": "n1",
    "root": None,
    "epoch": 0,
    "phase": "idle",
    "peers": [
        {"name": "n2", "link": "up", "reachable": True, "resync": 0, "resync_reasons": []},
        {
            "name": "n3",
            "link": "down",
            "reachable": False,
            "resync": 2,
            "resync_reasons": [RESYNC_PARTITION, "outbox-overflow"],
        },
    ],
    "masters_known": [
        {"user": "alice", "mailbox": "INBOX", "master": "n1"},
        {"user": "bob", "mailbox": None, "master": "n2"},
    ],
}


def run(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    handler: Any,
    fmt: str,
    **extra: Any,
) -> str:
    monkeypatch.setattr(replication_cmd, "_status", lambda _args: STATUS)
    handler(argparse.Namespace(format=fmt, config=None, **extra))
    return capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_killed_peer_is_shown_unreachable_not_partition(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    out = run(monkeypatch, capsys, replication_cmd.cmd_replicator_status, fmt)
    assert "partition" not in out
    if fmt == "json":
        rows = {r["peer"]: r for r in json.loads(out)}
        assert rows["n3"]["why"] == ["outbox-overflow", "unreachable"]
    else:
        assert "outbox-overflow unreachable" in out


def test_dsync_status_shows_the_partition_mark_as_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    status = {
        "running": {},
        "queued": {},
        "marks": [{"peer": "n3", "mailbox": "ab" * 16, "why": RESYNC_PARTITION}],
        "done": 0,
        "failed": 0,
        "merged_here": 0,
        "verify_runs": 0,
        "verify_found": 0,
    }

    class Client:
        def __enter__(self) -> Client:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def call(self, op: str, **args: Any) -> Any:
            assert op == "dsync_status"
            return status

    monkeypatch.setattr(resync_cmd, "connect", lambda _args: Client())
    resync_cmd.cmd_dsync_status(argparse.Namespace(format="table", config=None))
    out = capsys.readouterr().out
    assert "marked: unreachable" in out and "partition" not in out


def test_master_status_says_the_masters_are_those_known_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run(monkeypatch, capsys, replication_cmd.cmd_master_status, "table", user=None)
    lines = out.splitlines()
    assert lines[0].startswith("node n1  root electing  epoch 0")
    assert lines[1] == "masters known here (on n1; other nodes may know others):"
    assert lines[2].split() == ["user", "mailbox", "master"]


def test_a_node_without_peers_has_no_root_and_is_not_electing() -> None:
    assert replication_cmd.root_text({"root": None, "peers": []}) == "-"
    assert replication_cmd.root_text({"root": "n2", "peers": [{}]}) == "n2"
    assert replication_cmd.root_text({"root": None, "peers": [{}]}) == "electing"


CATCHUP = {
    "changes_left": 9000,
    "bytes_left": 150_000_000,
    "bytes_estimated": True,
    "changes_per_s": 900.0,
    "eta_s": 10.0,
}


@pytest.mark.parametrize("fmt", ["table", "json", "tab"])
def test_a_peer_catching_up_shows_what_is_left_and_an_eta(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    peers = [{**STATUS["peers"][0], "outbox": 9000, "catchup": CATCHUP}, STATUS["peers"][1]]
    monkeypatch.setitem(STATUS, "peers", peers)
    out = run(monkeypatch, capsys, replication_cmd.cmd_replicator_status, fmt)
    line = "n2 catching up: 9000 changes, ~150.0 MB left, 900 changes/s, ETA 10 s"
    if fmt == "json":
        rows = {r["peer"]: r for r in json.loads(out)}
        assert rows["n2"]["catchup"] == CATCHUP
        assert rows["n3"]["catchup"] is None
    elif fmt == "table":
        assert out.splitlines()[-1] == line
    else:  # tab: only the rows, one per peer, for scripts
        assert len(out.splitlines()) == 3 and "catching up" not in out
