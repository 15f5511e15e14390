"""The change log, outbox cursors and idempotent replica application.

A master store logs every write for its peers; shipping the log to a
replica store (bodies only where the replica lacks them) must reproduce the
master's logical state exactly (I4), whatever the operation mix, even when
entries are delivered twice (idempotence).  Contradicting records are never
applied over local data (I2): they mark the mailbox for resync.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest

from replicad.errors import ReplicadError
from replicad.store.changecodec import decode_change, encode_change
from replicad.store.index import AppendRequest
from replicad.store.mailstore import MailStore
from replicad.store.records import FlagsChanged, MessageAppended, MessagesCopied
from replicad.store.replica import Outcome
from replicad.store.schema import pack, unpack
from replicad.uidset import UidSet

FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "$Work"]
NAMES = ["INBOX", "Archive", "Lists", "Lists/Python"]


async def random_ops(store: MailStore, rng: random.Random, count: int) -> None:
    users = ["alice", "bob"]
    for _ in range(count):
        user = rng.choice(users)
        op = rng.random()
        try:
            if op < 0.35:
                body = rng.choice([b"dup body\r\n", b"x" * rng.randint(0, 3000)])
                mailbox = rng.choice(NAMES)
                await store.append(user, mailbox, body, flags=rng.sample(FLAGS, rng.randint(0, 2)))
            elif op < 0.45:
                await store.create_mailbox(user, rng.choice(NAMES))
            elif op < 0.6:
                mode = rng.choice(["add", "remove", "replace"])
                uids = UidSet.parse(rng.choice(["1:*", "1", "2:4", "*"]))
                await store.store_flags(user, rng.choice(NAMES), uids, mode, rng.sample(FLAGS, 2))
            elif op < 0.7:
                await store.expunge(user, rng.choice(NAMES), UidSet.parse(rng.choice(["1", "2:3"])))
            elif op < 0.8:
                uids = UidSet.parse(rng.choice(["1:*", "2", "3:5"]))
                await store.copy(user, rng.choice(NAMES), uids, rng.choice(NAMES))
            elif op < 0.88:
                await store.rename_mailbox(user, rng.choice(NAMES[1:]), rng.choice(NAMES[1:]))
            else:
                await store.delete_mailbox(user, rng.choice(NAMES[1:]))
        except ReplicadError:
            pass  # invalid random requests are part of the mix; they log nothing


async def ship(master: MailStore, replica: MailStore, peer: str, source: str) -> int:
    """Deliver the master's outbox for ``peer`` to ``replica``; return entries sent."""
    [backlog] = [b for b in await master.backlog() if b.peer == peer]
    sent = 0
    for seq, change in await master.outbox(backlog.acked, limit=100_000):
        missing = await replica.missing_bodies(change)
        bodies = [await master.read_blob(h) for h in missing]
        result = await replica.apply_replicated(change, source, bodies)
        assert result.outcome is not Outcome.DIVERGED, result
        await master.ack(peer, seq)
        sent += 1
    return sent


