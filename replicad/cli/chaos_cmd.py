"""Faults on a local cluster: ``replicad cluster partition|heal|delay|faults|kill|restart``.

Registered under ``replicad cluster`` by :func:`replicad.cli.cluster_cmd.register`.

* ``partition DIR GROUP...``: each GROUP is nodes joined by commas
  (``n1,n2``), groups separated by spaces.  Links between nodes of different
  groups are cut at once and stay cut; nodes named in no group form one more
  group together (``partition DIR n1`` isolates n1 from all the others).
  A partition replaces the previous one.
* ``heal DIR``: every link allowed again (the delay stays).
* ``delay DIR MS``: each direction of every link holds data MS ms (0 removes it).
* ``faults DIR``: the proxy's current partition, delay and connection count.
* ``kill DIR NODE``: SIGKILL the node's process and wait until it is gone.
* ``restart DIR NODE``: stop the node if it runs (SIGTERM, then SIGKILL),
  start it with the same config and wait until its admin socket answers.

partition, heal, delay and faults need a cluster made with ``cluster up
--faults`` (exit 64 otherwise) whose proxy runs (exit 69 otherwise); a
node name the cluster does not have is exit 64; a directory without a
cluster is exit 68; ``kill`` of a node that is not running is exit 65.
Each prints one row (``-f json``: an array of one object).
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from typing import Any

from replicad import faultproxy
from replicad.cli import localcluster
from replicad.cli.common import output_format, path_argument, write_line
from replicad.cli.localcluster import LocalNode
from replicad.cli.output import render_rows
from replicad.errors import BadInputError, ReplicadError, UsageError

FAULT_FIELDS = ["proxy", "partition", "delay_ms", "cut", "connections"]
KILL_FIELDS = ["node", "pid", "result"]
RESTART_FIELDS = ["node", "state", "pid", "port"]


def register(
    actions: argparse._SubParsersAction,  # type: ignore[type-arg]
    fmt: argparse.ArgumentParser,
) -> None:
    """Add the fault commands to ``replicad cluster``'s ``actions``."""
    partition = actions.add_parser(
        "partition",
        parents=[fmt],
        help="cut the links between groups of nodes (--faults clusters)",
        description="Cut every link between nodes of different groups, at once and until "
        "`cluster heal`. A group is node names joined by commas; groups are separated by "
        "spaces. Nodes named in no group form one more group together, so "
        "`partition DIR n1` isolates n1. Replaces any previous partition.",
    )
    partition.add_argument("directory", metavar="DIR", type=path_argument)
    partition.add_argument("groups", metavar="GROUP", nargs="+", help="e.g. n1,n2")
    partition.set_defaults(handler=cmd_partition)

    heal = actions.add_parser(
        "heal",
        parents=[fmt],
        help="allow every link again (--faults clusters)",
        description="Remove the partition: every link is allowed again and the nodes "
        "re-dial as soon as a reachability probe gets through. The delay, if any, stays.",
    )
    heal.add_argument("directory", metavar="DIR", type=path_argument)
    heal.set_defaults(handler=cmd_heal)

    delay = actions.add_parser(
        "delay",
        parents=[fmt],
        help="delay every link by MS milliseconds each way (--faults clusters)",
        description="Hold the data of each direction of every link MS milliseconds before "
        "forwarding it, in order (the round trip grows by 2 x MS). 0 removes the delay.",
    )
    delay.add_argument("directory", metavar="DIR", type=path_argument)
    delay.add_argument("ms", metavar="MS", type=int)
    delay.set_defaults(handler=cmd_delay)

    faults = actions.add_parser(
        "faults",
        parents=[fmt],
        help="the fault proxy's partition, delay and connections (--faults clusters)",
        description="Show the fault proxy's pid, partition, delay and live connections.",
    )
    faults.add_argument("directory", metavar="DIR", type=path_argument)
    faults.set_defaults(handler=cmd_faults)

    kill = actions.add_parser(
        "kill",
        parents=[fmt],
        help="SIGKILL one node and wait until it is gone",
        description="Send SIGKILL to NODE's process (kill -9: no shutdown at all) and wait "
        "until it is gone. `cluster restart` or `cluster up` starts it again.",
    )
    kill.add_argument("directory", metavar="DIR", type=path_argument)
    kill.add_argument("node", metavar="NODE")
    kill.set_defaults(handler=cmd_kill)

    restart = actions.add_parser(
        "restart",
        parents=[fmt],
        help="(re)start one node and wait until it answers",
        description="Stop NODE if it runs (SIGTERM, SIGKILL after "
        f"{localcluster.STOP_TIMEOUT:g}s), start it with the same config and data, and wait "
        "until it answers on its admin socket.",
    )
    restart.add_argument("directory", metavar="DIR", type=path_argument)
    restart.add_argument("node", metavar="NODE")
    restart.set_defaults(handler=cmd_restart)


