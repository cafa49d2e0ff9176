"""Turns a ``ScenarioResult`` into text for people and a JSON object for machines (see
``docs/chaos.md`` for the schema); the figures come from ``chaos.figures``, the plot from
``chaos.plot``.

Nodes are always named by their real ``host:port`` (never a proxy's), and only nodes that
served traffic are listed.
"""

from __future__ import annotations

from typing import Any

from .figures import (
    blast_json,
    client_summary,
    deciding,
    metrics,
    node_stats,
    pubsub_metrics,
    series,
    server_clients,
)
from .invariants import RECOVERY_WINDOW, BlastRadius
from .records import Window
from .runner import ScenarioResult, result_summary

__all__ = ["render_text", "to_json"]

#: The text report shows the healthy and faulted throughput from this long before a fault...
AROUND_BEFORE = 1.0
#: ...until this long after it.
AROUND_AFTER = 2.0


def _window(w: Window, t0: float) -> dict[str, Any]:
    return {"name": w.name, "target": w.target or None, "nodes": [str(n) for n in w.nodes],
            "start_s": round(w.start - t0, 3), "end_s": round(w.end - t0, 3)}  # fmt: skip


def to_json(result: ScenarioResult) -> dict[str, Any]:
    """One scenario as a JSON object (``scenarios[]`` of the schema in ``docs/chaos.md``)."""
    record = result.record
    t0 = record.start
    summary = result_summary(result)
    ran = result.skipped is None and result.error is None and not result.interrupted
    base = result.baseline
    b = result.bounds
    return {
        "name": summary["name"],
        "group": summary["group"],
        "description": summary["description"],
        "origin": summary["origin"],
        "status": result.status,
        "skipped_reason": result.skipped,
        "error": result.error,
        "seconds": round(result.seconds, 3),
        "workload": summary["workload"],
        "client": summary["client"],
        "pubsub_load": summary["pubsub"],
        "faults": [_window(w, t0) for w in record.fault_windows],
        "loss_windows": [_window(w, t0) for w in record.loss_windows],
        "relaxed_windows": [_window(w, t0) for w in record.relaxed_windows],
        "violations": [{"code": v.invariant, "message": v.message} for v in result.violations],
        "checks": result.checks,
        "blast_radius": None if (blast := deciding(result.blast)) is None else blast_json(blast),
        "baseline": None
        if base is None
        else {
            "start_s": round(base.start - t0, 3),
            "end_s": round(base.end - t0, 3),
            "ops": base.ops,
            "throughput_ops_s": round(base.throughput, 1),
            "success_rate": round(base.success, 6),
            "p50_ms": round(1000 * base.p50, 3),
            "p99_ms": round(1000 * base.p99, 3),
            "measured": base.measured,
        },
        "bounds": {
            "pool_size": b.pool_size,
            "unusable_s": round(b.unusable, 3),
            "blocked_s": round(b.blocked, 3),
            "recovery_s": round(b.recovery, 3),
            "slack_s": round(b.slack, 3),
            "held_s": round(b.held, 3),
            "zero_failures": b.zero_failures,
            "explain": b.explain,
        },
        "recoveries": [
            {
                "after": r.window,
                "seconds": None if r.seconds is None else round(r.seconds, 3),
                "measured": r.measured,
                "ops_after": r.ops_after,
                "throughput_ops_s": round(r.throughput_after, 1),
                "success_rate": round(r.success_after, 6),
            }
            for r in result.recoveries
        ],
        "lost_in_loss_windows": [
            {
                "key": o.key,
                "acked_version": o.lo,
                "found": o.got_version,
                "acked_at_s": round(o.acked_at - t0, 3),
            }
            for o in result.excused
        ],
        "metrics": metrics(result) if ran else None,
        "nodes": node_stats(record),
        "server_clients": server_clients(record),
        "longest_unusable_s": round(max(record.unusable_spans.values(), default=0.0), 3),
        "client_stats": client_summary(record),
        "maintenance": record.maintenance,
        "handoff_checks": [
            {
                "node": str(record.node(c.node)),
                "endpoint": str(c.endpoint),
                "when": c.when,
                "checked": c.targeted,
                "stragglers": c.stragglers,
            }
            for c in record.handoffs
        ],
        "auth_checks": [
            {
                "node": str(c.node),
                "expected": c.expected,
                "users": c.users,
                "rotated_in_s": c.rotated_in,
            }
            for c in record.auth_checks
        ],
        "pubsub": pubsub_metrics(record, result.verdict.pubsub if result.verdict else None),
        "series": series(record) if ran else [],
        "notes": record.notes,
    }


