"""No per-command allocation that grows with run length: Python memory after a long run is the
same as after a short one, one command per round trip and with automatic pipelining; and a
hostile reply takes no more memory than ``max_reply_elements`` allows."""

from __future__ import annotations

import gc
import random
import tracemalloc

import pytest
import trio
from fake_resp import FakeRedis, bulk, pump

from trio_cluster import Client, ClusterClient, PoolOptions
from trio_cluster.errors import ReplyTooLargeError
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


async def test_a_hostile_reply_holds_no_more_memory_than_max_reply_elements_allows() -> None:
    """A server streams a reply whose headers each declare little (999 empty arrays per
    aggregate) but which never ends: end to end, on a real socket, the Python memory it takes
    stays within what ``max_reply_elements`` allows, and the client carries on."""
    limit = 65_536  # the smallest bound accepted: the reply is refused soonest
    unit = b"*999\r\n" + b"*0\r\n" * 999

    async def serve(args: list[bytes], stream: trio.SocketStream) -> None:
        if args[1] == b"flood":  # 16 MiB of units: 4 million lists (~300 MB) unchecked
            # The top declares 10,000 (within the bound): only counting what arrives stops it.
            await pump(stream, b"*10000\r\n", unit, 16, total=16 * 2**20)
        else:
            await stream.send_all(bulk(b"v:" + args[1]))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            server = await FakeRedis(stream=serve).start(nursery)
            async with Client(*server.address, read_timeout=20, max_reply_elements=limit) as c:
                await c.ping()
                gc.collect()
                tracemalloc.start()
                try:
                    with pytest.raises(ReplyTooLargeError, match="max_reply_elements"):
                        await c.get("flood")
                    peak = tracemalloc.get_traced_memory()[1]
                finally:
                    tracemalloc.stop()
                assert await c.get("next") == b"v:next"
            nursery.cancel_scope.cancel()
    # Each element at most about 100 bytes of objects (a list and its slot), plus the reads
    # in flight and the careful parser's copy of the bytes it re-reads.
    print(f"\npeak traced memory while refusing: {peak} bytes")
    assert peak < limit * 100 + 8 * 2**20, peak
