"""The seeded workload: worker tasks issuing SET/GET/INCR/pipelines and checking every reply.

Each worker owns its keys (``<prefix>:<worker>:<i>``) and one counter (``<prefix>:<worker>:n``);
no other task writes them, so every read can be checked exactly: the value must name the key
and a version between the last write the worker saw acknowledged and the last one it sent.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import attrs
import trio

from trio_cluster import ClusterClient

from .records import CANCELLED, Observation, Op, RunRecord, decode_value, encode_value

__all__ = ["KeyBook", "OpenClient", "Workload", "WorkloadRunner"]

#: Opens a client the monitor watches (``async with open_client() as rc``).
OpenClient = Callable[[], AbstractAsyncContextManager[ClusterClient]]
KINDS = ("set", "get", "incr", "pipeline")


@attrs.frozen(kw_only=True)
class Workload:
    """What the workers do. Shapes: ``steady`` (run until stopped or ``ops_per_worker`` done),
    ``rounds`` (``rounds`` times: all workers released at once by one event, ``ops_per_worker``
    each, ``pause`` between), ``churn`` (like ``rounds``, with a new client per round)."""

    workers: int = 20
    ops_per_worker: int | None = None
    mix: tuple[tuple[str, float], ...] = (("set", 0.4), ("get", 0.4), ("incr", 0.1),
                                          ("pipeline", 0.1))  # fmt: skip
    cycle: bool = False
    """Cycle SET, GET, pipeline(SET+GET) in order instead of drawing from ``mix``."""
    think: tuple[float, float] = (0.0, 0.0)
    """Sleep uniformly in this range (seconds) after each operation."""
    keys_per_worker: int = 4
    pipeline_sets: int = 1
    """SETs per pipeline (followed by a GET and an INCR)."""
    value_pad: int = 0
    cancel: tuple[float, float] | None = None
    """Wrap commands in ``trio.move_on_after`` with a deadline drawn from this range."""
    cancel_fraction: float = 1.0
    shape: str = "steady"
    rounds: int = 1
    pause: float = 0.0
    prepopulate: bool = False
    """Write every key once before the measured load."""

    def __attrs_post_init__(self) -> None:
        if self.shape not in ("steady", "rounds", "churn"):
            raise ValueError(f"unknown workload shape {self.shape!r}")
        if self.shape == "steady" and self.ops_per_worker is None and self.rounds != 1:
            raise ValueError("rounds only apply to the rounds and churn shapes")
        if not 1 <= self.pipeline_sets <= self.keys_per_worker:
            raise ValueError("pipeline_sets must be in 1..keys_per_worker")
        for kind, _ in self.mix:
            if kind not in KINDS:
                raise ValueError(f"unknown operation {kind!r}; known: {KINDS}")


@dataclass
class _Key:
    lo: int = 0
    hi: int = 0
    acked_at: float = 0.0


@dataclass
class KeyBook:
    """One worker's keys: the last acknowledged and the last sent version of each."""

    worker: int
    keys: list[str]
    counter: str
    state: dict[str, _Key] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in [*self.keys, self.counter]:
            self.state[key] = _Key()


