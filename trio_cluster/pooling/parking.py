"""Tasks parked until something is handed to them: the one queue behind every wait of the pool.

A :class:`Lot` is trio's ``ParkingLot`` with a value: tasks park in arrival order, and whoever
unparks one hands it its result (a value, or an error raised in the parked task) at that very
moment, so nothing can slip in between the decision and the task running. Cancel-safe: a task
cancelled while parked leaves the queue and is handed nothing; one already handed its result
returns it (and sees the cancellation at its next checkpoint), so whatever it was handed is
never lost.

The pool parks its waiting gets here (handed a connection) and the jobs waiting to claim one
connection (handed whether they got it). Each parked task may carry a deadline; whoever parks
with deadlines parks them in rising order (the pool: one timeout for every get), so the first
deadline is the earliest and one timer watching it serves the whole queue (:meth:`Lot.expire`).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import outcome
import trio

__all__ = ["Lot"]

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
