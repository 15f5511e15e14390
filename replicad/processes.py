"""Signalling a process by pid only while it is still the one we mean.

A pid read from a pid file may have been reused by another process.  Where
the kernel supports it, the process is pinned with a pidfd before the
identity check, so the signal cannot reach a process that took over the pid
between the check and the kill; elsewhere the window is microseconds.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable


def signal_if(pid: int, is_ours: Callable[[], bool], signum: int) -> bool:
    """Send ``signum`` to ``pid`` if ``is_ours()``; False if it is gone or not ours."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except OSError:
        pidfd = None  # no pidfd support
    try:
        if not is_ours():
            return False
        try:
            if pidfd is not None:
                signal.pidfd_send_signal(pidfd, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            return False
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)
