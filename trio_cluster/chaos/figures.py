"""The figures a report shows, computed from a ``ScenarioResult``: the origin's metrics (and
more), the per-second series, per-node pool stats, the pub/sub accounting, the blast radius.

Every figure counts operations the same way: an operation the workload cancelled itself is not
counted, and a counted one that did not succeed is a failure (``Op.counted``, ``Op.failed``);
the live progress uses the same rule.  Nodes are named by their real ``host:port`` (never a
proxy's), and only nodes that served traffic are listed.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from .invariants import TIMEOUT_ERRORS, BlastRadius, Partition, PubSubTally, percentile
from .records import Op, RunRecord
from .runner import ScenarioResult

__all__ = ["BUCKETS", "SERIES_STEP", "blast_json", "client_summary", "deciding",
           "metrics", "node_stats", "pubsub_metrics", "series", "server_clients"]  # fmt: skip

#: Latency buckets: (label, upper bound in seconds, exclusive).  Every counted operation
#: (failed ones included) falls in exactly one; the "slow ops" figures are sums of the last ones.
BUCKETS = (("<1ms", 0.001), ("1-5ms", 0.005), ("5-10ms", 0.010), ("10-50ms", 0.050),
           ("50-100ms", 0.100), ("100ms-1s", 1.0), (">=1s", math.inf))  # fmt: skip
#: An error within this long of the previous one is part of a burst (the origin's rule).
BURST_GAP = 0.100
#: Width of one point of the per-second series.
SERIES_STEP = 1.0


def _counted(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.counted]


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
        "timeouts": sum(1 for op in failed if op.error in TIMEOUT_ERRORS),
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
    """Per ``step`` seconds of the load: operations started, successes (and, in a run with a
    fault on a single node, the successes on that node's slots and on the rest: see
    :class:`Partition`), errors by class, p50/p99 latency of the successes, and (from the
    monitor's samples) connections open and UNUSABLE at the last sample of the step."""
    t0 = record.start
    steps = max(1, math.ceil((record.end - t0) / step)) if record.end > t0 else 0
    partition = Partition.of(record.fault_windows)
    split = 0 if partition else None
    out: list[dict[str, Any]] = [
        {"t": round(i * step, 3), "ops": 0, "ok": 0, "ok_healthy": split, "ok_faulted": split,
         "errors": {}, "p50_ms": 0.0, "p99_ms": 0.0, "connections": 0, "unusable": 0}
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
            part = partition.part(op) if partition else None
            if part is not None:
                point[f"ok_{part}"] += 1
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
        # Gets (served or timed out), not dials: min_idle dials every node reads may use.
        activity = sum(int(st.get(k, 0)) for k in ("hits", "misses", "timeouts"))
        if not activity:
            continue
        out[str(record.node(name))] = {
            "hits": st.get("hits", 0),
            "misses": st.get("misses", 0),
            "timeouts": st.get("timeouts", 0),
            "waits": st.get("waits", 0),
            "wait_time_total_s": round(float(st.get("wait_time_total", 0.0)), 3),
            "dials": st.get("dials", 0),
            "dial_errors": st.get("dial_errors", 0),
            "closes": {str(k): v for k, v in (st.get("closes") or {}).items()},
        }
    for (_, node), count in record.max_per_node.items():
        name = str(record.node(node))
        if name in out:
            out[name]["max_connections"] = max(out[name].get("max_connections", 0), count)
    return out


def server_clients(record: RunRecord) -> dict[str, dict[str, int]]:
    """Per real node address (``host:port``): the servers' client counts before and after."""
    by_port = {address.port: address for address in record.node_names.values()}
    out = {}
    for port, before in sorted(record.baseline_clients.items()):
        name = str(by_port.get(port, f"127.0.0.1:{port}"))
        out[name] = {"baseline": before, "final": record.final_clients.get(port, -1)}
    return out


def pubsub_metrics(record: RunRecord, tally: PubSubTally | None) -> dict[str, Any] | None:
    """Published, received and lost messages (overall and per subscriber), gap events and
    pub/sub connections; None without a pub/sub load.  ``tally`` is the verdict's (the one
    the checks used)."""
    data = record.pubsub
    if data is None or tally is None:
        return None
    flight = tally.in_flight
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


def client_summary(record: RunRecord) -> dict[str, Any] | None:
    """The main client's redirects, retries, errors, refreshes and breaker rejections."""
    main = record.client_stats.get("client0")
    if not main:
        return None
    keys = ("moved", "ask", "retries", "errors", "refreshes", "refresh_failures",
            "breaker_rejections")  # fmt: skip
    return {k: main.get(k) for k in keys}


def blast_json(b: BlastRadius) -> dict[str, Any]:
    """One blast radius as a JSON object (``blast_radius`` in ``docs/chaos.md``)."""
    return {
        "fault": b.window,
        "node": str(b.node),
        "seconds": round(b.seconds, 3),
        "healthy_share": round(b.healthy_share, 4),
        "baseline_ok_per_s": round(b.baseline_ok_per_s, 1),
        "healthy_ok_per_s": round(b.healthy_ok_per_s, 1),
        "faulted_ok_per_s": round(b.faulted_ok_per_s, 1),
        "ratio": round(b.ratio, 4),
        "steadiness": round(b.steadiness, 4),
        "bound": round(b.bound, 4),
        "checked": b.unchecked is None,
        "unchecked": b.unchecked,
    }


def deciding(found: list[BlastRadius]) -> BlastRadius | None:
    """The blast radius that decides the check: the checked one with the least margin over
    its bound (else the first)."""
    checked = [b for b in found if b.unchecked is None]
    if checked:
        return min(checked, key=lambda b: b.ratio - b.bound)
    return found[0] if found else None
