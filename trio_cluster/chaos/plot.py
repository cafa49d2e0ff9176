"""One PNG per scenario (``--report-dir``): throughput (with the healthy and the faulted slots'
successes through a fault on one node) and error rate, latency, and connections per node,
with every fault window shaded and labelled with the real address of the node it hit."""

from __future__ import annotations

from pathlib import Path

from .figures import node_stats, series
from .runner import ScenarioResult

__all__ = ["plot"]


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
    if points and points[0]["ok_healthy"] is not None:
        # Successes on the slots of the faulted node and on the rest (see figures.Partition).
        top.plot(xs, [p["ok_healthy"] / step for p in points], color="tab:green", linewidth=1,
                 label="ok/s, healthy slots")  # fmt: skip
        top.plot(xs, [p["ok_faulted"] / step for p in points], color="tab:purple", linewidth=1,
                 label="ok/s, faulted node's slots")  # fmt: skip
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
            node = str(record.node(name))
            row = per_node.setdefault(node, {})
            t = round(sample.at - t0, 3)
            row[t] = row.get(t, 0) + count
    # Nodes that served traffic, and the faulted ones (a killed node leaves the client's
    # final stats, but its connections before the fault are the point).
    hit = {str(node) for w in record.fault_windows for node in w.nodes}
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
        label = "\n".join([w.name, *([str(n) for n in w.nodes] or [w.target or "?"])])
        top.annotate(label, xy=(w.start - t0, 1.0), xycoords=("data", "axes fraction"),
                     xytext=(2, -2 - 30 * (index % 2)), textcoords="offset points", va="top",
                     fontsize="small", color="darkorange")  # fmt: skip
    status = result.status.upper()
    top.set_title(f"{result.scenario.name} (seed {result.seed}) {status}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
