"""The invariants every scenario checks, as pure functions over a ``RunRecord``.

Each checker returns a list of :class:`Violation`; an empty list means the invariant held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .records import AuthCheck, HandoffCheck, Observation, Op, RunRecord, Window

__all__ = [
    "CANCELLED",
    "Bounds",
    "Recovery",
    "Violation",
    "check_all",
    "check_auth",
    "check_blocked",
    "check_client_counts",
    "check_failures",
    "check_handoffs",
    "check_leaks",
    "check_lost_writes",
    "check_misdelivery",
    "check_pool_bounds",
    "check_recovery",
    "check_relaxed",
    "check_unusable",
    "recoveries",
]

#: ``Op.error`` for a command the workload itself cancelled (its own random deadline).
CANCELLED = "Cancelled"
#: At least this many operations must follow a fault to judge its recovery.
MIN_OPS_AFTER_FAULT = 30


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
    """Longest a caller may be blocked in one command (see ``chaos.config.blocked_bound``)."""
    recovery: float
    """Seconds after a fault clears by which the success rate must be back to ``target``."""
    target: float = 0.999
    zero_failures: bool = False
    """Every command must succeed (the fault is one the client must hide completely)."""
    read_timeout: float = 0.5
    """The client's read timeout (relaxed-timeout windows must have exceeded it)."""
    handoff_timeout: float | None = None
    """The client's handoff timeout, when it has maintenance notifications on."""


@dataclass(frozen=True)
class Recovery:
    """How one fault window ended: seconds from its end until the success rate recovered."""

    window: str
    seconds: float | None
    """None: not enough operations after the fault, or the rate never came back."""
    ops_after: int


def _in_any(t: float, windows: Iterable[Window]) -> Window | None:
    return next((w for w in windows if w.contains(t)), None)


def check_misdelivery(anomalies: Sequence[Observation]) -> list[Violation]:
    """A read returned a value of another key, a version never written, or something that is
    not a value the workload writes: a reply reached the wrong caller."""
    out = []
    for obs in anomalies:
        if obs.got_key is None or obs.got_key != obs.key or obs.got_version > obs.hi:
            out.append(
                Violation(
                    "no-misdelivered-reply",
                    f"read of {obs.key} at t={obs.at:.3f} returned {obs.raw!r} "
                    f"(expected {obs.key} version {obs.lo}..{obs.hi})",
                )
            )
    return out


def check_lost_writes(
    observations: Sequence[Observation], loss_windows: Sequence[Window]
) -> tuple[list[Violation], list[Observation]]:
    """An acknowledged write is older than what was read later (or the key is gone).

    Returns the violations and the losses that the server was allowed to make because the
    write was acknowledged inside a loss window (a failover).
    """
    violations: list[Violation] = []
    excused: list[Observation] = []
    for obs in observations:
        if obs.got_key != obs.key or obs.got_version > obs.hi:
            continue  # a misdelivery, reported by check_misdelivery
        if obs.got_version >= obs.lo or obs.lo == 0:
            continue
        window = _in_any(obs.acked_at, loss_windows)
        if window is not None:
            excused.append(obs)
            continue
        where = "end-of-run read" if obs.final else f"read at t={obs.at:.3f}"
        got = "missing" if obs.got_version == -1 else f"version {obs.got_version}"
        violations.append(
            Violation(
                "no-acknowledged-write-lost",
                f"{obs.key}: version {obs.lo} acknowledged at t={obs.acked_at:.3f}, "
                f"{where} found {got}",
            )
        )
    return violations, excused


def check_pool_bounds(max_per_node: dict[str, int], limit: int) -> list[Violation]:
    """No client ever held more connections to one node than its pool allows."""
    return [
        Violation("pool-bound", f"{node}: {count} connections open at once, bound {limit}")
        for node, count in sorted(max_per_node.items())
        if count > limit
    ]


def check_unusable(spans: dict[int, float], bound: float) -> list[Violation]:
    """No connection stayed UNUSABLE longer than ``bound`` seconds."""
    return [
        Violation("unusable-bound", f"connection {cid} UNUSABLE for {span:.3f} s, bound {bound} s")
        for cid, span in sorted(spans.items())
        if span > bound
    ]


