"""What every checker shares: a :class:`Violation` (what broke), and the :class:`Bounds` a run
is checked against (derived per run by ``trio_cluster.chaos.runner.derive_bounds``)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["SHOWN", "Bounds", "Violation"]

#: Examples listed per kind of violation (then a count of the rest).
SHOWN = 5


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with enough detail to start debugging."""

    invariant: str
    message: str


@dataclass(frozen=True)
class Bounds:
    """The limits a scenario's run is checked against."""

    pool_size: int
    """Most connections one client may hold to one node (``PoolOptions.size``/``max_active``)."""
    unusable: float
    """Longest a connection may stay UNUSABLE (read timeout + slack)."""
    blocked: float
    """Longest a caller may be blocked in one command (see
    ``trio_cluster.chaos.clientspec.blocked_bound``)."""
    recovery: float
    """Seconds after a fault clears by which throughput and success rate must be back within
    the margins of the baseline (see :func:`recoveries`)."""
    zero_failures: bool = False
    """Every command must succeed (the fault is one the client must hide completely)."""
    read_timeout: float = 0.5
    """The client's read timeout (relaxed-timeout windows must have exceeded it)."""
    handoff_timeout: float | None = None
    """The client's handoff timeout, when it has maintenance notifications on."""
    longest_read_timeout: float = 0.0
    """The read timeout as maintenance notifications may relax it (0: not relaxable)."""
    slack: float = 0.0
    """Scheduling slack included in the time bounds (derived from the baseline's p99)."""
    held: float = 0.0
    """Longest a task may be held by a faulted node before the client knows it is bad: the
    longest read timeout (plus the wait for a failover expected soon, in a scenario that ends
    in one) + slack (the blast-radius bound; see ``trio_cluster.chaos.invariants.timing``)."""
    explain: dict[str, str] = field(default_factory=dict)
    """One line per bound: where its figure comes from."""
