"""Unit tests for the per-node pool (trio_cluster/pooling/pool.py), with fake connections and the
autojump clock (pytest-trio's ``autojump_clock`` fixture)."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster.conn.state import ConnState, ConnStateMachine
from trio_cluster.errors import (
    PoolClosedError,
    PoolExhaustedError,
    PoolTimeoutError,
    ReleaseError,
)
from trio_cluster.pooling.pool import (
    ConnectionInfo,
    Pool,
    PoolOptions,
    PoolStats,
)

S = ConnState
_ids = itertools.count(1)


class FakeConn:
    """Implements PoolableConnection; drains and closes through events the test controls."""

    def __init__(self, dialer: FakeDialer) -> None:
        self.id = next(_ids)
        self.dialer = dialer
        self.state = ConnStateMachine()
        self.state.transition(S.INITIALIZING)
        self.state.transition(S.IDLE)  # the handshake, done by the connection itself
        self.created_at = self.last_used_at = trio.current_time()
        self.owed_replies = 0
        self.broken = False
        self.out_of_step = False
        self.peer_gone = False
        self.stale = False  # for a claimant to want it (tests of claims)
        self.drain_gate: trio.Event | None = None
        self.drain_error: Exception | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<FakeConn {self.id} {self.state.state.name}>"

    def peer_closed(self) -> bool:
        return self.peer_gone

    async def drain(self) -> None:
        if self.drain_gate is not None:
            await self.drain_gate.wait()
        await trio.lowlevel.checkpoint()
        if self.drain_error is not None:
            raise self.drain_error
        self.owed_replies = 0

    async def aclose(self) -> None:
        # As Connection.aclose: the state may be CLOSED already (the pool marks a connection
        # CLOSED when it decides to close it), the socket closes once.
        if not self.closed:
            self.closed = True
            self.dialer.open_now -= 1
            self.dialer.closed.append(self)
        self.state.transition(S.CLOSED)
        await trio.lowlevel.checkpoint()


class FakeDialer:
    """The pool's ``dial``: counts attempts and open connections, can be gated or fail."""

    def __init__(self) -> None:
        self.attempts = 0
        self.open_now = 0
        self.max_open = 0
        self.made: list[FakeConn] = []
        self.closed: list[FakeConn] = []
        self.gate: trio.Event | None = None
        self.delay = 0.0
        self.failures: list[Exception] = []

    async def __call__(self) -> FakeConn:
        self.attempts += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await trio.sleep(self.delay)
        await trio.lowlevel.checkpoint()
        if self.failures:
            raise self.failures.pop(0)
        conn = FakeConn(self)
        self.made.append(conn)
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        return conn


@asynccontextmanager
async def make_pool(
    options: PoolOptions | None = None, wait: float = 5.0, dialer: FakeDialer | None = None
) -> AsyncIterator[tuple[Pool[FakeConn], FakeDialer]]:
    dialer = dialer or FakeDialer()
    async with Pool(dialer, options, node_name="node-a:7000", timeout=wait) as pool:
        yield pool, dialer


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


# --- options ---------------------------------------------------------------------------------


def test_options_defaults() -> None:
    o = PoolOptions()
    assert (o.size, o.min_idle, o.max_idle, o.max_active, o.timeout, o.fifo) == (
        10,
        0,
        0,
        0,
        None,
        False,
    )
    assert (o.max_idle_time, o.max_lifetime, o.lifetime_jitter) == (1800.0, None, 0.0)
    assert o.dial_retries == 2 and o.dial_backoff == 0.05
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        o.size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"size": 0}, "size"),
        ({"size": True}, "size"),
        ({"size": 2.0}, "size"),
        ({"min_idle": -1}, "min_idle"),
        ({"size": 2, "min_idle": 3}, "min_idle"),
        ({"max_idle": -1}, "max_idle"),
        ({"min_idle": 3, "max_idle": 2}, "max_idle"),
        ({"max_active": -1}, "max_active"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": math.inf}, "timeout"),
        ({"timeout": "3"}, "timeout"),
        ({"fifo": 1}, "fifo"),
        ({"max_idle_time": 0}, "max_idle_time"),
        ({"max_lifetime": -5.0}, "max_lifetime"),
        ({"lifetime_jitter": 1.0}, "lifetime_jitter"),
        ({"lifetime_jitter": -0.1}, "lifetime_jitter"),
        ({"dial_retries": -1}, "dial_retries"),
        ({"dial_backoff": math.nan}, "dial_backoff"),
    ],
)
def test_options_reject_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=rf"PoolOptions\.{field} must be"):
        PoolOptions(**kwargs)


