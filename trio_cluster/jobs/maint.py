"""Maintenance notifications: endpoint handoff (MOVING), relaxed timeouts, slot migrations.

Servers that support it push, on RESP3 connections that asked with ``CLIENT
MAINT_NOTIFICATIONS ON``, frames announcing maintenance:

* ``MOVING seq seconds endpoint``: this node's connections should move to ``endpoint``
  (``null``: reconnect to the same address after half of ``seconds``).  Every connection of
  the node is handed off in the background: idle ones at once, in-use ones right after their
  command.  A handoff owns the connection (UNUSABLE), opens and greets a stream to the new
  endpoint, swaps it in, and gives the connection back; callers never wait on it and never see
  an error from it.  New connections go to the new endpoint.  Workers are bounded, retried with
  a short backoff within the handoff timeout, and a per-endpoint breaker stops hammering a dead
  endpoint; a handoff that fails closes its connection and the pool refills.
* ``MIGRATING`` / ``FAILING_OVER``: relax that connection's timeouts until ``MIGRATED`` /
  ``FAILED_OVER`` or an expiry (the Go original never expires them).
* ``SMIGRATING`` relaxes; ``SMIGRATED`` asks for a topology refresh, deduplicated by sequence
  number with a bounded memory.

Malformed frames are counted and ignored.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from ..config import ConnectionConfig
from ..conn.connection import Connection
from ..conn.state import ConnState
from ..lifetime import start_soon
from ..pooling.breaker import BreakerOptions, CircuitBreaker
from ..pooling.pool import BasePoolHook, Pool
from ..wire.encoding import text
from ..wire.protocol import PushFrame
from .claims import Claims

__all__ = ["MaintNotificationsOptions", "MaintenanceManager", "Notification", "parse_notification"]

logger = logging.getLogger("trio_cluster.maint")

_IDLE = (ConnState.IDLE,)


@attrs.frozen(kw_only=True)
class MaintNotificationsOptions:
    """Settings for maintenance notifications and endpoint handoffs."""

    mode: str = "auto"
    """"auto" (ask; a server without the feature is accepted quietly), "enabled" (a server
    without it fails the connection) or "disabled"."""
    endpoint_type: str = "internal-ip"
    relaxed_timeout: float = 10.0
    """Read/write timeout while a node is migrating or failing over."""
    relaxed_expiry: float = 30.0
    """Relaxed timeouts end by themselves after this long, even without MIGRATED."""
    handoff_timeout: float = 15.0
    """A handoff (with its retries) gives up after this long and closes the connection."""
    handoff_retries: int = 3
    max_workers: int | None = None
    """Concurrent handoffs; None = derived from the pool size (half of it, at least 1)."""
    post_handoff_relaxed: float = 20.0
    """Relaxed timeouts right after a handoff, while the new endpoint settles."""
    endpoint_breaker: BreakerOptions = attrs.field(
        factory=lambda: BreakerOptions(failure_threshold=5, cooldown=60.0, half_open_probes=3)
    )
    smigrated_memory: int = 1024
    """How many SMIGRATED sequence numbers are remembered for deduplication."""

    def __attrs_post_init__(self) -> None:
        if self.mode not in ("auto", "enabled", "disabled"):
            raise ValueError(f"mode must be auto, enabled or disabled; got {self.mode!r}")
        for name in (
            "relaxed_timeout",
            "relaxed_expiry",
            "handoff_timeout",
            "post_handoff_relaxed",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0; got {value!r}")
        if not isinstance(self.handoff_retries, int) or not 1 <= self.handoff_retries <= 10:
            raise ValueError(
                f"handoff_retries must be an int in 1..10; got {self.handoff_retries!r}"
            )
        if self.max_workers is not None and (
            not isinstance(self.max_workers, int) or self.max_workers < 1
        ):
            raise ValueError(f"max_workers must be None or an int >= 1; got {self.max_workers!r}")


class Kind(enum.Enum):
    """The notification types."""

    MOVING = "MOVING"
    MIGRATING = "MIGRATING"
    MIGRATED = "MIGRATED"
    FAILING_OVER = "FAILING_OVER"
    FAILED_OVER = "FAILED_OVER"
    SMIGRATING = "SMIGRATING"
    SMIGRATED = "SMIGRATED"


@attrs.frozen
class Notification:
    """A parsed maintenance notification."""

    kind: Kind
    seq: int
    seconds: int = 0
    endpoint: tuple[str, int] | None = None


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts may be bracketed) -> (host, port); ValueError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bad endpoint {text!r}")
    return host.strip("[]"), int(port)


def parse_notification(frame: PushFrame) -> Notification | None:
    """A maintenance notification, or None if ``frame`` is some other push (pub/sub...).

    Raises ValueError for a maintenance frame whose shape is wrong.
    """
    if not frame:
        return None
    try:
        kind = Kind(text(frame[0]).upper())
    except ValueError:
        return None
    minimum = 3 if kind in (Kind.MOVING, Kind.SMIGRATING, Kind.SMIGRATED) else 2
    if len(frame) < minimum:
        raise ValueError(f"{kind.value} frame too short: {len(frame)} elements")
    seq = int(frame[1])
    if kind is Kind.MOVING:
        seconds = int(frame[2])
        if seconds < 0:
            raise ValueError("MOVING with a negative time")
        raw = frame[3] if len(frame) > 3 else None
        endpoint = parse_endpoint(text(raw)) if raw not in (None, b"", "") else None
        return Notification(kind, seq, seconds, endpoint)
    return Notification(kind, seq)


class Endpoints(Protocol):
    """What the manager needs from the pool's dialer (:class:`~trio_cluster.dialer.Dialer`)."""

    config: ConnectionConfig
    """Where new connections go; a MOVING points it at the new endpoint."""

    async def handoff(self, conn: Connection, endpoint: tuple[str, int]) -> None:
        """Move ``conn`` to ``endpoint`` on a stream opened like every other connection."""
        ...


