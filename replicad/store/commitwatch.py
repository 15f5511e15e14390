"""Wake readers when the store changed: what IMAP IDLE and read-your-writes wait on.

Every write transaction of a node -- a client's write, a replicated change,
a merge -- commits through the one group-commit writer, which calls
:meth:`CommitWatch.committed` after each batch.  A reader remembers the
:attr:`~CommitWatch.generation` it last looked at and waits for a later
one; it then reads what it needs (e.g. "changes since modseq n" of its
mailbox) in a read transaction.  The watch carries no data, so it costs one
event per batch however many readers wait.
"""

from __future__ import annotations

import trio


class CommitWatch:
    """A counter of committed write batches with a way to wait for the next one."""

    def __init__(self) -> None:
        self.generation = 0
        self._event = trio.Event()

    def committed(self) -> None:
        """A batch committed: wake every waiter."""
        self.generation += 1
        self._event.set()
        self._event = trio.Event()

    async def wait_past(self, generation: int) -> int:
        """Return the current generation once it is above ``generation``."""
        while self.generation <= generation:
            await self._event.wait()
        return self.generation