def test_pool_rejects_bad_timeout() -> None:
    with pytest.raises(ValueError, match="timeout"):
        Pool(FakeDialer(), node_name="n", timeout=0)


# --- basics ----------------------------------------------------------------------------------


async def test_get_dials_then_reuses(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with make_pool() as (pool, dialer):
            c1 = await pool.get()
            assert c1.state.state is S.IN_USE
            pool.put(c1)
            assert c1.state.state is S.IDLE
            c2 = await pool.get()
            assert c2 is c1
            pool.put(c2)
            st = pool.stats()
            assert (st.hits, st.misses, st.waits, st.dials) == (1, 1, 1, 1)
            assert st.total_connections == st.idle_connections == 1
            assert dialer.attempts == 1
        assert c1.state.state is S.CLOSED
        assert pool.stats().closes == {"pool_closed": 1}


async def test_fast_path_enters_no_cancel_scope_and_no_checkpoint() -> None:
    with trio.fail_after(10):
        async with make_pool() as (pool, _):
            pool.put(await pool.get())
            with trio.CancelScope() as scope:
                scope.cancel()
                # A checkpoint (or a cancel scope of its own) would raise Cancelled here.
                conn = await pool.get()
                pool.put(conn)
            assert not scope.cancelled_caught
            assert pool.stats().hits == 1


async def test_pool_timeout_fires_exactly_at_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=2.5) as (pool, _):
            held = await pool.get()
            start = trio.current_time()
            with pytest.raises(PoolTimeoutError) as info:
                await pool.get()
            assert trio.current_time() - start == 2.5
            assert "node-a:7000" in str(info.value) and "2.5 s" in str(info.value)
            assert isinstance(info.value, rex.TimeoutError)
            st = pool.stats()
            assert (st.timeouts, st.waits, st.pending_waiters) == (1, 2, 0)
            assert st.wait_time_total == 2.5
            pool.put(held)


async def test_put_wakes_waiter_before_timeout(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=10) as (pool, _):
            held = await pool.get()

            async def release_later() -> None:
                await trio.sleep(3)
                pool.put(held)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(release_later)
                start = trio.current_time()
                conn = await pool.get()
                assert conn is held
                assert trio.current_time() - start == 3
                pool.put(conn)
            assert pool.stats().wait_time_total == 3


# --- fairness --------------------------------------------------------------------------------


async def test_waiters_are_served_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    served: list[int] = []
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=60) as (pool, _):
            held = await pool.get()

            async def waiter(i: int) -> None:
                conn = await pool.get()
                served.append(i)
                await trio.sleep(1)
                pool.put(conn)

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(waiter, i)
                    await settle()  # park them in a known order
                assert pool.stats().pending_waiters == 6
                pool.put(held)
    assert served == [0, 1, 2, 3, 4, 5]


async def test_newcomer_does_not_barge_past_parked_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=60) as (pool, _):
            held = await pool.get()
            got: list[str] = []

            async def parked() -> None:
                conn = await pool.get()
                got.append("parked")
                pool.put(conn)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(parked)
                await settle()
                pool.put(held)  # handed straight to the parked waiter ...
                assert held.state.state is S.IN_USE
                newcomer = await pool.get()  # ... so the newcomer waits its turn
                got.append("newcomer")
                pool.put(newcomer)
            assert got == ["parked", "newcomer"]


async def test_cancelled_waiter_is_skipped(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=60) as (pool, _):
            held = await pool.get()
            scope = trio.CancelScope()

            async def waiter() -> None:
                with scope:
                    await pool.get()
                    raise AssertionError("a cancelled waiter got a connection")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await settle()
                scope.cancel()
                await settle()
                assert pool.stats().pending_waiters == 0
                pool.put(held)
            assert held.state.state is S.IDLE
            assert pool.stats().idle_connections == 1


