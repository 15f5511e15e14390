"""Root selection and failover on a simulated set of RootElection machines."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.cluster.root import AckRoot, AnnounceRoot, Claim, FlushMasters, RootElection

ORDER = ("n1", "n2", "n3", "n4", "n5")


class Net:
    """Nodes, links, and a synchronous exchange of announcements and gossip."""

    def __init__(self, names: tuple[str, ...] = ORDER) -> None:
        self.names = names
        self.up: set[str] = set(names)
        self.links: set[frozenset[str]] = {frozenset(p) for p in itertools.combinations(names, 2)}
        self.nodes = {n: RootElection(n, names) for n in names}
        self.flushes: dict[str, list[int]] = {n: [] for n in names}

    def reachable(self, n: str) -> frozenset[str]:
        if n not in self.up:
            return frozenset()
        seen, frontier = {n}, [n]
        while frontier:
            cur = frontier.pop()
            for m in self.up:
                if m not in seen and frozenset((cur, m)) in self.links:
                    seen.add(m)
                    frontier.append(m)
        return frozenset(seen)

    def run(self, actions: dict[str, list[object]]) -> None:
        queue = [(n, a) for n, acts in actions.items() for a in acts]
        while queue:
            src, action = queue.pop(0)
            if isinstance(action, FlushMasters):
                self.flushes[src].append(action.epoch)
            elif isinstance(action, AnnounceRoot):
                for dst in sorted(action.to):
                    if dst in self.reachable(src):
                        queue += [
                            (dst, a) for a in self.nodes[dst].root_announced(src, action.epoch)
                        ]
            elif isinstance(action, AckRoot) and action.root in self.reachable(src):
                out = self.nodes[action.root].root_acked(src, action.epoch)
                queue += [(action.root, a) for a in out]

    def settle(self, rounds: int = 6) -> None:
        for _ in range(rounds):
            # As the runtime does: links come up, claims are gossiped, and only
            # then does the start-up grace period end.
            acts: dict[str, list[object]] = {}
            for n in sorted(self.up):
                acts[n] = self.nodes[n].view_changed(self.reachable(n))
            self.run(acts)
            self.gossip()
            self.run({n: self.nodes[n].settle() for n in sorted(self.up)})
            self.gossip()

    def gossip(self) -> None:
        for n in sorted(self.up):
            for m in sorted(self.reachable(n) - {n}):
                self.run({m: self.nodes[m].claim_heard(n, self.nodes[n].gossip())})

    def crash(self, n: str) -> None:
        self.up.discard(n)

    def restart(self, n: str) -> None:
        last = self.nodes[n].max_epoch  # the epoch is persisted
        self.nodes[n] = RootElection(n, self.names, last_epoch=last)
        self.up.add(n)

    def roots(self, component: frozenset[str]) -> set[tuple[str | None, int]]:
        return {(self.nodes[n].root, self.nodes[n].epoch) for n in component}


def test_startup_elects_the_first_node_and_everyone_confirms() -> None:
    net = Net()
    net.settle()
    assert net.roots(frozenset(ORDER)) == {("n1", 1)}
    assert net.nodes["n1"].is_root and not net.nodes["n1"].pending_acks


def test_root_crash_fails_over_with_a_higher_epoch_and_flushes() -> None:
    net = Net()
    net.settle()
    net.crash("n1")
    net.settle()
    live = frozenset(ORDER) - {"n1"}
    assert net.roots(live) == {("n2", 2)}
    for n in live:
        assert net.flushes[n][-1] == 2  # every node dropped its masters for epoch 2


def test_old_root_rejoins_without_taking_over() -> None:
    net = Net()
    net.settle()
    net.crash("n1")
    net.settle()
    net.restart("n1")
    net.settle()
    assert net.roots(frozenset(ORDER)) == {("n2", 2)}
    assert not net.nodes["n1"].is_root


def test_partition_gives_each_side_a_root_and_heal_gives_one() -> None:
    net = Net()
    net.settle()
    side_a, side_b = frozenset({"n1", "n2"}), frozenset({"n3", "n4", "n5"})
    net.links = {link for link in net.links if link <= side_a or link <= side_b}
    net.settle()
    assert net.roots(side_a) == {("n1", 1)}
    assert net.roots(side_b) == {("n3", 2)}  # I7: the cut-off side keeps a root
    net.links = {frozenset(p) for p in itertools.combinations(ORDER, 2)}
    net.settle()
    roots = net.roots(frozenset(ORDER))
    assert len(roots) == 1 and None not in {r for r, _ in roots}


def test_stale_root_announcement_is_fenced() -> None:
    node = RootElection("n2", ORDER)
    node.view_changed(frozenset({"n1", "n2", "n3"}))
    node.settle()
    node.root_announced("n3", 5)
    assert node.claim == Claim(5, "n3")
    assert node.root_announced("n1", 4) == []
    assert node.claim == Claim(5, "n3")


@settings(max_examples=120, deadline=None)
@given(st.integers(0, 10**9))
def test_random_crashes_and_partitions_end_with_one_root_per_component(seed: int) -> None:
    rng = random.Random(seed)
    net = Net()
    net.settle()
    all_links = [frozenset(p) for p in itertools.combinations(ORDER, 2)]
    seen_epochs: dict[str, int] = {n: 0 for n in ORDER}
    for _ in range(rng.randint(1, 6)):
        event = rng.random()
        if event < 0.3 and len(net.up) > 1:
            net.crash(rng.choice(sorted(net.up)))
        elif event < 0.5:
            down = sorted(set(ORDER) - net.up)
            if down:
                net.restart(rng.choice(down))
        else:
            net.links = {link for link in all_links if rng.random() < 0.6}
        net.settle(rounds=rng.randint(1, 3))
        for n in net.up:  # epochs never go back on a node (fencing needs it)
            assert net.nodes[n].max_epoch >= seen_epochs[n]
            seen_epochs[n] = net.nodes[n].max_epoch
    net.settle(rounds=8)
    components = {net.reachable(n) for n in net.up}
    for component in components:
        roots = net.roots(component)
        assert len(roots) == 1, roots
        [(root, _)] = roots
        assert root in component
        assert net.nodes[root].is_root


def test_a_node_reached_through_another_joins_the_order() -> None:
    """A-B-C where A and C do not configure each other: both still agree on the root."""
    a = RootElection("a", ("a", "b"))
    c = RootElection("c", ("b", "c"))
    a.view_changed(frozenset({"b", "c"}))
    c.view_changed(frozenset({"a", "b"}))
    assert a.order == c.order == ("a", "b", "c")
    a.settle()
    c.settle()
    assert a.claim is not None and a.claim.root == "a"
    # c elects nobody itself (a comes first) and follows a's claim when it hears it.
    c.claim_heard("b", a.claim)
    assert c.claim == a.claim


def test_an_announcement_heard_before_its_root_was_reachable_is_not_waited_for() -> None:
    """Simulator seed 5: ROOT(4, c) reached a before a could route to c; when a
    later adopts that claim it must be ready at once, not wait for a ROOT that
    nobody will send again."""
    a = RootElection("a", ("b", "a", "c"))
    a.view_changed(frozenset({"b"}))
    a.settle()
    a.claim_heard("b", Claim(1, "b"))
    a.root_announced("b", 1)
    assert a.root == "b"
    a.root_announced("c", 4)  # c not reachable yet: not adopted
    assert a.root == "b"
    a.view_changed(frozenset({"b", "c"}))  # now c is reachable: its higher epoch wins
    assert a.claim == Claim(4, "c")
    assert a.root == "c"  # ready: the announcement already came


def test_a_replaced_root_is_not_followed_again() -> None:
    """Simulator seed 26: when the newest root dies, its followers must not fall
    back to an older root they had replaced; a new epoch starts, and the old
    root, told of the newer epoch, moves above it."""
    a = RootElection("a", ("a", "b", "c"))
    a.view_changed(frozenset({"b", "c"}))
    a.settle()
    assert a.claim == Claim(1, "a")
    # c took over at epoch 4 while a was away; a followed it.
    a.root_announced("c", 4)
    assert a.claim == Claim(4, "c")
    # b still gossips the stale (2, b) claim when c dies.
    a.claim_heard("b", Claim(2, "b"))
    a.view_changed(frozenset({"b"}))
    assert a.claim is not None and a.claim.root == "a" and a.claim.epoch > 4
