"""``replicad cluster up | down | status``: a local development cluster (docs/architecture.md §9).

Layout of a cluster directory ``DIR`` (each node exactly as ``replicad init``
lays one out, plus its TLS files, so a node directory could be moved to
another machine as it is)::

    DIR/pki/            the cluster CA (cluster ``dev``) and every node's key and cert
    DIR/nK/replicad.toml
    DIR/nK/ca.pem, nK.pem, nK.key (0600)   the node's copies: a node never sees the CA key
    DIR/nK/users        the node's passwd-file (0600, empty: ``replicad user add``)
    DIR/nK/data/        data directory, with the pid lock ``replicad.pid``
    DIR/nK/admin.sock   admin socket
    DIR/nK/replicad.log the node's stdout and stderr, appended across restarts

Contract:

* ``up -n N DIR [--base-port P]`` makes the CA, certificates and configs if
  DIR holds no cluster yet (N in 1..10, default 3; node nK listens on
  127.0.0.1:P+K-1, or on free ports picked by the kernel), then starts every
  stopped node as a detached ``replicad serve`` and waits until each answers
  ``ping`` on its admin socket.  An existing cluster is never regenerated:
  its stopped nodes are restarted with their data.  Exit 65 if every node is
  already running, or N or P contradict the existing configs; exit 69 (with
  the tail of the node's log) if a node does not answer within 30 s, in which
  case the nodes this invocation started are stopped again.
* ``down DIR`` sends SIGTERM to each running node, SIGKILL after 15 s; exit 0
  even if nothing was running, 68 if DIR holds no cluster.
* ``status DIR`` lists each node: state, pid, port, LMTP port, and, where the node
  supports the ``cluster_status`` admin op, root, epoch and peer links; the
  root reads ``electing`` until the first election is decided (epoch 0).
  Exit 68 if DIR holds no cluster.
* ``up --faults`` makes a cluster whose node-to-node links all pass through
  one fault-injecting proxy process (:mod:`replicad.faultproxy`, files in
  ``DIR/proxy/``); ``up`` starts it (before the nodes) whenever it is not
  running, ``down`` stops it, ``status`` shows it as a ``proxy`` row.  The
  fault commands (``partition``, ``heal``, ``delay``, ``faults``, ``kill``,
  ``restart``) are in :mod:`replicad.cli.chaos_cmd`.

Finding a cluster's nodes, telling whether one runs, starting and stopping
them: :mod:`replicad.cli.localcluster`, shared with the fault commands.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from replicad import faultproxy, pki
from replicad.admin.client import AdminClient
from replicad.cli import chaos_cmd
from replicad.cli.common import output_format, path_argument, write_line
from replicad.cli.localcluster import (
    DEFAULT_NODES,
    LOG_NAME,
    STOP_TIMEOUT,
    LocalNode,
    find_nodes,
    node_names,
    require_cluster,
    running_pid,
    start_and_wait,
    stop_processes,
)
from replicad.cli.node_cmds import CONFIG_NAME, create_passwd_file, node_config_text
from replicad.cli.output import FORMATS, render_rows
from replicad.config import NodeConfig, load_config, parse_config
from replicad.errors import (
    BadInputError,
    ReplicadError,
    TemporaryError,
    UnreachableError,
    UsageError,
)

CLUSTER_NAME = "dev"
PKI_DIR = "pki"
MIN_NODES = 1
MAX_NODES = 10
LISTEN_ADDRESS = "127.0.0.1"
# An admin call in `status` must not hang on a wedged node.
STATUS_CALL_TIMEOUT = 3.0

UP_FIELDS = ["node", "state", "pid", "port", "config"]
DOWN_FIELDS = ["node", "pid", "result"]
STATUS_FIELDS = ["node", "state", "pid", "port", "lmtp", "root", "epoch", "peers"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``cluster up``, ``cluster down`` and ``cluster status`` to ``replicad``."""
    # `-f` after the action as well as before `cluster` (the global option);
    # SUPPRESS keeps a value given before the subcommand from being reset.
    fmt = argparse.ArgumentParser(add_help=False)
    fmt.add_argument(
        "-f",
        "--format",
        choices=FORMATS,
        default=argparse.SUPPRESS,
        metavar="FORMATTER",
        help="output format: table (default), json, tab",
    )
    parser = subparsers.add_parser(
        "cluster",
        help="a local development cluster (configs, certs, processes)",
        description="Run a local development cluster: nodes n1..nN in DIR/nK/, "
        "each laid out as `replicad init` does, with a cluster CA in DIR/pki.",
    )
    actions = parser.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)

    up = actions.add_parser(
        "up",
        parents=[fmt],
        help="create (if needed) and start a local cluster",
        description="Create a local cluster in DIR if it holds none (CA, certificates, "
        "configs), then start every stopped node and wait until each answers. "
        "An existing cluster is restarted as it is, data kept.",
    )
    up.add_argument(
        "-n",
        "--nodes",
        type=int,
        default=None,
        metavar="N",
        help=f"number of nodes, {MIN_NODES}..{MAX_NODES} (default {DEFAULT_NODES}, "
        "or the size of the cluster already in DIR)",
    )
    up.add_argument("directory", metavar="DIR", type=path_argument)
    up.add_argument(
        "--base-port",
        type=int,
        default=None,
        metavar="P",
        help="node nK listens on 127.0.0.1:P+K-1 (default: free ports)",
    )
    up.add_argument(
        "--faults",
        action="store_true",
        help="when creating the cluster, route every node-to-node link through a "
        "fault-injecting proxy (see `cluster partition`, `heal`, `delay`)",
    )
    up.set_defaults(handler=cmd_up)

    down = actions.add_parser(
        "down",
        parents=[fmt],
        help="stop every node of a local cluster",
        description=f"SIGTERM every running node of DIR, SIGKILL after {STOP_TIMEOUT:g}s.",
    )
    down.add_argument("directory", metavar="DIR", type=path_argument)
    down.set_defaults(handler=cmd_down)

    status = actions.add_parser(
        "status",
        parents=[fmt],
        help="state of each node of a local cluster",
        description="One row per node: state, pid, port and, when the node reports it, "
        "root, epoch and peer links.",
    )
    status.add_argument("directory", metavar="DIR", type=path_argument)
    status.set_defaults(handler=cmd_status)

    chaos_cmd.register(actions, fmt)


