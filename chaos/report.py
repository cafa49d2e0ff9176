"""Turns a ``ScenarioResult`` into the origin's metrics (and more): text for people, a JSON
object for machines (see ``docs/chaos.md`` for the schema), and a plot.

Nodes are always named by their real ``host:port`` (never a proxy's), and only nodes that
served traffic are listed.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from .invariants import (
    CANCELLED,
    GAP_SLACK,
    RECOVERY_WINDOW,
    in_flight,
    percentile,
    pubsub_tally,
)
from .records import Op, RunRecord, Window
from .runner import ScenarioResult, result_summary

__all__ = ["BUCKETS", "metrics", "node_stats", "plot", "pubsub_metrics", "render_text",
           "series", "to_json"]  # fmt: skip

#: Latency buckets: (label, upper bound in seconds, exclusive).  Every counted operation
#: (failed ones included) falls in exactly one; the "slow ops" figures are sums of the last ones.
BUCKETS = (("<1ms", 0.001), ("1-5ms", 0.005), ("5-10ms", 0.010), ("10-50ms", 0.050),
           ("50-100ms", 0.100), ("100ms-1s", 1.0), (">=1s", math.inf))  # fmt: skip
TIMEOUTS = {"ReadTimeoutError", "WriteTimeoutError", "ConnectTimeoutError", "PoolTimeoutError",
            "TimeoutError"}  # fmt: skip
#: An error within this long of the previous one is part of a burst (the origin's rule).
BURST_GAP = 0.100
#: Width of one point of the per-second series.
SERIES_STEP = 1.0


def _counted(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.error != CANCELLED]


def metrics(result: ScenarioResult) -> dict[str, Any]:
    """What the origin prints (totals, rates, timeouts, average latency, throughput, buckets,
    error bursts, slow operations) plus percentiles and errors by type."""
    record = result.record
    ops: list[Op] = record.ops
    counted = _counted(ops)
    ok = [op for op in counted if op.ok]
    failed = [op for op in counted if not op.ok]
    lat = sorted(op.latency for op in ok)
    span = max(record.end - record.start, 1e-9)
    buckets = dict.fromkeys([name for name, _ in BUCKETS], 0)
    for op in counted:
        for name, upper in BUCKETS:
            if op.latency < upper:
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
        "errors": dict(Counter(op.error or "?" for op in failed)),
        "avg_latency_ms": 1000 * sum(lat) / len(lat) if lat else 0.0,
        "p50_ms": 1000 * percentile(lat, 0.50),
        "p99_ms": 1000 * percentile(lat, 0.99),
        "p999_ms": 1000 * percentile(lat, 0.999),
        "max_ms": 1000 * lat[-1] if lat else 0.0,
        "throughput_ops_s": total / span,
        "latency_buckets": buckets,
        "error_bursts": bursts,
        "slow_ops_100ms": buckets["100ms-1s"] + buckets[">=1s"],
        "slow_ops_1s": buckets[">=1s"],
        "reads_checked": record.reads_checked + len(record.final_reads),
    }


def series(record: RunRecord, step: float = SERIES_STEP) -> list[dict[str, Any]]:
    """Per ``step`` seconds of the load: operations started, successes, errors by class,
    p50/p99 latency of the successes, and (from the monitor's samples) connections open and
    UNUSABLE at the last sample of the step."""
    t0 = record.start
    steps = max(1, math.ceil((record.end - t0) / step)) if record.end > t0 else 0
    out: list[dict[str, Any]] = [
        {"t": round(i * step, 3), "ops": 0, "ok": 0, "errors": {}, "p50_ms": 0.0,
         "p99_ms": 0.0, "connections": 0, "unusable": 0}
        for i in range(steps)
    ]  # fmt: skip
    latencies: list[list[float]] = [[] for _ in range(steps)]
    for op in _counted(record.ops):
        i = int((op.start - t0) // step)
        if not 0 <= i < steps:
            continue
        point = out[i]
        point["ops"] += 1
        if op.ok:
            point["ok"] += 1
            latencies[i].append(op.latency)
        else:
            errors = point["errors"]
            errors[op.error or "?"] = errors.get(op.error or "?", 0) + 1
    for i, lat in enumerate(latencies):
        lat.sort()
        out[i]["p50_ms"] = round(1000 * percentile(lat, 0.5), 3)
        out[i]["p99_ms"] = round(1000 * percentile(lat, 0.99), 3)
    by_step: dict[int, dict[int, tuple[int, int]]] = {}
    for sample in record.samples:
        i = int((sample.at - t0) // step)
        if 0 <= i < steps:
            by_step.setdefault(i, {})[sample.client] = (
                sum(sample.per_node.values()),
                sample.states.get("UNUSABLE", 0),
            )
    for i, clients in by_step.items():
        out[i]["connections"] = sum(c for c, _ in clients.values())
        out[i]["unusable"] = sum(u for _, u in clients.values())
    return out


def node_stats(record: RunRecord) -> dict[str, dict[str, Any]]:
    """Per real node address, for the nodes that served traffic (any pool activity): the main
    client's pool counters and the most connections any client held there."""
    main = record.client_stats.get("client0") or {}
    out: dict[str, dict[str, Any]] = {}
    for name, st in sorted((main.get("nodes") or {}).items()):
        # Gets (served or timed out), not dials: min_idle dials every node, replicas included.
        activity = sum(int(st.get(k, 0)) for k in ("hits", "misses", "timeouts"))
        if not activity:
            continue
        out[record.node(name)] = {
            "hits": st.get("hits", 0),
            "misses": st.get("misses", 0),
            "timeouts": st.get("timeouts", 0),
            "waits": st.get("waits", 0),
            "wait_time_total_s": round(float(st.get("wait_time_total", 0.0)), 3),
            "dials": st.get("dials", 0),
            "dial_errors": st.get("dial_errors", 0),
            "closes": {str(k): v for k, v in (st.get("closes") or {}).items()},
        }
    for key, count in record.max_per_node.items():
        name = record.node(key.split("/", 1)[1])
        if name in out:
            out[name]["max_connections"] = max(out[name].get("max_connections", 0), count)
    return out


def _server_clients(record: RunRecord) -> dict[str, dict[str, int]]:
    """Per real node address (``host:port``): the servers' client counts before and after."""
    hosts = {name.rsplit(":", 1)[1]: name for name in record.node_names.values()}
    out = {}
    for port, before in sorted(record.baseline_clients.items()):
        name = hosts.get(str(port), f"127.0.0.1:{port}")
        out[name] = {"baseline": before, "final": record.final_clients.get(port, -1)}
    return out


def pubsub_metrics(record: RunRecord) -> dict[str, Any] | None:
    """Published, received and lost messages (overall and per subscriber), gap events and
    pub/sub connections; None without a pub/sub load."""
    data = record.pubsub
    if data is None:
        return None
    # The same slack as the checker (chaos.invariants.check_pubsub).
    flight = in_flight(data, min((w.start for w in record.fault_windows), default=math.inf))
    tally = pubsub_tally(data, GAP_SLACK + flight)
    t0 = record.start
    per: dict[str, dict[str, int]] = {
        str(s): {"due": 0, "received": 0, "lost": 0, "gaps": 0} for s in data.subscriptions
    }
    for d in data.deliveries:
        per[str(d.subscriber)]["received"] += 1
    for subscriber, _ in tally.lost:
        per[str(subscriber)]["lost"] += 1
    for event in data.events:
        if event.kind == "gap":
            per[str(event.subscriber)]["gaps"] += 1
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
        "in_flight_p99_s": round(flight, 3),
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
        "notes": data.notes,
    }


