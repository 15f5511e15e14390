"""``replicad init`` and ``replicad serve``: create and run a single node."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

from replicad.cli.common import node_config, output_format, path_argument, write_line
from replicad.cli.output import render_document
from replicad.config import DEFAULT_PORT, NodeConfig, parse_config
from replicad.errors import AlreadyExistsError, BadInputError, UsageError

CONFIG_NAME = "replicad.toml"

CONFIG_TEMPLATE = """\
# replicad node configuration, written by `replicad init`.
# Relative paths are relative to this file's directory.

[node]
name = "{name}"
data_dir = "data"
admin_socket = "admin.sock"
map_size = "8GiB"
durability = "local"
log_level = "info"

[listen]
# The node-to-node listener (TLS); peers connect here.
address = "127.0.0.1"
port = {port}

[admin]
max_message_size = "64MiB"

[auth]
# Users and passwords, Dovecot passwd-file format (user:{{SCHEME}}hash);
# edit with `replicad user add|del|passwd`, the node re-reads it by itself.
passwd_file = "users"
# User names are lowercased (Dovecot's auth_username_format %Lu).
username_format = "%Lu"
[lmtp]
# Mail in (RFC 2033). The MTA delivers here; with Postfix:
#   virtual_transport = lmtp:inet:[127.0.0.1]:{lmtp_port}
# host:port and/or an absolute unix socket path, one or a list.
listen = "127.0.0.1:{lmtp_port}"
max_recipients = 100
max_message_size = "63MiB"
timeout = 300

[imap]
# Mail out (RFC 3501/9051): any IMAP client reads and changes mail here.
# Passwords are accepted without TLS only from loopback; for other clients
# set the operator's certificate (STARTTLS on listen, implicit TLS on listen_tls):
# tls_cert = "imap.crt"
# tls_key = "imap.key"
# listen_tls = "0.0.0.0:993"
listen = "127.0.0.1:{imap_port}"

