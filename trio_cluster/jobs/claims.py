"""Claims: running a job on a pooled connection that no caller may see while the job runs.

Re-authentication after a credential rotation (``credentials.py``) and the MOVING handoff
(``maint.py``) both work this way: the connection is taken from IDLE to UNUSABLE (at once if it
is idle, else as soon as its caller gives it back, waiting at most ``wait_limit``; a pool hook
catches any connection whose wait ran out before a caller can get it), the job runs, and the
connection goes back to the pool (closed first if the job left it broken).  One job per
connection at a time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from ..conn.connection import Connection
from ..conn.state import ConnState
from ..errors import StateMachineClosed
from ..lifetime import start_soon
from ..pooling.pool import Pool

__all__ = ["Claims"]

_IDLE = (ConnState.IDLE,)

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

    @property
    def started(self) -> bool:
        """Whether jobs can run (:meth:`start` was called)."""
        return self._nursery is not None

    def claim_now(self, pool: Pool[Connection], conn: Connection) -> bool:
        """For a pool's ``on_get`` hook: claim ``conn`` if it is idle and start its job.
        Returns whether it was claimed (then the pool must not hand it out)."""
        if self._nursery is None or not conn.state.try_transition(_IDLE, ConnState.UNUSABLE):
            return False
        self._pending.add(conn.id)
        start_soon(self._nursery, self._run, pool, conn, trio.current_time())
        return True

    def schedule(self, pool: Pool[Connection], conn: Connection) -> None:
        """Claim ``conn`` once it is idle (bounded by ``wait_limit``) and run the job; nothing
        if it already has a job."""
        if conn.id in self._pending or self._nursery is None:
            return
        self._pending.add(conn.id)
        start_soon(self._nursery, self._claim_and_run, pool, conn)

    async def _claim_and_run(self, pool: Pool[Connection], conn: Connection) -> None:
        try:
            with trio.move_on_after(self._wait_limit) as waited:
                if not conn.state.try_transition(_IDLE, ConnState.UNUSABLE):
                    await conn.state.wait_and_transition(_IDLE, ConnState.UNUSABLE)
        except StateMachineClosed:
            self._pending.discard(conn.id)
            return
        if waited.cancelled_caught:
            # Held too long: leave it; the on_get hook claims it before any caller can.
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
            if conn.broken:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            pool.return_from_background(conn)
