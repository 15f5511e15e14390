"""The merge of divergent copies of one mailbox: I2, I3, I5, I6 on realistic histories.

Histories are built the way independent masters build them: a common base,
then 2 or 3 sides each applying its own operations to its own copy (append at
its own UIDNEXT, flag changes stamped by its own hybrid logical clock,
expunges leaving tombstones, rarely an index rebuild with a new
UIDVALIDITY), some sides lagging: a prefix of another side's history.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.model.merge import (
    UNKNOWN_GUID,
    FlagMark,
    MailboxState,
    MergePlan,
    MessageState,
    PutMessage,
    PutTombstone,
    Tombstone,
    apply_plan,
    join_marks,
    merge,
    plan,
)

FLAGS = ("$Junk", "\\Answered", "\\Deleted", "\\Flagged", "\\Seen")

# ---------------------------------------------------------------- helpers

Entry = MessageState | Tombstone


def guid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def make_message(uid: int, g: bytes, modseq: int, marks: Sequence[FlagMark] = ()) -> MessageState:
    """A message whose metadata derives from its GUID, as the same message has everywhere."""
    n = int.from_bytes(g, "big")
    return MessageState(
        uid=uid,
        guid=g,
        modseq=modseq,
        internaldate=1_700_000_000 + n,
        size=100 + n,
        body_hash=hashlib.sha256(g).digest(),
        marks=tuple(marks),
    )


def entries(state: MailboxState) -> dict[int, Entry]:
    out: dict[int, Entry] = {m.uid: m for m in state.messages}
    out.update((t.uid, t) for t in state.tombstones)
    return out


def live_guids(state: MailboxState) -> set[bytes]:
    return {m.guid for m in state.messages}


def tombstoned_guids(state: MailboxState) -> set[bytes]:
    return {g for t in state.tombstones for g in t.guids}


def without_modseqs(state: MailboxState) -> tuple[object, ...]:
    """Everything a merge decides but the modseqs."""
    return (
        state.uidvalidity,
        state.uidnext,
        tuple(replace(m, modseq=0) for m in state.messages),
        tuple(replace(t, modseq=0) for t in state.tombstones),
    )


def has_collision(states: Sequence[MailboxState]) -> bool:
    """True if merging ``states`` assigns new UIDs (I2 collision or UIDVALIDITY change)."""
    if len({s.uidvalidity for s in states}) > 1:
        return True
    known: dict[int, set[bytes]] = {}
    for s in states:
        for m in s.messages:
            known.setdefault(m.uid, set()).add(m.guid)
        for t in s.tombstones:
            known.setdefault(t.uid, set()).update(t.guids - {UNKNOWN_GUID})
    return any(len(gs) >= 2 for gs in known.values())


# ------------------------------------------------------- a model of one master

Op = tuple[object, ...]


@dataclass
class Replica:
    """One node acting as an independent master of the mailbox, as the store does."""

    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    clock: int = 0
    messages: dict[int, MessageState] = field(default_factory=dict)
    tombstones: dict[int, Tombstone] = field(default_factory=dict)

    def stamp(self, wall: int) -> int:
        # HybridClock.now: at least the wall time, strictly increasing.
        self.clock = max(wall, self.clock + 1)
        return self.clock

    def pick(self, index: int) -> int | None:
        uids = sorted(self.messages)
        return uids[index % len(uids)] if uids else None

    def apply(self, op: Op) -> None:
        kind = op[0]
        if kind == "append":
            _, g, flags, wall = op
            assert isinstance(g, bytes) and isinstance(flags, frozenset)
            assert isinstance(wall, int)
            stamp = self.stamp(wall)
            self.highestmodseq += 1
            marks = [FlagMark(f, stamp, True) for f in sorted(flags)]
            self.messages[self.uidnext] = make_message(self.uidnext, g, self.highestmodseq, marks)
            self.uidnext += 1
        elif kind == "flags":
            _, index, add, flags, wall = op
            assert isinstance(index, int) and isinstance(flags, frozenset)
            assert isinstance(wall, int)
            stamp = self.stamp(wall)
            uid = self.pick(index)
            if uid is None:
                return
            msg = self.messages[uid]
            old = set(msg.flags)
            new = old | flags if add else old - flags
            if new == old:
                return  # the store leaves the modseq of an unchanged message alone
            self.highestmodseq += 1
            delta = [FlagMark(f, stamp, bool(add)) for f in sorted(flags)]
            self.messages[uid] = replace(
                msg, modseq=self.highestmodseq, marks=join_marks(msg.marks, delta)
            )
        elif kind == "expunge":
            _, index = op
            assert isinstance(index, int)
            uid = self.pick(index)
            if uid is None:
                return
            self.highestmodseq += 1
            msg = self.messages.pop(uid)
            self.tombstones[uid] = Tombstone(uid, frozenset({msg.guid}), self.highestmodseq)
        elif kind == "rebuild":
            # The index was rebuilt: a new UIDVALIDITY, messages renumbered.
            _, uidvalidity = op
            assert isinstance(uidvalidity, int)
            self.highestmodseq += 1
            kept = [self.messages[u] for u in sorted(self.messages)]
            self.messages = {
                i: replace(m, uid=i, modseq=self.highestmodseq) for i, m in enumerate(kept, 1)
            }
            self.tombstones = {}
            self.uidvalidity = uidvalidity
            self.uidnext = len(kept) + 1
        else:  # pragma: no cover
            raise AssertionError(kind)

    def state(self) -> MailboxState:
        return MailboxState(
            uidvalidity=self.uidvalidity,
            uidnext=self.uidnext,
            highestmodseq=self.highestmodseq,
            messages=tuple(self.messages[u] for u in sorted(self.messages)),
            tombstones=tuple(self.tombstones[u] for u in sorted(self.tombstones)),
        )


def replay(base: Replica, ops: Sequence[Op]) -> Replica:
    r = copy.deepcopy(base)
    for op in ops:
        r.apply(op)
    return r


walls = st.integers(0, 40)  # shared by all sides, so their stamps interleave and sometimes tie
flag_sets = st.frozensets(st.sampled_from(FLAGS), min_size=1, max_size=2)


def raw_ops(appends: bool) -> st.SearchStrategy[Op]:
    flags = st.tuples(st.just("flags"), st.integers(0, 20), st.booleans(), flag_sets, walls)
    kinds: list[st.SearchStrategy[Op]] = [
        flags,
        flags,
        flags,
        st.tuples(st.just("expunge"), st.integers(0, 20)),
    ]
    if appends:
        app = st.tuples(st.just("append"), st.frozensets(st.sampled_from(FLAGS), max_size=2), walls)
        kinds += [app, app]
    return st.one_of(kinds)


@st.composite
def histories(
    draw: st.DrawFn, *, sides: tuple[int, int] = (2, 3), collisions: bool = True
) -> list[MailboxState]:
    """The states of 2 or 3 sides of one mailbox after a partition.

    With ``collisions=False`` only the first side appends (the others change
    flags and expunge, or lag behind it) and nobody rebuilds: merging never
    assigns new UIDs.
    """
    fresh = itertools.count(1)

    def own_ops(appends: bool, min_size: int, max_size: int) -> list[Op]:
        ops = []
        for op in draw(st.lists(raw_ops(appends), min_size=min_size, max_size=max_size)):
            # A fresh message GUID for every append, unique over the history.
            ops.append(("append", guid(next(fresh)), op[1], op[2]) if op[0] == "append" else op)
        return ops

    base = replay(Replica(uidvalidity=draw(st.integers(1, 3))), own_ops(True, 1, 7))
    histories_: list[list[Op]] = []
    for i in range(draw(st.integers(*sides))):
        ops: list[Op] = []
        lagging = i > 0 and draw(st.sampled_from([False, False, True]))
        if lagging:
            # It saw part of another side's history before the cut.
            src = histories_[draw(st.integers(0, i - 1))]
            ops = src[: draw(st.integers(0, len(src)))]
        ops += own_ops(collisions or i == 0, 0 if lagging else 1, 5)
        histories_.append(ops)
    if collisions and draw(st.sampled_from([False] * 5 + [True])):
        ops = histories_[draw(st.integers(0, len(histories_) - 1))]
        ops.insert(draw(st.integers(0, len(ops))), ("rebuild", 100 + next(fresh)))
    return [replay(base, ops).state() for ops in histories_]


marks_st = st.lists(
    st.builds(FlagMark, st.sampled_from(FLAGS), st.integers(0, 5), st.booleans()), max_size=6
)
FAST = settings(max_examples=100, deadline=None)  # the whole file in a few seconds


# ------------------------------------------------------------- properties


@FAST
@given(marks_st, marks_st, marks_st)
def test_join_marks_is_a_semilattice_join(
    a: list[FlagMark], b: list[FlagMark], c: list[FlagMark]
) -> None:
    assert join_marks(a, b) == join_marks(b, a)
    assert join_marks(join_marks(a, b), c) == join_marks(a, join_marks(b, c)) == join_marks(a, b, c)
    ab = join_marks(a, b)
    assert join_marks(ab, ab) == join_marks(ab) == ab
    assert [m.flag for m in ab] == sorted({m.flag for m in [*a, *b]})


@FAST
@given(histories())
def test_merge_is_commutative(states: list[MailboxState]) -> None:
    r = merge(states)
    for perm in itertools.permutations(states):
        assert merge(perm) == r


@FAST
@given(histories())
def test_merge_is_idempotent(states: list[MailboxState]) -> None:
    r = merge(states)
    assert merge([r]) == r
    assert merge([r, r]) == r
    for s in states:
        assert merge([s]) == s
        assert merge([r, s]) == r
        assert merge([s, r, s]) == r


@FAST
@given(histories(sides=(3, 3), collisions=False))
def test_merge_is_associative_without_uid_assignment(states: list[MailboxState]) -> None:
    a, b, c = states
    assert not has_collision(states)
    r = merge(states)
    left = merge([merge([a, b]), c])
    right = merge([a, merge([b, c])])
    # Everything but the modseqs is associative.  The modseqs cannot be (see
    # test_modseqs_are_not_associative): each grouping is checked for I3.
    assert without_modseqs(left) == without_modseqs(right) == without_modseqs(r)
    for grouped in (left, right):
        check_i3(states, grouped)


@FAST
@given(histories(sides=(3, 3)))
def test_merge_in_any_grouping_keeps_every_message(states: list[MailboxState]) -> None:
    a, b, c = states
    r = merge(states)
    groupings = [merge([merge([a, b]), c]), merge([a, merge([b, c])]), merge([merge([a, c]), b])]
    if not has_collision(states):
        assert all(without_modseqs(g) == without_modseqs(r) for g in groupings)
    expunged = set().union(*(tombstoned_guids(s) for s in states))
    survivors = set().union(*(live_guids(s) for s in states)) - expunged
    for grouped in [r, *groupings]:
        assert survivors <= live_guids(grouped)  # I6
        check_i2(states, grouped)  # a UID names one message, the one it named before
        check_i3(states, grouped)


@FAST
@given(histories())
def test_plan_turns_every_side_into_the_merge(states: list[MailboxState]) -> None:
    r = merge(states)
    assert plan(r, r).ops == ()
    for s in states:
        p = plan(s, r)
        assert apply_plan(s, p) == r
        assert (p.uidvalidity, p.uidnext, p.highestmodseq) == (
            r.uidvalidity,
            r.uidnext,
            r.highestmodseq,
        )
        if s.uidvalidity == r.uidvalidity:
            have = entries(s)
            changed = [uid for uid, e in sorted(entries(r).items()) if have.get(uid) != e]
            assert [op_uid(op) for op in p.ops] == changed
            if p.ops:
                assert r.highestmodseq > s.highestmodseq  # I3: every change is seen as one


def op_uid(op: PutMessage | PutTombstone) -> int:
    return op.message.uid if isinstance(op, PutMessage) else op.tombstone.uid


def check_i2(states: Sequence[MailboxState], r: MailboxState) -> None:
    assert not {m.uid for m in r.messages} & {t.uid for t in r.tombstones}
    result = entries(r)
    for s in states:
        if s.uidvalidity != r.uidvalidity:
            continue  # another UID space: its clients resync
        for m in s.messages:
            e = result[m.uid]
            if isinstance(e, MessageState):
                assert e.guid == m.guid
            else:
                assert m.guid in e.guids
        for t in s.tombstones:
            e = result[t.uid]
            assert isinstance(e, Tombstone) and t.guids <= e.guids


@FAST
@given(histories())
def test_i2_uids_are_never_reassigned(states: list[MailboxState]) -> None:
    check_i2(states, merge(states))


def check_i3(states: Sequence[MailboxState], r: MailboxState) -> None:
    result = entries(r)
    by_guid: dict[bytes, list[MessageState]] = {}
    for m in r.messages:
        by_guid.setdefault(m.guid, []).append(m)
    for s in states:
        assert r.highestmodseq >= s.highestmodseq
        assert r.uidnext >= s.uidnext
        have = entries(s) if s.uidvalidity == r.uidvalidity else {}
        for uid, e in result.items():
            if have.get(uid) != e:
                assert e.modseq > s.highestmodseq, (uid, e, s)
        # A message's modseq never goes down, wherever it now lives.
        for m in s.messages:
            assert all(n.modseq >= m.modseq for n in by_guid.get(m.guid, []))
    assert all(uid < r.uidnext for uid in result)
    assert all(e.modseq <= r.highestmodseq for e in result.values())


@FAST
@given(histories())
def test_i3_modseqs_and_uidnext_only_grow(states: list[MailboxState]) -> None:
    check_i3(states, merge(states))


@FAST
@given(histories())
def test_i5_every_flag_ends_as_its_last_writer_left_it(states: list[MailboxState]) -> None:
    r = merge(states)
    # Messages are identified by GUID: histories never copy one within the mailbox.
    winners: set[bytes] = set()
    versions: dict[bytes, list[MessageState]] = {}
    for s in states:
        if s.uidvalidity == r.uidvalidity:
            winners |= {m.guid for m in s.messages}
        for m in s.messages:
            versions.setdefault(m.guid, []).append(m)
    for m in r.messages:
        if m.guid not in winners:
            continue  # only on sides with an older UIDVALIDITY: moved in (rule 3)
        # A losing side's copy of a message the winners hold counts too (rule 3).
        assert m.marks == join_marks(*(v.marks for v in versions[m.guid]))
        for flag in FLAGS:
            marks = [k for v in versions[m.guid] for k in v.marks if k.flag == flag]
            last = max(marks, key=lambda k: (k.stamp, k.present), default=None)
            assert (flag in m.flags) == (last is not None and last.present)


@FAST
@given(histories())
def test_i6_no_message_is_lost(states: list[MailboxState]) -> None:
    r = merge(states)
    expunged = set().union(*(tombstoned_guids(s) for s in states))
    for s in states:
        assert live_guids(s) - expunged <= live_guids(r)
    # And nothing appears from nowhere.
    assert live_guids(r) <= set().union(*(live_guids(s) for s in states))


# ------------------------------------------------------------ explicit cases


def mailbox(
    messages: Sequence[MessageState],
    tombstones: Sequence[Tombstone] = (),
    *,
    uidvalidity: int = 7,
    uidnext: int | None = None,
    highestmodseq: int | None = None,
) -> MailboxState:
    all_entries: list[Entry] = [*messages, *tombstones]
    return MailboxState(
        uidvalidity=uidvalidity,
        uidnext=uidnext
        if uidnext is not None
        else 1 + max((e.uid for e in all_entries), default=0),
        highestmodseq=(
            highestmodseq
            if highestmodseq is not None
            else max((e.modseq for e in all_entries), default=1)
        ),
        messages=tuple(sorted(messages, key=lambda m: m.uid)),
        tombstones=tuple(sorted(tombstones, key=lambda t: t.uid)),
    )


def test_concurrent_flag_deltas_merge_per_flag() -> None:
    """I5: +\\Answered on one side, +\\Seen -\\Flagged on the other, from (\\Flagged)."""
    g = guid(1)
    base = make_message(1, g, 2, [FlagMark("\\Flagged", 1, True)])
    a = replace(
        base, modseq=3, marks=(FlagMark("\\Answered", 2, True), FlagMark("\\Flagged", 1, True))
    )
    b = replace(
        base, modseq=3, marks=(FlagMark("\\Flagged", 3, False), FlagMark("\\Seen", 3, True))
    )
    assert a.flags == ("\\Answered", "\\Flagged")
    r = merge([mailbox([a]), mailbox([b])])
    (m,) = r.messages
    assert m.flags == ("\\Answered", "\\Seen")
    assert m.modseq == 4 and r.highestmodseq == 4  # new to both sides (I3)
    assert merge([mailbox([base]), mailbox([a]), mailbox([b])]) == r


def test_an_exact_stamp_tie_goes_to_present() -> None:
    plus, minus = FlagMark("\\Seen", 5, True), FlagMark("\\Seen", 5, False)
    assert join_marks([plus], [minus]) == join_marks([minus], [plus]) == (plus,)


def test_a_uid_expunged_on_one_side_and_reused_on_the_other() -> None:
    g1, g2 = guid(1), guid(2)
    a = mailbox([], [Tombstone(5, frozenset({g1}), 9)], uidnext=6, highestmodseq=9)
    b = mailbox([make_message(5, g2, 8)], uidnext=6, highestmodseq=8)
    r = merge([a, b])
    assert r.tombstones == (Tombstone(5, frozenset({g1, g2}), 10, moved=((g2, 6),)),)
    (moved,) = r.messages
    assert moved == make_message(6, g2, 10)
    assert moved.uid >= max(a.uidnext, b.uidnext)
    assert (r.uidnext, r.highestmodseq) == (7, 10)
    for side in (a, b):
        assert apply_plan(side, plan(side, r)) == r
    assert [type(op) for op in plan(a, r).ops] == [PutTombstone, PutMessage]


def test_colliding_appends_are_all_moved_in_canonical_order() -> None:
    common = [make_message(u, guid(u), u + 1) for u in range(1, 11)]
    ga1, ga2, gb1, gb2 = guid(40), guid(20), guid(30), guid(10)
    a = mailbox([*common, make_message(11, ga1, 12), make_message(12, ga2, 13)])
    b = mailbox([*common, make_message(11, gb1, 12), make_message(12, gb2, 14)], uidnext=13)
    r = merge([a, b])
    assert r.tombstones == (
        Tombstone(11, frozenset({ga1, gb1}), 15, moved=((gb1, 13), (ga1, 14))),
        Tombstone(12, frozenset({ga2, gb2}), 15, moved=((gb2, 15), (ga2, 16))),
    )
    assert r.messages[:10] == tuple(common)  # untouched: modseqs kept
    # (old uid, guid): (11, gb1), (11, ga1), (12, gb2), (12, ga2), from max UIDNEXT 13.
    assert [(m.uid, m.guid) for m in r.messages[10:]] == [
        (13, gb1),
        (14, ga1),
        (15, gb2),
        (16, ga2),
    ]
    assert all(m.modseq == 15 for m in r.messages[10:])
    assert (r.uidnext, r.highestmodseq) == (17, 15)
    assert merge([b, a]) == r


def test_a_lagging_side_catches_up_to_the_other_exactly() -> None:
    base = Replica(uidvalidity=3)
    ops: list[Op] = [
        ("append", guid(1), frozenset({"\\Seen"}), 1),
        ("append", guid(2), frozenset(), 2),
        ("flags", 0, True, frozenset({"\\Flagged"}), 3),
        ("append", guid(3), frozenset(), 4),
        ("expunge", 1),
        ("flags", 0, False, frozenset({"\\Seen"}), 6),
    ]
    a = replay(base, ops).state()
    b = replay(base, ops[:3]).state()
    assert merge([a, b]) == merge([b, a]) == a  # every modseq kept
    p = plan(b, a)
    assert apply_plan(b, p) == a
    assert [op_uid(op) for op in p.ops] == [1, 2, 3]


def test_a_uidvalidity_conflict_keeps_every_message() -> None:
    g1, g2, g3, g4 = guid(1), guid(2), guid(3), guid(4)
    winner = mailbox([make_message(1, g1, 2), make_message(2, g2, 3)], uidvalidity=20)
    loser = mailbox(
        [make_message(1, g2, 5), make_message(2, g4, 6), make_message(4, g3, 7)],
        [Tombstone(3, frozenset({g1}), 6)],
        uidvalidity=10,
        highestmodseq=7,
    )
    r = merge([winner, loser])
    assert r.uidvalidity == 20
    # Nothing lost but what a side expunged: the loser expunged g1, which the
    # winner holds (the same message: expunge wins across UID spaces too).
    assert live_guids(r) == {g2, g3, g4}
    # The winner's messages stay; the loser's others follow in (old uid, guid) order.
    assert [(m.uid, m.guid) for m in r.messages] == [(2, g2), (5, g4), (6, g3)]
    assert [(t.uid, t.guids) for t in r.tombstones] == [(1, frozenset({g1}))]
    # Everything is new to the loser, whose clients resync: modseqs above its own.
    assert all(m.modseq > loser.highestmodseq for m in r.messages)
    assert r.uidnext == 7
    for side in (winner, loser):
        assert apply_plan(side, plan(side, r)) == r
    assert merge([r, loser]) == merge([winner, r]) == r


def test_an_expunge_wins_over_a_concurrent_flag_change() -> None:
    g = guid(1)
    a = mailbox([], [Tombstone(1, frozenset({g}), 3)])
    b = mailbox([make_message(1, g, 3, [FlagMark("\\Seen", 9, True)])])
    r = merge([a, b])
    assert r.messages == () and r.tombstones == (Tombstone(1, frozenset({g}), 4),)


def test_an_expunge_never_seen_here_still_wins() -> None:
    g = guid(1)
    a = mailbox([], [Tombstone(1, frozenset({UNKNOWN_GUID}), 3)])
    b = mailbox([make_message(1, g, 2)])
    r = merge([a, b])
    assert r.tombstones == (Tombstone(1, frozenset({UNKNOWN_GUID, g}), 4),)
    c = mailbox([make_message(1, guid(2), 2)])  # a collision with the unknown side too
    r3 = merge([a, b, c])
    assert r3.tombstones[0].guids == {UNKNOWN_GUID, g, guid(2)}
    assert live_guids(r3) == {g, guid(2)}  # both moved: the unknown expunge names neither


def test_a_copy_within_the_mailbox_collides_like_any_message() -> None:
    # Copies made before protocol version 5 share a GUID: one GUID live at two UIDs.
    g1, g2 = guid(1), guid(2)
    a = mailbox([make_message(1, g1, 2), make_message(2, g1, 3)])
    b = mailbox([make_message(1, g1, 2), make_message(2, g2, 3)])
    r = merge([a, b])
    assert [(m.uid, m.guid) for m in r.messages] == [(1, g1), (3, g1), (4, g2)]
    assert r.tombstones == (Tombstone(2, frozenset({g1, g2}), 4, moved=((g1, 3), (g2, 4))),)


def test_disagreeing_metadata_resolves_to_the_greatest() -> None:
    m = make_message(1, guid(1), 2)
    bigger = replace(m, size=m.size + 1)
    for states in ([mailbox([m]), mailbox([bigger])], [mailbox([bigger]), mailbox([m])]):
        r = merge(states)
        # Same modseq, different content: new to one side, so a new modseq (I3).
        assert r.messages == (replace(bigger, modseq=3),)


def test_uid_collisions_with_a_third_side_keep_versions_joined() -> None:
    g1, g2 = guid(1), guid(2)
    seen = [FlagMark("\\Seen", 4, True)]
    flagged = [FlagMark("\\Flagged", 5, True)]
    a = mailbox([make_message(1, g1, 3, seen)], highestmodseq=3)
    b = mailbox([make_message(1, g2, 3)], highestmodseq=3)
    c = mailbox([make_message(1, g1, 4, flagged)], highestmodseq=4)
    r = merge([a, b, c])
    moved = {m.guid: m for m in r.messages}
    assert moved[g1].flags == ("\\Flagged", "\\Seen")


def test_modseqs_are_not_associative() -> None:
    """A genuine limit: three sides each changing one message's flags.

    ``merge([a, b, c])`` needs one modseq above every side's HIGHESTMODSEQ;
    ``merge([merge([a, b]), c])`` needs one above the intermediate merge's,
    which is already one more.  No choice of scalar modseqs can make both
    groupings agree while keeping I3, so the contents are associative and the
    modseqs are not: the master merges all sides at once.
    """
    g = guid(1)
    base = make_message(1, g, 2)

    def side(flag: str, stamp: int) -> MailboxState:
        return mailbox([replace(base, modseq=3, marks=(FlagMark(flag, stamp, True),))])

    a, b, c = side("\\Seen", 3), side("\\Flagged", 4), side("\\Answered", 5)
    r = merge([a, b, c])
    grouped = merge([merge([a, b]), c])
    assert without_modseqs(grouped) == without_modseqs(r)
    assert (r.highestmodseq, grouped.highestmodseq) == (4, 5)
    check_i3([a, b, c], grouped)


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_message(0, guid(1), 1),
        lambda: make_message(1, UNKNOWN_GUID, 1),
        lambda: make_message(1, b"short", 1),
        lambda: replace(make_message(1, guid(1), 1), body_hash=b"x"),
        lambda: make_message(1, guid(1), 1, [FlagMark("b", 1, True), FlagMark("a", 1, True)]),
        lambda: make_message(1, guid(1), 1, [FlagMark("a", 1, True), FlagMark("a", 2, True)]),
        lambda: Tombstone(1, frozenset(), 1),
        lambda: MailboxState(
            1, 3, 1, (make_message(2, guid(1), 1), make_message(1, guid(2), 1)), ()
        ),
        lambda: mailbox([make_message(1, guid(1), 1)], [Tombstone(1, frozenset({guid(1)}), 1)]),
        lambda: mailbox([make_message(3, guid(1), 1)], uidnext=3),
        lambda: mailbox([make_message(3, guid(1), 5)], highestmodseq=4),
        lambda: MergePlan(1, 3, 3, (PutTombstone(Tombstone(2, frozenset({guid(1)}), 1)),) * 2),
        lambda: merge([]),
    ],
)
def test_malformed_input_is_refused(build: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        build()


def test_plan_refuses_what_ops_cannot_express() -> None:
    s = mailbox([make_message(1, guid(1), 2), make_message(2, guid(2), 3)], uidnext=5)
    with pytest.raises(ValueError, match="lacks UIDs"):
        plan(s, mailbox([make_message(1, guid(1), 2)], uidnext=5))  # would free UID 2
    with pytest.raises(ValueError, match="UIDNEXT"):
        plan(s, replace(s, uidnext=4))
    with pytest.raises(ValueError, match="UIDVALIDITY"):
        plan(s, replace(s, uidvalidity=1))
    with pytest.raises(ValueError, match="I3"):
        apply_plan(s, MergePlan(s.uidvalidity, 3, 3, ()))


def test_a_late_side_s_flag_change_and_expunge_follow_the_move() -> None:
    """Rule 6: C was cut off before the A/B merge moved g1 from UID 5 to 7."""
    g0, g1, g2 = guid(1), guid(2), guid(3)
    base = [make_message(1, g0, 1)]
    a = mailbox([*base, make_message(5, g1, 5)], uidnext=6, highestmodseq=5)
    b = mailbox([*base, make_message(5, g2, 5)], uidnext=6, highestmodseq=5)
    r = merge([a, b])
    assert dict(r.tombstones[0].moved) == {g1: 6, g2: 7} or dict(r.tombstones[0].moved) == {
        g2: 6,
        g1: 7,
    }
    target = dict(r.tombstones[0].moved)[g1]
    # C had A's g1 at UID 5 and flagged it later (stamp 50) ...
    flagged = replace(make_message(5, g1, 6), marks=(FlagMark("\\Flagged", 50, True),))
    c = mailbox([*base, flagged], uidnext=6, highestmodseq=6)
    r2 = merge([r, c])
    moved_copy = next(m for m in r2.messages if m.guid == g1)
    assert moved_copy.uid == target and "\\Flagged" in moved_copy.flags
    # ... or expunged it: the expunge wins at the new UID too.
    d = mailbox(list(base), [Tombstone(5, frozenset({g1}), 6)], uidnext=6, highestmodseq=6)
    r3 = merge([r, d])
    assert g1 not in {m.guid for m in r3.messages}
    assert g2 in {m.guid for m in r3.messages}  # the other moved message is untouched
    for side in (r, d):
        assert apply_plan(side, plan(side, r3)) == r3
    assert merge([r3, d]) == r3 and merge([r3, r]) == r3  # idempotent


def test_concurrent_masters_moving_one_collision_settle_on_one_copy() -> None:
    """Rule 7: two masters merged the same UID-5 collision concurrently; Y's
    copy had one more message (UID 6), so their moves went to different UIDs.
    Merging the two results keeps every message exactly once, and an expunge
    of one of the copies in either lineage expunges the message."""
    g0, g1, g2, g3 = guid(1), guid(2), guid(3), guid(4)
    base = [make_message(1, g0, 1)]
    a = mailbox([*base, make_message(5, g1, 5)], uidnext=6, highestmodseq=5)
    b = mailbox([*base, make_message(5, g2, 5)], uidnext=6, highestmodseq=5)
    y = mailbox([*base, make_message(5, g1, 5), make_message(6, g3, 6)], uidnext=7, highestmodseq=6)
    rx, ry = merge([a, b]), merge([y, b])
    assert dict(rx.tombstones[0].moved) != dict(ry.tombstones[0].moved)  # the race
    r = merge([rx, ry])
    assert sorted(m.guid for m in r.messages) == [g0, g1, g2, g3]  # once each
    for side in (rx, ry):
        assert apply_plan(side, plan(side, r)) == r
        assert merge([r, side]) == r  # idempotent
    # Y's lineage flagged its copy of g1: the flag survives on the one copy.
    at_y = next(m for m in ry.messages if m.guid == g1)
    flagged = replace(at_y, modseq=ry.highestmodseq + 1, marks=(FlagMark("\\Seen", 70, True),))
    ry_flagged = replace(
        ry,
        highestmodseq=ry.highestmodseq + 1,
        messages=tuple(flagged if m.guid == g1 else m for m in ry.messages),
    )
    (kept,) = [m for m in merge([rx, ry_flagged]).messages if m.guid == g1]
    assert kept.flags == ("\\Seen",)
    # Y's lineage expunged its copy of g1: no copy of it comes back.
    ry_gone = replace(
        ry,
        highestmodseq=ry.highestmodseq + 1,
        messages=tuple(m for m in ry.messages if m.guid != g1),
        tombstones=(
            *ry.tombstones,
            Tombstone(at_y.uid, frozenset({g1}), ry.highestmodseq + 1),
        ),
    )
    r2 = merge([rx, ry_gone])
    assert sorted(m.guid for m in r2.messages) == [g0, g2, g3]
    assert merge([r2, rx]) == r2 and merge([r2, ry_gone]) == r2


def test_a_losing_lineage_s_expunge_of_one_of_two_copies_holds() -> None:
    """Rule 3 with two instances of one GUID (copies made before protocol version 5): two masters
    merged the same copies concurrently, so both lineages number them alike
    under different UIDVALIDITYs; the loser expunged the copy at UID 8 while
    the winner flagged it.  Expunge wins: one copy stays (simulator seed 4910)."""
    g, other = guid(1), guid(2)
    seen = (FlagMark("\\Seen", 50, True),)
    common = [make_message(3, g, 3), make_message(4, other, 4)]
    winner = mailbox([*common, make_message(8, g, 9, seen)], uidvalidity=19, highestmodseq=9)
    loser = mailbox(common, [Tombstone(8, frozenset({g}), 9)], uidvalidity=15, highestmodseq=9)
    r = merge([winner, loser])
    assert r.uidvalidity == 19
    assert sorted(m.uid for m in r.messages if m.guid == g) == [3]
    assert any(t.uid == 8 and g in t.guids for t in r.tombstones)
    assert merge([loser, winner]) == r
    for side in (winner, loser):
        assert apply_plan(side, plan(side, r)) == r
    assert merge([r, loser]) == r and merge([r, winner]) == r  # idempotent
    # A copy the winners made that the loser never saw is not taken with it.
    third = make_message(9, g, 10)
    winner3 = mailbox([*common, make_message(8, g, 9), third], uidvalidity=19)
    r3 = merge([winner3, loser])
    assert sorted(m.uid for m in r3.messages if m.guid == g) == [3, 9]
    # Expunges both lineages already share take nothing more.
    shared = [Tombstone(2, frozenset({g}), 2)]
    w = mailbox(common, shared, uidvalidity=19, highestmodseq=9)
    lo = mailbox(common, shared, uidvalidity=15, highestmodseq=9)
    assert sorted(m.uid for m in merge([w, lo]).messages if m.guid == g) == [3]


def test_a_losing_lineage_s_expunge_of_a_message_no_side_holds_is_remembered() -> None:
    """Rule 3: the loser expunged a message the winners never had; the
    result keeps a tombstone for it, so a third lineage that still holds the
    message, merged later, does not bring it back (simulator seed 9765)."""
    g, kept = guid(1), guid(2)
    winner = mailbox([make_message(1, kept, 2)], uidvalidity=21)
    loser = mailbox([], [Tombstone(2, frozenset({g}), 3)], uidvalidity=18)
    third = mailbox([make_message(1, g, 2)], uidvalidity=5)
    r = merge([winner, loser])
    assert g in tombstoned_guids(r)
    assert live_guids(merge([r, third])) == {kept}
    assert merge([r, loser]) == r  # idempotent