# --- dialing ---------------------------------------------------------------------------------


async def test_thundering_herd_opens_at_most_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = FakeDialer()
    dialer.delay = 0.1
    done = 0
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=5), wait=60, dialer=dialer) as (pool, _):

            async def worker() -> None:
                nonlocal done
                conn = await pool.get()
                await trio.sleep(0.5)
                pool.put(conn)
                done += 1

            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(worker)
            st = pool.stats()
    assert done == 50
    assert dialer.attempts == 5
    assert dialer.max_open == 5
    assert st.misses == 5 and st.hits == 45


async def test_cancelled_callers_dial_goes_to_next_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = FakeDialer()
    dialer.gate = trio.Event()
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=60, dialer=dialer) as (pool, _):
            first = trio.CancelScope()
            got: list[FakeConn] = []

            async def first_caller() -> None:
                with first:
                    await pool.get()

            async def second_caller() -> None:
                got.append(await pool.get())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(first_caller)
                await settle()
                assert dialer.attempts == 1  # the dial the first caller triggered
                first.cancel()  # gives up while the dial is in flight
                nursery.start_soon(second_caller)
                await settle()
                dialer.gate.set()
            assert dialer.attempts == 1  # the second caller was served by that same dial
            assert got == dialer.made
            pool.put(got[0])


async def test_abandoned_dial_is_kept_idle(autojump_clock: trio.testing.MockClock) -> None:
    dialer = FakeDialer()
    dialer.gate = trio.Event()
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=2), wait=60, dialer=dialer) as (pool, _):
            with trio.move_on_after(1):
                await pool.get()
            dialer.gate.set()
            await settle()
            st = pool.stats()
            assert (st.idle_connections, st.dials_in_progress, st.total_connections) == (1, 0, 1)
            assert dialer.open_now == 1


async def test_dial_error_reaches_the_waiter_after_retries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = FakeDialer()
    dialer.failures = [rex.ConnectionError("refused")] * 3
    opts = PoolOptions(size=2, dial_retries=2, dial_backoff=0.5)
    with trio.fail_after(100):
        async with make_pool(opts, wait=60, dialer=dialer) as (pool, _):
            start = trio.current_time()
            with pytest.raises(rex.ConnectionError, match="refused"):
                await pool.get()
            assert trio.current_time() - start == 0.5 + 1.0  # backoff doubles
            st = pool.stats()
            assert (st.dials, st.dial_errors, st.timeouts) == (3, 3, 0)
            conn = await pool.get()  # the node is back
            assert pool.stats().dials == 4
            pool.put(conn)


async def test_authentication_error_is_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = FakeDialer()
    dialer.failures = [rex.AuthenticationError("WRONGPASS")]
    with trio.fail_after(100):
        async with make_pool(dialer=dialer) as (pool, _):
            with pytest.raises(rex.AuthenticationError):
                await pool.get()
            assert dialer.attempts == 1


# --- release ---------------------------------------------------------------------------------


async def test_double_release_and_foreign_release_raise() -> None:
    with trio.fail_after(10):
        async with make_pool() as (pool, dialer):
            conn = await pool.get()
            pool.put(conn)
            with pytest.raises(ReleaseError):
                pool.put(conn)
            with pytest.raises(ReleaseError):
                pool.put(FakeConn(dialer))
            assert conn.state.state is S.IDLE
            assert pool.stats().idle_connections == 1


async def test_broken_connection_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with make_pool() as (pool, dialer):
            conn = await pool.get()
            conn.broken = True
            pool.put(conn)
            await settle()
            assert conn.state.state is S.CLOSED and dialer.open_now == 0
            assert pool.stats().closes == {"broken": 1}
            assert (await pool.get()) is not conn


async def test_owed_replies_are_drained_then_reused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=60) as (pool, _):
            conn = await pool.get()
            conn.owed_replies = 2
            conn.drain_gate = trio.Event()
            pool.put(conn)
            assert conn.state.state is S.UNUSABLE
            assert pool.stats().unusable_connections == 1
            got: list[FakeConn] = []

            async def getter() -> None:
                got.append(await pool.get())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(getter)
                await settle()
                assert got == []  # never handed out while replies are owed
                conn.drain_gate.set()
            assert got == [conn] and conn.owed_replies == 0
            assert conn.state.state is S.IN_USE
            pool.put(conn)


