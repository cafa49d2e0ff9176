"""The invariants as one table, and the one pass that applies it to a run.

Each :class:`Rule` is a row: its check code (the name ``checks`` and the reports use), when it
applies to a run, the checker, and why a run may not let it be checked (fully).  Everything the
rules and the reports derive from a record (the baseline, the recoveries, the blast radii, the
pub/sub tally, the losses a failover excuses) is computed once, in :class:`Evidence`, and
handed back in the :class:`Verdict`: nothing downstream computes it again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..records import Observation, RunRecord
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
from .pubsub import PubSubTally, check_pubsub, pubsub_findings
from .timing import (
    Baseline,
    BlastRadius,
    Recovery,
    blast_radii,
    check_blast_radius,
    check_recovery,
    recoveries,
    run_baseline,
)

__all__ = ["RULES", "Evidence", "Rule", "Verdict", "check_all"]


@dataclass(frozen=True)
class Evidence:
    """A run's record and bounds, with everything derived from them computed once."""

    record: RunRecord
    bounds: Bounds
    baseline: Baseline
    reads: list[Observation]
    """Every read checked: anomalies seen by the workers, and the end-of-run reads."""
    lost: list[Violation]
    excused: list[Observation]
    """Losses the server was allowed to make (acknowledged inside a loss window)."""
    recoveries: list[Recovery]
    blast: list[BlastRadius]
    pubsub: PubSubTally | None

    @classmethod
    def of(cls, record: RunRecord, bounds: Bounds, baseline: Baseline | None = None) -> Evidence:
        """Derive the evidence of ``record`` (``baseline``: the run's, when already known)."""
        if baseline is None:
            baseline = run_baseline(record)
        reads = [*record.anomalies, *record.final_reads]
        lost, excused = check_lost_writes(reads, record.loss_windows)
        load_end = record.end if record.load_end is None else record.load_end
        found = recoveries(record.ops, record.fault_windows, baseline, load_end)
        blast = blast_radii(record.ops, record.fault_windows, baseline, bounds.held)
        tally = None
        if record.pubsub is not None:
            tally = pubsub_findings(record.pubsub, record.fault_windows)
        return cls(record, bounds, baseline, reads, lost, excused, found, blast, tally)

    @property
    def machine_too_slow(self) -> bool:
        """The run's own baseline p99 was at least half the read timeout: the machine could
        not meet the client's timeouts, so a timeout is the machine's, not the client's."""
        base = self.baseline
        return base.ops > 0 and base.p99 >= self.bounds.read_timeout / 2


def _always(_: Evidence) -> bool:
    return True


def _never_unchecked(_: Evidence) -> str | None:
    return None


@dataclass(frozen=True)
class Rule:
    """One invariant: its code, when it applies, its checker, and why a run may leave it not
    (fully) checked."""

    code: str
    applies: Callable[[Evidence], bool]
    check: Callable[[Evidence], list[Violation]]
    unchecked: Callable[[Evidence], str | None] = _never_unchecked
    """None: checked; else why it was not (fully), shown as ``not checked: <why>`` unless the
    rule failed anyway."""


def _nothing_read(e: Evidence) -> str | None:
    return None if e.record.reads_checked or e.record.final_reads else "nothing was read"


def _no_sample(e: Evidence) -> str | None:
    return None if e.record.samples or e.record.max_per_node else "no sample"


def _recovery_unchecked(e: Evidence) -> str | None:
    unmeasured = [r.window for r in e.recoveries if not r.measured]
    if not unmeasured:
        return None
    short = "baseline too short" if not e.baseline.measured else "load after it too short"
    return f"{short} ({', '.join(unmeasured)})"


def _blast_unchecked(e: Evidence) -> str | None:
    why = [f"{b.window}: {b.unchecked}" for b in e.blast if b.unchecked is not None]
    return "; ".join(why) or None


def _client_counts(e: Evidence) -> list[Violation]:
    r = e.record
    return check_client_counts(r.baseline_clients, r.final_clients) + check_client_counts(
        r.baseline_pubsub_clients, r.final_pubsub_clients, "pub/sub clients"
    )


def _failures(e: Evidence) -> list[Violation]:
    r, b = e.record, e.bounds
    return check_failures(r.ops, excuse_timeouts=e.machine_too_slow, stalls=r.stalls,
                          timeout=b.read_timeout)  # fmt: skip


