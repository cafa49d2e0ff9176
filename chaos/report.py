"""Turns a ``ScenarioResult`` into the origin's metrics (and more), as text, JSON and a plot."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from .invariants import CANCELLED, pubsub_tally
from .records import Op, RunRecord
from .runner import ScenarioResult, result_summary

__all__ = ["metrics", "plot", "pubsub_metrics", "render_text", "to_json"]

BUCKETS = (("0-1ms", 0.001), ("1-5ms", 0.005), ("5-10ms", 0.010), ("10-50ms", 0.050),
           (">50ms", math.inf))  # fmt: skip
TIMEOUTS = {"ReadTimeoutError", "WriteTimeoutError", "ConnectTimeoutError", "PoolTimeoutError",
            "TimeoutError"}  # fmt: skip
#: An error within this long of the previous one is part of a burst (the origin's rule).
BURST_GAP = 0.100


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def metrics(result: ScenarioResult) -> dict[str, Any]:
    """What the origin prints (totals, rates, timeouts, average latency, throughput, buckets,
    error bursts, slow operations) plus percentiles, errors by type and recovery times."""
    record = result.record
    ops: list[Op] = record.ops
    counted = [op for op in ops if op.error != CANCELLED]
    ok = [op for op in counted if op.ok]
    failed = [op for op in counted if not op.ok]
    lat = sorted(op.latency for op in ok)
    span = max(record.end - record.start, 1e-9)
    buckets = dict.fromkeys([name for name, _ in BUCKETS], 0)
    for value in lat:
        for name, upper in BUCKETS:
            if value < upper:
                buckets[name] += 1
                break
    bursts = 0
    previous = -math.inf
    for op in sorted(failed, key=lambda o: o.end):
        if op.end - previous <= BURST_GAP:
            bursts += 1
        previous = op.end
    total = len(counted)
    return {
        "total_operations": total,
        "successful": len(ok),
        "success_pct": 100.0 * len(ok) / total if total else 100.0,
        "failed": len(failed),
        "failed_pct": 100.0 * len(failed) / total if total else 0.0,
        "cancelled_by_workload": len(ops) - total,
        "timeouts": sum(1 for op in failed if op.error in TIMEOUTS),
        "pool_timeouts": sum(1 for op in failed if op.error == "PoolTimeoutError"),
        "errors": dict(Counter(op.error for op in failed)),
        "avg_latency_ms": 1000 * sum(lat) / len(lat) if lat else 0.0,
        "p50_ms": 1000 * _pct(lat, 0.50),
        "p99_ms": 1000 * _pct(lat, 0.99),
        "p999_ms": 1000 * _pct(lat, 0.999),
        "max_ms": 1000 * lat[-1] if lat else 0.0,
        "throughput_ops_s": total / span,
        "latency_buckets": buckets,
        "error_bursts": bursts,
        "slow_ops_100ms": sum(1 for op in counted if op.latency > 0.1),
        "slow_ops_1s": sum(1 for op in counted if op.latency > 1.0),
        "long_waits_500ms": sum(1 for v in lat if v > 0.5),
        "reads_checked": record.reads_checked + len(record.final_reads),
        "recoveries": [
            {"after": r.window, "seconds": r.seconds, "ops_after": r.ops_after}
            for r in result.recoveries
        ],
    }


def pubsub_metrics(record: RunRecord) -> dict[str, Any] | None:
    """Published, received and lost messages (overall and per subscriber), gap events and
    pub/sub connections; None without a pub/sub load."""
    data = record.pubsub
    if data is None:
        return None
    tally = pubsub_tally(data)
    t0 = record.start
    per: dict[int, dict[str, int]] = {
        s: {"due": 0, "received": 0, "lost": 0, "gaps": 0} for s in data.subscriptions
    }
    for d in data.deliveries:
        per[d.subscriber]["received"] += 1
    for subscriber, _ in tally.lost:
        per[subscriber]["lost"] += 1
    for event in data.events:
        if event.kind == "gap":
            per[event.subscriber]["gaps"] += 1
    window = data.publishing
    seconds = max(window.end - window.start, 1e-9) if window else 0.0
    return {
        "subscribers": len(data.subscriptions),
        "channels": len({c for cs in data.subscriptions.values() for c in cs}),
        "sharded_channels": sorted(data.sharded),
        "publishers": len({p.publisher for p in data.publishes}),
        "published": tally.published,
        "failed_publishes": tally.failed_publishes,
        "publish_rate_s": tally.published / seconds if seconds else 0.0,
        "publishing": [round(window.start - t0, 3), round(window.end - t0, 3)] if window else None,
        "due": tally.expected,
        "received": tally.received,
        "received_due": tally.received_due,
        "lost": len(tally.lost),
        "lost_while_down": len(tally.lost_in_gap),
        "duplicates": len(tally.duplicates),
        "misdelivered": len(tally.misdelivered),
        "reordered": len(tally.reordered),
        "gap_events": tally.gaps,
        "gaps": [
            {
                "subscriber": e.subscriber,
                "t": round(e.at - t0, 3),
                "channels": len(e.channels),
                "detail": e.detail,
            }
            for e in data.events
            if e.kind == "gap"
        ],
        "per_subscriber": per,
        "peak_connections": data.peak_connections,
        "open_after_close": data.open_after_close,
        "client": data.stats,
        "server_pubsub_clients": {
            "baseline": record.baseline_pubsub_clients,
            "final": record.final_pubsub_clients,
        },
        "notes": data.notes,
    }


def _states_over_time(result: ScenarioResult) -> list[dict[str, Any]]:
    record = result.record
    out: list[dict[str, Any]] = []
    last = -math.inf
    for sample in record.samples:
        if sample.at - last >= 1.0:
            out.append({"t": round(sample.at - record.start, 2), "client": sample.client,
                        "per_node": sample.per_node, "states": sample.states})  # fmt: skip
            last = sample.at
    return out


def to_json(result: ScenarioResult) -> dict[str, Any]:
    """The whole result, machine-readable."""
    record = result.record
    t0 = record.start

    def window(w: Any) -> dict[str, Any]:
        return {"name": w.name, "start": round(w.start - t0, 3), "end": round(w.end - t0, 3)}

    return {
        "scenario": result_summary(result),
        "seed": result.seed,
        "skipped": result.skipped,
        "passed": result.passed,
        "violations": [{"invariant": v.invariant, "message": v.message} for v in result.violations],
        "bounds": vars(result.bounds),
        "metrics": metrics(result) if not result.skipped else {},
        "fault_windows": [window(w) for w in record.fault_windows],
        "loss_windows": [window(w) for w in record.loss_windows],
        "lost_in_loss_windows": [
            {
                "key": o.key,
                "acked_version": o.lo,
                "found": o.got_version,
                "acked_at": round(o.acked_at - t0, 3),
            }
            for o in result.excused
        ],
        "max_connections_per_node": record.max_per_node,
        "longest_unusable_s": max(record.unusable_spans.values(), default=0.0),
        "server_clients": {"baseline": record.baseline_clients, "final": record.final_clients},
        "client_stats": record.client_stats,
        "maintenance": record.maintenance,
        "handoff_checks": [
            {
                "node": c.node,
                "endpoint": c.endpoint,
                "when": c.when,
                "checked": c.targeted,
                "stragglers": c.stragglers,
            }
            for c in record.handoffs
        ],
        "relaxed_windows": [window(w) for w in record.relaxed_windows],
        "auth_checks": [
            {"node": c.node, "expected": c.expected, "users": c.users, "rotated_in": c.rotated_in}
            for c in record.auth_checks
        ],
        "pubsub": pubsub_metrics(record),
        "connection_states": _states_over_time(result),
        "notes": record.notes,
    }


def render_text(result: ScenarioResult) -> str:
    """A human-readable report in the origin's layout."""
    s = result.scenario
    if result.skipped:
        return f"=== {s.name}: SKIPPED ({result.skipped})\n"
    m = metrics(result)
    record = result.record
    verdict = "PASS" if result.passed else "FAIL"
    lines = [
        f"=== {s.name} [{s.group}] {verdict} - {s.description}",
        f"  Total Operations: {m['total_operations']}   Throughput: "
        f"{m['throughput_ops_s']:.0f} ops/sec",
        f"  Successful: {m['successful']} ({m['success_pct']:.2f}%)   Failed: {m['failed']} "
        f"({m['failed_pct']:.2f}%)   Timeouts: {m['timeouts']}   Pool Timeouts: "
        f"{m['pool_timeouts']}   Cancelled by workload: {m['cancelled_by_workload']}",
        f"  Avg Latency: {m['avg_latency_ms']:.2f}ms   p50 {m['p50_ms']:.2f}ms   p99 "
        f"{m['p99_ms']:.2f}ms   p99.9 {m['p999_ms']:.2f}ms   max {m['max_ms']:.1f}ms",
        "  Latency: " + "  ".join(f"{k}: {v}" for k, v in m["latency_buckets"].items()),
        f"  Error bursts: {m['error_bursts']}   Slow ops >100ms: {m['slow_ops_100ms']}   "
        f">1s: {m['slow_ops_1s']}   Reads checked: {m['reads_checked']}",
    ]
    if m["errors"]:
        lines.append("  Errors: " + ", ".join(f"{k}={v}" for k, v in sorted(m["errors"].items())))
    for w in record.fault_windows:
        lines.append(
            f"  Fault {w.name}: t={w.start - record.start:.2f}..{w.end - record.start:.2f}s"
        )
    for r in m["recoveries"]:
        took = "never" if r["seconds"] is None else f"{r['seconds']:.2f}s"
        lines.append(f"  Recovery after {r['after']}: {took} (bound {result.bounds.recovery}s)")
    for w in record.loss_windows:
        lost = len(result.excused)
        lines.append(
            f"  Loss window {w.name}: t={w.start - record.start:.2f}..{w.end - record.start:.2f}s,"
            f" acknowledged writes lost in it: {lost}"
        )
    peak = max(record.max_per_node.values(), default=0)
    longest = max(record.unusable_spans.values(), default=0.0)
    lines.append(
        f"  Pool: peak {peak} connections per node (bound {result.bounds.pool_size}); "
        f"longest UNUSABLE {longest:.3f}s (bound {result.bounds.unusable}s); "
        f"caller bound {result.bounds.blocked:.2f}s"
    )
    main = record.client_stats.get("client0")
    if main:
        for node, st in sorted(main["nodes"].items()):
            closes = {str(k): v for k, v in st["closes"].items()}
            lines.append(
                f"    {node}: hits {st['hits']} misses {st['misses']} timeouts {st['timeouts']}"
                f" waits {st['waits']} wait {st['wait_time_total']:.2f}s dials {st['dials']}"
                f" dial_errors {st['dial_errors']} closes {closes}"
            )
        lines.append(
            f"    moved {main['moved']} ask {main['ask']} retries {main['retries']} "
            f"breaker rejections {main['breaker_rejections']}"
        )
    maint = record.maintenance.get("client0")
    if maint and (maint["notifications"] or maint["credential_rotations"]):
        received = ", ".join(f"{k} {v}" for k, v in sorted(maint["notifications"].items()))
        lines.append(
            f"    maintenance: handoffs {maint['handoffs']} failed {maint['handoff_failures']} "
            f"longest {maint['longest_unusable']:.3f}s; notifications {received or 'none'}; "
            f"rotations {maint['credential_rotations']} reauths {maint['reauths']} "
            f"failed {maint['reauth_failures']}"
        )
    ps = pubsub_metrics(record)
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
            f"{ps['open_after_close']}; servers' pub/sub clients "
            f"{sum(record.final_pubsub_clients.values())} (baseline "
            f"{sum(record.baseline_pubsub_clients.values())})",
        ]
        lines += [f"  Note: {note}" for note in ps["notes"]]
    for note in record.notes:
        lines.append(f"  Note: {note}")
    for v in result.violations:
        lines.append(f"  VIOLATION {v.invariant}: {v.message}")
    return "\n".join(lines) + "\n"


def plot(result: ScenarioResult, path: Path) -> bool:
    """Latency over time (failures marked), fault windows shaded; False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    record = result.record
    t0 = record.start
    fig, ax = plt.subplots(figsize=(10, 4))
    ok = [op for op in record.ops if op.ok]
    bad = [op for op in record.ops if not op.ok]
    ax.scatter([o.start - t0 for o in ok], [max(o.latency, 1e-5) * 1000 for o in ok], s=2,
               label="success")  # fmt: skip
    ax.scatter([o.start - t0 for o in bad], [max(o.latency, 1e-5) * 1000 for o in bad], s=6,
               marker="x", color="red", label="failed/cancelled")  # fmt: skip
    for w in record.fault_windows:
        ax.axvspan(w.start - t0, w.end - t0, color="orange", alpha=0.3, label=f"fault {w.name}")
    for w in record.loss_windows:
        ax.axvspan(w.start - t0, w.end - t0, color="grey", alpha=0.2, label=f"loss {w.name}")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{result.scenario.name} (seed {result.seed})")
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
