"""Entry point of the ``replicad`` command (console script ``replicad``).

Global options (docs/architecture.md §9) are accepted before or after the subcommand:
``-c CONFIG`` (else ``$REPLICAD_CONFIG``, else ``/etc/replicad/replicad.toml``)
and ``-f table|json|tab``.  Every failure maps to one exit code here: a
:class:`~replicad.errors.ReplicadError` exits with its ``exit_code`` (64
usage, 65 bad input, 67 no such user (in the store or the passwd-file), 68
no such mailbox, message or other object, 69 unreachable, 75 temporary),
argparse mistakes exit 64 (not argparse's 2), anything unexpected exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from replicad import __version__
from replicad.cli import (
    import_cmd,
    mail_cmds,
    mailbox_cmd,
    migrate_cmd,
    node_cmds,
    replication_cmd,
    resync_cmd,
    user_cmd,
)
from replicad.cli.common import check_arguments
from replicad.cli.output import FORMATS
from replicad.errors import ExitCode, ReplicadError, UsageError

# Subcommands written as separate modules with the one-argument register():
# command name -> module.
EXTERNAL_COMMANDS = {
    "pki": "replicad.cli.pki_cmd",
    "debug": "replicad.cli.debug_cmd",
    "cluster": "replicad.cli.cluster_cmd",
    "top": "replicad.cli.top_cmd",
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors; the contract says 64 (EX_USAGE)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        # main() prefixes "replicad: "; name the subcommand after it.
        where = self.prog.removeprefix("replicad").strip()
        raise UsageError(f"{where}: {message}" if where else message)


def _global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "-c",
        "--config",
        metavar="CONFIG",
        default=default,
        help="node config (default: $REPLICAD_CONFIG, then /etc/replicad/replicad.toml)",
    )
    parser.add_argument(
        "-f",
        "--format",
        choices=FORMATS,
        default=default,
        metavar="FORMATTER",
        help="output format: table (default), json, tab",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="replicad",
        description="replicad: a replicated multi-master mail store.",
    )
    parser.add_argument("--version", action="version", version=f"replicad {__version__}")
    _global_options(parser, default=None)
    # The same options after the subcommand; SUPPRESS keeps a value given
    # before the subcommand from being reset to the default.
    common = _Parser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)

    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    node_cmds.register(subparsers, common)
    mail_cmds.register(subparsers, common)
    mailbox_cmd.register(subparsers, common)
    import_cmd.register(subparsers, common)
    replication_cmd.register(subparsers, common)
    resync_cmd.register(subparsers, common)
    user_cmd.register(subparsers, common)
    migrate_cmd.register(subparsers, common)
    for command, module_name in EXTERNAL_COMMANDS.items():
        _register_external(command, module_name, subparsers)
    return parser


def _register_external(
    command: str,
    module_name: str,
    subparsers: argparse._SubParsersAction,  # type: ignore[type-arg]
) -> None:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the module exists but one of its own imports is missing: a real bug
        # Say so only when the command is used, not on every invocation.
        stub = subparsers.add_parser(command, help=f"(unavailable: {module_name} is missing)")
        stub.add_argument("rest", nargs=argparse.REMAINDER)
        stub.set_defaults(handler=_missing_command(command, module_name))
        return
    register: Callable[[argparse._SubParsersAction], None] = module.register  # type: ignore[type-arg]
    register(subparsers)


def _missing_command(command: str, module_name: str) -> Callable[[argparse.Namespace], int]:
    def handler(_: argparse.Namespace) -> int:
        raise ReplicadError(
            f"the '{command}' command is not available: module {module_name} "
            "is missing from this installation"
        )

    return handler


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        # Before anything is read, written or sent: no argument that is not
        # UTF-8, holds control characters or is absurdly long goes further (65).
        check_arguments(args)
        handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_usage(sys.stderr)
            raise UsageError("replicad: a command is required (see replicad --help)")
        return handler(args)
    except ReplicadError as exc:
        print(f"replicad: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours. Point
        # stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return int(ExitCode.OTHER)


if __name__ == "__main__":
    sys.exit(main())
