"""Waiting on a pool: tasks parked until something is handed to them, and the timer that fails
the overdue ones.

A :class:`Lot` is trio's ``ParkingLot`` with a value: tasks park in arrival order, and whoever
unparks one hands it its result (a value, or an error raised in the parked task) at that very
moment, so nothing can slip in between the decision and the task running. Cancel-safe: a task
cancelled while parked leaves the queue and is handed nothing; one already handed its result
returns it (and sees the cancellation at its next checkpoint), so whatever it was handed is
never lost.

:class:`Waiting` is everyone who waits on one pool: its parked gets (handed a connection) and
the jobs waiting to claim one connection (handed whether they got it), each a :class:`Lot`.
Every get parks with the same timeout, so deadlines rise from head to tail and one
:class:`Timer` watching the head serves the whole queue (:meth:`Lot.expire`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

from ..errors import PoolClosedError, PoolTimeoutError
from ..hooks import Hooks

__all__ = ["Lot", "Timer", "Waiting"]

T = TypeVar("T")


class _Spot:
    """One parked task."""

    __slots__ = ("deadline", "task")

    def __init__(self, task: trio.lowlevel.Task, deadline: float) -> None:
        self.task = task
        self.deadline = deadline


class Lot(collections.deque[_Spot], Generic[T]):
    """Parked tasks in arrival order (see the module docstring).

    A deque of the parked spots, so that "is anybody waiting?" costs what a deque's truth
    test costs (the pool asks it on every get and release): read its length, but change it
    only through the methods below.
    """

    __slots__ = ()

    async def park(self, deadline: float = math.inf) -> T:
        """Wait, last in line, until a value or an error is handed to this task; return or
        raise it. ``deadline`` is only recorded, for :meth:`expire`."""
        spot = _Spot(trio.lowlevel.current_task(), deadline)
        self.append(spot)

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Runs only while still parked: nothing was handed to us, so nothing can leak.
            self.remove(spot)
            return trio.lowlevel.Abort.SUCCEEDED

        result: T = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def hand_first(self, value: T) -> None:
        """Wake the first parked task with ``value`` (IndexError if nobody is parked)."""
        trio.lowlevel.reschedule(self.popleft().task, outcome.Value(value))

    def fail_first(self, error: BaseException) -> None:
        """Wake the first parked task with ``error`` raised (IndexError if nobody is)."""
        trio.lowlevel.reschedule(self.popleft().task, outcome.Error(error))

    def hand_all(self, value: T) -> int:
        """Wake every parked task with ``value``; returns how many there were."""
        count = len(self)
        while self:
            self.hand_first(value)
        return count

    def fail_all(self, error: Callable[[], BaseException]) -> int:
        """Wake every parked task with an error of its own (``error()``, called once per
        task: one exception object raised in several tasks would pile up their tracebacks);
        returns how many there were."""
        count = len(self)
        while self:
            self.fail_first(error())
        return count

    def first_deadline(self) -> float:
        """The first parked task's deadline (``math.inf`` if nobody is parked)."""
        return self[0].deadline if self else math.inf

    def expire(self, now: float, error: Callable[[], BaseException]) -> int:
        """Fail, from the head of the line, every task whose deadline is ``now`` or earlier
        with an error of its own; returns how many."""
        count = 0
        while self and self[0].deadline <= now:
            self.fail_first(error())
            count += 1
        return count


class Timer:
    """Calls ``fire()`` each time the clock reaches ``when()`` (read again after each call);
    :meth:`wake_by` brings the next call forward. Run :meth:`run` as a task.

    One task and one cancel scope for a whole queue of deadlines (a scope per parked get
    would cost microseconds on every wait). If what ``when()`` named goes away early, the
    timer wakes at a stale moment, ``fire()`` finds nothing due, and it sleeps again.
    ``when()`` must lie in the future once ``fire()`` has run, or the timer spins.
    """

    __slots__ = ("_fire", "_scope", "_when")

    def __init__(self, when: Callable[[], float], fire: Callable[[], Any]) -> None:
        self._when = when
        self._fire = fire
        self._scope: trio.CancelScope | None = None

    async def run(self) -> None:
        """Sleep until ``when()``, call ``fire()``; forever (until cancelled)."""
        while True:
            with trio.move_on_at(self._when()) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            self._fire()

    def wake_by(self, at: float) -> None:
        """Make the next ``fire()`` happen no later than ``at``."""
        scope = self._scope
        if scope is not None and at < scope.deadline:
            scope.deadline = at


class Waiting(Generic[T]):
    """Everyone waiting on one pool (see the module docstring), and how long they waited.

    ``gets`` and ``claims`` are read by the pool's decisions (who is first in line for a
    connection that comes free); tasks join them only through :meth:`get` and :meth:`claim`.
    """

    def __init__(
        self, node_name: str, size: int, timeout: float, hooks: Hooks | None = None
    ) -> None:
        self._node_name = node_name
        #: The client's command hooks, told of each parked get (``after_pool_wait``).
        self._hooks = hooks
        host, _, port = node_name.rpartition(":")
        self._server = (host, int(port) if port.isdigit() else 0)
        self._size = size
        self._timeout = timeout
        #: Parked gets, in arrival order.
        self.gets: Lot[T] = Lot()
        #: Jobs waiting to claim a connection, by connection id (no empty lot stays here).
        self.claims: dict[int, Lot[bool]] = {}
        #: Fails parked gets at their deadline (run it as a task).
        self.timer = Timer(self.gets.first_deadline, self._expire)
        #: Gets that parked, that timed out, and the seconds they spent parked.
        self.waits = 0
        self.timeouts = 0
        self.wait_time = 0.0

    async def get(self) -> T:
        """Park a get until it is handed a connection (or an error), for at most the pool's
        timeout (then ``PoolTimeoutError``)."""
        start = trio.current_time()
        deadline = start + self._timeout
        if not self.gets:
            self.timer.wake_by(deadline)  # this get heads the line
        self.waits += 1
        timed_out = False
        try:
            return await self.gets.park(deadline)
        except PoolTimeoutError:
            timed_out = True
            raise
        finally:
            waited = trio.current_time() - start
            self.wait_time += waited
            if self._hooks:
                self._hooks.after_pool_wait(self._server, waited, timed_out)

    async def claim(self, conn_id: int) -> bool:
        """Wait, after the jobs already waiting for it, until connection ``conn_id`` is handed
        over (True) or goes away (False)."""
        lot = self.claims.get(conn_id)
        if lot is None:
            lot = self.claims[conn_id] = Lot()
        try:
            return await lot.park()
        finally:
            if not lot and self.claims.get(conn_id) is lot:
                del self.claims[conn_id]

    def refuse(self, conn_id: int) -> None:
        """Connection ``conn_id`` is gone: the jobs waiting for it get False."""
        lot = self.claims.pop(conn_id, None)
        if lot:
            lot.hand_all(False)

    def close(self) -> int:
        """The pool is closed: parked gets fail with ``PoolClosedError``, waiting claims get
        False. Returns how many gets were failed."""
        failed = self.gets.fail_all(
            lambda: PoolClosedError(f"pool for {self._node_name} is closed")
        )
        claims, self.claims = self.claims, {}
        for lot in claims.values():
            lot.hand_all(False)
        return failed

    def _expire(self) -> None:
        self.timeouts += self.gets.expire(trio.current_time(), self._timeout_error)

    def _timeout_error(self) -> PoolTimeoutError:
        return PoolTimeoutError(
            f"no connection to {self._node_name} became available within {self._timeout:g} s"
            f" (pool size {self._size})"
        )
