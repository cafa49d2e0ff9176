"""The per-node connection pool.

How it works, in one paragraph: every decision (which connection, who gets it, whether to dial or
close) is taken synchronously, with no ``await`` in between, so it is atomic under trio. The I/O a
decision implies (dial, close, drain owed replies) runs afterwards as a job in the pool's own
nursery. Callers that find no idle connection park in one FIFO queue; any connection that becomes
available (released, dialled, drained, returned by a background job) is handed *directly* to the
first parked caller, so a newcomer can never barge ahead. Dials are jobs owned by the pool, not by
the caller that triggered them, so a caller that gives up never leaks a half-made connection: the
result goes to the next waiter or into the idle list.

Where each connection is, at any moment (exactly one of):

* ``idle``: in the idle deque (state IDLE, or claimed by a background job that the pool has not
  noticed yet; such entries are skipped lazily and never count as an attempt);
* ``in use``: handed to one caller (state IN_USE);
* ``background``: state UNUSABLE/INITIALIZING, owned by a drainer or an external job, which gives
  it back with :meth:`Pool.return_from_background`;
* ``closing``: removed, its ``aclose()`` running;
* or being dialled (counted, not yet an object).

Their sum never exceeds ``size`` (or ``max_active`` when that is smaller).
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Generic

import outcome
import trio
from redis import exceptions as rex

from ..conn.connection import mark_unsent
from ..conn.state import ConnState
from ..errors import PoolClosedError, PoolExhaustedError, PoolTimeoutError, ReleaseError
from ..lifetime import NurseryOwner
from .autopipeline import AutoPipeliner
from .pooltypes import (
    BasePoolHook,
    C,
    CloseReason,
    ConnectionInfo,
    PoolableConnection,
    PoolHook,
    PoolOptions,
    PoolStats,
)

__all__ = [
    "BasePoolHook",
    "CloseReason",
    "ConnectionInfo",
    "Pool",
    "PoolHook",
    "PoolOptions",
    "PoolStats",
    "PoolableConnection",
]

logger = logging.getLogger("trio_cluster.pool")

_IDLE = ConnState.IDLE
_IN_USE = ConnState.IN_USE
_UNUSABLE = ConnState.UNUSABLE
_INITIALIZING = ConnState.INITIALIZING
_CLOSED = ConnState.CLOSED

# A close is a socket close (maybe a TLS goodbye); bound it so a stuck peer cannot hold up pool
# shutdown. It runs shielded, hence the explicit deadline.
_CLOSE_TIMEOUT = 5.0
# After a dial has failed, wait this long before dialling again just to refill min_idle. Dials
# for parked callers are not delayed: each caller deserves its own attempt.
_MIN_IDLE_RETRY_DELAY = 1.0
#: Most dials in flight at once to fill ``min_idle`` (callers' own dials are not limited).
_MAX_FILL_DIALS = 32


class _Place(enum.Enum):
    IDLE = "idle"
    IN_USE = "in_use"
    BACKGROUND = "background"
    GONE = "gone"


class _Waiter:
    """A parked :meth:`Pool.get`."""

    __slots__ = ("deadline", "task")

    def __init__(self, task: trio.lowlevel.Task, deadline: float) -> None:
        self.task = task
        self.deadline = deadline


class _Entry(Generic[C]):
    """The pool's record of one connection it owns."""

    __slots__ = ("conn", "expires_at", "place")

    def __init__(self, conn: C, expires_at: float) -> None:
        self.conn = conn
        self.expires_at = expires_at
        self.place = _Place.BACKGROUND


