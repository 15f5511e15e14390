"""The ``--users FILE`` and ``--password-file`` formats (pure).

Users file (docs/architecture.md §12): one user a line,
``SOURCE_USER [TARGET_USER]`` (the target defaults to the source name),
blank lines and ``#`` comments ignored.  A target user named twice is an
error: two sources would write one mailbox set.

Password file: with ``--master-user``, its first line is the master
user's password.  Otherwise either one line, the password of the single
``-u USER``, or lines ``SOURCE_USER PASSWORD`` (the password is the rest of
the line after the first run of blanks, so it may hold spaces).  Trailing
CR/LF are not part of a password.
"""

from __future__ import annotations

from dataclasses import dataclass

from replicad.errors import BadInputError
from replicad.usernames import normalise_user, validate_user_name

MAX_USERS = 1_000_000


@dataclass(frozen=True, slots=True)
class UserPair:
    source: str
    target: str


def parse_users(text: str) -> list[UserPair]:
    """The pairs of a users file; BadInputError naming the line on a mistake."""
    pairs: list[UserPair] = []
    targets: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if len(words) > 2:
            raise BadInputError(f"users file line {number}: expected SOURCE_USER [TARGET_USER]")
        source = words[0]
        target = validate_user_name(normalise_user(words[1] if len(words) == 2 else words[0]))
        if target in targets:
            first = targets[target]
            raise BadInputError(
                f"users file line {number}: target user {target!r} already on line {first}"
            )
        targets[target] = number
        pairs.append(UserPair(source, target))
        if len(pairs) > MAX_USERS:
            raise BadInputError(f"users file: more than {MAX_USERS} users")
    if not pairs:
        raise BadInputError("users file names no user")
    return pairs


def parse_passwords(text: str, sources: list[str], *, master: bool) -> dict[str, str]:
    """Source user (or ``""`` for the master user) -> password."""
    lines = [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]
    if not lines:
        raise BadInputError("password file is empty")
    if master:
        return {"": lines[0]}
    if len(sources) == 1 and len(lines) == 1 and len(lines[0].split(None, 1)) == 1:
        return {sources[0]: lines[0]}
    passwords: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        words = line.split(None, 1)
        if len(words) != 2:
            raise BadInputError(f"password file line {number}: expected SOURCE_USER PASSWORD")
        passwords[words[0]] = words[1]
    missing = [s for s in sources if s not in passwords]
    if missing:
        raise BadInputError(f"password file has no password for {missing[0]!r}")
    return passwords


@dataclass(frozen=True, slots=True)
class SourceAddress:
    host: str
    port: int
    tls: bool


def parse_source(url: str) -> SourceAddress:
    """``imap://HOST[:PORT]`` (plain, port 143) or ``imaps://HOST[:PORT]``
    (implicit TLS, RFC 8314, port 993); ``[v6]`` hosts in brackets."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("imap", "imaps"):
        raise BadInputError(f"source {url!r}: expected imap://HOST[:PORT] or imaps://HOST[:PORT]")
    tls = scheme.lower() == "imaps"
    rest = rest.rstrip("/")
    if not rest or "/" in rest or "@" in rest:
        raise BadInputError(f"source {url!r}: expected a host and an optional port only")
    host, port_text = rest, ""
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise BadInputError(f"source {url!r}: unterminated [")
        host, tail = rest[1:end], rest[end + 1 :]
        if tail:
            if not tail.startswith(":"):
                raise BadInputError(f"source {url!r}: bad port")
            port_text = tail[1:]
    elif ":" in rest:
        host, port_text = rest.rsplit(":", 1)
    if not host:
        raise BadInputError(f"source {url!r}: no host")
    port = 993 if tls else 143
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise BadInputError(f"source {url!r}: bad port {port_text!r}")
        port = int(port_text)
    return SourceAddress(host, port, tls)
