"""A merge plan cut into parts that each fit in one frame (resync.md §7, §9).

A logged merge (``* UPDATE`` on the change stream) and a peer's UPDATE
both carry message bodies, and a frame holds at most 64 MiB
(``DEFAULT_MAX_FRAME``).  A merge larger than that (a node that lost a big
mailbox, an import through an overflowed outbox) goes as several plans,
each the operations of a run of UIDs in ascending order, each applied as
one transaction and complete with the last.  Every part carries the whole
plan's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ: the first part already
settles the counters (I3) and a new UIDVALIDITY (which empties the old UID
space, :class:`~replicad.model.merge.MergePlan`), and the later ones find
the mailbox as the part before left it.

Pure: the store logs the parts (:meth:`replicad.store.mailstore.MailStore.apply_merge`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from replicad.model.merge import MergePlan, PlanOp, PutMessage

#: Most estimated octets in one part: half the 64 MiB frame limit, so that
#: the estimate below may be off by a lot and a part still fits (I9).
PART_BYTES: Final = 32 * 1024 * 1024
#: Most msgpack values in one part: half a frame's value budget
#: (framing.md §3: ``MAX_FRAME_VALUES`` = 2^20 in replicad.protocol.frames),
#: the rest of the frame and a wide margin for the rest.  Written out rather
#: than imported because the model sits below the protocol (docs/architecture.md
#: §3); tests/unit/store/test_logged_merge.py holds the two together.  Since
#: every operation is at least 6 values, it also keeps a part within UPDATE's
#: 100,000 operations.
PART_VALUES: Final = 1 << 19
#: Upper bounds of one operation's octets on the wire, bodies apart: the
#: msgpack of UID, GUID, modseq, date, size, body hash and headers; per flag
#: register its stamp and state (plus the flag name); per tombstone GUID and
#: per move.
OP_BYTES: Final = 128
MARK_BYTES: Final = 24
GUID_BYTES: Final = 24


def op_weight(op: PlanOp, with_body: Callable[[PutMessage], bool] = lambda _: True) -> int:
    """Estimated wire octets of ``op``, its body included if ``with_body(op)``."""
    if isinstance(op, PutMessage):
        m = op.message
        marks = sum(MARK_BYTES + len(k.flag.encode()) for k in m.marks)
        return OP_BYTES + marks + (m.size if with_body(op) else 0)
    t = op.tombstone
    return OP_BYTES + GUID_BYTES * (len(t.guids) + 2 * len(t.moved))


def op_values(op: PlanOp) -> int:
    """msgpack values of ``op`` on the wire, exactly (``UPDATE_OPS`` in
    replicad.protocol.changes): its array and kind, its fields, each flag
    register an array of three, each tombstone GUID one, each move ``(uid
    guid)`` an array of two."""
    if isinstance(op, PutMessage):
        return 10 + 4 * len(op.message.marks)
    t = op.tombstone
    return 6 + len(t.guids) + 3 * len(t.moved)


def split_plan(
    p: MergePlan,
    budget: int = PART_BYTES,
    weight: Callable[[PlanOp], int] = op_weight,
    values: int = PART_VALUES,
) -> tuple[MergePlan, ...]:
    """``p`` as consecutive parts of at most ``budget`` estimated octets and
    ``values`` msgpack values (:func:`op_values`) each.

    An operation heavier than ``budget`` alone (one body that large) is a part
    by itself.  A plan without operations is one part.  Applying the parts
    in order has the effect of applying ``p`` (module doc):
    ``apply_plan(apply_plan(s, a), b) == apply_plan(s, p)`` for parts ``a, b``.
    """
    parts: list[MergePlan] = []
    current: list[PlanOp] = []
    size = count = 0
    for op in p.ops:
        w, n = weight(op), op_values(op)
        if current and (size + w > budget or count + n > values):
            parts.append(MergePlan(p.uidvalidity, p.uidnext, p.highestmodseq, tuple(current)))
            current, size, count = [], 0, 0
        current.append(op)
        size += w
        count += n
    parts.append(MergePlan(p.uidvalidity, p.uidnext, p.highestmodseq, tuple(current)))
    return tuple(parts)
