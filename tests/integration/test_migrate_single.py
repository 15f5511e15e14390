"""One user's pass from a real Dovecot into a single node's store (no cluster).

The copy lands at the source's UIDs with its flags, keywords, dates and
octets; a second pass over an unchanged source changes nothing and, with
CONDSTORE, skips every folder; a source UIDVALIDITY change (the folder
deleted and re-created on the source) is a full re-copy of that folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replicad.migrate.copier import UserPass
from replicad.migrate.jobs import Counts
from replicad.migrate.planner import Checkpoint
from replicad.migrate.source import SourceConnection, SourceLogin
from replicad.migrate.target import LocalWrites
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet
from tests.dovecot_source import DovecotSource
from tests.integration.test_migrate import (
    ALICE,
    NON_ASCII,
    SOURCE_PASSWORDS,
    date,
    message,
    populate,
    source_view,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def source(tmp_path: Path) -> Iterator[DovecotSource]:
    s = DovecotSource(tmp_path, SOURCE_PASSWORDS)
    s.start()
    try:
        populate(s)
        yield s
    finally:
        s.stop()


async def store_view(store: MailStore, user: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in await store.list_mailboxes(user):
        infos = await store.fetch(user, status.name, UidSet.parse("1:*"))
        bodies = await store.fetch_bodies(user, status.name, [i.uid for i in infos])
        out[status.name] = {
            "uidvalidity": status.uidvalidity,
            "messages": {i.uid: (sorted(i.flags), i.internaldate, bodies[i.uid]) for i in infos},
        }
    return out


async def one_pass(
    source: DovecotSource, store: MailStore, checkpoints: dict[str, Checkpoint]
) -> Counts:
    total = Counts()

    async def on_folder(counts: Counts, marks: dict[str, Checkpoint]) -> None:
        nonlocal total
        total = total.plus(counts)
        checkpoints.update(marks)

    login = SourceLogin("127.0.0.1", source.port, False, ALICE, SOURCE_PASSWORDS[ALICE])
    connection = SourceConnection(login)
    await connection.connect()
    try:
        copier = UserPass(
            connection,
            LocalWrites(store),
            store,
            ALICE,
            on_folder=on_folder,
            on_bytes=lambda _n: None,
        )
        await copier.run(checkpoints)
    finally:
        await connection.aclose()
    return total


async def test_copy_then_noop_then_uidvalidity_change(
    source: DovecotSource, tmp_path: Path
) -> None:
    checkpoints: dict[str, Checkpoint] = {}
    async with MailStore.open(tmp_path / "store") as store:
        first = await one_pass(source, store, checkpoints)
        assert first.messages == 9 and first.folders == 5
        assert await store_view(store, ALICE) == source_view(source, ALICE)

        again = await one_pass(source, store, checkpoints)
        assert (again.messages, again.expunged, again.flags_changed, again.bytes) == (0, 0, 0, 0)

        # The folder is deleted and made again on the source: a new UIDVALIDITY.
        with source.client(ALICE) as c:
            c.delete_folder(NON_ASCII)
            c.create_folder(NON_ASCII)
            c.append(NON_ASCII, message("reborn", 500), ["\\Seen"], date(15))
        third = await one_pass(source, store, checkpoints)
        assert third.messages == 1
        expected = source_view(source, ALICE)
        assert await store_view(store, ALICE) == expected
        status = await store.mailbox_status(ALICE, NON_ASCII)
        assert status.uidvalidity == expected[NON_ASCII]["uidvalidity"]
