"""The store against a plain in-memory model, driven by random operation sequences.

A hypothesis RuleBasedStateMachine applies the same operation to the real
store (through its async API, group-commit writer included) and to a model
made of dicts, and compares everything observable after every step:
mailbox status, message metadata, bodies, changes-since answers, tombstones,
and the reference count of every body (single-instance store).  Invariants
checked along the way: UIDs are never reused (I2/I3) and HIGHESTMODSEQ
strictly increases with every change (I3).
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from replicad.errors import (
    AlreadyExistsError,
    BadInputError,
    NoSuchMailboxError,
    NoSuchUserError,
    ReplicadError,
)
from replicad.store.blobs import body_hash
from replicad.store.mailstore import MailStore
from replicad.uidset import UidSet

T = TypeVar("T")

USERS = ["alice", "bob"]
NAMES = ["INBOX", "Archive", "Archive/2024", "Sent", "Trash"]
BODIES = [b"", b"short body\r\n", b"x" * 5000, b"Subject: hi\r\n\r\nsame text\r\n"]
FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "\\Deleted", "$Label1", "custom"]


class StoreThread:
    """Runs a MailStore inside trio in a background thread for a sync test."""

    def __init__(self, path: Path) -> None:
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self.store: MailStore | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main, path), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self, path: Path) -> None:
        self._stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with MailStore.open(path, map_size=64 << 20) as store:
            self.store = store
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kw: Any) -> T:
        async def run() -> T:
            return await fn(*args, **kw)

        return trio.from_thread.run(run, trio_token=self.token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join()


@dataclass
class ModelMessage:
    guid: bytes
    body: bytes
    flags: frozenset[str]
    modseq: int


@dataclass
class ModelMailbox:
    guid: bytes
    uidnext: int = 1
    highestmodseq: int = 1
    messages: dict[int, ModelMessage] = field(default_factory=dict)
    tombstones: dict[int, tuple[bytes, int]] = field(default_factory=dict)
    used_uids: set[int] = field(default_factory=set)


def uidsets() -> st.SearchStrategy[str]:
    single = st.integers(1, 12).map(str)
    rng = st.tuples(st.integers(1, 12), st.integers(1, 12)).map(lambda t: f"{t[0]}:{t[1]}")
    star = st.sampled_from(["*", "1:*", "3:*"])
    listed = st.lists(st.one_of(single, rng, star), min_size=1, max_size=3).map(",".join)
    return st.one_of(listed, st.just("all"))


def select(mbox: ModelMailbox, text: str) -> list[int]:
    highest = max(mbox.messages, default=0)
    uids = UidSet.parse(text).resolve(highest)
    return sorted(u for u in mbox.messages if u in uids)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.thread = StoreThread(Path(self.tmp.name))
        self.store = self.thread.store
        assert self.store is not None
        self.model: dict[tuple[str, str], ModelMailbox] = {}
        self.seen_modseqs: dict[bytes, int] = {}

    def teardown(self) -> None:
        self.thread.close()
        self.tmp.cleanup()

    def call(self, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, **kw: Any) -> T:
        return self.thread.call(fn, *args, **kw)

    def expect_error(self, exc: type[ReplicadError], fn: Callable[..., Any], *args: Any) -> None:
        with pytest.raises(exc):
            self.call(fn, *args)

    def pick(self, pick: int, user: str, name: str) -> tuple[str, str]:
        """Mostly an existing mailbox (so rules do real work), sometimes the random one."""
        existing = sorted(self.model)
        if existing and pick % 5:
            return existing[pick % len(existing)]
        return user, name

    def bump(self, mbox: ModelMailbox) -> int:
        mbox.highestmodseq += 1
        return mbox.highestmodseq

    # -- rules --

    @rule(user=st.sampled_from(USERS), name=st.sampled_from(NAMES))
    def create(self, user: str, name: str) -> None:
        assert self.store is not None
        if (user, name) in self.model:
            self.expect_error(AlreadyExistsError, self.store.create_mailbox, user, name)
            return
        rec = self.call(self.store.create_mailbox, user, name)
        assert rec.name == name
        self.model[(user, name)] = ModelMailbox(guid=rec.mailbox)

    @rule(
        user=st.sampled_from(USERS),
        name=st.sampled_from(NAMES),
        body=st.sampled_from(BODIES),
        flags=st.sets(st.sampled_from(FLAGS), max_size=3),
        date=st.integers(0, 2_000_000_000),
        pick=st.integers(0, 1000),
    )
    def append(
        self, user: str, name: str, body: bytes, flags: set[str], date: int, pick: int
    ) -> None:
        assert self.store is not None
        user, name = self.pick(pick, user, name)
        if (user, name) not in self.model and name != "INBOX":
            exc = NoSuchMailboxError if any(u == user for u, _ in self.model) else NoSuchUserError
            self.expect_error(exc, self.store.append, user, name, body)
            return
        rec = self.call(self.store.append, user, name, body, flags=flags, internaldate=date)
        if (user, name) not in self.model:  # INBOX auto-created on delivery
            self.model[(user, name)] = ModelMailbox(guid=rec.mailbox)
        mbox = self.model[(user, name)]
        assert rec.uid == mbox.uidnext
        assert rec.uid not in mbox.used_uids, "UID reused (I3)"
        assert rec.internaldate == date and rec.size == len(body)
        modseq = self.bump(mbox)
        assert rec.modseq == modseq
        mbox.messages[rec.uid] = ModelMessage(rec.guid, body, frozenset(flags), modseq)
        mbox.used_uids.add(rec.uid)
        mbox.uidnext += 1

    @rule(
        user=st.sampled_from(USERS),
        src=st.sampled_from(NAMES),
        dst=st.sampled_from(NAMES),
        uids=uidsets(),
        pick=st.integers(0, 1000),
    )
    def copy(self, user: str, src: str, dst: str, uids: str, pick: int) -> None:
        assert self.store is not None
        user, src = self.pick(pick, user, src)
        if (user, src) not in self.model or (user, dst) not in self.model:
            with pytest.raises((NoSuchMailboxError, NoSuchUserError)):
                self.call(self.store.copy, user, src, UidSet.parse(uids), dst)
            return
        s, d = self.model[(user, src)], self.model[(user, dst)]
        chosen = select(s, uids)
        rec = self.call(self.store.copy, user, src, UidSet.parse(uids), dst)
        assert list(rec.source_uids) == chosen
        if not chosen:
            assert rec.appended == ()
            return
        modseq = self.bump(d)
        originals = [s.messages[u] for u in chosen]
        held = {m.guid for box in self.model.values() for m in box.messages.values()}
        for orig, new in zip(originals, rec.appended, strict=True):
            assert new.uid == d.uidnext and new.modseq == modseq
            # A copy is an instance of its own: a GUID no message had (I6).
            assert len(new.guid) == 16 and new.guid not in held
            held.add(new.guid)
            assert set(new.flags) == orig.flags
            d.messages[new.uid] = ModelMessage(new.guid, orig.body, orig.flags, modseq)
            d.used_uids.add(new.uid)
            d.uidnext += 1

    @rule(
        user=st.sampled_from(USERS),
        name=st.sampled_from(NAMES),
        uids=uidsets(),
        mode=st.sampled_from(["add", "remove", "replace"]),
        flags=st.sets(st.sampled_from(FLAGS), max_size=3),
        conditional=st.booleans(),
        since_back=st.integers(0, 4),
        pick=st.integers(0, 1000),
    )
    def store_flags(
        self,
        user: str,
        name: str,
        uids: str,
        mode: str,
        flags: set[str],
        conditional: bool,
        since_back: int,
        pick: int,
    ) -> None:
        assert self.store is not None
        user, name = self.pick(pick, user, name)
        if (user, name) not in self.model:
            return
        mbox = self.model[(user, name)]
        since = max(0, mbox.highestmodseq - since_back) if conditional else None
        rec = self.call(
            self.store.store_flags,
            user,
            name,
            UidSet.parse(uids),
            mode,
            flags,
            unchangedsince=since,
        )
        changed, rejected = [], []
        for uid in select(mbox, uids):
            msg = mbox.messages[uid]
            if since is not None and msg.modseq > since:
                rejected.append(uid)
                continue
            new = {"add": msg.flags | flags, "remove": msg.flags - flags, "replace": flags}[mode]
            if new != msg.flags:
                changed.append((uid, frozenset(new)))
        assert list(rec.rejected) == rejected
        assert list(rec.uids) == [u for u, _ in changed]
        if changed:
            modseq = self.bump(mbox)
            assert rec.modseq == modseq
            for uid, new in changed:
                msg = mbox.messages[uid]
                # I5: the record's deltas turn the old flags into the new ones.
                assert (msg.flags | set(rec.added)) - set(rec.removed) == new
                msg.flags, msg.modseq = new, modseq
        else:
            assert rec.modseq == mbox.highestmodseq

    @rule(
        user=st.sampled_from(USERS),
        name=st.sampled_from(NAMES),
        uids=uidsets(),
        pick=st.integers(0, 1000),
    )
    def expunge(self, user: str, name: str, uids: str, pick: int) -> None:
        assert self.store is not None
        user, name = self.pick(pick, user, name)
        if (user, name) not in self.model:
            return
        mbox = self.model[(user, name)]
        chosen = select(mbox, uids)
        rec = self.call(self.store.expunge, user, name, UidSet.parse(uids))
        assert [u for u, _ in rec.expunged] == chosen
        if chosen:
            modseq = self.bump(mbox)
            assert rec.modseq == modseq
            for uid in chosen:
                msg = mbox.messages.pop(uid)
                mbox.tombstones[uid] = (msg.guid, modseq)

    @rule(user=st.sampled_from(USERS), old=st.sampled_from(NAMES), new=st.sampled_from(NAMES))
    def rename(self, user: str, old: str, new: str) -> None:
        assert self.store is not None
        if (user, old) not in self.model:
            with pytest.raises((NoSuchMailboxError, NoSuchUserError)):
                self.call(self.store.rename_mailbox, user, old, new)
            return
        moves = {
            n: new + n[len(old) :]
            for (u, n) in self.model
            if u == user and (n == old or n.startswith(old + "/"))
        }
        # Nothing is renamed to INBOX or below it: INBOX is the one name two
        # sides of a partition may create independently, and is merged by
        # name (resync.md §5), so no rename may claim it.
        into_inbox = new == "INBOX" or new.startswith("INBOX/")
        if old == "INBOX" or into_inbox or new.startswith(old + "/") or old == new:
            with pytest.raises((BadInputError, AlreadyExistsError)):
                self.call(self.store.rename_mailbox, user, old, new)
            return
        if any((user, target) in self.model for target in moves.values()):
            self.expect_error(AlreadyExistsError, self.store.rename_mailbox, user, old, new)
            return
        rec = self.call(self.store.rename_mailbox, user, old, new)
        assert rec.mailbox == self.model[(user, old)].guid, "GUID must survive a rename"
        boxes = {target: self.model.pop((user, source)) for source, target in moves.items()}
        for target, mbox in boxes.items():
            self.model[(user, target)] = mbox

    @rule(user=st.sampled_from(USERS), name=st.sampled_from(NAMES))
    def delete(self, user: str, name: str) -> None:
        assert self.store is not None
        if (user, name) not in self.model:
            with pytest.raises((NoSuchMailboxError, NoSuchUserError)):
                self.call(self.store.delete_mailbox, user, name)
            return
        if name == "INBOX":
            self.expect_error(BadInputError, self.store.delete_mailbox, user, name)
            return
        self.call(self.store.delete_mailbox, user, name)
        del self.model[(user, name)]

    @rule(
        user=st.sampled_from(USERS),
        name=st.sampled_from(NAMES),
        back=st.integers(0, 6),
        pick=st.integers(0, 1000),
    )
    def changes_since(self, user: str, name: str, back: int, pick: int) -> None:
        assert self.store is not None
        user, name = self.pick(pick, user, name)
        if (user, name) not in self.model:
            return
        mbox = self.model[(user, name)]
        since = max(0, mbox.highestmodseq - back)
        cs = self.call(self.store.changes_since, user, name, since)
        assert cs.highestmodseq == mbox.highestmodseq
        assert [m.uid for m in cs.changed] == sorted(
            u for u, m in mbox.messages.items() if m.modseq > since
        )
        assert list(cs.vanished) == sorted(
            u for u, (_, modseq) in mbox.tombstones.items() if modseq > since
        )

    # -- checks after every step --

    @invariant()
    def state_matches_model(self) -> None:
        assert self.store is not None
        users = sorted({u for u, _ in self.model})
        assert self.call(self.store.list_users) == users
        for (user, name), mbox in self.model.items():
            st_ = self.call(self.store.mailbox_status, user, name)
            assert st_.guid == mbox.guid
            assert st_.uidnext == mbox.uidnext
            assert st_.highestmodseq == mbox.highestmodseq
            assert st_.messages == len(mbox.messages)
            assert st_.vsize == sum(len(m.body) for m in mbox.messages.values())
            # I3: HIGHESTMODSEQ never goes back for a given mailbox.
            assert st_.highestmodseq >= self.seen_modseqs.get(mbox.guid, 0)
            self.seen_modseqs[mbox.guid] = st_.highestmodseq
            infos = self.call(self.store.fetch, user, name, UidSet.parse("all"))
            assert [i.uid for i in infos] == sorted(mbox.messages)
            for info in infos:
                msg = mbox.messages[info.uid]
                assert info.guid == msg.guid and info.modseq == msg.modseq
                assert set(info.flags) == msg.flags
                assert info.body_hash == body_hash(msg.body)
            # Changes since 0 name every live message once and every expunged UID once.
            cs = self.call(self.store.changes_since, user, name, 0)
            assert [m.uid for m in cs.changed] == sorted(mbox.messages)
            assert list(cs.vanished) == sorted(mbox.tombstones)
            tombs = self.call(self.store.tombstones, user, name)
            assert {u: (g, m) for u, g, m in tombs} == mbox.tombstones
            # UIDs live or expunged are all below UIDNEXT and never overlap (I2/I3).
            assert not set(mbox.messages) & set(mbox.tombstones)
            assert all(u < mbox.uidnext for u in [*mbox.messages, *mbox.tombstones])

    @invariant()
    def bodies_and_refcounts(self) -> None:
        assert self.store is not None
        refs: dict[bytes, int] = {}
        for mbox in self.model.values():
            for msg in mbox.messages.values():
                refs[body_hash(msg.body)] = refs.get(body_hash(msg.body), 0) + 1
        for body in BODIES:
            digest = body_hash(body)
            assert self.call(self.store.body_references, digest) == refs.get(digest, 0)
        for (user, name), mbox in self.model.items():
            for uid, msg in list(mbox.messages.items())[:3]:
                assert self.call(self.store.fetch_body, user, name, uid) == msg.body


StoreMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreModel = StoreMachine.TestCase
