"""The standalone Client against a real server: commands, pipelines, transactions, blocking
commands under cancellation, the cancellation storm, and a hung server (fail fast once known
bad, one probe readmits it)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest
import trio
from conflict import ConflictOnce
from redis import exceptions as rex
from storm import Storm

from trio_cluster.clients.client import Client
from trio_cluster.pooling.breaker import BreakerOptions, BreakerState, CircuitOpenError
from trio_cluster.pooling.pool import PoolOptions
from trio_cluster.testing import LocalServer

SECRET = "client-test-secret"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[LocalServer]:
    with LocalServer(password=SECRET) as server:
        yield server


async def _blocked(server: LocalServer) -> bool:
    return "blocked_clients:1" in (await server.execute("INFO", "clients")).decode()


def _client(server: LocalServer, **kwargs: object) -> Client:
    return Client(server.host, server.port, **kwargs)  # type: ignore[arg-type]


async def test_commands_have_redis_py_shapes(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            assert await r.set("shape:s", "v") is True
            assert await r.get("shape:s") == b"v"
            assert await r.hset("shape:h", mapping={"a": 1, "b": 2}) == 2
            assert await r.hgetall("shape:h") == {b"a": b"1", b"b": b"2"}
            assert await r.exists("shape:s", "shape:nope") == 1
            assert await r.delete("shape:s", "shape:h") == 2
            assert await r.ping() is True
            assert isinstance(await r.info("server"), dict)
            await r.zadd("shape:z", {"x": 1.5})
            assert await r.zrange("shape:z", 0, -1, withscores=True) == [(b"x", 1.5)]


async def test_bad_argument_is_typed_and_nothing_is_sent(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            with pytest.raises(TypeError) as info:
                await r.set("k", None)
            assert isinstance(info.value, rex.DataError)
            assert "argument 2" in str(info.value) and "NoneType" in str(info.value)
            assert await r.ping() is True
            (conn,) = r.connections()
            assert conn.state.name == "IDLE"


async def test_from_url_authenticates_and_redacts(auth_server: LocalServer) -> None:
    url = f"redis://default:{SECRET}@{auth_server.host}:{auth_server.port}/0"
    with trio.fail_after(10):
        async with Client.from_url(url) as r:
            assert await r.ping() is True
            assert SECRET not in repr(r)
            assert "***" in repr(r)
            assert SECRET not in repr(r.stats()) and SECRET not in repr(r.connections())


async def test_pipeline_results_in_order_with_per_command_errors(
    local_server: LocalServer,
) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            async with r.pipeline(transaction=False) as p:
                p.set("pipe:a", 1)
                p.incr("pipe:a")
                p.lpush("pipe:a", "x")  # WRONGTYPE
                p.get("pipe:a")
                results = await p.execute(raise_on_error=False)
            assert results[:2] == [True, 2]
            assert isinstance(results[2], rex.ResponseError)
            assert results[3] == b"2"
            async with r.pipeline() as p:
                p.get("pipe:a")
                p.lpush("pipe:a", "x")
                with pytest.raises(rex.ResponseError, match="Command # 2"):
                    await p.execute()
            assert await r.get("pipe:a") == b"2"  # the connection is still in step


async def test_transaction_and_execabort(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            async with r.pipeline(transaction=True) as p:
                p.set("tx:a", 1)
                p.incr("tx:a")
                assert await p.execute() == [True, 2]
            async with r.pipeline(transaction=True) as p:
                p.set("tx:a", 5)
                p.execute_command("NOSUCHCOMMAND")
                with pytest.raises(rex.ResponseError, match="unknown command"):
                    await p.execute()
            assert await r.get("tx:a") == b"2"  # the aborted transaction changed nothing


async def test_watch_conflict_raises_and_transaction_helper_retries(
    local_server: LocalServer,
) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            await r.set("watch:n", 0)
            async with r.pipeline() as p:
                await p.watch("watch:n")
                assert await p.get("watch:n") == b"0"  # immediate while watching
                await r.set("watch:n", 100)  # another connection changes it
                p.multi()
                p.set("watch:n", 1)
                with pytest.raises(rex.WatchError):
                    await p.execute()
            assert await r.get("watch:n") == b"100"

            bump = ConflictOnce(r, "watch:n", spoil=1000, add=1)
            await r.transaction(bump, "watch:n")
            assert bump.attempts == 2
            assert await r.get("watch:n") == b"1101"
            assert all(c.state.name == "IDLE" for c in r.connections())


async def test_blocking_command_outlives_the_read_timeout(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server, read_timeout=0.2) as r:
            assert await r.blpop(["block:empty"], timeout=0.5) is None  # no ReadTimeoutError
            with pytest.raises(rex.TimeoutError):
                await r.execute_command("DEBUG", "SLEEP", "0.5")


async def test_cancelled_blpop_does_not_eat_a_later_value(local_server: LocalServer) -> None:
    """Without the unblock, the abandoned BLPOP would still be waiting server-side and would
    pop the next pushed value into a reply nobody reads."""
    with trio.fail_after(10):
        async with _client(local_server) as r, _client(local_server) as other:
            with trio.move_on_after(0.1) as scope:
                await r.blpop(["block:q1"], timeout=0)
            assert scope.cancelled_caught
            await other.rpush("block:q1", "precious")
            assert await other.lrange("block:q1", 0, -1) == [b"precious"]
            assert all(c.state.name == "IDLE" for c in r.connections())


async def test_cancelled_blpop_that_already_popped_returns_the_value(
    local_server: LocalServer,
) -> None:
    """The value is pushed, and the pop's cancel scope cancelled, without yielding to trio in
    between: the server has popped the value and sent it, but the caller is cancelled before
    it reads the reply.  The element must come back to the caller, not vanish."""
    with trio.fail_after(10):
        async with _client(local_server) as r:
            result: list[object] = []
            scope = trio.CancelScope()

            async def pop() -> None:
                with scope:
                    result.append(await r.blpop(["block:q2"], timeout=0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pop)
                # Polling the server is the only way to know the BLPOP is parked there.
                while not await _blocked(local_server):  # noqa: ASYNC110
                    await trio.sleep(0.005)
                with socket.create_connection(local_server.address) as raw:  # blocking: no yield
                    raw.sendall(b"*3\r\n$5\r\nRPUSH\r\n$8\r\nblock:q2\r\n$5\r\ntaken\r\n")
                    assert raw.recv(64) == b":1\r\n"
                scope.cancel()
            assert result == [(b"block:q2", b"taken")]
            assert await local_server.execute("LLEN", "block:q2") == 0


async def test_cancellation_storm_never_misdelivers(local_server: LocalServer) -> None:
    """Hundreds of GETs under random 0-20 ms deadlines; every value names its key, so any
    reply handed to the wrong caller is caught.  Cancelled commands must not churn
    connections (target: <= 0.05 new connections per cancelled command)."""
    keys = [f"storm:{i}" for i in range(200)]
    rng = random.Random(1234)
    with trio.fail_after(60):
        async with _client(local_server, pool=PoolOptions(size=100)) as r:
            await r.mset({k: k for k in keys})
            before = (await r.info("stats"))["total_connections_received"]
            storm = Storm()

            async def worker(seed: int) -> None:
                local = random.Random(seed)
                for _ in range(40):
                    key = local.choice(keys)
                    with storm.attempt(trio.move_on_after(local.uniform(0, 0.02))):
                        storm.expect(key, await r.get(key), key.encode())

            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(worker, rng.random())
            after = (await r.info("stats"))["total_connections_received"]
            stats = r.stats()
    storm.check()
    new_connections = after - before
    assert new_connections / storm.cancelled <= 0.05, (new_connections, storm.cancelled, stats)
    assert stats.total_connections <= 100
    assert dict(stats.closes) == {}  # no connection was lost to a cancellation


async def test_thundering_herd_opens_at_most_size(local_server: LocalServer) -> None:
    """200 callers on an empty pool of 10: the server never sees more than 10 of our
    connections at once (counted by the server, not by the pool)."""
    with trio.fail_after(30):
        async with _client(local_server, pool=PoolOptions(size=10), client_name="herd") as r:
            peak = 0
            done = trio.Event()

            async def watch_server() -> None:
                nonlocal peak
                while not done.is_set():
                    listing = (await local_server.execute("CLIENT", "LIST")).decode()
                    peak = max(peak, listing.count("name=herd "))
                    await trio.lowlevel.checkpoint()

            async def caller(i: int) -> None:
                await r.set(f"herd:{i}", i)
                await r.execute_command("DEBUG", "SLEEP", "0.01")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_server)
                async with trio.open_nursery() as callers:
                    for i in range(200):
                        callers.start_soon(caller, i)
                done.set()
            assert 1 <= peak <= 10
            assert r.stats().dials <= 10


async def test_read_timeout_through_the_watchdog_closes_the_connection(
    local_server: LocalServer,
) -> None:
    with trio.fail_after(10):
        async with _client(local_server, read_timeout=0.1) as r:
            await r.set("wd", "v")
            started = trio.current_time()
            with pytest.raises(rex.TimeoutError, match=r"within 0\.1 s"):
                await r.execute_command("DEBUG", "SLEEP", "0.4")
            assert 0.09 <= trio.current_time() - started < 0.35
            assert r._watchdog.expired == 1
            assert await r.get("wd") == b"v"  # a fresh connection, never the one owing a reply
            assert r.stats().closes.get("broken") == 1


@pytest.mark.parametrize("autopipeline", [False, True], ids=["round-trip", "autopipeline"])
async def test_a_hung_server_fails_fast_once_known_bad_and_one_probe_readmits_it(
    autopipeline: bool,
) -> None:
    with trio.fail_after(30), LocalServer() as server:
        breaker = BreakerOptions(failure_threshold=3, cooldown=0.3)
        # Connections ready before the hang (a dial to a hung server waits for its connect
        # timeout, and the pool retries dials).
        pool = PoolOptions(size=5, min_idle=5, autopipeline=autopipeline)
        timeouts = {"read_timeout": 0.5, "connect_timeout": 0.5}
        async with _client(server, breaker=breaker, pool=pool, **timeouts) as r:
            await r.set("k", "v")
            while r.stats().idle_connections < 5:  # noqa: ASYNC110 - min_idle fills in the background
                await trio.sleep(0.01)
            server.pause()
            try:
                # The first commands fail within their read timeout (together: in flight).
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(_expect_timeout, r)
                # Known bad now: refused at once, naming the server and why.
                started = trio.current_time()
                with pytest.raises(CircuitOpenError) as refused:
                    await r.get("k")
                assert trio.current_time() - started < 0.1
                assert refused.value.node == f"{server.host}:{server.port}"
                assert "failures in a row" in refused.value.reason
            finally:
                server.resume()
            # One probe (after the cool-down) readmits it.
            while True:
                try:
                    assert await r.get("k") == b"v"
                    break
                except CircuitOpenError:
                    await trio.sleep(0.02)
            assert r.breaker.state is BreakerState.CLOSED


async def _expect_timeout(r: Client) -> None:
    started = trio.current_time()
    with pytest.raises(rex.TimeoutError):
        await r.get("k")
    assert trio.current_time() - started < 0.5 + 0.4  # its read timeout, plus slack
