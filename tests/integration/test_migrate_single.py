"""One user's pass from a real Dovecot into a single node's store (no cluster).

The copy lands at the source's UIDs with its flags, keywords, dates and
octets; a second pass over an unchanged source changes nothing and, with
CONDSTORE, skips every folder; a source UIDVALIDITY change (the folder
deleted and re-created on the source) is a full re-copy of that folder.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from replicad.migrate.copier import UserPass
from replicad.migrate.failures import FailureClass, SourceError
from replicad.migrate.jobs import Counts
from replicad.migrate.planner import Checkpoint
from replicad.migrate.service import MigrationService
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
    source: DovecotSource,
    store: MailStore,
    checkpoints: dict[str, Checkpoint],
    login: SourceLogin | None = None,
) -> Counts:
    total = Counts()

    async def on_folder(counts: Counts, marks: dict[str, Checkpoint]) -> None:
        nonlocal total
        total = total.plus(counts)
        checkpoints.update(marks)

    if login is None:
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


class CountingSource(SourceConnection):
    """The real client, counting the folders it had to EXAMINE."""

    examined = 0

    async def examine(self, *args: Any, **kwargs: Any) -> Any:
        CountingSource.examined += 1
        return await super().examine(*args, **kwargs)

    async def examine_and_fetch(self, *args: Any, **kwargs: Any) -> Any:
        CountingSource.examined += 1
        return await super().examine_and_fetch(*args, **kwargs)


async def test_an_unchanged_source_is_proved_so_by_list_status_alone(
    source: DovecotSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"{__name__}.SourceConnection", CountingSource)
    checkpoints: dict[str, Checkpoint] = {}
    async with MailStore.open(tmp_path / "store") as store:
        await one_pass(source, store, checkpoints)
        assert CountingSource.examined == 5
        CountingSource.examined = 0
        again = await one_pass(source, store, checkpoints)
        assert again == Counts()
        assert CountingSource.examined == 0  # Dovecot offers LIST-STATUS (RFC 5819)
        with source.client(ALICE) as c:
            c.append("Sent", message("one more", 321), [], date(21))
        third = await one_pass(source, store, checkpoints)
        assert third.messages == 1 and CountingSource.examined == 1


def contents(view: dict[str, Any], folder: str) -> list[tuple[Any, ...]]:
    """A folder's messages without their UIDs: (flags, date, octets), sorted."""
    return sorted(tuple(m) for m in view[folder]["messages"].values())


async def deliver(store: MailStore, subject: str) -> None:
    """What LMTP does after the MX switch: a new message in the target INBOX."""
    await store.append(ALICE, "INBOX", message(subject, 600), internaldate=1_700_000_000)


async def test_cutover_into_an_inbox_that_already_has_newer_mail(
    source: DovecotSource, tmp_path: Path
) -> None:
    checkpoints: dict[str, Checkpoint] = {}
    async with MailStore.open(tmp_path / "store") as store:
        await one_pass(source, store, checkpoints)
        presync = await store.mailbox_status(ALICE, "INBOX")
        # The MX switched: two deliveries here take the UIDs the source uses next.
        await deliver(store, "delivered 1")
        await deliver(store, "delivered 2")
        with source.client(ALICE) as c:
            c.append("INBOX", message("late 1", 410), ["\\Seen"], date(22))
            c.append("INBOX", message("late 2", 420), [], date(23))
        cut = await one_pass(source, store, checkpoints)
        assert cut.messages == 2
        mine = await store_view(store, ALICE)
        theirs = source_view(source, ALICE)
        assert mine["INBOX"]["uidvalidity"] == presync.uidvalidity  # the source's
        delivered = [m for m in contents(mine, "INBOX") if b"delivered" in m[2]]
        assert len(delivered) == 2
        assert sorted(delivered + contents(theirs, "INBOX")) == contents(mine, "INBOX")
        # The source UIDs that were free here kept theirs; the others moved above.
        kept = {u for u in theirs["INBOX"]["messages"] if u < presync.uidnext}
        assert kept <= set(mine["INBOX"]["messages"])

        # Later passes read the mapping back: nothing twice, and an expunge on
        # the source takes its own copy, never a delivery.
        assert await one_pass(source, store, checkpoints) == Counts()
        late = max(theirs["INBOX"]["messages"])
        with source.client(ALICE) as c:
            c.select_folder("INBOX")
            c.add_flags([late], ["\\Deleted", "\\Flagged"])
            c.expunge()
        gone = await one_pass(source, store, checkpoints)
        assert gone.expunged == 1 and gone.messages == 0
        mine = await store_view(store, ALICE)
        theirs = source_view(source, ALICE)
        assert sorted(delivered + contents(theirs, "INBOX")) == contents(mine, "INBOX")
        for folder in theirs:
            if folder != "INBOX":
                assert mine[folder] == theirs[folder]