# To join a cluster, add [tls] (see `replicad pki`) and one [[peers]] per node:
# [tls]
# ca = "ca.crt"
# cert = "{name}.crt"
# key = "{name}.key"
# cluster = "example"
#
# [[peers]]
# name = "n2"
# address = "10.0.0.2:{port}"
"""

# Where the commented "how to join a cluster" hint starts in CONFIG_TEMPLATE.
_JOIN_HINT = "# To join a cluster"


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def node_config_text(
    name: str,
    port: int,
    lmtp_port: int,
    imap_port: int,
    *,
    cluster_sections: str | None = None,
    written_by: str = "replicad init",
) -> str:
    """The config text `replicad init` writes for node ``name`` listening on
    ``port`` (node-to-node), ``lmtp_port`` (LMTP) and ``imap_port`` (IMAP),
    both on loopback.

    With ``cluster_sections`` (real ``[tls]`` and ``[[peers]]`` TOML), the
    template's commented hint on joining a cluster is replaced by them, so
    other commands (``replicad cluster up``) lay a node out exactly as
    ``init`` does. ``written_by`` names the command in the header comment.
    The text is not validated here; callers run it through ``parse_config``.
    """
    text = CONFIG_TEMPLATE.format(name=name, port=port, lmtp_port=lmtp_port, imap_port=imap_port)
    text = text.replace("written by `replicad init`", f"written by `{written_by}`", 1)
    if cluster_sections is not None:
        head, found, _hint = text.partition(_JOIN_HINT)
        assert found, "CONFIG_TEMPLATE lost its cluster hint"
        text = head + cluster_sections
    return text


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    init = subparsers.add_parser(
        "init",
        parents=[common],
        help="write DIR/replicad.toml for a single node",
        description="Write DIR/replicad.toml for a single node "
        "(data in DIR/data, admin socket DIR/admin.sock, users in DIR/users). "
        "Never overwrites.",
    )
    init.add_argument("dir", metavar="DIR", type=path_argument)
    init.add_argument("--name", required=True, metavar="NODE", help="node name, e.g. n1")
    init.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="P",
        help=f"node-to-node port (default {DEFAULT_PORT})",
    )
    init.add_argument(
        "--lmtp-port",
        type=int,
        default=None,
        metavar="P",
        help="LMTP port on 127.0.0.1 (default: a free port picked now)",
    )
    init.add_argument(
        "--imap-port",
        type=int,
        default=None,
        metavar="P",
        help="IMAP port on 127.0.0.1 (default: a free port picked now)",
    )
    init.set_defaults(handler=cmd_init)

    serve = subparsers.add_parser(
        "serve",
        parents=[common],
        help="run a node in the foreground",
        description="Run a node in the foreground until SIGTERM/SIGINT.",
    )
    serve.set_defaults(handler=cmd_serve)


def cmd_init(args: argparse.Namespace) -> int:
    directory: Path = args.dir.absolute()
    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is outside 1..65535")
    lmtp_port: int = args.lmtp_port if args.lmtp_port is not None else free_loopback_port()
    if not 1 <= lmtp_port <= 65535:
        raise UsageError(f"--lmtp-port {lmtp_port} is outside 1..65535")
    if lmtp_port == args.port:
        raise UsageError(f"--lmtp-port {lmtp_port} is the node-to-node --port")
    imap_port: int = args.imap_port if args.imap_port is not None else free_loopback_port()
    if imap_port == lmtp_port and args.imap_port is None:
        imap_port = free_loopback_port()
    if not 1 <= imap_port <= 65535:
        raise UsageError(f"--imap-port {imap_port} is outside 1..65535")
    if imap_port in (args.port, lmtp_port):
        raise UsageError(f"--imap-port {imap_port} is the node-to-node or the LMTP port")
    config_path = directory / CONFIG_NAME
    text = node_config_text(args.name, args.port, lmtp_port, imap_port)
    # Validate what we are about to write, so `init` never leaves a config
    # that `serve` would reject (bad node name, socket path too long, ...).
    config = parse_config(text, config_path)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        raise AlreadyExistsError(f"{config_path} already exists; not overwriting it") from None
    except OSError as exc:
        raise BadInputError(f"cannot write {config_path}: {exc.strerror}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    passwd_file = create_passwd_file(config)
    node = config.node
    if output_format(args) == "json":
        write_line(
            render_document(
                {
                    "config": str(config_path),
                    "name": node.name,
                    "data_dir": str(node.data_dir),
                    "admin_socket": str(node.admin_socket),
                    "port": config.listen.port,
                    "passwd_file": str(passwd_file),
                    "lmtp": list(config.lmtp.addresses) if config.lmtp else [],
                    "imap": config.imap.port if config.imap else None,
                }
            )
        )
    else:
        write_line(f"wrote {config_path} for node {node.name}")
        write_line(f"  data dir:     {node.data_dir}")
        write_line(f"  admin socket: {node.admin_socket}")
        write_line(
            f"  listen:       {config.listen.address}:{config.listen.port} "
            "(node-to-node; not opened while the config has no [[peers]])"
        )
        write_line(f"  users:        {passwd_file} (replicad user add USER)")
        if config.lmtp is not None:
            write_line(f"  lmtp:         {', '.join(config.lmtp.addresses)}")
        if config.imap is not None:
            write_line(f"  imap:         127.0.0.1:{config.imap.port}")
        write_line(f"start it with: replicad serve -c {config_path}")
    return 0


def create_passwd_file(config: NodeConfig) -> Path:
    """Create the config's empty passwd-file (0600), keeping one that exists."""
    from replicad.auth.edit import create_empty_passwd_file

    path = config.auth.passwd_file
    assert path is not None, "the config template lost its [auth] passwd_file"
    try:
        create_empty_passwd_file(path)
    except OSError as exc:
        raise BadInputError(f"cannot create {path}: {exc.strerror}") from None
    return path


def cmd_serve(args: argparse.Namespace) -> int:
    config = node_config(args)
    # Imported here: the async runtime and the store are only needed by the node.
    from replicad.node import serve

    serve(config)
    return 0
