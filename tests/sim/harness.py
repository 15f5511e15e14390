"""Seeded cluster simulation: a workload, faults, and the invariant checks (architecture.md §8).

One run is a pure function of its seed: N real :class:`ClusterNode`s with
real LMDB stores run inline, on :class:`SimNetwork`, under
``trio.testing.MockClock(autojump_threshold=0)``.  The run alternates
*write phases* (random client operations through random nodes) and *fault
phases* (a node crashed and restarted, or cut off and healed, while the
clients wait).  Then the network heals, writes stop, and :func:`check`
verifies I1-I6 on every node.

While a node is crashed clients wait; while a partition is up they keep
writing on both sides (I7), so both sides' masters hand out the same UIDs
and change the same flags, and the resync layer must merge them after the
heal (I2, I5, I6).  Besides split brain a run exercises reconnects, outbox
resume after a crash, root failover and re-election, master reassignment
and MASTER-MOVE, with every interleaving the seed picks.

Replay is exact for a seed run alone (``tools/sim --seed N``, which pins
PYTHONHASHSEED); inside a long campaign, orders that depend on object
addresses can make a run differ from its lone replay, so a failing campaign
seed is reported with both.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio._core._run as trio_run
import trio.testing

from replicad.cluster.runtime import ClusterNode, ClusterSettings, PeerAddress
from replicad.cluster.writes import ClusterWrites
from replicad.errors import ReplicadError
from replicad.store.mailstore import MailStore
from replicad.store.writer import InlineExecutor
from replicad.uidset import UidSet
from tests.sim.network import SimNetwork

USERS = ("alice", "bob")
MAILBOXES = ("INBOX", "Work")
#: With mailbox operations on: the names they create, rename and delete
#: (never INBOX), which messages are also saved to and copied between.
FOLDERS = ("Work", "Archive")


@dataclass
class RunResult:
    seed: int
    ok: bool = True
    operations: int = 0
    faults: int = 0
    failure: str = ""
    trace: list[str] = field(default_factory=list)
    sim_seconds: float = 0.0


class Node:
    """One simulated node: its store survives crashes; its runtime does not."""

    def __init__(
        self, name: str, names: tuple[str, ...], store: MailStore, data: Path, net: SimNetwork
    ) -> None:
        self.name = name
        self.names = names
        self.store = store
        self.data = data
        self.net = net
        self.runtime: ClusterNode | None = None
        self.scope: trio.CancelScope | None = None

    @property
    def writes(self) -> ClusterWrites:
        assert self.runtime is not None
        return ClusterWrites(self.runtime)

    async def start(self, nursery: trio.Nursery) -> None:
        runtime = ClusterNode(
            name=self.name,
            peers=tuple(PeerAddress(p, "sim", 0) for p in self.names if p != self.name),
            store=self.store,
            network=self.net.node(self.name),
            data_dir=self.data,
            # Anti-entropy on, as in production (its default is 300 s; runs are shorter).
            settings=ClusterSettings(compress=False, verify_interval=30.0),
        )
        self.runtime = runtime
        scope = self.scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                await runtime.run(task_status=task_status)
                await trio.sleep_forever()

        await nursery.start(run)

    def crash(self) -> None:
        """In-flight work is lost; what the store committed stays (LMDB)."""
        assert self.scope is not None
        self.scope.cancel()
        self.runtime = None


@asynccontextmanager
async def cluster(tmp: Path, n: int, net: SimNetwork) -> AsyncIterator[dict[str, Node]]:
    names = tuple(f"n{i}" for i in range(1, n + 1))
    async with AsyncExitStack() as stack:
        nodes: dict[str, Node] = {}
        for name in names:
            (tmp / name).mkdir()
            store = await stack.enter_async_context(
                MailStore.open(
                    tmp / name / "store",
                    map_size=64 << 20,
                    executor=InlineExecutor(),
                    sync=False,
                    peers=tuple(p for p in names if p != name),
                )
            )
            nodes[name] = Node(name, names, store, tmp / name, net)
        async with trio.open_nursery() as nursery:
            for node in nodes.values():
                await node.start(nursery)
            try:
                yield nodes
            finally:
                nursery.cancel_scope.cancel()


# --- the workload ----------------------------------------------------------------


@dataclass
class Model:
    """What clients were told (the ground truth the checker holds nodes to).

    Messages are tracked by GUID, as instance counts per mailbox: after a
    partition a message may live on under a new UID (I2).  A COPY makes a
    new instance with a GUID of its own (the reply names it), so an
    acknowledged instance is held to be live unless a client expunged it;
    several instances of one GUID remain possible only where the checker
    cannot know the GUID of what a refused operation may have done.  ``low``/``high`` bound
    how many live instances of a GUID a mailbox must end with: an
    acknowledged SAVE or COPY raises both, an acknowledged EXPUNGE lowers
    both, and a refused operation (it may or may not have happened at the
    master) moves only the bound it could affect.  ``seen`` keeps which GUID
    each UID was acknowledged with, by whichever node (I2).
    """

    low: dict[tuple[str, str], dict[bytes, int]] = field(default_factory=dict)
    high: dict[tuple[str, str], dict[bytes, int]] = field(default_factory=dict)
    # (user, mailbox, UIDVALIDITY) -> UID -> GUIDs acknowledged under it (I2 holds
    # per UIDVALIDITY: a mailbox merged into another one of its name gets a new one).
    seen: dict[tuple[str, str, int], dict[int, set[bytes]]] = field(default_factory=dict)
    top_modseq: dict[tuple[str, str], int] = field(default_factory=dict)
    top_uid: dict[tuple[str, str], int] = field(default_factory=dict)
    history: dict[bytes, list[str]] = field(default_factory=dict)  # for failure reports
    #: I5: per (mailbox, GUID) and flag, what the last flag change asked for
    #: (None: a change whose effect is unknown touched it since).  Client
    #: operations are sequential in simulated time, and stamps follow that
    #: time, so per-flag last-writer-wins must end on the last one.
    intent: dict[tuple[str, str, bytes], dict[str, bool | None]] = field(default_factory=dict)
    #: (mailbox, GUID)s that ever had several instances: which one a flag change
    #: or an expunge took cannot be told from the GUID.
    multi: set[tuple[str, str, bytes]] = field(default_factory=set)
    #: (user, mailbox, UIDVALIDITY, UID, GUID) of every acknowledged expunge:
    #: two sides of a partition expunging the one message at one UID removed
    #: one instance, not two.
    expunged: set[tuple[str, str, int | None, int, bytes]] = field(default_factory=set)
    #: With mailbox operations on, messages are also counted per user over
    #: all of the user's mailboxes (a rename moves them from one name to
    #: another, and during a partition writes follow the mailbox GUID, not
    #: the name): (user, GUID) -> [low, high].
    per_user: dict[tuple[str, bytes], list[int]] = field(default_factory=dict)
    #: (user, GUID)s ever placed in a folder (FOLDERS), and the users of
    #: which a folder was (perhaps) deleted: a DELETE wins over writes made
    #: concurrently on the other side of a partition, so those may go.
    in_folder: set[tuple[str, bytes]] = field(default_factory=set)
    deleted_in: set[str] = field(default_factory=set)

    def bound(self, key: tuple[str, str], guid: bytes, low: int, high: int, what: str) -> None:
        lows, highs = self.low.setdefault(key, {}), self.high.setdefault(key, {})
        lows[guid] = max(0, lows.get(guid, 0) + low)
        highs[guid] = max(0, highs.get(guid, 0) + high)
        self.history.setdefault(guid, []).append(what)
        counts = self.per_user.setdefault((key[0], guid), [0, 0])
        counts[0], counts[1] = max(0, counts[0] + low), max(0, counts[1] + high)
        if key[1] != "INBOX" and (low > 0 or high > 0):
            self.in_folder.add((key[0], guid))

    def acked(
        self,
        key: tuple[str, str],
        uid: int,
        guid: bytes,
        modseq: int,
        what: str,
        uidvalidity: int | None,
    ) -> None:
        if guid in self.high.get(key, {}):
            self.multi.add((*key, guid))  # a second instance of one GUID
        self.bound(key, guid, 1, 1, what)
        if uidvalidity is not None:
            self.seen.setdefault((*key, uidvalidity), {}).setdefault(uid, set()).add(guid)
        self.top_modseq[key] = max(self.top_modseq.get(key, 0), modseq)
        self.top_uid[key] = max(self.top_uid.get(key, 0), uid)


async def client_op(
    rng: random.Random,
    nodes: dict[str, Node],
    model: Model,
    i: int,
    among: set[str] | None = None,
    moves: bool = True,
    folders: random.Random | None = None,
) -> str:
    """One client operation through a random running node (of ``among``).

    Flags, expunges and copies name UIDs of the node's own copy, as an IMAP
    client of that node would see them.  With ``folders`` (mailbox
    operations on), one operation in five is a CREATE, RENAME or DELETE of
    a folder, drawn from that stream, and messages go to either folder too.
    """
    names = sorted(n for n, node in nodes.items() if node.runtime is not None)
    if among is not None:
        names = [n for n in names if n in among] or names
    name = rng.choice(names)
    node = nodes[name]
    if folders is not None and folders.random() < 0.2:
        return await _folder_op(folders, node, name, model, i)
    choices = MAILBOXES if folders is None else ("INBOX", *FOLDERS)
    user, mailbox = rng.choice(USERS), rng.choice(choices)
    key = (user, mailbox)
    try:
        local = await node.store.fetch(user, mailbox, UidSet.parse("1:*"))
    except ReplicadError:
        local = []
    known = [m.uid for m in local]
    local_guid = {m.uid: m.guid for m in local}
    uid = 0
    kinds = ["save", "flags", "expunge", "copy", "move"][: 5 if moves else 4]
    kind = rng.choices(kinds, [6, 3, 1, 1, 1][: len(kinds)])[0]
    if not known and kind in ("flags", "expunge", "copy"):
        kind = "save"
    try:
        if kind == "save":
            body = f"Subject: {i}\r\n\r\n{rng.random()}\r\n".encode()
            appended = await node.writes.append(user, mailbox, body)
            model.acked(
                key,
                appended.uid,
                appended.guid,
                appended.modseq,
                f"op {i}: {name} save",
                # The UID's own UID space (APPENDUID): the master's copy may be
                # under another UIDVALIDITY than the client's node until a resync.
                appended.uidvalidity or await _uidvalidity(node, key),
            )
            return f"{name} save {user}/{mailbox} -> uid {appended.uid}"
        if kind == "flags":
            uid = rng.choice(known)
            flag = rng.choice(["\\Seen", "\\Flagged", "$Work"])
            mode = rng.choice(["add", "remove"])
            # Certain only if it changes what the client sees: a STORE that
            # changes nothing stamps nothing (RFC 7162: no new modseq).
            had = flag in next(m.flags for m in local if m.uid == uid)
            wants = mode == "add"
            marks = model.intent.setdefault((*key, local_guid[uid]), {})
            marks[flag] = None
            changed = await node.writes.store_flags(user, mailbox, UidSet.of([uid]), mode, [flag])
            # A STORE on the master itself names no GUID: if a merge retired
            # the UID since the client looked, it changes nothing and says so
            # (an empty ``uids``; RFC 3501 ignores STORE to expunged messages),
            # and promises nothing.  A forwarded one (no mailbox in the result)
            # was checked against the client's GUID by the master.
            landed = not changed.mailbox or uid in changed.uids
            marks[flag] = wants if had != wants and landed else None
            model.history.setdefault(local_guid[uid], []).append(
                f"op {i}: {name} {mode} {flag} (saw {'set' if had else 'clear'})"
            )
            return f"{name} flags {mode} {flag} {user}/{mailbox} uid {uid} -> {changed.modseq}"
        if kind == "expunge":
            uid = rng.choice(known)
            gone = await node.writes.expunge(user, mailbox, UidSet.of([uid]))
            uidvalidity = await _uidvalidity(node, key)
            for gone_uid, guid in gone.expunged:
                # A forwarded EXPUNGE's reply names UIDs only; the master
                # checked its UID is the message the client saw (expect).
                guid = guid or local_guid[gone_uid]
                what = f"op {i}: {name} expunge UID {gone_uid}"
                instance = (*key, uidvalidity, gone_uid, guid)
                if instance in model.expunged:
                    model.history.setdefault(guid, []).append(what + " (again)")
                    continue
                model.expunged.add(instance)
                model.bound(key, guid, -1, -1, what)
            return f"{name} expunge {user}/{mailbox} uid {uid} -> {len(gone.expunged)}"
        if kind == "copy":
            uid = rng.choice(known)
            dest = _copy_target(mailbox, folders)
            copied = await node.writes.copy(user, mailbox, UidSet.of([uid]), dest)
            for a in copied.appended:
                # The copy is a new instance: its GUID is the master's answer
                # (the master checked its source UID is the message the client saw).
                guid = a.guid
                model.acked(
                    (user, dest),
                    a.uid,
                    guid,
                    a.modseq,
                    f"op {i}: {name} copy",
                    a.uidvalidity or await _uidvalidity(node, (user, dest)),
                )
                # The copy's flags are the source's at copy time: unknown here.
                model.intent.pop((user, dest, guid), None)
            return f"{name} copy {user}/{mailbox} uid {uid} -> {dest}"
        to = rng.choice(sorted(nodes))
        await node.writes.node.move_master(user, mailbox, to)
        return f"{name} master move {user}/{mailbox} -> {to}"
    except ReplicadError as exc:
        # A refused operation is allowed (e.g. the master just moved away);
        # an acknowledged one must hold.  Nothing was promised here, but the
        # master may have done it before the answer was lost.
        if kind == "expunge":
            model.bound(key, local_guid[uid], -1, 0, f"op {i}: {name} expunge refused")
        elif kind == "copy":
            # The master may have made the copy before the answer was lost:
            # an instance whose GUID nobody was told, which the checker
            # cannot hold to anything.
            model.history.setdefault(local_guid[uid], []).append(f"op {i}: {name} copy refused")
        return f"{name} {kind} {user}/{mailbox} refused: {type(exc).__name__}: {exc}"


def _copy_target(mailbox: str, folders: random.Random | None) -> str:
    if mailbox != "INBOX":
        return "INBOX"
    # The folder is drawn from the folder stream, so the main stream (and
    # with it every seed run without mailbox operations) is unchanged.
    return "Work" if folders is None else folders.choice(FOLDERS)


async def _folder_op(
    folders: random.Random, node: Node, name: str, model: Model, i: int
) -> str:
    """CREATE, RENAME or DELETE of a folder (FOLDERS), as the node's client sees them."""
    user = folders.choice(USERS)
    try:
        have = {row.name for row in await node.store.list_mailboxes(user)}
    except ReplicadError:
        have = set()
    present = [f for f in FOLDERS if f in have]
    absent = [f for f in FOLDERS if f not in have]
    kinds = (["create"] if absent else []) + (["rename"] if present and absent else [])
    kinds += ["delete"] if present else []
    kind = folders.choice(kinds)
    try:
        if kind == "create":
            folder = folders.choice(absent)
            await node.writes.create_mailbox(user, folder)
            return f"{name} create {user}/{folder}"
        if kind == "rename":
            old, new = folders.choice(present), folders.choice(absent)
            await node.writes.rename_mailbox(user, old, new)
            return f"{name} rename {user}/{old} -> {new}"
        folder = folders.choice(present)
        model.deleted_in.add(user)  # before: a refused DELETE may have happened
        await node.writes.delete_mailbox(user, folder)
        return f"{name} delete {user}/{folder}"
    except ReplicadError as exc:
        return f"{name} {kind} {user} refused: {type(exc).__name__}: {exc}"


