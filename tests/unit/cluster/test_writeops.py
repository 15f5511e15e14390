"""Write ops carry their own wire form: command -> op -> command round-trips, one table."""

from __future__ import annotations

import pytest

from replicad.blob import Blob
from replicad.cluster.changewire import MboxBinding
from replicad.cluster.writeops import (
    OP_FROM_COMMAND,
    WRITE_OPS,
    CopyOp,
    CreateOp,
    DeleteOp,
    Expect,
    ExpungeOp,
    ImportMailboxOp,
    ImportOp,
    RenameOp,
    SaveOp,
    StoreOp,
    SubscribeOp,
    WireExpect,
    WriteOp,
)
from replicad.errors import BadInputError
from replicad.protocol import commands as c
from replicad.uidset import UidSet

GUID = bytes(range(16))
OTHER = bytes(range(16, 32))


class FakeLink:
    """Binds mailbox names to ids in order of first use, as a link's MBOX would."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.ids: dict[str, int] = {}

    async def mbox(self, name: str) -> int:
        return self.ids.setdefault(name, len(self.ids))

    async def expect(self, name: str, uids: UidSet, relayed: Expect) -> WireExpect:
        # The client's node: the GUIDs it holds under the UIDs (here: one).
        pairs = relayed if relayed is not None else tuple((uid, GUID) for uid in uids)
        return tuple(c.UidGuid(uid, guid) for uid, guid in pairs)

    def bindings(self) -> dict[int, MboxBinding]:
        return {mid: MboxBinding(self.user, name, GUID) for name, mid in self.ids.items()}


OPS: list[WriteOp] = [
    SaveOp("alice", "INBOX", OTHER, 1_700_000_000, ("\\Seen",), Blob.compress(b"hi"), True),
    CopyOp("alice", "INBOX", "Work", UidSet.of([1, 2]), ((1, GUID), (2, OTHER))),
    ExpungeOp("alice", "Work", UidSet.of([3]), ((3, GUID),)),
    StoreOp("alice", "INBOX", UidSet.of([1]), ("\\Flagged",), ("\\Seen",), 7, ((1, GUID),)),
    CreateOp("alice", "Archive"),
    RenameOp("alice", "Archive", "Old"),
    DeleteOp("alice", "Old"),
    SubscribeOp("alice", "Lists/gone", False),
    ImportMailboxOp("alice", "Migrated", 1_600_000_000),
    ImportOp("alice", "Migrated", 42, OTHER, 1_500_000_000, ("$Work",), Blob.compress(b"m")),
]


@pytest.mark.parametrize("op", OPS, ids=lambda op: type(op).__name__)
async def test_a_forwarded_op_is_the_same_op_at_the_next_hop(op: WriteOp) -> None:
    link = FakeLink(op.user)
    command = await op.command(link)
    assert isinstance(command, type(op).COMMAND)
    assert OP_FROM_COMMAND[type(command)](command, link.bindings()) == op


def test_every_write_verb_is_in_the_one_table() -> None:
    assert {op.COMMAND for op in WRITE_OPS} == set(OP_FROM_COMMAND)
    assert len(OP_FROM_COMMAND) == len(WRITE_OPS) == len(OPS)
    assert {type(op) for op in OPS} == set(WRITE_OPS)


@pytest.mark.parametrize(
    "command",
    [
        c.Save(5, 0, GUID, (), Blob.compress(b"x")),
        c.Copy(0, 5, UidSet.of([1])),
        c.Copy(5, 0, UidSet.of([1])),
        c.Expunge(5, UidSet.of([1])),
        c.Store(5, UidSet.of([1]), ("a",), (), None),
        c.Import(5, 1, 0, GUID, (), Blob.compress(b"x")),
    ],
    ids=lambda cmd: cmd.VERB,
)
def test_an_unbound_mailbox_id_is_bad_input_not_a_crash(command: c.Command) -> None:
    """I9: a peer naming an id it never bound gets a NO (BADINPUT), whichever field."""
    bound = {0: MboxBinding("alice", "INBOX", GUID)}
    with pytest.raises(BadInputError, match="mailbox id 5 is not bound"):
        OP_FROM_COMMAND[type(command)](command, bound)


def test_only_idempotent_writes_are_sent_again_after_a_lost_reply() -> None:
    """I6: a SAVE (by GUID), EXPUNGE and STORE (by GUID, deltas) may be retried,
    and a SUBSCRIBE (the same register set again); a COPY would copy twice, a
    mailbox operation fail on its own first effect."""
    assert {t.__name__ for t in WRITE_OPS if t.retry_safe} == {
        "SaveOp",
        "ExpungeOp",
        "StoreOp",
        "SubscribeOp",
    }


def test_the_master_of_a_write_is_its_destination_or_the_namespace() -> None:
    assert [op.key_mailbox() for op in OPS] == [
        "INBOX",
        "Work",
        "Work",
        "INBOX",
        None,
        None,
        None,
        None,  # SUBSCRIBE: the namespace
        None,  # IMPORT-MAILBOX: the namespace, as CREATE
        "Migrated",
    ]
