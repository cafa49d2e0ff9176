"""A cluster client holds no idle connections to nodes its read policy will not use (issue 24,
item 5): under primary-only reads a replica's pool keeps no ``min_idle`` connections; with
replica reads it does."""

from __future__ import annotations

from collections import Counter

import trio

from trio_cluster import ClusterClient, PoolOptions, ReadFrom
from trio_cluster.testing import LocalCluster


async def _warm(rc: ClusterClient, nodes: list[str], min_idle: int) -> Counter[str]:
    """Connections per node once every node of ``nodes`` holds ``min_idle`` of them."""
    while True:
        per_node = Counter(info.node for info in rc.connections())
        if all(per_node[name] >= min_idle for name in nodes):
            return per_node
        await trio.sleep(0.02)  # the pool fills min_idle in the background: no event to wait on


async def test_primary_reads_keep_no_idle_connections_on_replicas(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(30):
        async with ClusterClient(
            startup_nodes=local_cluster.startup_nodes[:1], pool=PoolOptions(size=20, min_idle=5)
        ) as rc:
            primaries = [n.name for n in rc.get_primaries()]
            replicas = [n.name for n in rc.get_replicas()]
            assert len(primaries) == 3 and len(replicas) == 3
            per_node = await _warm(rc, primaries, 5)
            await rc.set("a", 1)
            assert await rc.get("a") == b"1"
            assert {name: per_node[name] for name in replicas} == dict.fromkeys(replicas, 0)
            assert all(rc.stats().nodes[name].total_connections == 0 for name in replicas)
            # A command sent to a replica by name still gets a connection, on demand.
            assert await rc.ping(target_nodes=rc.REPLICAS) is True


async def test_replica_reads_keep_idle_connections_on_replicas(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(30):
        async with ClusterClient(
            startup_nodes=local_cluster.startup_nodes[:1],
            pool=PoolOptions(size=20, min_idle=2),
            read_from=ReadFrom.ROUND_ROBIN,
        ) as rc:
            nodes = [n.name for n in rc.get_nodes()]
            per_node = await _warm(rc, nodes, 2)
            assert all(per_node[name] >= 2 for name in nodes)