async def test_time_held_by_jobs_is_counted(autojump_clock: trio.testing.MockClock) -> None:
    """``unusable_time_total``: the seconds connections spent UNUSABLE (a drain here, a claim
    given back, a claimed connection closed), counted when the job lets go."""
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=2), wait=60) as (pool, _):
            conn = await pool.get()
            conn.owed_replies = 1
            conn.drain_gate = trio.Event()
            pool.put(conn)
            await trio.sleep(2.5)
            assert pool.stats().unusable_time_total == 0.0  # still held: counted on release
            conn.drain_gate.set()
            await settle()
            assert pool.stats().unusable_time_total == pytest.approx(2.5)
            assert pool.claim_now(conn)
            await trio.sleep(1.0)
            pool.give_back(conn)
            assert pool.stats().unusable_time_total == pytest.approx(3.5)
            other = await pool.get()
            pool.put(other)
            assert pool.claim_now(other)
            await trio.sleep(0.5)
            other.broken = True
            pool.give_back(other)  # closed: its time held still counts
            assert pool.stats().unusable_time_total == pytest.approx(4.0)


async def test_failed_drain_closes(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with make_pool() as (pool, dialer):
            conn = await pool.get()
            conn.owed_replies = 1
            conn.drain_error = rex.TimeoutError("read timeout")
            pool.put(conn)
            await settle()
            assert conn.state.state is S.CLOSED and dialer.open_now == 0
            assert pool.stats().closes == {"drain_failed": 1}


async def test_lifo_and_fifo_order(autojump_clock: trio.testing.MockClock) -> None:
    for fifo in (False, True):
        with trio.fail_after(10):
            async with make_pool(PoolOptions(fifo=fifo)) as (pool, _):
                a, b = await pool.get(), await pool.get()
                pool.put(a)
                pool.put(b)
                nxt = await pool.get()
                assert nxt is (a if fifo else b)
                pool.put(nxt)


async def test_max_idle_evicts(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with make_pool(PoolOptions(max_idle=1)) as (pool, dialer):
            a, b = await pool.get(), await pool.get()
            pool.put(a)
            pool.put(b)
            await settle()
            assert b.state.state is S.CLOSED and a.state.state is S.IDLE
            assert pool.stats().closes == {"max_idle": 1}
            assert dialer.open_now == 1


async def test_max_active_fails_at_once() -> None:
    with trio.fail_after(10):
        async with make_pool(PoolOptions(size=5, max_active=1)) as (pool, _):
            conn = await pool.get()
            with pytest.raises(PoolExhaustedError) as info:
                await pool.get()
            assert isinstance(info.value, rex.MaxConnectionsError)
            pool.put(conn)
            pool.put(await pool.get())


# --- health, reaping, min_idle -----------------------------------------------------------------


async def test_stale_idle_connection_is_replaced_on_get(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with make_pool() as (pool, _):
            conn = await pool.get()
            pool.put(conn)
            conn.peer_gone = True
            fresh = await pool.get()
            assert fresh is not conn
            await settle()
            assert conn.state.state is S.CLOSED
            assert pool.stats().closes == {"peer_closed": 1}
            pool.put(fresh)


async def test_reaper_closes_idle_and_old_connections_proactively(
    autojump_clock: trio.testing.MockClock,
) -> None:
    opts = PoolOptions(max_idle_time=10.0, max_lifetime=25.0)
    with trio.fail_after(100):
        async with make_pool(opts) as (pool, dialer):
            a, b = await pool.get(), await pool.get()
            pool.put(a)
            await trio.sleep(9.0)
            pool.put(b)
            await trio.sleep(1.5)  # a has been idle 10.5 s, b 1.5 s
            assert a.state.state is S.CLOSED and b.state.state is S.IDLE
            assert pool.stats().closes == {"idle_time": 1}
            while b.state.state is S.IDLE:  # b keeps being used, so only its age expires it
                pool.put(await pool.get())
                await trio.sleep(1.0)
            assert trio.current_time() == pytest.approx(25.0, abs=1.0)
            assert pool.stats().closes == {"idle_time": 1, "lifetime": 1}
            assert dialer.open_now == 0


async def test_in_use_connection_past_lifetime_is_closed_on_put(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(max_lifetime=5.0)) as (pool, _):
            conn = await pool.get()
            await trio.sleep(6)
            pool.put(conn)
            await settle()
            assert conn.state.state is S.CLOSED
            assert pool.stats().closes == {"lifetime": 1}


async def test_min_idle_is_kept_filled(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=4, min_idle=2)) as (pool, dialer):
            await settle()
            assert pool.stats().idle_connections == 2
            conn = await pool.get()
            await settle()
            st = pool.stats()
            assert (st.idle_connections, st.in_use_connections) == (2, 1)
            conn.broken = True
            pool.put(conn)  # a removal: still 2 idle, and never above size
            other = [await pool.get() for _ in range(3)]
            await settle()
            st = pool.stats()
            assert (st.in_use_connections, st.idle_connections, st.total_connections) == (3, 1, 4)
            assert dialer.max_open <= 4
            for c in other:
                pool.put(c)


async def test_min_idle_refill_backs_off_when_dials_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = FakeDialer()
    dialer.failures = [rex.ConnectionError("down")] * 6  # two dial jobs' worth
    opts = PoolOptions(size=2, min_idle=1, dial_retries=2, dial_backoff=0.01)
    with trio.fail_after(100):
        async with make_pool(opts, dialer=dialer) as (pool, _):
            await trio.sleep(0.5)
            assert dialer.attempts == 3  # one job, then it waits instead of spinning
            await trio.sleep(3)
            assert pool.stats().idle_connections == 1


# --- claims: jobs take connections through the pool --------------------------------------------


async def test_claim_now_takes_idle_connections_out_of_the_idle_list(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=70)) as (pool, dialer):
            conns = [await pool.get() for _ in range(61)]
            for c in conns:
                pool.put(c)
            assert not pool.claim_now(FakeConn(dialer))  # not this pool's
            for c in conns[1:]:  # a job claims 60 of them
                assert pool.claim_now(c)
                assert c.state.state is S.UNUSABLE
                assert not pool.claim_now(c)  # a job holds it now
            st = pool.stats()
            assert (st.idle_connections, st.unusable_connections) == (1, 60)
            assert pool.idle_connections() == [conns[0]]
            got = await pool.get()
            assert got is conns[0]  # the idle list held nothing else: no skipping, no dial
            assert not pool.claim_now(got)  # a caller holds it
            assert dialer.attempts == 61
            pool.put(got)
            for c in conns[1:]:
                pool.give_back(c)
            assert pool.stats().idle_connections == 61
            assert all(c.state.state is S.IDLE for c in conns)


@attrs.define
class RecordingClaimant:
    """A claimant that wants the connections ``wanted`` says, and records what it took."""

    wanted: Callable[[FakeConn], bool]
    taken: list[FakeConn] = attrs.Factory(list)

    def wants(self, conn: FakeConn) -> bool:
        assert conn.state.state is S.IDLE  # asked before the hand-out, while idle
        return self.wanted(conn)

    def take(self, conn: FakeConn) -> None:
        assert conn.state.state is S.UNUSABLE  # the pool claimed it for us
        self.taken.append(conn)


async def test_claimant_takes_a_connection_before_a_caller_gets_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with make_pool(PoolOptions(size=3)) as (pool, dialer):
            a, b = await pool.get(), await pool.get()
            pool.put(a)
            pool.put(b)
            claimant = RecordingClaimant(lambda conn: conn is b)
            pool.add_claimant(claimant)
            got = await pool.get()  # LIFO: b first, which the claimant takes; then a
            assert got is a and claimant.taken == [b]
            assert pool.stats().unusable_connections == 1
            c = await pool.get()  # dialled: the pool is full now
            waiting: list[FakeConn] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_append_get, pool, waiting)
                await settle()
                pool.give_back(b)  # the job is done, but b is still wanted: taken again
                assert claimant.taken == [b, b] and waiting == []
                pool.remove_claimant(claimant)
                pool.give_back(b)  # now b serves the parked get
            assert waiting == [b] and b.state.state is S.IN_USE
            for conn in (a, b, c):
                pool.put(conn)
            with pytest.raises(ValueError):
                pool.remove_claimant(claimant)
            assert dialer.attempts == 3