async def _uidvalidity(node: Node, key: tuple[str, str]) -> int | None:
    """The UIDVALIDITY the client's node shows (None: it has no copy yet)."""
    try:
        return (await node.store.mailbox_status(*key)).uidvalidity
    except ReplicadError:
        return None


# --- checks --------------------------------------------------------------------------


async def converged(nodes: dict[str, Node]) -> bool:
    states = [await node.store.logical_state() for node in nodes.values()]
    return all(s == states[0] for s in states)


async def divergence(nodes: dict[str, Node]) -> str:
    """Which mailboxes differ between nodes, and how (for a failure report)."""
    rows = {
        name: {(r[0], r[1]): r for r in await node.store.logical_state()}
        for name, node in nodes.items()
    }
    out = []
    for key in sorted(set().union(*rows.values())):
        views = {name: by_key.get(key) for name, by_key in rows.items()}
        if len({repr(v) for v in views.values()}) == 1:
            continue
        parts = []
        for name, r in views.items():
            if r is None:
                parts.append(f"{name}: none")
            else:
                parts.append(
                    f"{name}: guid {r[2].hex()[:8]} uv {r[3]} next {r[4]} hms {r[5]} "
                    f"uids {[m[0] for m in r[8]]} tombs {[t[0] for t in r[9]]}"
                )
        out.append(f"{key[0]}/{key[1]}: " + "; ".join(parts))
    return " | ".join(out) or "none"


