"""The router and the node call on in-memory nodes (``fakenodes``) and the autojump clock:
redirects, retries and their budgets as a single command lives them, the breaker's
accounting, ASKING, automatic pipelining, latency measurement and batches."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from fakenodes import THREE, fake_cluster, key_on
from redis import exceptions as rex

from trio_cluster.config import RetryOptions
from trio_cluster.conn.connection import was_unsent
from trio_cluster.errors import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadTimeoutError,
    TryAgainError,
)
from trio_cluster.pooling.breaker import BreakerOptions, BreakerState, CircuitOpenError
from trio_cluster.pooling.pool import PoolOptions
from trio_cluster.routing import nodecall
from trio_cluster.routing.rules import key_slot
from trio_cluster.routing.slotmap import ReadFrom
from trio_cluster.routing.topology import Shard, Topology

A, B, C = (shard[0] for shard in THREE)


# --- the router: redirects and retries of one command ----------------------------------------


async def test_moved_goes_to_the_new_owner_and_updates_the_map(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            key = key_on(0)
            slot = key_slot(key.encode())
            cluster[A].script = [MovedError(f"{slot} {B[0]}:{B[1]}")]
            assert await cluster.run("SET", key, "v") is True
            assert cluster[B].data == {key.encode(): b"v"}
            assert cluster.slots.primary(slot) is cluster.node(B)
            assert cluster.slots.moved == 1 and cluster.refresh_requests == 1


async def test_ask_sends_asking_first_and_leaves_the_map(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            key = key_on(0)
            slot = key_slot(key.encode())
            cluster[B].data[key.encode()] = b"there"
            cluster[A].script = [AskError(f"{slot} {B[0]}:{B[1]}")]
            assert await cluster.run("GET", key) == b"there"
            assert cluster[B].calls == [("ASKING",), ("GET", key)]
            assert cluster.slots.primary(slot) is cluster.node(A)


async def test_redirect_loops_end_at_max_redirects(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE, retry=RetryOptions(max_redirects=2)) as cluster:
            key = key_on(0)
            slot = key_slot(key.encode())
            to_b = MovedError(f"{slot} {B[0]}:{B[1]}")
            to_a = MovedError(f"{slot} {A[0]}:{A[1]}")
            cluster[A].script = [to_b, to_b]
            cluster[B].script = [to_a]
            with pytest.raises(MovedError):
                await cluster.run("GET", key)
            assert len(cluster[A].calls) + len(cluster[B].calls) == 3


async def test_tryagain_is_retried_with_backoff_until_it_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        retry = RetryOptions(backoff_base=0.1, backoff_cap=0.1)
        async with fake_cluster(THREE, retry=retry) as cluster:
            key = key_on(1)
            cluster[B].script = [TryAgainError("TRYAGAIN"), TryAgainError("TRYAGAIN")]
            started = trio.current_time()
            assert await cluster.run("SET", key, "v") is True
            assert trio.current_time() - started <= 0.2 + 1e-9  # two backoffs of <= 0.1 s
            assert cluster.router.policy.retries == {"TryAgainError": 2}


async def test_a_slot_nobody_serves_is_retried_then_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        retry = RetryOptions(budget=1.0, backoff_cap=0.1)
        async with fake_cluster(THREE, retry=retry) as cluster:
            # The map loses shard 0 (and refreshes keep it lost).
            await cluster.install(Topology.from_shards([Shard(B, (), ((5461, 16383),))]))
            started = trio.current_time()
            with pytest.raises(ClusterDownError, match="is not served"):
                await cluster.run("GET", key_on(0))
            assert 1.0 <= trio.current_time() - started <= 1.2  # the time budget
            assert cluster.refresh_requests > 1


async def test_an_unsent_command_rides_out_a_failover_within_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE, breaker=BreakerOptions(enabled=False)) as cluster:
            key = key_on(0)
            cluster[A].down = True

            async def failover() -> None:
                await trio.sleep(2.0)  # the replica takes over after 2 s
                promoted = ("10.0.0.9", 7000)
                cluster.topology = Topology.from_shards(
                    [Shard(promoted, (), ((0, 5460),)), *cluster.topology.shards[1:]]
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(failover)
                assert await cluster.run("SET", key, "v") is True
            assert cluster[("10.0.0.9", 7000)].data == {key.encode(): b"v"}
            assert cluster.router.policy.retries["unsent"] >= 1


async def test_a_write_with_unknown_outcome_raises_a_read_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE, breaker=BreakerOptions(enabled=False)) as cluster:
            key = key_on(2)
            cluster[C].latency = 2.0  # past the 1 s read timeout
            with pytest.raises(ReadTimeoutError):
                await cluster.run("SET", key, "v")
            assert len(cluster[C].calls) <= 1  # never sent twice
            cluster[C].data[key.encode()] = b"v"

            async def speed_up() -> None:
                await trio.sleep(0.5)  # while the first read is held (it times out at 1 s)
                cluster[C].latency = 0.0

            async with trio.open_nursery() as nursery:
                nursery.start_soon(speed_up)
                assert await cluster.run("GET", key) == b"v"
            assert cluster.router.policy.retries["read"] == 1


async def test_a_failed_replica_read_falls_back_to_the_primary(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        replica = ("10.0.0.11", 7000)
        shards = [(A, (replica,), ((0, 16383),))]
        async with fake_cluster(shards, read_from=ReadFrom.RANDOM) as cluster:
            cluster[A].data[b"k"] = b"1"
            cluster[replica].down = True
            assert await cluster.run("GET", "k") == b"1"
            assert cluster.router.policy.retries == {"replica_fallback": 1}


# --- the node call -------------------------------------------------------------------------------


async def test_the_breaker_hears_every_outcome_and_an_open_one_sends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        options = BreakerOptions(failure_threshold=2, cooldown=5.0)
        async with fake_cluster(THREE, breaker=options) as cluster:
            node = cluster.node(A)
            get = cluster.specs.get("GET")
            assert await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer) is None
            cluster[A].script = [rex.ResponseError("WRONGTYPE")]  # an answer: the node is fine
            with pytest.raises(rex.ResponseError):
                await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer)
            assert node.breaker.state is BreakerState.CLOSED
            cluster[A].hang()
            for _ in range(2):
                with pytest.raises(ReadTimeoutError):
                    await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer)
            assert node.breaker.state is BreakerState.OPEN
            calls, dials = len(cluster[A].calls), cluster[A].dials
            with pytest.raises(CircuitOpenError) as refused:
                await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer)
            assert was_unsent(refused.value)
            assert (len(cluster[A].calls), cluster[A].dials) == (calls, dials)
            assert node.pool.stats().in_use_connections == 0  # every connection given back


async def test_asking_goes_first_on_the_same_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            get = cluster.specs.get("GET")
            node = cluster.node(B)
            await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer, asking=True)
            assert cluster[B].calls == [("ASKING",), ("GET", "x")]
            cluster[B].script = [b"OK", rex.ResponseError("ERR no")]
            with pytest.raises(rex.ResponseError, match="no"):
                await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer, asking=True)


async def test_measured_calls_keep_a_moving_average_of_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            node = cluster.node(A)
            cluster[A].latency = 0.1
            get = cluster.specs.get("GET")
            await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer, measure=True)
            assert node.latency == pytest.approx(0.1)  # the first sample: nothing to average
            cluster[A].latency = 0.2
            await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer, measure=True)
            assert node.latency == pytest.approx(0.8 * 0.1 + 0.2 * 0.2)  # back to back: 0.2
            await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer)
            assert node.latency == pytest.approx(0.12)  # not measured


async def test_autopipelined_calls_share_a_batch_unless_the_breaker_is_not_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        pool = PoolOptions(autopipeline=True)
        breaker = BreakerOptions(failure_threshold=1, cooldown=1.0)
        async with fake_cluster(THREE, pool=pool, breaker=breaker) as cluster:
            node = cluster.node(A)
            pipeliner = node.pool.autopipeliner
            assert pipeliner is not None
            get = cluster.specs.get("GET")
            replies: list[object] = []

            async def one() -> None:
                replies.append(await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one)
            assert (pipeliner.batches, pipeliner.commands, replies) == (1, 5, [None] * 5)
            # Blocking commands never share a connection.
            blpop = cluster.specs.get("BLPOP")
            assert not blpop.shares_connection and get.shares_connection
            node.breaker.record_failure()  # open: the breaker answers each call itself
            with pytest.raises(CircuitOpenError):
                await nodecall.call(node, ("GET", "x"), get, cluster.router.dialer)
            assert pipeliner.commands == 5


async def test_a_batch_turns_a_node_failure_into_each_commands_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            cluster[A].down = True
            replies = await nodecall.call_batch(cluster.node(A), [("GET", "a"), ("GET", "b")])
            assert len(replies) == 2
            assert all(isinstance(r, rex.ConnectionError) and was_unsent(r) for r in replies)


async def test_lowest_latency_reads_probe_a_slow_node_again_on_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        replica = ("10.0.0.11", 7000)
        shards = [(A, (replica,), ((0, 16383),))]
        lowest = ReadFrom.LOWEST_LATENCY
        async with fake_cluster(shards, read_from=lowest) as cluster:
            cluster.slots.latency_probe_interval = 1.0
            cluster[A].data[b"k"] = cluster[replica].data[b"k"] = b"1"
            cluster[A].latency, cluster[replica].latency = 0.001, 0.050  # the replica is slow

            async def reads(seconds: float) -> tuple[int, int]:
                """GETs for ``seconds``: how many reached the primary, the replica."""
                before = (len(cluster[A].calls), len(cluster[replica].calls))
                end = trio.current_time() + seconds
                while trio.current_time() < end:
                    assert await cluster.run("GET", "k") == b"1"
                return len(cluster[A].calls) - before[0], len(cluster[replica].calls) - before[1]

            await reads(0.5)  # each node measured once, then the primary wins
            on_primary, on_replica = await reads(3.0)
            assert on_replica in (2, 3, 4) and on_primary > 1000  # one re-probe per second
            # The replica becomes the faster one: its next re-probe shows it, reads follow.
            cluster[A].latency, cluster[replica].latency = 0.050, 0.001
            await reads(1.5)
            on_primary, on_replica = await reads(3.0)
            assert on_primary in (2, 3, 4) and on_replica > 1000