async def _append_get(pool: Pool[FakeConn], into: list[FakeConn]) -> None:
    into.append(await pool.get())


async def test_give_back_decides_like_a_release(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with make_pool() as (pool, dialer):
            conns = [await pool.get() for _ in range(4)]
            idle, broken, owing, closed = conns
            pool.put(idle)
            with pytest.raises(ReleaseError, match="no job holds it"):
                pool.give_back(idle)  # IDLE: nobody claimed it
            with pytest.raises(ReleaseError, match="no job holds it"):
                pool.give_back(broken)  # IN_USE: a caller holds it
            with pytest.raises(ReleaseError, match="not from this pool"):
                pool.give_back(FakeConn(dialer))
            for conn in (broken, owing, closed):
                pool.put(conn)
                assert pool.claim_now(conn)
            broken.broken = True
            pool.give_back(broken)
            owing.owed_replies = 1
            pool.give_back(owing)
            assert owing.state.state is S.UNUSABLE  # now the pool's drain holds it
            await closed.aclose()  # the job closed it itself
            pool.give_back(closed)
            await settle()
            assert broken.state.state is S.CLOSED and owing.state.state is S.IDLE
            assert pool.stats().closes == {"broken": 1, "closed_elsewhere": 1}
            assert pool.stats().idle_connections == 2


async def test_go_redis_4027_with_pool(autojump_clock: trio.testing.MockClock) -> None:
    """A re-auth job waits to claim the in-use connection; the ordinary release hands it to
    the job at once, the parked get does not get it, and when the job gives it back the
    parked get is served."""
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=30) as (pool, dialer):
            conn = await pool.get()
            events: list[tuple[str, float]] = []

            async def reauth_job() -> None:
                assert await pool.claim_when_idle(conn)
                events.append(("job claimed", trio.current_time()))
                await trio.sleep(2)  # AUTH round trip
                pool.give_back(conn)

            async def getter() -> None:
                c = await pool.get()
                events.append(("getter served", trio.current_time()))
                pool.put(c)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reauth_job)
                await settle()
                nursery.start_soon(getter)
                await settle()
                await trio.sleep(1)
                pool.put(conn)  # at t=1
                assert conn.state.state is S.UNUSABLE
            assert events == [("job claimed", 1.0), ("getter served", 3.0)]
            assert dialer.attempts == 1  # size 1: the getter waited for the same connection


