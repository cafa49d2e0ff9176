"""A small application typed as a redis-py user types one, checked by ``nox -s lint`` with
``mypy --strict`` against the *installed* package (see ``noxfile.py``).

``assert_type`` fails the check if a command's reply type is ``Any`` or wrong: the command
methods must be awaitable and carry redis-py's precise return types.  This file is never run.
"""

from __future__ import annotations

from typing import Any, assert_type

import trio

from trio_cluster import (
    Client,
    ClusterClient,
    ClusterPipeline,
    ClusterStats,
    ConnectionInfo,
    Lock,
    Pipeline,
    PoolOptions,
    PoolStats,
    PubSub,
    Script,
)
from trio_cluster.clients.clusterhelpers import ClusterNode


async def strings_and_keys(r: Client | ClusterClient) -> None:
    assert_type(await r.set("k", "v", ex=10), bool | str | bytes | None)
    assert_type(await r.get("k"), bytes | str | None)
    assert_type(await r.incr("n"), int)
    assert_type(await r.incrbyfloat("f", 1.5), float)
    assert_type(await r.mget(["a", "b"]), list[bytes | str | None])
    assert_type(await r.exists("k"), int)
    assert_type(await r.delete("k", "n"), int)
    assert_type(await r.expire("k", 10), bool)
    assert_type(await r.ttl("k"), int)
    assert_type(await r.ping(), bool)


async def hashes(r: Client | ClusterClient) -> None:
    assert_type(await r.hset("h", mapping={"a": 1}), int)
    assert_type(await r.hget("h", "a"), bytes | str | None)
    assert_type(await r.hincrby("h", "a", 2), int)


async def lists_and_sets(r: Client | ClusterClient) -> None:
    assert_type(await r.rpush("l", "x", "y"), int)
    assert_type(await r.llen("l"), int)
    assert_type(await r.sadd("s", "x"), int)
    assert_type(await r.scard("s"), int)
    assert_type(await r.zadd("z", {"x": 1.0}), int | float | None)  # redis-py's annotation
    assert_type(await r.zcard("z"), int)


async def scripts(r: Client | ClusterClient) -> None:
    sha = await r.script_load("return 1")
    assert_type(sha, str)
    assert_type(await r.script_exists(sha), list[bool])
    assert_type(r.register_script("return 1"), Script)


async def pipelines(rc: ClusterClient, r: Client) -> list[Any]:
    async with rc.pipeline(transaction=False) as p:
        assert_type(p, ClusterPipeline)
        p.set("a", 1)
        p.incr("a")
        p.get("a")
        results = await p.execute()
    async with r.pipeline(transaction=True) as q:
        assert_type(q, Pipeline)
        q.hset("h", "f", "v")
        q.hgetall("h")
        results += await q.execute()
    return results


async def helpers(rc: ClusterClient, r: Client) -> None:
    async with r.lock("lock", timeout=10, blocking_timeout=1) as lock:
        assert_type(lock, Lock)
        assert_type(await lock.owned(), bool)
    assert_type(rc.keyslot("k"), int)
    assert_type(rc.get_nodes(), list[ClusterNode])
    assert_type(rc.get_node(node_name="127.0.0.1:7000"), ClusterNode | None)
    assert_type(await rc.mget_nonatomic(["a", "b"]), list[Any])
    async with r.pubsub() as p:
        assert_type(p, PubSub)
        await p.subscribe("ch")
        assert_type(await p.get_message(timeout=1.0), dict[str, Any] | None)


async def observability(rc: ClusterClient, r: Client) -> None:
    assert_type(rc.stats(), ClusterStats)
    assert_type(r.stats(), PoolStats)
    assert_type(rc.connections(), list[ConnectionInfo])
    await rc.aclose()
    await r.aclose()


async def main() -> None:
    async with (
        ClusterClient(host="127.0.0.1", port=7000, pool=PoolOptions(size=4)) as rc,
        Client(host="127.0.0.1", port=6379, decode_responses=True, socket_timeout=1.0) as r,
    ):
        await strings_and_keys(rc)
        await hashes(r)
        await lists_and_sets(rc)
        await scripts(r)
        await pipelines(rc, r)
        await helpers(rc, r)
        await observability(rc, r)


if __name__ == "__main__":
    trio.run(main)


def built_as_with_redis_py() -> tuple[Client, ClusterClient]:
    """redis-py's constructor options, as a redis-py application passes them."""
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.cluster import LoadBalancingStrategy
    from redis.retry import Retry

    retry = Retry(ExponentialWithJitterBackoff(), 3)
    client = Client(
        "localhost", 6379, max_connections=20, retry=retry, health_check_interval=30, ssl=False
    )
    cluster = ClusterClient(
        "localhost",
        7000,
        load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN,
        require_full_coverage=True,
        reinitialize_steps=5,
        retry=retry,
    )
    return client, cluster