# --- partition, heal, delay, faults --------------------------------------------------------


def _proxied_cluster(args: argparse.Namespace) -> tuple[Path, list[LocalNode]]:
    """DIR's nodes, if DIR holds a cluster made with --faults (68 / 64 otherwise)."""
    directory: Path = args.directory.absolute()
    nodes = localcluster.require_cluster(directory)
    if not faultproxy.is_proxied(directory):
        raise UsageError(
            f"cluster {args.cluster_action}: the cluster in {directory} was not made with "
            "--faults, so its links do not pass through a fault proxy; make one with "
            "`replicad cluster up --faults -n N NEWDIR`"
        )
    return directory, nodes


def _fault_row(answer: dict[str, Any], fmt: str) -> dict[str, Any]:
    groups = answer.get("groups") or []
    return {
        "proxy": answer.get("pid"),
        # JSON keeps the groups as lists; the text formats show `n1 | n2,n3`.
        "partition": groups
        if fmt == "json"
        else faultproxy.describe_groups([frozenset(g) for g in groups]),
        "delay_ms": answer.get("delay_ms"),
        "cut": answer.get("cut"),
        "connections": answer.get("connections"),
    }


def _control(args: argparse.Namespace, request: dict[str, Any]) -> int:
    fmt = output_format(args)
    answer = faultproxy.control(args.directory.absolute(), request)
    write_line(render_rows([_fault_row(answer, fmt)], FAULT_FIELDS, fmt), flush=True)
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    _directory, nodes = _proxied_cluster(args)
    try:
        groups = faultproxy.parse_groups(args.groups, [n.name for n in nodes])
    except UsageError as exc:
        raise UsageError(f"cluster partition: {exc}") from None
    wire = [sorted(g, key=faultproxy.node_order) for g in groups]
    return _control(args, {"op": "partition", "groups": wire})


def cmd_heal(args: argparse.Namespace) -> int:
    _proxied_cluster(args)
    return _control(args, {"op": "heal"})


def cmd_delay(args: argparse.Namespace) -> int:
    _proxied_cluster(args)
    try:
        ms = faultproxy.check_delay(args.ms)
    except UsageError as exc:
        raise UsageError(f"cluster delay: {exc}") from None
    return _control(args, {"op": "delay", "ms": ms})


def cmd_faults(args: argparse.Namespace) -> int:
    _proxied_cluster(args)
    return _control(args, {"op": "state"})


# --- kill, restart ---------------------------------------------------------------------------


def _node(args: argparse.Namespace) -> LocalNode:
    directory: Path = args.directory.absolute()
    nodes = localcluster.require_cluster(directory)
    for node in nodes:
        if node.name == args.node:
            return node
    raise UsageError(
        f"cluster {args.cluster_action}: unknown node {args.node!r}; the cluster in "
        f"{directory} has {', '.join(n.name for n in nodes)}"
    )


def cmd_kill(args: argparse.Namespace) -> int:
    """SIGKILL the node and wait until the kernel has removed it."""
    node = _node(args)
    pid = localcluster.running_pid(node)
    if pid is None or not localcluster.signal_node(pid, node, signal.SIGKILL):
        raise BadInputError(
            f"node {node.name} of {args.directory.absolute()} is not running; nothing to kill"
        )
    if not _wait_gone(node, pid, localcluster.KILL_TIMEOUT):
        raise ReplicadError(
            f"node {node.name} (pid {pid}) is still running {localcluster.KILL_TIMEOUT:g}s "
            "after SIGKILL (stuck in the kernel?)"
        )
    fmt = output_format(args)
    row = {"node": node.name, "pid": pid, "result": "killed"}
    write_line(render_rows([row], KILL_FIELDS, fmt), flush=True)
    return 0


def _wait_gone(node: LocalNode, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while localcluster.is_node_process(pid, node.config_path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(localcluster.POLL_INTERVAL)
    return True


def cmd_restart(args: argparse.Namespace) -> int:
    """Stop the node if it runs, start it, wait until it answers (exit 69 if it does not)."""
    node = _node(args)
    pid = localcluster.running_pid(node)
    if pid is not None:
        outcome = localcluster.stop_processes([(node, pid)])[node.name]
        if outcome.startswith("still running"):
            raise ReplicadError(f"node {node.name}: {outcome}; not restarted")
    started = localcluster.start_and_wait([node])[node.name]
    fmt = output_format(args)
    row = {
        "node": node.name,
        "state": "started" if pid is None else "restarted",
        "pid": started.pid,
        "port": node.port,
    }
    write_line(render_rows([row], RESTART_FIELDS, fmt), flush=True)
    return 0
