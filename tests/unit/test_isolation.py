"""A sick node costs only its own slots, on in-memory nodes (``fakenodes``) and the autojump
clock: the first command fails within its read timeout, then the node's slots fail at once
(no pool wait, no refresh wait, no backoff) while the others serve; one probe readmits it;
a failover is waited for only when a replica exists and the cluster sees the node failing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing
from fakenodes import THREE, FakeCluster, fake_cluster, key_on
from redis import exceptions as rex

from trio_cluster.config import RetryOptions
from trio_cluster.errors import ReadTimeoutError
from trio_cluster.pooling.breaker import BreakerOptions, BreakerState, CircuitOpenError
from trio_cluster.pooling.pool import PoolOptions
from trio_cluster.routing.isolation import (
    ELECTION,
    PING_OVERDUE,
    cluster_sees_failing,
    failover_eta,
)
from trio_cluster.routing.router import REFUSALS_PER_CHECKPOINT
from trio_cluster.routing.topology import Shard, Topology

A, B, C = (shard[0] for shard in THREE)
REPLICA = ("10.0.0.11", 7000)
WITH_REPLICA = [(A, (REPLICA,), ((0, 5460),)), *THREE[1:]]


def _nodes_line(address: tuple[str, int], flags: str, link: str, ping: int = 0) -> str:
    host, port = address
    return f"id1 {host}:{port}@{port + 10000} {flags} - {ping} 0 1 {link} 0-5460"


def _ms_ago(seconds: float) -> int:
    """A ``ping-sent`` field, ``seconds`` before the witness's clock reads 100 s."""
    return int((100.0 - seconds) * 1000)


async def _open_breaker(cluster: FakeCluster, key: str, threshold: int) -> None:
    """Make ``key``'s node known bad: ``threshold`` commands time out against it."""
    async with trio.open_nursery() as nursery:
        for _ in range(threshold):
            nursery.start_soon(_expect, ReadTimeoutError, cluster.run("SET", key, "v"))


async def _expect(kind: type[BaseException], awaitable: Any) -> None:
    with pytest.raises(kind):
        await awaitable


# --- no replica: isolated --------------------------------------------------------------------


async def test_a_hung_node_costs_only_its_own_slots(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=3, cooldown=0.5)
        async with fake_cluster(THREE, breaker=breaker, read_timeout=1.0) as cluster:
            sick, healthy = key_on(0), key_on(1)
            cluster[A].hang()
            started = trio.current_time()
            await _open_breaker(cluster, sick, 3)  # in flight together: each waits its 1 s
            assert trio.current_time() - started == pytest.approx(1.0)
            node = cluster.node(A)
            assert node.breaker.state is BreakerState.OPEN
            dials, calls = cluster[A].dials, len(cluster[A].calls)
            started = trio.current_time()
            for command in (("GET", sick), ("SET", sick, "v")):
                with pytest.raises(CircuitOpenError) as refused:
                    await cluster.run(*command)
                # Named: the node and why it is known bad.
                assert refused.value.node == cluster[A].name
                assert "3 failures in a row" in refused.value.reason
                assert "ReadTimeoutError" in str(refused.value)
            # At once: no pool wait, no refresh wait, no backoff; nothing asked of the node.
            assert trio.current_time() == started
            assert (cluster[A].dials, len(cluster[A].calls)) == (dials, calls)
            assert cluster.refreshes == 0
            assert cluster.router.policy.isolated == 2
            # Every other node serves, untouched.
            assert await cluster.run("SET", healthy, "ok") is True
            assert trio.current_time() == started


