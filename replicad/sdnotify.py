"""systemd's service notification protocol (sd_notify(3)), without libsystemd.

With ``Type=notify`` systemd starts the unit and passes ``$NOTIFY_SOCKET``,
a unix datagram socket (a path, or ``@name`` in the abstract namespace).
The node sends newline-separated ``KEY=value`` assignments to it:

* ``READY=1`` once the store is open and every listener is up, which is
  what makes ``systemctl start`` return and units ordered ``After=`` run;
* ``STATUS=…`` one line for ``systemctl status``;
* ``WATCHDOG=1`` every ``$WATCHDOG_USEC / 2``, so a wedged node (event loop
  or store stuck) is killed and restarted by systemd (``WatchdogSec=``);
* ``RELOADING=1`` / ``READY=1`` around a SIGHUP reload;
* ``STOPPING=1`` when a shutdown starts.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.  A lost
notification never stops the node: the socket is non-blocking and send
errors are logged at debug level, so a full or vanished socket cannot
stall the event loop.  The library is not used because the protocol is a
single ``sendto`` and the node runs on machines without libsystemd's
Python bindings.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping

import trio

from replicad.errors import ReplicadError

log = logging.getLogger("replicad.sdnotify")


class Notifier:
    """Sends notifications to ``address`` (None: disabled) from one socket."""

    def __init__(self, address: str | None, *, watchdog_usec: int | None = None) -> None:
        self._address = _socket_address(address) if address else None
        self._sock: socket.socket | None = None
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        """The notifier systemd's environment asks for (sd_watchdog_enabled(3) rules).

        ``$WATCHDOG_PID``, when set, names the process the watchdog is meant
        for: a child that inherited the variables must not ping for its parent.
        """
        env = os.environ if environ is None else environ
        me = os.getpid() if pid is None else pid
        usec: int | None = None
        raw = env.get("WATCHDOG_USEC", "")
        if raw.isdigit() and env.get("WATCHDOG_PID", str(me)) == str(me):
            usec = int(raw)
        return cls(env.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2 / 1_000_000

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` assignments in one datagram; False if it was not sent."""
        if self._address is None or not assignments:
            return False
        # One assignment per line: a newline inside a value would forge another.
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sdnotify.send_failed", extra={"kv": {"error": exc.strerror or str(exc)}})
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.send(f"STATUS={text}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (Type=notify-reload, v253+) match the
        # reload to its request; older versions ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the configuration")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def watchdog_loop(self, probe: Callable[[], Awaitable[object]] | None = None) -> None:
        """Ping every :attr:`watchdog_interval` while ``probe`` completes in time.

        The ping is sent from the event loop after ``probe`` (a cheap store
        read on a thread of its own, ``MailStore.probe``, so that long reads
        filling the reader threads do not delay it) answered, so it means
        "the loop runs and the store answers";
        if either hangs, pings stop and systemd restarts the node, which is
        the point of a watchdog.  Returns at once when no watchdog is set.
        """
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            if probe is not None:
                failed: str | None = None
                with trio.move_on_after(interval) as scope:
                    try:
                        await probe()
                    except ReplicadError as exc:
                        failed = str(exc)
                if scope.cancelled_caught:
                    failed = f"no answer within {interval:g}s"
                if failed is not None:
                    log.warning("sdnotify.watchdog_withheld", extra={"kv": {"reason": failed}})
                    await trio.sleep(interval)
                    continue
            self.send("WATCHDOG=1")
            await trio.sleep(interval)


def _socket_address(address: str) -> str:
    """``@name`` is the abstract namespace (a leading NUL byte on Linux)."""
    if address.startswith("@"):
        return "\0" + address[1:]
    return address