async def check(nodes: dict[str, Node], model: Model, folders: bool = False) -> None:
    """I4 identical state; I1/I6 every acknowledged message not expunged by a
    client is live (by GUID); an expunged one is not; I2 a UID acknowledged
    with two GUIDs (two sides of a partition) ends as a tombstone, and one
    acknowledged with one GUID names no other; I3 UIDNEXT and HIGHESTMODSEQ
    above everything acknowledged.

    With ``folders`` (mailbox operations on) those checks hold per mailbox
    for INBOX, which they never touch; a folder's messages may have moved to
    another name with a RENAME, so I1/I6 are checked per user over all of
    the user's mailboxes, every instance counted (:func:`_check_per_user`).
    """
    states = {name: await node.store.logical_state() for name, node in nodes.items()}
    first = next(iter(states.values()))
    for name, state in states.items():
        if state != first:
            raise AssertionError(f"I4: {name} differs from {next(iter(states))}")
    by_name = {(row[0], row[1]): row for row in first}
    if folders:
        _check_per_user(first, model)
    for key in sorted(model.low.keys() | {k[:2] for k in model.seen}):
        if folders and key[1] != "INBOX":
            continue
        row = by_name.get(key)
        if row is None:
            # A mailbox no acknowledged write put a message in (only refused
            # copies bounded it, all at 0) need not exist (seed 7035, 5 nodes).
            acked = any(k[:2] == key for k in model.seen)
            if not acked and not any(model.low.get(key, {}).values()):
                continue
            raise AssertionError(f"I6: mailbox {key} missing")
        counts: dict[bytes, int] = {}
        for m in row[8]:
            counts[m[1]] = counts.get(m[1], 0) + 1
        by_uid = {m[0]: m[1] for m in row[8]}
        tombs = {t[0] for t in row[9]}
        for guid, low in model.low.get(key, {}).items():
            high, have = model.high[key][guid], counts.get(guid, 0)
            # With several instances of one GUID (only where a refused
            # operation's outcome is unknown) the checker cannot tell which
            # one an expunge took: only a single-instance message has a lower
            # bound.  A COPY is an instance of its own GUID, so it has one.
            instances = sum("save" in h or "copy" in h for h in model.history[guid])
            expunged = any("expunge" in h for h in model.history[guid])
            floor = min(low, 1) if instances == 1 or not expunged else 0
            if not floor <= have <= high:
                story = "; ".join(model.history[guid])
                what = "lost (I1/I6)" if have < low else "came back after an expunge"
                raise AssertionError(
                    f"message {guid.hex()} of {key}: {have} live, expected {low}..{high}: "
                    f"{what} [{story}]; UIDs now {sorted(by_uid)}, tombstones {sorted(tombs)}"
                )
        flags_of = {m[1]: set(m[3]) for m in row[8]}
        for (user, name, guid), marks in model.intent.items():
            if (user, name) != key or counts.get(guid) != 1 or (user, name, guid) in model.multi:
                continue  # gone, or several instances (the checker cannot tell which)
            for flag, wanted in marks.items():
                if wanted is not None and (flag in flags_of[guid]) != wanted:
                    raise AssertionError(
                        f"I5: {key} message {guid.hex()} should {'' if wanted else 'not '}"
                        f"have {flag} (the last change asked so), has {sorted(flags_of[guid])} "
                        f"[{'; '.join(model.history.get(guid, []))}]"
                    )
        for uid, named in model.seen.get((*key, row[3]), {}).items():
            if uid in by_uid and by_uid[uid] not in named:
                now = by_uid[uid]
                was = "; ".join(h for g in named for h in model.history.get(g, []))
                raise AssertionError(
                    f"I2: UID {uid} of {key} names another message: {now.hex()} "
                    f"[{'; '.join(model.history.get(now, []))}], acknowledged for "
                    f"{sorted(g.hex() for g in named)} [{was}]"
                )
            if len(named) > 1 and uid not in tombs:
                raise AssertionError(f"I2: UID {uid} of {key} named two messages, not retired")
        if row[4] <= model.top_uid.get(key, 0):
            raise AssertionError(f"I3: uidnext {row[4]} of {key} not above acknowledged UIDs")
        if row[5] < model.top_modseq.get(key, 0):
            raise AssertionError(f"I3: highestmodseq {row[5]} of {key} below an acknowledged one")


