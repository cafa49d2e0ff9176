"""Endpoint handoff: moving every connection of a node to the endpoint a MOVING names.

On each new MOVING (queued by the node's :class:`~.maint.MaintNotices`), new connections go to
the new endpoint (the node's dialer is pointed at it) and every pooled connection is handed
off in the background: idle ones at once, in-use ones right after their command, each claimed
through the pool (``claims.py``) so that no caller sees it mid-handoff.  A handoff opens and
greets a stream to the new endpoint through the dialer (the newest credentials, the client's
TLS and timeouts), swaps it in, and gives the connection back; callers never wait on it and
never see an error from it.  Workers are bounded, retried with a short back-off within the
handoff timeout, and a per-endpoint breaker stops hammering a dead endpoint; a handoff that
fails leaves its connection broken, the pool closes it and refills.

Made after the node's pool, from the notices, the pool and the dialer: nothing below it needs
it, so the node is wired in one straight line (``routing.nodes``).
"""

from __future__ import annotations

import logging

import trio

from ..conn.connection import Connection
from ..conn.dialer import Dialer
from ..lifetime import start_soon
from ..pooling.breaker import CircuitBreaker
from ..pooling.pool import Pool
from .claims import Claims
from .maint import MaintNotices

__all__ = ["HandoffManager"]

logger = logging.getLogger(__name__)

#: How often pushes that land on idle connections are read (nobody else reads them).
_SWEEP_INTERVAL = 0.05


class HandoffManager:
    """Hands the connections of one node's pool over to the endpoints MOVING names."""

    def __init__(self, notices: MaintNotices, pool: Pool[Connection], dialer: Dialer) -> None:
        self.notices = notices
        self._options = notices.options
        self._pool = pool
        self._dialer = dialer
        workers = self._options.max_workers or max(1, pool.options.size // 2)
        self._limiter = trio.CapacityLimiter(workers)
        self._breakers: dict[tuple[str, int], CircuitBreaker] = {}
        #: Handoff jobs on the pool's connections.
        self._claims = Claims(self._handoff, wait_limit=self._options.handoff_timeout)
        # A connection due for a handoff is never handed out: its job takes it instead.
        self._claimant = self._claims.watch(pool, _due_for_handoff)
        #: Counters, for stats.
        self.handoffs = 0
        self.handoff_failures = 0

    def start(self, nursery: trio.Nursery) -> None:
        """Follow the node's moves, and read pushes that land on idle connections, as one task
        in ``nursery``; it ends when the node turns out to have no notifications."""
        self._claims.start(nursery)
        start_soon(nursery, self._run, nursery)

    def relaxed_connections(self) -> int:
        """Connections whose timeouts are relaxed right now."""
        return sum(1 for conn in self._pool.live_connections() if conn.relaxed)

    @property
    def longest_unusable(self) -> float:
        """The longest a connection was kept from callers by a handoff (seconds)."""
        return self._claims.longest_claim

    async def _run(self, nursery: trio.Nursery) -> None:
        while True:
            with trio.move_on_after(_SWEEP_INTERVAL):
                try:
                    note = await self.notices.next_move()
                except trio.ClosedResourceError:
                    # The node has no notifications: leave the pool's hot path; the feature
                    # costs nothing from now on.
                    self._pool.remove_claimant(self._claimant)
                    return
                if note.endpoint is not None:
                    self._move_all(note.endpoint)
                else:
                    # No new address: the same one serves again after half the announced time.
                    config = self._dialer.config
                    start_soon(nursery, self._move_later, (config.host, config.port), note.seconds)
                continue
            # Read the pushes that arrive on idle connections (nobody else reads them).
            for conn in self._pool.idle_connections():
                conn.peer_closed()  # reads and dispatches any push frame waiting

    async def _move_later(self, endpoint: tuple[str, int], seconds: int) -> None:
        await trio.sleep(seconds / 2)
        self._move_all(endpoint)

    def _move_all(self, endpoint: tuple[str, int]) -> None:
        self._dialer.move_to(endpoint)
        for conn in self._pool.live_connections():
            conn.handoff_to = endpoint
            self._claims.schedule(self._pool, conn)

    # --- the job ---------------------------------------------------------------------------------

    async def _handoff(self, conn: Connection) -> None:
        """``conn`` is claimed: move it to its endpoint (broken if that keeps failing)."""
        options = self._options
        moved = False  # did this job move it (another job may have, meanwhile)?
        done = False
        with trio.move_on_after(options.handoff_timeout):
            for attempt in range(options.handoff_retries):
                endpoint = conn.handoff_to
                if endpoint is None:
                    done = True
                    break
                breaker = self._breaker(endpoint)
                try:
                    breaker.before_call()
                    async with self._limiter:
                        await self._dialer.handoff(conn, endpoint)
                except Exception as exc:
                    breaker.record_failure()
                    logger.debug("handoff of %s to %s failed: %s", conn.id, endpoint, exc)
                    await trio.sleep(min(0.5, 0.05 * 2**attempt))
                    continue
                breaker.record_success()
                moved = True
                if conn.handoff_to == endpoint:
                    conn.handoff_to = None
                now = trio.current_time()
                conn.relax(options.relaxed_timeout, now + options.post_handoff_relaxed)
                done = conn.handoff_to is None
                if done:
                    break
        if done:
            self.handoffs += moved  # a job that found nothing left to do moved nothing
        else:
            self.handoff_failures += 1
            conn.broken = True

    def _breaker(self, endpoint: tuple[str, int]) -> CircuitBreaker:
        breaker = self._breakers.get(endpoint)
        if breaker is None:
            name = f"{endpoint[0]}:{endpoint[1]}"
            breaker = self._breakers[endpoint] = CircuitBreaker(
                name, self._options.endpoint_breaker
            )
        return breaker


def _due_for_handoff(conn: Connection) -> bool:
    return conn.handoff_to is not None
