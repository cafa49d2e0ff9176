"""Memory of idle pooled connections: bytes per connection, and 10,000 of them for real.

Starts a local cluster (3 primaries + 3 replicas), then a ``ClusterClient`` whose pools keep
``PoolOptions(min_idle=N)`` idle connections on every node, so ``6 * N`` connections sit idle
(10,002 by default).  The figure is the growth of the process's resident memory (RSS: Python
objects, C buffers, allocator overhead) between a client with no idle connections and one with
them, divided by the number of connections; the same with ``tracemalloc`` (Python allocations
only).  Prints JSON.  ``python -m benchmarks.memory [--per-node 1667]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import tracemalloc
from typing import Any

import trio

from trio_cluster import ClusterClient, PoolOptions
from trio_cluster.testing import LocalCluster


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _settled(client: ClusterClient, total: int) -> None:
    # Polling the client's own books: min_idle filling offers no completion event.
    # Each look costs a walk over every connection, so look rarely.
    while client.stats().totals.get("idle_connections", 0) < total:  # noqa: ASYNC110
        await trio.sleep(1.0)


async def measure(per_node: int) -> dict[str, Any]:
    """Open ``per_node`` idle connections on each of 6 nodes and report the memory they use."""
    out: dict[str, Any] = {"per_node": per_node}
    for method in ("rss", "tracemalloc"):
        # A fresh cluster per method: 10,000 connections just closed leave the servers busy.
        async with LocalCluster(masters=3, replicas_per_master=1) as cluster:
            total = per_node * len(cluster.nodes)
            out["connections"] = total
            if method == "tracemalloc":
                tracemalloc.start()

            def sample(method: str = method) -> int:
                gc.collect()
                if method == "tracemalloc":
                    return tracemalloc.get_traced_memory()[0]
                return rss_bytes()

            options = PoolOptions(size=per_node, min_idle=per_node)
            async with ClusterClient(startup_nodes=cluster.startup_nodes) as empty:
                await empty.ping()
                before = sample()
            async with ClusterClient(startup_nodes=cluster.startup_nodes, pool=options) as full:
                with trio.fail_after(300):
                    await _settled(full, total)
                after = sample()
                opened = int(full.stats().totals["total_connections"])
            if method == "tracemalloc":
                tracemalloc.stop()
            per_connection = (after - before) / opened
            out[method] = {
                "connections_open": opened,
                "bytes_per_idle_connection": round(per_connection),
                "total_mib_for_10000": round(per_connection * 10_000 / 2**20, 1),
                "measured_total_mib": round((after - before) / 2**20, 1),
            }
    return out


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-node", type=int, default=1667, help="idle connections per node")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, args.per_node * 6 * 2 + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    print(json.dumps(trio.run(measure, args.per_node), indent=2))


if __name__ == "__main__":
    main()
