"""A master's logged merge (``* UPDATE`` on the change stream) reaches a
follower through frames within the link's limit, whatever the merge's size,
and the follower ends at the master's state (resync.md §7, §9; I4, I9)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from replicad.cluster.changewire import MboxBinding, from_wire, mailboxes_of, to_wire
from replicad.model import planparts
from replicad.model.digest import state_digest
from replicad.model.merge import FlagMark, MailboxState, MessageState, PutMessage, merge, plan
from replicad.protocol.commands import UpdateAppend, UpdateChange, encode_untagged
from replicad.protocol.frames import FrameEncoder
from replicad.store.blobs import body_hash
from replicad.store.mailstore import MailStore
from replicad.store.records import MailboxMerged, MessageAppended
from replicad.store.replica import Outcome
from replicad.uidset import UidSet

#: The smallest frame limit a peer may announce in HELLO (handshake.md).
LIMIT = 64 * 1024


async def state_of(store: MailStore, mailbox: bytes) -> MailboxState:
    found = await store.mailbox_state(mailbox)
    assert found is not None
    row, messages, gone = found
    return MailboxState(
        row.uidvalidity, row.uidnext, row.highestmodseq, tuple(messages), tuple(gone)
    )


async def stream(
    master: MailStore, follower: MailStore, after: int, shipped: list[bytes] | None = None
) -> tuple[int, list[int]]:
    """Carry the master's log after ``after`` to the follower as the runtime
    does (frames encoded under :data:`LIMIT`, decoded, applied); the last
    sequence number and the sizes of the ``* UPDATE`` frames.  ``shipped``
    collects the body hashes the ``* UPDATE`` frames carried."""
    batch = await master.outbox_batch("b", after, 1000)
    sizes = []
    encoder = FrameEncoder(LIMIT)
    for seq, change, _ in batch.entries:
        ids: dict[bytes, int] = {}
        bindings: dict[int, MboxBinding] = {}
        for number, guid in enumerate(mailboxes_of(change), 1):
            status = await master.mailbox_by_guid(guid)
            assert status is not None
            ids[guid] = number
            bindings[number] = MboxBinding(status.user, status.name, guid)
        body = batch.bodies.get(change.body_hash) if isinstance(change, MessageAppended) else None
        frame = to_wire(seq, change, ids, body, batch.bodies)
        encoded = b"".join(encoder.encode_parts(encode_untagged(frame)))  # raises if too large
        if isinstance(change, MailboxMerged):
            sizes.append(len(encoded))
            assert isinstance(frame, UpdateChange)
            for op in frame.ops:
                if isinstance(op, UpdateAppend) and op.body is not None and shipped is not None:
                    shipped.append(op.body_hash)
        record, carried = from_wire(frame, bindings)
        [result] = await follower.apply_replicated_many([(record, carried)], "a")
        assert not isinstance(result, Exception), result
        assert result.outcome is Outcome.APPLIED, result
        after = seq
    return after, sizes


async def test_a_merge_larger_than_a_frame_is_logged_in_parts_a_follower_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planparts, "PART_BYTES", LIMIT // 2)
    async with (
        MailStore.open(tmp_path / "a", peers=("b",)) as a,
        MailStore.open(tmp_path / "b", peers=("a",)) as b,
    ):
        for i in range(3):
            await a.append("alice", "INBOX", b"Subject: %d\r\n\r\nsmall" % i)
        await a.store_flags("alice", "INBOX", UidSet.of([1]), "add", ["\\Seen"])
        seq, _ = await stream(a, b, 0)
        mailbox = (await a.mailbox_status("alice", "INBOX")).guid
        ours = await state_of(a, mailbox)
        assert state_digest(await state_of(b, mailbox)) == state_digest(ours)

        # A peer's copy: another message at UID 2 (a collision: both move to
        # new UIDs, so a tombstone in the first part and the moved message in
        # a later one) and eight new messages whose bodies together are far
        # above one frame.
        bodies = [b"Subject: big %d\r\n\r\n" % i + bytes([65 + i]) * 20_000 for i in range(9)]
        top = ours.highestmodseq

        def message(uid: int, data: bytes, modseq: int) -> MessageState:
            guid = body_hash(data)[:16]
            return MessageState(uid, guid, modseq, 1_700_000_000, len(data), body_hash(data), ())

        # And a later flag change on UID 1: re-stamped on both sides (I5).
        theirs_messages = [
            replace(m, marks=(FlagMark("$Peer", m.marks[0].stamp + 1, True), *m.marks))
            if m.uid == 1
            else m
            for m in ours.messages
            if m.uid != 2
        ]
        theirs_messages.append(message(2, bodies[8], top + 1))
        theirs_messages += [message(4 + i, bodies[i], top + 2 + i) for i in range(8)]
        theirs = MailboxState(
            ours.uidvalidity,
            12,
            top + 10,
            tuple(sorted(theirs_messages, key=lambda m: m.uid)),
            (),
        )
        merged = merge([ours, theirs])
        own_plan = plan(ours, merged)
        await a.apply_merge(mailbox, ours.highestmodseq, own_plan, bodies, log=True)
        assert state_digest(await state_of(a, mailbox)) == state_digest(merged)

        shipped: list[bytes] = []
        _, sizes = await stream(a, b, seq, shipped)
        assert len(sizes) >= 8  # one body of 20 KB per part of at most 32 KiB
        assert max(sizes) <= LIMIT
        assert state_digest(await state_of(b, mailbox)) == state_digest(merged)
        # The follower held the re-flagged message: its body did not cross
        # (resync.md §7).  The peer's nine did, once each, and so did the
        # message moved off UID 2, whose old UID a part before the one that
        # puts it tombstoned (its body is released there).
        moved = next(m for m in ours.messages if m.uid == 2).body_hash
        assert sorted(shipped) == sorted([moved, *(body_hash(data) for data in bodies)])
        puts = [op for op in own_plan.ops if isinstance(op, PutMessage)]
        assert len(puts) == 11  # nine new, the moved one, UID 1


def test_parts_applied_in_order_are_the_whole_plan() -> None:
    """The pure model: each part is a run of UIDs, within the budget unless one
    operation alone exceeds it, and the parts compose to the plan."""
    from replicad.model.merge import apply_plan

    def message(uid: int, size: int) -> MessageState:
        return MessageState(uid, bytes([uid]) * 16, uid + 1, 1, size, bytes([uid]) * 32, ())

    side = MailboxState(7, 2, 2, (message(1, 10),), ())
    merged = MailboxState(9, 8, 9, tuple(message(u, 100 * u) for u in range(1, 8)), ())
    whole = plan(side, merged)  # a new UIDVALIDITY: the first part empties the UID space
    parts = planparts.split_plan(whole, 700, lambda op: planparts.op_weight(op) - 128)
    assert [[op.message.uid for op in p.ops] for p in parts] == [  # type: ignore[union-attr]
        [1, 2, 3],
        [4],
        [5],
        [6],
        [7],
    ]
    state = side
    for part in parts:
        state = apply_plan(state, part)
    assert state == apply_plan(side, whole) == merged


def test_parts_stay_within_the_frame_value_budget() -> None:
    """A merge of many small messages is cut by values, not only octets: a
    part never exceeds half the receiver's value budget (framing.md §3),
    and its operations count as they are encoded."""
    from replicad.protocol import commands as c
    from replicad.protocol.frames import MAX_FRAME_VALUES

    def message(uid: int) -> MessageState:
        marks = (FlagMark("$Work", uid, False), FlagMark("\\Seen", uid, True))
        return MessageState(uid, uid.to_bytes(16, "big"), uid + 1, 1, 10, bytes(32), marks)

    count = 120_000
    merged = MailboxState(
        9, count + 1, count + 2, tuple(message(u) for u in range(1, count + 1)), ()
    )
    whole = plan(MailboxState(9, 1, 1, (), ()), merged)
    parts = planparts.split_plan(whole)
    assert len(parts) > 1
    assert sum(len(p.ops) for p in parts) == len(whole.ops)
    for part in parts:
        assert sum(planparts.op_values(op) for op in part.ops) <= planparts.PART_VALUES
        assert len(part.ops) <= 100_000
    # The count is the encoding's: one op as UPDATE carries it.
    op = whole.ops[0]
    assert isinstance(op, PutMessage)
    m = op.message
    wire = c.UpdateAppend(
        m.uid,
        m.guid,
        m.modseq,
        m.internaldate,
        m.size,
        m.body_hash,
        tuple((k.flag, k.stamp, k.present) for k in m.marks),
        None,
    )
    encoded = c.UPDATE_OPS.encode((wire,))[0]

    def values(v: object) -> int:
        return 1 + sum(values(x) for x in v) if isinstance(v, list) else 1

    assert values(encoded) == planparts.op_values(op)
    assert planparts.PART_VALUES * 2 == MAX_FRAME_VALUES
