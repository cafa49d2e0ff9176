"""A per-node circuit breaker: stop sending to a node that keeps failing, then probe it.

CLOSED: calls pass; ``failure_threshold`` consecutive failures open it (a timeout counts once
per command it held: a batch that timed out is that many unanswered commands).  OPEN: calls fail at
once with :class:`CircuitOpenError` (a ``ConnectionError`` that proves nothing was sent, so the
cluster client retries elsewhere after a topology refresh) until ``cooldown`` seconds pass.
HALF_OPEN: up to ``half_open_probes`` calls go through; a success closes the breaker, a failure
opens it again.  Synchronous and clock-driven (``trio.current_time``), so it costs a comparison
per call and is tested on the mock clock.
"""

from __future__ import annotations

import enum
import math

import attrs
import trio
from redis import exceptions as rex

from ..conn.connection import mark_unsent
from ..errors import PoolClosedError, PoolTimeoutError, node_failed

#: Replies of a node that answers but cannot serve its slots yet (restarted and not yet
#: part of a healthy cluster, loading its data): they fail a probe, so a node is readmitted
#: only once it serves.  Outside a probe they count neither way (a whole cluster saying
#: CLUSTERDOWN during a failover is not one node's fault).
NOT_SERVING = (rex.ClusterDownError, rex.BusyLoadingError, rex.MasterDownError)

__all__ = ["BreakerOptions", "BreakerState", "CircuitBreaker", "CircuitOpenError"]


class CircuitOpenError(rex.ConnectionError):
    """The node's circuit breaker is open (the node is known bad): the call was not sent.
    ``node`` names the node (``host:port``), ``reason`` says why it is known bad."""

    node: str = ""
    reason: str = ""


class BreakerState(enum.Enum):
    """The three states of a breaker."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@attrs.frozen(kw_only=True)
class BreakerOptions:
    """Circuit breaker settings; ``enabled=False`` turns breakers off."""

    enabled: bool = True
    failure_threshold: int = 5
    """Consecutive failed calls (refused, reset, timed out) that open the breaker."""
    cooldown: float = 0.5
    """Seconds an open breaker refuses every call before it lets a probe through."""
    half_open_probes: int = 1
    """Calls let through at once to probe the node; one success closes the breaker."""

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.failure_threshold, int) or self.failure_threshold < 1:
            raise ValueError(
                f"failure_threshold must be an int >= 1; got {self.failure_threshold!r}"
            )
        if not isinstance(self.cooldown, int | float) or not (
            math.isfinite(self.cooldown) and self.cooldown > 0
        ):
            raise ValueError(
                f"cooldown must be a finite number of seconds > 0; got {self.cooldown!r}"
            )
        if not isinstance(self.half_open_probes, int) or self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be an int >= 1; got {self.half_open_probes!r}")


class CircuitBreaker:
    """The breaker of one node."""

    def __init__(self, name: str, options: BreakerOptions) -> None:
        self.name = name
        self.options = options
        self.state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = -math.inf
        self._probes = 0
        #: Why the breaker opened last (named in every refusal).
        self.reason = ""
        self._last_failure = ""
        self._refusal_text = f"circuit breaker for {name} is open; command not sent"
        #: How many times it opened, and how many calls it refused, since creation.
        self.opened = 0
        self.rejected = 0

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name} {self.state.value} failures={self._failures}>"

    def refusal(self) -> CircuitOpenError | None:
        """The refusal :meth:`before_call` would raise now (counted), or None when a call
        may go through (closed, or a probe is due: then :meth:`before_call` decides).  No
        state changes but the count: the cheap test of a refused command's path."""
        if (
            self.state is BreakerState.OPEN
            and self.options.enabled
            and trio.current_time() - self._opened_at < self.options.cooldown
        ):
            self.rejected += 1
            return self._refusal()
        return None

    def before_call(self) -> None:
        """Raise :class:`CircuitOpenError` if the call must not be sent."""
        if not self.options.enabled or self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN:
            if trio.current_time() - self._opened_at < self.options.cooldown:
                self.rejected += 1
                raise self._refusal()
            self.state = BreakerState.HALF_OPEN
            self._probes = 0
        if self._probes >= self.options.half_open_probes:
            self.rejected += 1
            raise self._refusal()
        self._probes += 1

    def _refusal(self) -> CircuitOpenError:
        error = CircuitOpenError(self._refusal_text)
        error.node, error.reason = self.name, self.reason
        mark_unsent(error)
        return error

    def record_success(self) -> None:
        """A call to the node succeeded (an error reply counts: the node answered)."""
        self._failures = 0
        if self.state is not BreakerState.CLOSED:
            self.state = BreakerState.CLOSED

    def record_failure(self, error: BaseException | None = None, count: int = 1) -> None:
        """A call failed for a reason that says the node is unwell (connection, timeout):
        ``error``, remembered to say why the breaker opened; ``count`` failures at once
        (the commands a timed-out batch held)."""
        if not self.options.enabled:
            return
        self._failures += count
        if error is not None:
            self._last_failure = f"{type(error).__name__}: {error}"
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.options.failure_threshold:
            if self.state is BreakerState.HALF_OPEN:
                self.reason = f"its probe failed: {self._last_failure}"
            else:
                self.reason = f"{self._failures} failures in a row, the last {self._last_failure}"
            # Written once per opening: a refusal is on the path of every call while open.
            self._refusal_text = (
                f"{self.name} is known bad ({self.reason}); command not sent, its circuit"
                f" breaker lets one probe through {self.options.cooldown} s after opening"
            )
            if self.state is not BreakerState.OPEN:
                self.opened += 1
            self.state = BreakerState.OPEN
            self._opened_at = trio.current_time()
            self._failures = 0

    def record(self, error: BaseException | None, commands: int = 1) -> None:
        """How a call carrying ``commands`` commands went, by one rule
        (``errors.node_failed``): no error, or an error reply, means the node answered; a
        network failure counts against it, once (one event, however many commands the
        connection carried), but a timeout once per command (each waited its whole timeout
        unanswered); a reply saying the node cannot serve yet (:data:`NOT_SERVING`) fails a
        probe and says nothing otherwise; a cancellation, or a busy or closed pool, says
        nothing about it."""
        if error is None:
            self.record_success()
        elif isinstance(error, PoolTimeoutError | PoolClosedError) or not isinstance(
            error, Exception
        ):
            self.abandon_probe()
        elif isinstance(error, NOT_SERVING):
            if self.state is BreakerState.HALF_OPEN:
                self.record_failure(error)  # the probe found the node not serving yet
        elif node_failed(error):
            self.record_failure(error, commands if isinstance(error, rex.TimeoutError) else 1)
        else:
            self.record_success()

    def record_get_failure(self, error: BaseException) -> None:
        """A pool get for a call failed before anything was sent: a failed dial counts
        against the node; a busy or closed pool, or a cancellation, says nothing."""
        if node_failed(error) and not isinstance(error, PoolClosedError):
            self.record_failure(error)
        else:
            self.abandon_probe()

    def abandon_probe(self) -> None:
        """A half-open probe was cancelled before it could decide anything."""
        if self._probes > 0:
            self._probes -= 1
