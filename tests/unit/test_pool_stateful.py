"""Stateful (hypothesis) test of the pool: random interleavings of get, put, cancel, time
passing, killed connections, owed replies, and jobs claiming connections through the pool (at
once, when idle, or as a claimant before a hand-out), moving them (a handoff's INITIALIZING),
closing them, cancelling their claims and giving them back.

Each example runs one trio loop in a helper thread with a MockClock that only moves when a rule
says so; every rule is one call into that loop followed by "let everything settle"
(``wait_all_tasks_blocked``), and the invariants are checked after every step.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from test_pool import FakeConn, FakeDialer

from trio_cluster.conn.state import ConnState
from trio_cluster.errors import PoolClosedError, PoolTimeoutError
from trio_cluster.pooling.pool import Pool, PoolOptions

S = ConnState
SIZE = 3
TIMEOUT = 10.0
T = TypeVar("T")


class TrioLoop:
    """A trio run in a thread, driven step by step from the (synchronous) hypothesis rules."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()  # rate 0: time moves only on jump()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=trio.run, args=(self._main,), kwargs={"clock": self.clock}, daemon=True
        )
        self._thread.start()
        assert self._ready.wait(10), "trio loop did not start"

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self.finish = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self.finish.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        async def step() -> T:
            with trio.fail_after(30):  # bounded, though the mock clock only moves on jump()
                result = await fn(*args)
                await trio.testing.wait_all_tasks_blocked()
                return result

        return trio.from_thread.run(step, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self.finish.set, trio_token=self.token)
        self._thread.join(10)
        assert not self._thread.is_alive()


class GetTask:
    """One caller of pool.get() and what happened to it."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.scope = trio.CancelScope()
        self.status = "pending"  # -> held -> released | timeout | cancelled
        self.conn: FakeConn | None = None
        self.park_seq: int | None = None
        self.served_at = -1  # the step it was served in


class ClaimTask:
    """One job's claim_when_idle() on one connection."""

    def __init__(self, conn: FakeConn, step: int) -> None:
        self.conn = conn
        self.scope = trio.CancelScope()
        self.status = "pending"  # -> claimed | refused | cancelled
        self.parked_at = step


