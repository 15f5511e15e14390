"""``replicad top``: a live console of the whole cluster as one node sees it (architecture.md §9).

Three layers, kept apart so that the first two are pure (and unit-tested):

* **the model** — :func:`build_frame` turns the node's ``cluster_status``
  document (the data source ``replicator status`` and ``master status`` read
  too, :func:`~replicad.cli.replication_cmd.cluster_status`), its
  ``dsync_status`` document and the previous :class:`Sample` of the stats
  counters into a :class:`Frame`: one row per node (with its open IMAP
  sessions, as its PING replies tell them), save and change rates,
  resyncs, and the warnings (:func:`find_warnings`);
* **the rendering** — :func:`render` turns a :class:`Frame` into a rich
  renderable; the colours are dropped by rich when the output is no terminal;
* **the loop** — :func:`cmd_top` reads the node every ``--interval`` seconds
  and redraws on the terminal's alternate screen until ``q``, Ctrl-C or
  SIGTERM, then puts the terminal back as it was.  ``--once`` prints one
  frame (``-f json``: the model as one JSON document); with stdout not a
  terminal and no ``--once`` it prints a frame per interval (like ``top -b``).

Exit codes: 69 if the node does not answer at the start (later, the screen
keeps the last frame and says the node stopped answering), 64 for options
that do not go together, 0 when quit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from replicad.admin.client import AdminClient
from replicad.cli.common import node_config, output_format, write_line
from replicad.cli.output import FORMATS, render_document
from replicad.cli.replication_cmd import catch_up_lines, cluster_status
from replicad.errors import BadInputError, ReplicadError, UsageError

if TYPE_CHECKING:  # rich is imported when top runs, not by every replicad command
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

#: The stats counters of ``cluster_status`` turned into rates, in display order.
COUNTERS = ("saves", "changes_applied", "changes_sent", "forwarded")
#: An outbox deeper than this share of ``cluster.max_outbox`` is a warning: past
#: the bound, the peer's mailboxes are marked for resync instead.
OUTBOX_WARN_SHARE = 0.8
#: How long one read of the node may take before the screen says so.
READ_TIMEOUT = 5.0
#: Width of the text when stdout is no terminal: wide enough that no cell is
#: ever cut for a script (lines are only as long as what they hold).
PIPE_WIDTH = 240
#: Below this many columns the table leaves out via, rtt, acked and p50.
COMPACT_BELOW = 110


# --- the model (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """The stats counters at one moment (``at``: a monotonic clock, seconds)."""

    at: float
    stats: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as seen from the node ``top`` reads (``link`` is ``self`` for it)."""

    name: str
    is_self: bool
    is_root: bool
    link: str  # self | up | down
    reachable: bool
    via: str | None  # next hop of the route (the peer itself over a direct link)
    rtt_ms: float | None
    masters: int  # mailboxes it masters, as far as this node knows
    outbox: int | None  # log entries the peer has not acknowledged
    acked: int | None
    lag_s: float | None
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    resync_marks: int  # mailboxes marked for resync with the peer
    resync_running: tuple[str, ...]  # mailboxes (hex GUIDs) being resynced with it now
    resync_queued: int
    #: IMAP connections open on the node (a peer's from its last PING reply;
    #: None: not known here, as for a node reached only through others).
    imap_sessions: int | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """One warning: ``kind`` is unreachable | outbox | durability | no_root."""

    kind: str
    subject: str  # the node or user it is about
    message: str


