"""Claims: running a job on a pooled connection that no caller may see while the job runs.

Re-authentication after a credential rotation (``credentials.py``) and the MOVING handoff
(``handoff.py``) both work this way. The pool moves the connection, never the job: the job asks
the pool to claim it (:meth:`Pool.claim_now` if it is idle, else :meth:`Pool.claim_when_idle`,
served the moment its caller gives it back, waiting at most ``wait_limit``); a connection whose
wait ran out is caught before any caller gets it, by the claimant this module registers with
the pool (:meth:`Claims.watch`). The job runs, and the connection goes back with
:meth:`Pool.give_back` (which closes it if the job left it broken). One job per connection at
a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..conn.connection import Connection
from ..lifetime import start_soon
from ..pooling.pool import Pool

__all__ = ["Claims"]

Job = Callable[[Connection], Awaitable[None]]


class Claims:
    """Claims connections for ``job``; its tasks run in the nursery given to :meth:`start`."""

    def __init__(self, job: Job, *, wait_limit: float) -> None:
        self._job = job
        self._wait_limit = wait_limit
        self._pending: set[int] = set()  # ids of connections with a job, waiting or running
        self._nursery: trio.Nursery | None = None
        #: The longest a connection stayed claimed (seconds), for stats.
        self.longest_claim = 0.0

    def start(self, nursery: trio.Nursery) -> None:
        """Jobs run in ``nursery`` from now on (none before)."""
        self._nursery = nursery

    def watch(self, pool: Pool[Connection], wants: Callable[[Connection], bool]) -> _Claimant:
        """Before ``pool`` hands out a connection for which ``wants`` is true, claim it and run
        the job on it. Returns the registration (for :meth:`Pool.remove_claimant`)."""
        claimant = _Claimant(self, pool, wants)
        pool.add_claimant(claimant)
        return claimant

    def schedule(self, pool: Pool[Connection], conn: Connection) -> None:
        """Claim ``conn`` (at once if idle, else once its holder gives it back, within
        ``wait_limit``) and run the job; nothing if it already has a job."""
        if conn.id in self._pending or self._nursery is None:
            return
        self._pending.add(conn.id)
        if pool.claim_now(conn):
            start_soon(self._nursery, self._run, pool, conn, trio.current_time())
        else:
            start_soon(self._nursery, self._claim_and_run, pool, conn)

    def _take(self, pool: Pool[Connection], conn: Connection) -> None:
        """``pool`` claimed ``conn`` for this job (a claimant's ``take``): run the job."""
        assert self._nursery is not None  # _Claimant.wants says no until started
        self._pending.add(conn.id)
        start_soon(self._nursery, self._run, pool, conn, trio.current_time())

    def _may_take(self, conn: Connection) -> bool:
        return self._nursery is not None and conn.id not in self._pending

    async def _claim_and_run(self, pool: Pool[Connection], conn: Connection) -> None:
        claimed = False
        with trio.move_on_after(self._wait_limit):
            claimed = await pool.claim_when_idle(conn)
        if not claimed:
            # Closed, or held too long: leave it; the claimant catches it before any caller.
            self._pending.discard(conn.id)
            return
        await self._run(pool, conn, trio.current_time())

    async def _run(self, pool: Pool[Connection], conn: Connection, claimed_at: float) -> None:
        """``conn`` is ours (UNUSABLE): run the job, then give it back."""
        try:
            await self._job(conn)
        finally:
            self._pending.discard(conn.id)
            self.longest_claim = max(self.longest_claim, trio.current_time() - claimed_at)
            pool.give_back(conn)


class _Claimant:
    """One job's claimant on one pool (see :class:`~trio_cluster.pooling.pool.Claimant`)."""

    __slots__ = ("_claims", "_pool", "_wants")

    def __init__(
        self, claims: Claims, pool: Pool[Connection], wants: Callable[[Connection], bool]
    ) -> None:
        self._claims = claims
        self._pool = pool
        self._wants = wants

    def wants(self, conn: Connection) -> bool:
        """Whether the job must run on ``conn`` before a caller gets it."""
        return self._wants(conn) and self._claims._may_take(conn)

    def take(self, conn: Connection) -> None:
        """The pool claimed ``conn`` for the job: run it."""
        self._claims._take(self._pool, conn)
