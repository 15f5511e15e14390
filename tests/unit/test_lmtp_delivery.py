"""The node's LMTP delivery (replicad.lmtp.delivery) on a real store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from replicad.errors import (
    DurabilityError,
    ReplicadError,
    StoreFullError,
    TemporaryError,
    UnreachableError,
)
from replicad.lmtp.delivery import NodeDelivery
from replicad.lmtp.protocol import DeliveryStatus
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet

BODY = b"Return-Path: <s@x>\r\nSubject: one body\r\n\r\nhello\r\n"


async def test_one_body_stored_once_for_every_recipient(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s", sync=False) as store:
        delivery = NodeDelivery(store, store, user_exists=store.has_user)
        await store.create_mailbox("carol", "Lists")
        outcomes = await delivery.deliver(
            BODY, [("alice", "INBOX"), ("bob", "INBOX"), ("carol", "Lists"), ("dave", "Nope")]
        )
        assert [o.status for o in outcomes] == [DeliveryStatus.SAVED] * 4
        assert [(o.mailbox, o.uid) for o in outcomes] == [
            ("INBOX", 1),
            ("INBOX", 1),
            ("Lists", 1),
            ("INBOX", 1),  # no such folder: INBOX
        ]
        assert await store.body_references(hashlib.sha256(BODY).digest()) == 4
        assert await store.fetch_body("carol", "Lists", 1) == BODY
        [info] = await store.fetch("dave", "INBOX", UidSet.parse("1"))
        assert info.size == len(BODY)


async def test_known_user_asks_the_callable_and_refuses_bad_names(tmp_path: Path) -> None:
    async with MailStore.open(tmp_path / "s", sync=False) as store:
        delivery = NodeDelivery(store, store, user_exists=store.has_user)
        assert not await delivery.known_user("alice")
        await store.create_mailbox("alice", "INBOX")
        assert await delivery.known_user("alice")
        assert not await delivery.known_user("a b")  # the store could never hold it
        asked: list[str] = []

        async def directory(user: str) -> bool:
            asked.append(user)
            return True

        other = NodeDelivery(store, store, user_exists=directory)
        assert await other.known_user("zed@example.org") and asked == ["zed@example.org"]


class FailingWrites:
    def __init__(self, errors: dict[str, BaseException]) -> None:
        self.errors = errors

    async def append(self, user: str, mailbox: str, body: bytes, **_: Any) -> Any:
        raise self.errors[user]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DurabilityError("quorum not reachable"), DeliveryStatus.DURABILITY),
        (StoreFullError("map full"), DeliveryStatus.STORE_FULL),
        (TemporaryError("master moving"), DeliveryStatus.TEMPFAIL),
        (UnreachableError("master unreachable"), DeliveryStatus.TEMPFAIL),
        (ReplicadError("odd"), DeliveryStatus.TEMPFAIL),
        (RuntimeError("bug"), DeliveryStatus.TEMPFAIL),
    ],
)
async def test_errors_map_to_statuses_never_saved(
    tmp_path: Path, error: BaseException, status: DeliveryStatus
) -> None:
    async with MailStore.open(tmp_path / "s", sync=False) as store:
        writes = FailingWrites({"alice": error})
        delivery = NodeDelivery(store, writes, user_exists=store.has_user)  # type: ignore[arg-type]
        [outcome] = await delivery.deliver(BODY, [("alice", "INBOX")])
        assert outcome.status is status
        assert outcome.error is not None and type(error).__name__ in outcome.error
        assert outcome.uid is None