class WorkloadRunner:
    """Runs a :class:`Workload` against clients from ``open_client``, recording into ``record``."""

    def __init__(
        self,
        spec: Workload,
        prefix: str,
        seed: int,
        record: RunRecord,
        open_client: OpenClient,
        on_open: Callable[[ClusterClient], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.record = record
        self.open_client = open_client
        self.on_open = on_open
        """Awaited with the steady-state client before any worker starts (e.g. until its
        pools are filled)."""
        self.books = [
            KeyBook(
                w, [f"{prefix}:{w}:{i}" for i in range(spec.keys_per_worker)], f"{prefix}:{w}:n"
            )
            for w in range(spec.workers)
        ]
        self.rngs = [random.Random(f"{seed}:{w}") for w in range(spec.workers)]
        self._cursor = [0] * spec.workers
        self._slot: dict[str, int] = {}
        """Key -> its slot (the client's ``keyslot``, asked once per key)."""

    @property
    def all_keys(self) -> list[str]:
        """Every key this workload may write (values and counters)."""
        return [k for b in self.books for k in (*b.keys, b.counter)]

    # --- driving ---------------------------------------------------------------------------

    async def run(self, stop: trio.Event) -> None:
        """Run the workload until it is done or ``stop`` is set."""
        spec = self.spec
        if spec.shape == "churn":
            for round_ in range(spec.rounds):
                if stop.is_set():
                    return
                async with self.open_client() as rc:
                    await self._round(rc, stop)
                if round_ + 1 < spec.rounds:
                    await trio.sleep(spec.pause)
            return
        async with self.open_client() as rc:
            if self.on_open is not None:
                await self.on_open(rc)
            if spec.prepopulate:
                await self.prepopulate(rc)
            if spec.shape == "rounds":
                for round_ in range(spec.rounds):
                    if stop.is_set():
                        return
                    await self._round(rc, stop)
                    if round_ + 1 < spec.rounds:
                        await trio.sleep(spec.pause)
                return
            async with trio.open_nursery() as nursery:
                for book in self.books:
                    nursery.start_soon(self._steady, rc, book, stop)

    async def prepopulate(self, rc: ClusterClient) -> None:
        """Write every key once (not recorded as operations)."""

        async def fill(book: KeyBook) -> None:
            for key in book.keys:
                await self._set(rc, book, key)

        async with trio.open_nursery() as nursery:
            for book in self.books:
                nursery.start_soon(fill, book)

    async def _round(self, rc: ClusterClient, stop: trio.Event) -> None:
        go = trio.Event()
        count = self.spec.ops_per_worker or 1

        async def burst(book: KeyBook) -> None:
            await go.wait()
            for _ in range(count):
                if stop.is_set():
                    return
                await self._one(rc, book)

        async with trio.open_nursery() as nursery:
            for book in self.books:
                nursery.start_soon(burst, book)
            await trio.lowlevel.checkpoint()
            go.set()

    async def _steady(self, rc: ClusterClient, book: KeyBook, stop: trio.Event) -> None:
        done = 0
        limit = self.spec.ops_per_worker
        lo, hi = self.spec.think
        rng = self.rngs[book.worker]
        while not stop.is_set() and (limit is None or done < limit):
            await self._one(rc, book)
            done += 1
            if hi > 0:
                await trio.sleep(rng.uniform(lo, hi))
            else:
                await trio.lowlevel.checkpoint()

    def _kind(self, worker: int) -> str:
        if self.spec.cycle:
            self._cursor[worker] += 1
            return ("set", "get", "pipeline")[self._cursor[worker] % 3]
        kinds = [k for k, _ in self.spec.mix]
        weights = [w for _, w in self.spec.mix]
        return self.rngs[worker].choices(kinds, weights)[0]

    def _keys_of(self, kind: str, book: KeyBook, key: str) -> list[str]:
        """The keys one operation touches."""
        if kind in ("set", "get"):
            return [key]
        if kind == "incr":
            return [book.counter]
        first = book.keys.index(key)
        count = self.spec.pipeline_sets
        return [*(book.keys[(first + j) % len(book.keys)] for j in range(count)), book.counter]

    def _slots(self, rc: ClusterClient, keys: list[str]) -> tuple[int, ...]:
        slots = []
        for key in keys:
            slot = self._slot.get(key)
            if slot is None:
                slot = self._slot[key] = rc.keyslot(key)
            slots.append(slot)
        return tuple(sorted(set(slots)))

    async def _one(self, rc: ClusterClient, book: KeyBook) -> None:
        rng = self.rngs[book.worker]
        kind = self._kind(book.worker)
        key = book.keys[rng.randrange(len(book.keys))]
        slots = self._slots(rc, self._keys_of(kind, book, key))
        deadline = None
        spec = self.spec
        if spec.cancel is not None and rng.random() < spec.cancel_fraction:
            deadline = rng.uniform(*spec.cancel)
        start = trio.current_time()
        error: str | None = None
        try:
            with trio.move_on_after(deadline if deadline is not None else float("inf")) as scope:
                if kind == "set":
                    await self._set(rc, book, key)
                elif kind == "get":
                    await self._get(rc, book, key)
                elif kind == "incr":
                    await self._incr(rc, book)
                else:
                    await self._pipeline(rc, book, key)
            if scope.cancelled_caught:
                error = CANCELLED
        except Exception as exc:  # every failure is recorded, none stops the worker
            error = type(exc).__name__
        end = trio.current_time()
        self.record.ops.append(Op(book.worker, kind, start, end, error is None, error, slots))

    # --- the operations and their checks -----------------------------------------------------

    def _observe(self, key: str, reply: Any, lo: int, hi: int, acked_at: float) -> None:
        record = self.record
        record.reads_checked += 1
        got_key: str | None
        if reply is None:
            got_key, version = key, -1
        elif key.endswith(":n"):
            try:
                got_key, version = key, int(reply)
            except (TypeError, ValueError):
                got_key, version = None, -1
        else:
            decoded = decode_value(reply)
            got_key, version = decoded if decoded is not None else (None, -1)
        if got_key == key and lo <= version <= hi:
            return
        if got_key == key and version == -1 and lo == 0:
            return
        now = trio.current_time()
        record.anomalies.append(
            Observation(key, now, got_key, version, lo, hi, acked_at, raw=repr(reply)[:80])
        )

    async def _set(self, rc: ClusterClient, book: KeyBook, key: str) -> None:
        state = book.state[key]
        state.hi += 1
        version = state.hi
        reply = await _commands(rc).set(key, encode_value(key, version, self.spec.value_pad))
        if reply is not True:
            self._observe(key, f"SET replied {reply!r}", state.lo, state.hi, state.acked_at)
            return
        state.lo, state.acked_at = version, trio.current_time()

    async def _get(self, rc: ClusterClient, book: KeyBook, key: str) -> None:
        state = book.state[key]
        lo, hi, acked_at = state.lo, state.hi, state.acked_at
        reply = await _commands(rc).get(key)
        self._observe(key, reply, lo, hi, acked_at)
        decoded = decode_value(reply)
        if decoded is not None and decoded[0] == key and decoded[1] < lo:
            state.lo = decoded[1]  # the server lost writes: resynchronise, the anomaly is kept

    async def _incr(self, rc: ClusterClient, book: KeyBook) -> None:
        state = book.state[book.counter]
        state.hi += 1
        reply = await _commands(rc).incr(book.counter)
        self._counter_reply(book, reply)

    def _counter_reply(self, book: KeyBook, reply: Any) -> None:
        state = book.state[book.counter]
        # hi counts every INCR sent; the reply must exceed the last acknowledged value and
        # cannot exceed the number sent.
        self._observe(book.counter, reply, state.lo + 1, state.hi, state.acked_at)
        if isinstance(reply, int):
            state.lo = reply
            state.hi = max(state.hi, reply)
            state.acked_at = trio.current_time()

    async def _pipeline(self, rc: ClusterClient, book: KeyBook, key: str) -> None:
        spec = self.spec
        first = book.keys.index(key)
        written: dict[str, int] = {}
        async with _commands(rc).pipeline() as pipe:
            for j in range(spec.pipeline_sets):
                target = book.keys[(first + j) % len(book.keys)]
                state = book.state[target]
                state.hi += 1
                written[target] = state.hi
                pipe.set(target, encode_value(target, state.hi, spec.value_pad))
            pipe.get(key)
            book.state[book.counter].hi += 1
            pipe.incr(book.counter)
            replies = await pipe.execute()
        now = trio.current_time()
        for (target, version), reply in zip(written.items(), replies, strict=False):
            if reply is True:
                state = book.state[target]
                state.lo, state.acked_at = version, now
        self._observe(key, replies[-2], written[key], written[key], now)
        self._counter_reply(book, replies[-1])

    # --- end of run --------------------------------------------------------------------------

    async def verify(self, rc: ClusterClient, attempts: int = 20) -> None:
        """Read back every key and check it against its last acknowledged version."""
        record = self.record

        async def check(book: KeyBook) -> None:
            for key in [*book.keys, book.counter]:
                state = book.state[key]
                reply = await _read_with_retries(rc, key, attempts)
                raw = repr(reply)[:80]
                got_key: str | None = key
                if key == book.counter:
                    try:
                        version = -1 if reply is None else int(reply)
                    except (TypeError, ValueError):
                        got_key, version = None, -1
                else:
                    decoded = decode_value(reply)
                    got_key, version = decoded if decoded is not None else (None, -1)
                    if reply is None:
                        got_key = key
                record.final_reads.append(
                    Observation(
                        key,
                        trio.current_time(),
                        got_key,
                        version,
                        state.lo,
                        state.hi,
                        state.acked_at,
                        final=True,
                        raw=raw,
                    )
                )

        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(16)
            for book in self.books:
                nursery.start_soon(_limited, limiter, check, book)

    async def cleanup(self, rc: ClusterClient, attempts: int = 5) -> None:
        """Delete every key this workload may have written (each batch retried: on a busy
        machine a DEL may time out; what is left is deleted by the end-of-run sweep, and the
        run's report says so)."""
        keys = self.all_keys
        for i in range(0, len(keys), 100):
            for attempt in range(attempts):
                try:
                    await _commands(rc).delete(*keys[i : i + 100])
                    break
                except Exception as exc:
                    if attempt + 1 == attempts:
                        self.record.notes.append(
                            f"cleanup: DEL failed ({type(exc).__name__}); left to the "
                            "end-of-run key sweep"
                        )
                        return
                    await trio.sleep(0.25)


def _commands(rc: ClusterClient) -> Any:
    """``rc`` for its redis-py command methods, whose stubs describe the sync client."""
    return rc


async def _limited(
    limiter: trio.CapacityLimiter, fn: Callable[[KeyBook], Any], book: KeyBook
) -> None:
    async with limiter:
        await fn(book)


async def _read_with_retries(rc: ClusterClient, key: str, attempts: int) -> Any:
    for attempt in range(attempts):
        try:
            return await _commands(rc).get(key)
        except Exception:
            if attempt + 1 == attempts:
                raise
            await trio.sleep(0.25)
    raise AssertionError("unreachable")
