"""Modes of what the node writes: mail is private, whatever the umask.

Every file the node creates is 0600 and every directory 0700.  A mode
given to ``open``/``mkdir`` is only an upper bound (the umask removes bits
from it, and an existing file keeps its mode), so modes are set
explicitly with ``chmod`` after creation.  A data directory or store file
left more open by an older version, by hand or by a permissive umask is
tightened at start, with a log line naming it, because a world-readable
``data.mdb`` is every user's mail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("replicad.fs")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_directory(path: Path) -> None:
    """Make ``path`` (and missing parents) a directory only its owner can use.

    A directory that exists with group or other bits is tightened to 0700
    (logged as ``fs.mode_tightened``).  Missing parents are created with the
    umask's mode: only ``path`` itself belongs to the node.
    """
    try:
        path.mkdir(parents=True, mode=PRIVATE_DIR)
    except FileExistsError:
        tighten(path, PRIVATE_DIR)
    else:
        os.chmod(path, PRIVATE_DIR)  # the umask may have removed bits, even ours


def tighten(path: Path, mode: int) -> None:
    """Set ``path`` to ``mode`` if it grants anything to group or others.

    Modes that are already tighter (an operator's 0500, say) are left alone.
    Symlinks are followed, as the node follows them when it opens the path.
    """
    current = stat.S_IMODE(path.stat().st_mode)
    if current & 0o077:
        os.chmod(path, mode)
        log.warning(
            "fs.mode_tightened",
            extra={"kv": {"path": path, "was": f"{current:04o}", "now": f"{mode:04o}"}},
        )


def tighten_if_present(path: Path, mode: int) -> None:
    """:func:`tighten` for a file that may not exist (yet)."""
    with contextlib.suppress(FileNotFoundError):
        tighten(path, mode)
