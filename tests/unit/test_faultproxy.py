"""The fault proxy (replicad/faultproxy.py): its pure decision logic, then the trio
proxy itself in-process, against an echo server on 127.0.0.1."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from replicad import faultproxy
from replicad.errors import BadInputError, ExitCode, UnreachableError, UsageError
from replicad.faultproxy import FaultState, Route
from tests.conftest import free_port

NODES = ["n1", "n2", "n3"]


def fs(*groups: str) -> tuple[frozenset[str], ...]:
    return tuple(frozenset(g.split(",")) for g in groups)


# --- partitions -------------------------------------------------------------------------


def test_groups_from_the_command_line() -> None:
    assert faultproxy.parse_groups(["n1,n2", "n3"], NODES) == fs("n1,n2", "n3")
    # Groups come out in node order, whatever order they were given in.
    assert faultproxy.parse_groups(["n3", "n2,n1"], NODES) == fs("n1,n2", "n3")


def test_nodes_named_in_no_group_form_one_group_together() -> None:
    assert faultproxy.parse_groups(["n1"], NODES) == fs("n1", "n2,n3")
    five = [f"n{k}" for k in range(1, 6)]
    assert faultproxy.parse_groups(["n2", "n4"], five) == fs("n1,n3,n5", "n2", "n4")


def test_one_group_is_no_partition() -> None:
    assert faultproxy.parse_groups(["n1,n2,n3"], NODES) == ()


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["n1", "n9"], "unknown node 'n9'; the cluster has n1, n2, n3"),
        (["n1,n2", "n2"], "node n2 is named twice"),
        (["n1,,n2"], "unknown node ''"),
        (["n1,"], "unknown node ''"),
    ],
)
def test_bad_groups_are_usage_errors(words: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        faultproxy.parse_groups(words, NODES)
    assert info.value.exit_code == ExitCode.USAGE
    assert message in str(info.value)


def test_empty_group_is_refused() -> None:
    with pytest.raises(UsageError, match="empty group"):
        faultproxy.normalize_groups([["n1"], []], NODES)


def test_node_order_puts_n2_before_n10() -> None:
    nodes = [f"n{k}" for k in range(1, 11)]
    assert sorted(reversed(nodes), key=faultproxy.node_order) == nodes
    assert faultproxy.describe_groups(faultproxy.parse_groups(["n10,n2"], nodes)) == (
        "n1,n3,n4,n5,n6,n7,n8,n9 | n2,n10"
    )


def test_allows() -> None:
    healed = FaultState()
    assert all(healed.allows(a, b) for a in NODES for b in NODES)
    split = FaultState(fs("n1", "n2,n3"))
    assert not split.allows("n1", "n2") and not split.allows("n3", "n1")
    assert split.allows("n2", "n3") and split.allows("n3", "n2")
    # A state built by hand may leave nodes out: those are together.
    partial = FaultState(fs("n1"))
    assert partial.allows("n2", "n3") and not partial.allows("n2", "n1")


def test_state_round_trips_through_json() -> None:
    state = FaultState(fs("n1", "n2,n3"), delay_ms=40)
    doc = state.to_json()
    assert doc == {"groups": [["n1"], ["n2", "n3"]], "delay_ms": 40}
    assert FaultState.from_json(doc, NODES) == state
    assert FaultState.from_json({"groups": [], "delay_ms": 0}, NODES) == FaultState()


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"groups": "n1"},
        {"groups": [["n1"], ["n7"]]},
        {"groups": [], "delay_ms": -1},
        {"groups": [], "delay_ms": True},
        {"groups": [], "extra": 1},
    ],
)
def test_bad_state_documents(doc: Any) -> None:
    with pytest.raises(BadInputError):
        FaultState.from_json(doc, NODES)


def test_delay_bounds() -> None:
    assert faultproxy.check_delay(0) == 0
    assert faultproxy.check_delay(faultproxy.MAX_DELAY_MS) == faultproxy.MAX_DELAY_MS
    for bad in (-1, faultproxy.MAX_DELAY_MS + 1, 1.5, "10", None):
        with pytest.raises(UsageError):
            faultproxy.check_delay(bad)


# --- routes -----------------------------------------------------------------------------


def test_one_route_per_ordered_pair() -> None:
    ports = {"n1": 100, "n2": 200, "n3": 300}
    routes = faultproxy.plan_routes(ports, [1, 2, 3, 4, 5, 6])
    assert len(routes) == faultproxy.route_count(3) == 6
    assert {(r.source, r.target) for r in routes} == {
        (a, b) for a in ports for b in ports if a != b
    }
    assert all(r.port == ports[r.target] for r in routes)
    assert faultproxy.peer_ports(routes, "n2") == {
        r.target: r.listen for r in routes if r.source == "n2"
    }
    assert set(faultproxy.peer_ports(routes, "n2")) == {"n1", "n3"}
    assert faultproxy.nodes_of(routes) == NODES


def test_route_ports_must_be_distinct_and_not_the_nodes() -> None:
    ports = {"n1": 100, "n2": 200}
    with pytest.raises(ValueError):
        faultproxy.plan_routes(ports, [1])
    with pytest.raises(ValueError):
        faultproxy.plan_routes(ports, [1, 1])
    with pytest.raises(ValueError):
        faultproxy.plan_routes(ports, [1, 200])


def test_routes_file_round_trip(tmp_path: Path) -> None:
    routes = faultproxy.plan_routes({"n1": 100, "n2": 200}, [1, 2])
    assert not faultproxy.is_proxied(tmp_path)
    faultproxy.write_routes(tmp_path, routes)
    assert faultproxy.is_proxied(tmp_path)
    assert faultproxy.load_routes(tmp_path) == routes
    (tmp_path / "proxy" / "routes.json").write_text('{"routes": [{"source": 1}]}')
    with pytest.raises(BadInputError, match="not a valid routes file"):
        faultproxy.load_routes(tmp_path)


def test_saved_state_is_validated(tmp_path: Path) -> None:
    faultproxy.write_routes(tmp_path, faultproxy.plan_routes({"n1": 100, "n2": 200}, [1, 2]))
    assert faultproxy.load_state(tmp_path, ["n1", "n2"]) == FaultState()
    faultproxy.save_state(tmp_path, FaultState(fs("n1", "n2"), 5))
    assert faultproxy.load_state(tmp_path, ["n1", "n2"]) == FaultState(fs("n1", "n2"), 5)
    (tmp_path / "proxy" / "faults.json").write_text("{")
    with pytest.raises(BadInputError, match=r"faults\.json"):
        faultproxy.load_state(tmp_path, ["n1", "n2"])


def test_control_without_a_proxy_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(UnreachableError) as info:
        faultproxy.control(tmp_path, {"op": "state"})
    assert info.value.exit_code == ExitCode.UNREACHABLE
    assert faultproxy.running_pid(tmp_path) is None
    assert not faultproxy.is_proxy_process(os.getpid(), tmp_path)


# --- the proxy, in-process ------------------------------------------------------------------


@pytest.fixture
def short_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # A short path: the control socket's path is limited to 107 bytes.
    yield tmp_path_factory.mktemp("fp")


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _proxied_echo(nursery: trio.Nursery, directory: Path) -> tuple[Route, faultproxy.Proxy]:
    """An echo server as n2, a proxy whose route n1->n2 leads to it; (that route, proxy)."""
    listeners = await nursery.start(partial(trio.serve_tcp, _echo, 0, host="127.0.0.1"))
    echo_port = listeners[0].socket.getsockname()[1]
    routes = faultproxy.plan_routes({"n1": free_port(), "n2": echo_port}, _ports(2))
    faultproxy.write_routes(directory, routes)
    proxy = faultproxy.Proxy(directory, routes, FaultState())
    await nursery.start(proxy.run)
    [route] = [r for r in routes if (r.source, r.target) == ("n1", "n2")]
    return route, proxy


def _ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


async def _control(directory: Path, **request: Any) -> dict[str, Any]:
    # The client is blocking; the proxy answers from this same trio loop.
    return await trio.to_thread.run_sync(faultproxy.control, directory, request)


async def _exchange(stream: trio.SocketStream, payload: bytes) -> bytes:
    got = b""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, payload)
        while len(got) < len(payload):
            chunk = await stream.receive_some(65536)
            assert chunk, "the connection closed early"
            got += chunk
    return got


async def _is_dead(stream: trio.SocketStream) -> bool:
    """Whether the peer reset or closed ``stream`` (waits until it says so)."""
    try:
        with trio.fail_after(10):
            return await stream.receive_some(1) == b""
    except trio.BrokenResourceError:
        return True


async def test_bytes_pass_unchanged_and_a_partition_cuts_mid_stream(short_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        route, proxy = await _proxied_echo(nursery, short_dir)
        stream = await trio.open_tcp_stream("127.0.0.1", route.listen)
        payload = os.urandom(3 * 1024 * 1024)  # many chunks, both ways at once
        assert await _exchange(stream, payload) == payload
        assert (await _control(short_dir, op="state"))["connections"] == 1

        answer = await _control(short_dir, op="partition", groups=[["n1"], ["n2"]])
        assert answer["ok"] and answer["cut"] == 1 and answer["groups"] == [["n1"], ["n2"]]
        assert await _is_dead(stream)
        assert proxy.connections == set()
        # New connections are accepted and reset at once while the partition holds.
        refused = await trio.open_tcp_stream("127.0.0.1", route.listen)
        assert await _is_dead(refused)
        # The state outlives the proxy (read again when it restarts).
        assert faultproxy.load_state(short_dir, ["n1", "n2"]) == FaultState(fs("n1", "n2"))

        answer = await _control(short_dir, op="heal")
        assert answer["groups"] == [] and answer["cut"] == 0
        again = await trio.open_tcp_stream("127.0.0.1", route.listen)
        assert await _exchange(again, b"back") == b"back"
        nursery.cancel_scope.cancel()


async def test_bytes_forwarded_are_counted_per_route_and_direction(short_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        route, _proxy = await _proxied_echo(nursery, short_dir)
        before = (await _control(short_dir, op="state"))["bytes"]
        assert before == {
            "n1->n2": {"to_target": 0, "to_source": 0},
            "n2->n1": {"to_target": 0, "to_source": 0},
        }
        stream = await trio.open_tcp_stream("127.0.0.1", route.listen)
        payload = os.urandom(200_000)
        assert await _exchange(stream, payload) == payload
        await stream.send_all(b"one way")  # not read back: counted once it is forwarded
        with trio.fail_after(10):
            while (await _control(short_dir, op="state"))["bytes"]["n1->n2"]["to_target"] < (
                len(payload) + 7
            ):
                await trio.sleep(0.01)
        counts = (await _control(short_dir, op="state"))["bytes"]
        assert counts["n1->n2"]["to_target"] == len(payload) + 7
        assert counts["n1->n2"]["to_source"] >= len(payload)
        assert counts["n2->n1"] == {"to_target": 0, "to_source": 0}
        nursery.cancel_scope.cancel()


async def test_delay_holds_each_direction_and_keeps_order(short_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        route, _proxy = await _proxied_echo(nursery, short_dir)
        assert (await _control(short_dir, op="delay", ms=100))["delay_ms"] == 100
        stream = await trio.open_tcp_stream("127.0.0.1", route.listen)
        start = trio.current_time()
        expected = b""
        for i in range(50):
            piece = f"<{i}>".encode()
            expected += piece
            await stream.send_all(piece)
        got = b""
        while len(got) < len(expected):
            got += await stream.receive_some(65536)
        assert got == expected
        # Both directions delayed: the echo cannot be back before 2 x 100 ms.
        assert trio.current_time() - start >= 0.2
        nursery.cancel_scope.cancel()


async def test_a_down_target_resets_the_dialler(short_dir: Path) -> None:
    async with trio.open_nursery() as nursery:
        route, _proxy = await _proxied_echo(nursery, short_dir)
        [back] = [r for r in _proxy.routes if r.source == "n2"]  # n1's port: nobody there
        stream = await trio.open_tcp_stream("127.0.0.1", back.listen)
        assert await _is_dead(stream)
        assert route.port != back.port
        nursery.cancel_scope.cancel()


def test_bad_requests_get_an_error_answer(tmp_path: Path) -> None:
    routes = faultproxy.plan_routes({"n1": 100, "n2": 200}, [1, 2])
    faultproxy.write_routes(tmp_path, routes)
    proxy = faultproxy.Proxy(tmp_path, routes, FaultState())
    for request, error in [
        ({"op": "explode"}, "unknown op"),
        ("state", '"op"'),
        ({"op": "partition", "groups": [["n1"], ["n5"]]}, "unknown node 'n5'"),
        ({"op": "partition", "groups": "n1"}, "lists of node names"),
        ({"op": "delay", "ms": -3}, "milliseconds"),
    ]:
        answer = proxy.answer(request)
        assert answer["ok"] is False and error in answer["error"], (request, answer)
    assert proxy.state == FaultState()
    assert proxy.answer({"op": "delay", "ms": 7})["delay_ms"] == 7
