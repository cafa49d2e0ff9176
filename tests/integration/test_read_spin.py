"""``read_spin``: a read whose reply is not there yet lets the other tasks run a few more times
before it sleeps, and a connection whose replies keep coming later than that stops spinning,
then tries again (real sockets, a fake server that holds each reply until the test lets it go).

How many times the command's task is stepped by the scheduler tells whether its read spun: a
spin is one more step per pass, so a read that spun and then slept takes exactly
``read_spin`` steps more than one that slept at once.  Nothing here depends on timing: the
test lets a reply go only once every task is blocked (the read is asleep in epoll).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from fake_resp import FakeRedis, bulk

from trio_cluster import Client

SPIN = 4
#: Misses in a row that stop a connection spinning, and sleeps after which it tries again.
STOP_AFTER = 3
RETRY_AFTER = 64


class StepCounter(trio.abc.Instrument):
    """Counts the scheduler steps of one task."""

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


class Harness:
    """A client on a fake server that answers ``GET fast`` at once and holds every other
    ``GET`` until :meth:`slow_get` lets it go."""

    def __init__(self, client: Client, nursery: trio.Nursery) -> None:
        self.client = client
        self.nursery = nursery
        self.counter = StepCounter()
        self.release_send, self.release_receive = trio.open_memory_channel[None](0)

    async def hold(self, args: list[bytes], stream: trio.SocketStream) -> None:
        if args[1] != b"fast":
            await self.release_receive.receive()
        await stream.send_all(bulk(b"v:" + args[1]))

    async def _counted_get(self, key: str, done: trio.Event) -> None:
        self.counter.task = trio.lowlevel.current_task()
        self.counter.steps = 0
        assert await self.client.get(key) == b"v:" + key.encode()
        self.counter.task = None
        done.set()

    async def slow_get(self) -> int:
        """One GET whose reply comes only once the client sleeps; its task's step count."""
        done = trio.Event()
        self.nursery.start_soon(self._counted_get, "slow", done)
        await trio.testing.wait_all_tasks_blocked()
        await self.release_send.send(None)
        await done.wait()
        return self.counter.steps

    async def fast_get(self) -> None:
        """One GET answered at once (the server runs in this trio run: within the spin)."""
        assert await self.client.get("fast") == b"v:fast"


@asynccontextmanager
async def harness(**options: Any) -> AsyncIterator[Harness]:
    async with trio.open_nursery() as nursery:
        fake = FakeRedis()
        server = await fake.start(nursery)
        client = Client("127.0.0.1", server.port, **options)
        async with client:
            h = Harness(client, nursery)
            fake.stream = h.hold
            trio.lowlevel.add_instrument(h.counter)
            try:
                await h.fast_get()  # the connection exists before anything is counted
                yield h
            finally:
                trio.lowlevel.remove_instrument(h.counter)
        nursery.cancel_scope.cancel()


async def test_a_connection_stops_spinning_for_late_replies_and_tries_again() -> None:
    with trio.fail_after(30):
        async with harness(read_spin=SPIN) as h:
            spun = [await h.slow_get() for _ in range(STOP_AFTER)]
            asleep = [await h.slow_get() for _ in range(RETRY_AFTER - STOP_AFTER)]
            again = await h.slow_get()
    assert len(set(spun)) == 1 and len(set(asleep)) == 1, (spun, asleep)
    # The first reads spun read_spin passes before sleeping; then none did...
    assert spun[0] - asleep[0] == SPIN, (spun, asleep)
    # ... until RETRY_AFTER reads had slept: the next one spins again.
    assert again == spun[0]


async def test_a_reply_the_spin_catches_keeps_the_connection_spinning() -> None:
    with trio.fail_after(30):
        async with harness(read_spin=SPIN) as h:
            first = [await h.slow_get() for _ in range(STOP_AFTER - 1)]
            await h.fast_get()  # caught by the spin: the misses start again from zero
            after = [await h.slow_get() for _ in range(STOP_AFTER)]
            stopped = await h.slow_get()
    assert set(first) == set(after) == {first[0]}, (first, after)
    assert first[0] - stopped == SPIN


async def test_read_spin_zero_never_spins() -> None:
    with trio.fail_after(30):
        async with harness(read_spin=SPIN) as spinning:
            for _ in range(STOP_AFTER):
                await spinning.slow_get()
            asleep = await spinning.slow_get()  # a spinning connection that stopped
        async with harness(read_spin=0) as h:
            steps = [await h.slow_get() for _ in range(5)]
    assert steps == [asleep] * 5


@pytest.mark.parametrize("value", [-1, 65, 1.5, True, "4"])
def test_read_spin_is_validated(value: object) -> None:
    with pytest.raises(ValueError, match="read_spin"):
        Client("127.0.0.1", 6379, read_spin=value)
