"""The per-node connection pool: it alone moves its connections.

Every decision (which connection, who gets it, whether to dial, drain or close) is taken
synchronously, with no ``await`` in between, so it is atomic under trio. The I/O a decision
implies (dial, close, drain) runs afterwards as a job in the pool's own nursery
(:mod:`~trio_cluster.pooling.background`), which reports back for the next decision. Callers
that find no idle connection park in one FIFO queue (a :class:`~.parking.Lot`); a connection
that becomes free (released, dialled, drained, given back by a job) goes *directly* to whoever
is first in line, so a newcomer can never barge ahead. Dials belong to the pool, not to the
caller that triggered them, so a caller that gives up never leaks a half-made connection.

A connection's state is its place (:data:`~trio_cluster.conn.state.HOLDER`):

* IDLE: in the idle list, always (between two decisions), and nowhere else;
* IN_USE: held by the one caller :meth:`Pool.get` handed it to;
* UNUSABLE or INITIALIZING: held by one job: the pool's drain, or a job that claimed it
  (:meth:`Pool.claim_now`, :meth:`Pool.claim_when_idle`, or a :class:`Claimant` before a
  hand-out), which gives it back with :meth:`Pool.give_back`;
* CLOSED: removed; counted as closing until its socket is closed.

Only the pool makes these moves (a job may move the connection it holds between UNUSABLE and
INITIALIZING, or close it), so the pool never has to find out where a connection went. Jobs
waiting to claim a busy connection park here too, and are served before any caller when it
comes back, so a release can never slip past them (go-redis #4027). Open connections plus
dials in flight never exceed ``size`` (or ``max_active`` when that is smaller).
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any, Generic

import trio

from ..conn.connection import mark_unsent
from ..conn.state import ConnState
from ..errors import PoolClosedError, PoolExhaustedError, PoolTimeoutError, ReleaseError
from ..lifetime import NurseryOwner
from .autopipeline import AutoPipeliner, BatchBreaker
from .background import Background, Timer
from .parking import Lot
from .pooltypes import (
    C,
    Claimant,
    CloseReason,
    ConnectionInfo,
    PoolableConnection,
    PoolOptions,
    PoolStats,
)

__all__ = [
    "Claimant",
    "CloseReason",
    "ConnectionInfo",
    "Pool",
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
#: Most dials in flight at once to fill ``min_idle`` (callers' own dials are not limited).
_MAX_FILL_DIALS = 32


class Entry(Generic[C]):
    """The pool's record of one connection it owns."""

    __slots__ = ("conn", "expires_at")

    def __init__(self, conn: C, expires_at: float) -> None:
        self.conn = conn
        self.expires_at = expires_at


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
        dial_timeout: bounds each dial, retries included (the client's connect timeout).
        breaker: the node's circuit breaker, consulted once per automatic-pipelining batch.
    """

    def __init__(
        self,
        dial: Callable[[], Awaitable[C]],
        options: PoolOptions | None = None,
        *,
        node_name: str,
        timeout: float,
        dial_timeout: float | None = None,
        breaker: BatchBreaker | None = None,
    ) -> None:
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(
                f"Pool timeout must be a number > 0 (math.inf = none), got {timeout!r}"
            )
        opts = options if options is not None else PoolOptions()
        self.options = opts
        self.node_name = node_name
        self.timeout = float(timeout)
        self._cap = min(opts.size, opts.max_active) if opts.max_active else opts.size
        self._entries: dict[int, Entry[C]] = {}
        # The idle list, in release order: LIFO takes the last released (a dict pops its last
        # item), FIFO the oldest. A mapping, so a job claims any idle connection in O(1).
        self._idle: dict[int, Entry[C]]
        self._pop_idle: Callable[[], tuple[int, Entry[C]]]
        if opts.fifo:
            fifo: collections.OrderedDict[int, Entry[C]] = collections.OrderedDict()
            self._idle, self._pop_idle = fifo, functools.partial(fifo.popitem, False)
        else:
            self._idle = {}
            self._pop_idle = self._idle.popitem
        # Every get parks with the same timeout, so deadlines rise from head to tail and one
        # timer watching the head serves them all.
        self._waiters: Lot[C] = Lot()
        self._waiter_timer = Timer(self._waiters.first_deadline, self._expire_waiters)
        #: Jobs waiting to claim a connection, by connection id.
        self._claims: dict[int, Lot[bool]] = {}
        self._claimants: tuple[Claimant[C], ...] = ()
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
        self._closes: collections.Counter[str] = collections.Counter()
        self._bg: Background[C] = Background(
            dial,
            opts,
            node_name,
            dial_timeout=dial_timeout,
            spawn=self._spawn,
            dialled=self._accept,
            dial_failed=self._dial_failed,
            closed=self._schedule_dials,
            drained=self._drained,
        )
        self._maintenance = Timer(self._next_maintenance, self._maintain)
        #: The queue and batches of automatic pipelining (``options.autopipeline``), or None.
        self.autopipeliner = AutoPipeliner(self, breaker) if opts.autopipeline else None

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
            await self._bg.close_all(conns)
        if self._started:
            await self._stopped.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._jobs = nursery
                nursery.start_soon(self._maintenance.run)
                nursery.start_soon(self._waiter_timer.run)
                self._schedule_dials()  # pre-warm min_idle
                task_status.started()
        finally:
            self._jobs = None
            # Reached after aclose(), or when the owner's nursery is cancelled: either way
            # nothing may outlive the pool.
            if not self._closed:
                await self._bg.close_all(self._shut_down())
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
            Exception: a dial error (after retries), for the caller first in line when it
                happened.
        """
        conn = self.get_idle()
        if conn is not None:
            return conn
        return await self._park()

    def get_idle(self) -> C | None:
        """:meth:`get`'s fast path, synchronous: a healthy idle connection (IN_USE now) if
        one is there and nobody is waiting, else None (then :meth:`get` waits, or dials)."""
        if self._idle and not self._waiters and not self._closed:
            entry = self._take_idle()
            if entry is not None:
                self._hits += 1
                return entry.conn
        return None

    async def _park(self) -> C:
        """:meth:`get`'s slow path: wait in line until a connection is handed over, a dial
        fails for this caller, the timeout passes, or the pool closes."""
        if self._closed:
            raise PoolClosedError(f"pool for {self.node_name} is closed")
        if self._jobs is None:
            raise RuntimeError(
                f"pool for {self.node_name} is not running: use `async with` or start_background()"
            )
        max_active = self.options.max_active
        if max_active and self._open_count() >= max_active:
            raise PoolExhaustedError(
                f"pool for {self.node_name} has max_active={max_active} connections open and"
                " none idle"
            )
        start = trio.current_time()
        deadline = start + self.timeout
        if not self._waiters:
            self._waiter_timer.wake_by(deadline)  # this caller heads the line
        self._waits += 1
        self._schedule_dials(parking=1)  # the dials start after this caller has parked
        try:
            return await self._waiters.park(deadline)
        finally:
            self._wait_time += trio.current_time() - start

    def put(self, conn: C) -> None:
        """Give back a connection that :meth:`get` returned. Synchronous.

        A broken connection is closed. One that owes replies is drained in the background,
        then reused. Otherwise it goes to the first job waiting to claim it, else to the first
        parked get, else to the idle list.

        Raises:
            ReleaseError: released twice, or never handed out by this pool.
        """
        entry = self._entries.get(conn.id)
        if entry is None or entry.conn is not conn or conn.state.state is not _IN_USE:
            self._check_given_back(entry, conn, "released to", "it is not out (double release?)")
            return
        self._release(entry, trio.current_time(), caller=True)

    def give_back(self, conn: C) -> None:
        """A job is done with a connection it claimed (UNUSABLE or INITIALIZING, or CLOSED if
        the job closed it). Decided as a caller's release is: closed if broken, drained if it
        owes replies, else to the next claimer, parked get or the idle list.

        Raises:
            ReleaseError: not this pool's, or held by a caller or idle (no job had it).
        """
        entry = self._entries.get(conn.id)
        state = conn.state.state
        if (
            entry is None
            or entry.conn is not conn
            or (state is not _UNUSABLE and state is not _INITIALIZING and state is not _CLOSED)
        ):
            self._check_given_back(entry, conn, "given back to", f"no job holds it ({state.name})")
            return
        self._release(entry, trio.current_time(), caller=False)

    def _check_given_back(self, entry: Entry[C] | None, conn: C, verb: str, why: str) -> None:
        """A release that :meth:`put` / :meth:`give_back` did not expect: quietly done if the
        pool was closed meanwhile (it closed the connection), else a ``ReleaseError``."""
        if entry is None and self._closed:
            return
        if entry is None or entry.conn is not conn:
            why = "it is not from this pool"
        raise ReleaseError(f"connection {conn.id} {verb} pool {self.node_name} but {why}")

    def _release(self, entry: Entry[C], now: float, *, caller: bool) -> None:
        """The one decision for a connection its holder gave back: closed if closed or
        broken, drained if it owes replies, closed if past its lifetime, else offered."""
        conn = entry.conn
        if caller:
            conn.last_used_at = now
        state = conn.state.state
        if state is _CLOSED:
            self._remove(entry, CloseReason.CLOSED_ELSEWHERE)
        elif conn.broken:
            self._remove(entry, CloseReason.BROKEN)
        elif conn.owed_replies:
            if state is not _UNUSABLE:
                conn.state.transition(_UNUSABLE)
            self._bg.drain(conn)
        elif now >= entry.expires_at:
            self._remove(entry, CloseReason.LIFETIME)
        else:
            conn.state.transition(_IDLE)
            self._offer(entry, is_new=False)

    # --- claims: jobs that take connections ------------------------------------------------

    def claim_now(self, conn: C) -> bool:
        """Claim ``conn`` for a job if it is idle (IDLE -> UNUSABLE); returns whether it did
        (False: a caller or another job holds it, or it is not this pool's). The job gives it
        back with :meth:`give_back`."""
        entry = self._idle.get(conn.id)
        if entry is None or entry.conn is not conn:
            return False
        del self._idle[conn.id]
        conn.state.transition(_UNUSABLE)
        return True

    async def claim_when_idle(self, conn: C) -> bool:
        """Claim ``conn`` for a job as soon as nobody holds it: at once if it is idle, else the
        moment its caller or job gives it back, before any caller can get it (jobs waiting for
        one connection are served in arrival order). Returns True once claimed (UNUSABLE: give
        it back with :meth:`give_back`); False if it is closed, or the pool is, first.

        Always a checkpoint. Cancel-safe: cancelled while waiting, it claims nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        entry = self._entries.get(conn.id)
        if self.claim_now(conn) or entry is None or entry.conn is not conn:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return entry is not None and entry.conn is conn
        lot = self._claims.get(conn.id)
        if lot is None:
            lot = self._claims[conn.id] = Lot()
        try:
            return await lot.park()
        finally:
            if not lot and self._claims.get(conn.id) is lot:
                del self._claims[conn.id]

    def add_claimant(self, claimant: Claimant[C]) -> None:
        """Ask ``claimant`` about every connection before it is handed out (after those
        already registered)."""
        self._claimants = (*self._claimants, claimant)

    def remove_claimant(self, claimant: Claimant[C]) -> None:
        """Stop asking ``claimant`` (``ValueError`` if it is not registered)."""
        claimants = list(self._claimants)
        claimants.remove(claimant)
        self._claimants = tuple(claimants)

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
        closing = len(self._bg.closing)
        return PoolStats(
            node=self.node_name,
            hits=self._hits,
            misses=self._misses,
            timeouts=self._timeouts,
            waits=self._waits,
            wait_time_total=self._wait_time,
            total_connections=len(self._entries) + closing,
            idle_connections=by_state[_IDLE],
            in_use_connections=by_state[_IN_USE],
            unusable_connections=by_state[_UNUSABLE] + by_state[_INITIALIZING],
            closing_connections=closing,
            pending_waiters=len(self._waiters),
            dials=self._bg.dials,
            dial_errors=self._bg.dial_errors,
            dials_in_progress=self._bg.dialing,
            closes=dict(self._closes),
        )

    def live_connections(self) -> list[C]:
        """The connection objects the pool owns right now (not those being closed), for
        background jobs that must visit each one (re-authentication, handoff)."""
        return [entry.conn for entry in self._entries.values()]

    def idle_connections(self) -> list[C]:
        """The connections in the idle list right now (state IDLE)."""
        return [entry.conn for entry in self._idle.values()]

    def owns(self, conn: C) -> bool:
        """Whether ``conn`` belongs to this pool."""
        entry = self._entries.get(conn.id)
        return entry is not None and entry.conn is conn

    def connections(self) -> list[ConnectionInfo]:
        """Every connection the pool has open (closing ones included), oldest first."""
        conns = [e.conn for e in self._entries.values()] + list(self._bg.closing.values())
        conns.sort(key=lambda c: (c.created_at, c.id))
        return [
            ConnectionInfo(c.id, self.node_name, c.state.state, c.created_at, c.last_used_at)
            for c in conns
        ]

    def spawn_job(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in the pool's nursery (an automatic-pipelining batch): it ends, at the
        latest, when the pool is closed.  ``PoolClosedError`` once the pool is closed."""
        if self._closed or self._jobs is None:
            raise mark_unsent(PoolClosedError(f"pool for {self.node_name} is closed"))
        self._jobs.start_soon(fn)

    # --- the decisions (all synchronous) -----------------------------------------------------

    def _take_idle(self) -> Entry[C] | None:
        """Pop idle connections until one is healthy and no claimant wants it; mark it
        IN_USE."""
        idle = self._idle
        pop = self._pop_idle
        taken: Entry[C] | None = None
        while idle:
            entry = pop()[1]
            reason = self._stale_reason(entry, trio.current_time())
            if reason is not None:
                self._remove(entry, reason)
            elif not (self._claimants and self._claimed_by_claimant(entry.conn)):
                entry.conn.state.transition(_IN_USE)
                taken = entry
                break
        if self.options.min_idle and len(idle) < self.options.min_idle:
            self._schedule_dials()
        return taken

    def _stale_reason(self, entry: Entry[C], now: float) -> CloseReason | None:
        """Why an IDLE connection must not be reused (cheapest check first), or None."""
        if now >= entry.expires_at:
            return CloseReason.LIFETIME
        max_idle_time = self.options.max_idle_time
        if max_idle_time is not None and now - entry.conn.last_used_at >= max_idle_time:
            return CloseReason.IDLE_TIME
        if entry.conn.peer_closed():
            return CloseReason.PEER_CLOSED
        return None

    def _offer(self, entry: Entry[C], is_new: bool) -> None:
        """A connection nobody holds (IDLE, not in the idle list): to the first job waiting to
        claim it, else to the first parked get, else to the idle list."""
        conn = entry.conn
        if self._claims:
            lot = self._claims.get(conn.id)
            if lot:
                conn.state.transition(_UNUSABLE)
                lot.hand_first(True)
                return
        if self._waiters:
            if self._claimants and self._claimed_by_claimant(conn):
                return
            conn.state.transition(_IN_USE)
            if is_new:
                self._misses += 1
            else:
                self._hits += 1
            self._waiters.hand_first(conn)
        elif self.options.max_idle and len(self._idle) >= self.options.max_idle:
            self._remove(entry, CloseReason.MAX_IDLE)
        else:
            self._idle[conn.id] = entry

    def _claimed_by_claimant(self, conn: C) -> bool:
        """Before an IDLE connection is handed out: claim it for the first claimant that
        wants it (IDLE -> UNUSABLE) and hand it over; returns whether one did."""
        for claimant in self._claimants:
            if claimant.wants(conn):
                conn.state.transition(_UNUSABLE)
                claimant.take(conn)
                return True
        return False

    def _remove(self, entry: Entry[C], reason: CloseReason) -> None:
        """Forget a connection nobody holds (or that is in the idle list), mark it CLOSED,
        and close its socket in the background."""
        conn = entry.conn
        del self._entries[conn.id]
        self._idle.pop(conn.id, None)
        conn.state.transition(_CLOSED)
        self._closes[reason] += 1
        if self._claims:
            lot = self._claims.pop(conn.id, None)
            if lot:
                lot.hand_all(False)
        self._bg.close(conn)

    def _open_count(self) -> int:
        return len(self._entries) + self._bg.dialing + len(self._bg.closing)

    def _schedule_dials(self, parking: int = 0) -> None:
        """Start as many dials as parked gets (``parking`` more are about to park) and
        ``min_idle`` need, within the size cap."""
        if self._closed or self._jobs is None:
            return
        room = self._cap - self._open_count()
        if room <= 0:
            return
        demand = len(self._waiters) + parking
        min_idle = self.options.min_idle
        if min_idle and trio.current_time() >= self._bg.fill_resumes_at():
            # Filling min_idle is background work: a bounded number of dials at a time, so a
            # large min_idle never floods the node (or this process) with handshakes that
            # then time out and retry, which can livelock.
            demand += min(max(0, min_idle - len(self._idle)), _MAX_FILL_DIALS)
        count = min(room, demand - self._bg.dialing)
        if count > 0:
            self._bg.dial(count)

    def _expiry(self) -> float:
        """When a connection made now must be closed (``max_lifetime``, with jitter)."""
        lifetime = self.options.max_lifetime
        if lifetime is None:
            return math.inf
        jitter = self.options.lifetime_jitter
        if jitter:
            lifetime *= 1 + random.uniform(-jitter, jitter)
        return trio.current_time() + lifetime

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._jobs is None:
            raise RuntimeError(f"pool for {self.node_name} is not running")
        self._jobs.start_soon(fn, *args)

    # --- what the background jobs report ----------------------------------------------------

    def _accept(self, conn: C) -> None:
        """A dial succeeded: the new connection serves the first in line, else goes idle."""
        entry = Entry(conn, self._expiry())
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

    def _dial_failed(self, exc: Exception) -> None:
        """A dial failed for good: a parked get that no other dial is coming for gets the
        error now (rather than a timeout later); min_idle is refilled after a pause."""
        if len(self._waiters) > self._bg.dialing:
            self._waiters.fail_first(exc)
        self._maintenance.wake_by(self._bg.fill_resumes_at())
        self._schedule_dials()

    def _drained(self, conn: C, ok: bool) -> None:
        """A drain finished: reuse the connection, or close it."""
        entry = self._entries.get(conn.id)
        if entry is None or entry.conn is not conn:
            return  # the pool was closed meanwhile and has closed it
        if ok:
            self._release(entry, trio.current_time(), caller=False)
        else:
            self._remove(entry, CloseReason.DRAIN_FAILED)

    # --- timers ------------------------------------------------------------------------------

    def _expire_waiters(self) -> None:
        """Fail parked gets whose deadline has passed with ``PoolTimeoutError``."""
        self._timeouts += self._waiters.expire(trio.current_time(), self._timeout_error)

    def _timeout_error(self) -> PoolTimeoutError:
        return PoolTimeoutError(
            f"no connection to {self.node_name} became available within {self.timeout:g} s"
            f" (pool size {self.options.size})"
        )

    def _maintain(self) -> None:
        """Close the idle connections that expired, and refill min_idle."""
        now = trio.current_time()
        doomed = [
            (entry, reason)
            for entry in self._idle.values()
            if (reason := self._stale_reason(entry, now)) is not None
        ]
        for entry, reason in doomed:
            self._remove(entry, reason)
        if doomed:  # one line per sweep, never one per connection
            logger.debug("pool %s: reaped %d idle connections", self.node_name, len(doomed))
        self._schedule_dials()

    def _next_maintenance(self) -> float:
        """The next moment an idle connection can expire or ``min_idle`` needs refilling."""
        now = trio.current_time()
        opts = self.options
        soonest = math.inf
        if opts.max_idle_time is not None:
            # Whatever is released from now on cannot expire sooner than this.
            soonest = now + opts.max_idle_time
            for entry in self._idle.values():
                soonest = min(soonest, entry.conn.last_used_at + opts.max_idle_time)
        if opts.max_lifetime is not None:
            soonest = min(soonest, now + opts.max_lifetime * (1 - opts.lifetime_jitter))
            for entry in self._idle.values():
                soonest = min(soonest, entry.expires_at)
        retry_at = self._bg.fill_resumes_at()
        if opts.min_idle and len(self._idle) < opts.min_idle and retry_at > now:
            # Refill min_idle again once the back-off after a failed dial is over. (Only a
            # future time: a past one would make the timer spin without ever sleeping.)
            soonest = min(soonest, retry_at)
        return soonest

    # --- shutting down -----------------------------------------------------------------------

    def _shut_down(self) -> list[C]:
        """The synchronous part of closing: mark closed, fail waiters and claims, mark every
        connection CLOSED and forget it; returns them, for their sockets to be closed."""
        self._closed = True
        if self.autopipeliner is not None:
            self.autopipeliner.fail_queued(
                mark_unsent(PoolClosedError(f"pool for {self.node_name} is closed"))
            )
        failed = self._waiters.fail_all(
            lambda: PoolClosedError(f"pool for {self.node_name} is closed")
        )
        claims, self._claims = self._claims, {}
        for lot in claims.values():
            lot.hand_all(False)
        entries = list(self._entries.values())
        self._entries.clear()
        self._idle.clear()
        for entry in entries:
            entry.conn.state.transition(_CLOSED)
            self._closes[CloseReason.POOL_CLOSED] += 1
        if entries or failed:
            # One line for the whole pool, never one per connection.
            logger.debug(
                "pool %s closed: closing %d connections, failing %d waiters",
                self.node_name,
                len(entries),
                failed,
            )
        return [e.conn for e in entries]