def check_blocked(ops: Sequence[Op], bound: float, limit: int = 5) -> list[Violation]:
    """No caller was blocked in one command longer than ``bound`` seconds."""
    slow = sorted((op for op in ops if op.latency > bound), key=lambda op: -op.latency)
    out = [
        Violation(
            "caller-blocked-bound",
            f"worker {op.worker} {op.kind} at t={op.start:.3f} blocked {op.latency:.3f} s "
            f"(bound {bound:.3f} s, ended with {op.error or 'success'})",
        )
        for op in slow[:limit]
    ]
    if len(slow) > limit:
        out.append(Violation("caller-blocked-bound", f"... and {len(slow) - limit} more"))
    return out


def recoveries(
    ops: Sequence[Op], faults: Sequence[Window], target: float, load_end: float
) -> list[Recovery]:
    """For each fault window: how long after its end the success rate of the operations that
    started afterwards (until the next fault) stays at ``target`` or better."""
    counted = sorted((op for op in ops if op.error != CANCELLED), key=lambda op: op.start)
    ordered = sorted(faults, key=lambda w: w.start)
    out = []
    for index, window in enumerate(ordered):
        until = ordered[index + 1].start if index + 1 < len(ordered) else load_end
        after = [op for op in counted if window.end <= op.start < until]
        fails = [0] * (len(after) + 1)
        for i in range(len(after) - 1, -1, -1):
            fails[i] = fails[i + 1] + (0 if after[i].ok else 1)
        seconds = None
        for i, op in enumerate(after):
            remaining = len(after) - i
            if remaining < MIN_OPS_AFTER_FAULT:
                break
            if (remaining - fails[i]) / remaining >= target:
                seconds = 0.0 if i == 0 else op.start - window.end
                break
        out.append(Recovery(window.name, seconds, len(after)))
    return out


def check_recovery(found: Sequence[Recovery], bound: float) -> list[Violation]:
    """After each fault the success rate came back within ``bound`` seconds."""
    out = []
    for rec in found:
        if rec.seconds is None:
            out.append(
                Violation(
                    "recovery",
                    f"after {rec.window}: success rate never returned to target "
                    f"({rec.ops_after} ops afterwards)",
                )
            )
        elif rec.seconds > bound:
            out.append(
                Violation(
                    "recovery",
                    f"after {rec.window}: recovered in {rec.seconds:.2f} s, bound {bound} s",
                )
            )
    return out


def check_leaks(leaked: Sequence[str]) -> list[Violation]:
    """Every connection of every client is closed once the client is."""
    return [Violation("connections-closed", f"still open after close: {c}") for c in leaked]


def check_client_counts(baseline: dict[int, int], final: dict[int, int]) -> list[Violation]:
    """Each server's client count is back to its baseline (only nodes measured both times)."""
    return [
        Violation(
            "server-clients-baseline",
            f"node :{port} has {final[port]} clients, baseline {baseline[port]}",
        )
        for port in sorted(baseline)
        if port in final and final[port] > baseline[port]
    ]


def check_failures(ops: Sequence[Op], limit: int = 5) -> list[Violation]:
    """No command failed (commands the workload cancelled itself do not count)."""
    failed = [op for op in ops if not op.ok and op.error != CANCELLED]
    if not failed:
        return []
    by_error = Counter(op.error or "?" for op in failed)
    summary = ", ".join(f"{error}={n}" for error, n in sorted(by_error.items()))
    out = [Violation("no-failed-command", f"{len(failed)} commands failed ({summary})")]
    out += [
        Violation(
            "no-failed-command",
            f"worker {op.worker} {op.kind} at t={op.start:.3f} failed with {op.error}",
        )
        for op in sorted(failed, key=lambda op: op.start)[:limit]
    ]
    return out


def _total(maintenance: Mapping[str, Mapping[str, Any]], field: str) -> float:
    return sum(float(stats.get(field, 0)) for stats in maintenance.values())


def check_handoffs(
    checks: Sequence[HandoffCheck],
    maintenance: Mapping[str, Mapping[str, Any]],
    timeout: float | None,
) -> list[Violation]:
    """After a MOVING, every connection of the node is on the new endpoint, handoffs happened,
    none failed, and none kept its connection out of use for the handoff timeout.

    ``maintenance`` is each client's ``maintenance_stats()``; nothing is checked when no MOVING
    was sent (``checks`` empty)."""
    if not checks:
        return []
    out = []
    for check in checks:
        if check.targeted == 0:
            out.append(
                Violation("handoff", f"{check.when}: no connection to {check.node} to check")
            )
        if check.stragglers:
            shown = ", ".join(check.stragglers[:5])
            more = f" and {len(check.stragglers) - 5} more" if len(check.stragglers) > 5 else ""
            out.append(
                Violation(
                    "handoff",
                    f"{check.when}: {len(check.stragglers)} of {check.targeted} connections to "
                    f"{check.node} not on {check.endpoint}: {shown}{more}",
                )
            )
    if _total(maintenance, "handoffs") == 0:
        out.append(Violation("handoff", "MOVING was sent but the client handed off nothing"))
    failures = _total(maintenance, "handoff_failures")
    if failures:
        out.append(Violation("handoff", f"{failures:.0f} handoffs failed"))
    longest = max((float(s.get("longest_unusable", 0.0)) for s in maintenance.values()), default=0)
    if timeout is not None and longest >= timeout:
        out.append(
            Violation(
                "handoff",
                f"a handoff kept its connection UNUSABLE {longest:.3f} s, handoff timeout "
                f"{timeout} s",
            )
        )
    return out


