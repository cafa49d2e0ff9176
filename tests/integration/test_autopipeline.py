"""Automatic pipelining (``PoolOptions(autopipeline=True)``) against real cluster nodes.

Each guarantee has its test: shared writes with replies in order, a cancellation storm with
no reply delivered to the wrong caller, typed timeouts, a killed connection failing exactly
the commands it carried, dedicated connections for blocking commands / transactions / WATCH /
pub/sub, and a SIGKILLed primary under load.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from failover_load import failover_cluster, kill_primary_under_load
from redis import exceptions as rex
from storm import Storm

from trio_cluster import ClusterClient, PoolOptions
from trio_cluster.errors import ReadTimeoutError
from trio_cluster.pooling.autopipeline import AutoPipeliner
from trio_cluster.pooling.breaker import CircuitOpenError
from trio_cluster.routing.rules import key_slot
from trio_cluster.testing import LocalCluster, LocalServer


@asynccontextmanager
async def _client(cluster: LocalCluster, **options: Any) -> AsyncIterator[ClusterClient]:
    pool = options.pop("pool", PoolOptions(size=8, autopipeline=True))
    async with ClusterClient(startup_nodes=cluster.startup_nodes, pool=pool, **options) as rc:
        yield rc


def _pipeliner(rc: ClusterClient, key: str) -> AutoPipeliner:
    node = rc.slot_map.primary(key_slot(key.encode()))
    assert node is not None
    pipeliner = node.pool.autopipeliner
    assert pipeliner is not None
    return pipeliner


def _same_node_keys(rc: ClusterClient, prefix: str, count: int) -> list[str]:
    """``count`` keys (one per slot) that the same primary serves."""
    first = rc.slot_map.primary(key_slot(f"{prefix}:0".encode()))
    keys = []
    n = 0
    while len(keys) < count:
        key = f"{prefix}:{n}"
        if rc.slot_map.primary(key_slot(key.encode())) is first:
            keys.append(key)
        n += 1
    return keys


def _server(cluster: LocalCluster, rc: ClusterClient, key: str) -> LocalServer:
    node = rc.slot_map.primary(key_slot(key.encode()))
    assert node is not None
    return next(s for s in cluster.primaries if s.port == node.address[1])


async def test_concurrent_commands_share_one_write_and_get_their_own_replies(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(30):
        async with _client(local_cluster) as rc:
            keys = _same_node_keys(rc, "ap:share", 40)
            pipeliner = _pipeliner(rc, keys[0])
            batches, commands = pipeliner.batches, pipeliner.commands
            results: dict[str, Any] = {}

            async def setter(key: str) -> None:
                results[key] = await rc.set(key, f"value-of-{key}")

            async with trio.open_nursery() as nursery:
                for key in keys:  # all queued in one scheduler pass
                    nursery.start_soon(setter, key)
            # One batch, hence one write, carried the 40 commands.
            assert pipeliner.batches - batches == 1
            assert pipeliner.commands - commands == 40
            assert results == dict.fromkeys(keys, True)

            got: dict[str, Any] = {}

            async def getter(key: str) -> None:
                got[key] = await rc.get(key)

            async with trio.open_nursery() as nursery:
                for key in keys:
                    nursery.start_soon(getter, key)
            assert got == {k: f"value-of-{k}".encode() for k in keys}
            # Error replies are per command: one WRONGTYPE among good replies.
            await rc.delete("ap:share:list")
            await rc.rpush("ap:share:list", "x")
            outcomes: dict[str, Any] = {}

            async def attempt(key: str) -> None:
                try:
                    outcomes[key] = await rc.get(key)
                except rex.ResponseError as exc:
                    outcomes[key] = exc

            async with trio.open_nursery() as nursery:
                for key in [*keys[:5], "ap:share:list", *keys[5:10]]:
                    nursery.start_soon(attempt, key)
            assert isinstance(outcomes.pop("ap:share:list"), rex.ResponseError)
            assert outcomes == {k: f"value-of-{k}".encode() for k in keys[:10]}


async def test_cancellation_storm_never_misdelivers(local_cluster: LocalCluster) -> None:
    """Hundreds of callers, each with its own key and value, cancelled at random moments:
    every reply that reaches a caller is its own, and the pools end clean."""
    with trio.fail_after(60):
        async with _client(local_cluster, pool=PoolOptions(size=4, autopipeline=True)) as rc:
            storm = Storm()
            active: list[trio.CancelScope] = []

            async def caller(n: int, rounds: int) -> None:
                rng = random.Random(n)
                for r in range(rounds):
                    key = f"ap:storm:{n}:{r}"
                    value = f"{n}:{r}:{rng.random()}".encode()
                    scope = trio.CancelScope()
                    active.append(scope)
                    with storm.attempt(scope):
                        storm.expect(key, await rc.set(key, value), True)
                        storm.expect(key, await rc.get(key), value)
                    active.remove(scope)

            async def canceller(stop: trio.Event) -> None:
                # Every scheduler pass, cancel a few callers: some while their command is
                # queued, some while it is written and its reply on the way.
                rng = random.Random(0)
                while not stop.is_set():
                    for _ in range(min(3, len(active))):
                        rng.choice(active).cancel()
                    await trio.lowlevel.checkpoint()

            stop = trio.Event()
            async with trio.open_nursery() as outer:
                outer.start_soon(canceller, stop)
                async with trio.open_nursery() as nursery:
                    for n in range(300):
                        nursery.start_soon(caller, n, 10)
                stop.set()

            # A second storm with deadlines that expire while replies are on their way.
            async def timed_caller(n: int) -> None:
                key, value = f"ap:storm2:{n}", f"v{n}".encode()
                with storm.attempt(trio.move_on_after(random.Random(n).random() * 0.002)):
                    assert await rc.set(key, value) is True
                    storm.expect(key, await rc.get(key), value)

            async with trio.open_nursery() as nursery:
                for n in range(500):
                    nursery.start_soon(timed_caller, n)

            print(f"\ncancellation storm: completed={storm.completed} cancelled={storm.cancelled}")
            storm.check()
            # Every key holds its own value or nothing (a cancelled SET may or may not have run).
            for n in range(0, 300, 7):
                for r in range(10):
                    got = await rc.get(f"ap:storm:{n}:{r}")
                    assert got is None or got.startswith(f"{n}:{r}:".encode())

            # Nothing left owing: every connection drains back to idle and works.
            def busy() -> int:
                return sum(
                    s.in_use_connections + s.unusable_connections for s in rc.stats().nodes.values()
                )

            while busy():  # batches still reading replies nobody waits for
                await trio.lowlevel.checkpoint()
            for node in rc.slot_map.nodes():
                for conn in node.pool.live_connections():
                    assert conn.owed_replies == 0 and not conn.broken
            assert await rc.set("ap:storm:after", "ok") is True
            assert await rc.get("ap:storm:after") == b"ok"


async def test_read_timeout_is_typed_for_every_command_of_the_batch(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(30):
        async with _client(local_cluster, read_timeout=0.3) as rc:
            keys = _same_node_keys(rc, "ap:timeout", 10)
            server = _server(local_cluster, rc, keys[0])
            errors: list[BaseException] = []

            async def setter(key: str) -> None:
                try:
                    await rc.set(key, "x")
                except Exception as exc:
                    errors.append(exc)

            await server.execute("CLIENT", "PAUSE", 1500, "WRITE")
            try:
                async with trio.open_nursery() as nursery:
                    for key in keys:
                        nursery.start_soon(setter, key)
            finally:
                await server.execute("CLIENT", "UNPAUSE")
            assert len(errors) == 10
            assert all(type(e) is ReadTimeoutError for e in errors), errors
            assert len({id(e) for e in errors}) == 10  # each caller its own error object
            # Ten commands unanswered for their whole timeout: the node is known bad until
            # one probe (after the breaker's cool-down) gets an answer.
            while True:
                try:
                    assert await rc.set(keys[0], "after") is True
                    break
                except CircuitOpenError:
                    await trio.sleep(0.02)


async def test_a_killed_connection_fails_exactly_its_own_batch(local_cluster: LocalCluster) -> None:
    with trio.fail_after(30):
        async with _client(local_cluster, read_timeout=10.0) as rc:
            keys = _same_node_keys(rc, "ap:kill", 20)
            server = _server(local_cluster, rc, keys[0])
            pipeliner = _pipeliner(rc, keys[0])
            node = rc.slot_map.primary(key_slot(keys[0].encode()))
            assert node is not None
            await rc.set(keys[0], "before")
            errors: dict[str, BaseException] = {}
            done: dict[str, Any] = {}

            async def run(key: str, write: bool) -> None:
                try:
                    done[key] = await (rc.set(key, "w") if write else rc.get(key))
                except Exception as exc:
                    errors[key] = exc

            await server.execute("CLIENT", "PAUSE", 5000, "WRITE")
            try:
                async with trio.open_nursery() as nursery:
                    batches = pipeliner.batches
                    for key in keys[:10]:  # one batch of writes, held by the pause
                        nursery.start_soon(run, key, True)
                    while pipeliner.batches == batches:
                        await trio.lowlevel.checkpoint()
                    held = [c for c in node.pool.live_connections() if c.owed_replies]
                    assert len(held) == 1
                    # Reads are not paused: a second batch, on another connection, completes.
                    async with trio.open_nursery() as readers:
                        for key in keys[10:]:
                            readers.start_soon(run, key, False)
                    assert set(done) == set(keys[10:])
                    await server.execute("CLIENT", "KILL", "ID", held[0].client_id)
            finally:
                await server.execute("CLIENT", "UNPAUSE")
            # Exactly the ten writes that were on the killed connection failed.
            assert set(errors) == set(keys[:10])
            assert all(isinstance(e, rex.ConnectionError) for e in errors.values())
            assert await rc.set(keys[0], "after") is True


async def test_blocking_transactions_watch_and_pubsub_keep_their_own_connections(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(30):
        async with _client(local_cluster) as rc:
            keys = _same_node_keys(rc, "{ap:own}", 20)
            queue = keys[0]
            await rc.delete(queue)
            popped: list[Any] = []

            async def blocker() -> None:
                popped.append(await rc.blpop([queue], timeout=0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocker)
                node = rc.slot_map.primary(key_slot(queue.encode()))
                assert node is not None
                while node.pool.stats().in_use_connections == 0:  # BLPOP has its connection
                    await trio.lowlevel.checkpoint()
                # Commands for the same node run meanwhile (not queued behind BLPOP).
                got: list[Any] = []

                async def getter(key: str) -> None:
                    assert await rc.set(key, key) is True
                    got.append(await rc.get(key))

                async with trio.open_nursery() as inner:
                    for key in keys[1:]:
                        inner.start_soon(getter, key)
                assert sorted(got) == sorted(k.encode() for k in keys[1:])
                assert popped == []
                # A transaction and WATCH on their own connection, while autopipelined
                # traffic for the same node goes on.
                async with rc.pipeline(transaction=True) as tx:
                    tx.set(keys[1], "tx").get(keys[1])
                    assert await tx.execute() == [True, b"tx"]
                await rc.rpush(queue, "item")
            assert popped == [(queue.encode(), b"item")]

            # WATCH keeps its connection until execute(): a change made meanwhile through
            # the autopipelined path aborts the transaction, as on a dedicated connection.
            async with rc.pipeline(transaction=True) as tx:
                await tx.watch(keys[3])
                assert await rc.set(keys[3], "changed") is True
                tx.multi()
                tx.set(keys[3], "from-tx")
                with pytest.raises(rex.WatchError):
                    await tx.execute()
            assert await rc.get(keys[3]) == b"changed"

            async with rc.pubsub() as ps:
                await ps.subscribe("ap:channel")
                message = await ps.get_message(timeout=None)
                assert message["type"] == "subscribe"
                await rc.publish("ap:channel", "hello")  # counts this node's receivers only
                message = await ps.get_message(timeout=None)
                assert message["type"] == "message" and message["data"] == b"hello"
                assert await rc.get(keys[2]) == keys[2].encode()  # still autopipelined


async def test_primary_sigkill_under_load_with_autopipelining() -> None:
    with trio.fail_after(60):
        async with failover_cluster() as c:
            victim = c.shards[0].primary
            async with ClusterClient(
                startup_nodes=c.startup_nodes[:1],
                read_timeout=1.0,
                connect_timeout=0.5,
                pool=PoolOptions(autopipeline=True),
            ) as rc:
                run = await kill_primary_under_load(c, rc)
                print(
                    f"\nautopipelined failover: errors reaching callers={len(run.errors)} "
                    f"{run.kinds()}, failover took {run.failover_seconds:.2f}s, "
                    f"ops after recovery={run.ops_after_recovery}"
                )
                assert all(t >= run.killed_at for t, _ in run.errors)
                assert len(run.errors) <= 20
                assert run.ops_after_recovery > 100
                assert f"127.0.0.1:{victim.port}" not in rc.node_names()


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_option_must_be_a_bool(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"PoolOptions\.autopipeline must be a bool"):
        PoolOptions(autopipeline=bad)


# --- the standalone Client --------------------------------------------------------------------


async def test_standalone_client_shares_writes_keeps_order_and_survives_a_storm(
    local_server: LocalServer,
) -> None:
    from trio_cluster import Client

    with trio.fail_after(60):
        async with Client(
            local_server.host, local_server.port, pool=PoolOptions(size=4, autopipeline=True)
        ) as client:
            pipeliner = client.pool.autopipeliner
            assert pipeliner is not None
            batches = pipeliner.batches
            replies: dict[int, Any] = {}

            async def incr(n: int) -> None:
                replies[n] = await client.set(f"ap:solo:{n}", n)

            async with trio.open_nursery() as nursery:
                for n in range(30):
                    nursery.start_soon(incr, n)
            assert pipeliner.batches - batches == 1  # one write for the 30 commands
            assert replies == dict.fromkeys(range(30), True)

            misdelivered: list[Any] = []
            cancelled = 0

            async def caller(n: int) -> None:
                nonlocal cancelled
                value = f"solo-{n}".encode()
                with trio.move_on_after(random.Random(n).random() * 0.003) as scope:
                    assert await client.set(f"ap:solo:storm:{n}", value) is True
                    got = await client.get(f"ap:solo:storm:{n}")
                    if got != value:
                        misdelivered.append((n, got))
                cancelled += scope.cancelled_caught

            async with trio.open_nursery() as nursery:
                for n in range(400):
                    nursery.start_soon(caller, n)
            assert misdelivered == []
            # Blocking commands and transactions keep their own connections.
            await client.delete("ap:solo:queue")
            popped: list[Any] = []

            async def blocker() -> None:
                popped.append(await client.blpop(["ap:solo:queue"], timeout=0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocker)
                while client.pool.stats().in_use_connections == 0:
                    await trio.lowlevel.checkpoint()
                assert await client.get("ap:solo:0") == b"0"  # not stuck behind BLPOP
                async with client.pipeline(transaction=True) as tx:
                    tx.set("ap:solo:tx", "t").get("ap:solo:tx")
                    assert await tx.execute() == [True, b"t"]
                await client.rpush("ap:solo:queue", "x")
            assert popped == [(b"ap:solo:queue", b"x")]
