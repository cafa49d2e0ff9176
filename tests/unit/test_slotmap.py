"""The slot map applies a MOVED in one place: routing table and public topology together."""

from __future__ import annotations

import pytest

from trio_cluster.config import ConnectionConfig
from trio_cluster.conn.dialer import Dialer
from trio_cluster.errors import AskError, MovedError
from trio_cluster.pooling.breaker import BreakerOptions, CircuitBreaker
from trio_cluster.pooling.pool import Pool, PoolOptions
from trio_cluster.routing.slotmap import Node, ReadFrom, SlotMap
from trio_cluster.routing.topology import Address, Shard, Topology


def _slot_map(refreshes: list[str], reinitialize_steps: int = 1) -> SlotMap:
    def create(address: Address, replica: bool = False) -> Node:
        # Never started: the slot map only needs the node objects (no I/O here).
        dialer = Dialer(
            ConnectionConfig(host=address[0], port=address[1]), watchdog=None, credentials=None
        )
        pool = Pool(dialer, PoolOptions(), node_name=f"{address[0]}:{address[1]}", timeout=1.0)
        return Node(address, pool, CircuitBreaker("n", BreakerOptions()), dialer)

    async def start(node: Node) -> None:
        pass

    async def refresh() -> None:
        refreshes.append("wait")

    return SlotMap(
        read_from=ReadFrom.PRIMARY,
        remap=lambda a: (a[0], a[1] + 1000),
        create=create,
        start=start,
        request_refresh=lambda: refreshes.append("request"),
        refresh=refresh,
        reinitialize_steps=reinitialize_steps,
    )


async def test_a_moved_updates_the_routing_table_and_the_public_topology() -> None:
    refreshes: list[str] = []
    slots = _slot_map(refreshes)
    a, b = ("10.0.0.1", 7000), ("10.0.0.2", 7000)
    assert await slots.install(Topology.from_shards([Shard(a, (), ((0, 16383),))])) == []
    owner = slots.primary(42)
    assert owner is not None and owner.address == a
    target = await slots.apply_moved(MovedError("42 10.0.0.2:6000"), owner)
    assert target.address == b  # remapped, as every announced address
    assert slots.primary(42) is target
    shard = slots.topology.shard_for(42)
    assert shard is not None and shard.primary == b  # the public topology says so too
    other = slots.topology.shard_for(43)
    assert other is not None and other.primary == a  # and nothing else moved
    assert (slots.moved, refreshes) == (1, ["request"])


async def test_an_ask_changes_nothing_and_an_empty_host_means_the_asked_node() -> None:
    slots = _slot_map([])
    a = ("10.0.0.1", 7000)
    await slots.install(Topology.from_shards([Shard(a, (), ((0, 16383),))]))
    owner = slots.primary(7)
    target = await slots.ask_target(AskError("7 :6001"), owner)
    assert target.address == ("10.0.0.1", 7001)
    assert slots.primary(7) is owner and slots.topology.shard_for(7) == Shard(a, (), ((0, 16383),))
    assert slots.ask == 1
    departed = await slots.install(Topology.from_shards([Shard(target.address, (), ((0, 16383),))]))
    assert departed == [owner] and owner.retired and slots.nodes() == [target]


@pytest.mark.parametrize(("steps", "requests"), [(1, 6), (3, 2), (5, 1), (0, 0), (-3, 2)])
async def test_reinitialize_steps_spaces_the_refreshes_moved_replies_ask_for(
    steps: int, requests: int
) -> None:
    """redis-py's ``reinitialize_steps``: a full refresh every that many MOVED replies (0:
    never; a negative count as its absolute value); each MOVED still patches its slot."""
    refreshes: list[str] = []
    slots = _slot_map(refreshes, reinitialize_steps=steps)
    a = ("10.0.0.1", 7000)
    await slots.install(Topology.from_shards([Shard(a, (), ((0, 16383),))]))
    for slot in range(6):
        owner = slots.primary(slot)
        target = await slots.apply_moved(MovedError(f"{slot} 10.0.0.2:6000"), owner)
        assert slots.primary(slot) is target
    assert refreshes == ["request"] * requests
