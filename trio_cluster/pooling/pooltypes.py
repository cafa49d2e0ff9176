"""The pool's public types: what it needs of a connection, its options (validated), its stats,
why it closes a connection, and what a job that claims connections before they are handed out
provides (:class:`Claimant`).  Kept apart from :mod:`trio_cluster.pooling.pool`, which
re-exports them."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Protocol, TypeVar

import attrs

from ..conn.state import ConnState, ConnStateMachine

__all__ = [
    "C",
    "C_contra",
    "Claimant",
    "CloseReason",
    "ConnectionInfo",
    "PoolOptions",
    "PoolStats",
    "PoolableConnection",
]


class PoolableConnection(Protocol):
    """What the pool needs from a connection. The real ``Connection`` implements it."""

    id: int
    """Unique per process."""
    state: ConnStateMachine
    """Arrives from ``dial()`` IDLE; from then on only the pool moves it (and a job that
    claimed it, between UNUSABLE and INITIALIZING, or to CLOSED)."""
    created_at: float
    """``trio.current_time()`` at creation."""
    last_used_at: float
    """Updated by the pool on every release."""
    owed_replies: int
    """Replies the server still owes (a command was cancelled after its bytes went out)."""
    broken: bool
    """True after a partial write, protocol error or I/O error: close, never reuse."""
    out_of_step: bool
    """True (with ``broken``) when the server sent bytes no command was owed: an unsolicited
    reply, or anything but a push frame on an idle connection."""

    def peer_closed(self) -> bool:
        """Cheap, non-blocking: is this idle connection unfit (the server closed the socket,
        or sent it bytes no command was owed, which sets ``out_of_step``)?"""
        ...

    async def drain(self) -> None:
        """Read and discard ``owed_replies`` replies (bounded by the read timeout); raise on
        failure."""
        ...

    async def aclose(self) -> None:
        """Idempotent; moves ``state`` to CLOSED."""
        ...


C = TypeVar("C", bound=PoolableConnection)
C_contra = TypeVar("C_contra", bound=PoolableConnection, contravariant=True)


class CloseReason(enum.StrEnum):
    """Why the pool removed (and closed) a connection; the keys of ``PoolStats.closes``."""

    BROKEN = "broken"
    """Released with ``broken`` set (partial write, protocol or I/O error), unless it was out
    of step (``unsolicited_reply``)."""
    DRAIN_FAILED = "drain_failed"
    """Reading the replies owed by a cancelled command failed or timed out."""
    IDLE_TIME = "idle_time"
    """Idle for ``max_idle_time`` or longer."""
    LIFETIME = "lifetime"
    """Older than ``max_lifetime`` (with jitter)."""
    PEER_CLOSED = "peer_closed"
    """The server closed the socket while the connection sat idle."""
    UNSOLICITED_REPLY = "unsolicited_reply"
    """The server sent bytes no command was owed (``out_of_step``): a reply after the last
    one owed, or anything but a push frame while the connection sat idle."""
    MAX_IDLE = "max_idle"
    """Released while ``max_idle`` connections were already idle."""
    CLOSED_ELSEWHERE = "closed_elsewhere"
    """Given back (by its caller or job) already CLOSED."""
    BAD_STATE = "bad_state"
    """``dial()`` returned a connection that was not IDLE."""
    POOL_CLOSED = "pool_closed"
    """The pool was closed."""


def _fail(field: str, accepted: str, value: object) -> ValueError:
    return ValueError(f"PoolOptions.{field} must be {accepted}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@attrs.frozen
class PoolOptions:
    """Per-node pool settings, validated at construction: a bad value raises ``ValueError``
    naming the field and the accepted range."""

    size: int = 10
    """Most connections open at once (idle + in use + draining + closing + being dialled)."""
    min_idle: int = 0
    """Keep at least this many idle connections, dialling in the background (0..size)."""
    max_idle: int = 0
    """Close released connections beyond this many idle ones (0 = no cap; else >= min_idle)."""
    max_active: int = 0
    """0 = no cap. Otherwise at most this many connections open; a get that finds none idle
    while that many are open fails at once with ``PoolExhaustedError`` instead of waiting."""
    timeout: float | None = None
    """How long a get waits for a connection (seconds). None = the client's read timeout + 1 s;
    the client resolves it and passes the number to :class:`Pool`."""
    fifo: bool = False
    """False = LIFO (reuse the most recently released connection, so surplus ones go idle and
    get reaped). True = FIFO (spread use over all connections)."""
    max_idle_time: float | None = 1800.0
    """Close connections idle this long (seconds); None = never."""
    max_lifetime: float | None = None
    """Close connections this old (seconds); None = never."""
    lifetime_jitter: float = 0.0
    """Spread ``max_lifetime`` uniformly by +- this fraction (0 <= x < 1), so connections
    dialled together do not all expire together."""
    dial_retries: int = 2
    """Extra dial attempts after a failed one (3 attempts in all by default)."""
    dial_backoff: float = 0.05
    """Seconds before the first retry; doubles on each further retry."""
    autopipeline: bool = False
    """True = automatic pipelining: concurrent simple commands for this node share one
    connection and one write per scheduler pass, replies handed back in order (see
    :mod:`trio_cluster.pooling.autopipeline`).  Blocking commands, transactions, ``WATCH`` and
    pub/sub still get connections of their own."""

    def __attrs_post_init__(self) -> None:
        if not _is_int(self.size) or self.size < 1:
            raise _fail("size", "an int >= 1", self.size)
        if not _is_int(self.min_idle) or not 0 <= self.min_idle <= self.size:
            raise _fail("min_idle", f"an int in 0..size ({self.size})", self.min_idle)
        if not _is_int(self.max_idle) or self.max_idle < 0:
            raise _fail("max_idle", "an int >= 0 (0 = no cap)", self.max_idle)
        if self.max_idle and self.max_idle < self.min_idle:
            raise _fail("max_idle", f"0 or >= min_idle ({self.min_idle})", self.max_idle)
        if not _is_int(self.max_active) or self.max_active < 0:
            raise _fail("max_active", "an int >= 0 (0 = no cap)", self.max_active)
        if self.timeout is not None and (not _is_num(self.timeout) or self.timeout <= 0):
            raise _fail("timeout", "a finite number > 0, or None", self.timeout)
        if not isinstance(self.fifo, bool):
            raise _fail("fifo", "a bool", self.fifo)
        for name in ("max_idle_time", "max_lifetime"):
            value = getattr(self, name)
            if value is not None and (not _is_num(value) or value <= 0):
                raise _fail(name, "a finite number > 0, or None", value)
        if not _is_num(self.lifetime_jitter) or not 0 <= self.lifetime_jitter < 1:
            raise _fail("lifetime_jitter", "a number in [0, 1)", self.lifetime_jitter)
        if not _is_int(self.dial_retries) or self.dial_retries < 0:
            raise _fail("dial_retries", "an int >= 0", self.dial_retries)
        if not _is_num(self.dial_backoff) or self.dial_backoff < 0:
            raise _fail("dial_backoff", "a finite number >= 0", self.dial_backoff)
        if not isinstance(self.autopipeline, bool):
            raise _fail("autopipeline", "a bool", self.autopipeline)


@attrs.frozen
class PoolStats:
    """A snapshot of one pool. Counters are cumulative since the pool was made; connection
    counts are read from the connections' states when the snapshot is taken."""

    node: str
    hits: int
    """Gets served with an already-open connection (at once, or handed over after waiting)."""
    misses: int
    """Gets served with a connection dialled while they waited."""
    timeouts: int
    """Gets that raised ``PoolTimeoutError``."""
    waits: int
    """Gets that had to park (however they ended)."""
    wait_time_total: float
    """Seconds spent parked, summed over every parked get."""
    total_connections: int
    """Open connections: idle + in use + unusable + closing."""
    idle_connections: int
    in_use_connections: int
    unusable_connections: int
    """In state UNUSABLE or INITIALIZING: held by the pool's drain or by a job that claimed
    it."""
    closing_connections: int
    pending_waiters: int
    """Gets parked right now."""
    dials: int
    """Dial attempts (each retry counts)."""
    dial_errors: int
    """Dial attempts that raised."""
    dials_in_progress: int
    closes: Mapping[str, int]
    """Connections removed, by :class:`CloseReason` value."""
    unusable_time_total: float = 0.0
    """Seconds connections spent UNUSABLE (held by a drain, a handoff or a re-authentication),
    summed over the jobs that have let go of them."""


@attrs.frozen
class ConnectionInfo:
    """One connection as :meth:`Pool.connections` sees it."""

    id: int
    node: str
    state: ConnState
    created_at: float
    last_used_at: float


class Claimant(Protocol[C_contra]):
    """A job that takes connections before the pool hands them to a caller (re-authentication
    on new credentials, handoff to a new endpoint).  Registered with
    :meth:`Pool.add_claimant`; both methods run inside the pool's synchronous decisions, so
    they must not block.

    Before an idle connection goes to a caller, the pool asks each claimant in turn whether it
    ``wants`` it; for the first that does, the pool claims it (IDLE -> UNUSABLE) and calls
    ``take``: the job holds it from then on and gives it back with :meth:`Pool.give_back`.
    """

    def wants(self, conn: C_contra) -> bool:
        """Whether this job must have ``conn`` (IDLE) before any caller does."""
        ...

    def take(self, conn: C_contra) -> None:
        """``conn`` is claimed for this job (UNUSABLE): start the job (it must not raise)."""
        ...
