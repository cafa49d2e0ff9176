"""The one retry policy in isolation, on trio's autojump clock (pytest-trio's ``autojump_clock``):
every rule, every budget, the waits, and the redirects it applies through the slot map."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster.config import ConnectionConfig, RetryOptions
from trio_cluster.conn.connection import mark_unsent
from trio_cluster.conn.dialer import Dialer
from trio_cluster.errors import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    PoolTimeoutError,
    ReadTimeoutError,
    TryAgainError,
)
from trio_cluster.pooling.breaker import BreakerOptions, CircuitBreaker, CircuitOpenError
from trio_cluster.pooling.pool import Pool, PoolOptions
from trio_cluster.routing.isolation import Isolation
from trio_cluster.routing.policy import RetryPolicy, Rule, classify, longer_wait
from trio_cluster.routing.slotmap import Node, ReadFrom, SlotMap
from trio_cluster.routing.topology import Address, Shard, Topology

A: Address = ("10.0.0.1", 7000)
B: Address = ("10.0.0.2", 7000)


def _node(address: Address, replica: bool = False) -> Node:
    # Never started: the policy only needs node objects (no I/O here).
    config = ConnectionConfig(host=address[0], port=address[1])
    dialer = Dialer(config, watchdog=None, credentials=None)
    pool = Pool(dialer, PoolOptions(), node_name=config.address, timeout=1.0)
    return Node(address, pool, CircuitBreaker(config.address, BreakerOptions()), dialer)


class Refreshes:
    """The slot map's refresh callbacks, recorded; ``refresh`` waits ``takes`` seconds."""

    def __init__(self, takes: float = 0.0) -> None:
        self.takes = takes
        self.requested = 0
        self.waited = 0

    def request(self) -> None:
        self.requested += 1

    async def refresh(self) -> None:
        self.waited += 1
        await trio.sleep(self.takes)


async def _policy(refreshes: Refreshes | None = None, **options: Any) -> RetryPolicy:
    refreshes = refreshes or Refreshes()
    slots = SlotMap(
        read_from=ReadFrom.PRIMARY,
        remap=None,
        create=_node,
        start=_no_start,
        request_refresh=refreshes.request,
        refresh=refreshes.refresh,
    )
    await slots.install(Topology.from_shards([Shard(A, (), ((0, 16383),))]))
    retry = RetryOptions(**options)
    return RetryPolicy(retry, slots, Isolation(slots, retry.failover_wait, _no_ask))


async def _no_ask(node: Node, commands: Any) -> list[Any]:
    raise AssertionError("no node is known bad here")


async def _no_start(node: Node) -> None:
    pass


def _unsent(error: BaseException) -> BaseException:
    return mark_unsent(error)


# --- classify: every outcome ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "readonly", "rule"),
    [
        (None, False, Rule.DONE),
        (MovedError("1 10.0.0.2:7000"), False, Rule.MOVED),
        (AskError("1 10.0.0.2:7000"), False, Rule.ASK),
        (TryAgainError("TRYAGAIN multi-key"), False, Rule.TRYAGAIN),
        (BusyLoadingError("LOADING"), False, Rule.TRYAGAIN),
        (ClusterDownError("CLUSTERDOWN the cluster is down"), False, Rule.CLUSTERDOWN),
        (MasterDownError("MASTERDOWN link down"), True, Rule.CLUSTERDOWN),
        # Never reached a server: any command may go again.
        (_unsent(rex.ConnectionError("refused")), False, Rule.RETRY_AFTER),
        (_unsent(CircuitOpenError("open")), False, Rule.RETRY_AFTER),
        # Reached it, outcome unknown: only a read may go again.
        (rex.ConnectionError("reset"), True, Rule.RETRY_AFTER),
        (rex.ConnectionError("reset"), False, Rule.RAISE),
        (ReadTimeoutError("late"), True, Rule.RETRY_AFTER),
        (ReadTimeoutError("late"), False, Rule.RAISE),
        # A pool wait is bounded by its own timeout: never waited again.
        (PoolTimeoutError("busy"), True, Rule.RAISE),
        (_unsent(PoolTimeoutError("busy")), True, Rule.RAISE),
        (rex.ResponseError("WRONGTYPE"), True, Rule.RAISE),
        (ValueError("not redis"), True, Rule.RAISE),
    ],
)
def test_classify_names_every_outcome(
    error: BaseException | None, readonly: bool, rule: Rule
) -> None:
    assert classify(error, readonly) is rule


async def test_a_slot_nobody_serves_is_clusterdown_unsent_and_asks_for_a_refresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        refreshes = Refreshes()
        policy = await _policy(refreshes)
        error = policy.slots.not_served(42)
        assert isinstance(error, ClusterDownError) and "slot 42 is not served" in str(error)
        assert classify(error, False) is Rule.CLUSTERDOWN
        assert refreshes.requested == 1


# --- budgets ---------------------------------------------------------------------------------


async def test_redirects_are_bounded_per_command_moved_and_ask_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy(max_redirects=3)
        attempt = policy.attempt(readonly=False)
        moved, ask = MovedError("1 10.0.0.2:7000"), AskError("1 10.0.0.2:7000")
        assert [await attempt.decide(e, None) for e in (moved, ask, moved)] == [
            Rule.MOVED,
            Rule.ASK,
            Rule.MOVED,
        ]
        assert await attempt.decide(ask, None) is Rule.RAISE
        # Another command has its own budget.
        assert await policy.attempt(readonly=False).decide(moved, None) is Rule.MOVED
        assert policy.retries == {}  # redirects are counted by the slot map, not as retries


