"""What every command needs: the config, a connection to the node, output helpers."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from replicad.admin.client import AdminClient
from replicad.cli.output import render_document, render_rows
from replicad.config import NodeConfig, load_config, resolve_config_path


def node_config(args: argparse.Namespace) -> NodeConfig:
    """The node config from ``-c``, ``$REPLICAD_CONFIG`` or the system default."""
    return load_config(resolve_config_path(getattr(args, "config", None)))


def connect(args: argparse.Namespace) -> AdminClient:
    return AdminClient(node_config(args).node.admin_socket).connect()


def output_format(args: argparse.Namespace) -> str:
    fmt: str = getattr(args, "format", None) or "table"
    return fmt


def print_rows(args: argparse.Namespace, rows: list[dict[str, Any]], fields: list[str]) -> None:
    write_line(render_rows(rows, fields, output_format(args)))


def print_json_only(args: argparse.Namespace, document: Any) -> None:
    """Commands with nothing to list print only under ``-f json`` (one document)."""
    if output_format(args) == "json":
        write_line(render_document(document))


def write_line(text: str) -> None:
    sys.stdout.write(text + "\n")


def split_words(text: str) -> list[str]:
    return text.split()
