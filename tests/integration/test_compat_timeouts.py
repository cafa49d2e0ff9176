"""Timeouts as redis-py users expect them (issue 24, item 1), against real servers: the
defaults are redis-py 8's, and commands that legitimately take long (scripts and functions,
WAIT, blocking commands with their own timeout) are not cut short by the read timeout, nor
counted against the node's circuit breaker.

The scripts busy-loop on the server's own clock (``TIME``) for longer than the client's read
timeout: what is asserted is that no timeout happens, whatever the machine's speed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import redis
import trio
from redis import exceptions as rex

from trio_cluster import BreakerOptions, Client, ClusterClient
from trio_cluster.errors import ScriptTimeoutError
from trio_cluster.pooling.breaker import BreakerState
from trio_cluster.testing import LocalCluster, LocalServer

#: Runs for ARGV[1] seconds of the server's clock, then returns 1.
BUSY = """
local function now() local t = redis.call('TIME') return tonumber(t[1]) + tonumber(t[2]) / 1e6 end
local start = now()
while now() - start < tonumber(ARGV[1]) do end
return 1
"""
#: A breaker that one failure opens: any timeout counted against the node would show.
TOUCHY = BreakerOptions(failure_threshold=1, cooldown=60.0)


@pytest.fixture
def busy_server() -> Iterator[LocalServer]:
    """A server of each test's own: a script keeps it busy (redis-py's retries run one
    again and again), which must not reach any other test."""
    with LocalServer() as server:
        yield server


def test_connection_defaults_are_redis_py_8s() -> None:
    """redis-py 8's defaults, read from redis-py itself: ``socket_timeout`` and
    ``socket_connect_timeout`` (5 s each; the first bounds writes too), the address, the
    database, TCP keepalive, the health check and the client name."""
    reference = redis.Redis().connection_pool.connection_kwargs
    config = Client().config
    assert config.read_timeout == config.write_timeout == reference["socket_timeout"]
    assert config.connect_timeout == reference["socket_connect_timeout"]
    assert config.script_timeout is None
    assert (config.host, config.port, config.db) == (
        reference["host"],
        reference["port"],
        reference["db"],
    )
    assert config.socket_keepalive is reference["socket_keepalive"]
    assert config.health_check_interval == reference["health_check_interval"]
    assert config.client_name == reference["client_name"]
    encoder = Client().get_encoder()
    assert (encoder.encoding, encoder.encoding_errors, encoder.decode_responses) == (
        reference["encoding"],
        reference["encoding_errors"],
        reference["decode_responses"],
    )


async def test_a_script_longer_than_the_read_timeout_completes(busy_server: LocalServer) -> None:
    with trio.fail_after(30):
        async with Client(
            busy_server.host, busy_server.port, read_timeout=0.5, breaker=TOUCHY
        ) as r:
            assert await r.eval(BUSY, 0, 1.5) == 1
            script = r.register_script(BUSY)
            assert await script(args=[1.0]) == 1  # EVALSHA
            async with r.pipeline() as p:  # a transaction: EXEC waits for the script
                p.eval(BUSY, 0, 1.0)
                p.set("after-script", 1)
                assert await p.execute() == [1, True]
            async with r.pipeline(transaction=False) as p:
                p.eval(BUSY, 0, 1.0)
                p.get("after-script")
                assert await p.execute() == [1, b"1"]
            assert r.breaker.state is BreakerState.CLOSED
            assert r.stats().closes.get("broken", 0) == 0


async def test_redis_py_with_the_same_read_timeout_gives_up_on_that_script(
    busy_server: LocalServer,
) -> None:
    """The deliberate difference, seen on the same server: redis-py bounds the script by its
    socket timeout (then retries into the busy server)."""
    reference = redis.Redis(busy_server.host, busy_server.port, socket_timeout=0.5)
    try:
        with pytest.raises(rex.RedisError):
            await trio.to_thread.run_sync(reference.eval, BUSY, 0, 1.5)
    finally:
        reference.close()
    with trio.fail_after(10):
        async with Client(busy_server.host, busy_server.port) as r:
            # redis-py's retry may have sent the script again: end it for the next test.
            with contextlib.suppress(rex.ResponseError):  # NOTBUSY: it had ended
                await r.script_kill()
            assert await r.ping()


async def test_script_timeout_bounds_a_script_without_counting_against_the_node(
    busy_server: LocalServer,
) -> None:
    with trio.fail_after(30):
        async with Client(
            busy_server.host,
            busy_server.port,
            read_timeout=5.0,
            script_timeout=0.3,
            breaker=TOUCHY,
        ) as r:
            with pytest.raises(ScriptTimeoutError, match="script_timeout") as caught:
                await r.eval(BUSY, 0, 1.0)
            assert isinstance(caught.value, rex.TimeoutError)  # redis-py's except clause
            assert r.breaker.state is BreakerState.CLOSED
            # The server still runs the script (a script in a busy loop may outlive its
            # argument: the server's clock inside a script need not move): end it.
            with contextlib.suppress(rex.ResponseError):  # NOTBUSY: it had ended
                await r.script_kill()
            assert await r.ping()


async def test_wait_longer_than_the_read_timeout_completes(busy_server: LocalServer) -> None:
    """WAIT for a replica this server does not have: it blocks for its own timeout and says
    how many replicas acknowledged (none)."""
    with trio.fail_after(30):
        async with Client(
            busy_server.host, busy_server.port, read_timeout=0.3, breaker=TOUCHY
        ) as r:
            assert await r.wait(1, 1000) == 0
            async with r.pipeline(transaction=False) as p:
                p.blpop(["nothing-here"], timeout=1)
                p.wait(1, 500)
                assert await p.execute() == [None, 0]
            assert r.breaker.state is BreakerState.CLOSED


async def test_blocking_forever_has_no_read_deadline(busy_server: LocalServer) -> None:
    """BLPOP with timeout 0 blocks until an element comes, however long after the read
    timeout."""
    with trio.fail_after(30):
        async with Client(busy_server.host, busy_server.port, read_timeout=0.2) as r:
            popped: list[object] = []

            async def pop() -> None:
                popped.append(await r.blpop(["forever"], timeout=0))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pop)
                await trio.sleep(1.0)  # five read timeouts: the pop must still be waiting
                assert not popped
                await r.rpush("forever", "x")
            assert popped == [(b"forever", b"x")]


async def test_cluster_scripts_outlive_the_read_timeout() -> None:
    """On a cluster of its own, without replicas: a primary busy with a script longer than
    the cluster's node timeout would otherwise be failed over by its replica."""
    with trio.fail_after(60):
        async with (
            LocalCluster(masters=3, replicas_per_master=0) as cluster,
            ClusterClient(
                startup_nodes=cluster.startup_nodes[:1], read_timeout=0.5, breaker=TOUCHY
            ) as rc,
        ):
            assert await rc.eval(BUSY, 1, "{script}k", 1.5) == 1
            async with rc.pipeline() as p:
                p.eval(BUSY, 1, "{script}k", 1.0)
                p.set("{script}k", 1)
                assert await p.execute() == [1, True]
            async with rc.pipeline(transaction=True) as p:
                p.eval(BUSY, 1, "{script}k", 1.0)
                p.get("{script}k")
                assert await p.execute() == [1, b"1"]
            assert set(rc.stats().breakers.values()) == {"closed"}