async def test_one_probe_readmits_the_node_within_its_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=3, cooldown=0.5)
        async with fake_cluster(THREE, breaker=breaker, read_timeout=1.0) as cluster:
            sick = key_on(0)
            cluster[A].hang()
            await _open_breaker(cluster, sick, 3)
            node = cluster.node(A)
            # While hung, the open breaker lets one probe through per cool-down; every other
            # command is refused at once: 50 tasks for 3 s send at most a handful.
            sent_before = cluster[A].received
            refused = 0

            async def hammer() -> None:
                nonlocal refused
                while trio.current_time() < 4.0:
                    try:
                        await cluster.run("GET", sick)
                    except CircuitOpenError:
                        refused += 1
                        await trio.sleep(0.01)
                    except ReadTimeoutError:
                        pass

            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(hammer)
            probes = cluster[A].received - sent_before
            assert 1 <= probes <= 3 and refused > 1000
            # The node answers again at 5.0 s; its slots serve within the cool-down.
            await trio.sleep_until(5.0)
            cluster[A].resume()
            answered = trio.current_time()
            while True:
                try:
                    assert await cluster.run("GET", sick) == b"v" or True
                    break
                except CircuitOpenError:
                    await trio.sleep(0.01)
            assert trio.current_time() - answered <= 0.5 + 0.011
            assert node.breaker.state is BreakerState.CLOSED


