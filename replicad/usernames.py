"""User names: one normalisation for every front door, and what a valid name is.

Pure functions. The normalisation follows Dovecot's ``auth_username_format``
(default ``%Lu``); the supported formats are:

=========  ===================================================================
``%Lu``    the whole ``user@domain``, lowercased (the default)
``%u``     the name unchanged
``%Ln``    the local part (what comes before the first ``@``, as Dovecot's
           ``%n``), lowercased; the domain is dropped
``%n``     the local part unchanged; the domain is dropped
=========  ===================================================================

Each is idempotent (normalising a normalised name changes nothing), so a
caller may normalise a name and then hand it to code that normalises again.
Lowercasing is ASCII-only, as Dovecot's ``%L``: the same name gives the same
key whatever the locale, and a non-ASCII letter is kept as written.
"""

from __future__ import annotations

import difflib

from replicad.errors import BadInputError, ConfigError

DEFAULT_USERNAME_FORMAT = "%Lu"
#: Every supported ``[auth] username_format``.
USERNAME_FORMATS = ("%Lu", "%u", "%Ln", "%n")
#: The longest user name accepted, in UTF-8 bytes.
MAX_USER_BYTES = 255

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """``text`` with A-Z lowercased and every other character unchanged."""
    return text.translate(_ASCII_LOWER)


def validate_username_format(fmt: object, key: str = "auth.username_format") -> str:
    """``fmt`` if it is a supported format; :class:`ConfigError` naming ``key`` otherwise."""
    if isinstance(fmt, str) and fmt in USERNAME_FORMATS:
        return fmt
    known = ", ".join(f'"{f}"' for f in USERNAME_FORMATS)
    if not isinstance(fmt, str):
        raise ConfigError(f"{key} must be a string, one of {known}")
    hint = [f for f in USERNAME_FORMATS if f.lower() == fmt.strip().lower()]
    hint = hint or difflib.get_close_matches(fmt, USERNAME_FORMATS, n=1, cutoff=0.5)
    suggestion = f'; did you mean "{hint[0]}"?' if hint else ""
    raise ConfigError(f"{key} {fmt!r} is not supported{suggestion} (supported: {known})")


def normalise_user(name: str, fmt: str = DEFAULT_USERNAME_FORMAT) -> str:
    """``name`` as the user directory keys it under ``fmt`` (``%Lu`` by default).

    Every front door (LMTP, IMAP, the command line) calls this before a
    lookup, so ``Alice@Example.ORG`` and ``alice@example.org`` are one user.
    :class:`ConfigError` if ``fmt`` is not one of :data:`USERNAME_FORMATS`.
    """
    if fmt == "%Lu":
        return ascii_lower(name)
    if fmt == "%u":
        return name
    if fmt == "%Ln":
        return ascii_lower(name.partition("@")[0])
    if fmt == "%n":
        return name.partition("@")[0]
    validate_username_format(fmt)
    raise AssertionError(fmt)  # unreachable: validate_username_format raised


def user_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a user of the passwd-file, or None if it can.

    A user name is a non-empty string of at most :data:`MAX_USER_BYTES`
    UTF-8 bytes without ``:`` (the field separator), ``#`` at the start (a
    comment), white space or control characters.
    """
    if not name:
        return "a user name must not be empty"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "a user name must be valid UTF-8"
    if size > MAX_USER_BYTES:
        return f"a user name must be at most {MAX_USER_BYTES} bytes of UTF-8, not {size}"
    if ":" in name:
        return "a user name must not contain ':' (the passwd-file field separator)"
    if name.startswith("#"):
        return "a user name must not start with '#' (a comment in the passwd-file)"
    for ch in name:
        if not ch.isprintable() or ch.isspace():
            return "a user name must not contain white space or control characters"
    return None


def validate_user_name(name: str) -> str:
    """``name`` if :func:`user_name_problem` finds nothing; :class:`BadInputError` otherwise."""
    problem = user_name_problem(name)
    if problem is not None:
        shown = name.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
        raise BadInputError(f"{problem}: {shown!r}")
    return name
