"""The pool's waiting and background work: parking a :meth:`Pool.get` that found nothing idle
and timing it out, dialling, closing, draining, reaping idle connections, refilling
``min_idle``, and shutting down.

:class:`Background` is an object the :class:`~trio_cluster.pooling.pool.Pool` owns (one per
pool). The pool keeps every *decision* about a connection (take, offer, settle, remove); this
module holds the I/O those decisions imply and the timers, which run as jobs in the pool's
nursery. It works on the pool's own records (the entries, the idle deque, the waiter queue),
reached through :class:`PoolCore`, which names exactly what it uses; the get/put hot path
never goes through here except to park.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol

import outcome
import trio
from redis import exceptions as rex

from ..conn.connection import mark_unsent
from ..conn.state import ConnState
from ..errors import PoolClosedError, PoolExhaustedError, PoolTimeoutError
from ..lifetime import start_soon
from .autopipeline import AutoPipeliner
from .pooltypes import C, CloseReason, PoolOptions

logger = logging.getLogger("trio_cluster.pool")

_IDLE = ConnState.IDLE
_UNUSABLE = ConnState.UNUSABLE
_CLOSED = ConnState.CLOSED

# A close is a socket close (maybe a TLS goodbye); bound it so a stuck peer cannot hold up pool
# shutdown. It runs shielded, hence the explicit deadline.
_CLOSE_TIMEOUT = 5.0
# After a dial has failed, wait this long before dialling again just to refill min_idle. Dials
# for parked callers are not delayed: each caller deserves its own attempt.
_MIN_IDLE_RETRY_DELAY = 1.0
#: Most dials in flight at once to fill ``min_idle`` (callers' own dials are not limited).
_MAX_FILL_DIALS = 32


class Place(enum.Enum):
    """Where the pool has put one of its connections."""

    IDLE = "idle"
    IN_USE = "in_use"
    BACKGROUND = "background"
    GONE = "gone"


class Waiter:
    """A parked :meth:`Pool.get`."""

    __slots__ = ("deadline", "task")

    def __init__(self, task: trio.lowlevel.Task, deadline: float) -> None:
        self.task = task
        self.deadline = deadline


class Entry(Generic[C]):
    """The pool's record of one connection it owns."""

    __slots__ = ("conn", "expires_at", "place")

    def __init__(self, conn: C, expires_at: float) -> None:
        self.conn = conn
        self.expires_at = expires_at
        self.place = Place.BACKGROUND


class PoolCore(Protocol[C]):
    """What :class:`Background` uses of its pool (a ``Pool`` satisfies it): the records and
    counters it updates and the decisions it calls. Named here so this module need not import
    ``pool.py``, which imports it."""

    options: PoolOptions
    node_name: str
    timeout: float
    autopipeliner: AutoPipeliner | None
    _dial: Callable[[], Awaitable[C]]
    _cap: int
    _entries: dict[int, Entry[C]]
    _idle: collections.deque[Entry[C]]
    _waiters: collections.deque[Waiter]
    _closing: dict[int, C]
    _dialing: int
    _jobs: trio.Nursery | None
    _closed: bool
    _timeouts: int
    _waits: int
    _wait_time: float
    _dials: int
    _dial_errors: int
    _closes: collections.Counter[str]

    def _open_count(self) -> int: ...
    def _offer(self, entry: Entry[C], is_new: bool) -> None: ...
    def _settle(self, entry: Entry[C]) -> None: ...
    def _remove(self, entry: Entry[C], reason: CloseReason) -> None: ...
    def _run_on_remove(self, conn: C, reason: CloseReason) -> None: ...
    def _stale_reason(self, entry: Entry[C], now: float) -> CloseReason | None: ...


