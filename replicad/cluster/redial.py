"""When to dial a neighbour again: backoff, and cheap probes for signs of life (verbs.md §2).

A link that is down is dialled again on an exponential backoff (``backoff_min``
doubling up to ``backoff_max``, each wait scaled by a jitter factor the
caller draws): a dead peer, or one that refuses us, costs a TLS handshake
and a log line per backoff period, never more.  Backoff alone would leave a
healed link down for up to ``backoff_max`` × 1.5, so between dials the
dialler looks for a *sign of life*:

* a reachability probe, every ``probe_interval`` (a TCP connect that is
  not reset at once: no TLS, no HELLO, nothing logged by the peer);
* a route to the peer through another neighbour (ROUTES), which shows the
  peer is up and only this link is down.

A sign of life starts an *early dial* at once.  Early dials are bounded so
that a peer that answers probes but refuses the dial (a wrong certificate,
a handshake cap) is not hammered either: after an early dial fails, the
next sign of life counts only once a probe has found the peer unreachable
again, a scheduled dial has run, or the failed dial itself showed the path
down rather than a refusal (the connection cut before the peer's TLS
answered: the caller then reports :meth:`DialSchedule.peer_unreachable`).
A dead peer never answers a probe, so it is dialled exactly as the backoff
allows.

Pure: inputs are method calls with the time (``now``) and the jitter
factor as arguments; outputs are the returned decisions and
:attr:`DialSchedule.due`.  The trio loop that runs it is
:meth:`replicad.cluster.links.Links._dial_loop`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Bounds of the dial backoff, in seconds (``ClusterSettings``)."""

    min_s: float
    max_s: float


class DialSchedule:
    """One peer's dial timing: the next scheduled dial and whether a sign of
    life may bring it forward."""

    def __init__(self, backoff: Backoff, now: float) -> None:
        self.backoff = backoff
        self._delay = backoff.min_s
        #: When the next dial is due without any sign of life.
        self.due = now
        self._early_armed = True

    @property
    def wants_signs_of_life(self) -> bool:
        """True while a sign of life would start an early dial (else probing is wasted)."""
        return self._early_armed

    def dial_failed(self, now: float, jitter: float) -> None:
        """A dial failed at ``now``: the next one waits the backoff (doubled
        for the one after), scaled by ``jitter`` (0.5..1.5, so that restarted
        nodes do not dial in lock step)."""
        self.due = now + self._delay * jitter
        self._delay = min(self._delay * 2, self.backoff.max_s)

    def link_ended(self, now: float, jitter: float) -> None:
        """A link that was up has ended: dial again after the shortest wait,
        backoff from the start.  No early dial before that one: a peer that
        closes every link it is given (another protocol version, a refusal)
        would otherwise be redialled in a tight loop, since it does answer."""
        self._delay = self.backoff.min_s
        self._early_armed = False
        self.dial_failed(now, jitter)

    def scheduled_dial(self) -> None:
        """The dial now starting is the scheduled one (its wait ran out):
        signs of life count again after it."""
        self._early_armed = True

    def peer_unreachable(self) -> None:
        """A probe found the peer unreachable: the next sign of life is news."""
        self._early_armed = True

    def sign_of_life(self) -> bool:
        """The peer showed it is up: True if the caller should dial now (an
        early dial; at most one until :meth:`peer_unreachable` or
        :meth:`scheduled_dial` re-arms it)."""
        if not self._early_armed:
            return False
        self._early_armed = False
        return True
