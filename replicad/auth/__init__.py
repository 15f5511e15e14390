"""Users and passwords: Dovecot's passwd-file, password schemes, user names.

The public API, for the front doors (LMTP, IMAP) and the command line::

    from replicad.auth import UserDirectory, UserEntry, normalise_user

    users = UserDirectory.from_config(config)        # [auth] passwd_file, username_format
    users = UserDirectory(path, username_format="%Lu")  # the same, given directly
    entry = users.lookup("Alice@Example.org")         # UserEntry | None (sync, cheap)
    ok = await users.verify("alice@example.org", password)  # bool, hashed in a thread
    key = normalise_user("Alice@Example.org", "%Lu")  # "alice@example.org"

* :class:`UserDirectory` (:mod:`~replicad.auth.directory`): the loaded file,
  re-read by itself when it changes on disk (checked at most once a second,
  on lookup); a file that became unreadable keeps the last good copy.
  ``lookup`` and ``verify`` normalise the name they are given with the
  directory's ``username_format`` (every format is idempotent, so an already
  normalised name is fine).  ``verify`` never blocks the event loop.
* :class:`UserEntry`: ``user`` (normalised), ``scheme`` (None: no password),
  ``uid``, ``gid``, ``home``, ``extra`` (Dovecot extra fields), ``line``.
* :func:`normalise_user` (:mod:`~replicad.usernames`, a leaf helper so that
  the configuration and every door share it without importing this
  package): ``%Lu`` (the default), ``%u``, ``%Ln``, ``%n``, as Dovecot's
  ``auth_username_format``.
* :mod:`~replicad.auth.passwdfile`: the pure parser and line edits;
  :mod:`~replicad.auth.schemes`: ``{ARGON2ID}`` (new hashes), ``{ARGON2I}``,
  ``{BLF-CRYPT}``, ``{SHA512-CRYPT}``, ``{SHA256-CRYPT}``, ``{PLAIN}``,
  ``{CRYPT}``; :mod:`~replicad.auth.edit`: locked, atomic edits of the file
  (``replicad user``).

The heavier modules (hash libraries, trio) load on first use of their names,
so importing this package for a user name's normalisation stays cheap for
every command.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from replicad.usernames import (
    DEFAULT_USERNAME_FORMAT,
    USERNAME_FORMATS,
    normalise_user,
    validate_user_name,
    validate_username_format,
)

if TYPE_CHECKING:
    from replicad.auth.directory import UserDirectory
    from replicad.auth.passwdfile import LineError, UserEntry
    from replicad.auth.schemes import DEFAULT_SCHEME, make_password_field

__all__ = [
    "DEFAULT_SCHEME",
    "DEFAULT_USERNAME_FORMAT",
    "USERNAME_FORMATS",
    "LineError",
    "UserDirectory",
    "UserEntry",
    "make_password_field",
    "normalise_user",
    "validate_user_name",
    "validate_username_format",
]

_LAZY = {
    "UserDirectory": "replicad.auth.directory",
    "UserEntry": "replicad.auth.passwdfile",
    "LineError": "replicad.auth.passwdfile",
    "DEFAULT_SCHEME": "replicad.auth.schemes",
    "make_password_field": "replicad.auth.schemes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