def _check_per_user(state: list[tuple[Any, ...]], model: Model) -> None:
    """I1/I6 per user: a message's live instances over all of the user's
    mailboxes are within the model's bounds.  Where a folder was deleted, a
    message ever placed in one may be gone (the DELETE wins, also over
    writes made on the other side of a partition), so only the upper bound
    holds for it; so too, as per mailbox, for a message with several
    instances that an expunge touched."""
    counts: dict[tuple[str, bytes], int] = {}
    where: dict[tuple[str, bytes], list[str]] = {}
    for row in state:
        for m in row[8]:
            counts[(row[0], m[1])] = counts.get((row[0], m[1]), 0) + 1
            where.setdefault((row[0], m[1]), []).append(f"{row[1]}:{m[0]}")
    for (user, guid), (low, high) in sorted(model.per_user.items()):
        history = model.history.get(guid, [])
        instances = sum("save" in h or "copy" in h for h in history)
        expunged = any("expunge" in h for h in history)
        floor = min(low, 1) if instances == 1 or not expunged else 0
        if user in model.deleted_in and (user, guid) in model.in_folder:
            floor = 0
        have = counts.get((user, guid), 0)
        if not floor <= have <= high:
            what = "lost (I1/I6)" if have < floor else "came back after an expunge"
            raise AssertionError(
                f"message {guid.hex()} of {user}: {have} live in all mailboxes, expected "
                f"{floor}..{high}: {what} [{'; '.join(history)}]; now at "
                f"{where.get((user, guid), [])}"
            )