def _bound_lines(result: ScenarioResult) -> list[str]:
    b = result.bounds
    lines = [f"    {name}: {text}" for name, text in b.explain.items()]
    return ["  Bounds (each derived as stated):", *lines]


def render_text(result: ScenarioResult) -> str:
    """A human-readable report in the origin's layout."""
    s = result.scenario
    head = f"=== {s.name} [{s.group}] {result.status.upper()}"
    if result.skipped is not None:
        return f"{head} ({result.skipped})\n"
    if result.error is not None or result.interrupted:
        why = result.error or "interrupted by Ctrl-C"
        return f"{head} - {s.description}\n  {why}\n"
    m = metrics(result)
    record = result.record
    t0 = record.start
    lines = [
        f"{head} - {s.description}",
        f"  Total Operations: {m['total_operations']}   Throughput: "
        f"{m['throughput_ops_s']:.0f} ops/sec",
        f"  Successful: {m['successful']} ({m['success_pct']:.2f}%)   Failed: {m['failed']} "
        f"({m['failed_pct']:.2f}%)   Timeouts: {m['timeouts']}   Pool Timeouts: "
        f"{m['pool_timeouts']}   Cancelled by workload: {m['cancelled_by_workload']}",
        f"  Avg Latency: {m['avg_latency_ms']:.2f}ms   p50 {m['p50_ms']:.2f}ms   p99 "
        f"{m['p99_ms']:.2f}ms   p99.9 {m['p999_ms']:.2f}ms   max {m['max_ms']:.1f}ms "
        "(successes)",
        "  Latency of every op (failed included): "
        + "  ".join(f"{k}: {v}" for k, v in m["latency_buckets"].items()),
        f"  Error bursts: {m['error_bursts']}   Slow ops >=100ms: {m['slow_ops_100ms']}   "
        f">=1s: {m['slow_ops_1s']}   Reads checked: {m['reads_checked']}",
    ]
    if m["errors"]:
        lines.append("  Errors: " + ", ".join(f"{k}={v}" for k, v in sorted(m["errors"].items())))
    base = result.baseline
    if base is not None and record.fault_windows:
        lines.append(
            f"  Baseline before the fault (t={base.start - t0:.2f}..{base.end - t0:.2f}s): "
            f"{base.throughput:.0f} ops/s, {100 * base.success:.2f}% ok, p99 "
            f"{1000 * base.p99:.1f}ms" + ("" if base.measured else " (too short to compare)")
        )
    for w in record.fault_windows:
        lines.append(
            f"  Fault {w.name} on {w.target or '?'}: t={w.start - t0:.2f}..{w.end - t0:.2f}s"
        )
    lines += _blast_lines(result)
    if result.recoveries:
        lines.append(
            f"  Recovery = time from the fault's end until, over {RECOVERY_WINDOW:.0f} s, "
            "throughput and success rate are back within the margins of the baseline "
            "(see the recovery bound)"
        )
    for r in result.recoveries:
        if not r.measured:
            took = "not measured (baseline or load after the fault too short)"
        elif r.seconds is None:
            took = (
                f"never (last window {r.throughput_after:.0f} ops/s, "
                f"{100 * r.success_after:.1f}% ok)"
            )
        else:
            took = (
                f"{r.seconds:.2f}s (then {r.throughput_after:.0f} ops/s, "
                f"{100 * r.success_after:.1f}% ok; bound {result.bounds.recovery:.2f}s)"
            )
        lines.append(f"  Recovery after {r.window}: {took}")
    for w in record.loss_windows:
        lines.append(
            f"  Loss window {w.name}: t={w.start - t0:.2f}..{w.end - t0:.2f}s,"
            f" acknowledged writes lost in it: {len(result.excused)}"
        )
    peak = max(record.max_per_node.values(), default=0)
    longest = max(record.unusable_spans.values(), default=0.0)
    lines.append(
        f"  Pool: peak {peak} connections per node (bound {result.bounds.pool_size}); "
        f"longest UNUSABLE {longest:.3f}s (bound {result.bounds.unusable:.2f}s); "
        f"longest blocked caller {max((op.latency for op in record.ops), default=0.0):.3f}s "
        f"(bound {result.bounds.blocked:.2f}s)"
    )
    lines += _bound_lines(result)
    nodes = node_stats(record)
    if nodes:
        lines.append("  Nodes that served traffic (main client):")
    for node, st in nodes.items():
        lines.append(
            f"    {node}: hits {st['hits']} misses {st['misses']} timeouts {st['timeouts']}"
            f" waits {st['waits']} wait {st['wait_time_total_s']:.2f}s dials {st['dials']}"
            f" dial_errors {st['dial_errors']} closes {st['closes']}"
        )
    main = client_summary(record)
    if main:
        lines.append(
            f"    moved {main['moved']} ask {main['ask']} retries {main['retries']} "
            f"breaker rejections {main['breaker_rejections']}"
        )
    maint = record.maintenance.get("client0")
    if maint and (maint.get("notifications") or maint.get("credential_rotations")):
        received = ", ".join(f"{k} {v}" for k, v in sorted(maint["notifications"].items()))
        lines.append(
            f"    maintenance: handoffs {maint['handoffs']} failed {maint['handoff_failures']} "
            f"longest {maint['longest_unusable']:.3f}s; notifications {received or 'none'}; "
            f"rotations {maint['credential_rotations']} reauths {maint['reauths']} "
            f"failed {maint['reauth_failures']}"
        )
    ps = pubsub_metrics(record, result.verdict.pubsub if result.verdict else None)
    if ps is not None:
        client = ps["client"]
        lines += [
            f"  Pub/sub: {ps['subscribers']} subscribers on {ps['channels']} channels "
            f"({len(ps['sharded_channels'])} sharded), {ps['publishers']} publishers: "
            f"published {ps['published']} ({ps['publish_rate_s']:.0f}/s, "
            f"{ps['failed_publishes']} failed)",
            f"    received {ps['received_due']} of {ps['due']} due (deliveries in all: "
            f"{ps['received']}); lost {ps['lost']} "
            f"({ps['lost_while_down']} while a subscription was down); duplicates "
            f"{ps['duplicates']}, misdelivered {ps['misdelivered']}, reordered "
            f"{ps['reordered']}; gap events {ps['gap_events']}",
            f"    connections: peak {ps['peak_connections']} (bound "
            f"{client.get('max_connections', '?')}), connects {client.get('connects', '?')}, "
            f"disconnects {client.get('disconnects', '?')}, open after close "
            f"{ps['open_after_close']}",
        ]
        lines += [f"  Note: {note}" for note in ps["notes"]]
    for note in record.notes:
        lines.append(f"  Note: {note}")
    checked = ", ".join(f"{code} {status}" for code, status in result.checks.items()
                        if not status.startswith("not checked"))  # fmt: skip
    lines.append(f"  Checks: {checked}")
    for code, status in result.checks.items():
        if status.startswith("not checked"):
            lines.append(f"  NOT CHECKED {code}: {status.removeprefix('not checked: ')}")
    for v in result.violations:
        lines.append(f"  VIOLATION {v.invariant}: {v.message}")
    return "\n".join(lines) + "\n"


