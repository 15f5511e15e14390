"""Seeded cluster simulation: a workload, faults, and the invariant checks (DESIGN §8).

One run is a pure function of its seed: N real :class:`ClusterNode`s with
real LMDB stores run inline, on :class:`SimNetwork`, under
``trio.testing.MockClock(autojump_threshold=0)``.  The run alternates
*write phases* (random client operations through random nodes) and *fault
phases* (a node crashed and restarted, or cut off and healed, while the
clients wait).  Then the network heals, writes stop, and :func:`check`
verifies I1-I6 on every node.

Scope of this version: clients do not write while a fault is active, so no
two sides of a partition write concurrently (split-brain repair is the
resync layer's, not yet written).  What it does exercise is reconnects,
outbox resume after a crash, root failover and re-election, master
reassignment and MASTER-MOVE, with every interleaving the seed picks.

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

    def __init__(self, name: str, names: tuple[str, ...], store: MailStore, data: Path,
                 net: SimNetwork) -> None:
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
            settings=ClusterSettings(compress=False),
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
    """What clients were told (the ground truth the checker holds nodes to)."""

    saved: dict[tuple[str, str], dict[int, bytes]] = field(default_factory=dict)  # uid -> guid
    expunged: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    modseqs: dict[tuple[str, str], int] = field(default_factory=dict)


async def client_op(rng: random.Random, nodes: dict[str, Node], model: Model, i: int) -> str:
    name = rng.choice(sorted(n for n, node in nodes.items() if node.runtime is not None))
    node = nodes[name]
    user, mailbox = rng.choice(USERS), rng.choice(MAILBOXES)
    key = (user, mailbox)
    known = sorted(set(model.saved.get(key, {})) - model.expunged.get(key, set()))
    kind = rng.choices(["save", "flags", "expunge", "copy", "move"], [6, 3, 1, 1, 1])[0]
    if not known and kind in ("flags", "expunge", "copy"):
        kind = "save"
    try:
        if kind == "save":
            body = f"Subject: {i}\r\n\r\n{rng.random()}\r\n".encode()
            appended = await node.writes.append(user, mailbox, body)
            uids = model.saved.setdefault(key, {})
            if appended.uid in uids and uids[appended.uid] != appended.guid:
                raise AssertionError(f"I2: UID {appended.uid} of {key} given to two messages")
            uids[appended.uid] = appended.guid
            _modseq(model, key, appended.modseq)
            return f"{name} save {user}/{mailbox} -> uid {appended.uid}"
        if kind == "flags":
            uid = rng.choice(known)
            flag = rng.choice(["\\Seen", "\\Flagged", "$Work"])
            mode = rng.choice(["add", "remove"])
            changed = await node.writes.store_flags(user, mailbox, UidSet.of([uid]), mode, [flag])
            return f"{name} flags {mode} {flag} {user}/{mailbox} uid {uid} -> {changed.modseq}"
        if kind == "expunge":
            uid = rng.choice(known)
            await node.writes.expunge(user, mailbox, UidSet.of([uid]))
            model.expunged.setdefault(key, set()).add(uid)
            return f"{name} expunge {user}/{mailbox} uid {uid}"
        if kind == "copy":
            uid = rng.choice(known)
            dest = "Work" if mailbox == "INBOX" else "INBOX"
            copied = await node.writes.copy(user, mailbox, UidSet.of([uid]), dest)
            dest_uids = model.saved.setdefault((user, dest), {})
            for a in copied.appended:
                dest_uids[a.uid] = a.guid or model.saved[key][uid]
            return f"{name} copy {user}/{mailbox} uid {uid} -> {dest}"
        to = rng.choice(sorted(nodes))
        await node.writes.node.move_master(user, mailbox, to)
        return f"{name} master move {user}/{mailbox} -> {to}"
    except ReplicadError as exc:
        # A refused operation is allowed (e.g. the master just moved away);
        # an acknowledged one must hold.  Nothing was promised here.
        return f"{name} {kind} {user}/{mailbox} refused: {type(exc).__name__}: {exc}"


def _modseq(model: Model, key: tuple[str, str], modseq: int) -> None:
    last = model.modseqs.get(key, 0)
    if modseq <= last:
        raise AssertionError(f"I3: modseq {modseq} of {key} after {last}")
    model.modseqs[key] = modseq


# --- checks --------------------------------------------------------------------------


async def converged(nodes: dict[str, Node]) -> bool:
    states = [await node.store.logical_state() for node in nodes.values()]
    return all(s == states[0] for s in states)


async def check(nodes: dict[str, Node], model: Model) -> None:
    """I4 identical state; I1/I6 every acknowledged, unexpunged message everywhere;
    I2 no UID names two messages; I3 UIDNEXT above every UID handed out."""
    states = {name: await node.store.logical_state() for name, node in nodes.items()}
    first = next(iter(states.values()))
    for name, state in states.items():
        if state != first:
            raise AssertionError(f"I4: {name} differs from {next(iter(states))}")
    by_name = {(row[0], row[1]): row for row in first}
    for key, uids in model.saved.items():
        row = by_name.get(key)
        if row is None:
            raise AssertionError(f"I6: mailbox {key} missing")
        present = {m[0]: m[1] for m in row[8]}
        for uid, guid in uids.items():
            if uid in model.expunged.get(key, set()):
                if uid in present:
                    raise AssertionError(f"expunged UID {uid} of {key} came back")
                continue
            if present.get(uid) != guid:
                raise AssertionError(f"I1/I6: UID {uid} of {key} lost or changed")
        if uids and row[4] <= max(uids):
            raise AssertionError(f"I3: uidnext {row[4]} of {key} not above {max(uids)}")


# --- one run -------------------------------------------------------------------------


async def _run(seed: int, n: int, phases: int, tmp: Path, result: RunResult) -> None:
    rng = random.Random(seed)
    net = SimNetwork()
    model = Model()
    async with cluster(tmp, n, net) as nodes, trio.open_nursery() as faults:
        await _wait(lambda: _rooted(nodes), "a root", 60)
        for user in USERS:
            await nodes["n1"].writes.create_mailbox(user, "Work")
        for phase in range(phases):
            for _ in range(rng.randint(3, 10)):
                result.operations += 1
                result.trace.append(await client_op(rng, nodes, model, result.operations))
                await trio.sleep(rng.random() * 0.05)
            victim = rng.choice(sorted(nodes))
            fault = rng.choice(["crash", "cut", "none"])
            if fault == "crash":
                nodes[victim].crash()
                await trio.sleep(rng.uniform(0.1, 8))
                await nodes[victim].start(faults)
            elif fault == "cut":
                net.partition({victim}, set(nodes) - {victim})
                await trio.sleep(rng.uniform(0.1, 8))
                net.heal()
            if fault != "none":
                result.faults += 1
                result.trace.append(f"phase {phase}: {fault} {victim}")
            # Writes resume once the cluster is whole and has a root again.
            await _wait(lambda: _rooted(nodes), "a root after the fault", 120)
        await _wait(lambda: converged(nodes), "convergence", 120)
        await check(nodes, model)
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
    trio_run._r.seed(seed)
    random.seed(seed)
    os.urandom = lambda n: chance.randbytes(n)  # type: ignore[assignment]
    uuid.uuid4 = lambda: uuid.UUID(bytes=chance.randbytes(16), version=4)
    time.time = lambda: 1_800_000_000 + clock.current_time()
    try:
        yield
    finally:
        trio_run._r.setstate(saved[0])
        random.setstate(saved[1])
        os.urandom, uuid.uuid4, time.time = saved[2], saved[3], saved[4]  # type: ignore[assignment]


def run_seed(seed: int, nodes: int = 3, phases: int = 6) -> RunResult:
    """Run one seeded simulation; the result says whether every invariant held.
    The same seed replays the same run (same trace, same outcome)."""
    result = RunResult(seed)
    clock = trio.testing.MockClock(autojump_threshold=0)
    with tempfile.TemporaryDirectory(prefix=f"replicad-sim-{seed}-") as tmp:
        try:
            with deterministic(seed, clock):
                trio.run(_run, seed, nodes, phases, Path(tmp), result, clock=clock)
        except BaseException as exc:  # a failure is a result, with its seed
            if isinstance(exc, KeyboardInterrupt):
                raise
            result.ok = False
            result.failure = "; ".join(
                f"{type(e).__name__}: {e}" for e in _leaves(exc)
            )
    result.sim_seconds = clock.current_time()
    return result


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]
