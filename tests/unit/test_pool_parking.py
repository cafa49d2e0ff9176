"""The pool's parking lot (trio_cluster/pooling/parking.py) on its own: arrival order, hand-offs
decided at the moment of the decision, cancellation on either side of a hand-off, failures and
deadlines, and the movable timer (on the autojump clock)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from trio_cluster.pooling.parking import Lot, Timer


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def test_parked_tasks_are_served_in_arrival_order() -> None:
    lot: Lot[str] = Lot()
    got: list[tuple[int, str]] = []

    async def parker(n: int) -> None:
        got.append((n, await lot.park()))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(4):
                nursery.start_soon(parker, n)
                await settle()  # park them in a known order
            assert len(lot) == 4 and lot
            for value in "abcd":
                lot.hand_first(value)
            assert got == [] and not lot  # all handed, none has run yet
        # Who got what is the order they parked in (the order they then ran in is trio's).
        assert sorted(got) == [(0, "a"), (1, "b"), (2, "c"), (3, "d")]
        assert not lot and lot.first_deadline() == math.inf


async def test_a_hand_off_cannot_be_taken_by_anyone_else() -> None:
    """The value goes to the parked task at the moment of the decision: a task that runs in
    between (and parks after) never sees it."""
    lot: Lot[str] = Lot()
    order: list[str] = []

    async def first() -> None:
        order.append("first:" + await lot.park())

    async def newcomer() -> None:
        order.append("newcomer:" + await lot.park())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await settle()
            lot.hand_first("x")
            nursery.start_soon(newcomer)
            await settle()
            lot.hand_first("y")
    assert order == ["first:x", "newcomer:y"]


async def test_cancelled_while_parked_leaves_the_line_and_gets_nothing() -> None:
    lot: Lot[str] = Lot()
    scopes = [trio.CancelScope() for _ in range(3)]
    got: list[tuple[int, str]] = []

    async def parker(n: int) -> None:
        with scopes[n]:
            got.append((n, await lot.park()))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for n in range(3):
                nursery.start_soon(parker, n)
                await settle()
            scopes[0].cancel()
            await settle()
            assert len(lot) == 2
            lot.hand_first("a")
            lot.hand_first("b")
    assert sorted(got) == [(1, "a"), (2, "b")]
    assert scopes[0].cancelled_caught


async def test_handed_then_cancelled_keeps_what_it_was_handed() -> None:
    lot: Lot[str] = Lot()
    scope = trio.CancelScope()
    got: list[str] = []

    async def parker() -> None:
        with scope:
            got.append(await lot.park())
            await trio.lowlevel.checkpoint()  # the cancellation lands here

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parker)
            await settle()
            lot.hand_first("mine")
            scope.cancel()
    assert got == ["mine"] and scope.cancelled_caught


async def test_failures_raise_in_the_parked_task_each_its_own() -> None:
    lot: Lot[str] = Lot()
    errors: list[BaseException] = []

    async def parker() -> None:
        try:
            await lot.park()
        except KeyError as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(parker)
            await settle()
            lot.fail_first(KeyError("first"))
            await settle()
            assert lot.fail_all(lambda: KeyError("rest")) == 2
    assert sorted(str(e) for e in errors) == ["'first'", "'rest'", "'rest'"]
    assert len({id(e) for e in errors}) == 3
    assert lot.fail_all(lambda: KeyError("none")) == 0 and lot.hand_all("v") == 0
    with pytest.raises(IndexError):
        lot.hand_first("nobody")


async def test_hand_all() -> None:
    lot: Lot[bool] = Lot()
    got: list[bool] = []

    async def parker() -> None:
        got.append(await lot.park())

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(parker)
            await settle()
            assert lot.hand_all(False) == 3
    assert got == [False, False, False]


async def test_expire_fails_due_tasks_from_the_head(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lot: Lot[str] = Lot()
    outcomes: dict[int, str] = {}

    async def parker(n: int, deadline: float) -> None:
        try:
            outcomes[n] = await lot.park(deadline)
        except TimeoutError:
            outcomes[n] = f"expired at {trio.current_time():g}"

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            for n, deadline in enumerate((1.0, 2.0, 2.0, 5.0)):
                nursery.start_soon(parker, n, deadline)
                await settle()
            assert lot.first_deadline() == 1.0
            await trio.sleep(2.0)
            assert lot.expire(trio.current_time(), TimeoutError) == 3
            assert lot.first_deadline() == 5.0 and len(lot) == 1
            assert lot.expire(trio.current_time(), TimeoutError) == 0
            lot.hand_first("served")
    assert outcomes == {0: "expired at 2", 1: "expired at 2", 2: "expired at 2", 3: "served"}


# --- the timer -----------------------------------------------------------------------------------


async def test_timer_fires_when_due_and_can_be_brought_forward(
    autojump_clock: trio.testing.MockClock,
) -> None:
    due = [10.0]
    fired: list[float] = []

    def fire() -> None:
        fired.append(trio.current_time())
        due[0] = math.inf if len(fired) >= 3 else trio.current_time() + 10.0

    timer = Timer(lambda: due[0], fire)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(timer.run)
            await trio.sleep(1)
            timer.wake_by(4.0)  # earlier: fires then
            timer.wake_by(8.0)  # later than planned: no effect
            await trio.sleep(30)
            nursery.cancel_scope.cancel()
    assert fired == [4.0, 14.0, 24.0]