# --- creating a cluster --------------------------------------------------------------


def pick_ports(count: int, base_port: int | None) -> list[int]:
    """``base_port``..``base_port+count-1``, each checked free; else kernel-chosen free ports.

    Kernel-chosen ports are held open together while picking, so they are
    distinct; another program may still take one before the node binds it,
    an accepted risk for a development cluster.
    """
    if base_port is not None:
        ports = [base_port + i for i in range(count)]
        for port in ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                try:
                    probe.bind((LISTEN_ADDRESS, port))
                except OSError as exc:
                    raise BadInputError(
                        f"port {port} on {LISTEN_ADDRESS} is not free ({exc.strerror}); "
                        "choose another --base-port"
                    ) from None
        return ports
    with contextlib.ExitStack() as stack:
        picked: list[int] = []
        for _ in range(count):
            probe = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind((LISTEN_ADDRESS, 0))
            picked.append(probe.getsockname()[1])
        return picked


def _cluster_sections(name: str, peers: Sequence[tuple[str, int]]) -> str:
    lines = [
        "# Mutual TLS with the cluster CA (I9); the files are copies from ../pki.",
        "[tls]",
        'ca = "ca.pem"',
        f'cert = "{name}.pem"',
        f'key = "{name}.key"',
        f'cluster = "{CLUSTER_NAME}"',
    ]
    for peer, port in peers:
        lines += ["", "[[peers]]", f'name = "{peer}"', f'address = "{LISTEN_ADDRESS}:{port}"']
    return "\n".join(lines) + "\n"


def node_text(
    name: str,
    ports: dict[str, int],
    lmtp_ports: dict[str, int],
    peer_ports: dict[str, int] | None = None,
    imap_ports: dict[str, int] | None = None,
) -> str:
    """The config of node ``name`` in a cluster whose nodes listen on ``ports``
    (node-to-node) and ``lmtp_ports`` (LMTP, loopback); with ``peer_ports``
    (``--faults``), the peers are dialled there instead."""
    dial = peer_ports if peer_ports is not None else ports
    peers = [(peer, dial[peer]) for peer in ports if peer != name]
    return node_config_text(
        name,
        ports[name],
        lmtp_ports[name],
        (imap_ports or {}).get(name, lmtp_ports[name] + 1),
        cluster_sections=_cluster_sections(name, peers),
        written_by="replicad cluster up",
    )