class StaleClaimant:
    """A claimant (a re-auth job, say) that takes every connection marked stale."""

    def __init__(self, machine: PoolMachine) -> None:
        self.machine = machine

    def wants(self, conn: FakeConn) -> bool:
        return conn.stale

    def take(self, conn: FakeConn) -> None:
        conn.stale = False
        self.machine.jobs.append(conn)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = TrioLoop()
        self.dialer = FakeDialer()
        self.pool: Pool[FakeConn] = Pool(
            self.dialer,
            PoolOptions(size=SIZE, max_idle_time=None),
            node_name="n",
            timeout=TIMEOUT,
        )
        self.pool.add_claimant(StaleClaimant(self))
        self.gets: list[GetTask] = []
        self.claims: list[ClaimTask] = []
        self.jobs: list[FakeConn] = []  # connections a job holds (UNUSABLE or INITIALIZING)
        self.served_order: list[GetTask] = []
        self.parks = 0
        self.step = 0
        self.violations: list[str] = []

        async def start() -> None:
            await self.pool.start_background(self.loop.nursery)

        self.loop.run(start)

    def _run(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.step += 1
        self.loop.run(fn)

    # --- callers ------------------------------------------------------------------------------

    @rule()
    def get(self) -> None:
        task = GetTask(len(self.gets))
        self.gets.append(task)

        async def caller() -> None:
            with task.scope:
                try:
                    conn = await self.pool.get()
                except PoolTimeoutError:
                    task.status = "timeout"
                    return
                except PoolClosedError:
                    task.status = "closed"  # teardown
                    return
                if conn.stale:
                    self.violations.append(f"caller {task.n} got stale {conn!r}")
                task.conn, task.status, task.served_at = conn, "held", self.step
                self.served_order.append(task)
            if task.scope.cancelled_caught:
                task.status = "cancelled"

        async def spawn() -> None:
            self.loop.nursery.start_soon(caller)

        self._run(spawn)
        if task.status == "pending":
            task.park_seq = self.parks
            self.parks += 1

    def _held(self) -> list[GetTask]:
        return [t for t in self.gets if t.status == "held"]

    @precondition(lambda self: self._held())
    @rule(data=st.data(), how=st.sampled_from(["ok", "ok", "owes", "broken"]))
    def put(self, data: st.DataObject, how: str) -> None:
        task = data.draw(st.sampled_from(self._held()))
        conn = task.conn
        assert conn is not None
        if how == "owes":
            conn.owed_replies = 2
        elif how == "broken":
            conn.broken = True
        task.status = "released"

        async def release() -> None:
            self.pool.put(conn)

        self._run(release)

    @precondition(lambda self: any(t.status == "pending" for t in self.gets))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task = data.draw(st.sampled_from([t for t in self.gets if t.status == "pending"]))

        async def cancel() -> None:
            task.scope.cancel()

        self._run(cancel)

    @rule(dt=st.sampled_from([1.0, 5.0, TIMEOUT]))
    def time_passes(self, dt: float) -> None:
        async def jump() -> None:
            self.loop.clock.jump(dt)

        self._run(jump)

    def _idle(self) -> list[FakeConn]:
        return [c for c in self.dialer.made if c.state.state is S.IDLE]

    @precondition(lambda self: self._idle())
    @rule(data=st.data())
    def kill_idle(self, data: st.DataObject) -> None:
        data.draw(st.sampled_from(self._idle())).peer_gone = True

    # --- jobs ---------------------------------------------------------------------------------

    @precondition(lambda self: self._idle())
    @rule(data=st.data())
    def job_claims_idle_now(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from(self._idle()))

        async def claim() -> None:
            assert self.pool.claim_now(conn)

        self._run(claim)
        self.jobs.append(conn)

    def _open(self) -> list[FakeConn]:
        return [c for c in self.dialer.made if c.state.state is not S.CLOSED]

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def job_claims_when_idle(self, data: st.DataObject) -> None:
        """go-redis #4027's shape when the connection is held: the job waits for it."""
        conn = data.draw(st.sampled_from(self._open()))
        claim = ClaimTask(conn, self.step + 1)
        self.claims.append(claim)

        async def job() -> None:
            with claim.scope:
                claimed = await self.pool.claim_when_idle(conn)
                claim.status = "claimed" if claimed else "refused"
                if claimed:
                    self.jobs.append(conn)
            if claim.scope.cancelled_caught:
                claim.status = "cancelled"

        async def spawn() -> None:
            self.loop.nursery.start_soon(job)

        self._run(spawn)

    @precondition(lambda self: any(c.status == "pending" for c in self.claims))
    @rule(data=st.data())
    def job_gives_up_waiting(self, data: st.DataObject) -> None:
        claim = data.draw(st.sampled_from([c for c in self.claims if c.status == "pending"]))

        async def cancel() -> None:
            claim.scope.cancel()

        self._run(cancel)

    @precondition(lambda self: self._open())
    @rule(data=st.data())
    def mark_stale(self, data: st.DataObject) -> None:
        """New credentials: the claimant takes this connection before any caller gets it."""
        data.draw(st.sampled_from(self._open())).stale = True

    @precondition(lambda self: any(c.state.state is S.UNUSABLE for c in self.jobs))
    @rule(data=st.data())
    def job_starts_a_handoff(self, data: st.DataObject) -> None:
        conn = data.draw(st.sampled_from([c for c in self.jobs if c.state.state is S.UNUSABLE]))

        async def reconnect() -> None:
            conn.state.transition(S.INITIALIZING)  # as Connection.reconnect does

        self._run(reconnect)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), how=st.sampled_from(["ok", "ok", "owes", "broken", "closed"]))
    def job_gives_back(self, data: st.DataObject, how: str) -> None:
        conn = data.draw(st.sampled_from(self.jobs))
        self.jobs.remove(conn)
        if how == "owes" and conn.state.state is S.UNUSABLE:
            conn.owed_replies = 1
        elif how == "broken":
            conn.broken = True

        async def give_back() -> None:
            if how == "closed":
                await conn.aclose()
            self.pool.give_back(conn)

        self._run(give_back)

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def every_connection_in_exactly_one_place(self) -> None:
        held = [t.conn for t in self._held()]
        assert len(held) == len({id(c) for c in held}), "one connection held by two callers"
        assert len(self.jobs) == len({id(c) for c in self.jobs}), "one connection, two jobs"
        idle_list = self.pool.idle_connections()
        for conn in self._open():
            places = [
                any(c is conn for c in idle_list),
                any(c is conn for c in held),
                any(c is conn for c in self.jobs),
            ]
            assert sum(places) == 1, (conn, places)
            # The state is the place: nothing else records it.
            if places[0]:
                assert conn.state.state is S.IDLE
            if places[1]:
                assert conn.state.state is S.IN_USE
            if places[2]:
                assert conn.state.state in (S.UNUSABLE, S.INITIALIZING)
        assert {c.id for c in self._open()} == {i.id for i in self.pool.connections()}

    @invariant()
    def never_hand_out_a_connection_that_owes_replies(self) -> None:
        # The misdelivered-reply bug class (redis-py CVE-2023-28858/28859).
        for task in self._held():
            assert task.conn is not None
            assert task.conn.owed_replies == 0 and not task.conn.broken

    @invariant()
    def no_lost_wake_up(self) -> None:
        # go-redis #4027: a job waiting to claim a connection never sits next to it idle, and
        # no caller is served a connection a job was already waiting for.
        for claim in self.claims:
            if claim.status != "pending":
                continue
            assert claim.conn.state.state is not S.IDLE, claim.conn
            for task in self._held():
                if task.conn is claim.conn:
                    assert task.served_at < claim.parked_at, (task.n, claim.conn)

    @invariant()
    def claims_end_as_they_should(self) -> None:
        for claim in self.claims:
            if claim.status == "refused":
                assert claim.conn.state.state is S.CLOSED  # only a closed one is refused
        assert self.violations == []

    @invariant()
    def never_more_than_size_open(self) -> None:
        assert self.dialer.max_open <= SIZE
        assert self.pool.stats().total_connections <= SIZE

    @invariant()
    def no_waiter_starves(self) -> None:
        pending = [t for t in self.gets if t.status == "pending"]
        if pending:
            st_ = self.pool.stats()
            # Someone waits only while every slot is taken by a caller or a job.
            assert st_.idle_connections == 0
            assert st_.total_connections == SIZE
            assert st_.in_use_connections + st_.unusable_connections == SIZE

    @invariant()
    def served_in_arrival_order(self) -> None:
        parked_served = [t.park_seq for t in self.served_order if t.park_seq is not None]
        assert parked_served == sorted(parked_served)
        for t in self.served_order:
            if t.park_seq is not None:
                earlier_pending = [
                    o
                    for o in self.gets
                    if o.status == "pending" and o.park_seq is not None and o.park_seq < t.park_seq
                ]
                assert not earlier_pending

    @invariant()
    def stats_equal_events(self) -> None:
        st_ = self.pool.stats()
        assert st_.hits + st_.misses == len(self.served_order)
        assert st_.timeouts == sum(t.status == "timeout" for t in self.gets)
        assert st_.pending_waiters == sum(t.status == "pending" for t in self.gets)
        assert st_.waits >= self.parks
        assert st_.dials == self.dialer.attempts
        assert sum(st_.closes.values()) == len(self.dialer.closed)
        assert st_.in_use_connections == len(self._held())
        assert st_.unusable_connections == len(self.jobs)

    def teardown(self) -> None:
        try:
            self.loop.run(self.pool.aclose)
            assert all(c.state.state is S.CLOSED for c in self.dialer.made)
            assert self.dialer.open_now == 0
            assert all(c.status != "pending" for c in self.claims)
        finally:
            self.loop.close()


TestPoolStateful = PoolMachine.TestCase
TestPoolStateful.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
