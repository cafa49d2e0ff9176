"""No per-command allocation that grows with run length: Python memory after a long run is the
same as after a short one, one command per round trip and with automatic pipelining."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest
import trio

from trio_cluster import ClusterClient, PoolOptions
from trio_cluster.testing import LocalCluster

TASKS = 20


async def _run(rc: ClusterClient, commands: int, seed: int) -> None:
    per_task = commands // TASKS

    async def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        for _ in range(per_task):
            key = f"grow:{rng.randrange(500)}"
            if rng.random() < 0.5:
                await rc.set(key, b"v" * 64)
            else:
                await rc.get(key)

    async with trio.open_nursery() as nursery:
        for n in range(TASKS):
            nursery.start_soon(worker, n)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("autopipeline", [False, True], ids=["round-trip", "autopipeline"])
async def test_memory_does_not_grow_with_commands(
    local_cluster: LocalCluster, autopipeline: bool
) -> None:
    with trio.fail_after(120):
        async with ClusterClient(
            startup_nodes=local_cluster.startup_nodes,
            # Every pool full from the start: a pool that grows is not a per-command cost.
            pool=PoolOptions(size=TASKS, min_idle=TASKS, autopipeline=autopipeline),
        ) as rc:
            await _run(rc, 2_000, 0)  # every pool, cache and connection in place
            # min_idle fills in the background, on the nodes the (primary-only) reads use.
            primaries = [node.name for node in rc.get_primaries()]
            while any(rc.stats().nodes[name].total_connections < TASKS for name in primaries):
                await trio.lowlevel.checkpoint()
            tracemalloc.start()
            try:
                await _run(rc, 2_000, 1)
                short = _traced()
                long_run = 20_000
                await _run(rc, long_run, 2)
                after = _traced()
            finally:
                tracemalloc.stop()
            growth = after - short
            print(f"\nmemory growth over {long_run} more commands: {growth} bytes")
            # Anything kept per command would be at least one object (>= 16 bytes) each:
            # 320 kB for this run.  What may differ is noise of a few kB (caches, free lists).
            assert growth < long_run
