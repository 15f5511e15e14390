"""Routing over partial meshes converges to shortest paths and forgets dead links."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from replicad.cluster.routing import RoutingTable


def converge(tables: dict[str, RoutingTable], rounds: int = 50) -> None:
    """Exchange vectors until nothing changes (a synchronous gossip)."""
    for _ in range(rounds):
        changed = False
        for name, table in tables.items():
            for neighbour in sorted(table.links):
                vector = table.vector_for(neighbour)
                changed |= tables[neighbour].receive_vector(name, vector)
        if not changed:
            return
    raise AssertionError("routing did not converge")


def build(nodes: list[str], edges: set[tuple[str, str]]) -> dict[str, RoutingTable]:
    tables = {n: RoutingTable(n) for n in nodes}
    for a, b in edges:
        tables[a].link_up(b)
        tables[b].link_up(a)
    converge(tables)
    return tables


def bfs_hops(nodes: list[str], edges: set[tuple[str, str]], start: str) -> dict[str, int]:
    adj = {n: set() for n in nodes}
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    dist = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for n in frontier:
            for m in adj[n]:
                if m not in dist:
                    dist[m] = dist[n] + 1
                    nxt.append(m)
        frontier = nxt
    return dist


def test_chain_reaches_the_far_end_through_the_middle() -> None:
    tables = build(["a", "b", "c"], {("a", "b"), ("b", "c")})
    assert tables["a"].next_hop("c") == "b"
    assert tables["a"].route("c").hops == 2  # type: ignore[union-attr]
    assert tables["c"].reachable() == {"a", "b", "c"}


def test_link_down_drops_routes_through_it() -> None:
    tables = build(["a", "b", "c"], {("a", "b"), ("b", "c")})
    tables["b"].link_down("c")
    tables["c"].link_down("b")
    converge(tables)
    assert tables["a"].next_hop("c") is None
    assert tables["a"].reachable() == {"a", "b"}
    assert tables["c"].reachable() == {"c"}


def test_direct_link_preferred_and_restored() -> None:
    edges = {("a", "b"), ("b", "c"), ("a", "c")}
    tables = build(["a", "b", "c"], edges)
    assert tables["a"].next_hop("c") == "c"
    tables["a"].link_down("c")
    tables["c"].link_down("a")
    converge(tables)
    assert tables["a"].next_hop("c") == "b"
    tables["a"].link_up("c")
    tables["c"].link_up("a")
    converge(tables)
    assert tables["a"].next_hop("c") == "c"


graphs = st.integers(2, 7).flatmap(
    lambda n: st.tuples(
        st.just([f"n{i}" for i in range(n)]),
        st.sets(st.sampled_from(list(itertools.combinations([f"n{i}" for i in range(n)], 2)))),
        st.integers(0, 10**6),
    )
)


@settings(max_examples=150, deadline=None)
@given(graphs)
def test_routes_are_shortest_paths_after_any_history(graph: tuple) -> None:  # type: ignore[type-arg]
    nodes, edges, seed = graph
    rng = random.Random(seed)
    # A history: start from a random graph, then flip some links, then settle.
    start = {e for e in itertools.combinations(nodes, 2) if rng.random() < 0.5}
    tables = build(nodes, start)
    for a, b in itertools.combinations(nodes, 2):
        if ((a, b) in edges) != ((a, b) in start):
            if (a, b) in edges:
                tables[a].link_up(b)
                tables[b].link_up(a)
            else:
                tables[a].link_down(b)
                tables[b].link_down(a)
        if rng.random() < 0.3:
            converge(tables)
    converge(tables)
    for n in nodes:
        dist = bfs_hops(nodes, edges, n)
        assert tables[n].reachable() == set(dist)
        for target, hops in dist.items():
            if target != n:
                route = tables[n].route(target)
                assert route is not None and route.hops == hops
                # The next hop is a neighbour that is one hop closer.
                assert (min(n, route.next_hop), max(n, route.next_hop)) in edges


def test_advertised_distance_tells_who_has_a_direct_link() -> None:
    """The relay rule's input: in A-B-C, B learns A has no direct link to C."""
    tables = build(["a", "b", "c"], {("a", "b"), ("b", "c")})
    converge(tables)
    b = tables["b"]
    assert b.advertised("a", "c") != 1  # a reaches c only through b (poisoned: unreachable)
    assert b.advertised("c", "a") != 1
    assert b.advertised("a", "a") == 0
    tables["a"].link_up("c")
    tables["c"].link_up("a")
    converge(tables)
    assert b.advertised("a", "c") == 1  # now direct: b stops relaying c's changes to a
