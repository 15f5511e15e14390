"""``replicad user add|del|list|passwd`` and ``replicad pw``: users and passwords.

The ``user`` commands edit the passwd-file named by the node config's
``[auth] passwd_file`` directly, like ``htpasswd`` (not through the admin
socket: the file is the source of truth and a running node re-reads it by
itself).  Edits are locked and atomic (:mod:`replicad.auth.edit`).  User
names are normalised with ``[auth] username_format`` and validated (exit 65).

* ``user add USER [--password-stdin]``: a new user with an ``{ARGON2ID}``
  hash; 65 if the user exists.  Without ``--password-stdin`` the password is
  asked twice on the terminal; with no terminal, exit 64.
* ``user del USER``: 67 if there is no such user.
* ``user list``: one row per user (``-f json``: ``[{"user": …}, …]``);
  never a hash.  Malformed lines are reported on stderr with their number.
* ``user passwd USER --password-stdin``: a new password; 67 if no such user.
* ``pw [-s SCHEME]``: print ``{SCHEME}hash`` of a password read from stdin
  (asked twice on a terminal), like ``doveadm pw``; ARGON2ID by default.

``--password-stdin`` reads all of stdin and drops one final line break.  A
password must be non-empty, at most :data:`MAX_PASSWORD_BYTES` bytes of
UTF-8, without NUL or line breaks (no login command could carry them).
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Iterator
from pathlib import Path

from replicad.cli.common import node_config, print_json_only, print_rows, write_line
from replicad.config import NodeConfig
from replicad.errors import (
    AlreadyExistsError,
    BadInputError,
    ConfigError,
    NoSuchAccountError,
    NotFoundError,
    UsageError,
)
from replicad.usernames import normalise_user, validate_user_name

MAX_PASSWORD_BYTES = 4096


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    user = subparsers.add_parser(
        "user",
        parents=[common],
        help="add, delete, list users; change a password ([auth] passwd_file)",
        description="Edit the passwd-file named by [auth] passwd_file in the node config "
        "(Dovecot format). A running node picks changes up by itself.",
    )
    actions = user.add_subparsers(dest="user_action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add",
        parents=[common],
        help="add a user",
        description="Add USER with a new ARGON2ID password hash.",
    )
    add.add_argument("user", metavar="USER")
    _password_stdin(add)
    add.set_defaults(handler=cmd_add)

    delete = actions.add_parser("del", parents=[common], help="delete a user")
    delete.add_argument("user", metavar="USER")
    delete.set_defaults(handler=cmd_del)

    listing = actions.add_parser("list", parents=[common], help="list the users")
    listing.set_defaults(handler=cmd_list)

    passwd = actions.add_parser(
        "passwd",
        parents=[common],
        help="set a user's password",
        description="Give USER a new ARGON2ID password hash; the line's other fields are kept.",
    )
    passwd.add_argument("user", metavar="USER")
    _password_stdin(passwd)
    passwd.set_defaults(handler=cmd_passwd)

    pw = subparsers.add_parser(
        "pw",
        parents=[common],
        help="hash a password read from stdin (like doveadm pw)",
        description="Read a password from stdin (asked twice on a terminal) and print "
        "{SCHEME}hash for a passwd-file.",
    )
    pw.add_argument(
        "-s",
        "--scheme",
        default=None,
        metavar="SCHEME",
        help="ARGON2ID (default), ARGON2I, BLF-CRYPT, SHA512-CRYPT, SHA256-CRYPT, PLAIN",
    )
    pw.set_defaults(handler=cmd_pw)


def _password_stdin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin instead of asking on the terminal",
    )


# --- inputs -----------------------------------------------------------------------


def check_password(password: bytes) -> bytes:
    if not password:
        raise BadInputError("the password is empty")
    if len(password) > MAX_PASSWORD_BYTES:
        raise BadInputError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    if any(c in password for c in b"\0\r\n"):
        raise BadInputError("the password must not contain NUL or line breaks")
    try:
        password.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInputError("the password is not valid UTF-8") from None
    return password


def password_from_stdin() -> bytes:
    data = sys.stdin.buffer.read(MAX_PASSWORD_BYTES + 3)
    if data.endswith(b"\n"):
        data = data[:-1]
        if data.endswith(b"\r"):
            data = data[:-1]
    return check_password(data)


def password_from_terminal() -> bytes:
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Retype password: ")
    if first != second:
        raise BadInputError("the passwords do not match")
    try:
        return check_password(first.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadInputError("the password is not valid UTF-8") from None


def read_password(args: argparse.Namespace) -> bytes:
    if args.password_stdin:
        return password_from_stdin()
    if not sys.stdin.isatty():
        raise UsageError(
            "no terminal to ask for the password on: give it on stdin with --password-stdin"
        )
    return password_from_terminal()


def passwd_settings(args: argparse.Namespace) -> tuple[Path, str]:
    """The passwd-file and the user name format of the node config."""
    config: NodeConfig = node_config(args)
    if config.auth.passwd_file is None:
        raise ConfigError(
            f"{config.path} has no auth.passwd_file: add an [auth] section with "
            'passwd_file = "users" (a file next to the config)'
        )
    return config.auth.passwd_file, config.auth.username_format


def user_argument(name: str, username_format: str) -> str:
    """The normalised, validated user name given on the command line (65 if invalid)."""
    validate_user_name(name)
    return validate_user_name(normalise_user(name, username_format))


# --- commands ---------------------------------------------------------------------


def _exists(path: Path, user: str, fmt: str) -> bool:
    from replicad.auth.edit import read_passwd_bytes
    from replicad.auth.passwdfile import has_user

    return has_user(read_passwd_bytes(path) or b"", user, fmt)


@contextlib.contextmanager
def _in_file(path: Path) -> Iterator[None]:
    """Name the passwd-file in a "no such user" error."""
    try:
        yield
    except NoSuchAccountError as exc:
        raise NoSuchAccountError(f"{exc} in {path}") from None


def _done(args: argparse.Namespace, user: str, path: Path) -> int:
    print_json_only(args, {"user": user, "passwd_file": str(path)})
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from replicad.auth.edit import edit_passwd_file
    from replicad.auth.passwdfile import add_user
    from replicad.auth.schemes import make_password_field

    path, fmt = passwd_settings(args)
    user = user_argument(args.user, fmt)
    if _exists(path, user, fmt):  # said before asking for a password; checked again below
        raise AlreadyExistsError(
            f"user {user!r} already exists in {path}; "
            "use `replicad user passwd` to change the password"
        )
    password = read_password(args)
    field = make_password_field(password)
    edit_passwd_file(path, lambda data: add_user(data, user, field, fmt))
    return _done(args, user, path)


def cmd_passwd(args: argparse.Namespace) -> int:
    from replicad.auth.edit import edit_passwd_file
    from replicad.auth.passwdfile import set_password
    from replicad.auth.schemes import make_password_field

    path, fmt = passwd_settings(args)
    user = user_argument(args.user, fmt)
    if not _exists(path, user, fmt):  # said before asking for a password; checked again below
        raise NoSuchAccountError(f"no such user {user!r} in {path}")
    password = read_password(args)
    field = make_password_field(password)
    with _in_file(path):
        edit_passwd_file(path, lambda data: set_password(data, user, field, fmt))
    return _done(args, user, path)


def cmd_del(args: argparse.Namespace) -> int:
    from replicad.auth.edit import edit_passwd_file
    from replicad.auth.passwdfile import remove_user

    path, fmt = passwd_settings(args)
    user = user_argument(args.user, fmt)
    with _in_file(path):
        edit_passwd_file(path, lambda data: remove_user(data, user, fmt))
    return _done(args, user, path)


def cmd_list(args: argparse.Namespace) -> int:
    from replicad.auth.edit import read_passwd_bytes
    from replicad.auth.passwdfile import parse_passwd_file

    path, fmt = passwd_settings(args)
    data = read_passwd_bytes(path)
    if data is None:
        raise NotFoundError(f"the passwd-file {path} does not exist (auth.passwd_file)")
    parsed = parse_passwd_file(data, path, fmt)
    for error in parsed.errors:
        print(f"replicad: warning: {error}", file=sys.stderr)
    print_rows(args, [{"user": user} for user in parsed.entries], ["user"])
    return 0


def cmd_pw(args: argparse.Namespace) -> int:
    from replicad.auth.schemes import (
        DEFAULT_SCHEME,
        MAKEABLE,
        SchemeError,
        make_password_field,
        scheme_named,
    )

    # Checked before a password is asked for.
    try:
        scheme = scheme_named(args.scheme or DEFAULT_SCHEME)
    except SchemeError as exc:
        raise UsageError(f"pw -s: {exc}") from None
    if not scheme.can_make:
        raise UsageError(
            f"pw -s: {scheme.name} can only verify existing hashes; "
            f"choose one of {', '.join(MAKEABLE)}"
        )
    if sys.stdin.isatty():
        password = password_from_terminal()
    else:
        password = password_from_stdin()
    write_line(make_password_field(password, scheme.name))
    return 0
