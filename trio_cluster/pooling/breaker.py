"""A per-node circuit breaker: stop sending to a node that keeps failing, then probe it.

CLOSED: calls pass; ``failure_threshold`` consecutive failures open it (a timeout counts once
per command it held: a batch that timed out is that many unanswered commands; a reply slower
than ``slow_reply`` counts as a failure while another node of the client answers faster: an
outlier, in the manner of Envoy's outlier detection; ``failure_threshold`` outliers within
four times ``slow_reply`` open it; not on a connection whose timeouts a maintenance notice
relaxed).  Opening it fails the calls parked for one of the node's
connections (``on_open``).  OPEN: calls fail at
once with :class:`CircuitOpenError` (a ``ConnectionError`` that proves nothing was sent, so the
cluster client retries elsewhere after a topology refresh) until ``cooldown`` seconds pass
(doubled, up to 8 times, for a node that relapses into slow replies right after a probe).
HALF_OPEN: up to ``half_open_probes`` calls go through; a success closes the breaker (after
slow replies: ``failure_threshold`` fast ones in a row), a failure opens it again.
Synchronous and clock-driven (``trio.current_time``), so it costs a comparison per call and
is tested on the mock clock.
"""

from __future__ import annotations

import enum
import math
import weakref
from collections.abc import Callable

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

__all__ = ["BreakerOptions", "BreakerState", "CircuitBreaker", "CircuitOpenError", "Peers"]


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
    slow_reply: float | None = None
    """Seconds after which a reply counts as a failure, if another node of the same client
    answered in less since the call was sent (a node much slower than its peers: starved of
    bandwidth, swapping, overloaded).  None: a quarter of the read timeout (none without a
    read timeout); ``math.inf``: off.  Blocking commands, scripts and explicit pipelines are
    never counted slow: their length is the caller's."""

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
        if self.slow_reply is not None and (
            isinstance(self.slow_reply, bool)
            or not isinstance(self.slow_reply, int | float)
            or not self.slow_reply > 0
        ):
            raise ValueError(
                f"slow_reply must be a number of seconds > 0 (math.inf: off) or None (a quarter"
                f" of the read timeout); got {self.slow_reply!r}"
            )

    def slow_after(self, read_timeout: float | None) -> float:
        """The resolved :attr:`slow_reply` for connections with ``read_timeout``."""
        if self.slow_reply is not None:
            return float(self.slow_reply)
        return math.inf if read_timeout is None else read_timeout / 4


#: How many times ``cooldown`` a node that keeps relapsing into slow replies waits at most.
MAX_BACKOFF = 8

#: The breakers of one client's nodes: a slow reply is an outlier only beside a faster peer.
Peers = weakref.WeakSet["CircuitBreaker"]


