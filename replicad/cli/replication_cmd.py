"""``replicad replicator status`` and ``replicad master status`` (docs/architecture.md §9).

Both read the node's ``cluster_status`` admin operation: the cluster as
this node sees it.  ``replicator status`` is one row per peer (the
doveadm ``replicator status`` of this system): link, route, round trip,
outbox depth (log entries the peer has not acknowledged) and mailboxes
marked for resync with it; a peer catching up on the log (back after being
stopped or cut off) gets a progress line under the table, with messages and
bytes left and an ETA (``catchup`` in ``-f json``, replicad.cluster.catchup).
``master status`` shows the root, its epoch and the masters this node
knows, optionally for one user.  ``replicad top``
(top_cmd) reads the same operation through :func:`cluster_status`.
"""

from __future__ import annotations

import argparse
from typing import Any

from replicad.admin.client import AdminClient
from replicad.cli import resync_cmd
from replicad.cli.common import (
    connect,
    mailbox_name,
    optional_user_of,
    output_format,
    print_rows,
    user_name,
    user_of,
    write_line,
)
from replicad.cli.output import render_document
from replicad.cluster.catchup import CatchUpProgress, describe

PEER_FIELDS = [
    "peer",
    "link",
    "reachable",
    "via",
    "rtt_ms",
    "outbox",
    "acked",
    "lag_s",
    "lag_p50_ms",
    "lag_p99_ms",
    "resync",
    "why",
]
#: ``-f json`` only: the table shows it as a line per peer under the rows.
CATCHUP_FIELD = "catchup"
MASTER_FIELDS = ["user", "mailbox", "master"]


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    replicator = subparsers.add_parser(
        "replicator", parents=[common], help="replication state per peer"
    )
    actions = replicator.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser("status", parents=[common], help="links, lag and outboxes")
    status.set_defaults(handler=cmd_replicator_status)
    resync_cmd.register_replicator(actions, common)

    master = subparsers.add_parser("master", parents=[common], help="root, epoch, masters")
    mactions = master.add_subparsers(dest="action", metavar="ACTION", required=True)
    mstatus = mactions.add_parser("status", parents=[common], help="root, epoch and masters")
    mstatus.add_argument(
        "-u", "--user", metavar="USER", type=user_name, help="only this user's mailboxes"
    )
    mstatus.set_defaults(handler=cmd_master_status)
    move = mactions.add_parser(
        "move",
        parents=[common],
        help="make NODE the master of a mailbox",
        description="Hand the mastership of MAILBOX over to NODE. Writes arriving "
        "meanwhile are held, not failed; NODE must have a direct link to the current master.",
    )
    move.add_argument("-u", "--user", required=True, metavar="USER", type=user_name)
    move.add_argument("mailbox", metavar="MAILBOX", type=mailbox_name)
    move.add_argument("node", metavar="NODE")
    move.set_defaults(handler=cmd_master_move)


def cluster_status(client: AdminClient) -> dict[str, Any]:
    """The node's view of the cluster: the one data source of ``replicator status``,
    ``master status`` and ``top``."""
    status: dict[str, Any] = client.call("cluster_status")
    return status


def _status(args: argparse.Namespace) -> dict[str, Any]:
    with connect(args) as client:
        return cluster_status(client)


def cmd_replicator_status(args: argparse.Namespace) -> int:
    status = _status(args)
    rows = [
        {
            "peer": p["name"],
            "link": p["link"],
            "reachable": p["reachable"],
            "via": p.get("via"),
            "rtt_ms": p.get("rtt_ms"),
            "outbox": p.get("outbox"),
            "acked": p.get("acked"),
            "lag_s": p.get("lag_s"),
            "lag_p50_ms": p.get("lag_p50_ms"),
            "lag_p99_ms": p.get("lag_p99_ms"),
            "resync": p.get("resync", 0),
            "why": sorted({resync_cmd.shown_reason(r) for r in p.get("resync_reasons", [])}),
            CATCHUP_FIELD: p.get("catchup"),
        }
        for p in status.get("peers", [])
    ]
    fmt = output_format(args)
    print_rows(args, rows, [*PEER_FIELDS, CATCHUP_FIELD] if fmt == "json" else PEER_FIELDS)
    if fmt == "table":
        for line in catch_up_lines(status):
            write_line(line)
    return 0


def catch_up_lines(status: dict[str, Any]) -> list[str]:
    """A progress line per peer catching up on this node's log (``top`` shows them too)."""
    return [
        describe(str(p["name"]), CatchUpProgress.from_json(p["catchup"]))
        for p in status.get("peers", [])
        if p.get("catchup")
    ]


def cmd_master_move(args: argparse.Namespace) -> int:
    with connect(args) as client:
        result: dict[str, Any] = client.call(
            "master_move", user=user_of(args), mailbox=args.mailbox, node=args.node
        )
    print_rows(args, [result], ["user", "mailbox", "master", "epoch"])
    return 0


def cmd_master_status(args: argparse.Namespace) -> int:
    user = optional_user_of(args)
    status = _status(args)
    masters = [m for m in status.get("masters_known", []) if user is None or m["user"] == user]
    if output_format(args) == "json":
        write_line(
            render_document(
                {
                    "node": status.get("node"),
                    "root": status.get("root"),
                    "epoch": status.get("epoch"),
                    "masters": masters,
                }
            )
        )
        return 0
    write_line(
        f"node {status.get('node')}  root {root_text(status)}  "
        f"epoch {status.get('epoch')}  phase {status.get('phase', '-')}"
    )
    # Each node knows the masters of the mailboxes it has dealt with (the
    # root knows them all): other nodes may list other mailboxes.
    write_line(f"masters known here (on {status.get('node')}; other nodes may know others):")
    print_rows(
        args,
        [{**m, "mailbox": m["mailbox"] or "(namespace)"} for m in masters],
        MASTER_FIELDS,
    )
    return 0


def root_text(status: dict[str, Any]) -> str:
    """The root as text: ``electing`` for a cluster member before its first
    election is decided (no root yet), ``-`` for a node without peers."""
    root = status.get("root")
    if isinstance(root, str) and root:
        return root
    return "electing" if status.get("peers") else "-"
