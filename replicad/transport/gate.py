"""Admission of connections that have not authenticated yet (I9).

A TLS handshake costs the accepting node CPU on its event loop thread and
holds a task for up to the handshake timeout; anyone who can reach the
port can open connections, certificate or not.  :class:`HandshakeGate`
caps how many such connections are in their handshake at once, in total
and per source address, so a flood from one address (or many) cannot
occupy the node: a connection over a cap is closed at once, before any
TLS work.  Authenticated links are not counted: the gate is released as
soon as the handshake and HELLO are done.

Pure and synchronous: the listener calls :meth:`admit` when a connection
arrives and :meth:`release` when its handshake ends, either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Handshakes in progress at once, from all sources.  A cluster of tens of
#: nodes reconnecting after a restart needs a few dozen.
DEFAULT_MAX_HANDSHAKES = 64
#: Handshakes in progress at once from one source address.  A real peer
#: opens one link at a time (two in a race); a development cluster on one
#: host has every peer behind 127.0.0.1, up to nine at once for ten nodes.
DEFAULT_MAX_HANDSHAKES_PER_SOURCE = 16


@dataclass(slots=True)
class HandshakeGate:
    """Counts handshakes in progress; refuses those over the caps."""

    max_total: int = DEFAULT_MAX_HANDSHAKES
    max_per_source: int = DEFAULT_MAX_HANDSHAKES_PER_SOURCE
    _by_source: dict[str, int] = field(default_factory=dict)
    _total: int = 0
    #: Connections refused since start (for logs and metrics).
    refused: int = 0

    @property
    def in_progress(self) -> int:
        return self._total

    def admit(self, source: str) -> bool:
        """Whether a new connection from ``source`` may start its handshake;
        if True, the caller must :meth:`release` it exactly once."""
        here = self._by_source.get(source, 0)
        if self._total >= self.max_total or here >= self.max_per_source:
            self.refused += 1
            return False
        self._by_source[source] = here + 1
        self._total += 1
        return True

    def release(self, source: str) -> None:
        here = self._by_source.get(source, 0)
        if here <= 0:
            raise ValueError(f"release of {source!r} without a matching admit")
        if here == 1:
            del self._by_source[source]
        else:
            self._by_source[source] = here - 1
        self._total -= 1
