"""The per-node connection pool: it alone moves its connections.

:class:`Pool` is the object its users hold: its lifetime (its own nursery, in which dials,
drains, closes and timers run as jobs), the waits (a get with nothing idle parks, in one FIFO
queue; a job waiting to claim a busy connection parks too), and the public API. Every decision
about a connection is taken synchronously by its core, :class:`~.book.Book` (whose docstring
says where each connection is, and who moves it: only the pool); the I/O a decision implies
runs afterwards, in :mod:`~.background`. A connection that becomes free goes *directly* to the
job waiting to claim it, else to the first parked get, so nobody can barge ahead; dials belong
to the pool, not to the caller that triggered them, so a caller that gives up never leaks a
half-made connection. Open connections plus dials in flight never exceed ``size`` (or
``max_active`` when that is smaller).
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any, Generic

import trio

from ..conn.connection import mark_unsent
from ..conn.state import ConnState
from ..errors import PoolClosedError, PoolExhaustedError
from ..hooks import Hooks
from ..lifetime import NurseryOwner, start_soon
from .autopipeline import AutoPipeliner, BatchBreaker
from .book import Book
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

_IDLE = ConnState.IDLE
_IN_USE = ConnState.IN_USE


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
        hooks: Hooks | None = None,
    ) -> None:
        if not isinstance(timeout, int | float) or not timeout > 0:
            raise ValueError(
                f"Pool timeout must be a number > 0 (math.inf = none), got {timeout!r}"
            )
        self.options = options if options is not None else PoolOptions()
        self.node_name = node_name
        self.timeout = float(timeout)
        self._book: Book[C] = Book(
            dial,
            self.options,
            node_name,
            timeout=self.timeout,
            dial_timeout=dial_timeout,
            spawn=self._spawn,
            hooks=hooks,
        )
        #: The nursery of the pool's own jobs (dials, drains, batches) while it runs.
        self._jobs: trio.Nursery | None = None
        self._started = False
        self._stopped = trio.Event()
        #: The queue and batches of automatic pipelining (``options.autopipeline``), or None.
        self.autopipeliner = AutoPipeliner(self, breaker) if self.options.autopipeline else None

    def __repr__(self) -> str:
        book = self._book
        return (
            f"<Pool {self.node_name} open={len(book.entries)} idle={book.idle_count()}"
            f" waiters={len(book.waiting.gets)}{' closed' if book.closed else ''}>"
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
        if not self._book.closed:
            conns = self._shut_down()
            if self._jobs is not None:
                self._jobs.cancel_scope.cancel()
            await self._book.background.close_all(conns)
        if self._started:
            await self._stopped.wait()

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        book = self._book
        try:
            async with trio.open_nursery() as nursery:
                self._jobs = nursery
                book.running = True
                start_soon(nursery, book.maintenance.run)
                start_soon(nursery, book.waiting.timer.run)
                book.schedule_dials()  # pre-warm min_idle
                task_status.started()
        finally:
            self._jobs = None
            book.running = False
            # Reached after aclose(), or when the owner's nursery is cancelled: either way
            # nothing may outlive the pool.
            if not book.closed:
                await book.background.close_all(self._shut_down())
            self._stopped.set()

    def _shut_down(self) -> list[C]:
        if self.autopipeliner is not None:
            self.autopipeliner.fail_queued(
                mark_unsent(PoolClosedError(f"pool for {self.node_name} is closed"))
            )
        return self._book.shut_down()

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._jobs is None:
            raise RuntimeError(f"pool for {self.node_name} is not running")
        start_soon(self._jobs, fn, *args)

    def spawn_job(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in the pool's nursery (an automatic-pipelining batch): it ends, at the
        latest, when the pool is closed.  ``PoolClosedError`` once the pool is closed."""
        if self._book.closed or self._jobs is None:
            raise mark_unsent(PoolClosedError(f"pool for {self.node_name} is closed"))
        start_soon(self._jobs, fn)

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
        conn = self._book.take()
        if conn is not None:
            return conn
        return await self._park()

    def get_idle(self) -> C | None:
        """:meth:`get`'s fast path, synchronous: a healthy idle connection (IN_USE now) if
        one is there and nobody is waiting, else None (then :meth:`get` waits, or dials)."""
        return self._book.take()

    async def _park(self) -> C:
        """:meth:`get`'s slow path: wait in line until a connection is handed over, a dial
        fails for this caller, the timeout passes, or the pool closes."""
        book = self._book
        if book.closed:
            raise PoolClosedError(f"pool for {self.node_name} is closed")
        if self._jobs is None:
            raise RuntimeError(
                f"pool for {self.node_name} is not running: use `async with` or start_background()"
            )
        max_active = self.options.max_active
        if max_active and book.open_count() >= max_active:
            raise PoolExhaustedError(
                f"pool for {self.node_name} has max_active={max_active} connections open and"
                " none idle"
            )
        book.schedule_dials(parking=1)  # the dials start after this caller has parked
        return await book.waiting.get()

    def refuse_parked(self, error: Callable[[], BaseException]) -> int:
        """Fail every parked get, each with an error of its own (``error()``); returns how
        many.  For the node's breaker, when it opens: a connection handed to them later would
        only carry their commands to a node known bad."""
        return self._book.waiting.gets.fail_all(error)

    def put(self, conn: C) -> None:
        """Give back a connection that :meth:`get` returned. Synchronous.

        A broken connection is closed. One that owes replies is drained in the background,
        then reused. Otherwise it goes to the first job waiting to claim it, else to the first
        parked get, else to the idle list.

        Raises:
            ReleaseError: released twice, or never handed out by this pool.
        """
        self._book.put(conn)

    def give_back(self, conn: C) -> None:
        """A job is done with a connection it claimed (UNUSABLE or INITIALIZING, or CLOSED if
        the job closed it). Decided as a caller's release is: closed if broken, drained if it
        owes replies, else to the next claimer, parked get or the idle list.

        Raises:
            ReleaseError: not this pool's, or held by a caller or idle (no job had it).
        """
        self._book.give_back(conn)

    # --- claims: jobs that take connections ------------------------------------------------

    def claim_now(self, conn: C) -> bool:
        """Claim ``conn`` for a job if it is idle (IDLE -> UNUSABLE); returns whether it did
        (False: a caller or another job holds it, or it is not this pool's). The job gives it
        back with :meth:`give_back`."""
        return self._book.claim_now(conn)

    async def claim_when_idle(self, conn: C) -> bool:
        """Claim ``conn`` for a job as soon as nobody holds it: at once if it is idle, else the
        moment its caller or job gives it back, before any caller can get it (jobs waiting for
        one connection are served in arrival order). Returns True once claimed (UNUSABLE: give
        it back with :meth:`give_back`); False if it is closed, or the pool is, first.

        Always a checkpoint. Cancel-safe: cancelled while waiting, it claims nothing.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        claimed = self._book.claim_now(conn)
        if claimed or not self.owns(conn):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return claimed
        return await self._book.waiting.claim(conn.id)

    def add_claimant(self, claimant: Claimant[C]) -> None:
        """Ask ``claimant`` about every connection before it is handed out (after those
        already registered)."""
        self._book.add_claimant(claimant)

    def remove_claimant(self, claimant: Claimant[C]) -> None:
        """Stop asking ``claimant`` (``ValueError`` if it is not registered)."""
        self._book.remove_claimant(claimant)

    # --- introspection -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has begun."""
        return self._book.closed

    def stats(self) -> PoolStats:
        """A snapshot of the counters and of where the connections are."""
        book = self._book
        by_state: collections.Counter[ConnState] = collections.Counter(
            e.conn.state.state for e in book.entries.values()
        )
        bg, waiting = book.background, book.waiting
        closing = len(bg.closing)
        return PoolStats(
            node=self.node_name,
            hits=book.hits,
            misses=book.misses,
            timeouts=waiting.timeouts,
            waits=waiting.waits,
            wait_time_total=waiting.wait_time,
            total_connections=len(book.entries) + closing,
            idle_connections=by_state[_IDLE],
            in_use_connections=by_state[_IN_USE],
            unusable_connections=by_state[ConnState.UNUSABLE] + by_state[ConnState.INITIALIZING],
            closing_connections=closing,
            pending_waiters=len(waiting.gets),
            dials=bg.dials,
            dial_errors=bg.dial_errors,
            dials_in_progress=bg.dialing,
            closes=dict(book.closes),
            unusable_time_total=book.unusable_time,
        )

    def live_connections(self) -> list[C]:
        """The connection objects the pool owns right now (not those being closed), for
        background jobs that must visit each one (re-authentication, handoff)."""
        return [entry.conn for entry in self._book.entries.values()]

    def idle_connections(self) -> list[C]:
        """The connections in the idle list right now (state IDLE)."""
        return self._book.idle_conns()

    def owns(self, conn: C) -> bool:
        """Whether ``conn`` belongs to this pool (and is not closed)."""
        entry = self._book.entries.get(conn.id)
        return entry is not None and entry.conn is conn

    def connections(self) -> list[ConnectionInfo]:
        """Every connection the pool has open (closing ones included), oldest first."""
        book = self._book
        conns = [e.conn for e in book.entries.values()] + list(book.background.closing.values())
        conns.sort(key=lambda c: (c.created_at, c.id))
        return [
            ConnectionInfo(c.id, self.node_name, c.state.state, c.created_at, c.last_used_at)
            for c in conns
        ]