def _window(w: Window, t0: float) -> dict[str, Any]:
    return {"name": w.name, "target": w.target or None, "start_s": round(w.start - t0, 3),
            "end_s": round(w.end - t0, 3)}  # fmt: skip


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
        "server_clients": _server_clients(record),
        "longest_unusable_s": round(max(record.unusable_spans.values(), default=0.0), 3),
        "client_stats": _client_summary(record),
        "maintenance": record.maintenance,
        "handoff_checks": [
            {
                "node": record.node(c.node),
                "endpoint": c.endpoint,
                "when": c.when,
                "checked": c.targeted,
                "stragglers": c.stragglers,
            }
            for c in record.handoffs
        ],
        "auth_checks": [
            {"node": c.node, "expected": c.expected, "users": c.users, "rotated_in_s": c.rotated_in}
            for c in record.auth_checks
        ],
        "pubsub": pubsub_metrics(record),
        "series": series(record) if ran else [],
        "notes": record.notes,
    }


def _client_summary(record: RunRecord) -> dict[str, Any] | None:
    main = record.client_stats.get("client0")
    if not main:
        return None
    keys = ("moved", "ask", "retries", "errors", "refreshes", "refresh_failures",
            "breaker_rejections")  # fmt: skip
    return {k: main.get(k) for k in keys}


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
    main = _client_summary(record)
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