async def test_claims_on_one_connection_are_served_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool() as (pool, _):
            conn = await pool.get()
            order: list[int] = []

            async def job(n: int) -> None:
                assert await pool.claim_when_idle(conn)
                order.append(n)
                await trio.sleep(1)
                pool.give_back(conn)

            async with trio.open_nursery() as nursery:
                for n in range(3):
                    nursery.start_soon(job, n)
                    await settle()
                pool.put(conn)
            assert order == [0, 1, 2]
            assert conn.state.state is S.IDLE and pool.stats().idle_connections == 1


async def test_claim_when_idle_waits_for_a_drain(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with make_pool() as (pool, _):
            conn = await pool.get()
            conn.owed_replies = 1
            conn.drain_gate = trio.Event()
            pool.put(conn)  # the pool's drain holds it
            claimed: list[bool] = []

            async def job() -> None:
                claimed.append(await pool.claim_when_idle(conn))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(job)
                await settle()
                assert claimed == [] and conn.state.state is S.UNUSABLE
                conn.drain_gate.set()
            assert claimed == [True] and conn.owed_replies == 0
            pool.give_back(conn)
            assert conn.state.state is S.IDLE


async def test_claim_when_idle_is_false_once_the_connection_or_pool_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool() as (pool, _):
            a, b = await pool.get(), await pool.get()
            results: dict[str, bool] = {}

            async def job(name: str, conn: FakeConn) -> None:
                results[name] = await pool.claim_when_idle(conn)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(job, "broken", a)
                nursery.start_soon(job, "pool closed", b)
                await settle()
                a.broken = True
                pool.put(a)  # closed, not claimed
                await settle()
                assert results == {"broken": False}
                await pool.aclose()
            assert results == {"broken": False, "pool closed": False}
            assert not await pool.claim_when_idle(b)  # closed: at once


async def test_cancelled_claim_claims_nothing(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(100):
        async with make_pool() as (pool, _):
            conn = await pool.get()
            with trio.move_on_after(1) as waited:
                await pool.claim_when_idle(conn)
            assert waited.cancelled_caught
            pool.put(conn)
            assert conn.state.state is S.IDLE  # nobody claimed it
            with trio.CancelScope() as scope:
                scope.cancel()
                await pool.claim_when_idle(conn)  # a checkpoint, even for an idle one
            assert scope.cancelled_caught and conn.state.state is S.IDLE


async def test_claim_handed_over_just_before_a_cancel_is_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(100):
        async with make_pool() as (pool, _):
            conn = await pool.get()
            scope = trio.CancelScope()
            claimed: list[bool] = []

            async def job() -> None:
                with scope:
                    claimed.append(await pool.claim_when_idle(conn))
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(job)
                await settle()
                pool.put(conn)  # hands it to the job ...
                scope.cancel()  # ... which is cancelled before it runs
            assert claimed == [True] and scope.cancelled_caught
            assert conn.state.state is S.UNUSABLE  # the job holds it: it must give it back
            pool.give_back(conn)


# --- closing and introspection ---------------------------------------------------------------


async def test_aclose_fails_waiters_and_closes_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    errors: list[BaseException] = []
    with trio.fail_after(100):
        async with make_pool(PoolOptions(size=1), wait=60) as (pool, dialer):
            held = await pool.get()

            async def waiter() -> None:
                try:
                    await pool.get()
                except PoolClosedError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await settle()
                await pool.aclose()
            assert len(errors) == 1
            assert held.state.state is S.CLOSED and dialer.open_now == 0
            with pytest.raises(PoolClosedError):
                await pool.get()
            pool.put(held)  # releasing after close is harmless
            await pool.aclose()  # idempotent


async def test_owner_nursery_cancel_closes_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    dialer = FakeDialer()
    pool: Pool[FakeConn] = Pool(dialer, PoolOptions(min_idle=3), node_name="n", timeout=1)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await pool.start_background(nursery)
            await settle()
            assert dialer.open_now == 3
            nursery.cancel_scope.cancel()
    assert dialer.open_now == 0 and pool.closed


async def test_connections_lists_everything(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(10):
        async with make_pool() as (pool, _):
            a = await pool.get()
            await trio.sleep(1)
            b = await pool.get()
            pool.put(b)
            infos = pool.connections()
            assert infos == [
                ConnectionInfo(a.id, "node-a:7000", S.IN_USE, 0.0, 0.0),
                ConnectionInfo(b.id, "node-a:7000", S.IDLE, 1.0, 1.0),
            ]
            pool.put(a)


async def test_stats_snapshot_type() -> None:
    with trio.fail_after(10):
        async with make_pool() as (pool, _):
            st = pool.stats()
            assert isinstance(st, PoolStats) and st.node == "node-a:7000"
            with pytest.raises(attrs.exceptions.FrozenInstanceError):
                st.hits = 1  # type: ignore[misc]


async def test_min_idle_fill_dials_a_bounded_batch_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A large min_idle must not open hundreds of handshakes at once."""
    dialer = FakeDialer()
    dialer.delay = 0.1
    in_flight = peak = 0

    async def counting_dial() -> FakeConn:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await dialer()
        finally:
            in_flight -= 1

    with trio.fail_after(100):
        async with Pool(
            counting_dial, PoolOptions(size=200, min_idle=200), node_name="fill", timeout=5
        ) as pool:
            while pool.stats().idle_connections < 200:  # noqa: ASYNC110 - mock clock
                await trio.sleep(0.05)
    assert peak == 32
