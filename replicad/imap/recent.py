"""``\\Recent`` (RFC 3501 §2.3.2): a message is recent for the first session
that learns of it, and for no other.

The flag is about sessions, not mail, so it is not replicated: each node
remembers, per mailbox, the highest UID one of its sessions has claimed.
A SELECT (not EXAMINE, which changes nothing) claims every UID above it,
and a selected session claims the new messages it is told of.  The memory
lives as long as the node process: after a restart every message is
recent once more, which RFC 3501 allows ("the server MAY ... set \\Recent
on messages it cannot tell apart") and RFC 9051 removed the flag anyway.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence


class RecentClaims:
    """Per mailbox GUID and UIDVALIDITY, the highest UID already claimed."""

    def __init__(self) -> None:
        self._claimed: dict[bytes, tuple[int, int]] = {}

    def _floor(self, mailbox: bytes, uidvalidity: int) -> int:
        known = self._claimed.get(mailbox)
        if known is None or known[0] != uidvalidity:
            return 0
        return known[1]

    def claim(self, mailbox: bytes, uidvalidity: int, uids: Sequence[int]) -> set[int]:
        """The UIDs among ``uids`` (ascending) that are recent for the caller;
        they are recent for nobody else from now on."""
        floor = self._floor(mailbox, uidvalidity)
        mine = set(uids[bisect_right(uids, floor) :])
        if mine:
            self._claimed[mailbox] = (uidvalidity, max(mine))
        return mine

    def count(self, mailbox: bytes, uidvalidity: int, uids: Iterable[int]) -> int:
        """How many of ``uids`` no session has claimed yet (STATUS RECENT)."""
        floor = self._floor(mailbox, uidvalidity)
        return sum(1 for uid in uids if uid > floor)