class MaintenanceManager(BasePoolHook[Connection]):
    """Acts on the maintenance notifications of one node's pool.

    ``dialer`` is the pool's: the manager moves its endpoint after a MOVING (new connections
    go to the new endpoint) and opens every handoff's new stream through it, so a moved
    connection keeps the newest credentials, TLS and timeouts.  ``on_smigrated`` (if given)
    is called for each new SMIGRATED.
    """

    def __init__(
        self,
        options: MaintNotificationsOptions,
        pool: Pool[Connection],
        dialer: Endpoints,
        *,
        on_smigrated: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self._pool = pool
        self._dialer = dialer
        self._on_smigrated = on_smigrated
        workers = options.max_workers or max(1, pool.options.size // 2)
        self._limiter = trio.CapacityLimiter(workers)
        self._breakers: dict[tuple[str, int], CircuitBreaker] = {}
        self._moving_seen: collections.deque[int] = collections.deque(maxlen=256)
        self._smigrated_seen: collections.deque[int] = collections.deque(
            maxlen=options.smigrated_memory
        )
        self._nursery: trio.Nursery | None = None
        #: Handoff jobs on the pool's connections.
        self._claims = Claims(self._handoff, wait_limit=options.handoff_timeout)
        self.disabled = False
        #: Counters, for stats.
        self.received: collections.Counter[str] = collections.Counter()
        self.malformed = 0
        self.handoffs = 0
        self.handoff_failures = 0
        pool.add_hook(self)

    def start(self, nursery: trio.Nursery) -> None:
        """Jobs run in ``nursery``; a sweep reads pushes that land on idle connections."""
        self._nursery = nursery
        self._claims.start(nursery)
        start_soon(nursery, self._sweep_idle)

    def stand_down(self) -> None:
        """The server sends no notifications (``auto`` mode found it lacks them): leave the
        pool's hot path and stop sweeping, so the feature costs nothing."""
        self.disabled = True
        self._pool.remove_hook(self)

    def relaxed_connections(self) -> int:
        """Connections whose timeouts are relaxed right now."""
        return sum(1 for conn in self._pool.live_connections() if conn.relaxed)

    # --- push frames -------------------------------------------------------------------------

    def on_push(self, conn: Connection, frame: PushFrame) -> None:
        """Called by the connection for every push frame it reads (synchronously)."""
        try:
            note = parse_notification(frame)
        except (ValueError, TypeError, IndexError, UnicodeDecodeError):
            self.malformed += 1
            return
        if note is None:
            return
        self.received[note.kind.value] += 1
        now = trio.current_time()
        options = self.options
        if note.kind in (Kind.MIGRATING, Kind.FAILING_OVER, Kind.SMIGRATING):
            conn.relax(options.relaxed_timeout, now + options.relaxed_expiry)
        elif note.kind in (Kind.MIGRATED, Kind.FAILED_OVER):
            conn.unrelax()
        elif note.kind is Kind.SMIGRATED:
            conn.unrelax()
            if note.seq not in self._smigrated_seen:
                self._smigrated_seen.append(note.seq)
                if self._on_smigrated is not None:
                    self._on_smigrated()
        elif note.kind is Kind.MOVING:
            self._moving(conn, note)

    def _moving(self, conn: Connection, note: Notification) -> None:
        if note.seq in self._moving_seen or self._nursery is None:
            return  # every connection of the node gets the same MOVING: act once
        self._moving_seen.append(note.seq)
        if note.endpoint is None:
            # No new address: the same one will serve again after half the announced time.
            start_soon(self._nursery, self._move_later, conn.config.host, conn.config.port, note)
            return
        self._move_all(note.endpoint)

    async def _move_later(self, host: str, port: int, note: Notification) -> None:
        await trio.sleep(note.seconds / 2)
        self._move_all((host, port))

    def _move_all(self, endpoint: tuple[str, int]) -> None:
        dialer = self._dialer
        dialer.config = attrs.evolve(dialer.config, host=endpoint[0], port=endpoint[1])
        for conn in self._pool.live_connections():
            conn.handoff_to = endpoint
            self._claims.schedule(self._pool, conn)

    # --- the pool hook -------------------------------------------------------------------------

    def on_get(self, conn: Connection, is_new: bool) -> bool:
        """A connection due for a handoff is never handed out: its job takes it instead."""
        if conn.handoff_to is None:
            return True
        return not self._claims.claim_now(self._pool, conn)

    @property
    def longest_unusable(self) -> float:
        """The longest a connection was kept from callers by a handoff (seconds)."""
        return self._claims.longest_claim

    # --- the job ---------------------------------------------------------------------------------

    async def _handoff(self, conn: Connection) -> None:
        """``conn`` is claimed: move it to its endpoint (broken if that keeps failing)."""
        options = self.options
        moved = False  # did this job move it (another job may have, meanwhile)?
        with trio.move_on_after(options.handoff_timeout):
            done = False
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
            breaker = self._breakers[endpoint] = CircuitBreaker(name, self.options.endpoint_breaker)
        return breaker

    async def _sweep_idle(self) -> None:
        """Read pushes that arrive on idle connections (nobody else reads them)."""
        while not self.disabled:
            await trio.sleep(0.05)
            for conn in self._pool.live_connections():
                if conn.state.state is ConnState.IDLE:
                    conn.peer_closed()  # reads and dispatches any push frame waiting