@dataclass(frozen=True, slots=True)
class Resyncs:
    running: int
    queued: int
    marks: int
    done: int
    failed: int


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one screen shows; ``-f json`` prints it as it is."""

    node: str
    root: str | None
    epoch: int
    phase: str | None
    cluster_size: int  # configured nodes, this one included
    linked: int  # nodes with a direct link, this one included (what durability counts)
    reachable: int  # nodes reachable directly or through others, this one included
    durability: str | None
    durability_copies: int | None
    max_outbox: int | None
    nodes: tuple[NodeRow, ...]
    rates: Mapping[str, float | None]  # per second, by counter; None before two samples
    stats: Mapping[str, int]
    resyncs: Resyncs | None  # None: the node runs no resync (no peers)
    warnings: tuple[Alert, ...]
    taken_at: float  # wall clock, seconds since the epoch
    error: str | None = None  # the node stopped answering: the rest is the last frame
    #: A progress line per peer catching up on this node's log (replicator status's).
    catching_up: tuple[str, ...] = ()


def rates(previous: Sample | None, current: Sample) -> dict[str, float | None]:
    """Per-second rate of each counter between two samples.

    None where it cannot be known: no previous sample, no time between them,
    a counter missing from either, or one that went down (the node restarted).
    """
    names = [*COUNTERS, *sorted(set(current.stats) - set(COUNTERS))]
    result: dict[str, float | None] = {}
    elapsed = current.at - previous.at if previous is not None else 0.0
    for name in names:
        now = current.stats.get(name)
        before = previous.stats.get(name) if previous is not None else None
        if now is None or before is None or elapsed <= 0 or now < before:
            result[name] = None
        else:
            result[name] = round((now - before) / elapsed, 2)
    return result


def find_warnings(
    nodes: Sequence[NodeRow],
    *,
    root: str | None,
    phase: str | None,
    linked: int,
    durability: str | None,
    durability_copies: int | None,
    user_durability: Sequence[Mapping[str, Any]] = (),
    max_outbox: int | None,
) -> list[Alert]:
    """What needs an operator's eye: peers unreachable, outboxes near their
    bound, durability levels that cannot be met, no root."""
    found: list[Alert] = []
    peers = [n for n in nodes if not n.is_self]
    if peers and root is None:
        found.append(
            Alert(
                "no_root",
                "",
                f"no root (election {phase or 'unknown'}): writes to mailboxes without "
                "a known master wait",
            )
        )
    for n in peers:
        if not n.reachable:
            backlog = f", {n.outbox} change(s) waiting for it" if n.outbox else ""
            found.append(Alert("unreachable", n.name, f"{n.name} unreachable{backlog}"))
    if max_outbox:
        for n in peers:
            if n.outbox is not None and n.outbox > OUTBOX_WARN_SHARE * max_outbox:
                found.append(
                    Alert(
                        "outbox",
                        n.name,
                        f"outbox to {n.name} at {n.outbox} of {max_outbox} "
                        f"({100 * n.outbox // max_outbox}%): past the bound its mailboxes "
                        "are marked for resync",
                    )
                )
    levels: list[tuple[str, str, int]] = []
    if durability is not None and durability_copies is not None:
        levels.append(("", durability, durability_copies))
    levels += [(str(u["user"]), str(u["level"]), int(u["copies"])) for u in user_durability]
    for user, level, copies in levels:
        if linked < copies:
            whose = f" (for {user})" if user else ""
            found.append(
                Alert(
                    "durability",
                    user,
                    f"durability {level}{whose} needs {copies} nodes, {linked} linked: "
                    "writes mastered here are refused (exit 75)",
                )
            )
    return found


def build_frame(
    status: Mapping[str, Any],
    dsync: Mapping[str, Any] | None,
    previous: Sample | None,
    *,
    now: float,
    wall: float,
) -> Frame:
    """The frame for one ``cluster_status`` (+ ``dsync_status``) read at ``now``."""
    me = str(status.get("node", "?"))
    root = status.get("root")
    counts = _masters_by_node(status)
    running: Mapping[str, list[str]] = (dsync or {}).get("running", {})
    queued: Mapping[str, int] = (dsync or {}).get("queued", {})
    rows = [
        NodeRow(
            name=me,
            is_self=True,
            is_root=root == me,
            link="self",
            reachable=True,
            via=None,
            rtt_ms=None,
            masters=max(counts.get(me, 0), int(status.get("masters") or 0)),
            outbox=None,
            acked=None,
            lag_s=None,
            lag_p50_ms=None,
            lag_p99_ms=None,
            resync_marks=0,
            resync_running=(),
            resync_queued=0,
            imap_sessions=status.get("imap_sessions"),
        )
    ]
    for p in status.get("peers") or []:
        name = str(p["name"])
        rows.append(
            NodeRow(
                name=name,
                is_self=False,
                is_root=root == name,
                link=str(p.get("link", "down")),
                reachable=bool(p.get("reachable")),
                via=p.get("via"),
                rtt_ms=p.get("rtt_ms"),
                masters=counts.get(name, 0),
                outbox=p.get("outbox"),
                acked=p.get("acked"),
                lag_s=p.get("lag_s"),
                lag_p50_ms=p.get("lag_p50_ms"),
                lag_p99_ms=p.get("lag_p99_ms"),
                resync_marks=int(p.get("resync") or 0),
                resync_running=tuple(running.get(name, ())),
                resync_queued=int(queued.get(name, 0)),
                imap_sessions=p.get("imap_sessions"),
            )
        )
    linked = sum(1 for r in rows if r.link in ("self", "up"))
    level = status.get("durability") or {}
    max_outbox = status.get("max_outbox")
    stats = {k: int(v) for k, v in (status.get("stats") or {}).items()}
    warnings = find_warnings(
        rows,
        root=root,
        phase=status.get("phase"),
        linked=linked,
        durability=level.get("level"),
        durability_copies=level.get("copies"),
        user_durability=status.get("user_durability") or [],
        max_outbox=max_outbox,
    )
    resyncs = None
    if dsync is not None:
        resyncs = Resyncs(
            running=len(running),
            queued=sum(int(n) for n in queued.values()),
            marks=len(dsync.get("marks", [])),
            done=int(dsync.get("done", 0)),
            failed=int(dsync.get("failed", 0)),
        )
    return Frame(
        node=me,
        root=root,
        epoch=int(status.get("epoch") or 0),
        phase=status.get("phase"),
        cluster_size=int(status.get("cluster_size") or len(rows)),
        linked=linked,
        reachable=sum(1 for r in rows if r.reachable),
        durability=level.get("level"),
        durability_copies=level.get("copies"),
        max_outbox=max_outbox,
        nodes=tuple(rows),
        rates=rates(previous, Sample(now, stats)),
        stats=stats,
        resyncs=resyncs,
        warnings=tuple(warnings),
        taken_at=wall,
        catching_up=tuple(catch_up_lines(dict(status))),
    )


def unanswered(last: Frame, error: str) -> Frame:
    """The last frame, marked: the node stopped answering (``error`` says how)."""
    return dataclasses.replace(last, error=error)


def frame_document(frame: Frame) -> dict[str, Any]:
    """The frame as plain JSON-ready data (``top --once -f json``)."""
    return dataclasses.asdict(frame)


def _masters_by_node(status: Mapping[str, Any]) -> dict[str, int]:
    by_node = status.get("masters_by_node")
    if isinstance(by_node, Mapping):
        return {str(k): int(v) for k, v in by_node.items()}
    counts: dict[str, int] = {}
    for m in status.get("masters_known") or []:
        counts[m["master"]] = counts.get(m["master"], 0) + 1
    return counts


# --- the rendering (pure) -----------------------------------------------------------


def render(frame: Frame, *, footer: str | None = None, width: int | None = None) -> RenderableType:
    """One screen: header, rates, the nodes, resyncs, warnings (and ``footer``);
    on a terminal narrower than :data:`COMPACT_BELOW` (``width``), fewer columns."""
    from rich.console import Group
    from rich.text import Text

    parts: list[RenderableType] = []
    if frame.error is not None:
        parts.append(
            Text(
                f"{frame.node} is not answering ({frame.error}); below: what it said at "
                f"{_clock(frame.taken_at)}",
                style="bold red",
            )
        )
    compact = width is not None and width < COMPACT_BELOW
    parts += [_header(frame), _rates_line(frame), Text(), _nodes_table(frame, compact), Text()]
    if frame.catching_up:
        parts += [Text(line, style="cyan") for line in frame.catching_up]
        parts.append(Text())
    parts.append(_warnings(frame))
    if footer:
        parts.append(Text(footer, style="dim"))
    return Group(*parts)


def _clock(wall: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(wall))


def _header(frame: Frame) -> Text:
    from rich.text import Text

    text = Text()
    text.append("replicad top", style="bold")
    text.append(f"  {_clock(frame.taken_at)}  seen from {frame.node}  root ")
    text.append(frame.root or "none", style="bold" if frame.root else "bold red")
    text.append(f"  epoch {frame.epoch}")
    if frame.phase:
        text.append(f" ({frame.phase})")
    short = frame.linked < frame.cluster_size
    text.append(
        f"\n{frame.cluster_size} nodes: {frame.linked} linked, {frame.reachable} reachable",
        style="yellow" if short else "",
    )
    if frame.durability is not None:
        copies = frame.durability_copies
        text.append(
            f"  durability {frame.durability} ({copies} cop{'y' if copies == 1 else 'ies'})"
        )
    if frame.max_outbox is not None:
        text.append(f"  max outbox {frame.max_outbox}")
    return text


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rates_line(frame: Frame) -> Text:
    from rich.text import Text

    r = frame.rates
    text = Text()
    text.append(f"save/s {_rate(r.get('saves'))}", style="bold")
    text.append(
        f"  change/s in {_rate(r.get('changes_applied'))} out {_rate(r.get('changes_sent'))}"
    )
    text.append(f"  forwarded/s {_rate(r.get('forwarded'))}")
    if frame.resyncs is not None:
        rs = frame.resyncs
        text.append(
            f"  resyncs: {rs.running} running, {rs.queued} queued, {rs.marks} marked"
            f" (done {rs.done}, failed {rs.failed})",
            style="yellow" if rs.running or rs.queued else "",
        )
    return text


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _nodes_table(frame: Frame, compact: bool = False) -> Table:
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold", expand=False)
    # The node names are never cut; the numbers are right-aligned.
    longest = max((len(n.name) for n in frame.nodes), default=4)
    table.add_column("node", no_wrap=True, min_width=max(4, longest))
    left = ("role", "link", "reach") if compact else ("role", "link", "reach", "via")
    for name in left:
        table.add_column(name, no_wrap=True)
    right: tuple[str, ...] = ("imap", "masters", "outbox", "lag s", "p99 ms")
    if not compact:
        right = ("imap", "rtt ms", "masters", "outbox", "acked", "lag s", "p50 ms", "p99 ms")
    for name in right:
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("resync")
    near = {a.subject for a in frame.warnings if a.kind == "outbox"}
    for n in frame.nodes:
        role = ",".join(r for r, on in (("self", n.is_self), ("root", n.is_root)) if on)
        resync = [f"{n.resync_marks} marked"] if n.resync_marks else []
        if n.resync_running:
            resync.append("running " + " ".join(m[:8] for m in n.resync_running))
        if n.resync_queued:
            resync.append(f"{n.resync_queued} queued")
        cells: dict[str, RenderableType] = {
            "node": Text(n.name, style="bold" if n.is_root else ""),
            "role": role or "-",
            "link": Text(n.link, style={"up": "green", "down": "red"}.get(n.link, "")),
            "reach": Text("yes" if n.reachable else "no", style="" if n.reachable else "bold red"),
            "via": "-" if n.via is None else ("direct" if n.via == n.name else n.via),
            "imap": _cell(n.imap_sessions),
            "rtt ms": _cell(n.rtt_ms),
            "masters": str(n.masters),
            "outbox": Text(_cell(n.outbox), style="bold yellow" if n.name in near else ""),
            "acked": _cell(n.acked),
            "lag s": _cell(None if n.lag_s is None else f"{n.lag_s:.1f}"),
            "p50 ms": _cell(n.lag_p50_ms),
            "p99 ms": _cell(n.lag_p99_ms),
            "resync": ", ".join(resync) or "-",
        }
        table.add_row(*(cells[str(c.header)] for c in table.columns))
    return table


def _warnings(frame: Frame) -> Text:
    from rich.text import Text

    if not frame.warnings:
        return Text("no warnings", style="green")
    text = Text(f"warnings ({len(frame.warnings)})", style="bold red")
    for alert in frame.warnings:
        text.append("\n  ! ", style="bold red")
        text.append(alert.message, style="red" if alert.kind == "unreachable" else "yellow")
    return text


# --- the loop (thin) ----------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``top`` to ``replicad`` (main.EXTERNAL_COMMANDS)."""
    # The global options after `top` as well; SUPPRESS keeps a value given
    # before the subcommand from being reset.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="CONFIG", default=argparse.SUPPRESS)
    common.add_argument(
        "-f", "--format", choices=FORMATS, metavar="FORMATTER", default=argparse.SUPPRESS
    )
    top = subparsers.add_parser(
        "top",
        parents=[common],
        help="live console of the cluster as this node sees it",
        description="Show the cluster as this node sees it, refreshed every interval: nodes, "
        "links, root, masters, outboxes, lag, rates, resyncs and warnings. q or Ctrl-C quits.",
    )
    top.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (rates are measured over one interval; "
        "-f json prints the frame as JSON)",
    )
    top.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="seconds between refreshes (default 1; with --once, 0 skips measuring rates)",
    )
    top.set_defaults(handler=cmd_top)


