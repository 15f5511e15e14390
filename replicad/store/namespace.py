"""A user's mailbox names: one last-writer-wins claim per mailbox, resolved
to unique names by a pure function (I4; protocol-spec/resync.md §5).

Every mailbox row keeps a *claim*: the name a client last gave it (CREATE
or RENAME) and the hybrid-clock stamp of that decision.  Claims travel with
CREATE and RENAME records, MBOX and the SYNC reply; a node keeps, per
mailbox GUID, the greatest ``(stamp, name)`` it has seen.  So every node
that has seen the same claims holds the same claim per GUID, whatever the
order they arrived in.

Two mailboxes may claim one name (one side of a partition created
``Work`` while the other renamed a mailbox to ``Work``).  The name a
mailbox is *shown* under is then :func:`effective_names` of all the claims
of its user: the newest claim of a name holds it (it is the one a client
made last, after seeing the others wherever it could), and each other
claimant is shown as ``NAME-<first 8 hex digits of its GUID>``.  Both
mailboxes and all their messages survive (I6); nothing is merged, so no
message can end up in two mailboxes.  A derived name is never written as a
claim: once the newer claimant is deleted or renamed away, the other takes
its name back on every node.

INBOX is the exception, handled by resync (same-name merge): it cannot be
renamed, so two INBOX GUIDs only come from two first deliveries on the two
sides of a partition, and those are merged into one mailbox.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class Claim:
    """The name a mailbox was last given and when (greater wins: stamp, then name)."""

    stamp: int
    name: str


def derived_names(name: str, guid: bytes) -> Iterator[str]:
    """Candidate names for a mailbox whose claim on ``name`` lost, best first."""
    digits = guid.hex()
    yield f"{name}-{digits[:8]}"
    yield f"{name}-{digits[:16]}"
    yield f"{name}-{digits}"
    n = 2
    while True:  # only if clients claimed every name above: still deterministic
        yield f"{name}-{digits}-{n}"
        n += 1


def effective_names(claims: Mapping[bytes, Claim]) -> dict[bytes, str]:
    """The name each mailbox (by GUID) is shown under: unique, and a function
    of the set of claims alone (the order they were learnt in does not
    matter, I4).

    For each claimed name the claimant with the greatest ``(stamp, GUID)``
    holds it; the others, in GUID order, take the first of their
    :func:`derived_names` that no claim and no earlier loser holds.
    """
    by_name: dict[str, list[bytes]] = {}
    for guid, claim in claims.items():
        by_name.setdefault(claim.name, []).append(guid)
    out: dict[bytes, str] = {}
    losers: list[bytes] = []
    for name, guids in by_name.items():
        winner = max(guids, key=lambda g: (claims[g].stamp, g))
        out[winner] = name
        losers.extend(g for g in guids if g != winner)
    taken = set(by_name)
    for guid in sorted(losers):
        for candidate in derived_names(claims[guid].name, guid):
            if candidate not in taken:
                break
        out[guid] = candidate
        taken.add(candidate)
    return out


def superiors(name: str, separator: str = "/") -> list[str]:
    """The names above ``name`` in the hierarchy, outermost first
    (``a/b/c`` → ``a``, ``a/b``): what CREATE makes when they are missing
    (RFC 3501 §6.3.3, RFC 9051 §6.3.4)."""
    parts = name.split(separator)
    return [separator.join(parts[:n]) for n in range(1, len(parts))]


def implied_names(names: Iterable[str], separator: str = "/") -> set[str]:
    """Names that are not mailboxes but have mailboxes below them: shown by
    IMAP LIST as ``\\Noselect`` (RFC 3501 §7.2.2) / ``\\NonExistent`` (RFC 9051)."""
    real = set(names)
    return {s for n in real for s in superiors(n, separator)} - real
