"""The pool's records and every decision about its connections, all synchronous.

:class:`Book` is the core of a :class:`~trio_cluster.pooling.pool.Pool` (which adds its
lifetime, the waits and the public API around it). Every decision (which connection, who gets
it, whether to dial, drain or close) is taken here with no ``await`` in between, so it is atomic
under trio; the I/O it implies goes to the pool's :class:`~.background.Background`, which
reports back for the next decision.

A connection's state is its place (:data:`~trio_cluster.conn.state.HOLDER`):

* IDLE: in the idle list, always (between two decisions), and nowhere else;
* IN_USE: held by the one caller it was handed to;
* UNUSABLE or INITIALIZING: held by one job: the pool's drain, or a job that claimed it
  (:meth:`Book.claim_now`, a waiting claim, or a :class:`Claimant` before a hand-out), which
  gives it back (:meth:`Book.give_back`);
* CLOSED: removed; counted as closing until its socket is closed.

Only these decisions make the moves (a job may move the connection it holds between UNUSABLE and
INITIALIZING, or close it), so the book never has to find out where a connection went. A
connection that comes free goes, in this order, to the jobs waiting to claim it, to the first
parked get, to the idle list (:meth:`Book._offer`): a release can never slip past a waiting
job (go-redis #4027), nor a newcomer past a parked get.
"""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Generic

import trio

from ..conn.state import ConnState
from ..errors import ReleaseError
from ..hooks import Hooks
from .background import Background
from .expiry import Entry, next_check, stale_reason
from .parking import Timer, Waiting
from .pooltypes import C, Claimant, CloseReason, PoolOptions

__all__ = ["Book"]

logger = logging.getLogger(__name__)

_IDLE = ConnState.IDLE
_IN_USE = ConnState.IN_USE
_UNUSABLE = ConnState.UNUSABLE
_INITIALIZING = ConnState.INITIALIZING
_CLOSED = ConnState.CLOSED
#: Most dials in flight at once to fill ``min_idle`` (callers' own dials are not limited).
_MAX_FILL_DIALS = 32


