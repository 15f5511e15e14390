"""Matching replies of forwarded commands (protocol-spec/framing.md §5, seed 001).

A node that is not the master of a mailbox proxies the command instead of
bouncing it: it sends the command on the next link under a tag *it*
allocates there, and remembers which (link, tag) it answers.  Tags are
per link and per direction, so the original tag never travels.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Origin:
    link: Hashable
    tag: str


class ForwardTable:
    """(next link, our tag there) -> (origin link, its tag)."""

    def __init__(self) -> None:
        self._pending: dict[tuple[Hashable, str], Origin] = {}

    def forwarded(self, origin: Origin, link: Hashable, tag: str) -> None:
        key = (link, tag)
        if key in self._pending:
            raise ValueError(f"tag {tag!r} already in flight on {link!r}")
        self._pending[key] = origin

    def replied(self, link: Hashable, tag: str) -> Origin | None:
        """The origin to relay a reply to (None: the command was our own)."""
        return self._pending.pop((link, tag), None)

    def link_lost(self, link: Hashable) -> list[Origin]:
        """Origins whose forwarded command died with ``link``: answer them NO UNREACHABLE."""
        lost = [key for key in self._pending if key[0] == link]
        return [self._pending.pop(key) for key in lost]

    def __len__(self) -> int:
        return len(self._pending)
