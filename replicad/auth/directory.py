"""The user directory: the passwd-file as loaded, kept current, and verified against.

:class:`UserDirectory` is what the front doors (LMTP, IMAP) hold.  It reads
the file named by ``[auth] passwd_file`` and

* notices a change on disk by itself: on a lookup, at most once per
  ``check_interval`` (1 s) it ``stat``\\ s the file and reads it again when
  its device, inode, size, mtime or ctime changed, so ``replicad user add``
  (which renames a new file into place) or an editor takes effect within a
  second, without a restart or a SIGHUP;
* keeps the last good copy when the file became unreadable (missing, no
  permission), logging ``auth.passwd_file_unreadable`` once per reason;
* reports each malformed line (``auth.passwd_file_bad_line``, the file and
  the line number) and skips it, the other users staying usable;
* verifies passwords in worker threads (``trio.to_thread.run_sync``) under a
  :class:`trio.CapacityLimiter` of ``max_verifying`` threads: a hash takes
  tens of milliseconds of CPU, which must never stall the event loop, and a
  login flood must neither take every worker thread nor queue unboundedly
  more hashing than the machine can do at once.  A user that does not exist
  or has no password costs one Argon2 verification too, so the time of an
  answer does not tell whether the user exists.

Passwords and hashes are never logged; failed verifications are logged at
debug level with the user name and the reason only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from replicad.auth.passwdfile import LineError, UserEntry, parse_passwd_file
from replicad.auth.schemes import SCHEMES, Scheme, scheme_named, verify_password
from replicad.errors import ConfigError
from replicad.usernames import (
    DEFAULT_USERNAME_FORMAT,
    normalise_user,
    validate_username_format,
)

if TYPE_CHECKING:
    from replicad.config import NodeConfig

log = logging.getLogger("replicad.auth")

#: How many password hashes may be computed at once (worker threads).
DEFAULT_MAX_VERIFYING = 4
#: At most one stat of the passwd-file per this many seconds.
DEFAULT_CHECK_INTERVAL = 1.0

# Verified for users that do not exist or have no password, so that answer
# costs what a real one does (argon2-cffi's default parameters, as new hashes).
_DUMMY_HASH = (
    "$argon2id$v=19$m=65536,t=3,p=4$9S7D9DdcMAtJ85Ny5U0LPg"
    "$1DYPTvCPoxx6DGZ6YmVdQy9d2Box48ARHaoyyE08hOo"
)

_Signature = tuple[int, int, int, int, int]


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class UserDirectory:
    """The users of one passwd-file; see the module docstring.

    ``UserDirectory(path, username_format="%Lu")`` loads nothing until the
    first :meth:`lookup`, :meth:`verify`, :meth:`users` or :meth:`refresh`.
    A file missing or unreadable at that first load leaves the directory
    empty (and logged) until the file can be read.
    """

    def __init__(
        self,
        path: Path | str,
        username_format: str = DEFAULT_USERNAME_FORMAT,
        *,
        max_verifying: int = DEFAULT_MAX_VERIFYING,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_verifying < 1:
            raise ValueError("max_verifying must be at least 1")
        self.path = Path(path)
        self.username_format = validate_username_format(username_format, "username_format")
        self.check_interval = check_interval
        self._clock = clock
        self._limiter = trio.CapacityLimiter(max_verifying)
        self._entries: dict[str, UserEntry] = {}
        self._errors: tuple[LineError, ...] = ()
        self._signature: _Signature | None = None
        self._checked: float | None = None
        self._unreadable: str | None = None
        self._loads = 0

    @classmethod
    def from_config(
        cls,
        config: NodeConfig,
        *,
        max_verifying: int = DEFAULT_MAX_VERIFYING,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
    ) -> UserDirectory:
        """The directory of ``config``'s ``[auth]`` section; :class:`ConfigError` if the
        config names no ``auth.passwd_file``."""
        auth = config.auth
        if auth.passwd_file is None:
            raise ConfigError(f"{config.path}: auth.passwd_file is not set (in [auth])")
        return cls(
            auth.passwd_file,
            auth.username_format,
            max_verifying=max_verifying,
            check_interval=check_interval,
        )

    # --- the file ------------------------------------------------------------

    @property
    def errors(self) -> tuple[LineError, ...]:
        """The malformed lines of the copy in use."""
        return self._errors

    @property
    def loads(self) -> int:
        """How many times the file was (re)read successfully."""
        return self._loads

    def refresh(self, *, force: bool = False) -> None:
        """Read the file again if it changed on disk (checked at most once per
        ``check_interval`` unless ``force``)."""
        now = self._clock()
        if not force and self._checked is not None and now - self._checked < self.check_interval:
            return
        self._checked = now
        try:
            if self._signature is not None and _signature(os.stat(self.path)) == self._signature:
                self._readable()
                return
            with open(self.path, "rb") as fh:
                signature = _signature(os.fstat(fh.fileno()))
                data = fh.read()
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return
        parsed = parse_passwd_file(data, self.path, self.username_format)
        self._entries, self._errors = parsed.entries, parsed.errors
        self._signature = signature
        self._loads += 1
        self._readable()
        for error in parsed.errors:
            fields: dict[str, object] = {"path": error.path, "line": error.line}
            if error.user is not None:
                fields["user"] = error.user
            fields["reason"] = error.reason
            log.error("auth.passwd_file_bad_line", extra={"kv": fields})
        log.info(
            "auth.passwd_file_loaded",
            extra={
                "kv": {
                    "path": self.path,
                    "users": len(self._entries),
                    "bad_lines": len(parsed.errors),
                }
            },
        )

    def _failed(self, reason: str) -> None:
        if reason == self._unreadable:
            return
        self._unreadable = reason
        kept = "last good copy" if self._signature is not None else "no users"
        log.error(
            "auth.passwd_file_unreadable",
            extra={"kv": {"path": self.path, "reason": reason, "using": kept}},
        )

    def _readable(self) -> None:
        self._unreadable = None

    # --- users -----------------------------------------------------------------

    def normalise(self, name: str) -> str:
        return normalise_user(name, self.username_format)

    def lookup(self, user: str) -> UserEntry | None:
        """The entry of ``user`` (normalised here with the directory's format), or None."""
        self.refresh()
        return self._entries.get(self.normalise(user))

    def users(self) -> list[str]:
        """Every valid user, in file order."""
        self.refresh()
        return list(self._entries)

    async def verify(self, user: str, password: str | bytes) -> bool:
        """Whether ``password`` is ``user``'s; False for an unknown user or one
        without a password.  The hash is checked in a worker thread, at most
        ``max_verifying`` at once; other tasks run meanwhile."""
        entry = self.lookup(user)
        scheme: Scheme
        if entry is None or entry.scheme is None:
            scheme, stored = SCHEMES["ARGON2ID"], _DUMMY_HASH
        else:
            scheme, stored = scheme_named(entry.scheme), entry.password_hash
        matched = await trio.to_thread.run_sync(
            verify_password, password, scheme, stored, limiter=self._limiter
        )
        if entry is None or entry.scheme is None:
            reason = "no_such_user" if entry is None else "no_password"
            log.debug("auth.verify_failed", extra={"kv": {"user": user, "reason": reason}})
            return False
        if not matched:
            log.debug(
                "auth.verify_failed",
                extra={"kv": {"user": entry.user, "reason": "password_mismatch"}},
            )
        return matched
