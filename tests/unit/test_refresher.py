"""The topology refresher on the autojump clock, with one-off connections answered in memory:
single-flight and rate-limited on request, periodic without, candidates tried in turn, a map
that covers no slot passed over, every failure named when none answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster.errors import ClusterUnreachableError
from trio_cluster.routing.refresher import Refresher
from trio_cluster.routing.rules import CommandTable
from trio_cluster.routing.topology import Address, Topology

A: Address = ("10.0.0.1", 7000)
B: Address = ("10.0.0.2", 7000)


def _shards(primary: Address, ranges: Sequence[int]) -> list[Any]:
    """A CLUSTER SHARDS reply (RESP3 maps) with one shard."""
    node = {b"ip": primary[0].encode(), b"port": primary[1], b"role": b"master",
            b"health": b"online"}  # fmt: skip
    return [{b"slots": list(ranges), b"nodes": [node]}]


class OneOff:
    """A one-off connection to a node: answers CLUSTER SHARDS and COMMAND."""

    def __init__(self, dialer: Dialer, address: Address) -> None:
        self.dialer = dialer
        self.address = address

    async def execute(self, args: Sequence[Any]) -> Any:
        await trio.sleep(self.dialer.latency)
        if args[0] == "COMMAND":
            return [[b"get", 2, [b"readonly"], 1, 1, 1]]
        return self.dialer.maps[self.address]

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class Dialer:
    """The refresher's dialer: nodes answer with ``maps[address]``; ``down`` refuse."""

    def __init__(self) -> None:
        self.maps: dict[Address, Any] = {}
        self.down: set[Address] = set()
        self.opened: list[Address] = []
        self.latency = 0.0

    async def open(self, address: Address, **_: Any) -> OneOff:
        self.opened.append(address)
        await trio.lowlevel.checkpoint()
        if address in self.down:
            raise rex.ConnectionError(f"{address} refused")
        return OneOff(self, address)


class Installed:
    def __init__(self) -> None:
        self.topologies: list[Topology] = []
        self.tables: list[CommandTable | None] = []

    def current(self) -> Topology:
        return self.topologies[-1] if self.topologies else Topology.from_shards([])

    async def install(self, topology: Topology, table: CommandTable | None) -> None:
        self.topologies.append(topology)
        self.tables.append(table)


def _refresher(dialer: Dialer, installed: Installed, **options: Any) -> Refresher:
    """A refresher over the fakes, starting from A and B; ``options`` override the defaults."""
    settings: dict[str, Any] = {
        "startup": [A, B], "remap": None, "interval": 30.0, "min_interval": 0.1, **options
    }  # fmt: skip
    return Refresher(
        dialer=dialer,  # type: ignore[arg-type]
        current=installed.current,
        install=installed.install,
        **settings,
    )


async def test_the_first_refresh_loads_the_map_and_the_command_table(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        dialer, installed = Dialer(), Installed()
        dialer.maps[A] = _shards(A, [0, 16383])
        dialer.down.add(B)
        await _refresher(dialer, installed).once(initial=True)
        assert installed.current().primaries == [A]
        table = installed.tables[-1]
        assert table is not None and "GET" in table.specs


async def test_requests_are_single_flight_and_rate_limited(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        dialer, installed = Dialer(), Installed()
        dialer.maps[A] = dialer.maps[B] = _shards(A, [0, 16383])
        refresher = _refresher(dialer, installed, min_interval=1.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresher.run)
            started = trio.current_time()
            for _ in range(50):
                refresher.request()
            await refresher.refresh()  # waits for the one refresh the 50 requests asked for
            await refresher.refresh()  # the next one waits out the rate limit
            assert refresher.refreshes == 2
            assert trio.current_time() - started >= 1.0
            nursery.cancel_scope.cancel()


async def test_without_requests_it_refreshes_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        dialer, installed = Dialer(), Installed()
        dialer.maps[A] = dialer.maps[B] = _shards(A, [0, 16383])
        refresher = _refresher(dialer, installed, interval=5.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refresher.run)
            await trio.sleep(16.0)
            assert refresher.refreshes == 3
            nursery.cancel_scope.cancel()


async def test_a_map_without_slots_is_passed_over_and_failures_are_named(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        dialer, installed = Dialer(), Installed()
        dialer.maps[A] = []  # a node that knows no slot (a fresh or reset node)
        dialer.maps[B] = _shards(B, [0, 16383])
        refresher = _refresher(dialer, installed)
        await refresher.once()
        assert installed.current().primaries == [B]
        dialer.down.update({A, B})
        with pytest.raises(ClusterUnreachableError) as raised:
            await refresher.once()
        assert "10.0.0.1:7000: " in str(raised.value) and "10.0.0.2:7000: " in str(raised.value)
        assert installed.current().primaries == [B]  # the old map stays


async def test_nodes_known_bad_are_asked_last(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        dialer, installed = Dialer(), Installed()
        dialer.maps[A] = dialer.maps[B] = _shards(A, [0, 16383])
        # A is known bad: a hung node would hold the refresh.
        refresher = _refresher(dialer, installed, known_bad=lambda address: address == A)
        for _ in range(10):  # whatever the random order
            await refresher.once()
        assert set(dialer.opened) == {B}


@pytest.mark.parametrize("dynamic", [True, False])
async def test_dynamic_startup_nodes(dynamic: bool, autojump_clock: trio.testing.MockClock) -> None:
    """redis-py's ``dynamic_startup_nodes``: later refreshes ask the nodes of the current map
    (True), or only the startup nodes (False)."""
    with trio.fail_after(60):
        dialer, installed = Dialer(), Installed()
        c: Address = ("10.0.0.3", 7000)
        dialer.maps[A] = dialer.maps[c] = _shards(c, [0, 16383])  # A says C serves everything
        dialer.down.add(B)
        refresher = _refresher(dialer, installed, dynamic_startup_nodes=dynamic)
        await refresher.once()
        dialer.opened.clear()
        for _ in range(10):  # whatever the random order
            await refresher.once()
        assert (c in dialer.opened) is dynamic
        assert set(dialer.opened) <= ({A, B, c} if dynamic else {A, B})


async def test_a_partial_map_is_refused_unless_full_coverage_is_not_required(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        dialer, installed = Dialer(), Installed()
        dialer.maps[A] = dialer.maps[B] = _shards(A, [0, 99])
        with pytest.raises(ClusterUnreachableError, match="only 100 of 16384 slots"):
            await _refresher(dialer, installed).once()
        partial = _refresher(dialer, installed)
        partial.require_full_coverage = False
        await partial.once()
        assert installed.current().covered == 100
