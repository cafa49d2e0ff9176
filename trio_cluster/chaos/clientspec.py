"""How the chaos client is configured, and the bounds that configuration implies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trio_cluster import BreakerOptions, MaintNotificationsOptions, PoolOptions, RetryOptions

__all__ = ["ClientSpec", "blocked_bound", "recovery_bound", "scheduling_slack"]

#: Added to every time bound: scheduling noise on a loaded 2-core machine.
SLACK = 0.5
#: Each second of the baseline's p99 latency adds this many seconds of slack: when the machine
#: is busy, the run's own latencies show it first (a 5 ms p99 adds 0.05 s, a 100 ms p99 1 s).
SLACK_PER_P99 = 10.0


def scheduling_slack(baseline_p99: float) -> float:
    """The slack of a run whose baseline p99 latency was ``baseline_p99`` seconds."""
    return SLACK + SLACK_PER_P99 * max(baseline_p99, 0.0)


#: Retries kept small, so the bound on a blocked caller stays meaningful.
CHAOS_RETRY = RetryOptions(retries=1, budget=1.0, backoff_cap=0.2)


@dataclass(frozen=True)
class ClientSpec:
    """The client a scenario's workload uses."""

    pool: PoolOptions = field(default_factory=lambda: PoolOptions(size=8, min_idle=2, timeout=1.0))
    read_timeout: float = 0.5
    write_timeout: float = 0.5
    connect_timeout: float = 0.5
    retry: RetryOptions = CHAOS_RETRY
    breaker: BreakerOptions = field(default_factory=BreakerOptions)
    maint: MaintNotificationsOptions | None = None
    """Maintenance notifications (None: the client's default, ``"auto"``)."""

    def kwargs(self) -> dict[str, Any]:
        """Keywords for ``ClusterClient``."""
        options: dict[str, Any] = {
            "pool": self.pool,
            "read_timeout": self.read_timeout,
            "write_timeout": self.write_timeout,
            "connect_timeout": self.connect_timeout,
            "retry": self.retry,
            "breaker": self.breaker,
        }
        if self.maint is not None:
            options["maint_notifications"] = self.maint
        return options

    def _relaxable(self, timeout: float) -> float:
        # A maintenance notification (or a handoff) relaxes both timeouts to relaxed_timeout.
        if self.maint is not None and self.maint.mode != "disabled":
            return max(timeout, self.maint.relaxed_timeout)
        return timeout

    @property
    def longest_read_timeout(self) -> float:
        """The read timeout, or the relaxed one if notifications may relax it."""
        return self._relaxable(self.read_timeout)

    @property
    def longest_write_timeout(self) -> float:
        """The write timeout, or the relaxed one if notifications may relax it."""
        return self._relaxable(self.write_timeout)

    @property
    def handoff_timeout(self) -> float | None:
        """How long a MOVING handoff may own a connection (None: notifications disabled)."""
        if self.maint is None or self.maint.mode == "disabled":
            return None
        return self.maint.handoff_timeout

    @property
    def failover_wait(self) -> float:
        """Longest a command may wait for a failover the cluster expects soon (seconds):
        ``failover_wait_max`` under ``"auto"``, the retry budget under ``"always"``."""
        mode = self.retry.failover_wait
        if mode == "never":
            return 0.0
        return self.retry.failover_wait_max if mode == "auto" else self.retry.budget

    @property
    def pool_limit(self) -> int:
        """Most connections one node's pool may hold."""
        size = self.pool.size
        return min(size, self.pool.max_active) if self.pool.max_active else size

    @property
    def pool_timeout(self) -> float:
        """The pool wait as the client resolves it."""
        return self.pool.timeout if self.pool.timeout is not None else self.read_timeout + 1.0

    @property
    def unusable_bound(self) -> float:
        """Longest a connection may stay UNUSABLE: draining is bounded by the read timeout
        (relaxed or not), a MOVING handoff by the handoff timeout."""
        return self.unusable_limit(SLACK)

    def unusable_limit(self, slack: float) -> float:
        """:attr:`unusable_bound` with another slack."""
        return max(self.longest_read_timeout, self.handoff_timeout or 0.0) + slack


def recovery_bound(spec: ClientSpec, slack: float = SLACK, extra: float = 0.0) -> float:
    """How long after a fault clears the client may take to serve at its baseline again: a
    tripped breaker's cooldown, a command still blocked in an attempt (pool wait + write +
    read timeouts), a fresh dial (connect timeout), plus ``slack`` and what the scenario adds
    for the cluster's own reaction (``extra``)."""
    attempt = spec.pool_timeout + spec.longest_write_timeout + spec.longest_read_timeout
    cooldown = spec.breaker.cooldown if spec.breaker.enabled else 0.0
    return cooldown + attempt + spec.connect_timeout + slack + extra


def blocked_bound(spec: ClientSpec, slack: float = SLACK) -> float:
    """Longest a caller may be blocked in one command.

    One attempt costs at most pool wait + write timeout + read timeout (both relaxed, if
    maintenance notifications may relax them).  The client may retry:
    a command that provably never reached a server is retried until ``retry.budget`` has
    passed (the attempt running when it passes finishes), a read with an unknown outcome up to
    ``retry.retries`` times; before each retry it waits up to 1 s for a topology refresh plus
    two backoffs.  So: budget + (1 + retries) * (attempt + settle) + slack.
    """
    attempt = spec.pool_timeout + spec.longest_write_timeout + spec.longest_read_timeout
    settle = 1.0 + 2 * spec.retry.backoff_cap
    return spec.retry.budget + (1 + spec.retry.retries) * (attempt + settle) + slack