async def test_an_inbox_created_here_first_is_copied_into_at_fresh_uids(
    source: DovecotSource, tmp_path: Path
) -> None:
    checkpoints: dict[str, Checkpoint] = {}
    async with MailStore.open(tmp_path / "store") as store:
        await deliver(store, "delivered first")  # LMTP created INBOX before the first pass
        first = await one_pass(source, store, checkpoints)
        assert first.messages == 9
        mine = await store_view(store, ALICE)
        theirs = source_view(source, ALICE)
        assert mine["INBOX"]["uidvalidity"] != theirs["INBOX"]["uidvalidity"]
        delivered = [m for m in contents(mine, "INBOX") if b"delivered" in m[2]]
        assert sorted(delivered + contents(theirs, "INBOX")) == contents(mine, "INBOX")
        assert await one_pass(source, store, checkpoints) == Counts()
        with source.client(ALICE) as c:
            c.append("INBOX", message("after", 430), [], date(24))
        assert (await one_pass(source, store, checkpoints)).messages == 1
        mine = await store_view(store, ALICE)
        theirs = source_view(source, ALICE)
        assert sorted(delivered + contents(theirs, "INBOX")) == contents(mine, "INBOX")


def big_message(octets: int) -> bytes:
    """A message of about ``octets`` with a base64 attachment (barely compressible)."""
    head = (
        b"From: src@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    )
    raw = base64.encodebytes(os.urandom(octets * 3 // 4)).replace(b"\n", b"\r\n")
    return head + raw


async def test_a_50_mb_message_never_sits_whole_in_memory_twice(tmp_path: Path) -> None:
    source = DovecotSource(tmp_path, SOURCE_PASSWORDS)
    source.start()
    try:
        body = big_message(50 * 2**20)
        size, digest = len(body), hashlib.sha256(body).digest()
        with source.client(ALICE) as c:
            c.append("INBOX", body, [], date(1))
        del body
        checkpoints: dict[str, Checkpoint] = {}
        async with MailStore.open(tmp_path / "store") as store:
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                tracemalloc.reset_peak()
                done = await one_pass(source, store, checkpoints)
                peak = tracemalloc.get_traced_memory()[1] - before
            finally:
                tracemalloc.stop()
            assert done.messages == 1 and done.bytes == size
            [info] = await store.fetch(ALICE, "INBOX", UidSet.parse("1:*"))
            assert info.body_hash == digest
        # imapclient reads a literal whole (imaplib's read(size)): the body is in
        # memory once as it arrives; the store adds its compressed form (base64
        # of random octets compresses to about 3/4; measured 1.78x in all).
        # Twice would be 2x and more; a repr() of it (imaplib at imapclient's
        # debug level 5) was 4x, and compress() + the codec octet another 1.8x.
        assert peak < 1.9 * size, f"peak {peak / size:.2f}x the message"
    finally:
        source.stop()


async def test_an_imaps_source_is_verified_against_the_given_ca(tmp_path: Path) -> None:
    source = DovecotSource(tmp_path, SOURCE_PASSWORDS, tls=True)
    source.start()
    try:
        populate(source)
        password = SOURCE_PASSWORDS[ALICE]
        ca = source.ca_file.read_text()
        async with MailStore.open(tmp_path / "store") as store:
            # The system's trust store does not know the source's CA: refused,
            # permanently (a retry will not make it verify).
            system = SourceLogin("127.0.0.1", source.tls_port, True, ALICE, password)
            with pytest.raises(SourceError) as refused:
                await one_pass(source, store, {}, system)
            assert refused.value.failure is FailureClass.PROTOCOL
            assert "--source-ca" in refused.value.reason
            assert await store.list_users() == []
            # The CA given: verified, and the copy is exact.
            trusted = SourceLogin("127.0.0.1", source.tls_port, True, ALICE, password, None, ca)
            assert (await one_pass(source, store, {}, trusted)).messages == 9
            assert await store_view(store, ALICE) == source_view(source, ALICE)
            # A certificate for another name does not pass with the CA alone.
            other = SourceLogin("localhost", source.tls_port, True, ALICE, password, None, ca)
            with pytest.raises(SourceError):
                await one_pass(source, store, {}, other)
            # --source-insecure: encrypted, not authenticated.
            blind = SourceLogin(
                "localhost", source.tls_port, True, ALICE, password, None, None, verify=False
            )
            again = await one_pass(source, store, {}, blind)
            assert (again.messages, again.expunged, again.flags_changed) == (0, 0, 0)
    finally:
        source.stop()


class CountedConnection(SourceConnection):
    """The real client, counting the connections open at once."""

    open = 0
    peak = 0

    async def connect(self) -> None:
        CountedConnection.open += 1
        CountedConnection.peak = max(CountedConnection.peak, CountedConnection.open)
        await super().connect()

    async def aclose(self) -> None:
        await super().aclose()
        CountedConnection.open -= 1


async def test_the_per_host_cap_bounds_connections_whatever_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = {f"user{i}@example.org": "pw" for i in range(8)}
    source = DovecotSource(tmp_path, users)
    source.start()
    try:
        for user in users:
            with source.client(user) as c:
                for i in range(30):
                    c.append("INBOX", message(f"{user} {i}", 3000), [], date(1))
        monkeypatch.setattr("replicad.migrate.service.SourceConnection", CountedConnection)
        async with MailStore.open(tmp_path / "store") as store:
            service = MigrationService(store, LocalWrites(store), tmp_path / "secrets")
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                added = await service.add(
                    {
                        "source": f"imap://127.0.0.1:{source.port}",
                        "users": [[u, u] for u in users],
                        "passwords": users,
                        "workers": 8,
                        "per_host": 2,
                    }
                )
                with trio.fail_after(60):
                    while not all(r["synced"] for r in await service.status({"job": added["job"]})):
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            for user in users:
                assert len(await store.fetch(user, "INBOX", UidSet.parse("1:*"))) == 30
        assert CountedConnection.peak == 2
    finally:
        source.stop()


class FailingSecondFetch(SourceConnection):
    """The real client, whose connection breaks at its second body FETCH."""

    fetches = 0

    async def fetch(self, uids: Any) -> Any:
        FailingSecondFetch.fetches += 1
        if FailingSecondFetch.fetches == 2:
            raise SourceError(FailureClass.NETWORK, "connection reset (injected)")
        return await super().fetch(uids)


async def test_the_source_failing_during_a_pipelined_fetch_is_a_network_error(
    source: DovecotSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with source.client(ALICE) as c:
        c.create_folder("Big")
        # 12 MB: two FETCH batches, the second fetched while the first is written.
        for _ in range(12):
            c.append("Big", big_message(2**20), [], date(2))
    monkeypatch.setattr(f"{__name__}.SourceConnection", FailingSecondFetch)
    async with MailStore.open(tmp_path / "store") as store:
        with pytest.raises(SourceError) as caught:
            await one_pass(source, store, {})
        assert caught.value.failure is FailureClass.NETWORK  # retried, not "internal error"
        monkeypatch.setattr(f"{__name__}.SourceConnection", SourceConnection)
        await one_pass(source, store, {})  # the next pass completes it, nothing twice
        assert await store_view(store, ALICE) == source_view(source, ALICE)