def create_cluster(
    directory: Path, count: int, base_port: int | None, *, faults: bool = False
) -> list[LocalNode]:
    """Write the CA, certificates and configs of a new ``count``-node cluster in ``directory``.

    Every config is validated before anything is written (a socket path too
    long for a unix socket fails here, not at start-up), and anything this
    call created is removed again if it fails half-way, so a failed ``up``
    never leaves a directory that later looks like a cluster.  With ``faults``,
    the peers' addresses are the fault proxy's ports (:mod:`replicad.faultproxy`).
    """
    names = node_names(count)
    reserved = [directory / PKI_DIR, directory / faultproxy.PROXY_DIR]
    leftovers = [p for p in [*reserved, *(directory / n for n in names)] if p.exists()]
    if leftovers:
        raise BadInputError(
            f"{', '.join(map(str, leftovers))} already exist(s) but {directory} holds no "
            "cluster config (an interrupted `cluster up`?); remove them or use another DIR"
        )
    ports = dict(zip(names, pick_ports(count, base_port), strict=True))
    # LMTP on free loopback ports, picked together with room to skip the node ports.
    lmtp_free = [p for p in pick_ports(3 * count, None) if p not in ports.values()]
    lmtp_ports = dict(zip(names, lmtp_free[:count], strict=True))
    imap_ports = dict(zip(names, lmtp_free[count : 2 * count], strict=True))
    routes: list[faultproxy.Route] = []
    if faults:
        faultproxy.check_socket_path(directory)
        # count*count ports held open together are distinct, and at most
        # `count` of them can be node ports: enough remain for every route.
        taken = {*ports.values(), *lmtp_ports.values(), *imap_ports.values()}
        spare = [p for p in pick_ports(count * count + count, None) if p not in taken]
        routes = faultproxy.plan_routes(ports, spare[: faultproxy.route_count(count)])
    texts = {
        name: node_text(
            name,
            ports,
            lmtp_ports,
            faultproxy.peer_ports(routes, name) if faults else None,
            imap_ports,
        )
        for name in names
    }
    parsed = {
        name: parse_config(text, directory / name / CONFIG_NAME) for name, text in texts.items()
    }

    created: list[Path] = []
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        pki_dir = directory / PKI_DIR
        created.append(pki_dir)
        ca = pki.init_cluster_ca(pki_dir, CLUSTER_NAME)
        ca_pem = ca.certificate.read_bytes()
        write = pki.write_file_atomically
        for name in names:
            issued = pki.issue_node_certificate(pki_dir, name)
            node_dir = directory / name
            created.append(node_dir)
            node_dir.mkdir(mode=0o750)
            # Copies, as on a real machine: the node's directory holds what the
            # node needs and nothing more (never the CA key).
            cert_pem, key_pem = issued.certificate.read_bytes(), issued.key.read_bytes()
            write(node_dir / "ca.pem", ca_pem, mode=0o600, force=False)
            write(node_dir / f"{name}.pem", cert_pem, mode=0o600, force=False)
            write(node_dir / f"{name}.key", key_pem, mode=0o600, force=False)
        if faults:
            created.append(directory / faultproxy.PROXY_DIR)
            faultproxy.write_routes(directory, routes)
        for name in names:
            create_passwd_file(parsed[name])  # empty: `replicad user add` fills it
        # Configs last: their presence is what makes the directory a cluster.
        for name in names:
            write(directory / name / CONFIG_NAME, texts[name].encode(), mode=0o640, force=False)
        nodes = [
            LocalNode(name, directory / name, load_config(directory / name / CONFIG_NAME))
            for name in names
        ]
        for node in nodes:
            _check_tls(node.config)
    except BaseException:
        for path in reversed(created):
            shutil.rmtree(path, ignore_errors=True)
        raise
    return nodes


