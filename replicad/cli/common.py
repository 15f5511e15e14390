"""What every command needs: the config, a connection to the node, output
helpers, and the checks every command-line argument passes before anything
is done with it.

Arguments are checked in two layers, both before a command runs:

* :func:`check_arguments` (called by ``main`` on every parsed command line):
  every text argument, paths included, must be valid UTF-8 (an argument the
  shell passed as bytes that are not UTF-8 arrives as lone surrogates), hold
  no control characters and be at most :data:`MAX_ARGUMENT_BYTES` bytes.
  Exit 65, naming the argument.
* ``type=`` functions for arguments with a meaning: :func:`user_name`,
  :func:`mailbox_name`, :func:`path_argument` (exit 65 with a clear reason).

User names are then normalised with the node config's ``[auth]
username_format`` (:func:`user_of`), as LMTP does, so ``Alice@Example.ORG``
and ``alice@example.org`` are one user.
"""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path, PurePath
from typing import Any

from replicad.admin.client import AdminClient
from replicad.cli.output import render_document, render_rows
from replicad.config import NodeConfig, load_config, resolve_config_path
from replicad.errors import BadInputError
from replicad.usernames import normalise_user

#: The longest text argument taken, in UTF-8 bytes (PATH_MAX; names are shorter).
MAX_ARGUMENT_BYTES = 4096
#: What the store takes (replicad.store.index): user names, mailbox names.
MAX_USER_BYTES = 255
MAX_MAILBOX_BYTES = 1024
#: How much of a bad argument an error message shows.
_SHOWN_CHARS = 60


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


def write_line(text: str, *, flush: bool = False) -> None:
    """``text`` and a newline on stdout; ``flush`` for a command whose output
    should not wait in a buffer for the processes it leaves running."""
    sys.stdout.write(text + "\n")
    if flush:
        sys.stdout.flush()


def split_words(text: str) -> list[str]:
    return text.split()


# --- arguments ------------------------------------------------------------------


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut short: a byte that is not
    UTF-8 as ``\\xNN``, a control character as ``\\xNN`` or ``\\uNNNN``."""
    out = []
    for ch in value[:_SHOWN_CHARS]:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte the shell passed that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF or unicodedata.category(ch) == "Cc":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + ("…'" if len(value) > _SHOWN_CHARS else "'")


def _has_control(value: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in value)


def argument_problem(value: str) -> str | None:
    """Why ``value`` cannot be a command-line argument of replicad, or None."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if size > MAX_ARGUMENT_BYTES:
        return f"is {size} bytes long (at most {MAX_ARGUMENT_BYTES})"
    if _has_control(value):
        return "contains control characters"
    return None


def check_arguments(args: argparse.Namespace) -> None:
    """Every text or path argument of a parsed command line passes
    :func:`argument_problem`; :class:`BadInputError` (65) naming the first that does not."""
    for dest, value in vars(args).items():
        for item in value if isinstance(value, list | tuple) else (value,):
            if isinstance(item, PurePath):
                item = str(item)
            if not isinstance(item, str):
                continue
            problem = argument_problem(item)
            if problem is not None:
                raise BadInputError(f"argument {dest.upper()} {shown(item)} {problem}")


def _text(value: str, what: str) -> str:
    problem = argument_problem(value)
    if problem is not None:
        raise BadInputError(f"{what} {shown(value)} {problem}")
    return value


def user_name(value: str) -> str:
    """``type=`` of ``-u USER``: a user name the store takes (exit 65 otherwise).

    Normalised later, once the config is read (:func:`user_of`)."""
    _text(value, "user name")
    if not value:
        raise BadInputError("a user name must not be empty")
    if len(value.encode("utf-8")) > MAX_USER_BYTES:
        raise BadInputError(f"user name {shown(value)} is longer than {MAX_USER_BYTES} bytes")
    if any(ch.isspace() for ch in value):
        raise BadInputError(f"user name {shown(value)} contains white space")
    return value


def mailbox_name(value: str) -> str:
    """``type=`` of a mailbox name: non-empty UTF-8 without control characters,
    at most :data:`MAX_MAILBOX_BYTES` bytes (exit 65 otherwise)."""
    _text(value, "mailbox name")
    if not value:
        raise BadInputError("a mailbox name must not be empty")
    if len(value.encode("utf-8")) > MAX_MAILBOX_BYTES:
        raise BadInputError(f"mailbox name {shown(value)} is longer than {MAX_MAILBOX_BYTES} bytes")
    return value


def path_argument(value: str) -> Path:
    """``type=`` of a file or directory argument: not empty (which would mean
    the current directory), valid UTF-8, no control characters (exit 65)."""
    _text(value, "path")
    if not value:
        raise BadInputError("an empty path was given")
    return Path(value)


def user_of(args: argparse.Namespace) -> str:
    """``-u USER`` normalised with the node config's ``[auth] username_format``
    (:func:`replicad.auth.normalise_user`, as LMTP does)."""
    user = optional_user_of(args)
    assert user is not None, "user_of() on a command without -u"
    return user


def optional_user_of(args: argparse.Namespace) -> str | None:
    """:func:`user_of` for commands where ``-u`` is optional (None when absent)."""
    given: str | None = getattr(args, "user", None)
    if given is None:
        return None
    normalised = normalise_user(given, node_config(args).auth.username_format)
    if not normalised:
        fmt = node_config(args).auth.username_format
        raise BadInputError(f"user name {shown(given)} is empty under username_format {fmt}")
    return normalised
