"""``replicad sync``, ``verify`` and ``replicator dsync-status`` (architecture.md §9).

``sync`` asks the node to resync mailboxes now (protocol-spec/resync.md):
without ``--full``, it first compares digests with every linked peer (or
``--peer``), as ``verify`` does, and resyncs only the mailboxes that differ
(on either side, including those one side lacks): one round trip per peer
when nothing does (I8).  ``--full`` resyncs every mailbox, whole states.
Mailboxes this node masters are resynced here, the others by their
masters; the command follows the work to its end (a progress bar on a
terminal for more than a few hundred mailboxes) and prints how many were
compared, found different and resynced.  ``verify`` compares state digests with every linked peer
and lists the mailboxes that differ (exit 1 if any, like diff).
``dsync-status`` shows resyncs running and queued, and the marks waiting.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from replicad.cli.common import (
    connect,
    optional_user_of,
    output_format,
    print_rows,
    user_name,
    write_line,
)
from replicad.cli.output import render_document
from replicad.errors import TemporaryError, UsageError

#: How long ``sync`` follows the work before it reports it still running.
SYNC_WAIT = 600.0
#: From this many mailboxes to resync, a terminal shows a progress bar.
PROGRESS_BAR_FROM = 200

#: Resync mark reasons as the command line shows them.  The stored mark keeps
#: its name (replicad.store.changelog.RESYNC_PARTITION): "partition" is what
#: the node records for writes made while a peer was unreachable, whatever
#: the cause (a stopped or killed peer as much as a cut network).
SHOWN_REASONS = {"partition": "unreachable"}


def shown_reason(reason: str) -> str:
    """A resync mark's reason as ``replicator status`` and ``dsync-status`` show it."""
    return SHOWN_REASONS.get(reason, reason)


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    sync = subparsers.add_parser(
        "sync",
        parents=[common],
        help="resync mailboxes with the other nodes now",
        description="Resync the mailboxes of USER (or of every user) now: the ones this node "
        "masters with every linked peer (or only --peer), the others with their masters.",
    )
    _who(sync)
    sync.add_argument(
        "--full",
        action="store_true",
        help="compare whole mailbox states, never only what changed since a known point",
    )
    sync.add_argument("--peer", metavar="NODE", help="only with this peer")
    sync.add_argument("--no-wait", action="store_true", help="queue the work and return at once")
    sync.set_defaults(handler=cmd_sync)

    verify = subparsers.add_parser(
        "verify",
        parents=[common],
        help="compare mailbox digests with every linked node",
        description="Compare the state digest of every mailbox (of USER) with every linked "
        "peer and list those that differ. Exit 0 if none does, 1 otherwise.",
    )
    _who(verify)
    verify.set_defaults(handler=cmd_verify)


def register_replicator(
    actions: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser,
) -> None:
    status = actions.add_parser(
        "dsync-status", parents=[common], help="resyncs running and queued, marks waiting"
    )
    status.set_defaults(handler=cmd_dsync_status)


def _who(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("-u", "--user", metavar="USER", type=user_name)
    who.add_argument("--all", action="store_true", help="every user")


def _pending(status: dict[str, Any]) -> int:
    queued = sum(int(n) for n in status.get("queued", {}).values())
    return queued + sum(len(boxes) for boxes in status.get("running", {}).values())


def cmd_sync(args: argparse.Namespace) -> int:
    if args.peer is not None and not args.peer:
        raise UsageError("--peer needs a node name")
    with connect(args) as client:
        started: dict[str, Any] = client.call(
            "sync", user=optional_user_of(args) or "", peer=args.peer or "", full=args.full
        )
        done_before = int(started.get("done", 0))
        total = int(started["queued_here"]) + int(started["asked_masters"])
        status = started
        if not args.no_wait:
            status = _follow(client, total, done_before)
    row = {
        "compared": started.get("compared", total),
        "different": started.get("different", total),
        "resynced": total,
        "queued_here": started["queued_here"],
        "asked_masters": started["asked_masters"],
        "done": int(status.get("done", 0)) - done_before,
        "failed": int(status.get("failed", 0)) - int(started.get("failed", 0)),
        "round_trips": started.get("round_trips", 0),
        "bytes": started.get("bytes", 0),
    }
    print_rows(args, [row], list(row))
    return 0


def _follow(client: Any, total: int, done_before: int) -> dict[str, Any]:
    """Poll the node until the queued and asked resyncs are done; a progress
    bar on a terminal when there are many, a progress line for a few."""
    deadline = time.monotonic() + SYNC_WAIT
    tty = sys.stderr.isatty()
    bar = None
    if tty and total >= PROGRESS_BAR_FROM:
        from rich.progress import Progress  # only when a bar is shown

        bar = Progress(transient=False)
        task = bar.add_task("resync", total=total)
        bar.start()
    try:
        while True:
            status: dict[str, Any] = client.call("dsync_status")
            pending = _pending(status)
            asked = sum(1 for m in status.get("marks", []) if m["why"] == "requested")
            done = int(status.get("done", 0)) - done_before
            line = f"resync: {done} done, {pending} queued or running, {asked} asked of masters"
            if bar is not None:
                bar.update(task, completed=min(total, max(done, total - pending - asked)))
            elif tty:
                sys.stderr.write("\r" + line.ljust(72))
                sys.stderr.flush()
            if pending == 0 and asked == 0:
                return status
            if time.monotonic() > deadline:
                raise TemporaryError(f"sync still running after {SYNC_WAIT:g}s: {line}")
            time.sleep(0.2)
    finally:
        if bar is not None:
            bar.stop()
        elif tty:
            sys.stderr.write("\n")


def cmd_verify(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result: dict[str, Any] = client.call("verify", user=optional_user_of(args) or "")
    rows = result["differences"]
    if output_format(args) == "json":
        write_line(render_document(result))
    else:
        print_rows(args, rows, ["peer", "user", "mailbox", "why", "here", "there"])
        if output_format(args) == "table":
            write_line(
                f"{len(rows)} mailbox(es) differ; {result['peers']} peer(s), "
                f"{result['round_trips']} round trip(s)"
            )
    return 1 if rows else 0


def cmd_dsync_status(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status: dict[str, Any] = client.call("dsync_status")
    if output_format(args) == "json":
        write_line(render_document(status))
        return 0
    rows = [
        {"peer": p, "state": "running", "mailbox": m}
        for p, boxes in status["running"].items()
        for m in boxes
    ]
    rows += [
        {"peer": p, "state": f"queued ({n})", "mailbox": "-"} for p, n in status["queued"].items()
    ]
    rows += [
        {"peer": m["peer"], "state": f"marked: {shown_reason(m['why'])}", "mailbox": m["mailbox"]}
        for m in status["marks"]
    ]
    print_rows(args, rows, ["peer", "state", "mailbox"])
    write_line(
        f"done {status['done']}, failed {status['failed']}, merged here "
        f"{status['merged_here']}; verify runs {status['verify_runs']}, "
        f"differences found {status['verify_found']}"
    )
    return 0