def _failures_unchecked(e: Evidence) -> str | None:
    """Timeouts excused because the machine, not the client, was too slow (see
    ``Evidence.machine_too_slow`` and ``trio_cluster.chaos.invariants.data.starved``)."""
    r, b = e.record, e.bounds
    timeouts = sum(1 for op in r.ops if not op.ok and op.error in TIMEOUT_ERRORS)
    if e.machine_too_slow and timeouts:
        return (
            f"{timeouts} timeouts not counted: the baseline p99 ({1000 * e.baseline.p99:.0f} ms) "
            f"was at least half the read timeout ({b.read_timeout} s); other failures were "
            "checked"
        )
    stalled = sum(1 for op in r.ops if starved(op, r.stalls, b.read_timeout))
    if stalled:
        return (
            f"{stalled} timeouts not counted: the event loop stalled for half the read timeout "
            "while they waited; other failures were checked"
        )
    return None


def _pubsub(e: Evidence) -> list[Violation]:
    assert e.record.pubsub is not None
    return check_pubsub(e.record.pubsub, e.record.fault_windows, e.bounds.recovery, e.pubsub)


#: Every invariant, in the order the reports list them.
RULES: tuple[Rule, ...] = (
    Rule("no-misdelivered-reply", _always, lambda e: check_misdelivery(e.reads), _nothing_read),
    Rule("no-acknowledged-write-lost", _always, lambda e: e.lost, _nothing_read),
    Rule("pool-bound", _always,
         lambda e: check_pool_bounds(e.record.max_per_node, e.bounds.pool_size), _no_sample),
    Rule("unusable-bound", _always,
         lambda e: check_unusable(e.record.unusable_spans, e.bounds.unusable), _no_sample),
    Rule("caller-blocked-bound", _always,
         lambda e: check_blocked(e.record.ops, e.bounds.blocked),
         lambda e: None if e.record.ops else "no operation"),
    Rule("recovery", lambda e: bool(e.record.fault_windows),
         lambda e: check_recovery(e.recoveries, e.bounds.recovery), _recovery_unchecked),
    Rule("blast-radius", lambda e: bool(e.blast),
         lambda e: check_blast_radius(e.blast), _blast_unchecked),
    Rule("connections-closed", _always, lambda e: check_leaks(e.record.leaked_connections)),
    Rule("server-clients-baseline", _always, _client_counts,
         lambda e: None if e.record.baseline_clients
         else "servers' client lists need --cluster local"),
    Rule("no-failed-command", lambda e: e.bounds.zero_failures, _failures, _failures_unchecked),
    Rule("handoff", lambda e: e.bounds.handoff_timeout is not None or bool(e.record.handoffs),
         lambda e: check_handoffs(e.record.handoffs, e.record.maintenance,
                                  e.bounds.handoff_timeout),
         lambda e: None if e.record.handoffs else "no MOVING was sent"),
    Rule("relaxed-timeouts", lambda e: bool(e.record.relaxed_windows),
         lambda e: check_relaxed(e.record.ops, e.record.relaxed_windows, e.bounds.read_timeout,
                                 e.record.stalls, e.bounds.longest_read_timeout or math.inf)),
    Rule("credential-rotation", lambda e: bool(e.record.auth_checks),
         lambda e: check_auth(e.record.auth_checks, e.record.maintenance)),
    Rule("pubsub", lambda e: e.record.pubsub is not None, _pubsub),
)  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """What :func:`check_all` found, and everything it derived on the way."""

    violations: list[Violation]
    checks: dict[str, str]
    """Rule code -> ``passed``, ``failed`` or ``not checked: <why>``, for every rule that
    applies to the run, in table order."""
    baseline: Baseline
    excused: list[Observation] = field(default_factory=list)
    """Losses the server was allowed to make (acknowledged inside a loss window)."""
    recoveries: list[Recovery] = field(default_factory=list)
    blast: list[BlastRadius] = field(default_factory=list)
    pubsub: PubSubTally | None = None


def check_all(
    record: RunRecord,
    bounds: Bounds,
    baseline: Baseline | None = None,
    rules: tuple[Rule, ...] = RULES,
) -> Verdict:
    """Apply every rule that applies to ``record`` (``baseline``: the run's, when the caller
    already measured it to derive ``bounds``)."""
    evidence = Evidence.of(record, bounds, baseline)
    violations: list[Violation] = []
    checks: dict[str, str] = {}
    for rule in rules:
        if not rule.applies(evidence):
            continue
        found = rule.check(evidence)
        violations += found
        why = rule.unchecked(evidence)
        status = "passed" if why is None else f"not checked: {why}"
        checks[rule.code] = "failed" if found else status
    return Verdict(violations, checks, evidence.baseline, evidence.excused, evidence.recoveries,
                   evidence.blast, evidence.pubsub)  # fmt: skip
