"""``trio_cluster.faults.lifetime.TaskOwner``: nothing outlives the block, and errors leave as
themselves."""

from __future__ import annotations

import pytest
import trio

from trio_cluster.faults.lifetime import TaskOwner


class Worker(TaskOwner):
    """Starts one background task; ``crash`` makes it fail, ``fail_start`` makes _start fail."""

    def __init__(self, *, crash: bool = False, fail_start: bool = False) -> None:
        self.crash = crash
        self.fail_start = fail_start
        self.running = False
        self.crashed = trio.Event()

    async def _start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._work)
        if self.fail_start:
            raise OSError("cannot bind")

    async def _work(self, task_status: trio.TaskStatus[None]) -> None:
        self.running = True
        task_status.started()
        try:
            if self.crash:
                self.crashed.set()
                raise RuntimeError("background bug")
            await trio.sleep_forever()
        finally:
            self.running = False


async def test_leaving_cancels_the_background_work() -> None:
    worker = Worker()
    async with worker as same:
        assert same is worker and worker.running
    assert not worker.running


async def test_the_bodys_error_leaves_as_itself() -> None:
    worker = Worker()
    with pytest.raises(KeyError):
        async with worker:
            raise KeyError("body")
    assert not worker.running


async def test_a_background_error_leaves_as_itself() -> None:
    worker = Worker(crash=True)
    with pytest.raises(RuntimeError, match="background bug"):
        async with worker:
            await trio.sleep_forever()  # cancelled by the crash


async def test_a_failed_start_leaves_as_itself_and_stops_what_started() -> None:
    worker = Worker(fail_start=True)
    with pytest.raises(OSError, match="cannot bind"):
        async with worker:
            raise AssertionError("the block must not run")
    assert not worker.running


async def test_an_outer_cancellation_passes_through() -> None:
    worker = Worker()
    with trio.move_on_after(0.01) as scope:
        async with worker:
            await trio.sleep_forever()
    assert scope.cancelled_caught and not worker.running


async def test_entering_twice_is_refused() -> None:
    worker = Worker()
    async with worker:
        with pytest.raises(RuntimeError, match="already open"):
            await worker.__aenter__()