class Background(Generic[C]):
    """The waiting and background work of one pool (see the module docstring)."""

    def __init__(self, pool: PoolCore[C]) -> None:
        self._pool = pool
        self._maint_scope: trio.CancelScope | None = None
        self._timer_scope: trio.CancelScope | None = None
        self._dial_failures_in_row = 0
        self._last_dial_failure = -math.inf

    # --- parked gets -------------------------------------------------------------------------

    async def get_slow(self) -> C:
        """Park the caller in the FIFO queue until a connection is handed to it, a dial fails
        for it, the timer fails it, or the pool closes (the slow path of ``Pool.get``)."""
        if self._pool._closed:
            raise PoolClosedError(f"pool for {self._pool.node_name} is closed")
        if self._pool._jobs is None:
            raise RuntimeError(
                f"pool for {self._pool.node_name} is not running:"
                " use `async with` or start_background()"
            )
        if (
            self._pool.options.max_active
            and self._pool._open_count() >= self._pool.options.max_active
        ):
            raise PoolExhaustedError(
                f"pool for {self._pool.node_name} has max_active={self._pool.options.max_active}"
                " connections open and none idle"
            )
        start = trio.current_time()
        waiter = Waiter(trio.lowlevel.current_task(), start + self._pool.timeout)
        self._pool._waiters.append(waiter)
        self._pool._waits += 1
        if len(self._pool._waiters) == 1 and self._timer_scope is not None:
            self._timer_scope.deadline = waiter.deadline  # the timer was idle
        self.schedule_dials()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Runs only while still parked: nothing was handed to us, so nothing can leak.
            self._pool._waiters.remove(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            # Served by a hand-off (Value), failed by the timer / a dial error / aclose (Error),
            # or cancelled from outside (abort). No cancel scope of our own: see expire_waiters.
            conn: C = await trio.lowlevel.wait_task_rescheduled(abort)
            return conn
        finally:
            self._pool._wait_time += trio.current_time() - start

    async def expire_waiters(self) -> None:
        """Fail parked gets whose deadline has passed with ``PoolTimeoutError``.

        One task for the whole pool instead of a cancel scope per parked get (a scope costs
        microseconds on every wait, about 4 us with a deadline). Deadlines rise from the head of
        the queue to its tail, so only the head needs watching. When the head leaves early the
        timer wakes at a stale (earlier) deadline, finds nothing due and sleeps again.
        """
        while True:
            deadline = self._pool._waiters[0].deadline if self._pool._waiters else math.inf
            with trio.move_on_at(deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            while self._pool._waiters and self._pool._waiters[0].deadline <= now:
                waiter = self._pool._waiters.popleft()
                self._pool._timeouts += 1
                error = PoolTimeoutError(
                    f"no connection to {self._pool.node_name} became available within"
                    f" {self._pool.timeout:g} s (pool size {self._pool.options.size})"
                )
                trio.lowlevel.reschedule(waiter.task, outcome.Error(error))

    def schedule_dials(self) -> None:
        """Start as many dials as parked gets and min_idle need, within the size cap."""
        if self._pool._closed or self._pool._jobs is None:
            return
        room = self._pool._cap - self._pool._open_count()
        if room <= 0:
            return
        demand = len(self._pool._waiters)
        min_idle = self._pool.options.min_idle
        if min_idle and trio.current_time() >= self._last_dial_failure + _MIN_IDLE_RETRY_DELAY:
            # Filling min_idle is background work: a bounded number of dials at a time, so a
            # large min_idle never floods the node (or this process) with handshakes that
            # then time out and retry, which can livelock.
            demand += min(max(0, min_idle - len(self._pool._idle)), _MAX_FILL_DIALS)
        for _ in range(min(room, demand - self._pool._dialing)):
            self._pool._dialing += 1
            start_soon(self._pool._jobs, self.dial_one)

    def expiry(self) -> float:
        """When a connection made now must be closed (``max_lifetime``, with jitter)."""
        lifetime = self._pool.options.max_lifetime
        if lifetime is None:
            return math.inf
        jitter = self._pool.options.lifetime_jitter
        if jitter:
            lifetime *= 1 + random.uniform(-jitter, jitter)
        return trio.current_time() + lifetime

    # --- dials -------------------------------------------------------------------------------

    async def dial_one(self) -> None:
        """Dial one connection (a job) and offer it to the first parked get, else to idle."""
        try:
            try:
                conn = await self.dial_with_retries()
            finally:
                self._pool._dialing -= 1
        except Exception as exc:
            self.on_dial_failed(exc)
            return
        if self._dial_failures_in_row:
            logger.info(
                "pool %s: dialling works again after %d failed dials",
                self._pool.node_name,
                self._dial_failures_in_row,
            )
            self._dial_failures_in_row = 0
        entry = Entry(conn, self.expiry())
        self._pool._entries[conn.id] = entry
        if self._pool._closed:
            self._pool._remove(entry, CloseReason.POOL_CLOSED)
        elif conn.state.state is not _IDLE:
            logger.error(
                "pool %s: dial returned connection %d in state %s, not IDLE",
                self._pool.node_name,
                conn.id,
                conn.state.state.name,
            )
            self._pool._remove(entry, CloseReason.BAD_STATE)
        else:
            self._pool._offer(entry, is_new=True)
        self.schedule_dials()  # min_idle filling goes on, a bounded batch at a time

    async def dial_with_retries(self) -> C:
        """Dial, retrying network errors ``options.dial_retries`` times with backoff."""
        opts = self._pool.options
        attempt = 0
        while True:
            self._pool._dials += 1
            try:
                return await self._pool._dial()
            except rex.AuthenticationError:
                self._pool._dial_errors += 1
                raise  # retrying cannot fix credentials
            except (rex.ConnectionError, rex.TimeoutError, OSError):
                self._pool._dial_errors += 1
                if attempt >= opts.dial_retries:
                    raise
            except Exception:
                self._pool._dial_errors += 1
                raise
            await trio.sleep(opts.dial_backoff * 2**attempt)
            attempt += 1

    def on_dial_failed(self, exc: Exception) -> None:
        """Log a failed dial, fail the parked get it was for, and plan the next attempt."""
        self._dial_failures_in_row += 1
        self._last_dial_failure = trio.current_time()
        # Log the first failure of a run; the rest at debug (an outage fails every dial).
        level = logging.WARNING if self._dial_failures_in_row == 1 else logging.DEBUG
        logger.log(
            level, "pool %s: dial failed: %s: %s", self._pool.node_name, type(exc).__name__, exc
        )
        # A parked get that no other in-flight dial is coming for gets the error now, rather
        # than a timeout later.
        if len(self._pool._waiters) > self._pool._dialing:
            trio.lowlevel.reschedule(self._pool._waiters.popleft().task, outcome.Error(exc))
        self.wake_maintenance(self._last_dial_failure + _MIN_IDLE_RETRY_DELAY)
        self.schedule_dials()

    # --- closing and draining -----------------------------------------------------------------

    async def close_one(self, conn: C) -> None:
        """Close one removed connection (a job), bounded and shielded."""
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
                await conn.aclose()
        except Exception as exc:
            logger.debug("pool %s: closing connection %d: %s", self._pool.node_name, conn.id, exc)
        finally:
            if conn.state.state is not _CLOSED:
                conn.state.transition(_CLOSED)  # fail anyone waiting on it, whatever aclose did
            del self._pool._closing[conn.id]
            self.schedule_dials()  # capacity freed: waiters / min_idle

    async def drain(self, entry: Entry[C]) -> None:
        """Read the replies a connection still owes (a job), then settle or remove it."""
        conn = entry.conn
        try:
            await conn.drain()
            ok = conn.owed_replies == 0 and not conn.broken
        except Exception as exc:
            logger.debug("pool %s: draining connection %d: %s", self._pool.node_name, conn.id, exc)
            ok = False
        if entry.place is not Place.BACKGROUND:
            return  # the pool was closed meanwhile and has closed it
        if not ok:
            self._pool._remove(entry, CloseReason.DRAIN_FAILED)
            return
        if conn.state.state is _UNUSABLE:
            conn.state.transition(_IDLE)  # serves jobs waiting for IDLE first
        self._pool._settle(entry)

    # --- maintenance ---------------------------------------------------------------------------

    async def maintain(self) -> None:
        """Reap expired idle connections and refill min_idle, sleeping until the next moment
        something can expire (no fixed polling interval)."""
        while True:
            with trio.move_on_at(self.next_maintenance()) as scope:
                self._maint_scope = scope
                await trio.sleep_forever()
            self._maint_scope = None
            self.reap()
            self.schedule_dials()

    def wake_maintenance(self, at: float) -> None:
        """Make the maintenance task wake no later than ``at``."""
        if self._maint_scope is not None and at < self._maint_scope.deadline:
            self._maint_scope.deadline = at

    def next_maintenance(self) -> float:
        """The next moment an idle connection can expire or ``min_idle`` needs refilling."""
        now = trio.current_time()
        opts = self._pool.options
        soonest = math.inf
        if opts.max_idle_time is not None:
            # Whatever is released from now on cannot expire sooner than this.
            soonest = now + opts.max_idle_time
            for entry in self._pool._idle:
                soonest = min(soonest, entry.conn.last_used_at + opts.max_idle_time)
        if opts.max_lifetime is not None:
            soonest = min(soonest, now + opts.max_lifetime * (1 - opts.lifetime_jitter))
            for entry in self._pool._idle:
                soonest = min(soonest, entry.expires_at)
        retry_at = self._last_dial_failure + _MIN_IDLE_RETRY_DELAY
        if opts.min_idle and len(self._pool._idle) < opts.min_idle and retry_at > now:
            # Refill min_idle again once the back-off after a failed dial is over. (Only a
            # future time: a past one would make this loop spin without ever sleeping.)
            soonest = min(soonest, retry_at)
        return soonest

    def reap(self) -> None:
        """Remove the idle connections that expired; settle those claimed meanwhile."""
        now = trio.current_time()
        keep: list[Entry[C]] = []
        doomed: list[tuple[Entry[C], CloseReason | None]] = []
        for entry in self._pool._idle:
            if entry.conn.state.state is not _IDLE:
                doomed.append((entry, None))  # claimed by a job meanwhile: settle it
            elif (reason := self._pool._stale_reason(entry, now)) is not None:
                doomed.append((entry, reason))
            else:
                keep.append(entry)
        if not doomed:
            return
        self._pool._idle.clear()
        self._pool._idle.extend(keep)  # in place: _pop_idle is bound to this deque
        for entry, why in doomed:
            if why is None:
                self._pool._settle(entry)
            else:
                self._pool._remove(entry, why)
        # One line per sweep, never one per connection.
        logger.debug("pool %s: reaped %d idle connections", self._pool.node_name, len(doomed))

    # --- shutting down -------------------------------------------------------------------------

    def shut_down(self) -> list[C]:
        """The synchronous part of closing: mark closed, fail waiters, forget connections."""
        self._pool._closed = True
        if self._pool.autopipeliner is not None:
            self._pool.autopipeliner.fail_queued(
                mark_unsent(PoolClosedError(f"pool for {self._pool.node_name} is closed"))
            )
        waiters, self._pool._waiters = list(self._pool._waiters), collections.deque()
        for waiter in waiters:
            error = PoolClosedError(f"pool for {self._pool.node_name} is closed")
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))
        entries = list(self._pool._entries.values())
        self._pool._entries.clear()
        self._pool._idle.clear()
        for entry in entries:
            entry.place = Place.GONE
            self._pool._closes[CloseReason.POOL_CLOSED] += 1
            self._pool._run_on_remove(entry.conn, CloseReason.POOL_CLOSED)
        if entries or waiters:
            # One line for the whole pool, never one per connection.
            logger.debug(
                "pool %s closed: closing %d connections, failing %d waiters",
                self._pool.node_name,
                len(entries),
                len(waiters),
            )
        return [e.conn for e in entries]

    async def close_all(self, conns: list[C]) -> None:
        """Close ``conns`` concurrently, shielded: closing the pool waits for them."""
        if not conns:
            return
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for conn in conns:
                    self._pool._closing[conn.id] = conn
                    start_soon(nursery, self.close_one, conn)
