"""Wake-ups shared between the runtime's parts (the log grew, the view changed)."""

from __future__ import annotations

import trio


class Broadcast:
    """Wakes every task waiting at the moment it fires, and no later one.

    A waiter that must not miss a firing between checking its condition and
    waiting takes :meth:`event` *before* the check and waits on that event.
    """

    def __init__(self) -> None:
        self._event = trio.Event()

    def event(self) -> trio.Event:
        """The event the next :meth:`fire` sets."""
        return self._event

    def fire(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        """Until the next :meth:`fire`."""
        await self._event.wait()