async def test_queued_autopipelined_commands_are_refused_when_the_breaker_opens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1, cooldown=5.0)
        pool = PoolOptions(size=1, autopipeline=True)  # one connection: later batches queue
        async with fake_cluster(THREE, breaker=breaker, pool=pool, read_timeout=1.0) as cluster:
            sick = key_on(0)
            cluster[A].hang()
            outcomes: list[tuple[str, float]] = []

            async def one() -> None:
                try:
                    await cluster.run("GET", sick)
                except Exception as error:
                    outcomes.append((type(error).__name__, trio.current_time()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(one)  # the batch in flight on the only connection
                await trio.sleep(0.1)
                for _ in range(3):
                    nursery.start_soon(one)  # queued: the worker waits for the connection
            # The first batch times out at 1 s and opens the breaker: the queued three are
            # refused then, not after a pool wait.
            assert sorted(outcomes) == [
                ("CircuitOpenError", pytest.approx(1.0)),
                ("CircuitOpenError", pytest.approx(1.0)),
                ("CircuitOpenError", pytest.approx(1.0)),
                ("ReadTimeoutError", pytest.approx(1.0)),
            ]


# --- a replica: ride out a failover only when the cluster sees the node failing ------------


async def test_a_failover_the_cluster_sees_is_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1, cooldown=0.5)
        async with fake_cluster(WITH_REPLICA, breaker=breaker) as cluster:
            sick = key_on(0)
            for witness in (B, C):  # the cluster bus to A is down: a dead process
                cluster[witness].cluster_nodes = _nodes_line(A, "master", "disconnected")
            cluster[A].down = True

            async def promote() -> None:
                await trio.sleep(2.0)
                cluster.topology = Topology.from_shards(
                    [Shard(REPLICA, (), ((0, 5460),)), *cluster.topology.shards[1:]]
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(promote)
                assert await cluster.run("SET", sick, "v") is True
            assert trio.current_time() >= 2.0  # it waited for the promotion
            assert cluster[REPLICA].data == {sick.encode(): b"v"}
            assert cluster.router.policy.isolated == 0


async def test_a_node_the_cluster_finds_healthy_is_isolated_despite_its_replica(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1, cooldown=5.0)
        async with fake_cluster(WITH_REPLICA, breaker=breaker) as cluster:
            sick = key_on(0)
            for witness in (B, C):  # the cluster reaches A: the fault is on our side
                cluster[witness].cluster_nodes = _nodes_line(A, "master", "connected")
            cluster[A].down = True
            started = trio.current_time()
            with pytest.raises(rex.ConnectionError, match="refused"):  # its own call's error
                await cluster.run("SET", sick, "v")
            # The pool's own dial retries (0.05 + 0.1 s), then one question to a witness.
            assert trio.current_time() - started == pytest.approx(0.15)
            asked = len(cluster[B].calls) + len(cluster[C].calls)
            assert asked == 3  # CLUSTER NODES, TIME and CONFIG GET cluster-node-timeout, once
            with pytest.raises(CircuitOpenError):
                await cluster.run("SET", sick, "v")
            assert len(cluster[B].calls) + len(cluster[C].calls) == asked  # the verdict kept


@pytest.mark.parametrize(("mode", "waits"), [("never", False), ("always", True)])
async def test_failover_wait_never_and_always(
    autojump_clock: trio.testing.MockClock, mode: str, waits: bool
) -> None:
    with trio.fail_after(60):
        retry = RetryOptions(failover_wait=mode, budget=2.0)
        breaker = BreakerOptions(failure_threshold=1, cooldown=5.0)
        async with fake_cluster(THREE, retry=retry, breaker=breaker) as cluster:
            cluster[A].down = True
            started = trio.current_time()
            with pytest.raises(rex.ConnectionError):
                await cluster.run("GET", key_on(0))
            assert (trio.current_time() - started >= 2.0) is waits


async def test_a_failover_far_off_is_not_waited_for_until_it_is_near(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 5 s node timeout: the dead primary's slots fail at once while its promotion is
    more than ``failover_wait_max`` away, and wait for it once it is near."""
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1, cooldown=0.5)
        async with fake_cluster(WITH_REPLICA, breaker=breaker) as cluster:
            sick = key_on(0)
            for witness in (B, C):  # the bus link down since t=0, a ping pending since then
                cluster[witness].node_timeout_ms = 5000
                cluster[witness].cluster_nodes = _nodes_line(
                    A, "master", "disconnected", ping=int(trio.current_time() * 1000) or 1
                )
            cluster[A].down = True
            with pytest.raises(rex.ConnectionError):  # its own call's error, first
                await cluster.run("SET", sick, "v")
            refused_until = 5.0 + ELECTION - 2.0  # the promotion 2 s (failover_wait_max) away
            while trio.current_time() < refused_until - 1.0:  # VERDICT_TTL: kept 1 s
                started = trio.current_time()
                with pytest.raises(rex.ConnectionError):  # refused, or a probe's own error
                    await cluster.run("SET", sick, "v")
                # No wait for the failover: at most a probe's dial retries (0.05 + 0.1 s).
                assert trio.current_time() - started <= 0.15 + 1e-9
                await trio.sleep(0.25)
            isolated = cluster.router.policy.isolated
            assert isolated >= 4
            await trio.sleep_until(refused_until + 0.01)

            async def promote() -> None:
                await trio.sleep_until(5.0 + ELECTION)
                cluster.topology = Topology.from_shards(
                    [Shard(REPLICA, (), ((0, 5460),)), *cluster.topology.shards[1:]]
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(promote)
                assert await cluster.run("SET", sick, "v") is True  # it waited
            assert trio.current_time() >= 5.0 + ELECTION
            assert cluster.router.policy.isolated == isolated


def test_failover_wait_is_validated() -> None:
    with pytest.raises(ValueError, match="failover_wait must be one of auto, always, never"):
        RetryOptions(failover_wait="sometimes")


# --- the cluster's view ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "failing"),
    [
        (_nodes_line(A, "master", "connected"), False),
        (_nodes_line(A, "master,fail?", "connected"), True),
        (_nodes_line(A, "master,fail", "connected"), True),
        (_nodes_line(A, "master", "disconnected"), True),
        # A ping pending: overdue past PING_OVERDUE, not before.
        (
            _nodes_line(A, "master", "connected", ping=int((100.0 - PING_OVERDUE - 0.1) * 1000)),
            True,
        ),
        (
            _nodes_line(A, "master", "connected", ping=int((100.0 - PING_OVERDUE + 0.1) * 1000)),
            False,
        ),
        (_nodes_line(B, "master", "disconnected"), False),  # another node's line
        ("id1 10.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460", False),
    ],
)
def test_the_cluster_view_of_a_node(line: str, failing: bool) -> None:
    assert cluster_sees_failing(line, A, lambda a: a, now=100.0) is failing


def test_the_cluster_view_matches_hostnames_and_remapped_addresses() -> None:
    line = "id1 10.9.9.9:6379@16379,cache-0 master - 0 0 1 disconnected 0-5460"

    def remap(address: tuple[str, int]) -> tuple[str, int]:
        return ("127.0.0.1", 9001) if address == ("cache-0", 6379) else address

    assert cluster_sees_failing(line, ("127.0.0.1", 9001), remap, now=0.0)
    assert cluster_sees_failing(line, ("10.9.9.9", 6379), lambda a: a, now=0.0)
    assert not cluster_sees_failing(line, ("127.0.0.1", 9002), remap, now=0.0)


@pytest.mark.parametrize(
    ("flags", "link", "silent", "timeout", "eta"),
    [
        ("master", "connected", None, 15.0, None),  # healthy: no failover coming
        ("master", "disconnected", None, 15.0, 15.0 + ELECTION),  # no ping pending yet
        ("master", "disconnected", 4.0, 5.0, 1.0 + ELECTION),
        ("master,fail?", "connected", 14.0, 15.0, 1.0 + ELECTION),
        ("master,fail?", "connected", 20.0, 15.0, -5.0 + ELECTION),  # overdue
        ("master,fail", "connected", 3.0, 15.0, ELECTION),  # agreed failed: election next
        ("master,fail", "connected", 3.0, None, ELECTION),
        ("master,fail?", "connected", 3.0, None, float("inf")),  # node timeout unknown
    ],
)
def test_failover_eta(
    flags: str, link: str, silent: float | None, timeout: float | None, eta: float | None
) -> None:
    ping = 0 if silent is None else _ms_ago(silent)
    line = _nodes_line(A, flags, link, ping=ping)
    found = failover_eta(line, A, lambda a: a, now=100.0, node_timeout=timeout)
    assert found == (pytest.approx(eta) if eta is not None else None)


# --- a slow node: an outlier -------------------------------------------------------------------


@pytest.mark.parametrize("autopipeline", [False, True])
async def test_a_node_much_slower_than_the_others_is_isolated(
    autojump_clock: trio.testing.MockClock, autopipeline: bool
) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=3, cooldown=0.5)
        pool = PoolOptions(autopipeline=autopipeline)
        async with fake_cluster(THREE, breaker=breaker, pool=pool, read_timeout=1.0) as cluster:
            slow, healthy = key_on(0), key_on(1)
            cluster[A].latency = 0.5  # under the 1 s read timeout, over its quarter
            cluster[B].latency = 0.001
            node = cluster.node(A)
            assert node.breaker.slow_after == 0.25

            async def healthy_load() -> None:
                while True:
                    await cluster.run("GET", healthy)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(healthy_load)
                for _ in range(3):  # each reply comes, slowly, while B answers fast
                    assert await cluster.run("SET", slow, "v") is True
                assert node.breaker.state is BreakerState.OPEN
                assert node.breaker.slow == 3
                started = trio.current_time()
                with pytest.raises(CircuitOpenError) as refused:
                    await cluster.run("GET", slow)
                assert trio.current_time() == started
                assert "slow_reply 0.25 s" in refused.value.reason
                # Readmitted once it is fast again, by three fast probes in a row (one fast
                # reply proves little about a slow node: it may have been a short one).
                cluster[A].latency = 0.0
                await trio.sleep(0.5)
                for _ in range(2):
                    assert await cluster.run("GET", slow) == b"v"
                    assert node.breaker.state is BreakerState.HALF_OPEN
                assert await cluster.run("GET", slow) == b"v"
                assert node.breaker.state is BreakerState.CLOSED
                nursery.cancel_scope.cancel()


async def test_fast_replies_between_slow_ones_do_not_hide_a_slow_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A node starved of bandwidth answers short replies fast and long ones slowly: its
    outliers are counted in a window (4 x slow_reply), not in a row."""
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=2, cooldown=5.0)
        async with fake_cluster(THREE, breaker=breaker, read_timeout=1.0) as cluster:
            cluster[B].latency = 0.001

            async def healthy_load() -> None:
                while True:
                    await cluster.run("GET", key_on(1))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(healthy_load)
                for latency in (0.4, 0.0, 0.0, 0.4):  # 2 outliers within 1 s, fast between
                    cluster[A].latency = latency
                    await cluster.run("SET", key_on(0), "v")
                nursery.cancel_scope.cancel()
            breaker_a = cluster.node(A).breaker
            assert breaker_a.state is BreakerState.OPEN
            assert "2 slow replies within 1 s" in breaker_a.reason


async def test_a_whole_client_slow_together_isolates_nobody(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1)
        async with fake_cluster(THREE, breaker=breaker, read_timeout=1.0) as cluster:
            for address in (A, B, C):
                cluster[address].latency = 0.5
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    for _ in range(4):
                        nursery.start_soon(cluster.run, "SET", key_on(i), "v")
            for address in (A, B, C):
                assert cluster.node(address).breaker.state is BreakerState.CLOSED


async def test_slow_reply_off(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1, slow_reply=math.inf)
        async with fake_cluster(THREE, breaker=breaker, read_timeout=1.0) as cluster:
            cluster[A].latency = 0.9
            cluster[B].latency = 0.001  # so that the mock clock moves

            async def healthy_load() -> None:
                while True:
                    await cluster.run("GET", key_on(1))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(healthy_load)
                for _ in range(3):
                    assert await cluster.run("SET", key_on(0), "v") is True
                nursery.cancel_scope.cancel()
            assert cluster.node(A).breaker.state is BreakerState.CLOSED


@pytest.mark.parametrize("bad", [0, -1.0, True, "1"])
def test_slow_reply_is_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="slow_reply must be a number of seconds > 0"):
        BreakerOptions(slow_reply=bad)


# --- calls parked for a connection ---------------------------------------------------------


async def test_calls_parked_on_the_pool_are_refused_when_the_breaker_opens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten calls for a hung node, two connections: two are sent and time out (opening the
    breaker); the eight parked for a connection are refused then, not sent later."""
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=2, cooldown=5.0)
        pool = PoolOptions(size=2, min_idle=0)
        async with fake_cluster(THREE, breaker=breaker, pool=pool, read_timeout=1.0) as cluster:
            cluster[A].hang()
            outcomes: list[tuple[float, str]] = []

            async def one() -> None:
                try:
                    await cluster.run("GET", key_on(0))
                except Exception as error:
                    outcomes.append((trio.current_time(), type(error).__name__))

            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(one)
            kinds = [kind for _, kind in outcomes]
            # The parked eight refused when the second timeout opened the breaker (and the
            # first timed-out read, retried, refused too); nothing more reached the node.
            assert kinds.count("CircuitOpenError") >= 8 and len(kinds) == 10
            assert set(kinds) == {"CircuitOpenError", "ReadTimeoutError"}
            assert cluster[A].received == 2
            assert max(t for t, _ in outcomes) < 1.1  # no second read timeout for anyone


async def test_a_pool_at_max_active_says_nothing_about_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """redis-py's ``max_connections``: a burst past it fails at once (PoolExhaustedError,
    a MaxConnectionsError), and the node stays readmitted: a busy pool is not a sick node."""
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1)
        pool = PoolOptions(size=1, max_active=1, min_idle=0)
        async with fake_cluster(THREE, breaker=breaker, pool=pool) as cluster:
            cluster[A].latency = 0.1
            errors: list[BaseException] = []

            async def one() -> None:
                try:
                    await cluster.run("GET", key_on(0))
                except rex.MaxConnectionsError as error:
                    errors.append(error)

            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(one)
            assert errors  # (an unsent one may be retried, after a backoff, and succeed)
            assert cluster.node(A).breaker.state is BreakerState.CLOSED


async def test_a_loop_of_refused_calls_lets_the_others_run_and_can_be_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A refusal skips most checkpoints (they are its largest cost), not all: a task that
    retries a known-bad node's key in a tight loop neither starves the others nor escapes
    its cancel scope."""
    with trio.fail_after(60):
        breaker = BreakerOptions(failure_threshold=1, cooldown=600.0)
        async with fake_cluster(THREE, breaker=breaker) as cluster:
            cluster[A].down = True
            with pytest.raises(rex.ConnectionError):
                await cluster.run("GET", key_on(0))
            others_ran = trio.Event()
            refused = 0

            async def spin() -> None:
                nonlocal refused
                while True:  # no checkpoint of its own
                    try:
                        await cluster.run("GET", key_on(0))
                    except CircuitOpenError:
                        refused += 1

            async def other() -> None:
                await trio.lowlevel.checkpoint()
                others_ran.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(spin)
                nursery.start_soon(other)
                await others_ran.wait()
                # Each task ran a few times in turn: the spinning one was not left alone.
                assert 0 < refused <= 4 * REFUSALS_PER_CHECKPOINT
                nursery.cancel_scope.cancel()  # reaches the spinning task: the nursery ends
            assert nursery.cancel_scope.cancelled_caught