def _check_tls(config: NodeConfig) -> None:
    # Imported here: only `up` needs ssl, and only for this check.
    from replicad.transport.tls import load_tls_contexts

    tls = config.tls
    assert tls is not None  # every config written by create_cluster has [tls]
    load_tls_contexts(tls.ca, tls.cert, tls.key, node=config.name, cluster=tls.cluster)


# --- the commands ------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """Create (if needed) and start the cluster in DIR; see the module docstring."""
    directory: Path = args.directory.absolute()
    count: int | None = args.nodes
    base_port: int | None = args.base_port
    if count is not None and not MIN_NODES <= count <= MAX_NODES:
        raise UsageError(f"cluster up: -n {count} is outside {MIN_NODES}..{MAX_NODES}")
    last_port = (base_port or 0) + (count or DEFAULT_NODES) - 1
    if base_port is not None and not (base_port >= 1 and last_port <= 65535):
        raise UsageError(f"cluster up: --base-port {base_port} leaves no room for the nodes")
    if directory.exists() and not directory.is_dir():
        raise BadInputError(f"{directory} exists and is not a directory")

    nodes = find_nodes(directory)
    if nodes:
        _check_same_cluster(directory, nodes, count, base_port)
        if args.faults and not faultproxy.is_proxied(directory):
            raise BadInputError(
                f"the cluster in {directory} was made without --faults (its peers' addresses "
                "are fixed in the configs); use another DIR for a --faults cluster"
            )
    else:
        nodes = create_cluster(directory, count or DEFAULT_NODES, base_port, faults=args.faults)

    # A --faults cluster's links all pass through its proxy: it must run
    # whenever nodes do, and it starts first so that they link at once.
    proxied = faultproxy.is_proxied(directory)
    proxy_pid = faultproxy.running_pid(directory) if proxied else None
    running = {node.name: running_pid(node) for node in nodes}
    to_start = [node for node in nodes if running[node.name] is None]
    if not to_start and (proxy_pid is not None or not proxied):
        raise BadInputError(
            f"the cluster in {directory} is already running "
            f"(stop it with `replicad cluster down {directory}`)"
        )
    proxy_started = faultproxy.start_proxy(directory) if proxied and proxy_pid is None else None
    try:
        started = start_and_wait(to_start)
    except BaseException:
        if proxy_started is not None:
            faultproxy.stop_proxy(directory)
        raise

    rows: list[dict[str, Any]] = []
    for node in nodes:
        proc = started.get(node.name)
        rows.append(
            {
                "node": node.name,
                "state": "started" if proc is not None else "running",
                "pid": proc.pid if proc is not None else running[node.name],
                "port": node.port,
                "config": str(node.config_path),
            }
        )
    if proxied:
        rows.append(
            {
                "node": "proxy",
                "state": "running" if proxy_started is None else "started",
                "pid": proxy_pid if proxy_started is None else proxy_started,
                "port": None,
                "config": str(faultproxy.proxy_dir(directory)),
            }
        )
    fmt = output_format(args)
    lines = [render_rows(rows, UP_FIELDS, fmt)]
    if fmt == "table":
        lines += [
            f"logs: {directory}/nK/{LOG_NAME}; stop with: replicad cluster down {directory}",
            f"try: replicad -c {nodes[0].config_path} save -u alice < msg",
        ]
        if proxied:
            lines.append(
                f"faults: replicad cluster partition {directory} n1  (isolates n1; then heal)"
            )
    write_line("\n".join(lines), flush=True)
    return 0


def _check_same_cluster(
    directory: Path, nodes: Sequence[LocalNode], count: int | None, base_port: int | None
) -> None:
    # An existing cluster is restarted as it is: a different -n or port would
    # mean regenerating configs and certificates, which `up` never does.
    if count is not None and count != len(nodes):
        raise BadInputError(
            f"{directory} holds a {len(nodes)}-node cluster, not {count} nodes; "
            f"use -n {len(nodes)}, or another DIR"
        )
    if base_port is not None and nodes[0].port != base_port:
        raise BadInputError(
            f"the cluster in {directory} listens from port {nodes[0].port}, "
            f"not --base-port {base_port}; omit --base-port to restart it"
        )