class Pool(NurseryOwner, Generic[C]):
    """A pool of connections to one node.

    Its background work needs a nursery: ``async with Pool(...) as pool:``, or
    ``await pool.start_background(nursery)``. :meth:`aclose` (or leaving the ``async with``)
    closes every connection and stops all of it.

    Args:
        dial: connects and handshakes; returns an IDLE connection; may raise redis
            ``ConnectionError``/``TimeoutError`` (retried ``options.dial_retries`` times).
        options: the pool settings.
        node_name: for messages, logs and stats (e.g. ``"127.0.0.1:7000"``).
        timeout: how long :meth:`get` waits, in seconds (``math.inf`` = forever): the resolved
            value of ``options.timeout``.
    """

    def __init__(
        self,
        dial: Callable[[], Awaitable[C]],
        options: PoolOptions | None = None,
        *,
        node_name: str,
        timeout: float,
    ) -> None:
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(
                f"Pool timeout must be a number > 0 (math.inf = none), got {timeout!r}"
            )
        opts = options if options is not None else PoolOptions()
        self.options = opts
        self.node_name = node_name
        self.timeout = float(timeout)
        self._dial = dial
        self._cap = min(opts.size, opts.max_active) if opts.max_active else opts.size
        self._entries: dict[int, _Entry[C]] = {}
        self._idle: collections.deque[_Entry[C]] = collections.deque()
        # LIFO takes the most recently released connection (the right end); FIFO the oldest.
        self._pop_idle = self._idle.popleft if opts.fifo else self._idle.pop
        # Every waiter gets the same timeout, so deadlines rise from head to tail and one timer
        # task watching the head replaces a cancel scope per parked get.
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._closing: dict[int, C] = {}
        self._dialing = 0
        self._hooks: tuple[PoolHook[C], ...] = ()
        #: The nursery of the pool's own jobs (dials, drains, batches) while it runs.
        self._jobs: trio.Nursery | None = None
        self._maint_scope: trio.CancelScope | None = None
        self._timer_scope: trio.CancelScope | None = None
        self._started = False
        self._stopped = trio.Event()
        self._closed = False
        self._dial_failures_in_row = 0
        self._last_dial_failure = -math.inf
        self._hits = 0
        self._misses = 0
        self._timeouts = 0
        self._waits = 0
        self._wait_time = 0.0
        self._dials = 0
        self._dial_errors = 0
        self._closes: collections.Counter[str] = collections.Counter()
        #: The queue and batches of automatic pipelining (``options.autopipeline``), or None.
        self.autopipeliner = AutoPipeliner(self) if opts.autopipeline else None

    def __repr__(self) -> str:
        return (
            f"<Pool {self.node_name} open={len(self._entries)} idle={len(self._idle)}"
            f" waiters={len(self._waiters)}{' closed' if self._closed else ''}>"
        )

    # --- life cycle -------------------------------------------------------------------------

    async def start_background(self, nursery: trio.Nursery) -> None:
        """Start the pool's background work (min-idle filling, reaping, draining, dialling,
        closing) as one task in ``nursery``; returns once :meth:`get` may be called."""
        if self._started:
            raise RuntimeError(f"pool for {self.node_name} already started")
        self._started = True
        await nursery.start(self._run)

    async def _start(self, nursery: trio.Nursery) -> None:
        """``async with``: the background work runs in the nursery the block owns."""
        await self.start_background(nursery)

    async def _stop(self) -> None:
        """Leaving the ``async with``: close the pool."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection (in-use ones too), fail parked gets with
        ``PoolClosedError``, stop the background work and wait for it. Idempotent."""
        if not self._closed:
            conns = self._shut_down()
            if self._jobs is not None:
                self._jobs.cancel_scope.cancel()
            await self._close_all(conns)
        if self._started:
            await self._stopped.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._jobs = nursery
                nursery.start_soon(self._maintain)
                nursery.start_soon(self._expire_waiters)
                self._schedule_dials()  # pre-warm min_idle
                task_status.started()
        finally:
            self._jobs = None
            # Reached after aclose(), or when the owner's nursery is cancelled: either way
            # nothing may outlive the pool.
            if not self._closed:
                await self._close_all(self._shut_down())
            self._stopped.set()

    def _shut_down(self) -> list[C]:
        """The synchronous part of closing: mark closed, fail waiters, forget connections."""
        self._closed = True
        if self.autopipeliner is not None:
            self.autopipeliner.fail_queued(
                mark_unsent(PoolClosedError(f"pool for {self.node_name} is closed"))
            )
        waiters, self._waiters = list(self._waiters), collections.deque()
        for waiter in waiters:
            error = PoolClosedError(f"pool for {self.node_name} is closed")
            trio.lowlevel.reschedule(waiter.task, outcome.Error(error))
        entries = list(self._entries.values())
        self._entries.clear()
        self._idle.clear()
        for entry in entries:
            entry.place = _Place.GONE
            self._closes[CloseReason.POOL_CLOSED] += 1
            self._run_on_remove(entry.conn, CloseReason.POOL_CLOSED)
        if entries or waiters:
            # One line for the whole pool, never one per connection.
            logger.debug(
                "pool %s closed: closing %d connections, failing %d waiters",
                self.node_name,
                len(entries),
                len(waiters),
            )
        return [e.conn for e in entries]

    async def _close_all(self, conns: list[C]) -> None:
        if not conns:
            return
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for conn in conns:
                    self._closing[conn.id] = conn
                    nursery.start_soon(self._close_one, conn)

    # --- get / put ---------------------------------------------------------------------------

    async def get(self) -> C:
        """Return a connection in state IN_USE; give it back with :meth:`put`.

        Fast path (an idle connection and nobody waiting): no cancel scope and no checkpoint;
        the caller's I/O on the connection is its next checkpoint. Otherwise the caller parks,
        in strict arrival order, for at most :attr:`timeout` seconds.

        Raises:
            PoolTimeoutError: nothing became available within the timeout.
            PoolExhaustedError: ``max_active`` connections are open and none is idle.
            PoolClosedError: the pool is, or gets, closed.
            Exception: a dial error (after retries) or an ``on_get`` hook's error, for the
                caller first in line when it happened.
        """
        if self._idle and not self._waiters and not self._closed:
            entry = self._take_idle()
            if entry is not None:
                self._hits += 1
                return entry.conn
        return await self._get_slow()

    def put(self, conn: C) -> None:
        """Give back a connection that :meth:`get` returned. Synchronous.

        A broken connection is closed. One that owes replies becomes UNUSABLE, is drained in the
        background, then reused. One that a hook (or the connection) moved to UNUSABLE stays with
        that job, quietly. Otherwise it goes IN_USE -> IDLE (which first serves any job waiting
        for it to be IDLE), then to the first parked get, else to the idle list.

        Raises:
            ReleaseError: released twice, or never handed out by this pool.
        """
        entry = self._entries.get(conn.id)
        if entry is None or entry.conn is not conn or entry.place is not _Place.IN_USE:
            if entry is None and self._closed:
                return  # aclose() has closed it already
            raise ReleaseError(
                f"connection {conn.id} released to pool {self.node_name} but it is not out"
                " (double release, or not from this pool)"
            )
        conn.last_used_at = trio.current_time()
        self._release(entry, from_caller=True)

    def return_from_background(self, conn: C) -> None:
        """Give back a connection a background job owned (UNUSABLE or INITIALIZING, or already
        moved to IDLE by the job). It becomes IDLE and goes to the first parked get, else to the
        idle list. A CLOSED one is forgotten.

        Raises:
            ReleaseError: the pool does not own it, a caller holds it, or no job had it.
        """
        entry = self._entries.get(conn.id)
        if entry is None or entry.conn is not conn:
            if entry is None and self._closed:
                return
            raise ReleaseError(f"connection {conn.id} is not in pool {self.node_name}")
        state = conn.state.state
        if entry.place is _Place.IN_USE or state is _IN_USE or state is ConnState.CREATED:
            raise ReleaseError(
                f"connection {conn.id} is held by a caller ({state.name}), not by a background job"
            )
        if entry.place is _Place.IDLE:
            if state is _IDLE:
                raise ReleaseError(f"connection {conn.id} is idle, not in the background")
            # Claimed straight out of the idle deque (IDLE -> UNUSABLE) before the pool noticed.
            self._idle.remove(entry)
            entry.place = _Place.BACKGROUND
        if state is _UNUSABLE or state is _INITIALIZING:
            conn.state.transition(_IDLE)  # may be claimed at once by the next waiting job
        self._release(entry, from_caller=False)

    def _release(self, entry: _Entry[C], *, from_caller: bool) -> None:
        """The one release decision, for a caller's :meth:`put` (the connection is IN_USE) and
        a background job's :meth:`return_from_background` (it is IDLE by now).

        A connection moved meanwhile (by itself or a job) is settled where its state says; a
        broken one is closed; one that owes replies is drained; a caller's goes past the hooks;
        an expired one is closed; otherwise it serves the next get (a caller's goes IN_USE ->
        IDLE first, which serves jobs waiting for IDLE before any get: go-redis #4027).
        """
        conn = entry.conn
        sm = conn.state
        if sm.state is not (_IN_USE if from_caller else _IDLE):
            self._settle(entry)  # moved by the connection or a job
        elif conn.broken:
            self._remove(entry, CloseReason.BROKEN)
        elif conn.owed_replies:
            self._start_drain(entry)
        elif from_caller and self._hooks and not self._put_hooks_keep(entry):
            pass  # the hooks' verdict has been carried out
        elif trio.current_time() >= entry.expires_at:
            self._remove(entry, CloseReason.LIFETIME)
        elif from_caller:
            sm.transition(_IDLE)
            self._settle(entry)
        else:
            self._offer(entry, is_new=False)

    # --- hooks -------------------------------------------------------------------------------

    def add_hook(self, hook: PoolHook[C]) -> None:
        """Register a hook; it runs after those already registered."""
        self._hooks = (*self._hooks, hook)

    def remove_hook(self, hook: PoolHook[C]) -> None:
        """Unregister a hook (``ValueError`` if it is not registered)."""
        hooks = list(self._hooks)
        hooks.remove(hook)
        self._hooks = tuple(hooks)

    # --- introspection -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has begun."""
        return self._closed

    def stats(self) -> PoolStats:
        """A snapshot of the counters and of where the connections are."""
        by_state: collections.Counter[ConnState] = collections.Counter(
            e.conn.state.state for e in self._entries.values()
        )
        return PoolStats(
            node=self.node_name,
            hits=self._hits,
            misses=self._misses,
            timeouts=self._timeouts,
            waits=self._waits,
            wait_time_total=self._wait_time,
            total_connections=len(self._entries) + len(self._closing),
            idle_connections=by_state[_IDLE],
            in_use_connections=by_state[_IN_USE],
            unusable_connections=by_state[_UNUSABLE] + by_state[_INITIALIZING],
            closing_connections=len(self._closing),
            pending_waiters=len(self._waiters),
            dials=self._dials,
            dial_errors=self._dial_errors,
            dials_in_progress=self._dialing,
            closes=dict(self._closes),
        )

    def live_connections(self) -> list[C]:
        """The connection objects the pool owns right now (not those being closed), for
        background jobs that must visit each one (re-authentication, handoff)."""
        return [entry.conn for entry in self._entries.values()]

    def owns(self, conn: C) -> bool:
        """Whether ``conn`` belongs to this pool."""
        entry = self._entries.get(conn.id)
        return entry is not None and entry.conn is conn

    def connections(self) -> list[ConnectionInfo]:
        """Every connection the pool has open (closing ones included), oldest first."""
        conns = [e.conn for e in self._entries.values()] + list(self._closing.values())
        conns.sort(key=lambda c: (c.created_at, c.id))
        return [
            ConnectionInfo(c.id, self.node_name, c.state.state, c.created_at, c.last_used_at)
            for c in conns
        ]

    # --- the decisions (all synchronous) -----------------------------------------------------

    def _take_idle(self) -> _Entry[C] | None:
        """Pop idle connections until one is healthy and accepted; mark it IN_USE."""
        idle = self._idle
        pop = self._pop_idle
        taken: _Entry[C] | None = None
        while idle:
            entry = pop()
            if entry.conn.state.state is not _IDLE:
                # Claimed by a background job, or closed: not an attempt, just not ours now.
                self._settle(entry)
                continue
            reason = self._stale_reason(entry, trio.current_time())
            if reason is not None:
                self._remove(entry, reason)
            elif self._hooks and not self._get_hooks_accept(entry, is_new=False):
                pass  # the hooks' verdict has been carried out
            else:
                entry.conn.state.transition(_IN_USE)
                entry.place = _Place.IN_USE
                taken = entry
                break
        if self.options.min_idle and len(idle) < self.options.min_idle:
            self._schedule_dials()
        return taken

    async def _get_slow(self) -> C:
        if self._closed:
            raise PoolClosedError(f"pool for {self.node_name} is closed")
        if self._jobs is None:
            raise RuntimeError(
                f"pool for {self.node_name} is not running: use `async with` or start_background()"
            )
        if self.options.max_active and self._open_count() >= self.options.max_active:
            raise PoolExhaustedError(
                f"pool for {self.node_name} has max_active={self.options.max_active}"
                " connections open and none idle"
            )
        start = trio.current_time()
        waiter = _Waiter(trio.lowlevel.current_task(), start + self.timeout)
        self._waiters.append(waiter)
        self._waits += 1
        if len(self._waiters) == 1 and self._timer_scope is not None:
            self._timer_scope.deadline = waiter.deadline  # the timer was idle
        self._schedule_dials()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Runs only while still parked: nothing was handed to us, so nothing can leak.
            self._waiters.remove(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        try:
            # Served by a hand-off (Value), failed by the timer / a dial error / aclose (Error),
            # or cancelled from outside (abort). No cancel scope of our own: see _expire_waiters.
            conn: C = await trio.lowlevel.wait_task_rescheduled(abort)
            return conn
        finally:
            self._wait_time += trio.current_time() - start

    def _stale_reason(self, entry: _Entry[C], now: float) -> CloseReason | None:
        """Why an IDLE connection must not be reused (cheapest check first), or None."""
        if now >= entry.expires_at:
            return CloseReason.LIFETIME
        max_idle_time = self.options.max_idle_time
        if max_idle_time is not None and now - entry.conn.last_used_at >= max_idle_time:
            return CloseReason.IDLE_TIME
        if entry.conn.peer_closed():
            return CloseReason.PEER_CLOSED
        return None

    def _settle(self, entry: _Entry[C]) -> None:
        """Place a connection that nobody holds (not in the idle deque), by its state."""
        state = entry.conn.state.state
        if state is _IDLE:
            self._offer(entry, is_new=False)
        elif state is _CLOSED:
            self._remove(entry, CloseReason.CLOSED_ELSEWHERE)
        else:
            # UNUSABLE / INITIALIZING: a background job owns it and will return it.
            entry.place = _Place.BACKGROUND

    def _offer(self, entry: _Entry[C], is_new: bool) -> None:
        """An IDLE connection nobody holds: to the first parked get, else to the idle list."""
        if self._waiters:
            if self._hooks:
                try:
                    if not self._get_hooks_accept(entry, is_new):
                        return
                except Exception as exc:
                    trio.lowlevel.reschedule(self._waiters.popleft().task, outcome.Error(exc))
                    return
            entry.conn.state.transition(_IN_USE)
            entry.place = _Place.IN_USE
            if is_new:
                self._misses += 1
            else:
                self._hits += 1
            trio.lowlevel.reschedule(self._waiters.popleft().task, outcome.Value(entry.conn))
        elif self.options.max_idle and len(self._idle) >= self.options.max_idle:
            self._remove(entry, CloseReason.MAX_IDLE)
        else:
            entry.place = _Place.IDLE
            self._idle.append(entry)

    def _get_hooks_accept(self, entry: _Entry[C], is_new: bool) -> bool:
        """Run the ``on_get`` hooks. On False the entry has been disposed of; if a hook raises,
        the entry is removed and the exception propagates."""
        conn = entry.conn
        for hook in self._hooks:
            try:
                ok = hook.on_get(conn, is_new)
            except Exception:
                self._remove(entry, CloseReason.HOOK_ERROR)
                raise
            if not ok or conn.state.state is not _IDLE:
                if conn.state.state is _IDLE:
                    self._remove(entry, CloseReason.HOOK_REJECTED)
                else:
                    self._settle(entry)  # the hook claimed (UNUSABLE) or closed it
                return False
        return True

    def _put_hooks_keep(self, entry: _Entry[C]) -> bool:
        """Run the ``on_put`` hooks. On False the entry has been disposed of."""
        conn = entry.conn
        for hook in self._hooks:
            try:
                keep = hook.on_put(conn)
            except Exception:
                logger.exception("pool %s: on_put hook %r failed", self.node_name, hook)
                self._remove(entry, CloseReason.HOOK_ERROR)
                return False
            if not keep:
                self._remove(entry, CloseReason.HOOK_REMOVED)
                return False
            if conn.state.state is not _IN_USE:
                self._settle(entry)  # e.g. marked UNUSABLE for handoff: its job owns it now
                return False
        return True

    def _run_on_remove(self, conn: C, reason: CloseReason) -> None:
        for hook in self._hooks:
            try:
                hook.on_remove(conn, reason)
            except Exception:
                logger.exception("pool %s: on_remove hook %r failed", self.node_name, hook)

    def _remove(self, entry: _Entry[C], reason: CloseReason) -> None:
        """Forget a connection (which is not in the idle deque) and close it in the background."""
        conn = entry.conn
        del self._entries[conn.id]
        entry.place = _Place.GONE
        self._closes[reason] += 1
        self._run_on_remove(conn, reason)
        self._closing[conn.id] = conn
        self._spawn(self._close_one, conn)

    def _start_drain(self, entry: _Entry[C]) -> None:
        entry.conn.state.transition(_UNUSABLE)
        entry.place = _Place.BACKGROUND
        self._spawn(self._drain, entry)

    def _open_count(self) -> int:
        return len(self._entries) + self._dialing + len(self._closing)

    def _schedule_dials(self) -> None:
        """Start as many dials as parked gets and min_idle need, within the size cap."""
        if self._closed or self._jobs is None:
            return
        room = self._cap - self._open_count()
        if room <= 0:
            return
        demand = len(self._waiters)
        min_idle = self.options.min_idle
        if min_idle and trio.current_time() >= self._last_dial_failure + _MIN_IDLE_RETRY_DELAY:
            # Filling min_idle is background work: a bounded number of dials at a time, so a
            # large min_idle never floods the node (or this process) with handshakes that
            # then time out and retry, which can livelock.
            demand += min(max(0, min_idle - len(self._idle)), _MAX_FILL_DIALS)
        for _ in range(min(room, demand - self._dialing)):
            self._dialing += 1
            self._jobs.start_soon(self._dial_one)

    def spawn_job(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in the pool's nursery (an automatic-pipelining batch): it ends, at the
        latest, when the pool is closed.  ``PoolClosedError`` once the pool is closed."""
        if self._closed or self._jobs is None:
            raise mark_unsent(PoolClosedError(f"pool for {self.node_name} is closed"))
        self._jobs.start_soon(fn)

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._jobs is None:
            raise RuntimeError(f"pool for {self.node_name} is not running")
        self._jobs.start_soon(fn, *args)

    def _expiry(self) -> float:
        lifetime = self.options.max_lifetime
        if lifetime is None:
            return math.inf
        jitter = self.options.lifetime_jitter
        if jitter:
            lifetime *= 1 + random.uniform(-jitter, jitter)
        return trio.current_time() + lifetime

    # --- jobs: the I/O the decisions imply ---------------------------------------------------

    async def _dial_one(self) -> None:
        try:
            try:
                conn = await self._dial_with_retries()
            finally:
                self._dialing -= 1
        except Exception as exc:
            self._on_dial_failed(exc)
            return
        if self._dial_failures_in_row:
            logger.info(
                "pool %s: dialling works again after %d failed dials",
                self.node_name,
                self._dial_failures_in_row,
            )
            self._dial_failures_in_row = 0
        entry = _Entry(conn, self._expiry())
        self._entries[conn.id] = entry
        if self._closed:
            self._remove(entry, CloseReason.POOL_CLOSED)
        elif conn.state.state is not _IDLE:
            logger.error(
                "pool %s: dial returned connection %d in state %s, not IDLE",
                self.node_name,
                conn.id,
                conn.state.state.name,
            )
            self._remove(entry, CloseReason.BAD_STATE)
        else:
            self._offer(entry, is_new=True)
        self._schedule_dials()  # min_idle filling goes on, a bounded batch at a time

    async def _dial_with_retries(self) -> C:
        opts = self.options
        attempt = 0
        while True:
            self._dials += 1
            try:
                return await self._dial()
            except rex.AuthenticationError:
                self._dial_errors += 1
                raise  # retrying cannot fix credentials
            except (rex.ConnectionError, rex.TimeoutError, OSError):
                self._dial_errors += 1
                if attempt >= opts.dial_retries:
                    raise
            except Exception:
                self._dial_errors += 1
                raise
            await trio.sleep(opts.dial_backoff * 2**attempt)
            attempt += 1

    def _on_dial_failed(self, exc: Exception) -> None:
        self._dial_failures_in_row += 1
        self._last_dial_failure = trio.current_time()
        # Log the first failure of a run; the rest at debug (an outage fails every dial).
        level = logging.WARNING if self._dial_failures_in_row == 1 else logging.DEBUG
        logger.log(level, "pool %s: dial failed: %s: %s", self.node_name, type(exc).__name__, exc)
        # A parked get that no other in-flight dial is coming for gets the error now, rather
        # than a timeout later.
        if len(self._waiters) > self._dialing:
            trio.lowlevel.reschedule(self._waiters.popleft().task, outcome.Error(exc))
        self._wake_maintenance(self._last_dial_failure + _MIN_IDLE_RETRY_DELAY)
        self._schedule_dials()

    async def _close_one(self, conn: C) -> None:
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
                await conn.aclose()
        except Exception as exc:
            logger.debug("pool %s: closing connection %d: %s", self.node_name, conn.id, exc)
        finally:
            if conn.state.state is not _CLOSED:
                conn.state.transition(_CLOSED)  # fail anyone waiting on it, whatever aclose did
            del self._closing[conn.id]
            self._schedule_dials()  # capacity freed: waiters / min_idle

    async def _drain(self, entry: _Entry[C]) -> None:
        conn = entry.conn
        try:
            await conn.drain()
            ok = conn.owed_replies == 0 and not conn.broken
        except Exception as exc:
            logger.debug("pool %s: draining connection %d: %s", self.node_name, conn.id, exc)
            ok = False
        if entry.place is not _Place.BACKGROUND:
            return  # the pool was closed meanwhile and has closed it
        if not ok:
            self._remove(entry, CloseReason.DRAIN_FAILED)
            return
        if conn.state.state is _UNUSABLE:
            conn.state.transition(_IDLE)  # serves jobs waiting for IDLE first
        self._settle(entry)

    async def _maintain(self) -> None:
        """Reap expired idle connections and refill min_idle, sleeping until the next moment
        something can expire (no fixed polling interval)."""
        while True:
            with trio.move_on_at(self._next_maintenance()) as scope:
                self._maint_scope = scope
                await trio.sleep_forever()
            self._maint_scope = None
            self._reap()
            self._schedule_dials()

    async def _expire_waiters(self) -> None:
        """Fail parked gets whose deadline has passed with ``PoolTimeoutError``.

        One task for the whole pool instead of a cancel scope per parked get (a scope costs
        microseconds on every wait, about 4 us with a deadline). Deadlines rise from the head of
        the queue to its tail, so only the head needs watching. When the head leaves early the
        timer wakes at a stale (earlier) deadline, finds nothing due and sleeps again.
        """
        while True:
            deadline = self._waiters[0].deadline if self._waiters else math.inf
            with trio.move_on_at(deadline) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            while self._waiters and self._waiters[0].deadline <= now:
                waiter = self._waiters.popleft()
                self._timeouts += 1
                error = PoolTimeoutError(
                    f"no connection to {self.node_name} became available within"
                    f" {self.timeout:g} s (pool size {self.options.size})"
                )
                trio.lowlevel.reschedule(waiter.task, outcome.Error(error))

    def _wake_maintenance(self, at: float) -> None:
        if self._maint_scope is not None and at < self._maint_scope.deadline:
            self._maint_scope.deadline = at

    def _next_maintenance(self) -> float:
        now = trio.current_time()
        opts = self.options
        soonest = math.inf
        if opts.max_idle_time is not None:
            # Whatever is released from now on cannot expire sooner than this.
            soonest = now + opts.max_idle_time
            for entry in self._idle:
                soonest = min(soonest, entry.conn.last_used_at + opts.max_idle_time)
        if opts.max_lifetime is not None:
            soonest = min(soonest, now + opts.max_lifetime * (1 - opts.lifetime_jitter))
            for entry in self._idle:
                soonest = min(soonest, entry.expires_at)
        retry_at = self._last_dial_failure + _MIN_IDLE_RETRY_DELAY
        if opts.min_idle and len(self._idle) < opts.min_idle and retry_at > now:
            # Refill min_idle again once the back-off after a failed dial is over. (Only a
            # future time: a past one would make this loop spin without ever sleeping.)
            soonest = min(soonest, retry_at)
        return soonest

    def _reap(self) -> None:
        now = trio.current_time()
        keep: list[_Entry[C]] = []
        doomed: list[tuple[_Entry[C], CloseReason | None]] = []
        for entry in self._idle:
            if entry.conn.state.state is not _IDLE:
                doomed.append((entry, None))  # claimed by a job meanwhile: settle it
            elif (reason := self._stale_reason(entry, now)) is not None:
                doomed.append((entry, reason))
            else:
                keep.append(entry)
        if not doomed:
            return
        self._idle.clear()
        self._idle.extend(keep)  # in place: _pop_idle is bound to this deque
        for entry, why in doomed:
            if why is None:
                self._settle(entry)
            else:
                self._remove(entry, why)
        # One line per sweep, never one per connection.
        logger.debug("pool %s: reaped %d idle connections", self.node_name, len(doomed))
