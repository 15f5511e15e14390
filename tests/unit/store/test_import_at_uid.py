"""A migration's store writes: a mailbox under a given UIDVALIDITY, messages at
given UIDs (verbs.md IMPORT-MAILBOX, IMPORT; I3: UIDs never go back)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.errors import AlreadyExistsError, BadInputError, UidNotAboveError
from replicad.store.index import AppendRequest
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet


async def test_mailbox_keeps_the_given_uidvalidity(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        created = await store.create_mailbox_at("alice", "Archive", 12345)
        assert created.uidvalidity == 12345
        assert (await store.mailbox_status("alice", "Archive")).uidvalidity == 12345
        with pytest.raises(AlreadyExistsError):
            await store.create_mailbox_at("alice", "Archive", 777)
        with pytest.raises(BadInputError):
            await store.create_mailbox_at("alice", "Other", 0)


async def test_messages_land_at_their_uids_with_gaps_and_never_below(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        await store.create_mailbox_at("alice", "INBOX", 99)
        items = [
            AppendRequest(b"Subject: a\r\n\r\na\r\n", ("\\Seen",), 1_600_000_000, None, 3),
            AppendRequest(b"Subject: b\r\n\r\nb\r\n", ("$Work",), 1_600_000_100, None, 10),
        ]
        await store.append_many("alice", "INBOX", items)
        infos = await store.fetch("alice", "INBOX", UidSet.parse("1:*"))
        assert [(i.uid, i.flags, i.internaldate) for i in infos] == [
            (3, ("\\Seen",), 1_600_000_000),
            (10, ("$Work",), 1_600_000_100),
        ]
        status = await store.mailbox_status("alice", "INBOX")
        assert (status.uidvalidity, status.uidnext) == (99, 11)
        # A UID at or below the highest is refused and nothing is written.
        with pytest.raises(UidNotAboveError):
            await store.append_many(
                "alice", "INBOX", [AppendRequest(b"Subject: c\r\n\r\nc\r\n", (), 1, None, 10)]
            )
        assert (await store.mailbox_status("alice", "INBOX")).messages == 2
        # An append without a UID goes on from UIDNEXT.
        plain = await store.append("alice", "INBOX", b"Subject: d\r\n\r\nd\r\n")
        assert plain.uid == 11
