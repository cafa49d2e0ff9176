"""Maintenance notifications: what they say, and what each one does to its connection.

Servers that support it push, on RESP3 connections that asked with ``CLIENT
MAINT_NOTIFICATIONS ON``, frames announcing maintenance:

* ``MOVING seq seconds endpoint``: this node's connections should move to ``endpoint``
  (``null``: reconnect to the same address after half of ``seconds``).  :class:`MaintNotices`
  queues the move, once per sequence number, for the node's handoff manager
  (``handoff.py``), which hands every connection over in the background.
* ``MIGRATING`` / ``FAILING_OVER``: relax that connection's timeouts until ``MIGRATED`` /
  ``FAILED_OVER`` or an expiry (the Go original never expires them).
* ``SMIGRATING`` relaxes; ``SMIGRATED`` asks for a topology refresh, deduplicated by sequence
  number with a bounded memory.

Malformed frames are counted and ignored.  :class:`MaintNotices` needs neither the pool nor
the dialer: the dialer hands it to each pooled connection as its push handler, and the handoff
manager, made after the pool, reads the moves it queued.
"""

from __future__ import annotations

import collections
import enum
import math
from collections.abc import Callable

import attrs
import trio

from ..conn.connection import Connection
from ..pooling.breaker import BreakerOptions
from ..wire.encoding import text
from ..wire.protocol import PushFrame

__all__ = [
    "Kind",
    "MaintNotices",
    "MaintNotificationsOptions",
    "Notification",
    "parse_notification",
]


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


class MaintNotices:
    """The maintenance notifications of one node: the push handler of its pooled connections.

    Acts on a connection's own notifications at once (relaxing or restoring its timeouts),
    asks for a topology refresh on each new SMIGRATED (``on_smigrated``), and queues each new
    MOVING for the node's handoff manager (:meth:`next_move`).
    """

    def __init__(
        self,
        options: MaintNotificationsOptions,
        *,
        on_smigrated: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self._on_smigrated = on_smigrated
        self._moving_seen: collections.deque[int] = collections.deque(maxlen=256)
        self._smigrated_seen: collections.deque[int] = collections.deque(
            maxlen=options.smigrated_memory
        )
        self._moves: collections.deque[Notification] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()  # the handoff manager, waiting for a move
        self._disabled = False
        #: Counters, for stats.
        self.received: collections.Counter[str] = collections.Counter()
        self.malformed = 0

    @property
    def disabled(self) -> bool:
        """Whether the node turned out to have no notifications (:meth:`stand_down`)."""
        return self._disabled

    def stand_down(self) -> None:
        """The server sends no notifications (``auto`` mode found it lacks them): the handoff
        manager leaves the pool's hot path."""
        self._disabled = True
        self._lot.unpark_all()

    async def next_move(self) -> Notification:
        """Wait for the next new MOVING (its endpoint None: reconnect to the same address
        after half its ``seconds``).

        Raises:
            trio.ClosedResourceError: the node has no notifications (:meth:`stand_down`).
        """
        while not self._moves:
            if self._disabled:
                raise trio.ClosedResourceError("this node sends no maintenance notifications")
            await self._lot.park()
        return self._moves.popleft()

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
        elif note.kind is Kind.MOVING and note.seq not in self._moving_seen:
            # Every connection of the node gets the same MOVING: act once.
            self._moving_seen.append(note.seq)
            self._moves.append(note)
            self._lot.unpark_all()