class NodeReader:
    """Reads ``cluster_status`` and ``dsync_status`` over one admin connection,
    reconnecting after a failure."""

    def __init__(self, socket_path: Path, timeout: float = READ_TIMEOUT) -> None:
        self._path = socket_path
        self._timeout = timeout
        self._client: AdminClient | None = None

    def read(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        try:
            if self._client is None:
                self._client = AdminClient(self._path, timeout=self._timeout).connect()
            status = cluster_status(self._client)
            dsync: dict[str, Any] | None
            try:
                dsync = self._client.call("dsync_status")
            except BadInputError:
                dsync = None  # a node without peers resyncs nothing
            return status, dsync
        except ReplicadError:
            self.close()
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class Sampler:
    """Successive frames: each one's rates from the previous one's counters."""

    def __init__(self, reader: NodeReader) -> None:
        self._reader = reader
        self._previous: Sample | None = None
        self.last: Frame | None = None

    def next(self, *, keep_last: bool = True) -> Frame:
        """A new frame.  If the node does not answer: the last frame marked so
        (``keep_last``, once there is one), else the error is raised."""
        try:
            status, dsync = self._reader.read()
        except ReplicadError as exc:
            if self.last is None or not keep_last:
                raise
            return unanswered(self.last, str(exc))
        now = time.monotonic()
        frame = build_frame(status, dsync, self._previous, now=now, wall=time.time())
        self._previous = Sample(now, frame.stats)
        self.last = frame
        return frame


class Keys:
    """Waits for ``q`` on standard input, in cbreak mode if it is a terminal
    (the terminal's mode is restored on exit).  Standard input that is no
    terminal is read the same way; at its end (or if there is none) only
    Ctrl-C or SIGTERM quit."""

    def __init__(self, stream: TextIO | None, signals: QuitSignals | None = None) -> None:
        self._fd: int | None = None
        self._saved: list[Any] | None = None
        self._signals = signals
        with contextlib.suppress(AttributeError, OSError, ValueError):
            if stream is not None:
                self._fd = stream.fileno()

    def __enter__(self) -> Keys:
        if self._fd is not None and os.isatty(self._fd):
            with contextlib.suppress(termios.error):
                self._saved = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd, termios.TCSANOW)
        return self

    def __exit__(self, *_: object) -> None:
        if self._fd is not None and self._saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def wait_quit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True if ``q`` was pressed or a
        quit signal came (:class:`QuitSignals`)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if self._signals is not None and self._signals.requested:
                return True
            watched = [] if self._fd is None else [self._fd]
            if self._signals is not None:
                watched.append(self._signals.fd)
            if not watched:
                time.sleep(left)
                break
            try:
                ready, _, _ = select.select(watched, [], [], left)
                if self._signals is not None and self._signals.fd in ready:
                    return True
                data = os.read(self._fd, 64) if ready and self._fd is not None else None
            except OSError:
                data = b""
            if data is None:
                continue
            if not data:
                self._fd = None  # end of input: stop listening
            elif b"q" in data.lower():
                return True
        return False


