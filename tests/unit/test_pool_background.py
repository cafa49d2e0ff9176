"""The pool's background I/O (trio_cluster/pooling/background.py) on its own, without a pool:
dials with retries, back-off and one deadline for the whole dial, failures that are not retried,
closes (bounded, shielded) and drains. Every outcome is read from the
callbacks a pool would get, on the autojump clock."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster.conn.connection import was_unsent
from trio_cluster.errors import (
    AuthenticationError,
    CertificateVerificationError,
    ConnectTimeoutError,
)
from trio_cluster.pooling.background import MIN_IDLE_RETRY_DELAY, Background
from trio_cluster.pooling.pooltypes import PoolOptions


@attrs.define(eq=False)
class Conn:
    """Just enough of a poolable connection for closes and drains."""

    id: int
    owed_replies: int = 0
    broken: bool = False
    close_gate: trio.Event | None = None
    close_error: Exception | None = None
    drain_error: Exception | None = None
    closed_at: float | None = None

    async def aclose(self) -> None:
        if self.close_gate is not None:
            await self.close_gate.wait()
        await trio.sleep(0.25)
        self.closed_at = trio.current_time()
        if self.close_error is not None:
            raise self.close_error

    async def drain(self) -> None:
        await trio.sleep(0.5)
        if self.drain_error is not None:
            raise self.drain_error
        self.owed_replies = 0


@attrs.define
class Reports:
    """What the background reported, as a pool would receive it."""

    dialled: list[tuple[float, Conn]] = attrs.Factory(list)
    failed: list[tuple[float, Exception]] = attrs.Factory(list)
    closed: int = 0
    drained: list[tuple[Conn, bool]] = attrs.Factory(list)


Dial = Callable[[], Awaitable[Conn]]


def script(*steps: Any) -> tuple[Dial, list[float]]:
    """A dial that plays ``steps`` in turn: a Conn is returned, an exception raised, a number
    slept for first (then the next step is played); records when each attempt began."""
    queue = list(steps)
    started: list[float] = []

    async def dial() -> Conn:
        started.append(trio.current_time())
        while True:
            step = queue.pop(0)
            if isinstance(step, int | float):
                await trio.sleep(step)
                continue
            await trio.lowlevel.checkpoint()
            if isinstance(step, Exception):
                raise step
            assert isinstance(step, Conn)
            return step

    return dial, started


@asynccontextmanager
async def background(
    dial: Dial, *, dial_timeout: float | None = None, **options: Any
) -> AsyncIterator[tuple[Background[Any], Reports]]:
    reports = Reports()
    async with trio.open_nursery() as nursery:
        bg: Background[Any] = Background(
            dial,
            PoolOptions(**options),
            "node:1",
            dial_timeout=dial_timeout,
            spawn=nursery.start_soon,
            dialled=lambda conn: reports.dialled.append((trio.current_time(), conn)),
            dial_failed=lambda exc: reports.failed.append((trio.current_time(), exc)),
            closed=lambda: setattr(reports, "closed", reports.closed + 1),
            drained=lambda conn, ok: reports.drained.append((conn, ok)),
        )
        yield bg, reports


async def settle() -> None:
    """Let every job run to its end: the clock jumps through their sleeps (autojump)."""
    await trio.sleep(20)


# --- dials -------------------------------------------------------------------------------------


async def test_dials_report_their_connections(autojump_clock: trio.testing.MockClock) -> None:
    a, b = Conn(1), Conn(2)
    dial, _ = script(a, b)
    with trio.fail_after(100):
        async with background(dial) as (bg, reports):
            bg.dial(2)
            assert bg.dialing == 2
            await settle()
            assert bg.dialing == 0 and (bg.dials, bg.dial_errors) == (2, 0)
    assert sorted(c.id for _, c in reports.dialled) == [1, 2] and reports.failed == []


async def test_retries_back_off_then_report_the_failure(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    refused = [rex.ConnectionError(f"refused {n}") for n in range(3)]
    dial, started = script(*refused, Conn(7))
    caplog.set_level(logging.DEBUG, logger="trio_cluster.pooling.background")
    with trio.fail_after(100):
        async with background(dial, dial_retries=2, dial_backoff=0.5) as (bg, reports):
            bg.dial(1)
            await settle()
            assert started == [0.0, 0.5, 1.5]  # the back-off doubles
            assert reports.failed == [(1.5, refused[2])]
            assert (bg.dials, bg.dial_errors) == (3, 3)
            # min_idle refilling pauses after a failure (a caller's dial does not).
            assert bg.fill_resumes_at() == 1.5 + MIN_IDLE_RETRY_DELAY
            bg.dial(1)
            await settle()
    assert [c.id for _, c in reports.dialled] == [7]
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert levels == [
        ("WARNING", "pool node:1: dial failed: ConnectionError: refused 2"),
        ("INFO", "pool node:1: dialling works again after 1 failed dials"),
    ]


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("WRONGPASS invalid username-password pair"),
        CertificateVerificationError("the TLS certificate of node:1 failed verification"),
        ValueError("a bug, not the network"),
    ],
)
async def test_failures_another_attempt_cannot_fix_are_not_retried(
    autojump_clock: trio.testing.MockClock, error: Exception
) -> None:
    dial, started = script(error, Conn(1))
    with trio.fail_after(100):
        async with background(dial, dial_retries=5) as (bg, reports):
            bg.dial(1)
            await settle()
    assert started == [0.0] and reports.failed == [(0.0, error)]
    assert (bg.dials, bg.dial_errors) == (1, 1)


async def test_the_dial_timeout_bounds_every_attempt_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Refused at once, then an attempt that hangs: the whole dial ends at the timeout.
    dial, started = script(rex.ConnectionError("refused"), math.inf)
    with trio.fail_after(100):
        async with background(dial, dial_timeout=1.0, dial_backoff=0.05) as (bg, reports):
            bg.dial(1)
            await settle()
    assert started == [0.0, 0.05]
    ((when, error),) = reports.failed
    assert when == 1.0 and isinstance(error, ConnectTimeoutError) and was_unsent(error)
    assert str(error) == "dialling node:1 took longer than 1.0 s (2 attempts)"
    assert (bg.dials, bg.dial_errors) == (2, 2)


async def test_an_attempt_that_used_the_whole_timeout_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    timed_out = ConnectTimeoutError("connecting to node:1 took longer than 1.0 s")
    dial, started = script(0.9, timed_out, Conn(1))  # its own bound fired just before ours
    with trio.fail_after(100):
        async with background(dial, dial_timeout=1.0, dial_backoff=0.2) as (bg, reports):
            bg.dial(1)
            await settle()
    assert started == [0.0] and reports.failed == [(0.9, timed_out)]


async def test_without_a_dial_timeout_retries_are_bounded_by_count_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dial, started = script(10.0, rex.TimeoutError("slow"), Conn(3))
    with trio.fail_after(100):
        async with background(dial, dial_retries=1, dial_backoff=1.0) as (bg, reports):
            bg.dial(1)
            await settle()
    assert started == [0.0, 11.0] and [(t, c.id) for t, c in reports.dialled] == [(11.0, 3)]


# --- closes and drains ---------------------------------------------------------------------------


async def test_close_is_counted_until_done_and_errors_are_swallowed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = Conn(1, close_error=OSError("reset"))
    dial, _ = script()
    with trio.fail_after(100):
        async with background(dial) as (bg, reports):
            bg.close(conn)
            assert bg.closing == {1: conn} and reports.closed == 0
            await settle()
            assert bg.closing == {} and reports.closed == 1 and conn.closed_at == 0.25


async def test_a_stuck_close_is_bounded_and_survives_cancellation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stuck = Conn(1, close_gate=trio.Event())
    dial, _ = script()
    with trio.fail_after(100):
        with trio.CancelScope() as outer:
            async with background(dial) as (bg, reports):
                bg.close(stuck)
                await trio.sleep(1)
                outer.cancel()  # shielded: the close goes on, up to its own bound
        assert trio.current_time() == 5.0  # the close bound, then given up
        assert stuck.closed_at is None and reports.closed == 1 and bg.closing == {}


async def test_close_all_closes_concurrently_even_when_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conns = [Conn(n) for n in range(5)]
    dial, _ = script()
    with trio.fail_after(100):
        async with background(dial) as (bg, reports):
            with trio.CancelScope() as scope:
                scope.cancel()
                await bg.close_all(conns)
            assert [c.closed_at for c in conns] == [0.25] * 5  # together, not one by one
            assert reports.closed == 5 and bg.closing == {}


async def test_drains_report_whether_the_connection_is_fit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fine = Conn(1, owed_replies=2)
    failing = Conn(2, owed_replies=1, drain_error=rex.TimeoutError("no reply"))
    broken = Conn(3, owed_replies=1, broken=True)
    dial, _ = script()
    with trio.fail_after(100):
        async with background(dial) as (bg, reports):
            for conn in (fine, failing, broken):
                bg.drain(conn)
            await settle()
    assert sorted((c.id, ok) for c, ok in reports.drained) == [(1, True), (2, False), (3, False)]
    assert fine.owed_replies == 0