def _blast_lines(result: ScenarioResult) -> list[str]:
    """Each fault on one node: the healthy part's throughput against its bound, and the
    successes per second on the healthy and the faulted slots through the fault."""
    if not result.blast:
        return []
    record = result.record
    t0 = record.start
    points = series(record)
    windows = {w.name: w for w in record.fault_windows}
    lines = []
    for b in result.blast:
        lines.append(f"  Blast radius of {b.window} on {b.node}: {_blast_summary(b)}")
        w = windows.get(b.window)
        if w is None:
            continue
        shown = [
            f"{p['t']:.0f}s {p['ok_healthy']}/{p['ok_faulted']}"
            + ("*" if w.start - t0 - 1 < p["t"] < w.end - t0 else "")
            for p in points
            if w.start - t0 - AROUND_BEFORE - 1 < p["t"] <= w.end - t0 + AROUND_AFTER
        ]
        lines.append("    ok/s healthy/faulted slots (* = during the fault): " + ", ".join(shown))
    return lines


def _blast_summary(b: BlastRadius) -> str:
    figures = (
        f"healthy slots {b.healthy_ok_per_s:.0f} ok/s, faulted {b.faulted_ok_per_s:.0f} ok/s "
        f"over {b.seconds:.1f} s; ratio {b.ratio:.3f} of the baseline's {b.baseline_ok_per_s:.0f} "
        f"ok/s (healthy share {b.healthy_share:.2f}, steadiness {b.steadiness:.2f})"
    )
    if b.unchecked is not None:
        return f"{figures}; not checked: {b.unchecked}"
    verdict = "held" if b.ratio >= b.bound else "FAILED"
    return f"{figures}; bound {b.bound:.3f}: {verdict}"
