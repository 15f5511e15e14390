"""Deterministic merge of divergent copies of one mailbox (docs/architecture.md §7; I2-I6).

After a partition heals, the mailbox master gathers the state of one mailbox
(one mailbox GUID) from several nodes, the *sides*, computes with
:func:`merge` the single state every node must converge to (I4), and with
:func:`plan` the operations that turn each side into it.  Everything here is
pure: no I/O, no LMDB, no trio; the result depends only on the multiset of
input states, so any node computing it gets the same answer, but only the
master does, and its plans replicate as ordinary changes (docs/architecture.md §7), so no
two nodes can pick different new UIDs.

Rules of :func:`merge`:

1. **Flags (I5).** Every message keeps one last-writer-wins register per flag
   (:class:`FlagMark`).  Per (message, flag) the mark with the greatest
   ``(stamp, present)`` wins, so an exact stamp tie goes to "present".
   :func:`join_marks` computes that; it is commutative, associative and
   idempotent.  From ``(\\Flagged)``, ``+\\Answered`` on one side and
   ``+\\Seen -\\Flagged`` on the other end as ``(\\Answered \\Seen)``.

2. **Per UID** ``u`` in the union of the live and tombstoned UIDs of the sides
   (those with the winning UIDVALIDITY, rule 3): ``live`` are the live
   versions at ``u``, ``tomb_guids`` the union of the tombstone GUIDs at ``u``
   minus :data:`UNKNOWN_GUID`, ``known`` the live GUIDs plus ``tomb_guids``.

   - ``len(known) <= 1`` (no collision): if any side has a tombstone at ``u``,
     the result is a tombstone there (an expunge wins over flag changes, I6)
     whose GUIDs are all tombstone GUIDs at ``u`` plus the live GUID if any.
     Otherwise the result is the live message, its marks the join of all
     versions' marks; versions that disagree on internaldate, size or body
     hash (corruption) resolve to the greatest ``(internaldate, size,
     body_hash)``.
   - ``len(known) >= 2`` (a UID collision, I2, which includes "one side
     reused a UID the other expunged": the tombstone makes it visible, I3):
     ``u`` becomes a tombstone whose GUIDs are ``known`` (plus
     :data:`UNKNOWN_GUID` if a side had it), and every live GUID at ``u``
     that is not in ``tomb_guids`` (an expunge still wins) is *moved*: its
     versions are joined (as above) into one message with a new UID.
   - Moved messages, collected over all collided UIDs, are sorted by
     ``(old uid, guid)`` and take consecutive UIDs from ``floor = max(every
     side's UIDNEXT, 1 + the greatest UID any side has live or tombstoned)``,
     so above every UID either side used (I2).  Nothing is lost (I6).

3. **UIDVALIDITY.** The result takes the greatest UIDVALIDITY.  Sides with a
   smaller one are not compared by UID at all: their tombstones are ignored
   and each of their live messages whose GUID is not live in the merge of the
   winning sides is moved (new UID, after the collision moves, ordered by
   ``(old uid, guid, uidvalidity)``; copies of one message at the same
   ``(uidvalidity, uid, guid)`` on several such sides are joined into one).
   A message whose GUID the winning sides expunged is not brought back, and
   one a losing side expunged is expunged on the winning side too; one it
   expunged and that no side holds any more keeps a tombstone at a fresh
   UID, so a third copy merged later does not bring it back.  Where a losing
   side still holds a GUID but expunged more instances of it than the
   winning sides did (copies made before protocol version 5 share a GUID;
   newer copies have GUIDs of their own), that many of the winners'
   instances are expunged, never leaving fewer than the loser holds.
   Their flag changes to a message the winning sides hold exactly once are
   joined into it; with several instances of the GUID there is no single
   message to carry them to.  Nothing is lost; clients of the losing side see
   a new UIDVALIDITY and resync.

4. **MODSEQs (I3).** The *content* of an entry (live message or tombstone) is
   everything but its uid and modseq.  An entry of the result at ``u`` with
   content ``J`` keeps ``modseq(v)`` of a side's version ``v`` at ``u`` whose
   content is exactly ``J``, if ``modseq(v) > highestmodseq(s)`` for every
   side ``s`` whose entry at ``u`` is absent or differs from ``v`` in content
   or modseq (a side with a losing UIDVALIDITY counts as absent everywhere);
   at most one modseq can qualify.  Otherwise, and always for a moved
   message, the entry takes ``base = 1 + the greatest HIGHESTMODSEQ of the
   sides``, one value shared by all such entries.  So every entry a side does
   not already hold exactly has a modseq above that side's HIGHESTMODSEQ, a
   side's HIGHESTMODSEQ strictly increases with every change it is sent, and
   a message's modseq never goes down.  The result's HIGHESTMODSEQ is the
   greatest of the sides' (and ``base`` if used); its UIDNEXT is the greatest
   of the sides' and ``1 +`` its greatest UID.

5. The result is a function of the multiset of inputs (their order does not
   matter), ``merge([s]) == s``, and merging a result again with any of its
   inputs, or with itself, gives it back: ``merge([R, s]) == R`` (rule 4 is
   what makes that true of the modseqs).  The contents (UIDs, GUIDs, flags,
   tombstones) are also associative when no UIDs are assigned (no collision,
   one UIDVALIDITY); modseqs are not: merging a merge again with a third side
   whose changes it lacks needs a modseq above the merge's own
   HIGHESTMODSEQ, where the three-way merge only needs one above the inputs'.

   So the master merges every side it will reconcile in one call.

6. **Moves are remembered.** A collision tombstone records where each moved
   message went.  A side merged later against an earlier result, which still
   had a moved message at its old UID, has its flag registers joined into
   the moved copy (I5), and its own expunge of it there (a tombstone naming
   the GUID without knowing the move) expunges the moved copy too (I6:
   expunge wins).  Chains of moves are followed.

7. **Concurrent moves are settled.** Two masters can merge the same
   collision concurrently (each side of a partition that just healed had
   one, until the root settles), and pick different new UIDs for the same
   message: the old UID's tombstone then records two targets for one GUID,
   and both lineages hold the message, once each, at different UIDs.  They
   are one message: if either lineage expunged it, every copy of it reached
   by those moves is expunged (I6); otherwise the copy at the highest UID
   stays, with the other copies' flag registers joined in (I5), and each
   other copy becomes a tombstone recording the move to it (moves only ever
   go up, so chains of them end).  Without this
   rule the message would be duplicated, or come back after an expunge.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import TypeAlias, TypeVar

from replicad.uidset import MAX_UID

#: The tombstone GUID of a message expunged here but never seen here (the
#: store's replica applier uses the same value for wire records that name no GUID).
UNKNOWN_GUID = bytes(16)

_GUID_LEN = 16
_BODY_HASH_LEN = 32


_Key = TypeVar("_Key", int, str, bytes)


def _strictly_ascending(values: Iterable[_Key]) -> bool:
    return all(a < b for a, b in pairwise(values))


@dataclass(frozen=True, slots=True)
class FlagMark:
    """One per-flag last-writer-wins register (I5).

    ``stamp`` is the hybrid logical clock value of the last ``+flag`` or
    ``-flag``; ``present`` says which of the two it was.
    """

    flag: str
    stamp: int
    present: bool


@dataclass(frozen=True, slots=True)
class MessageState:
    """One live message: ``marks`` sorted by flag, at most one per flag.

    Raises :class:`ValueError` on a malformed message (UID below 1, GUID not
    16 bytes or :data:`UNKNOWN_GUID`, body hash not 32 bytes, marks unsorted
    or repeated).
    """

    uid: int
    guid: bytes
    modseq: int
    internaldate: int
    size: int
    body_hash: bytes
    marks: tuple[FlagMark, ...]

    def __post_init__(self) -> None:
        if self.uid < 1:
            raise ValueError(f"message UID {self.uid} is not positive")
        if len(self.guid) != _GUID_LEN or self.guid == UNKNOWN_GUID:
            raise ValueError(f"message at UID {self.uid} has an invalid GUID {self.guid.hex()}")
        if len(self.body_hash) != _BODY_HASH_LEN:
            raise ValueError(f"body hash of UID {self.uid} is not {_BODY_HASH_LEN} bytes")
        if not _strictly_ascending(m.flag for m in self.marks):
            raise ValueError(f"marks of UID {self.uid} are not sorted by flag, one per flag")

    @property
    def flags(self) -> tuple[str, ...]:
        """The flags whose mark is present, sorted."""
        return tuple(m.flag for m in self.marks if m.present)


@dataclass(frozen=True, slots=True)
class Tombstone:
    """An expunged UID (I3: never reused) and the message GUIDs known to have had it.

    ``guids`` is never empty; it holds :data:`UNKNOWN_GUID` when the message
    was expunged here but never seen here, and several GUIDs after a UID
    collision (I2).  ``moved`` says where a collision sent each moved message
    (``(guid, new uid)`` sorted by GUID), so that a side merged later, which
    still had the message at this UID, has its flag changes and its expunge
    of it carried to the new UID (rule 6).
    """

    uid: int
    guids: frozenset[bytes]
    modseq: int
    moved: tuple[tuple[bytes, int], ...] = ()

    def __post_init__(self) -> None:
        if self.uid < 1:
            raise ValueError(f"tombstone UID {self.uid} is not positive")
        if not self.guids or any(len(g) != _GUID_LEN for g in self.guids):
            raise ValueError(f"tombstone at UID {self.uid} needs 16-byte GUIDs")
        if not _strictly_ascending(g for g, _ in self.moved) or any(
            g not in self.guids or u <= self.uid for g, u in self.moved
        ):
            raise ValueError(f"tombstone at UID {self.uid} has a malformed moved list")


_Entry: TypeAlias = MessageState | Tombstone


@dataclass(frozen=True, slots=True)
class MailboxState:
    """What one node holds of one mailbox.

    Well-formed by construction (else :class:`ValueError`): messages and
    tombstones in strictly ascending UID order, no UID both live and
    tombstoned, every UID below ``uidnext``, every modseq at most
    ``highestmodseq``.
    """

    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: tuple[MessageState, ...]
    tombstones: tuple[Tombstone, ...]

    def __post_init__(self) -> None:
        for kind, entries in (("messages", self.messages), ("tombstones", self.tombstones)):
            if not _strictly_ascending(e.uid for e in entries):
                raise ValueError(f"{kind} are not in strictly ascending UID order")
        if self.messages and self.tombstones:
            both = {m.uid for m in self.messages} & {t.uid for t in self.tombstones}
            if both:
                raise ValueError(f"UIDs {sorted(both)} are both live and tombstoned")
        entries_all: list[_Entry] = [*self.messages, *self.tombstones]
        top = max((e.uid for e in entries_all), default=0)
        if top >= self.uidnext:
            raise ValueError(f"UID {top} is not below UIDNEXT {self.uidnext}")
        modseq = max((e.modseq for e in entries_all), default=0)
        if modseq > self.highestmodseq:
            raise ValueError(f"modseq {modseq} is above HIGHESTMODSEQ {self.highestmodseq}")


@dataclass(frozen=True, slots=True)
class PutMessage:
    """Create or overwrite the message at ``message.uid`` (metadata, marks, modseq)."""

    message: MessageState


@dataclass(frozen=True, slots=True)
class PutTombstone:
    """Remove the live message at ``tombstone.uid`` if any; record or overwrite the tombstone."""

    tombstone: Tombstone


PlanOp: TypeAlias = PutMessage | PutTombstone


def _op_uid(op: PlanOp) -> int:
    return op.message.uid if isinstance(op, PutMessage) else op.tombstone.uid


@dataclass(frozen=True, slots=True)
class MergePlan:
    """The operations that turn one side into the merged state.

    ``ops`` are in strictly ascending UID order, at most one per UID, and
    empty when the side already holds every entry of the merge.  When
    ``uidvalidity`` differs from the side's, the side's whole UID space
    belongs to the old UIDVALIDITY: the executor drops every message and
    tombstone of the mailbox first (clients resync, RFC 3501 §2.3.1.1), and
    ``ops`` then hold every entry of the merge.
    """

    uidvalidity: int
    uidnext: int
    highestmodseq: int
    ops: tuple[PlanOp, ...]

    def __post_init__(self) -> None:
        if not _strictly_ascending(_op_uid(op) for op in self.ops):
            raise ValueError("plan operations are not in strictly ascending UID order")


def join_marks(*mark_sets: Sequence[FlagMark]) -> tuple[FlagMark, ...]:
    """Join flag registers: per flag the greatest ``(stamp, present)`` wins (I5).

    Commutative, associative and idempotent (a per-flag maximum), so every
    node that sees the same deltas ends with the same flags whatever the
    order.  The result is sorted by flag.
    """
    best: dict[str, tuple[int, bool]] = {}
    for marks in mark_sets:
        for m in marks:
            if m.flag not in best or (m.stamp, m.present) > best[m.flag]:
                best[m.flag] = (m.stamp, m.present)
    return tuple(FlagMark(f, s, p) for f, (s, p) in sorted(best.items()))


def _join_versions(uid: int, versions: Sequence[MessageState]) -> MessageState:
    """One message from versions of the same GUID: marks joined (I5), metadata resolved.

    The modseq is a placeholder (0): rule 4 assigns it once the content is known.
    """
    # Metadata never changes for one GUID; if copies disagree one of them is
    # corrupt, and the greatest wins so that every node picks the same one.
    meta = max(versions, key=lambda v: (v.internaldate, v.size, v.body_hash))
    return MessageState(
        uid=uid,
        guid=meta.guid,
        modseq=0,
        internaldate=meta.internaldate,
        size=meta.size,
        body_hash=meta.body_hash,
        marks=join_marks(*(v.marks for v in versions)),
    )


def _content(entry: _Entry) -> tuple[object, ...]:
    """Everything but uid and modseq (rule 4)."""
    if isinstance(entry, Tombstone):
        return ("tombstone", entry.guids, entry.moved)
    return ("message", entry.guid, entry.internaldate, entry.size, entry.body_hash, entry.marks)


def _entries_by_uid(state: MailboxState) -> dict[int, _Entry]:
    out: dict[int, _Entry] = {m.uid: m for m in state.messages}
    out.update((t.uid, t) for t in state.tombstones)
    return out


def merge(states: Sequence[MailboxState]) -> MailboxState:
    """The state every side converges to (I4), by the rules of the module docstring.

    ``states`` are the sides' copies of one mailbox, in any order (the result
    depends only on their multiset).  Raises :class:`ValueError` if there are
    none, or if the moves would need a UID above 2^32-1.
    """
    if not states:
        raise ValueError("merge needs at least one state")
    uidvalidity = max(s.uidvalidity for s in states)
    # Rule 3: sides with an older UIDVALIDITY number their messages in another
    # UID space; only the winners are compared UID by UID, the others hold
    # nothing at any UID as far as rules 2 and 4 are concerned.
    sides = [(s, _entries_by_uid(s) if s.uidvalidity == uidvalidity else {}) for s in states]
    winners = [entries for s, entries in sides if s.uidvalidity == uidvalidity]
    losers = [s for s in states if s.uidvalidity != uidvalidity]
    base = 1 + max(s.highestmodseq for s in states)
    # Above every UID any side used or will hand out (I2).  Well-formed states
    # have every UID below their UIDNEXT; the second term keeps it so anyway.
    floor = max(
        max(s.uidnext for s in states),
        1 + max((uid for s in states for uid in _entries_by_uid(s)), default=0),
    )

    # Rule 2: the content of the result at every winner UID (modseq pending),
    # and the messages that must leave their UID.
    result: dict[int, _Entry] = {}
    moved: list[MessageState] = []  # placeholder uid: the old one, sorted below
    for uid in sorted({u for side in winners for u in side}):
        at_uid = [side[uid] for side in winners if uid in side]
        live: dict[bytes, list[MessageState]] = defaultdict(list)
        tomb_all: set[bytes] = set()
        for e in at_uid:
            if isinstance(e, MessageState):
                live[e.guid].append(e)
            else:
                tomb_all |= e.guids
        tomb_guids = tomb_all - {UNKNOWN_GUID}
        known = set(live) | tomb_guids
        # Where earlier merges sent messages of this UID (rule 6).
        earlier = _moves(e for e in at_uid if isinstance(e, Tombstone))
        if len(known) <= 1:
            if tomb_all:
                # Expunge wins over concurrent flag changes (I6).
                result[uid] = Tombstone(uid, frozenset(tomb_all | set(live)), 0, earlier)
            else:
                (versions,) = live.values()
                result[uid] = _join_versions(uid, versions)
        else:
            # Collision (I2): the UID is retired for good and remembers every
            # message that had it, so a later merge with any side that still
            # holds one of them sees a tombstone, not a free UID (I3).
            result[uid] = Tombstone(uid, frozenset(known | (tomb_all & {UNKNOWN_GUID})), 0, earlier)
            moved += [_join_versions(uid, live[g]) for g in sorted(live) if g not in tomb_guids]

    # Rule 3: a GUID a losing side expunged is expunged on the winning side
    # too (I6 "expunge wins"): it is the same message, brought into both UID
    # spaces by an earlier merge of the two mailboxes or by COPY.
    # (Per side: a GUID its collision tombstones moved, or that it still has
    # live at another UID, was not expunged by it.)
    lost: set[bytes] = set()
    for s in losers:
        gone = {g for t in s.tombstones for g in t.guids}
        alive = {g for t in s.tombstones for g, _ in t.moved} | {m.guid for m in s.messages}
        lost |= gone - alive - {UNKNOWN_GUID}
    if lost:
        for uid, e in list(result.items()):
            if isinstance(e, MessageState) and e.guid in lost:
                result[uid] = Tombstone(uid, frozenset({e.guid}), 0)
        moved = [m for m in moved if m.guid not in lost]
    _expunge_surplus(result, winners, losers)
    # Rule 3: messages of losing sides that the winners do not have live.
    winner_guids = {e.guid for e in (*result.values(), *moved) if isinstance(e, MessageState)}
    # A GUID the winners expunged stays expunged (I6 "expunge wins"): it is the
    # same message, brought into both UID spaces by an earlier merge or COPY.
    winner_guids |= {g for e in result.values() if isinstance(e, Tombstone) for g in e.guids}
    winner_guids |= lost
    orphans: dict[tuple[int, bytes, int], list[MessageState]] = defaultdict(list)
    # Where a losing side's message is one the winners hold exactly once, its
    # flag changes are joined into it (I5); with several copies of the GUID
    # there is no telling which one it was.
    at: dict[bytes, list[int]] = defaultdict(list)
    for uid, e in result.items():
        if isinstance(e, MessageState):
            at[e.guid].append(uid)
    for s in losers:
        for m in s.messages:
            if m.guid not in winner_guids:
                orphans[(m.uid, m.guid, s.uidvalidity)].append(m)
            elif len(at.get(m.guid, ())) == 1:
                target = result[at[m.guid][0]]
                assert isinstance(target, MessageState)
                result[target.uid] = replace(target, marks=join_marks(target.marks, m.marks))

    # Canonical order so that every node assigns the same new UIDs (I2):
    # collision moves by (old uid, guid), then the orphans of losing sides.
    moved.sort(key=lambda m: (m.uid, m.guid))
    collided = len(moved)  # the rest are orphans of other UID spaces
    moved += [_join_versions(key[0], orphans[key]) for key in sorted(orphans)]
    # A losing side's message expunged by another losing side, of which the
    # winners hold no trace: a tombstone at a fresh UID records it in the
    # winning UID space, so merging the result again with the side that still
    # has it does not bring it back (rule 5 idempotent).
    # The same holds for a GUID a losing side expunged that no side holds
    # live any more: without the tombstone, a later merge with a third copy
    # that still has the message would bring it back.
    traced = {g for e in result.values() for g in _guids(e)}
    buried = sorted(lost - traced)
    if floor + len(moved) + len(buried) - 1 > MAX_UID:
        raise ValueError("mailbox has run out of UIDs: cannot move the colliding messages")
    for i, g in enumerate(buried, start=floor + len(moved)):
        result[i] = Tombstone(i, frozenset({g}), base)
    used_base = bool(moved) or bool(buried)
    new_moves: dict[int, dict[bytes, int]] = defaultdict(dict)
    for i, m in enumerate(moved):
        result[floor + i] = replace(m, uid=floor + i, modseq=base)
        if i < collided:
            new_moves[m.uid][m.guid] = floor + i
    for old_uid, targets in new_moves.items():
        tomb = result[old_uid]
        assert isinstance(tomb, Tombstone)
        table = dict(tomb.moved) | targets
        result[old_uid] = replace(tomb, moved=tuple(sorted(table.items())))
    _follow_moves(result, winners)
    _settle_concurrent_moves(result, winners, base)

    # Rule 4: keep a side's modseq only where every side that lacks that
    # exact entry had not yet reached it; anything else is a change newer than
    # every side (I3).
    final: dict[int, _Entry] = {}
    for uid, entry in sorted(result.items()):
        if uid >= floor:
            final[uid] = entry  # a moved message, already at base
            continue
        content = _content(entry)
        kept: int | None = None
        for v in {side[uid] for side in winners if uid in side}:
            if _content(v) != content:
                continue
            lacking = (s.highestmodseq for s, entries in sides if entries.get(uid) != v)
            if v.modseq > max(lacking, default=-1) and (kept is None or v.modseq > kept):
                kept = v.modseq
        if kept is None:
            used_base = True
            kept = base
        final[uid] = replace(entry, modseq=kept)

    hms = [s.highestmodseq for s in states]
    top = max(final, default=0)
    return MailboxState(
        uidvalidity=uidvalidity,
        uidnext=max(max(s.uidnext for s in states), top + 1),
        highestmodseq=max([*hms, base] if used_base else hms),
        messages=tuple(e for e in final.values() if isinstance(e, MessageState)),
        tombstones=tuple(e for e in final.values() if isinstance(e, Tombstone)),
    )


def _expunges(tombstones: Iterable[Tombstone]) -> dict[bytes, set[int]]:
    """Per GUID, the UIDs whose tombstone records an expunge of it (not a move)."""
    out: dict[bytes, set[int]] = defaultdict(set)
    for t in tombstones:
        went = dict(t.moved)
        for g in t.guids - {UNKNOWN_GUID}:
            if g not in went:
                out[g].add(t.uid)
    return out


def _expunge_surplus(
    result: dict[int, _Entry], winners: Sequence[dict[int, _Entry]], losers: Sequence[MailboxState]
) -> None:
    """Rule 3 for a message with several instances (older copies share a GUID).

    A losing side that still holds a GUID live but also expunged instances of
    it that the winning sides never expunged removed copies the winners still
    hold: that many of the winners' instances go too, never more than leaves
    the winners with as many as that side holds (I6: expunge wins; a copy the
    winners made and the loser never saw stays).  Which instances: those at a
    UID where the loser's tombstone names the GUID (the UID spaces coincide
    when the two lineages came from concurrent merges of the same copies),
    then the highest UIDs.  The counts come from the multiset of sides, so
    the choice is the same whatever the order of the inputs.
    """
    winner_expunges = _expunges(
        e for side in winners for e in side.values() if isinstance(e, Tombstone)
    )
    live: dict[bytes, list[int]] = defaultdict(list)
    for uid, e in result.items():
        if isinstance(e, MessageState):
            live[e.guid].append(uid)
    drop: dict[bytes, int] = defaultdict(int)
    hint: dict[bytes, set[int]] = defaultdict(set)
    for s in losers:
        held: dict[bytes, int] = defaultdict(int)
        for m in s.messages:
            held[m.guid] += 1
        for g, uids in _expunges(s.tombstones).items():
            if not held.get(g) or g not in live:
                continue  # all gone on that side: the `lost` rule; or none here
            unseen = len(uids) - len(winner_expunges.get(g, ()))
            drop[g] = max(drop[g], min(len(live[g]) - held[g], unseen))
            hint[g] |= uids
    for g, n in sorted(drop.items()):
        for uid in sorted(live[g], key=lambda u: (u not in hint[g], -u))[:n]:
            result[uid] = Tombstone(uid, frozenset({g}), 0)


def _guids(entry: _Entry) -> frozenset[bytes]:
    return entry.guids if isinstance(entry, Tombstone) else frozenset({entry.guid})


def _moves(tombstones: Iterable[Tombstone]) -> tuple[tuple[bytes, int], ...]:
    """The union of several tombstones' moved lists (a GUID moved twice by
    concurrent merges keeps its lowest new UID, deterministically)."""
    table: dict[bytes, int] = {}
    for t in tombstones:
        for guid, uid in t.moved:
            table[guid] = min(uid, table.get(guid, uid))
    return tuple(sorted(table.items()))


def _follow_moves(result: dict[int, _Entry], winners: Sequence[dict[int, _Entry]]) -> None:
    """Rule 6: carry what a side did to a message at its old UID to where an
    earlier merge moved it.  A side that still has the message live at the old
    UID (it had not heard of the move) has its flag registers joined into the
    moved copy (I5); a side with a tombstone naming the message there that
    does not record the move expunged it on its own, and the expunge wins at
    the new UID too (I6: "expunge wins")."""
    for uid in sorted(result):
        tomb = result[uid]
        if not isinstance(tomb, Tombstone) or not tomb.moved:
            continue
        for guid, first in tomb.moved:
            target = _follow(result, uid, guid, first)
            dest = result.get(target)
            if not isinstance(dest, MessageState) or dest.guid != guid:
                continue
            for side in winners:
                old = side.get(uid)
                if isinstance(old, MessageState) and old.guid == guid:
                    dest = replace(dest, marks=join_marks(dest.marks, old.marks))
                elif (
                    isinstance(old, Tombstone) and guid in old.guids and guid not in dict(old.moved)
                ):
                    # (a fresh move is at base already; rule 4 re-stamps older UIDs)
                    result[target] = Tombstone(target, frozenset({guid}), dest.modseq)
                    break
            else:
                result[target] = dest


def _follow(result: dict[int, _Entry], uid: int, guid: bytes, target: int) -> int:
    """Where ``guid``, moved from ``uid`` to ``target``, is now: chains of
    moves are followed (the new UID may itself have collided since)."""
    seen = {uid}
    while isinstance(result.get(target), Tombstone) and target not in seen:
        seen.add(target)
        nxt = dict(result[target].moved).get(guid)  # type: ignore[union-attr]
        if nxt is None:
            break
        target = nxt
    return target


def _settle_concurrent_moves(
    result: dict[int, _Entry], winners: Sequence[dict[int, _Entry]], base: int
) -> None:
    """Rule 7: one message moved from one old UID to several new ones by
    concurrent merges is one message again (expunged if any copy was)."""
    targets: dict[tuple[int, bytes], set[int]] = defaultdict(set)
    for side in winners:
        for uid, entry in side.items():
            if isinstance(entry, Tombstone):
                for guid, target in entry.moved:
                    targets[(uid, guid)].add(target)
    for (uid, guid), found in sorted(targets.items()):
        if len(found) < 2:
            continue
        live: set[int] = set()
        expunged = False
        for first in found:
            target = _follow(result, uid, guid, first)
            final = result.get(target)
            if isinstance(final, MessageState) and final.guid == guid:
                live.add(target)
            elif (
                isinstance(final, Tombstone)
                and guid in final.guids
                and guid not in dict(final.moved)
            ):
                expunged = True
        if not live or (len(live) == 1 and not expunged):
            continue
        *others, keeper = sorted(live)
        if expunged:
            for at in live:
                result[at] = Tombstone(at, frozenset({guid}), base)
            continue
        kept = result[keeper]
        assert isinstance(kept, MessageState)
        for at in others:
            other = result[at]
            assert isinstance(other, MessageState)
            kept = replace(kept, marks=join_marks(kept.marks, other.marks))
            result[at] = Tombstone(at, frozenset({guid}), base, ((guid, keeper),))
        result[keeper] = kept


def plan(side: MailboxState, merged: MailboxState) -> MergePlan:
    """The operations that turn ``side`` into ``merged``.

    ``apply_plan(side, plan(side, merged)) == merged`` whenever no error is raised.

    With the same UIDVALIDITY: a :class:`PutMessage` for every merged message
    the side lacks or holds differently (a moved message, new flags, a new
    modseq), and a :class:`PutTombstone` for every merged tombstone the side
    lacks or holds differently, including UIDs the side never saw, so that it
    never reuses them (I3).  ``merged`` must then cover the side (every UID
    it has is live or tombstoned in ``merged``, no smaller UIDNEXT or
    HIGHESTMODSEQ), as any :func:`merge` that included the side does: a plan
    cannot forget a UID or move a counter back (I3), so anything else raises
    :class:`ValueError`.

    With a greater UIDVALIDITY (the side lost rule 3) the side's UIDs mean
    nothing any more: the plan carries every entry of ``merged`` and the
    executor first drops the side's messages and tombstones (see
    :class:`MergePlan`).  A smaller UIDVALIDITY raises :class:`ValueError`.
    """
    if merged.uidvalidity < side.uidvalidity:
        raise ValueError(
            f"merged UIDVALIDITY {merged.uidvalidity} is below the side's {side.uidvalidity}"
        )
    merged_entries = sorted(_entries_by_uid(merged).items())
    if merged.uidvalidity != side.uidvalidity:
        ops = tuple(_put(e) for _, e in merged_entries)
        return MergePlan(merged.uidvalidity, merged.uidnext, merged.highestmodseq, ops)
    have = _entries_by_uid(side)
    forgotten = sorted(have.keys() - dict(merged_entries).keys())
    if forgotten:
        raise ValueError(f"merged state lacks UIDs {forgotten} of the side: they could be reused")
    if merged.uidnext < side.uidnext or merged.highestmodseq < side.highestmodseq:
        raise ValueError("merged UIDNEXT or HIGHESTMODSEQ is below the side's")
    ops = tuple(_put(e) for uid, e in merged_entries if have.get(uid) != e)
    return MergePlan(merged.uidvalidity, merged.uidnext, merged.highestmodseq, ops)


def _put(entry: _Entry) -> PlanOp:
    return PutMessage(entry) if isinstance(entry, MessageState) else PutTombstone(entry)


def apply_plan(side: MailboxState, p: MergePlan) -> MailboxState:
    """``side`` after the executor carried out ``p``: the model the store must match.

    A plan with another UIDVALIDITY starts from an empty mailbox (see
    :class:`MergePlan`).  Each :class:`PutMessage` replaces whatever is at its
    UID, each :class:`PutTombstone` removes the live message at its UID and
    records the tombstone; then UIDNEXT and HIGHESTMODSEQ are the plan's.
    Under the same UIDVALIDITY a plan that would lower either is refused with
    :class:`ValueError` (I3), as is a result that is not well-formed.
    """
    if p.uidvalidity == side.uidvalidity:
        if p.uidnext < side.uidnext or p.highestmodseq < side.highestmodseq:
            raise ValueError("plan would lower UIDNEXT or HIGHESTMODSEQ (I3)")
        entries = _entries_by_uid(side)
    else:
        entries = {}
    for op in p.ops:
        entry: _Entry = op.message if isinstance(op, PutMessage) else op.tombstone
        entries[entry.uid] = entry
    ordered = [e for _, e in sorted(entries.items())]
    return MailboxState(
        uidvalidity=p.uidvalidity,
        uidnext=p.uidnext,
        highestmodseq=p.highestmodseq,
        messages=tuple(e for e in ordered if isinstance(e, MessageState)),
        tombstones=tuple(e for e in ordered if isinstance(e, Tombstone)),
    )
