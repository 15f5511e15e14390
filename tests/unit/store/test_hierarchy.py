"""Folder hierarchy (RFC 3501 §6.3.3-§6.3.5): CREATE makes superiors, RENAME
moves inferiors, DELETE keeps them and refuses a name that only stands above them."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicad.errors import AlreadyExistsError, NoSuchMailboxError
from replicad.store.hierarchy import create_with_superiors
from replicad.store.mailstore import MailStore
from replicad.store.namespace import implied_names, superiors


def test_superiors_outermost_first() -> None:
    assert superiors("a/b/c") == ["a", "a/b"]
    assert superiors("INBOX") == []


def test_implied_names_are_superiors_that_are_not_mailboxes() -> None:
    assert implied_names(["Q/C1", "Q/C2/D", "R"]) == {"Q", "Q/C2"}
    assert implied_names(["Work", "Work/Projects"]) == set()


async def names(store: MailStore, user: str) -> list[str]:
    return sorted(s.name for s in await store.list_mailboxes(user))


async def test_create_makes_the_missing_superiors_and_rename_moves_them(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        await store.create_mailbox("alice", "INBOX")
        await create_with_superiors(store, "alice", "Work/Projects/2026")
        assert await names(store, "alice") == [
            "INBOX",
            "Work",
            "Work/Projects",
            "Work/Projects/2026",
        ]
        # An existing superior is kept as it is (same GUID).
        before = await store.mailbox_status("alice", "Work")
        await create_with_superiors(store, "alice", "Work/Other")
        assert (await store.mailbox_status("alice", "Work")).guid == before.guid
        with pytest.raises(AlreadyExistsError):
            await create_with_superiors(store, "alice", "Work/Other")
        await store.rename_mailbox("alice", "Work", "Jobs")
        assert await names(store, "alice") == [
            "INBOX",
            "Jobs",
            "Jobs/Other",
            "Jobs/Projects",
            "Jobs/Projects/2026",
        ]


async def test_delete_keeps_inferiors_and_refuses_a_name_that_is_only_a_superior(
    tmp_path: Path,
) -> None:
    async with MailStore.open(tmp_path / "s") as store:
        await store.create_mailbox("alice", "INBOX")
        await create_with_superiors(store, "alice", "Q/C1")
        await store.delete_mailbox("alice", "Q")
        assert await names(store, "alice") == ["INBOX", "Q/C1"]
        assert implied_names(await names(store, "alice")) == {"Q"}
        with pytest.raises(NoSuchMailboxError, match="only the superior of 'Q/C1'"):
            await store.delete_mailbox("alice", "Q")
        # Creating it again makes it a mailbox once more.
        await store.create_mailbox("alice", "Q")
        await store.delete_mailbox("alice", "Q/C1")
        await store.delete_mailbox("alice", "Q")
        with pytest.raises(NoSuchMailboxError, match="no such mailbox 'Q'"):
            await store.delete_mailbox("alice", "Q")
