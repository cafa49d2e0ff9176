"""A sick node costs only its own slots, on in-memory nodes (``fakenodes``) and the autojump
clock: the first command fails within its read timeout, then the node's slots fail at once
(no pool wait, no refresh wait, no backoff) while the others serve; one probe readmits it;
a failover is waited for only when a replica exists and the cluster sees the node failing."""

from __future__ import annotations

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
from trio_cluster.routing.isolation import PING_OVERDUE, cluster_sees_failing
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
            assert asked == 2  # CLUSTER NODES and TIME, once
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
