"""The watchdog expires in-flight commands exactly at their deadlines (autojump clock)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from trio_cluster.conn.watchdog import Watchdog


class FakeConn:
    def __init__(self, deadline: float) -> None:
        self.io_deadline = deadline
        self.expired_at: float | None = None

    def expire(self) -> None:
        self.expired_at = trio.current_time()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_expires_exactly_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    watchdog = Watchdog()
    with trio.fail_after(1000):  # mock-clock seconds
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.run)
            start = trio.current_time()
            slow, quick = FakeConn(start + 3.0), FakeConn(start + 5.0)
            watchdog.watch(slow)
            watchdog.watch(quick)
            await trio.sleep(1.0)
            watchdog.unwatch(quick)  # finished in time: never expired
            await trio.sleep(10.0)
            nursery.cancel_scope.cancel()
    assert slow.expired_at == start + 3.0
    assert quick.expired_at is None
    assert watchdog.expired == 1 and len(watchdog) == 0


async def test_an_earlier_deadline_moves_the_wake_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    watchdog = Watchdog()
    with trio.fail_after(1000):  # mock-clock seconds
        async with trio.open_nursery() as nursery:
            await nursery.start(watchdog.run)
            start = trio.current_time()
            late = FakeConn(start + 30.0)
            watchdog.watch(late)
            await trio.sleep(1.0)  # the watchdog now sleeps until start + 30
            early = FakeConn(start + 2.0)
            watchdog.watch(early)
            await trio.sleep(5.0)
            assert early.expired_at == start + 2.0
            assert late.expired_at is None
            late.io_deadline = math.inf  # e.g. a blocking command waiting forever
            watchdog.watch(late)
            await trio.sleep(100.0)
            assert late.expired_at is None
            nursery.cancel_scope.cancel()
