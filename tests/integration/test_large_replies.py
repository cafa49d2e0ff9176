"""Large replies from real servers, read by ``Client`` and ``ClusterClient`` and compared with
what redis-py reads from the same server (the oracle); and the event loop keeps turning while
a large reply is read and built."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
import trio
import trio.lowlevel

from trio_cluster import Client, ClusterClient
from trio_cluster.testing import LocalCluster, LocalServer

N = 200_000
BIG = 16 * 1024 * 1024
# One hash tag: every key lives in one slot, so the cluster and standalone data are alike.
KEYS = {"list": "{big}:list", "hash": "{big}:hash", "zset": "{big}:zset", "string": "{big}:str"}


def _fill(r: Any) -> None:
    r.delete(*KEYS.values())
    for start in range(0, N, 50_000):
        r.rpush(KEYS["list"], *[b"a"] * 50_000)
        r.hset(KEYS["hash"], mapping={f"f{i}": b"v" for i in range(start, start + 50_000)})
        r.zadd(KEYS["zset"], {f"m{i}": i / 7 for i in range(start, start + 50_000)})
    r.set(KEYS["string"], b"s" * BIG)


@pytest.fixture(scope="module")
def oracle_standalone(local_server: LocalServer) -> Iterator[dict[str, Any]]:
    r = redis.Redis(*local_server.address)
    _fill(r)
    yield _read(r)
    r.delete(*KEYS.values())


@pytest.fixture(scope="module")
def oracle_cluster(local_cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    host, port = local_cluster.startup_nodes[0]
    r = redis.RedisCluster(host=host, port=port)
    _fill(r)
    yield _read(r)
    r.delete(*KEYS.values())
    r.close()


def _read(r: Any) -> dict[str, Any]:
    return {
        "lrange": r.lrange(KEYS["list"], 0, -1),
        "hgetall": r.hgetall(KEYS["hash"]),
        "zrange": r.zrange(KEYS["zset"], 0, -1, withscores=True),
        "get": r.get(KEYS["string"]),
    }


async def _read_async(client: Any) -> dict[str, Any]:
    return {
        "lrange": await client.lrange(KEYS["list"], 0, -1),
        "hgetall": await client.hgetall(KEYS["hash"]),
        "zrange": await client.zrange(KEYS["zset"], 0, -1, withscores=True),
        "get": await client.get(KEYS["string"]),
    }


async def test_large_replies_standalone_match_redis_py(
    local_server: LocalServer, oracle_standalone: dict[str, Any]
) -> None:
    with trio.fail_after(60):
        async with Client(*local_server.address) as client:
            got = await _read_async(client)
    assert len(got["lrange"]) == N and len(got["hgetall"]) == N and len(got["get"]) == BIG
    assert got == oracle_standalone


async def test_large_replies_cluster_match_redis_py(
    local_cluster: LocalCluster, oracle_cluster: dict[str, Any]
) -> None:
    with trio.fail_after(60):
        async with ClusterClient(startup_nodes=local_cluster.startup_nodes) as client:
            got = await _read_async(client)
    assert len(got["zrange"]) == N
    assert got == oracle_cluster


@pytest.mark.parametrize("protocol", [2, 3])
async def test_other_tasks_run_while_a_large_reply_is_read(
    local_server: LocalServer, oracle_standalone: dict[str, Any], protocol: int
) -> None:
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(60):
        async with Client(*local_server.address, protocol=protocol) as client:
            await client.ping()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ticker)
                await trio.lowlevel.checkpoint()
                reply = await client.lrange(KEYS["list"], 0, -1)
                reading_ticks = ticks
                done = True
    assert len(reply) == N
    # The reply is ~1.4 MB: read 64 KiB at a time with a checkpoint between reads, the ticker
    # runs at least once per read (a reply read and built in one go would give it one turn).
    assert reading_ticks >= (N * 7) // 65536 // 2