# --- one run -------------------------------------------------------------------------


async def _run(
    seed: int,
    n: int,
    phases: int,
    tmp: Path,
    result: RunResult,
    link_faults: bool,
    mailbox_ops: bool = False,
) -> None:
    rng = random.Random(seed)
    # Mailbox operations draw from their own stream too (see link faults).
    folders = random.Random(seed ^ 0xF01D) if mailbox_ops else None
    # Link faults draw from their own stream, so that without them a seed
    # replays exactly as it did before they existed (the regression seeds).
    links = random.Random(seed ^ 0xD1A7) if link_faults else None
    net = SimNetwork()
    model = Model()
    async with cluster(tmp, n, net) as nodes, trio.open_nursery() as faults:
        await _wait(lambda: _rooted(nodes), "a root", 60)
        for user in USERS:
            await nodes["n1"].writes.create_mailbox(user, "Work")
        for phase in range(phases):
            if links is not None and links.random() < 0.5:
                # While clients write: every link slow, or one link broken mid-frame.
                if links.random() < 0.5:
                    net.delay = links.uniform(0.005, 0.5)
                    result.trace.append(f"phase {phase}: links delayed {net.delay:.3f} s")
                else:
                    a, b = links.sample(sorted(nodes), 2)
                    net.drop(a, b)
                    result.trace.append(f"phase {phase}: link {a}-{b} dropped mid-frame")
                result.faults += 1
            for _ in range(rng.randint(3, 10)):
                result.operations += 1
                result.trace.append(
                    await client_op(rng, nodes, model, result.operations, folders=folders)
                )
                await trio.sleep(rng.random() * 0.05)
            net.delay = 0.0
            victim = rng.choice(sorted(nodes))
            fault = rng.choice(["crash", "cut", "none"])
            if fault == "crash":
                nodes[victim].crash()
                await trio.sleep(rng.uniform(0.1, 8))
                await nodes[victim].start(faults)
            elif fault == "cut":
                # Split brain on purpose: clients keep writing on both sides
                # (I7), each side through its own master once it has one.
                minority = set(rng.sample(sorted(nodes), rng.randint(1, (len(nodes) - 1) // 2)))
                net.partition(minority, set(nodes) - minority)
                deadline = trio.current_time() + rng.uniform(0.1, 20)
                while trio.current_time() < deadline:
                    side = minority if rng.random() < 0.5 else set(nodes) - minority
                    result.operations += 1
                    result.trace.append(
                        "  cut: "
                        + await client_op(
                            rng, nodes, model, result.operations, side, moves=False, folders=folders
                        )
                    )
                    await trio.sleep(rng.random() * 2)
                net.heal()
                victim = ",".join(sorted(minority))
            if fault != "none":
                result.faults += 1
                result.trace.append(f"phase {phase}: {fault} {victim}")
            # Writes resume once the cluster is whole and has a root again.
            await _wait(lambda: _rooted(nodes), "a root after the fault", 120)
        try:
            await _wait(lambda: converged(nodes), "convergence", 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {await divergence(nodes)}") from None
        await check(nodes, model, folders=mailbox_ops)
        faults.cancel_scope.cancel()


async def _rooted(nodes: dict[str, Node]) -> bool:
    roots = {n.runtime.election.root if n.runtime else None for n in nodes.values()}
    linked = all(
        n.runtime is not None and len(n.runtime.sessions) == len(nodes) - 1 for n in nodes.values()
    )
    return linked and len(roots) == 1 and None not in roots


async def _wait(probe: Any, what: str, timeout: float) -> None:
    with trio.move_on_after(timeout):
        while not await probe():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"no {what} within {timeout:g} simulated seconds")


@contextmanager
def deterministic(seed: int, clock: trio.testing.MockClock) -> Iterator[None]:
    """Every source of chance a run touches, derived from the seed: trio's
    scheduler, the global ``random`` (dial jitter), random GUIDs, wall time."""
    chance = random.Random(seed ^ 0x5EED)
    saved = (trio_run._r.getstate(), random.getstate(), os.urandom, uuid.uuid4, time.time)
    scheduling = trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    # Without this trio orders each batch of runnable tasks as it finds them, and
    # it finds them in sets keyed by object address: a seed would replay alone but
    # not after other seeds in the same process.  (Importing hypothesis turns the
    # same switch on, so without it pytest and tools/sim would run different schedules.)
    trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
    trio_run._r.seed(seed)
    random.seed(seed)
    os.urandom = lambda n: chance.randbytes(n)  # type: ignore[assignment]
    uuid.uuid4 = lambda: uuid.UUID(bytes=chance.randbytes(16), version=4)
    time.time = lambda: 1_800_000_000 + clock.current_time()
    try:
        yield
    finally:
        trio_run._r.setstate(saved[0])
        trio_run._ALLOW_DETERMINISTIC_SCHEDULING = scheduling  # type: ignore[misc]
        random.setstate(saved[1])
        os.urandom, uuid.uuid4, time.time = saved[2], saved[3], saved[4]  # type: ignore[assignment]


def run_seed(
    seed: int,
    nodes: int = 3,
    phases: int = 6,
    link_faults: bool = False,
    mailbox_ops: bool = False,
) -> RunResult:
    """Run one seeded simulation; the result says whether every invariant held.
    The same seed replays the same run (same trace, same outcome)."""
    result = RunResult(seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    with tempfile.TemporaryDirectory(prefix=f"replicad-sim-{seed}-") as tmp:
        try:
            with deterministic(seed, clock):
                trio.run(
                    _run,
                    seed,
                    nodes,
                    phases,
                    Path(tmp),
                    result,
                    link_faults,
                    mailbox_ops,
                    clock=clock,
                )
        except BaseException as exc:  # a failure is a result, with its seed
            if isinstance(exc, KeyboardInterrupt):
                raise
            result.ok = False
            result.failure = "; ".join(f"{type(e).__name__}: {e}" for e in _leaves(exc))
    result.sim_seconds = clock.current_time()
    return result


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