def check_relaxed(
    ops: Sequence[Op], windows: Sequence[Window], read_timeout: float
) -> list[Violation]:
    """While relaxed (a MIGRATING announced it), commands slower than the read timeout still
    succeed: none that started in a relaxed window failed, and at least one of them did take
    longer than the read timeout (otherwise the window proved nothing)."""
    out = []
    for window in windows:
        inside = [op for op in ops if window.contains(op.start) and op.error != CANCELLED]
        failed = [op for op in inside if not op.ok]
        if failed:
            errors = Counter(op.error or "?" for op in failed)
            summary = ", ".join(f"{error}={n}" for error, n in sorted(errors.items()))
            out.append(
                Violation(
                    "relaxed-timeouts",
                    f"{window.name}: {len(failed)} of {len(inside)} commands failed while "
                    f"relaxed ({summary})",
                )
            )
        if not any(op.ok and op.latency > read_timeout for op in inside):
            out.append(
                Violation(
                    "relaxed-timeouts",
                    f"{window.name}: no command took longer than the read timeout "
                    f"({read_timeout} s): the relaxed timeouts were not exercised",
                )
            )
    return out


def check_auth(
    checks: Sequence[AuthCheck], maintenance: Mapping[str, Mapping[str, Any]]
) -> list[Violation]:
    """After a credential rotation, no connection was left on the old credentials, every
    connection the client holds is authenticated as the new user, and no re-authentication
    failed.  Nothing is checked when no rotation happened (``checks`` empty)."""
    if not checks:
        return []
    out = []
    for check in checks:
        if check.rotated_in is None:
            out.append(
                Violation(
                    "credential-rotation",
                    f"{check.node}: connections were still on the old credentials at the "
                    "rotation deadline",
                )
            )
        if not check.users:
            out.append(
                Violation("credential-rotation", f"{check.node}: the client had no connection")
            )
        wrong = Counter(user for user in check.users if user != check.expected)
        if wrong:
            listed = ", ".join(f"{user} x{n}" for user, n in sorted(wrong.items()))
            out.append(
                Violation(
                    "credential-rotation",
                    f"{check.node}: {sum(wrong.values())} of {len(check.users)} connections "
                    f"not authenticated as {check.expected}: {listed}",
                )
            )
    if _total(maintenance, "reauths") == 0:
        out.append(Violation("credential-rotation", "no connection re-authenticated"))
    failures = _total(maintenance, "reauth_failures")
    if failures:
        out.append(Violation("credential-rotation", f"{failures:.0f} re-authentications failed"))
    return out


def check_all(
    record: RunRecord, bounds: Bounds
) -> tuple[list[Violation], list[Observation], list[Recovery]]:
    """Run every checker: (violations, losses excused by loss windows, recoveries)."""
    violations = check_misdelivery([*record.anomalies, *record.final_reads])
    lost, excused = check_lost_writes([*record.anomalies, *record.final_reads], record.loss_windows)
    violations += lost
    violations += check_pool_bounds(record.max_per_node, bounds.pool_size)
    violations += check_unusable(record.unusable_spans, bounds.unusable)
    violations += check_blocked(record.ops, bounds.blocked)
    found = recoveries(record.ops, record.fault_windows, bounds.target, record.end)
    violations += check_recovery(found, bounds.recovery)
    violations += check_leaks(record.leaked_connections)
    violations += check_client_counts(record.baseline_clients, record.final_clients)
    if bounds.zero_failures:
        violations += check_failures(record.ops)
    violations += check_handoffs(record.handoffs, record.maintenance, bounds.handoff_timeout)
    violations += check_relaxed(record.ops, record.relaxed_windows, bounds.read_timeout)
    violations += check_auth(record.auth_checks, record.maintenance)
    return violations, excused, found
