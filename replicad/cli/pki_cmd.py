"""`replicad pki init|issue`: make the cluster CA and node certificates (I9).

Thin glue over :mod:`replicad.pki`; every failure is a ReplicadError carrying
its docs/architecture.md §9 exit code (bad names or an existing file without ``--force``:
65).
"""

from __future__ import annotations

import argparse
import json

from replicad import pki
from replicad.cli.common import path_argument


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``pki init`` and ``pki issue`` to the ``replicad`` command."""
    pki_parser = subparsers.add_parser("pki", help="cluster CA and node certificates")
    actions = pki_parser.add_subparsers(dest="pki_action", metavar="ACTION", required=True)

    init = actions.add_parser("init", help="make a cluster CA in DIR")
    init.add_argument("directory", metavar="DIR", type=path_argument)
    init.add_argument("--cluster", required=True, metavar="NAME", help="the cluster name")
    init.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_CA_DAYS,
        help=f"CA validity in days (default {pki.DEFAULT_CA_DAYS})",
    )
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(handler=run_init)

    issue = actions.add_parser("issue", help="make a node key and certificate signed by DIR's CA")
    issue.add_argument("directory", metavar="DIR", type=path_argument)
    issue.add_argument("node", metavar="NODE")
    issue.add_argument(
        "--days",
        type=int,
        default=pki.DEFAULT_NODE_DAYS,
        help=f"certificate validity in days (default {pki.DEFAULT_NODE_DAYS})",
    )
    issue.add_argument("--force", action="store_true", help="replace an existing key/certificate")
    issue.set_defaults(handler=run_issue)


def _emit(args: argparse.Namespace, fields: dict[str, str]) -> None:
    formatter = getattr(args, "format", None) or "table"
    if formatter == "json":
        print(json.dumps(fields))
    elif formatter == "tab":
        print("\t".join(fields))
        print("\t".join(fields.values()))
    else:
        width = max(len(k) for k in fields)
        for key, value in fields.items():
            print(f"{key:<{width}}  {value}")


def run_init(args: argparse.Namespace) -> int:
    files = pki.init_cluster_ca(args.directory, args.cluster, days=args.days, force=args.force)
    _emit(
        args,
        {
            "cluster": files.cluster,
            "ca": str(files.certificate),
            "key": str(files.key),
        },
    )
    return 0


def run_issue(args: argparse.Namespace) -> int:
    files = pki.issue_node_certificate(args.directory, args.node, days=args.days, force=args.force)
    _emit(
        args,
        {
            "node": files.node,
            "cert": str(files.certificate),
            "key": str(files.key),
            "expires": files.not_valid_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    return 0
