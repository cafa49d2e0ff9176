"""The invariants every scenario checks, as pure functions over a ``RunRecord``.

Each checker returns a list of :class:`Violation`; an empty list means the invariant held.
:data:`RULES` (``table``) lists them with when each applies; :func:`check_all` applies that
table once and returns a :class:`Verdict`.  By concern: ``base`` (violations, bounds),
``timing`` (baseline, recovery, blast radius), ``data`` (replies, writes, pools, callers,
leaks, failures), ``maint`` (handoffs, relaxed timeouts, credential rotation), ``pubsub``.
"""

from __future__ import annotations

from ..records import CANCELLED
from .base import Bounds, Violation
from .data import (
    TIMEOUT_ERRORS,
    check_blocked,
    check_client_counts,
    check_failures,
    check_leaks,
    check_lost_writes,
    check_misdelivery,
    check_pool_bounds,
    check_unusable,
    starved,
)
from .maint import check_auth, check_handoffs, check_relaxed
from .pubsub import (
    GAP_SLACK,
    PubSubTally,
    check_pubsub,
    check_pubsub_connections,
    check_pubsub_duplicates,
    check_pubsub_gaps,
    check_pubsub_losses,
    check_pubsub_misdelivery,
    check_pubsub_order,
    in_flight,
    pubsub_findings,
    pubsub_tally,
)
from .table import RULES, Evidence, Rule, Verdict, check_all
from .timing import (
    RECOVERY_WINDOW,
    SUCCESS_MARGIN,
    THROUGHPUT_MARGIN,
    Baseline,
    BlastRadius,
    Partition,
    Recovery,
    baseline_of,
    blast_radii,
    check_blast_radius,
    check_recovery,
    faulted,
    percentile,
    recoveries,
    run_baseline,
    steadiness,
)

__all__ = [
    "CANCELLED",
    "GAP_SLACK",
    "RECOVERY_WINDOW",
    "RULES",
    "SUCCESS_MARGIN",
    "THROUGHPUT_MARGIN",
    "TIMEOUT_ERRORS",
    "Baseline",
    "BlastRadius",
    "Bounds",
    "Evidence",
    "Partition",
    "PubSubTally",
    "Recovery",
    "Rule",
    "Verdict",
    "Violation",
    "baseline_of",
    "blast_radii",
    "check_all",
    "check_auth",
    "check_blast_radius",
    "check_blocked",
    "check_client_counts",
    "check_failures",
    "check_handoffs",
    "check_leaks",
    "check_lost_writes",
    "check_misdelivery",
    "check_pool_bounds",
    "check_pubsub",
    "check_pubsub_connections",
    "check_pubsub_duplicates",
    "check_pubsub_gaps",
    "check_pubsub_losses",
    "check_pubsub_misdelivery",
    "check_pubsub_order",
    "check_recovery",
    "check_relaxed",
    "check_unusable",
    "faulted",
    "in_flight",
    "percentile",
    "pubsub_findings",
    "pubsub_tally",
    "recoveries",
    "run_baseline",
    "starved",
    "steadiness",
]
