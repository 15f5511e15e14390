"""Listening unix sockets for the node's local doors (the admin socket, LMTP).

One place for what both need: a socket file left by a dead node is removed,
while a live one, or a file of another kind, stops the start with a clear
error; the socket is created with its final mode already in force (the
umask is narrowed around ``bind``, so it is never wider even briefly); and
at shutdown the file is removed only if it is still the one this process
made (another node may have replaced it meanwhile).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path

from replicad.errors import ReplicadError

log = logging.getLogger("replicad.transport")


def clear_stale_socket(path: Path, what: str) -> None:
    """Remove a socket file nobody listens on; refuse a live one or a non-socket.

    ``what`` names the socket in errors and logs (``admin socket``)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ReplicadError(f"{what} path {path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(str(path))
    except ConnectionRefusedError:
        # Nobody listens: the owner died without cleaning up.
        log.info("stale_socket_removed", extra={"kv": {"socket": path, "what": what}})
        path.unlink(missing_ok=True)
        return
    except OSError as exc:
        raise ReplicadError(f"cannot check {what} {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ReplicadError(f"something is already listening on {what} {path}")


def bind_unix_socket(
    path: Path, *, mode: int, backlog: int, what: str
) -> tuple[socket.socket, int]:
    """A listening unix socket at ``path`` with ``mode``, and its inode
    (for :func:`remove_socket_if_ours`).  The parent directory must exist."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # umask is process-wide, but bind() is one syscall on this thread and
        # any other file created meanwhile only ends up more restrictive.
        old_umask = os.umask(0o777 & ~mode)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)  # belt and braces for filesystems that ignore umask
        sock.listen(backlog)
        inode = path.lstat().st_ino
    except OSError as exc:
        sock.close()
        raise ReplicadError(f"cannot listen on {what} {path}: {exc.strerror or exc}") from None
    return sock, inode


def remove_socket_if_ours(path: Path, inode: int) -> None:
    """Unlink the socket file unless another process replaced it meanwhile."""
    with contextlib.suppress(OSError):
        if path.lstat().st_ino == inode:
            path.unlink()
