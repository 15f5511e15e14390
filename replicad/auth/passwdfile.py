"""Dovecot's passwd-file format: parsed, and edited line by line. Pure.

One user per line, fields separated by ``:``, as Dovecot's passwd-file::

    user:{SCHEME}hash:uid:gid:gecos:home:shell:extra fields

Only the first two fields are needed (``alice:{ARGON2ID}$argon2id$…``);
``uid``, ``gid`` and ``home`` are kept as written (numbers or names), the
gecos and shell fields are ignored, and the extra fields (everything after
the seventh ``:``, split on spaces, e.g. ``userdb_quota_rule=*:storage=1G``)
are kept for the callers that want them.  Blank lines and lines starting
with ``#`` are skipped.

Choices where Dovecot is silent or lenient, made to be clear instead:

* a password field without ``{SCHEME}`` is ``CRYPT`` (Dovecot's default
  scheme for passwd-file): ``$6$``, ``$5$`` and ``$2y$`` hashes verify,
  anything else is an error for the line (see :mod:`replicad.auth.schemes`);
* an empty password field is a user without a password: it exists (mail can
  be delivered to it) but no password ever verifies;
* user names are normalised with the directory's ``username_format`` as
  they are read, so ``Alice`` in the file is ``alice`` under ``%Lu``;
* a line without ``:``, with an invalid user name, an unknown scheme, a hash
  not of its scheme's shape, invalid UTF-8, or a user already defined on an
  earlier line is an error naming the file and the line number; the line is
  skipped and every other user stays usable.  Error messages never quote a
  password field, nor a line that could not be split into fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from replicad.auth.schemes import SchemeError, split_password_field
from replicad.errors import AlreadyExistsError, NoSuchAccountError
from replicad.usernames import normalise_user, user_name_problem


@dataclass(frozen=True, slots=True)
class UserEntry:
    """One user of the passwd-file.

    ``user`` is the normalised name; ``scheme`` the password scheme's name
    (``"ARGON2ID"``, …) or None for a user without a password.  The hash is
    kept out of ``repr`` so an entry can never put it in a log line.
    """

    user: str
    scheme: str | None
    password_hash: str = field(repr=False)
    uid: str | None = None
    gid: str | None = None
    home: str | None = None
    extra: tuple[str, ...] = ()
    #: Line number in the file (1-based), for messages.
    line: int = 0

    @property
    def has_password(self) -> bool:
        return self.scheme is not None


@dataclass(frozen=True, slots=True)
class LineError:
    """A line of the passwd-file that was skipped, and why (never the line itself)."""

    path: Path
    line: int
    reason: str
    user: str | None = None

    def __str__(self) -> str:
        who = f" (user {self.user!r})" if self.user is not None else ""
        return f"{self.path}:{self.line}: {self.reason}{who}; the line is ignored"


@dataclass(frozen=True, slots=True)
class ParsedFile:
    #: Normalised user name -> entry, in file order.
    entries: dict[str, UserEntry]
    errors: tuple[LineError, ...]


def _lines(data: bytes) -> list[bytes]:
    """The lines of ``data`` with their terminators (the last one may have none)."""
    return data.splitlines(keepends=True) if data else []


def _content(line: bytes) -> bytes:
    return line.rstrip(b"\r\n")


def _is_skipped(content: bytes) -> bool:
    stripped = content.strip()
    return not stripped or stripped.startswith(b"#")


def _optional(value: str) -> str | None:
    return value or None


def parse_passwd_file(data: bytes, path: Path, username_format: str = "%Lu") -> ParsedFile:
    """Every valid user of the passwd-file ``data`` (read from ``path``), and the errors."""
    entries: dict[str, UserEntry] = {}
    errors: list[LineError] = []
    for number, raw in enumerate(_lines(data), start=1):
        content = _content(raw)
        if _is_skipped(content):
            continue
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            errors.append(LineError(path, number, "the line is not valid UTF-8"))
            continue
        if ":" not in text:
            errors.append(LineError(path, number, "no ':' after the user name"))
            continue
        fields = text.split(":")
        problem = user_name_problem(fields[0])
        if problem is not None:
            errors.append(LineError(path, number, problem))
            continue
        user = normalise_user(fields[0], username_format)
        if user in entries:
            first = entries[user].line
            errors.append(
                LineError(path, number, f"the user is already defined on line {first}", user)
            )
            continue
        password = fields[1]
        scheme_name: str | None = None
        stored = ""
        if password:
            try:
                scheme, stored = split_password_field(password)
            except SchemeError as exc:
                errors.append(LineError(path, number, str(exc), user))
                continue
            scheme_name = scheme.name
        rest = [*fields[2:], *[""] * 5][:5]  # uid, gid, gecos, home, shell
        extra = ":".join(fields[7:]).split() if len(fields) > 7 else []
        entries[user] = UserEntry(
            user=user,
            scheme=scheme_name,
            password_hash=stored,
            uid=_optional(rest[0]),
            gid=_optional(rest[1]),
            home=_optional(rest[3]),
            extra=tuple(extra),
            line=number,
        )
    return ParsedFile(entries, tuple(errors))


# --- edits: every other line is kept byte for byte ---------------------------------


def _line_user(line: bytes, username_format: str) -> str | None:
    """The normalised user a line defines, or None (comment, blank, no ':', bad name)."""
    content = _content(line)
    if _is_skipped(content) or b":" not in content:
        return None
    try:
        name = content.split(b":", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if user_name_problem(name) is not None:
        return None
    return normalise_user(name, username_format)


def _terminated(lines: list[bytes]) -> list[bytes]:
    if lines and not lines[-1].endswith((b"\n", b"\r")):
        lines[-1] += b"\n"
    return lines


def has_user(data: bytes, user: str, username_format: str = "%Lu") -> bool:
    """Whether a line of ``data`` defines ``user`` (also an otherwise broken line)."""
    return any(_line_user(line, username_format) == user for line in _lines(data))


def add_user(data: bytes, user: str, password_field: str, username_format: str = "%Lu") -> bytes:
    """``data`` with the line ``user:password_field`` appended.

    :class:`AlreadyExistsError` if a line of ``data`` already defines ``user``
    (also a line that is otherwise broken: ``user passwd`` repairs it).
    """
    lines = _lines(data)
    for number, line in enumerate(lines, start=1):
        if _line_user(line, username_format) == user:
            raise AlreadyExistsError(
                f"user {user!r} already exists (line {number}); "
                "use `replicad user passwd` to change the password"
            )
    new = f"{user}:{password_field}\n".encode()
    return b"".join([*_terminated(lines), new])


def set_password(
    data: bytes,
    user: str,
    password_field: str,
    username_format: str = "%Lu",
) -> bytes:
    """``data`` with the password field of ``user``'s first line replaced, the
    other fields of that line kept; :class:`NoSuchAccountError` if no line
    defines ``user``."""
    lines = _lines(data)
    for index, line in enumerate(lines):
        if _line_user(line, username_format) == user:
            content = _content(line)
            ending = line[len(content) :]
            fields = content.split(b":")
            fields[1] = password_field.encode()
            lines[index] = b":".join(fields) + ending
            return b"".join(lines)
    raise NoSuchAccountError(f"no such user {user!r}")


def remove_user(
    data: bytes,
    user: str,
    username_format: str = "%Lu",
) -> bytes:
    """``data`` without any line defining ``user`` (duplicates too);
    :class:`NoSuchAccountError` if none does."""
    lines = _lines(data)
    kept = [line for line in lines if _line_user(line, username_format) != user]
    if len(kept) == len(lines):
        raise NoSuchAccountError(f"no such user {user!r}")
    return b"".join(kept)