def cmd_down(args: argparse.Namespace) -> int:
    """Stop every running node of the cluster in DIR; exit 68 if DIR holds none."""
    directory: Path = args.directory.absolute()
    nodes = require_cluster(directory)
    targets = [(node, pid) for node in nodes if (pid := running_pid(node)) is not None]
    pids = {node.name: pid for node, pid in targets}
    outcome = stop_processes(targets)
    rows = [
        {
            "node": node.name,
            "pid": pids.get(node.name),
            "result": outcome.get(node.name, "not running"),
        }
        for node in nodes
    ]
    if faultproxy.is_proxied(directory):
        # After the nodes, which may still talk to each other while stopping.
        proxy_pid, result = faultproxy.stop_proxy(directory)
        rows.append({"node": "proxy", "pid": proxy_pid, "result": result})
    fmt = output_format(args)
    write_line(render_rows(_dashes(rows, fmt), DOWN_FIELDS, fmt), flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """One row per node of the cluster in DIR; exit 68 if DIR holds none."""
    directory: Path = args.directory.absolute()
    fmt = output_format(args)
    rows = [status_row(node, fmt) for node in require_cluster(directory)]
    if faultproxy.is_proxied(directory):
        proxy_pid = faultproxy.running_pid(directory)
        state = "stopped" if proxy_pid is None else "running"
        unknown = dict.fromkeys(["port", "lmtp", "root", "epoch", "peers"])
        rows.append({"node": "proxy", "state": state, "pid": proxy_pid, **unknown})
    write_line(render_rows(_dashes(rows, fmt), STATUS_FIELDS, fmt), flush=True)
    return 0


def status_row(node: LocalNode, fmt: str) -> dict[str, Any]:
    """The status of one node; ``root``/``epoch``/``peers`` None where unknown."""
    row: dict[str, Any] = {
        "node": node.name,
        "state": "stopped",
        "pid": running_pid(node),
        "port": node.port,
        "lmtp": _lmtp_address(node.config),
        "root": None,
        "epoch": None,
        "peers": None,
    }
    if row["pid"] is None:
        return row
    row["state"] = "running"
    try:
        with AdminClient(node.config.node.admin_socket, timeout=STATUS_CALL_TIMEOUT) as client:
            answer = client.call("cluster_status")
    except (UnreachableError, TemporaryError):
        # The process lives but its admin socket does not answer (starting, or wedged).
        row["state"] = "not answering"
        return row
    except ReplicadError:
        return row  # it answered, with an error: a node without the cluster_status op
    if isinstance(answer, dict):
        root = answer.get("root")
        epoch = answer.get("epoch")
        row["root"] = root if isinstance(root, str) else None
        row["epoch"] = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
        peers = answer.get("peers")
        if isinstance(peers, list):
            clean = [p for p in peers if isinstance(p, dict)]
            row["peers"] = clean if fmt == "json" else _peers_text(clean)
            if row["root"] is None and clean and fmt != "json":
                # A cluster member before its first election is decided (right
                # after `up`): no root yet, epoch 0. JSON keeps null.
                row["root"] = "electing"
    return row


def _lmtp_address(config: NodeConfig) -> int | str | None:
    """The node's LMTP port; its socket path when it listens on unix sockets only."""
    lmtp = config.lmtp
    if lmtp is None:
        return None
    if lmtp.port is not None:
        return lmtp.port
    return str(lmtp.unix[0]) if lmtp.unix else None


def _peers_text(peers: Sequence[dict[str, Any]]) -> str:
    """``n2:up n3:down,via=n2,outbox=12``: one word per peer for table and tab output."""
    words = []
    for peer in peers:
        word = f"{peer.get('name', '?')}:{peer.get('link', '?')}"
        via = peer.get("via")
        if via is not None and via != peer.get("name"):
            word += f",via={via}"
        if peer.get("reachable") is False:
            word += ",unreachable"
        outbox = peer.get("outbox")
        if isinstance(outbox, int) and outbox:
            word += f",outbox={outbox}"
        words.append(word)
    return " ".join(words) if words else "(none)"


def _dashes(rows: list[dict[str, Any]], fmt: str) -> list[dict[str, Any]]:
    # JSON keeps null for "unknown"; the text formats show "-", never an empty cell.
    if fmt == "json":
        return rows
    return [{k: "-" if v is None else v for k, v in row.items()} for row in rows]
