"""Editing the passwd-file in place, as ``htpasswd`` does: locked and atomic.

``replicad user add|del|passwd`` change the file named by ``[auth]
passwd_file`` directly (a running node picks the change up by itself, see
:class:`~replicad.auth.directory.UserDirectory`).  Each edit

1. takes an exclusive ``flock`` on ``FILE.lock`` in the same directory, so
   two concurrent edits are serialised and neither loses the other's change
   (the lock is on a separate file because the passwd-file itself is
   replaced by every edit); an edit waits at most :data:`LOCK_TIMEOUT`
   seconds for another, then fails with exit 75 (try again);
2. reads the file (a missing file reads as empty) and computes the new
   content with a pure function of :mod:`replicad.auth.passwdfile`, which
   keeps every other line, comments included, byte for byte;
3. writes a temporary file in the same directory, created 0600 and then
   given the old file's mode, owner and group (so a root-run edit of a
   ``root:replicad 0640`` file stays readable by the node), fsyncs it,
   renames it over the file and fsyncs the directory.

A reader sees the old file or the new one, never a mix; a crash leaves at
worst a ``.FILE.tmp.*`` file behind, never a half-written passwd-file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from replicad.errors import BadInputError, TemporaryError

NEW_FILE_MODE = 0o600
#: How long an edit waits for another one to finish before giving up (exit 75).
LOCK_TIMEOUT = 5.0
_LOCK_POLL = 0.05


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _target(path: Path) -> Path:
    """The file to replace: a symlinked passwd-file is edited where it lives."""
    return Path(os.path.realpath(path))


@contextlib.contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive edit lock of ``path``; :class:`TemporaryError` (75) if
    another edit holds it for longer than ``timeout`` seconds."""
    lock = lock_path(path)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, NEW_FILE_MODE)
    except OSError as exc:
        raise BadInputError(f"cannot open the lock file {lock}: {exc.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TemporaryError(
                        f"{path} is being edited by another process (lock {lock} held "
                        f"for more than {timeout:g}s); try again"
                    ) from None
                time.sleep(_LOCK_POLL)
        yield
    finally:
        os.close(fd)  # releases the lock


def read_passwd_bytes(path: Path) -> bytes | None:
    """The file's bytes, or None if it does not exist; :class:`BadInputError` otherwise."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BadInputError(f"cannot read {path}: {exc.strerror}") from None


def edit_passwd_file(path: Path, change: Callable[[bytes], bytes]) -> None:
    """Replace ``path``'s content ``data`` by ``change(data)``, locked and atomically.

    A missing file is given to ``change`` as ``b""`` and created (0600) if
    ``change`` returns.  Whatever ``change`` raises propagates, the file
    untouched.
    """
    target = _target(path)
    with locked(target):
        old = read_passwd_bytes(target)
        new = change(old or b"")
        try:
            like = os.stat(target) if old is not None else None
        except FileNotFoundError:
            like = None
        try:
            _replace(target, new, like)
        except OSError as exc:
            raise BadInputError(f"cannot write {target}: {exc.strerror}") from None


def _replace(path: Path, data: bytes, like: os.stat_result | None) -> None:
    directory = path.parent
    tmp = directory / f".{path.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, NEW_FILE_MODE)
    try:
        try:
            if like is not None:
                if (like.st_uid, like.st_gid) != (os.geteuid(), os.getegid()):
                    # Only root may give a file away; others keep it as their own.
                    with contextlib.suppress(PermissionError):
                        os.fchown(fd, like.st_uid, like.st_gid)
                os.fchmod(fd, like.st_mode & 0o7777)
            else:
                os.fchmod(fd, NEW_FILE_MODE)  # exactly, whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_empty_passwd_file(path: Path) -> None:
    """Create an empty passwd-file (mode 0600) at ``path`` unless one exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, NEW_FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, NEW_FILE_MODE)
        os.fsync(fd)
    finally:
        os.close(fd)