def plot(result: ScenarioResult, path: Path) -> bool:
    """Three panels over time, fault windows shaded and labelled with the faulted node's real
    address: throughput and error rate; latency (failures marked); connections per node.
    False if matplotlib is absent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    record = result.record
    t0 = record.start
    step = 0.25
    points = series(record, step)
    fig, (top, mid, low) = plt.subplots(
        3, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.3]}
    )
    xs = [p["t"] + step / 2 for p in points]
    top.plot(xs, [p["ops"] / step for p in points], color="tab:blue", label="ops/s started")
    base = result.baseline
    if base is not None and base.measured and record.fault_windows:
        top.axhline(base.throughput, color="tab:blue", linestyle=":", linewidth=1,
                    label=f"baseline {base.throughput:.0f} ops/s")  # fmt: skip
    top.set_ylabel("throughput (ops/s)")
    # Head room above the curve and the baseline for the fault labels.
    highest = max([p["ops"] / step for p in points] + [base.throughput if base else 0.0])
    top.set_ylim(0, max(highest, 1.0) * 1.45)
    err = top.twinx()
    rates = [100 * (p["ops"] - p["ok"]) / p["ops"] if p["ops"] else 0.0 for p in points]
    err.plot(xs, rates, color="tab:red", label="error rate %")
    err.set_ylabel("errors (%)", color="tab:red")
    err.set_ylim(0, max(5.0, max(rates, default=0.0)) * 1.45)
    handles = top.get_legend_handles_labels()
    more = err.get_legend_handles_labels()
    top.legend(handles[0] + more[0], handles[1] + more[1], loc="lower left", fontsize="small")
    ok = [op for op in record.ops if op.ok]
    bad = [op for op in record.ops if not op.ok]
    mid.scatter([o.start - t0 for o in ok], [max(o.latency, 1e-5) * 1000 for o in ok], s=2,
                label="success")  # fmt: skip
    mid.scatter([o.start - t0 for o in bad], [max(o.latency, 1e-5) * 1000 for o in bad], s=6,
                marker="x", color="red", label="failed/cancelled")  # fmt: skip
    mid.set_yscale("log")
    mid.set_ylabel("latency (ms)")
    mid.legend(loc="upper right", fontsize="small")
    per_node: dict[str, dict[float, int]] = {}
    for sample in record.samples:
        if sample.at > record.end:
            break  # the end-of-run verification's client: not the load's
        for name, count in sample.per_node.items():
            node = record.node(name)
            row = per_node.setdefault(node, {})
            t = round(sample.at - t0, 3)
            row[t] = row.get(t, 0) + count
    # Nodes that served traffic, and the faulted ones (a killed node leaves the client's
    # final stats, but its connections before the fault are the point).
    hit = {t for w in record.fault_windows for t in (w.target or "").split(", ")}
    served = (set(node_stats(record)) | hit) or set(per_node)
    for node, row in sorted(per_node.items()):
        if node in served:
            low.step(list(row), list(row.values()), where="post", label=node, linewidth=1)
    low.set_ylabel("connections")
    low.set_xlabel("seconds since start")
    if per_node:
        # Head room above the lines for the legend.
        peak = max((max(row.values()) for row in per_node.values() if row), default=1)
        low.set_ylim(0, peak * 1.6 + 1)
        low.legend(loc="upper right", fontsize="x-small", ncol=3, title="real node address",
                   title_fontsize="x-small")  # fmt: skip
    for ax in (top, mid, low):
        for w in record.fault_windows:
            ax.axvspan(w.start - t0, w.end - t0, color="orange", alpha=0.25)
        for w in record.loss_windows:
            ax.axvspan(w.start - t0, w.end - t0, color="grey", alpha=0.2)
    for index, w in enumerate(record.fault_windows):
        # One address per line; successive labels staggered so that they never overlap.
        label = "\n".join([w.name, *(w.target or "?").split(", ")])
        top.annotate(label, xy=(w.start - t0, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(2, -2 - 30 * (index % 2)), textcoords="offset points", va="top",
                     fontsize="small", color="darkorange")  # fmt: skip
    status = result.status.upper()
    top.set_title(f"{result.scenario.name} (seed {result.seed}) {status}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