class Book(Generic[C]):
    """The records and decisions of one pool (see the module docstring).

    ``spawn`` starts a job in the pool's nursery, or raises if the pool is not running.
    """

    def __init__(
        self,
        dial: Callable[[], Awaitable[C]],
        options: PoolOptions,
        node_name: str,
        *,
        timeout: float,
        dial_timeout: float | None,
        spawn: Callable[..., None],
        hooks: Hooks | None = None,
    ) -> None:
        self.options = options
        self.node_name = node_name
        self._cap = min(options.size, options.max_active) if options.max_active else options.size
        #: Every connection the pool owns and has not closed, by id.
        self.entries: dict[int, Entry[C]] = {}
        # The idle list, in release order: LIFO takes the last released (a dict pops its last
        # item), FIFO the oldest. A mapping, so a job claims any idle connection in O(1).
        self._idle: dict[int, Entry[C]]
        self._pop_idle: Callable[[], tuple[int, Entry[C]]]
        if options.fifo:
            fifo: collections.OrderedDict[int, Entry[C]] = collections.OrderedDict()
            self._idle, self._pop_idle = fifo, functools.partial(fifo.popitem, False)
        else:
            self._idle = {}
            self._pop_idle = self._idle.popitem
        self.waiting: Waiting[C] = Waiting(node_name, options.size, timeout, hooks)
        self._waiters = self.waiting.gets  # the same queue, one lookup less per release
        self._claimants: tuple[Claimant[C], ...] = ()
        #: Dials, closes and drains, as jobs.
        self.background: Background[C] = Background(
            dial,
            options,
            node_name,
            dial_timeout=dial_timeout,
            spawn=spawn,
            dialled=self._accept,
            dial_failed=self._dial_failed,
            closed=self.schedule_dials,
            drained=self._drained,
        )
        #: Reaps expired idle connections and refills ``min_idle`` (run it as a task).
        self.maintenance = Timer(self._next_maintenance, self._maintain)
        #: Set by :meth:`shut_down`; whether the pool may start jobs (set by the pool).
        self.closed = False
        self.running = False
        #: Counters, for stats.
        self.hits = 0
        self.misses = 0
        self.closes: collections.Counter[str] = collections.Counter()
        #: Seconds connections spent held by jobs (UNUSABLE), summed, for those let go.
        self.unusable_time = 0.0

    # --- hand-outs and releases ---------------------------------------------------------------

    def take(self) -> C | None:
        """A healthy idle connection (IN_USE now) if one is there and nobody waits, else None."""
        if self._idle and not self._waiters and not self.closed:
            entry = self._take_idle()
            if entry is not None:
                self.hits += 1
                return entry.conn
        return None

    def idle_count(self) -> int:
        """How many connections are in the idle list."""
        return len(self._idle)

    def idle_conns(self) -> list[C]:
        """The connections in the idle list (state IDLE)."""
        return [entry.conn for entry in self._idle.values()]

    def open_count(self) -> int:
        """Connections open, being dialled or being closed: what counts against the size."""
        bg = self.background
        return len(self.entries) + bg.dialing + len(bg.closing)

    def put(self, conn: C) -> None:
        """A caller gives back a connection (see :meth:`Pool.put`)."""
        entry = self.entries.get(conn.id)
        if entry is None or entry.conn is not conn or conn.state.state is not _IN_USE:
            self._check_given_back(entry, conn, "released to", "it is not out (double release?)")
            return
        self._release(entry, trio.current_time(), caller=True)

    def give_back(self, conn: C) -> None:
        """A job gives back a connection it held (see :meth:`Pool.give_back`)."""
        entry = self.entries.get(conn.id)
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
        """A release :meth:`put` / :meth:`give_back` did not expect: quietly done if the pool
        was closed meanwhile (it closed the connection), else a ``ReleaseError``."""
        if entry is None and self.closed:
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
        else:
            self._from_job(entry, now)
        state = conn.state.state
        if state is _CLOSED:
            self._remove(entry, CloseReason.CLOSED_ELSEWHERE)
        elif conn.broken:
            self._remove(
                entry, CloseReason.UNSOLICITED_REPLY if conn.out_of_step else CloseReason.BROKEN
            )
        elif conn.owed_replies:
            if state is not _UNUSABLE:
                self._to_job(entry, now)
            self.background.drain(conn)
        elif now >= entry.expires_at:
            self._remove(entry, CloseReason.LIFETIME)
        else:
            conn.state.transition(_IDLE)
            self._offer(entry, is_new=False)

    # --- claims ---------------------------------------------------------------------------------

    def claim_now(self, conn: C) -> bool:
        """Claim ``conn`` for a job if it is idle (see :meth:`Pool.claim_now`)."""
        entry = self._idle.get(conn.id)
        if entry is None or entry.conn is not conn:
            return False
        del self._idle[conn.id]
        self._to_job(entry, trio.current_time())
        return True

    def add_claimant(self, claimant: Claimant[C]) -> None:
        """See :meth:`Pool.add_claimant`."""
        self._claimants = (*self._claimants, claimant)

    def remove_claimant(self, claimant: Claimant[C]) -> None:
        """See :meth:`Pool.remove_claimant`."""
        claimants = list(self._claimants)
        claimants.remove(claimant)
        self._claimants = tuple(claimants)

    def _claimed_by_claimant(self, entry: Entry[C]) -> bool:
        """Before an IDLE connection is handed out: claim it for the first claimant that
        wants it (IDLE -> UNUSABLE) and hand it over; returns whether one did."""
        conn = entry.conn
        for claimant in self._claimants:
            if claimant.wants(conn):
                self._to_job(entry, trio.current_time())
                claimant.take(conn)
                return True
        return False

    def _to_job(self, entry: Entry[C], now: float) -> None:
        """IDLE or IN_USE -> UNUSABLE: a job (a drain, a claim) holds it from ``now``."""
        entry.conn.state.transition(_UNUSABLE)
        entry.unusable_since = now

    def _from_job(self, entry: Entry[C], now: float) -> None:
        """A job let go of the connection: its time UNUSABLE is counted."""
        since = entry.unusable_since
        if since is not None:
            entry.unusable_since = None
            self.unusable_time += now - since

    # --- the decisions --------------------------------------------------------------------------

    def _take_idle(self) -> Entry[C] | None:
        """Pop idle connections until one is healthy and no claimant wants it; mark it
        IN_USE."""
        idle = self._idle
        pop = self._pop_idle
        taken: Entry[C] | None = None
        while idle:
            entry = pop()[1]
            reason = stale_reason(entry, trio.current_time(), self.options)
            if reason is not None:
                self._remove(entry, reason)
            elif not (self._claimants and self._claimed_by_claimant(entry)):
                entry.conn.state.transition(_IN_USE)
                taken = entry
                break
        if self.options.min_idle and len(idle) < self.options.min_idle:
            self.schedule_dials()
        return taken

    def _offer(self, entry: Entry[C], is_new: bool) -> None:
        """A connection nobody holds (IDLE, not in the idle list): to the first job waiting to
        claim it, else to the first parked get, else to the idle list."""
        conn = entry.conn
        claims = self.waiting.claims
        if claims:
            lot = claims.get(conn.id)
            if lot:
                self._to_job(entry, trio.current_time())
                lot.hand_first(True)
                return
        if self._waiters:
            if self._claimants and self._claimed_by_claimant(entry):
                return
            conn.state.transition(_IN_USE)
            if is_new:
                self.misses += 1
            else:
                self.hits += 1
            self._waiters.hand_first(conn)
        elif self.options.max_idle and len(self._idle) >= self.options.max_idle:
            self._remove(entry, CloseReason.MAX_IDLE)
        else:
            self._idle[conn.id] = entry

    def _remove(self, entry: Entry[C], reason: CloseReason) -> None:
        """Forget a connection nobody holds (or that is in the idle list), mark it CLOSED,
        and close its socket in the background."""
        conn = entry.conn
        del self.entries[conn.id]
        self._idle.pop(conn.id, None)
        self._from_job(entry, trio.current_time())
        conn.state.transition(_CLOSED)
        self.closes[reason] += 1
        if self.waiting.claims:
            self.waiting.refuse(conn.id)
        self.background.close(conn)

    def schedule_dials(self, parking: int = 0) -> None:
        """Start as many dials as parked gets (``parking`` more are about to park) and
        ``min_idle`` need, within the size cap."""
        if self.closed or not self.running:
            return
        room = self._cap - self.open_count()
        if room <= 0:
            return
        bg = self.background
        demand = len(self._waiters) + parking
        min_idle = self.options.min_idle
        if min_idle and trio.current_time() >= bg.fill_resumes_at():
            # Filling min_idle is background work: a bounded number of dials at a time, so a
            # large min_idle never floods the node (or this process) with handshakes that
            # then time out and retry, which can livelock.
            demand += min(max(0, min_idle - len(self._idle)), _MAX_FILL_DIALS)
        count = min(room, demand - bg.dialing)
        if count > 0:
            bg.dial(count)

    # --- what the background jobs report --------------------------------------------------------

    def _accept(self, conn: C) -> None:
        """A dial succeeded: the new connection serves the first in line, else goes idle."""
        entry = Entry(conn, self.options)
        self.entries[conn.id] = entry
        if self.closed:
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
        self.schedule_dials()  # min_idle filling goes on, a bounded batch at a time

    def _dial_failed(self, exc: Exception) -> None:
        """A dial failed for good: a parked get that no other dial is coming for gets the
        error now (rather than a timeout later); min_idle is refilled after a pause."""
        if len(self._waiters) > self.background.dialing:
            self._waiters.fail_first(exc)
        self.maintenance.wake_by(self.background.fill_resumes_at())
        self.schedule_dials()

    def _drained(self, conn: C, ok: bool) -> None:
        """A drain finished: reuse the connection, or close it."""
        entry = self.entries.get(conn.id)
        if entry is None or entry.conn is not conn:
            return  # the pool was closed meanwhile and has closed it
        if ok:
            self._release(entry, trio.current_time(), caller=False)
        else:
            self._remove(entry, CloseReason.DRAIN_FAILED)

    # --- upkeep ---------------------------------------------------------------------------------

    def _maintain(self) -> None:
        """Close the idle connections that expired, and refill min_idle."""
        now = trio.current_time()
        doomed = [
            (entry, reason)
            for entry in self._idle.values()
            if (reason := stale_reason(entry, now, self.options)) is not None
        ]
        for entry, reason in doomed:
            self._remove(entry, reason)
        if doomed:  # one line per sweep, never one per connection
            logger.debug("pool %s: reaped %d idle connections", self.node_name, len(doomed))
        self.schedule_dials()

    def _next_maintenance(self) -> float:
        """The next moment an idle connection can expire or ``min_idle`` needs refilling."""
        now = trio.current_time()
        soonest = next_check(self._idle.values(), now, self.options)
        retry_at = self.background.fill_resumes_at()
        if self.options.min_idle and len(self._idle) < self.options.min_idle and retry_at > now:
            # Refill min_idle again once the back-off after a failed dial is over. (Only a
            # future time: a past one would make the timer spin without ever sleeping.)
            soonest = min(soonest, retry_at)
        return soonest

    def shut_down(self) -> list[C]:
        """The synchronous part of closing the pool: mark closed, fail waiters and claims,
        mark every connection CLOSED and forget it; returns them, for their sockets to be
        closed."""
        self.closed = True
        failed = self.waiting.close()
        entries = list(self.entries.values())
        self.entries.clear()
        self._idle.clear()
        for entry in entries:
            entry.conn.state.transition(_CLOSED)
            self.closes[CloseReason.POOL_CLOSED] += 1
        if entries or failed:
            # One line for the whole pool, never one per connection.
            logger.debug(
                "pool %s closed: closing %d connections, failing %d waiters",
                self.node_name,
                len(entries),
                failed,
            )
        return [e.conn for e in entries]