@pytest.mark.parametrize("seed", range(6))
async def test_shipping_the_log_reproduces_the_master(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    async with (
        MailStore.open(tmp_path / "master", peers=("b",)) as master,
        MailStore.open(tmp_path / "replica", peers=("a",)) as replica,
    ):
        for _ in range(4):
            await random_ops(master, rng, 40)
            await ship(master, replica, "b", "a")
            assert await replica.logical_state() == await master.logical_state()
        # Replaying everything again is a no-op (idempotent application).
        state = await replica.logical_state()
        for change in [c for _, c in await master.outbox(0, 100)]:
            result = await replica.apply_replicated(change, "a")
            assert result.outcome is Outcome.DUPLICATE
        assert await replica.logical_state() == state
        # Everything acknowledged: the log is truncated and holds no body.
        [backlog] = await master.backlog()
        assert backlog.depth == 0
        assert await master.outbox(0, 10) == []


async def test_changes_are_logged_in_the_same_transaction(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path, peers=("b", "c")) as store:
        rec = await store.append("alice", "INBOX", b"hello")
        entries = await store.outbox(0, 10)
        kinds = [type(c).__name__ for _, c in entries]
        assert kinds == ["MailboxCreated", "MessageAppended"]
        assert entries[1][1] == rec
        # A no-op write (nothing matched) logs nothing.
        await store.expunge("alice", "INBOX", UidSet.parse("99"))
        assert len(await store.outbox(0, 10)) == 2
        depth = {b.peer: b.depth for b in await store.backlog()}
        assert depth == {"b": 2, "c": 2}
        await store.ack("b", 2)
        assert {b.peer: b.depth for b in await store.backlog()} == {"b": 0, "c": 2}
        # c has not acked: entries stay, and so does the body of an expunged message.
        await store.expunge("alice", "INBOX", UidSet.parse("1"))
        assert await store.body_references(rec.body_hash) == 1  # the log's reference
        assert await store.read_blob(rec.body_hash) == b"hello"
        await store.ack("c", 3)
        await store.ack("b", 3)
        assert await store.body_references(rec.body_hash) == 0
    # The cursor survives a restart: the outbox resumes where the ack stopped.
    async with MailStore.open(tmp_path, peers=("b", "c")) as store:
        assert {b.peer: b.acked for b in await store.backlog()} == {"b": 3, "c": 3}


async def test_outbox_overflow_marks_mailboxes_for_resync(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path, peers=("b", "c"), max_lag=5) as store:
        await store.create_mailbox("alice", "Work")
        for i in range(3):
            await store.append("alice", "INBOX", b"m%d" % i)
            await store.ack("b", (await store.backlog())[0].acked + 2)
        assert await store.resync_marks() == []
        for i in range(3):
            await store.append("bob", "INBOX", b"b%d" % i)
        marks = await store.resync_marks()
        assert {(m.peer, m.reason) for m in marks} == {("c", "outbox-overflow")}
        boxes = {s.guid for u in ("alice", "bob") for s in await store.list_mailboxes(u)}
        assert {m.mailbox for m in marks} == boxes
        # c's cursor jumped to the head when bob's INBOX (seq 6) overflowed it; only
        # bob's three appends after that are queued.  b stayed within the bound.
        depth = {b.peer: b.depth for b in await store.backlog()}
        assert depth == {"b": 4, "c": 3}


async def test_a_reloaded_peer_list_adds_and_removes_cursors(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "a", peers=("b", "c")) as a:
        await a.append("alice", "INBOX", b"one")
        await a.mark_resync(["c"], b"m" * 16, "conflict", 0)
        head = await a.log_head()
        await a.set_peers(("b", "d"))
        backlog = {p.peer: (p.acked, p.depth) for p in await a.backlog()}
        # d starts at the head: its copy is built by a whole-node resync.
        assert backlog == {"b": (0, head), "d": (head, 0)}
        marks = {(m.peer, m.reason) for m in await a.resync_marks()}
        assert marks == {("d", "new-peer")}  # c's marks went with it
        assert await a.ack("c", head) is False  # a late ack from the removed peer
        await a.append("alice", "INBOX", b"two")
        assert {p.peer: p.depth for p in await a.backlog()} == {"b": head + 1, "d": 1}
        await a.ack("b", head + 1)
        await a.ack("d", head + 1)
        assert await a.outbox(0, 10) == []  # nobody waits: the log is truncated


async def test_a_retried_save_is_applied_once(tmp_path: Path) -> None:
    """A forwarded SAVE whose reply was lost comes again with the same GUID:
    the master answers with the first attempt and logs nothing new (I6)."""
    async with MailStore.open(tmp_path / "a", peers=("b",)) as a:
        request = AppendRequest(b"Subject: once\r\n\r\nbody\r\n", ("\\Seen",), None, b"g" * 16)
        first = await a.save_once("alice", "INBOX", request, depth=64)
        head = await a.log_head()
        again = await a.save_once("alice", "INBOX", request, depth=64)
        assert (again.uid, again.guid, again.modseq) == (first.uid, first.guid, first.modseq)
        assert await a.log_head() == head
        assert (await a.mailbox_status("alice", "INBOX")).messages == 1
        # Expunged meanwhile: still the first attempt's UID, nothing new.
        await a.expunge("alice", "INBOX", UidSet.of([first.uid]))
        gone = await a.save_once("alice", "INBOX", request, depth=64)
        assert gone.uid == first.uid
        assert (await a.mailbox_status("alice", "INBOX")).messages == 0
        # Another GUID is another delivery: a new message.
        other = await a.save_once("alice", "INBOX", replace(request, guid=b"h" * 16), depth=64)
        assert other.uid == first.uid + 1


async def test_a_copy_awaiting_resync_stamps_what_changes_nothing_here(tmp_path: Path) -> None:
    """I5: the master's copy may lack the other lineage's flag changes until
    the resync; a client's remove of a flag this copy does not show is still
    its latest intent, so it is stamped (with a modseq) while a mark is open."""
    async with MailStore.open(tmp_path / "a", peers=("b",)) as a:
        saved = await a.append("alice", "INBOX", b"m")
        quiet = await a.store_flags("alice", "INBOX", UidSet.of([1]), "remove", ["\\Flagged"])
        assert quiet.uids == () and quiet.modseq == saved.modseq  # RFC 7162: no change
        await a.mark_resync(["b"], saved.mailbox, "partition", saved.modseq)
        stamped = await a.store_flags("alice", "INBOX", UidSet.of([1]), "remove", ["\\Flagged"])
        assert stamped.uids == (1,) and stamped.modseq == saved.modseq + 1
        [info] = await a.fetch("alice", "INBOX", UidSet.of([1]))
        assert info.flags == ()
        state = await a.mailbox_state(saved.mailbox)
        assert state is not None
        [message] = state[1]
        assert [(m.flag, m.present) for m in message.marks] == [("\\Flagged", False)]


async def test_collision_is_never_applied_over_local_data(tmp_path: Path) -> None:
    async with (
        MailStore.open(tmp_path / "a", peers=("b",)) as a,
        MailStore.open(tmp_path / "b", peers=("a",)) as b,
    ):
        await a.append("alice", "INBOX", b"first")
        await ship(a, b, "b", "a")
        # A partition: both sides append UID 2 independently (b as a stand-in master).
        rec_a = await a.append("alice", "INBOX", b"from a")
        rec_b = await b.append("alice", "INBOX", b"from b")
        assert rec_a.uid == rec_b.uid == 2
        result = await b.apply_replicated(rec_a, "a", [b"from a"])
        assert result.outcome is Outcome.DIVERGED
        assert await b.fetch_body("alice", "INBOX", 2) == b"from b"  # I2: not overwritten
        [mark] = await b.resync_marks()
        assert (mark.peer, mark.mailbox, mark.reason) == ("a", rec_a.mailbox, "conflict")
        # The seed's FIXME: b expunged UID 2, a reuses it: visible through the tombstone.
        await b.expunge("alice", "INBOX", UidSet.parse("2"))
        result = await b.apply_replicated(rec_a, "a", [b"from a"])
        assert result.outcome is Outcome.DIVERGED and "reused after expunge" in result.detail


async def test_change_of_another_uid_space_is_never_applied(tmp_path: Path) -> None:
    """A change numbered under another UIDVALIDITY (a copy that a resync merge
    renumbered, on one side only) is refused and marked: same-GUID mailbox,
    same UIDs, yet the UIDs may name other messages (I2)."""
    async with (
        MailStore.open(tmp_path / "a", peers=("b",)) as a,
        MailStore.open(tmp_path / "b", peers=("a",)) as b,
    ):
        await a.append("alice", "INBOX", b"one")
        await ship(a, b, "b", "a")
        status = await b.mailbox_status("alice", "INBOX")
        save = await a.append("alice", "INBOX", b"two")
        flags = await a.store_flags("alice", "INBOX", UidSet.parse("1"), "add", ["\\Seen"])
        gone = await a.expunge("alice", "INBOX", UidSet.parse("1"))
        assert save.uidvalidity == flags.uidvalidity == gone.uidvalidity == status.uidvalidity
        other = status.uidvalidity + 1
        for change in (save, flags, gone):
            result = await b.apply_replicated(replace(change, uidvalidity=other), "a", [b"two"])
            assert result.outcome is Outcome.DIVERGED, change
            assert f"UIDVALIDITY {other}" in result.detail
        after = await b.mailbox_status("alice", "INBOX")
        assert (after.messages, after.highestmodseq) == (1, status.highestmodseq)  # untouched
        [mark] = await b.resync_marks()
        assert (mark.peer, mark.mailbox, mark.reason) == ("a", save.mailbox, "conflict")
        # The same records in the copy's own UID space apply.
        await ship(a, b, "b", "a")
        assert await b.logical_state() == await a.logical_state()


async def test_flag_change_for_another_message_at_the_uid_is_refused(tmp_path: Path) -> None:
    """Both sides of a partition append UID 2; one flags its message.  The
    change's modseq is above the other copy's, so only the GUID it names
    tells that it is meant for another message (I5: no message gets another's
    flags)."""
    async with (
        MailStore.open(tmp_path / "a", peers=("b",)) as a,
        MailStore.open(tmp_path / "b", peers=("a",)) as b,
    ):
        await a.append("alice", "INBOX", b"first")
        await ship(a, b, "b", "a")
        await a.append("alice", "INBOX", b"from a")
        await b.append("alice", "INBOX", b"from b")
        flags = await a.store_flags("alice", "INBOX", UidSet.parse("2"), "add", ["\\Flagged"])
        assert flags.modseq > (await b.mailbox_status("alice", "INBOX")).highestmodseq
        result = await b.apply_replicated(flags, "a")
        assert result.outcome is Outcome.DIVERGED and "UID 2 names another" in result.detail
        [msg] = await b.fetch("alice", "INBOX", UidSet.parse("2"))
        assert msg.flags == ()
        [mark] = await b.resync_marks()
        assert (mark.peer, mark.reason) == ("a", "conflict")


def test_log_entries_without_uidvalidity_still_decode() -> None:
    """Entries logged before changes carried their UIDVALIDITY decode with 0
    (unknown: applied without the check), so an upgraded node drains its log."""
    rec = MessageAppended("u", b"m" * 16, 7, b"g" * 16, 9, (), 5, 3, b"h" * 32, 11, 42)
    kind, *fields = unpack(encode_change(rec))
    assert fields[-1] == 42
    assert decode_change(pack([kind, *fields[:-1]])) == replace(rec, uidvalidity=0)
    flags = FlagsChanged("u", b"m" * 16, (3,), ("\\Seen",), (), 9, (), 11, 42, (b"g" * 16,))
    kind, *fields = unpack(encode_change(flags))
    assert decode_change(pack([kind, *fields[:-2]])) == replace(flags, uidvalidity=0, guids=())


async def test_append_without_body_is_refused(tmp_path: Path) -> None:
    async with (
        MailStore.open(tmp_path / "a", peers=("b",)) as a,
        MailStore.open(tmp_path / "b", peers=("a",)) as b,
    ):
        await a.append("alice", "INBOX", b"body")
        [(_, created), (_, appended)] = await a.outbox(0, 10)
        await b.apply_replicated(created, "a")
        assert await b.missing_bodies(appended) == [appended.body_hash]  # type: ignore[attr-defined]
        with pytest.raises(ReplicadError, match="needed for UID 1"):
            await b.apply_replicated(appended, "a")
        assert (await b.mailbox_status("alice", "INBOX")).messages == 0


def test_change_codec_round_trips() -> None:
    rec = MessageAppended(
        user="u",
        mailbox=b"m" * 16,
        uid=7,
        guid=b"g" * 16,
        modseq=9,
        flags=("\\Seen",),
        internaldate=5,
        size=3,
        body_hash=b"h" * 32,
    )
    copied = MessagesCopied(user="u", source_mailbox=b"s" * 16, source_uids=(3,), appended=(rec,))
    for change in (rec, copied):
        assert decode_change(encode_change(change)) == change


async def test_a_deleted_mailbox_is_never_brought_back(tmp_path: Path) -> None:
    """DELETE wins over writes made concurrently elsewhere (resync.md, mailbox
    conflicts): a replica that deleted a mailbox ignores the other side's
    later changes to it, and refuses a resync UPDATE that would recreate it."""
    from replicad.errors import MailboxDeletedError
    from replicad.model.merge import MergePlan

    async with (
        MailStore.open(tmp_path / "master", peers=("b",)) as master,
        MailStore.open(tmp_path / "replica", peers=("a",)) as replica,
    ):
        await master.create_mailbox("u", "Work")
        await ship(master, replica, "b", "a")
        guid = (await replica.mailbox_status("u", "Work")).guid
        await replica.delete_mailbox("u", "Work")  # on the other side of a partition
        assert await replica.mailbox_deleted(guid)
        await master.append("u", "Work", b"written meanwhile\r\n")
        await master.store_flags("u", "Work", UidSet.parse("1"), "add", ["\\Seen"])
        [backlog] = [b for b in await master.backlog() if b.peer == "b"]
        for _, change in await master.outbox(backlog.acked, limit=100):
            bodies = [await master.read_blob(h) for h in await replica.missing_bodies(change)]
            result = await replica.apply_replicated(change, "a", bodies)
            assert result.outcome is Outcome.DUPLICATE and "deleted" in result.detail
        with pytest.raises(ReplicadError):  # no mailbox left for the user at all
            await replica.list_mailboxes("u")
        assert await replica.resync_marks() == []
        with pytest.raises(MailboxDeletedError):
            await replica.apply_merge(
                guid, 1, MergePlan(7, 1, 1, ()), log=False, clear_marks=[], create=("u", "Work")
            )
        # A new mailbox of the same name is another mailbox (another GUID).
        await replica.create_mailbox("u", "Work")
        assert (await replica.mailbox_status("u", "Work")).guid != guid


async def test_an_outbox_batch_stops_at_its_byte_budget(tmp_path: Path) -> None:
    """The pump's read is bounded in body octets (stored form), and a change
    larger than the budget comes alone, only when the stream may send it."""
    rng = random.Random(3)
    async with MailStore.open(tmp_path, peers=("b",)) as store:
        await store.create_mailbox("alice", "INBOX")
        sizes = [1000, 0, 3000, 1000, 9000, 1000]
        for size in sizes:
            if size:
                await store.append("alice", "INBOX", rng.randbytes(size))  # raw: size + 1
            else:
                await store.store_flags("alice", "INBOX", UidSet.of([1]), "add", ["\\Seen"])
        first = (await store.outbox_batch("b", 0, 100)).entries[0][0]  # the CREATE
        whole = await store.outbox_batch("b", first, 100)
        assert len(whole.entries) == len(sizes) and not whole.full
        part = await store.outbox_batch("b", first, 100, max_bytes=4500)
        assert [len(part.entries), part.full] == [3, True]  # 1001 + 0 + 3001
        assert len(part.bodies) == 2  # the body left out is not held
        big = part.entries[-1][0] + 2  # the 9000-octet append
        alone = await store.outbox_batch("b", big - 1, 100, max_bytes=4500)
        assert [e[0] for e in alone.entries] == [big] and alone.full
        waits = await store.outbox_batch("b", big - 1, 100, max_bytes=4500, alone=False)
        assert waits.entries == [] and waits.full and not waits.bodies
