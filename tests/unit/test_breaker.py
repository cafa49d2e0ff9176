"""The per-node circuit breaker on trio's mock clock: pytest-trio's ``autojump_clock`` fixture
(``MockClock(autojump_threshold=0)``) makes every sleep instant."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster.conn.connection import was_unsent
from trio_cluster.errors import PoolClosedError, PoolTimeoutError, ReadTimeoutError
from trio_cluster.pooling.breaker import (
    BreakerOptions,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
    Peers,
)


def _breaker(**options: object) -> CircuitBreaker:
    return CircuitBreaker("n:1", BreakerOptions(**options))  # type: ignore[arg-type]


async def test_opens_after_threshold_fails_fast_then_half_open_probe_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        b = _breaker(failure_threshold=3, cooldown=2.0)
        for _ in range(2):
            b.before_call()
            b.record_failure()
        assert b.state is BreakerState.CLOSED
        b.before_call()
        b.record_failure()
        assert b.state is BreakerState.OPEN and b.opened == 1
        with pytest.raises(CircuitOpenError) as info:
            b.before_call()
        assert was_unsent(info.value)  # nothing was sent: the cluster client may retry
        assert b.rejected == 1
        await trio.sleep(1.9)
        with pytest.raises(CircuitOpenError):
            b.before_call()
        await trio.sleep(0.2)
        b.before_call()  # the probe goes through
        assert b.state is BreakerState.HALF_OPEN
        with pytest.raises(CircuitOpenError):
            b.before_call()  # only one probe at a time
        b.record_success()
        assert b.state is BreakerState.CLOSED
        b.before_call()


async def test_failed_probe_reopens_for_a_full_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        b = _breaker(failure_threshold=1, cooldown=1.0)
        b.record_failure()
        await trio.sleep(1.0)
        b.before_call()
        b.record_failure()
        assert b.state is BreakerState.OPEN and b.opened == 2
        await trio.sleep(0.5)
        with pytest.raises(CircuitOpenError):
            b.before_call()
        await trio.sleep(0.5)
        b.before_call()
        assert b.state is BreakerState.HALF_OPEN


@pytest.mark.parametrize(
    "reply",
    [
        rex.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rex.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        rex.MasterDownError("MASTERDOWN Link with MASTER is down"),
    ],
    ids=["clusterdown", "loading", "masterdown"],
)
async def test_a_probe_answered_not_serving_keeps_the_node_out(
    autojump_clock: trio.testing.MockClock, reply: Exception
) -> None:
    """A restarted node answers CLUSTERDOWN until it is part of the cluster again (about 2 s
    for Redis): a probe that gets that answer fails, so the node stays known bad instead of
    drawing every command into retries; outside a probe the same reply counts neither way."""
    with trio.fail_after(60):
        b = _breaker(failure_threshold=2, cooldown=0.5)
        b.record(reply)
        b.record(reply)
        assert b.state is BreakerState.CLOSED  # a cluster-wide CLUSTERDOWN is no node's fault
        b.record(rex.ConnectionError("refused"))
        b.record(rex.ConnectionError("refused"))
        assert b.state is BreakerState.OPEN
        await trio.sleep(0.5)
        b.before_call()
        b.record(reply)
        assert b.state is BreakerState.OPEN and "probe failed" in b.reason
        await trio.sleep(0.5)
        b.before_call()
        b.record(None)  # the node serves: readmitted
        assert b.state is BreakerState.CLOSED


async def test_cancelled_probe_frees_its_place(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        b = _breaker(failure_threshold=1, cooldown=1.0, half_open_probes=1)
        b.record_failure()
        await trio.sleep(1.0)
        b.before_call()
        b.abandon_probe()
        b.before_call()  # another probe may go
        assert b.state is BreakerState.HALF_OPEN


async def test_success_resets_the_consecutive_count(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        b = _breaker(failure_threshold=2)
        b.record_failure()
        b.record_success()
        b.record_failure()
        assert b.state is BreakerState.CLOSED
        await trio.lowlevel.checkpoint()
        b.record_failure()
        assert b.state is BreakerState.OPEN


async def test_disabled_breaker_never_opens(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(60):
        b = _breaker(enabled=False, failure_threshold=1)
        for _ in range(10):
            b.record_failure()
            b.before_call()
            await trio.sleep(1)
        assert b.state is BreakerState.CLOSED and b.rejected == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("cooldown", 0),
        ("cooldown", float("inf")),
        ("half_open_probes", 0),
    ],
)
def test_bad_options_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        BreakerOptions(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "counts"),
    [
        (rex.ConnectionError("dial refused"), True),
        (rex.TimeoutError("dial timed out"), True),
        (PoolClosedError("the node left the map"), False),
        (PoolTimeoutError("every connection busy"), False),
        (trio.Cancelled.__new__(trio.Cancelled), False),
    ],
)
async def test_a_failed_pool_get_counts_only_when_the_dial_failed(
    error: BaseException, counts: bool, autojump_clock: trio.testing.MockClock
) -> None:
    b = _breaker(failure_threshold=1)
    b.before_call()
    b.record_get_failure(error)
    assert (b.state is BreakerState.OPEN) is counts


@pytest.mark.parametrize(
    ("error", "state"),
    [
        (None, BreakerState.CLOSED),
        (rex.ResponseError("WRONGTYPE"), BreakerState.CLOSED),  # the node answered
        (rex.ConnectionError("reset"), BreakerState.OPEN),
        (PoolClosedError("closed"), BreakerState.HALF_OPEN),  # says nothing: still probing
        (PoolTimeoutError("busy"), BreakerState.HALF_OPEN),
    ],
)
async def test_record_classifies_a_calls_outcome(
    error: BaseException | None, state: BreakerState, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(60):
        b = _breaker(failure_threshold=1, cooldown=1.0)
        b.record_failure()
        await trio.sleep(1.0)
        b.before_call()  # the half-open probe
        b.record(error)
        assert b.state is state


async def test_a_timed_out_batch_counts_once_per_command_a_reset_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        b = _breaker(failure_threshold=5, cooldown=0.5)
        b.record(rex.ConnectionError("reset"), 10)  # one event, whatever it carried
        assert b.state is BreakerState.CLOSED
        b.record(ReadTimeoutError("no reply"), 4)  # four commands unanswered
        assert b.state is BreakerState.OPEN
        await trio.sleep(0.4)  # within the cool-down
        with pytest.raises(CircuitOpenError) as refused:
            b.before_call()
        assert refused.value.node == "n:1"
        assert refused.value.reason == "5 failures in a row, the last ReadTimeoutError: no reply"


async def test_a_reply_sent_before_the_breaker_opened_does_not_close_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Calls in flight when the breaker opens may still succeed (a slow node's short
    replies): only a probe, after the cooldown, readmits the node."""
    with trio.fail_after(60):
        b = _breaker(failure_threshold=1, cooldown=1.0)
        b.before_call()
        b.record_failure(ReadTimeoutError("slow"))
        assert b.state is BreakerState.OPEN
        b.record_success()  # the reply of a call sent earlier
        assert b.state is BreakerState.OPEN
        with pytest.raises(CircuitOpenError):
            b.before_call()
        await trio.sleep(1.0)
        b.before_call()  # the probe
        b.record_success()
        assert b.state is BreakerState.CLOSED


