"""The automatic-pipelining queue of a pool (``PoolOptions(autopipeline=True)``), with a fake
connection whose "server" echoes each command's key: batching, order, cancellation at each
stage, failures confined to one batch, and closing."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster.conn.connection import was_unsent
from trio_cluster.conn.state import ConnState, ConnStateMachine
from trio_cluster.errors import PoolClosedError
from trio_cluster.pooling.breaker import (
    BreakerOptions,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
)
from trio_cluster.pooling.pool import Pool, PoolOptions

_ids = itertools.count(1)


class EchoConn:
    """A poolable connection that answers every command with ``b"echo:" + key``; a test can
    hold a batch (``gate``) or make the next batch fail (``fail_with``)."""

    gate: trio.Event | None = None
    fail_with: Exception | None = None

    def __init__(self, log: list[list[bytes]]) -> None:
        self.id = next(_ids)
        self.relaxed_until = -math.inf
        self.sent_at = 0.0
        self.state = ConnStateMachine()
        self.state.transition(ConnState.INITIALIZING)
        self.state.transition(ConnState.IDLE)
        self.created_at = self.last_used_at = trio.current_time()
        self.owed_replies = 0
        self.broken = False
        self.out_of_step = False
        self.log = log

    def peer_closed(self) -> bool:
        return False

    async def drain(self) -> None:
        await trio.lowlevel.checkpoint()
        self.owed_replies = 0

    async def aclose(self) -> None:
        if self.state.state is not ConnState.CLOSED:
            self.state.transition(ConnState.CLOSED)
        await trio.lowlevel.checkpoint()

    async def execute_encoded(self, data: bytes, count: int) -> list[Any]:
        reader = hiredis.Reader()
        reader.feed(data)
        commands = [reader.gets() for _ in range(count)]
        self.sent_at = trio.current_time()
        assert reader.gets() is False  # exactly ``count`` commands were written
        self.log.append([c[1] for c in commands])
        self.owed_replies += count
        gate = EchoConn.gate
        if gate is not None:
            await gate.wait()
        await trio.lowlevel.checkpoint()
        if EchoConn.fail_with is not None:
            self.broken = True
            raise EchoConn.fail_with
        self.owed_replies -= count
        return [b"echo:" + c[1] for c in commands]


@asynccontextmanager
async def echo_pool(
    size: int = 2, breaker: CircuitBreaker | None = None
) -> AsyncIterator[tuple[Pool[Any], list[list[bytes]]]]:
    log: list[list[bytes]] = []

    async def dial() -> EchoConn:
        await trio.lowlevel.checkpoint()
        return EchoConn(log)

    EchoConn.gate = None
    EchoConn.fail_with = None
    async with Pool(
        dial,
        PoolOptions(size=size, autopipeline=True),
        node_name="n:1",
        timeout=5.0,
        breaker=breaker,
    ) as pool:
        yield pool, log


async def test_one_write_per_pass_and_replies_in_order(autojump_clock: Any) -> None:
    async with echo_pool() as (pool, log):
        pipeliner = pool.autopipeliner
        assert pipeliner is not None
        got: dict[int, Any] = {}

        async def call(n: int) -> None:
            got[n] = await pipeliner.execute(("GET", f"k{n}"))

        async with trio.open_nursery() as nursery:
            for n in range(25):
                nursery.start_soon(call, n)
        # One batch (trio starts a pass's tasks in a shuffled order: compare as sets), and
        # each caller got the reply to its own command.
        assert len(log) == 1 and sorted(log[0]) == sorted(f"k{n}".encode() for n in range(25))
        assert got == {n: f"echo:k{n}".encode() for n in range(25)}
        assert (pipeliner.batches, pipeliner.commands) == (1, 25)


async def test_cancelled_while_queued_is_never_sent(autojump_clock: Any) -> None:
    async with echo_pool() as (pool, log):
        pipeliner = pool.autopipeliner
        assert pipeliner is not None
        got: dict[int, Any] = {}

        async def call(n: int, scope: trio.CancelScope) -> None:
            with scope:
                got[n] = await pipeliner.execute(("GET", f"k{n}"))

        scopes = [trio.CancelScope() for _ in range(6)]
        async with trio.open_nursery() as nursery:
            for n, scope in enumerate(scopes):
                nursery.start_soon(call, n, scope)
            await trio.lowlevel.checkpoint()  # all queued, the batch job not run yet
            scopes[2].cancel()
            scopes[4].cancel()
        assert len(log) == 1 and sorted(log[0]) == [b"k0", b"k1", b"k3", b"k5"]
        assert got == {n: f"echo:k{n}".encode() for n in (0, 1, 3, 5)}


async def test_cancelled_after_the_write_its_reply_is_read_and_dropped(
    autojump_clock: Any,
) -> None:
    async with echo_pool() as (pool, log):
        pipeliner = pool.autopipeliner
        assert pipeliner is not None
        EchoConn.gate = trio.Event()
        got: dict[int, Any] = {}
        scopes = [trio.CancelScope() for _ in range(4)]

        async def call(n: int) -> None:
            with scopes[n]:
                got[n] = await pipeliner.execute(("GET", f"k{n}"))

        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(call, n)
            await trio.testing.wait_all_tasks_blocked()
            assert len(log) == 1 and sorted(log[0]) == [b"k0", b"k1", b"k2", b"k3"]  # written
            scopes[1].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert 1 not in got  # the cancelled caller left at once
            EchoConn.gate.set()
        assert got == {0: b"echo:k0", 2: b"echo:k2", 3: b"echo:k3"}
        # The connection owes nothing: its reply was read along with the others.
        assert all(c.owed_replies == 0 for c in pool.live_connections())


async def test_a_failed_batch_fails_its_commands_only(autojump_clock: Any) -> None:
    async with echo_pool(size=2) as (pool, log):
        pipeliner = pool.autopipeliner
        assert pipeliner is not None
        EchoConn.gate = trio.Event()
        outcomes: dict[str, Any] = {}

        async def call(key: str) -> None:
            try:
                outcomes[key] = await pipeliner.execute(("SET", key, "v"))
            except rex.ConnectionError as exc:
                outcomes[key] = exc

        async with trio.open_nursery() as nursery:
            for key in ("a1", "a2", "a3"):
                nursery.start_soon(call, key)
            await trio.testing.wait_all_tasks_blocked()  # batch A written, held
            EchoConn.fail_with = rex.ConnectionError("connection lost")
            EchoConn.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            EchoConn.fail_with = None
            for key in ("b1", "b2"):
                nursery.start_soon(call, key)
        assert [sorted(batch) for batch in log] == [[b"a1", b"a2", b"a3"], [b"b1", b"b2"]]
        errors = [outcomes[k] for k in ("a1", "a2", "a3")]
        assert all(isinstance(e, rex.ConnectionError) for e in errors)
        assert len({id(e) for e in errors}) == 3  # each caller its own copy
        assert not any(was_unsent(e) for e in errors)  # they were written: not unsent
        assert outcomes["b1"] == b"echo:b1" and outcomes["b2"] == b"echo:b2"
        assert pool.stats().closes.get("broken") == 1


async def test_closing_the_pool_fails_queued_commands_as_unsent(autojump_clock: Any) -> None:
    async with echo_pool(size=1) as (pool, log):
        pipeliner = pool.autopipeliner
        assert pipeliner is not None
        EchoConn.gate = trio.Event()  # the only connection stays busy
        outcomes: dict[str, Any] = {}

        async def call(key: str) -> None:
            try:
                outcomes[key] = await pipeliner.execute(("GET", key))
            except rex.ConnectionError as exc:
                outcomes[key] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "first")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "queued")  # its batch waits for the busy connection
            await trio.testing.wait_all_tasks_blocked()
            await pool.aclose()
        assert log == [[b"first"]]
        assert isinstance(outcomes["queued"], rex.ConnectionError)
        assert was_unsent(outcomes["queued"])  # never written: safe to retry anywhere
        assert isinstance(outcomes["first"], rex.ConnectionError)
        assert not was_unsent(outcomes["first"])
        with pytest.raises(PoolClosedError):
            await pipeliner.execute(("GET", "late"))


async def test_batch_workers_are_reused_not_started_per_batch(autojump_clock: Any) -> None:
    async with echo_pool() as (pool, log):
        pipeliner = pool.autopipeliner
        assert pipeliner is not None
        for n in range(5):  # five batches, one after the other
            assert await pipeliner.execute(("GET", f"k{n}")) == f"echo:k{n}".encode()
        await trio.testing.wait_all_tasks_blocked()
        assert len(log) == 5
        # One worker served them all, and is parked for the next batch.
        assert len(pipeliner._idle_workers) == 1


async def test_the_breaker_counts_a_failed_batch_once(autojump_clock: Any) -> None:
    breaker = CircuitBreaker("n:1", BreakerOptions(failure_threshold=2))
    async with echo_pool(breaker=breaker) as (pool, log):
        pipeliner = pool.autopipeliner
        assert pipeliner is not None
        EchoConn.fail_with = rex.ConnectionError("connection lost")
        failed: list[BaseException] = []

        async def call(key: str) -> None:
            try:
                await pipeliner.execute(("SET", key, "v"))
            except rex.ConnectionError as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(call, f"k{n}")
        assert len(log) == 1 and len(failed) == 10
        # Ten commands, one batch, one failure: below the threshold of two.
        assert breaker.state is BreakerState.CLOSED
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "again")
        assert breaker.state is BreakerState.OPEN
        # Open: the next batch is refused before anything is written, marked unsent.
        EchoConn.fail_with = None
        with pytest.raises(CircuitOpenError) as refused:
            await pipeliner.execute(("GET", "refused"))
        assert was_unsent(refused.value)
        assert len(log) == 2
