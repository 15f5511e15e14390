"""The node's LMTP delivery (replicad.lmtp.delivery) on a real store."""

from __future__ import annotations

import hashlib
import time
import uuid
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
from replicad.lmtp.server import message_key
from replicad.store.index import DELIVERY_RETRY_WINDOW, delivery_guid, is_delivery_guid
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


async def test_the_mta_retry_of_a_stored_delivery_is_answered_with_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same user, mailbox and message (key) within the window: the first copy."""
    async with MailStore.open(tmp_path / "s", sync=False) as store:
        delivery = NodeDelivery(store, store, user_exists=store.has_user)
        key = message_key("s@x", b"Subject: one body\r\n\r\nhello\r\n")
        [first] = await delivery.deliver(BODY, [("alice", "INBOX")], message_key=key)
        # The retry: the trace headers differ (fewer recipients), the message not.
        retried = await delivery.deliver(
            b"Delivered-To: alice\r\n" + BODY,
            [("alice", "INBOX"), ("bob", "INBOX")],
            message_key=key,
        )
        assert [(o.status, o.uid) for o in retried] == [
            (DeliveryStatus.SAVED, first.uid),
            (DeliveryStatus.SAVED, 1),  # bob's first copy
        ]
        assert (await store.mailbox_status("alice", "INBOX")).messages == 1
        assert await store.fetch_body("alice", "INBOX", 1) == BODY
        # One mailbox named twice in a transaction: one copy.
        twice = await delivery.deliver(BODY, [("carol", "INBOX")] * 2, message_key=key)
        assert [o.uid for o in twice] == [1, 1]
        assert (await store.mailbox_status("carol", "INBOX")).messages == 1
        # Another sender, or other octets: another message.
        other = await delivery.deliver(BODY, [("alice", "INBOX")], message_key=b"k" * 32)
        assert other[0].uid == 2
        # The same message a day and more later: a new delivery, a new copy.
        later = time.time() + DELIVERY_RETRY_WINDOW + 60
        monkeypatch.setattr(time, "time", lambda: later)
        [again] = await delivery.deliver(BODY, [("alice", "INBOX")], message_key=key)
        assert again.status is DeliveryStatus.SAVED and again.uid == 3
        assert (await store.mailbox_status("alice", "INBOX")).messages == 3


def test_delivery_guids_are_derived_and_never_look_random() -> None:
    key = message_key("s@x", b"body")
    guid = delivery_guid("alice", "INBOX", key)
    assert guid == delivery_guid("alice", "INBOX", key) and len(guid) == 16
    assert is_delivery_guid(guid)
    assert delivery_guid("bob", "INBOX", key) != guid
    assert delivery_guid("alice", "Lists", key) != guid
    assert message_key("t@x", b"body") != key
    assert not any(is_delivery_guid(uuid.uuid4().bytes) for _ in range(1000))
