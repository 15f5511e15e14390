"""The node's health: up, degraded or down, with the reasons (pure).

``down`` means "do not send this node mail": it is starting, shutting down,
or its store cannot take another message.  ``degraded`` means it serves but
an operator should look: a configured peer is unreachable or has no direct
link, an outbox is close to its bound (past it the peer needs a resync), a
durability level cannot be met (writes at that level fail with exit 75),
no root is elected (writes wait), the store is nearly full, or the node's
certificate or its CA ends within 7 days (or has ended).  Everything
else is ``up``.  A load balancer keeps a degraded node in rotation (HTTP 200)
and takes a down one out (HTTP 503; see :mod:`replicad.httpd`).

:func:`evaluate` returns the summary anyone may see and the details that
``/health`` shows only to local clients or with the configured token: the
details name peers and users, which an outsider has no business knowing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from replicad.observe import Phase, Snapshot

#: An outbox this full is reported before it overflows into a resync.
OUTBOX_NEAR_BOUND = 0.8
#: A store (LMDB map or file system) this full is reported before writes fail.
STORE_NEAR_FULL = 0.9
#: A certificate (the node's or the CA's) ending this soon degrades the node:
#: once it has ended, every link is refused.  (A warning is logged from 30
#: days, replicad.node.CERT_WARN_WITHIN.)
CERT_DEGRADED_WITHIN = 7 * 86400.0


class Status(enum.IntEnum):
    """Ordered by severity, so the worst check is ``max``."""

    UP = 0
    DEGRADED = 1
    DOWN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(slots=True)
class Health:
    status: Status = Status.UP
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def flag(self, check: str, status: Status, reason: str) -> None:
        self.status = max(self.status, status)
        self.reasons.append(reason)
        entry = self.checks.setdefault(check, {"status": Status.UP.label})
        entry["status"] = max(Status[entry["status"].upper()], status).label

    def summary(self) -> dict[str, Any]:
        """What an unauthenticated client sees."""
        return {"status": self.status.label}

    def details(self) -> dict[str, Any]:
        return {"status": self.status.label, "reasons": self.reasons, "checks": self.checks}


def evaluate(snap: Snapshot) -> Health:
    health = Health()
    health.checks["node"] = {
        "status": Status.UP.label,
        "node": snap.node,
        "version": snap.version,
        "phase": snap.phase.value,
        "uptime_s": round(snap.uptime, 1),
    }
    if snap.phase is Phase.STARTING:
        health.flag("node", Status.DOWN, "starting")
    elif snap.phase is Phase.STOPPING:
        health.flag("node", Status.DOWN, "shutting down")
    _store(health, snap)
    if snap.cluster is not None:
        _cluster(health, snap, snap.cluster)
    _durability(health, snap)
    _certificates(health, snap)
    return health


def _certificates(health: Health, snap: Snapshot) -> None:
    if not snap.certificates:
        return
    check: dict[str, Any] = {"status": Status.UP.label}
    health.checks["tls"] = check
    for cert in snap.certificates:
        end = f"{cert.not_after:%Y-%m-%d %H:%M} UTC"
        check[cert.cert] = {
            "file": cert.path,
            "not_after": end,
            "seconds_left": round(cert.seconds_left),
        }
        if cert.seconds_left <= 0:
            health.flag(
                "tls",
                Status.DEGRADED,
                f"{cert.cert} certificate {cert.path} expired on {end}: peers refuse the links",
            )
        elif cert.seconds_left <= CERT_DEGRADED_WITHIN:
            health.flag(
                "tls",
                Status.DEGRADED,
                f"{cert.cert} certificate {cert.path} expires on {end} "
                f"(in {cert.seconds_left / 86400:.1f} days): replace it and reload",
            )


def _store(health: Health, snap: Snapshot) -> None:
    map_free = snap.store_map_size - snap.store_used_bytes
    health.checks["store"] = {
        "status": Status.UP.label,
        "used_bytes": snap.store_used_bytes,
        "map_size": snap.store_map_size,
        "filesystem_free_bytes": snap.fs_free_bytes,
        "filesystem_size_bytes": snap.fs_size_bytes,
    }
    # A full store still serves reads and keeps its links: degraded, not
    # down, so a load balancer keeps it for readers (writes get a
    # temporary error; replication into it waits for room).
    if snap.store_full is not None:
        health.flag(
            "store",
            Status.DEGRADED,
            f"store full, writes refused and replication paused: {snap.store_full}",
        )
    # Room for one more message of the largest size the node accepts.
    need = snap.max_message_size
    if map_free < need:
        health.flag(
            "store", Status.DEGRADED, f"store map full ({map_free} bytes left, node.map_size)"
        )
    elif snap.store_used_bytes >= STORE_NEAR_FULL * snap.store_map_size:
        health.flag(
            "store",
            Status.DEGRADED,
            f"store map {_pct(snap.store_used_bytes, snap.store_map_size)} full",
        )
    if snap.fs_free_bytes is not None and snap.fs_size_bytes:
        if snap.fs_free_bytes < need:
            health.flag(
                "store",
                Status.DEGRADED,
                f"data file system full ({snap.fs_free_bytes} bytes free)",
            )
        elif snap.fs_size_bytes - snap.fs_free_bytes >= STORE_NEAR_FULL * snap.fs_size_bytes:
            used = snap.fs_size_bytes - snap.fs_free_bytes
            health.flag(
                "store", Status.DEGRADED, f"data file system {_pct(used, snap.fs_size_bytes)} full"
            )


def _cluster(health: Health, snap: Snapshot, status: dict[str, Any]) -> None:
    peers: dict[str, dict[str, Any]] = {}
    health.checks["cluster"] = {
        "status": Status.UP.label,
        "root": status.get("root"),
        "epoch": status.get("epoch"),
        "peers": peers,
    }
    if status.get("root") is None and snap.phase is Phase.SERVING:
        health.flag("cluster", Status.DEGRADED, "no root elected yet (writes wait for one)")
    for row in status.get("peers", []):
        name = row["name"]
        if name not in snap.configured_peers:
            continue  # reached through a peer; its own node reports on it
        peer = peers[name] = {
            "status": Status.UP.label,
            "link": row.get("link"),
            "reachable": row.get("reachable"),
            "via": row.get("via"),
            "outbox": row.get("outbox"),
            "lag_s": row.get("lag_s"),
            "resync_marks": row.get("resync"),
        }
        if not row.get("reachable"):
            peer["status"] = Status.DEGRADED.label
            health.flag("cluster", Status.DEGRADED, f"peer {name} unreachable")
        elif row.get("link") != "up":
            peer["status"] = Status.DEGRADED.label
            health.flag(
                "cluster",
                Status.DEGRADED,
                f"no direct link to peer {name} (reached through {row.get('via')})",
            )
        outbox = row.get("outbox")
        if outbox is not None and outbox >= OUTBOX_NEAR_BOUND * snap.max_outbox:
            peer["status"] = Status.DEGRADED.label
            health.flag(
                "cluster",
                Status.DEGRADED,
                f"outbox to {name} at {outbox} of {snap.max_outbox} changes "
                "(past the bound its mailboxes need a resync)",
            )


def _durability(health: Health, snap: Snapshot) -> None:
    # The master counts itself and its directly linked peers (runtime
    # ``_execute_here``), so that is what a level is checked against.
    nodes = 1 + len(snap.linked_peers)
    levels = {scope: {"level": lvl.name, "copies": lvl.copies} for scope, lvl in snap.durability}
    health.checks["durability"] = {"status": Status.UP.label, "nodes": nodes, "levels": levels}
    for scope, level in snap.durability:
        if level.copies > nodes:
            health.flag(
                "durability",
                Status.DEGRADED,
                f"durability {level.name} ({scope}) needs {level.copies} nodes, "
                f"{nodes} linked: such writes fail with exit 75",
            )


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "?"
