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
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic

import outcome
import trio

from ..conn.connection import mark_unsent
from ..conn.state import ConnState
from ..errors import PoolClosedError, ReleaseError
from ..lifetime import NurseryOwner
from .autopipeline import AutoPipeliner
from .background import Background, Entry, Place, Waiter
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
        self._entries: dict[int, Entry[C]] = {}
        self._idle: collections.deque[Entry[C]] = collections.deque()
        # LIFO takes the most recently released connection (the right end); FIFO the oldest.
        self._pop_idle = self._idle.popleft if opts.fifo else self._idle.pop
        # Every waiter gets the same timeout, so deadlines rise from head to tail and one timer
        # task watching the head replaces a cancel scope per parked get.
        self._waiters: collections.deque[Waiter] = collections.deque()
        self._closing: dict[int, C] = {}
        self._dialing = 0
        self._hooks: tuple[PoolHook[C], ...] = ()
        #: The nursery of the pool's own jobs (dials, drains, batches) while it runs.
        self._jobs: trio.Nursery | None = None
        self._started = False
        self._stopped = trio.Event()
        self._closed = False
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
        #: Parking gets and the pool's jobs: dials, closes, drains, maintenance, shutdown.
        self._bg: Background[C] = Background(self)

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
            conns = self._bg.shut_down()
            if self._jobs is not None:
                self._jobs.cancel_scope.cancel()
            await self._bg.close_all(conns)
        if self._started:
            await self._stopped.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._jobs = nursery
                nursery.start_soon(self._bg.maintain)
                nursery.start_soon(self._bg.expire_waiters)
                self._bg.schedule_dials()  # pre-warm min_idle
                task_status.started()
        finally:
            self._jobs = None
            # Reached after aclose(), or when the owner's nursery is cancelled: either way
            # nothing may outlive the pool.
            if not self._closed:
                await self._bg.close_all(self._bg.shut_down())
            self._stopped.set()

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
        conn = self.get_idle()
        if conn is not None:
            return conn
        return await self._bg.get_slow()

    def get_idle(self) -> C | None:
        """:meth:`get`'s fast path, synchronous: a healthy idle connection (IN_USE now) if
        one is there and nobody is waiting, else None (then :meth:`get` waits, or dials)."""
        if self._idle and not self._waiters and not self._closed:
            entry = self._take_idle()
            if entry is not None:
                self._hits += 1
                return entry.conn
        return None

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
        if entry is None or entry.conn is not conn or entry.place is not Place.IN_USE:
            if entry is None and self._closed:
                return  # aclose() has closed it already
            raise ReleaseError(
                f"connection {conn.id} released to pool {self.node_name} but it is not out"
                " (double release, or not from this pool)"
            )
        now = conn.last_used_at = trio.current_time()
        self._release(entry, now, from_caller=True)

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
        if entry.place is Place.IN_USE or state is _IN_USE or state is ConnState.CREATED:
            raise ReleaseError(
                f"connection {conn.id} is held by a caller ({state.name}), not by a background job"
            )
        if entry.place is Place.IDLE:
            if state is _IDLE:
                raise ReleaseError(f"connection {conn.id} is idle, not in the background")
            # Claimed straight out of the idle deque (IDLE -> UNUSABLE) before the pool noticed.
            self._idle.remove(entry)
            entry.place = Place.BACKGROUND
        if state is _UNUSABLE or state is _INITIALIZING:
            conn.state.transition(_IDLE)  # may be claimed at once by the next waiting job
        self._release(entry, trio.current_time(), from_caller=False)

    def _release(self, entry: Entry[C], now: float, *, from_caller: bool) -> None:
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
            self._remove(
                entry, CloseReason.UNSOLICITED_REPLY if conn.out_of_step else CloseReason.BROKEN
            )
        elif conn.owed_replies:
            self._start_drain(entry)
        elif from_caller and self._hooks and not self._put_hooks_keep(entry):
            pass  # the hooks' verdict has been carried out
        elif now >= entry.expires_at:
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

    def _take_idle(self) -> Entry[C] | None:
        """Pop idle connections until one is healthy and accepted; mark it IN_USE."""
        idle = self._idle
        pop = self._pop_idle
        taken: Entry[C] | None = None
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
                entry.place = Place.IN_USE
                taken = entry
                break
        if self.options.min_idle and len(idle) < self.options.min_idle:
            self._bg.schedule_dials()
        return taken

    def _stale_reason(self, entry: Entry[C], now: float) -> CloseReason | None:
        """Why an IDLE connection must not be reused (cheapest check first), or None."""
        if now >= entry.expires_at:
            return CloseReason.LIFETIME
        max_idle_time = self.options.max_idle_time
        if max_idle_time is not None and now - entry.conn.last_used_at >= max_idle_time:
            return CloseReason.IDLE_TIME
        if entry.conn.peer_closed():
            if entry.conn.out_of_step:
                return CloseReason.UNSOLICITED_REPLY
            return CloseReason.PEER_CLOSED
        return None

    def _settle(self, entry: Entry[C]) -> None:
        """Place a connection that nobody holds (not in the idle deque), by its state."""
        state = entry.conn.state.state
        if state is _IDLE:
            self._offer(entry, is_new=False)
        elif state is _CLOSED:
            self._remove(entry, CloseReason.CLOSED_ELSEWHERE)
        else:
            # UNUSABLE / INITIALIZING: a background job owns it and will return it.
            entry.place = Place.BACKGROUND

    def _offer(self, entry: Entry[C], is_new: bool) -> None:
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
            entry.place = Place.IN_USE
            if is_new:
                self._misses += 1
            else:
                self._hits += 1
            trio.lowlevel.reschedule(self._waiters.popleft().task, outcome.Value(entry.conn))
        elif self.options.max_idle and len(self._idle) >= self.options.max_idle:
            self._remove(entry, CloseReason.MAX_IDLE)
        else:
            entry.place = Place.IDLE
            self._idle.append(entry)

    def _get_hooks_accept(self, entry: Entry[C], is_new: bool) -> bool:
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

    def _put_hooks_keep(self, entry: Entry[C]) -> bool:
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

    def _remove(self, entry: Entry[C], reason: CloseReason) -> None:
        """Forget a connection (which is not in the idle deque) and close it in the background."""
        conn = entry.conn
        del self._entries[conn.id]
        entry.place = Place.GONE
        self._closes[reason] += 1
        self._run_on_remove(conn, reason)
        self._closing[conn.id] = conn
        self._spawn(self._bg.close_one, conn)

    def _start_drain(self, entry: Entry[C]) -> None:
        entry.conn.state.transition(_UNUSABLE)
        entry.place = Place.BACKGROUND
        self._spawn(self._bg.drain, entry)

    def _open_count(self) -> int:
        return len(self._entries) + self._dialing + len(self._closing)

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

    # --- jobs: the I/O the decisions imply ---------------------------------------------------