class CircuitBreaker:
    """The breaker of one node.  ``slow_after``: :meth:`BreakerOptions.slow_after` resolved;
    ``peers``: the client's breakers (this one is added); ``on_open``: called each time it
    opens (the node factory fails the pool's parked gets with it)."""

    def __init__(
        self,
        name: str,
        options: BreakerOptions,
        *,
        slow_after: float = math.inf,
        peers: Peers | None = None,
        on_open: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.slow_after = slow_after
        self._peers = peers if peers is not None else Peers()
        self._peers.add(self)
        self._on_open = on_open
        #: When a reply faster than ``slow_after`` last came from this node, and a slower one.
        self.last_fast = -math.inf
        self.last_slow = -math.inf
        #: Replies that were outliers (too slow), since creation.
        self.slow = 0
        self._slow_since = -math.inf
        self._slow_in_window = 0
        #: The cooldown of the current (or last) opening, and when it last closed.
        self._cooldown = options.cooldown
        self._closed_at = -math.inf
        #: Probes passed since it last began probing, and how many readmit the node.
        self._passes = 0
        self._passes_needed = 1
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
            and trio.current_time() - self._opened_at < self._cooldown
        ):
            self.rejected += 1
            return self._refusal()
        return None

    def before_call(self) -> None:
        """Raise :class:`CircuitOpenError` if the call must not be sent."""
        if not self.options.enabled or self.state is BreakerState.CLOSED:
            return
        if self.state is BreakerState.OPEN:
            if trio.current_time() - self._opened_at < self._cooldown:
                self.rejected += 1
                raise self._refusal()
            self.state = BreakerState.HALF_OPEN
            self._probes = self._passes = 0
        if self._probes >= self.options.half_open_probes:
            self.rejected += 1
            raise self._refusal()
        self._probes += 1

    def refusal_error(self) -> CircuitOpenError:
        """A new refusal (counted): what a call parked for a connection gets when the
        breaker opens."""
        self.rejected += 1
        return self._refusal()

    def _refusal(self) -> CircuitOpenError:
        error = CircuitOpenError(self._refusal_text)
        error.node, error.reason = self.name, self.reason
        mark_unsent(error)
        return error

    def record_success(self) -> None:
        """A call to the node succeeded (an error reply counts: the node answered).  It
        closes a probing breaker; an open one stays open: the call was sent before it
        opened (a fast reply of a node found slow, or a reply that beat the failures)."""
        self._failures = 0
        if self.state is BreakerState.HALF_OPEN:
            self._passes += 1
            if self._passes < self._passes_needed:
                self.abandon_probe()  # passed: the next call probes
                return
            self._closed_at = trio.current_time()
            self.state = BreakerState.CLOSED

    def record_reply(self, sent_at: float, commands: int = 1) -> bool:
        """Replies (or error replies) came for a call carrying ``commands`` commands sent at
        ``sent_at``: a success, unless they took longer than ``slow_after`` while another
        node's latest reply was faster and came within a window (below) of this call: then
        an outlier (True returned).  A stall of the whole client makes every node's replies
        slow at once: after the first, no peer's latest reply is fast.  Outliers are counted
        in a window of ``4 x slow_after`` (a read timeout, by default), not in a row: a
        starved node's short replies still come fast between its slow ones.
        ``failure_threshold`` outliers in one window open the breaker; a probe that is one
        reopens it."""
        now = trio.current_time()
        if now - sent_at <= self.slow_after:
            self.last_fast = now
            self.record_success()
            return False
        self.last_slow = now
        window = 4 * self.slow_after
        if not any(
            # A peer whose latest reply was fast, and came within a window of this call:
            # it may be idle since (every caller waiting here), but it was not slow.
            peer.last_fast > peer.last_slow and peer.last_fast > sent_at - window
            for peer in self._peers
            if peer is not self
        ):
            self.record_success()  # every node is this slow: the client's load, not the node
            return False
        self.slow += commands
        if not self.options.enabled:
            return True
        if now - self._slow_since > window:
            self._slow_since, self._slow_in_window = now, 0
        self._slow_in_window += commands
        self._last_failure = (
            f"replies took {now - sent_at:.2f} s (slow_reply {self.slow_after:g} s) while"
            " other nodes answered faster"
        )
        if self.state is BreakerState.HALF_OPEN:
            self._open(f"its probe failed: {self._last_failure}", slow=True)
        elif self._slow_in_window >= self.options.failure_threshold:
            self._open(
                f"{self._slow_in_window} slow replies within {4 * self.slow_after:g} s, the"
                f" last {self._last_failure}",
                slow=True,
            )
        return True

    def record_failure(self, error: BaseException | None = None, count: int = 1) -> None:
        """A call failed for a reason that says the node is unwell (connection, timeout):
        ``error``, remembered to say why the breaker opened; ``count`` failures at once
        (the commands a timed-out batch held)."""
        if not self.options.enabled:
            return
        self._failures += count
        if error is not None:
            self._last_failure = f"{type(error).__name__}: {error}"
        if self.state is BreakerState.HALF_OPEN:
            self._open(f"its probe failed: {self._last_failure}")
        elif self._failures >= self.options.failure_threshold:
            self._open(f"{self._failures} failures in a row, the last {self._last_failure}")

    def _open(self, reason: str, slow: bool = False) -> None:
        """Open (again), saying why; the gets parked on the node's pool are refused.

        ``slow``: for slow replies.  Then the node is readmitted only after
        ``failure_threshold`` fast probes in a row, and a node found slow again within two
        windows of its readmission was readmitted too early: its cooldown doubles, up to
        :data:`MAX_BACKOFF` times ``cooldown`` (Envoy's ejection time grows likewise).  Any
        other opening starts again from ``cooldown``, and one probe readmits the node.
        """
        now = trio.current_time()
        base = self.options.cooldown
        relapsed = slow and now - self._closed_at <= 8 * self.slow_after
        self._cooldown = min(2 * self._cooldown, MAX_BACKOFF * base) if relapsed else base
        # One fast reply proves little about a slow node (it may have been a short one):
        # readmitted after ``failure_threshold`` probes in a row, one at a time.
        self._passes_needed = self.options.failure_threshold if slow else 1
        self.reason = reason
        # Written once per opening: a refusal is on the path of every call while open.
        self._refusal_text = (
            f"{self.name} is known bad ({reason}); command not sent, its circuit breaker lets"
            f" one probe through {self._cooldown:g} s after opening"
        )
        if self.state is not BreakerState.OPEN:
            self.opened += 1
        self.state = BreakerState.OPEN
        self._opened_at = now
        self._failures = 0
        self._slow_in_window = 0
        if self._on_open is not None:
            self._on_open()

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
        against the node; a busy or closed pool, a cancellation, or this breaker's own
        refusal of the parked gets (``on_open``), says nothing."""
        if isinstance(error, CircuitOpenError):
            return
        if node_failed(error) and not isinstance(error, PoolClosedError):
            self.record_failure(error)
        else:
            self.abandon_probe()

    def abandon_probe(self) -> None:
        """A half-open probe was cancelled before it could decide anything."""
        if self._probes > 0:
            self._probes -= 1