async def test_transient_replies_are_bounded_by_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy(transient_retries=2)
        attempt = policy.attempt(readonly=False)
        tryagain = TryAgainError("TRYAGAIN")
        assert await attempt.decide(tryagain, None) is Rule.TRYAGAIN
        assert await attempt.decide(ClusterDownError("CLUSTERDOWN"), None) is Rule.CLUSTERDOWN
        assert await attempt.decide(tryagain, None) is Rule.RAISE
        assert policy.retries == {"TryAgainError": 1, "ClusterDownError": 1}


async def test_transient_and_unsent_retries_are_bounded_by_the_time_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy(budget=2.0, transient_retries=1000)
        attempt = policy.attempt(readonly=False)
        unsent = _unsent(rex.ConnectionError("refused"))
        assert await attempt.decide(unsent, None) is Rule.RETRY_AFTER  # the budget starts here
        await trio.sleep(1.9)
        assert await attempt.decide(TryAgainError("TRYAGAIN"), None) is Rule.TRYAGAIN
        assert await attempt.decide(unsent, None) is Rule.RETRY_AFTER
        await trio.sleep(0.2)
        assert await attempt.decide(unsent, None) is Rule.RAISE
        assert await attempt.decide(TryAgainError("TRYAGAIN"), None) is Rule.RAISE
        # Redirects do not spend time budget.
        assert await attempt.decide(MovedError("1 10.0.0.2:7000"), None) is Rule.MOVED
        assert policy.retries == {"unsent": 2, "TryAgainError": 1}


async def test_reads_with_unknown_outcome_are_bounded_by_count_writes_never_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy(retries=2)
        read = policy.attempt(readonly=True)
        timeout = ReadTimeoutError("late")
        assert [await read.decide(timeout, None) for _ in range(3)] == [
            Rule.RETRY_AFTER,
            Rule.RETRY_AFTER,
            Rule.RAISE,
        ]
        write = policy.attempt(readonly=False)
        assert await write.decide(timeout, None) is Rule.RAISE
        assert policy.retries == {"read": 2}


async def test_a_closed_client_retries_nothing_but_still_follows_redirects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy()
        policy.closed = True
        attempt = policy.attempt(readonly=True)
        assert await attempt.decide(_unsent(rex.ConnectionError("refused")), None) is Rule.RAISE
        assert await attempt.decide(TryAgainError("TRYAGAIN"), None) is Rule.RAISE
        assert await attempt.decide(MovedError("1 10.0.0.2:7000"), None) is Rule.MOVED


async def test_a_failed_replica_falls_back_without_spending_a_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy(retries=0, budget=0.0)
        attempt = policy.attempt(readonly=True)
        reset = rex.ConnectionError("reset")
        assert await attempt.decide(reset, None, replica=True) is Rule.RETRY_AFTER
        assert await attempt.decide(reset, None) is Rule.RAISE  # on the primary: no read retries
        assert policy.retries == {"replica_fallback": 1}


# --- what follows a rule -----------------------------------------------------------------------


async def test_moved_is_applied_by_the_slot_map_and_ask_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy()
        slots = policy.slots
        owner = slots.primary(5)
        attempt = policy.attempt(readonly=False)
        ask = AskError("5 10.0.0.2:7000")
        target = await attempt.redirect(await attempt.decide(ask, owner), ask, owner)
        assert target.address == B and slots.primary(5) is owner
        moved = MovedError("5 10.0.0.2:7000")
        target = await attempt.redirect(await attempt.decide(moved, owner), moved, owner)
        assert target.address == B and slots.primary(5) is target
        assert (slots.moved, slots.ask) == (1, 1)


async def test_waits_back_off_exponentially_with_jitter_under_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        policy = await _policy(backoff_base=0.1, backoff_cap=0.3)
        attempt = policy.attempt(readonly=False)
        bounds = [0.1, 0.2, 0.3, 0.3]
        for bound in bounds:
            started = trio.current_time()
            await attempt.pause(Rule.TRYAGAIN)
            assert 0 <= trio.current_time() - started <= bound
        assert attempt.waits == len(bounds)


async def test_clusterdown_asks_for_a_refresh_and_does_not_wait_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        refreshes = Refreshes(takes=100.0)
        policy = await _policy(refreshes, backoff_base=0.0)
        started = trio.current_time()
        await policy.pause(Rule.CLUSTERDOWN, 0)
        assert trio.current_time() - started == 0
        assert (refreshes.requested, refreshes.waited) == (1, 0)


async def test_retry_after_waits_for_a_refresh_but_boundedly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        refreshes = Refreshes(takes=100.0)  # a refresh that never comes back in time
        policy = await _policy(refreshes, backoff_base=0.0)
        started = trio.current_time()
        await policy.pause(Rule.RETRY_AFTER, 0)
        assert 1.0 <= trio.current_time() - started <= 1.011  # 1 s + at most 10 ms
        assert refreshes.waited == 1
        quick = Refreshes(takes=0.05)
        policy = await _policy(quick, backoff_base=0.0)
        started = trio.current_time()
        await policy.pause(Rule.RETRY_AFTER, 0)
        assert trio.current_time() - started == pytest.approx(0.05)


def test_a_pipeline_round_takes_the_longest_wait_any_command_needs() -> None:
    assert longer_wait(None, Rule.TRYAGAIN) is Rule.TRYAGAIN
    assert longer_wait(Rule.TRYAGAIN, Rule.CLUSTERDOWN) is Rule.CLUSTERDOWN
    assert longer_wait(Rule.RETRY_AFTER, Rule.CLUSTERDOWN) is Rule.RETRY_AFTER
    assert longer_wait(Rule.CLUSTERDOWN, Rule.RETRY_AFTER) is Rule.RETRY_AFTER
