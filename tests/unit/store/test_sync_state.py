"""What a SYNC answers (replicad.store.statesync.read_sync) and the digest an
incremental SYNC is checked with (resync.md §3): the entries sent and the
digest of the others together describe the whole copy, for any ``since``
and UID set."""

from __future__ import annotations

from pathlib import Path

from replicad.model.digest import entries_digest
from replicad.model.merge import FlagMark, MessageState, Tombstone
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet


async def test_sent_entries_and_the_rest_digest_cover_the_whole_copy(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "a") as a:
        for i in range(6):
            await a.append("alice", "INBOX", b"m%d" % i)  # UIDs 1..6, modseqs 2..7
        await a.store_flags("alice", "INBOX", UidSet.of([2]), "add", ["\\Seen"])  # modseq 8
        await a.expunge("alice", "INBOX", UidSet.of([4]))  # modseq 9
        mailbox = (await a.mailbox_status("alice", "INBOX")).guid
        found = await a.mailbox_state(mailbox)
        assert found is not None
        _, messages, gone = found

        for since, uids in [(0, None), (7, None), (5, UidSet.of([1, 3])), (100, UidSet.of([6]))]:
            answer = await a.sync_state(mailbox, since, uids)
            assert answer is not None
            row, sent, sent_gone, rest = answer
            wanted = set(uids) if uids is not None else set()
            assert {m.uid for m in sent} == {
                m.uid for m in messages if m.modseq > since or m.uid in wanted
            }
            assert {t.uid for t in sent_gone} == {
                t.uid for t in gone if t.modseq > since or t.uid in wanted
            }
            # What a master holding the same copy computes for the entries not sent.
            sent_uids = {m.uid for m in sent} | {t.uid for t in sent_gone}
            kept = [m for m in messages if m.uid not in sent_uids]
            buried = [t for t in gone if t.uid not in sent_uids]
            assert rest == entries_digest(kept, buried)
            assert row.highestmodseq == 9

        # A copy that differs below ``since`` gives another rest digest.
        before = await a.sync_state(mailbox, 7, None)
        await a.store_flags("alice", "INBOX", UidSet.of([1]), "add", ["\\Flagged"])  # modseq 10
        after = await a.sync_state(mailbox, 7, None)
        assert before is not None and after is not None
        assert before[3] != after[3]  # UID 1 moved above since: no longer in the rest
        assert [m.uid for m in after[1]] == [1, 2]


def test_the_entries_digest_ignores_order_but_not_content() -> None:
    def message(uid: int, seen: bool) -> MessageState:
        marks = (FlagMark("\\Seen", 5, seen),)
        return MessageState(uid, bytes([uid]) * 16, 3, 1_700_000_000, 10, b"h" * 32, marks)

    gone = Tombstone(3, frozenset({b"g" * 16}), 4)
    forward = entries_digest([message(1, True), message(2, False)], [gone])
    assert forward == entries_digest([message(2, False), message(1, True)], [gone])
    assert forward != entries_digest([message(1, True), message(2, True)], [gone])
    assert forward != entries_digest([message(1, True), message(2, False)], [])
    assert entries_digest([], []) != forward and len(forward) == 32