class QuitSignals:
    """SIGINT (Ctrl-C) and SIGTERM ask the live console to quit.

    The handlers only set :attr:`requested` and write a byte to a pipe that
    :meth:`Keys.wait_quit` watches, so the console leaves its loop between
    two frames and restores the terminal on the normal path.  (Raising
    KeyboardInterrupt from the handler, as Python does by default, can land
    inside the console library's locks or a terminal write and leave the
    process hung, the alternate screen never left.)
    """

    def __init__(self) -> None:
        self.requested = False
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._previous: dict[int, Any] = {}

    @property
    def fd(self) -> int:
        return self._read

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True
        with contextlib.suppress(OSError):
            os.write(self._write, b"q")

    def __enter__(self) -> QuitSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        os.close(self._read)
        os.close(self._write)


def _console() -> Console:
    """Colours on a terminal; plain text, a fixed width, when stdout is none."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console(highlight=False, emoji=False)
    return Console(
        file=sys.stdout,
        color_system=None,
        force_terminal=False,
        width=PIPE_WIDTH,
        highlight=False,
        emoji=False,
    )


def cmd_top(args: argparse.Namespace) -> int:
    fmt = output_format(args)
    if fmt == "tab":
        raise UsageError("top: -f tab is not supported (use table, or json with --once)")
    if fmt == "json" and not args.once:
        raise UsageError("top: -f json needs --once (it prints one frame as JSON)")
    if not 0 <= args.interval <= 3600 or (args.interval == 0 and not args.once):
        raise UsageError("top: --interval must be above 0 and at most 3600 seconds")
    sampler = Sampler(NodeReader(node_config(args).node.admin_socket))
    frame = sampler.next()  # exits 69 at once if the node does not answer
    if args.once:
        if args.interval > 0:
            time.sleep(args.interval)
            frame = sampler.next(keep_last=False)
        if fmt == "json":
            write_line(render_document(frame_document(frame)))
        else:
            _console().print(render(frame))
        return 0
    try:
        with QuitSignals() as signals, Keys(sys.stdin, signals) as keys:
            _loop(sampler, frame, keys, args.interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C before the handlers were in place
    return 0


def _loop(sampler: Sampler, frame: Frame, keys: Keys, interval: float) -> None:
    from rich.live import Live

    console = _console()
    footer = f"q or Ctrl-C quits; every {interval:g}s"
    if not console.is_terminal:
        # Batch mode (stdout is a pipe or a file): a frame per interval.
        while True:
            console.print(render(frame))
            console.print()
            sys.stdout.flush()
            if keys.wait_quit(interval):
                return
            frame = sampler.next()
    with Live(
        render(frame, footer=footer, width=console.width),
        console=console,
        screen=True,
        auto_refresh=False,
        redirect_stdout=False,
        redirect_stderr=False,
    ) as live:
        started = time.monotonic()
        while not keys.wait_quit(max(0.0, interval - (time.monotonic() - started))):
            started = time.monotonic()
            frame = sampler.next()
            live.update(render(frame, footer=footer, width=console.width), refresh=True)
