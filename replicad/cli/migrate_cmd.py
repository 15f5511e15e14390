"""``replicad migrate add|status|cutover|retry|cancel`` (docs/architecture.md §12).

The command reads the users file and the passwords here and hands the job
to the node over its admin socket; the node's workers do the copying
(``replicad.migrate.service``).  ``--follow`` draws a progress bar (rich)
until every user of the job has finished its pass or failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from replicad.cli.common import (
    connect,
    output_format,
    print_json_only,
    print_rows,
    user_name,
    write_line,
)
from replicad.errors import BadInputError, UsageError
from replicad.migrate.jobs import DEFAULT_PER_HOST, STATUS_KEYS
from replicad.migrate.userlist import UserPair, parse_passwords, parse_source, parse_users

FOLLOW_INTERVAL_S = 1.0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    migrate = subparsers.add_parser(
        "migrate",
        parents=[common],
        help="move users off another IMAP server (pre-sync, cutover)",
        description="Migration jobs run by the node: a pre-sync copies while users still "
        "live on the source (repeat it with 'retry'), 'cutover' runs the final "
        "incremental pass. UIDVALIDITY, UIDs, flags, keywords and INTERNALDATE are kept.",
    )
    actions = migrate.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        parents=[common],
        help="start a job: copy users from a source server",
        description="Start a migration job. Passwords: --password-file F (or - for stdin) "
        "holds, with --master-user, the master user's password on its first line; "
        "otherwise the one password of -u USER, or lines 'SOURCE_USER PASSWORD'.",
    )
    add.add_argument(
        "--source", required=True, metavar="imap[s]://HOST[:PORT]", help="the source server"
    )
    who = add.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--users",
        type=Path,
        metavar="FILE",
        help="one user a line: SOURCE_USER [TARGET_USER]; # comments",
    )
    who.add_argument("-u", "--user", type=user_name, metavar="USER", help="one user")
    add.add_argument(
        "--master-user", metavar="NAME", help="log in as NAME for every user (SASL PLAIN authzid)"
    )
    add.add_argument(
        "--password-file", required=True, metavar="F", help="passwords file, or - for stdin"
    )
    add.add_argument(
        "--phase",
        choices=("pre-sync", "cutover"),
        default="pre-sync",
        help="pre-sync (default) or cutover (one final pass straight away)",
    )
    add.add_argument(
        "--workers", type=int, default=4, metavar="N", help="users copied at once (default 4)"
    )
    add.add_argument(
        "--per-host",
        type=int,
        default=DEFAULT_PER_HOST,
        metavar="N",
        help=f"connections to the source host at once, shared by its jobs (default "
        f"{DEFAULT_PER_HOST}; keep it under the source's per-IP limit)",
    )
    trust = add.add_mutually_exclusive_group()
    trust.add_argument(
        "--source-ca",
        type=Path,
        metavar="FILE",
        help="imaps: verify the source's certificate against these CA certificates (PEM) "
        "instead of the system's",
    )
    trust.add_argument(
        "--source-insecure",
        action="store_true",
        help="imaps: accept any certificate from the source (encrypted, not authenticated)",
    )
    add.add_argument("--follow", action="store_true", help="show progress until the pass ends")
    add.set_defaults(handler=cmd_add)

    status = actions.add_parser(
        "status",
        parents=[common],
        help="per user: phase, folders, messages, expunged, flags changed, bytes, rate, ETA, error",
    )
    status.add_argument("job", nargs="?", metavar="JOB")
    status.add_argument("--follow", action="store_true", help="show progress until the pass ends")
    status.set_defaults(handler=cmd_status)

    for name, text in (
        ("cutover", "run the final incremental pass (after the MX and login switch)"),
        ("retry", "retry failed users; run another pre-sync pass for the others"),
        ("cancel", "stop and forget a job (what was copied stays)"),
    ):
        sub = actions.add_parser(name, parents=[common], help=text)
        sub.add_argument("job", metavar="JOB")
        sub.set_defaults(handler=cmd_transition, op=f"migrate_{name}")


def _read(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}") from None


def _pairs(args: argparse.Namespace) -> list[UserPair]:
    if args.users is not None:
        return parse_users(_read(str(args.users)))
    return parse_users(args.user)


def cmd_add(args: argparse.Namespace) -> int:
    parse_source(args.source)  # exit 65 before anything is read or sent
    if args.workers < 1:
        raise UsageError("migrate add: --workers must be at least 1")
    if args.per_host < 1:
        raise UsageError("migrate add: --per-host must be at least 1")
    source_ca = _read(str(args.source_ca)) if args.source_ca is not None else None
    pairs = _pairs(args)
    master = args.master_user is not None
    passwords = parse_passwords(_read(args.password_file), [p.source for p in pairs], master=master)
    with connect(args) as client:
        result: dict[str, Any] = client.call(
            "migrate_add",
            source=args.source,
            users=[[p.source, p.target] for p in pairs],
            master_user=args.master_user,
            passwords=passwords,
            phase=args.phase,
            workers=args.workers,
            per_host=args.per_host,
            source_ca=source_ca,
            source_insecure=args.source_insecure,
        )
    if args.follow:
        _follow(args, result["job"])
    if output_format(args) == "json":
        print_json_only(args, result)
    else:
        write_line(f"job {result['job']}: {result['users']} users, {result['phase']}", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.follow:
        _follow(args, args.job)
    with connect(args) as client:
        rows = client.call("migrate_status", job=args.job)
    print_rows(args, rows, list(STATUS_KEYS))
    return 0


def cmd_transition(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result = client.call(args.op, job=args.job)
    print_json_only(args, result)
    return 0


def _finished(rows: list[dict[str, Any]]) -> bool:
    return all(r["synced"] or r["phase"] in ("done", "failed") for r in rows)


def _follow(args: argparse.Namespace, job: str | None) -> None:
    """A progress bar of the job's users until each has synced or failed
    (drawn only on a terminal; elsewhere it just waits)."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} users"),
        TextColumn("{task.fields[messages]} msgs {task.fields[mib]:.1f} MiB"),
        TimeRemainingColumn(),
    )
    # On stderr: stdout stays the command's result (one JSON document with -f json).
    console = Console(stderr=True)
    with connect(args) as client, Progress(*columns, console=console) as progress:
        task = progress.add_task("migrating", total=None, messages=0, mib=0.0)
        while True:
            rows: list[dict[str, Any]] = client.call("migrate_status", job=job)
            done = sum(1 for r in rows if r["synced"] or r["phase"] in ("done", "failed"))
            progress.update(
                task,
                total=len(rows),
                completed=done,
                messages=sum(r["messages"] for r in rows),
                mib=sum(r["bytes"] for r in rows) / 2**20,
            )
            if _finished(rows):
                return
            time.sleep(FOLLOW_INTERVAL_S)