async def test_a_node_relapsing_into_slow_replies_waits_longer_each_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Readmitted by a fast probe, then slow again at once: the cooldown doubles, up to
    eight times; an opening of another kind starts again from the configured one."""
    with trio.fail_after(600):
        peers = Peers()
        fast = CircuitBreaker("fast:1", BreakerOptions(), peers=peers)
        slow = CircuitBreaker(
            "slow:1", BreakerOptions(failure_threshold=1, cooldown=1.0), slow_after=0.1, peers=peers
        )

        async def slow_reply() -> None:
            sent = trio.current_time()
            await trio.sleep(0.5)
            fast.record_reply(trio.current_time())  # meanwhile the peer answers at once
            assert slow.record_reply(sent) is True

        async def cooldown() -> float:
            opened = trio.current_time()
            for _ in range(200):  # the breaker is a clock, not a task: poll it
                if slow.refusal() is None:
                    break
                await trio.sleep(0.1)
            slow.before_call()  # the probe
            slow.record_success()  # a short reply: fast
            assert slow.state is BreakerState.CLOSED
            return round(trio.current_time() - opened, 1)

        cooldowns = []
        for _ in range(5):
            await slow_reply()
            assert slow.state is BreakerState.OPEN
            cooldowns.append(await cooldown())
        assert cooldowns == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0], abs=0.11)
        slow.before_call()
        slow.record_failure(ReadTimeoutError("timed out"))  # not slow: failed
        assert await cooldown() == pytest.approx(1.0, abs=0.11)
