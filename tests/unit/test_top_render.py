"""``replicad top``: the pure parts (model: rates, masters, warnings; rendering) and
the command line's own checks, without a node."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from replicad.cli.main import main
from replicad.cli.top_cmd import (
    Frame,
    Keys,
    QuitSignals,
    Sample,
    Sampler,
    build_frame,
    frame_document,
    rates,
    render,
    unanswered,
)
from replicad.errors import UnreachableError


def peer(name: str, **over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "name": name,
        "link": "up",
        "reachable": True,
        "via": name,
        "rtt_ms": 0.5,
        "outbox": 0,
        "acked": 10,
        "lag_s": 0.0,
        "lag_p50_ms": 1.0,
        "lag_p99_ms": 2.0,
        "resync": 0,
        "resync_reasons": [],
    }
    row.update(over)
    return row


def status(*peers: dict[str, Any], **over: Any) -> dict[str, Any]:
    """A ``cluster_status`` document as n1 of a 3-node cluster sends it."""
    doc: dict[str, Any] = {
        "node": "n1",
        "root": "n1",
        "epoch": 3,
        "phase": "ready",
        "masters": 2,
        "masters_known": [
            {"user": "alice", "mailbox": "INBOX", "master": "n1"},
            {"user": "alice", "mailbox": "Sent", "master": "n1"},
            {"user": "bob", "mailbox": "INBOX", "master": "n2"},
        ],
        "masters_by_node": {"n1": 2, "n2": 1},
        "peers": list(peers) or [peer("n2"), peer("n3")],
        "stats": {"saves": 0, "changes_applied": 0, "changes_sent": 0, "forwarded": 0},
        "max_outbox": 1000,
        "cluster_size": 3,
        "durability": {"level": "local", "copies": 1},
        "user_durability": [],
    }
    doc.update(over)
    return doc


DSYNC = {
    "running": {"n2": ["ab" * 16]},
    "queued": {"n3": 4},
    "done": 7,
    "failed": 1,
    "merged_here": 0,
    "marks": [{"peer": "n3", "mailbox": "cd" * 16, "why": "partition"}],
    "verify_runs": 0,
    "verify_found": 0,
}


def frame(doc: dict[str, Any] | None = None, dsync: Any = None, **kw: Any) -> Frame:
    return build_frame(doc or status(), dsync, kw.get("previous"), now=kw.get("now", 10.0), wall=0)


def kinds(f: Frame) -> list[tuple[str, str]]:
    return [(a.kind, a.subject) for a in f.warnings]


def text_of(f: Frame, width: int = 120) -> str:
    out = io.StringIO()
    Console(file=out, color_system=None, width=width, highlight=False).print(render(f))
    return out.getvalue()


# --- rates -------------------------------------------------------------------------


def test_rates_are_counter_deltas_over_the_time_between_two_samples() -> None:
    before = Sample(100.0, {"saves": 10, "changes_applied": 50, "changes_sent": 0, "forwarded": 3})
    after = Sample(102.0, {"saves": 30, "changes_applied": 51, "changes_sent": 8, "forwarded": 3})
    assert rates(before, after) == {
        "saves": 10.0,
        "changes_applied": 0.5,
        "changes_sent": 4.0,
        "forwarded": 0.0,
    }


def test_rates_are_unknown_without_two_usable_samples() -> None:
    now = Sample(5.0, {"saves": 4, "changes_applied": 2})
    assert set(rates(None, now).values()) == {None}
    assert rates(Sample(5.0, {"saves": 1}), now)["saves"] is None  # no time between them
    # The node restarted (counters went down): unknown, not negative.
    assert rates(Sample(1.0, {"saves": 9}), now)["saves"] is None
    # A counter the older sample did not have.
    assert rates(Sample(1.0, {"saves": 0}), now)["changes_applied"] is None
    # A counter this version does not know is kept, too.
    assert rates(Sample(1.0, {"bytes": 0}), Sample(3.0, {"bytes": 10}))["bytes"] == 5.0


def test_build_frame_takes_the_rates_from_the_previous_sample() -> None:
    first = frame(status(stats={"saves": 5, "changes_applied": 0}), now=1.0)
    assert first.rates["saves"] is None
    previous = Sample(1.0, first.stats)
    second = frame(status(stats={"saves": 8, "changes_applied": 6}), previous=previous, now=4.0)
    assert second.rates["saves"] == 1.0
    assert second.rates["changes_applied"] == 2.0


# --- the model ---------------------------------------------------------------------


def test_frame_has_every_node_the_root_and_what_each_masters() -> None:
    f = frame(dsync=DSYNC)
    assert [(n.name, n.is_self, n.is_root, n.link) for n in f.nodes] == [
        ("n1", True, True, "self"),
        ("n2", False, False, "up"),
        ("n3", False, False, "up"),
    ]
    assert [n.masters for n in f.nodes] == [2, 1, 0]
    assert (f.root, f.epoch, f.cluster_size, f.linked, f.reachable) == ("n1", 3, 3, 3, 3)
    n2, n3 = f.nodes[1:]
    assert (n2.resync_running, n2.resync_queued, n3.resync_queued) == (("ab" * 16,), 0, 4)
    assert f.resyncs is not None
    assert (f.resyncs.running, f.resyncs.queued, f.resyncs.marks) == (1, 4, 1)
    assert (f.resyncs.done, f.resyncs.failed) == (7, 1)
    assert f.warnings == ()


def test_masters_are_counted_from_the_known_masters_of_an_older_node() -> None:
    doc = status()
    del doc["masters_by_node"]
    assert [n.masters for n in frame(doc).nodes] == [2, 1, 0]


def test_a_node_without_peers_gives_one_row_and_no_warnings() -> None:
    # What the dispatcher answers for a node that is not in a cluster.
    f = frame({"node": "solo", "root": None, "epoch": 0, "peers": []})
    assert [n.name for n in f.nodes] == ["solo"]
    assert f.warnings == () and f.resyncs is None


# --- warnings ----------------------------------------------------------------------


def test_an_unreachable_peer_is_a_warning_that_names_its_backlog() -> None:
    down = peer("n3", link="down", reachable=False, via=None, rtt_ms=None, outbox=12)
    f = frame(status(peer("n2"), down))
    assert kinds(f) == [("unreachable", "n3")]
    assert "n3 unreachable, 12 change(s) waiting" in f.warnings[0].message
    # Down link but a route through another node: reachable, no warning.
    relayed = peer("n3", link="down", reachable=True, via="n2", outbox=0)
    assert frame(status(peer("n2"), relayed)).warnings == ()


def test_an_outbox_above_80_percent_of_its_bound_is_a_warning() -> None:
    at_80 = frame(status(peer("n2", outbox=800), peer("n3")))
    assert at_80.warnings == ()
    above = frame(status(peer("n2", outbox=801), peer("n3")))
    assert kinds(above) == [("outbox", "n2")]
    assert "801 of 1000 (80%)" in above.warnings[0].message
    # Without a known bound (an older node) nothing is claimed.
    assert frame(status(peer("n2", outbox=10**6), peer("n3"), max_outbox=None)).warnings == ()


def test_a_durability_level_needing_more_nodes_than_linked_is_a_warning() -> None:
    n3_down = peer("n3", link="down", reachable=True, via="n2")
    quorum = {"level": "quorum", "copies": 2}
    assert frame(status(peer("n2"), n3_down, durability=quorum)).warnings == ()
    everyone = {"level": "all", "copies": 3}
    f = frame(status(peer("n2"), n3_down, durability=everyone))
    assert kinds(f) == [("durability", "")]
    assert "durability all needs 3 nodes, 2 linked" in f.warnings[0].message
    # Per-user overrides are checked too.
    f = frame(
        status(
            peer("n2"),
            n3_down,
            durability=quorum,
            user_durability=[{"user": "ceo", "level": "3", "copies": 3}],
        )
    )
    assert kinds(f) == [("durability", "ceo")]
    assert "(for ceo)" in f.warnings[0].message


def test_no_root_in_a_cluster_is_a_warning() -> None:
    f = frame(status(root=None, phase="settling"))
    assert kinds(f) == [("no_root", "")]
    assert "settling" in f.warnings[0].message
    assert not any(n.is_root for n in f.nodes)


def test_every_warning_at_once() -> None:
    doc = status(
        peer("n2", outbox=950),
        peer("n3", link="down", reachable=False, via=None, outbox=900),
        root=None,
        durability={"level": "all", "copies": 3},
    )
    assert kinds(frame(doc)) == [
        ("no_root", ""),
        ("unreachable", "n3"),
        ("outbox", "n2"),
        ("outbox", "n3"),
        ("durability", ""),
    ]


# --- rendering and JSON ------------------------------------------------------------


def test_render_shows_root_nodes_outboxes_and_warnings_without_colours() -> None:
    down = peer("n3", link="down", reachable=False, via=None, rtt_ms=None, outbox=12, resync=2)
    f = frame(status(peer("n2", via="n2"), down), dsync=DSYNC)
    text = text_of(f)
    assert "\x1b[" not in text
    assert "root n1" in text and "epoch 3 (ready)" in text
    assert "3 nodes: 2 linked, 2 reachable" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line[:1] == "n"}
    del rows["node"]  # the header
    assert set(rows) == {"n1", "n2", "n3"}
    assert rows["n1"][1] == "self,root"
    assert rows["n2"][2:5] == ["up", "yes", "direct"]
    assert rows["n3"][1:5] == ["-", "down", "no", "-"]
    assert rows["n3"][8] == "12"  # outbox
    assert "2 marked, 4 queued" in text
    assert "running abababab" in text
    assert "warnings (1)" in text and "! n3 unreachable, 12 change(s) waiting for it" in text
    assert "save/s -" in text  # one sample: no rate yet
    assert "resyncs: 1 running, 4 queued, 1 marked (done 7, failed 1)" in text


def test_imap_sessions_are_shown_per_node_and_unknown_ones_as_a_dash() -> None:
    doc = status(peer("n2", imap_sessions=7), peer("n3", imap_sessions=None), imap_sessions=12)
    f = frame(doc)
    assert [n.imap_sessions for n in f.nodes] == [12, 7, None]
    header, *lines = [line.split() for line in text_of(f).splitlines() if line[:1] == "n"][:4]
    column = header.index("imap")
    assert {line[0]: line[column] for line in lines} == {"n1": "12", "n2": "7", "n3": "-"}
    # An older node's status without the field: not known, not zero.
    assert frame(status()).nodes[0].imap_sessions is None


def test_render_of_a_quiet_cluster_says_so_and_shows_rates() -> None:
    previous = Sample(0.0, {"saves": 0, "changes_applied": 0, "changes_sent": 0, "forwarded": 0})
    doc = status(stats={"saves": 25, "changes_applied": 10, "changes_sent": 50, "forwarded": 0})
    text = text_of(frame(doc, previous=previous, now=10.0))
    assert "no warnings" in text
    assert "save/s 2.5  change/s in 1.0 out 5.0  forwarded/s 0.0" in text


def test_a_node_that_stopped_answering_keeps_its_last_frame_marked() -> None:
    f = unanswered(frame(), "node unreachable: connection refused")
    text = text_of(f)
    assert text.splitlines()[0].startswith("n1 is not answering (node unreachable")
    assert "root n1" in text


def test_a_narrow_terminal_gets_fewer_columns() -> None:
    wide = text_of(frame(dsync=DSYNC))
    out = io.StringIO()
    Console(file=out, color_system=None, width=80).print(render(frame(), width=80))
    narrow = out.getvalue()
    assert "acked" in wide and "p50 ms" in wide and "via" in wide and "rtt ms" in wide
    header = next(line for line in narrow.splitlines() if line.startswith("node"))
    assert header.split() == [
        "node",
        "role",
        "link",
        "reach",
        "imap",
        "masters",
        "outbox",
        "lag",
        "s",
        "p99",
        "ms",
        "resync",
    ]
    assert max(len(line.rstrip()) for line in narrow.splitlines()) <= 80


class FakeReader:
    """Answers with the documents given, then as a node that went away."""

    def __init__(self, *docs: dict[str, Any]) -> None:
        self.docs = list(docs)

    def read(self) -> tuple[dict[str, Any], Any]:
        if not self.docs:
            raise UnreachableError("node unreachable: connection refused")
        return self.docs.pop(0), None


def test_the_sampler_rates_successive_reads_and_keeps_the_last_frame() -> None:
    reader = FakeReader(status(stats={"saves": 1}), status(stats={"saves": 5}))
    sampler = Sampler(reader)  # type: ignore[arg-type]
    with pytest.raises(UnreachableError):
        Sampler(FakeReader()).next()  # type: ignore[arg-type]  # nothing to show: exit 69
    assert sampler.next().rates["saves"] is None
    second = sampler.next()
    assert second.rates["saves"] is not None and second.rates["saves"] > 0
    third = sampler.next()
    assert third.error == "node unreachable: connection refused"
    assert third.nodes == second.nodes and third.stats == second.stats
    with pytest.raises(UnreachableError):
        sampler.next(keep_last=False)  # --once: a failed second read is an error


def test_render_fits_a_narrow_terminal_without_failing() -> None:
    text = text_of(frame(dsync=DSYNC), width=60)
    starts = [line.split()[0] for line in text.splitlines() if line.strip()]
    assert {"n1", "n2", "n3"} <= set(starts)


def test_the_json_document_is_the_model() -> None:
    f = frame(status(peer("n2", outbox=900), peer("n3")), dsync=DSYNC)
    doc = json.loads(json.dumps(frame_document(f)))
    assert doc["root"] == "n1" and doc["epoch"] == 3
    assert [n["name"] for n in doc["nodes"]] == ["n1", "n2", "n3"]
    assert doc["nodes"][1]["outbox"] == 900
    assert doc["warnings"] == [
        {"kind": "outbox", "subject": "n2", "message": f.warnings[0].message}
    ]
    assert doc["rates"] == {
        "saves": None,
        "changes_applied": None,
        "changes_sent": None,
        "forwarded": None,
    }
    assert doc["resyncs"]["queued"] == 4 and doc["error"] is None


# --- keys --------------------------------------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[io.TextIOWrapper, int]]:
    r, w = os.pipe()
    reader = os.fdopen(r, "r")
    try:
        yield reader, w
    finally:
        reader.close()
        with contextlib.suppress(OSError):  # the test may have closed it
            os.close(w)


def test_q_on_standard_input_quits(pipe: tuple[io.TextIOWrapper, int]) -> None:
    reader, w = pipe
    with Keys(reader) as keys:
        assert keys.wait_quit(0.05) is False
        os.write(w, b"x")
        assert keys.wait_quit(0.05) is False
        os.write(w, b"q")
        assert keys.wait_quit(5.0) is True


def test_standard_input_at_its_end_or_absent_only_waits(pipe: tuple[io.TextIOWrapper, int]) -> None:
    reader, w = pipe
    os.close(w)
    with Keys(reader) as keys:
        assert keys.wait_quit(0.05) is False
        assert keys.wait_quit(0.05) is False
    with Keys(None) as keys:
        assert keys.wait_quit(0.01) is False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_quit_signal_ends_the_wait_at_once_and_the_handlers_are_restored(
    pipe: tuple[io.TextIOWrapper, int], signum: int
) -> None:
    reader, _ = pipe
    before = signal.getsignal(signum)
    with QuitSignals() as signals, Keys(reader, signals) as keys:
        assert keys.wait_quit(0.05) is False
        os.kill(os.getpid(), signum)  # only sets a flag: no exception here
        started = time.monotonic()
        assert keys.wait_quit(30.0) is True
        assert time.monotonic() - started < 5
    assert signal.getsignal(signum) == before
    with QuitSignals() as quiet, Keys(None, quiet) as keys:
        assert keys.wait_quit(0.01) is False


# --- the command line, no node needed ----------------------------------------------


def test_options_that_do_not_go_together_exit_64(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-c", "/nonexistent.toml", "top", "-f", "json"]) == 64
    assert "needs --once" in capsys.readouterr().err
    assert main(["-c", "/nonexistent.toml", "-f", "tab", "top", "--once"]) == 64
    assert main(["-c", "/nonexistent.toml", "top", "--interval", "0"]) == 64
    assert main(["-c", "/nonexistent.toml", "top", "--once", "--interval", "-1"]) == 64


def test_a_node_that_is_not_running_exits_69(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["init", str(tmp_path / "n1"), "--name", "n1"]) == 0
    capsys.readouterr()
    assert main(["-c", str(tmp_path / "n1" / "replicad.toml"), "top", "--once"]) == 69
    assert "node unreachable" in capsys.readouterr().err


def test_a_peer_catching_up_gets_a_progress_line() -> None:
    catchup = {
        "changes_left": 8123,
        "bytes_left": 131_200_000,
        "bytes_estimated": False,
        "changes_per_s": 1020.0,
        "eta_s": 8.0,
    }
    f = frame(status(peer("n2"), peer("n3", outbox=8123, catchup=catchup)))
    line = "n3 catching up: 8123 changes, 131.2 MB left, 1020 changes/s, ETA 8 s"
    assert f.catching_up == (line,)
    assert line in text_of(f)
    assert list(frame_document(f)["catching_up"]) == [line]
    assert frame().catching_up == ()  # nobody behind: no line
