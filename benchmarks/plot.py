"""Plot a ``benchmarks.peers`` JSON report: ops/s and p99 against the number of tasks, and
commands/s of pipelines of 10, 100 and 1,000 commands, for every client in the report.

    python -m benchmarks.peers --json peers.json
    python -m benchmarks.plot peers.json benchmarks/peers.png

Needs matplotlib (in the ``chaos`` extra).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from benchmarks._common import SHAPES

LABELS = {
    "raw": "raw trio + hiredis (ceiling)",
    "redis-py": "redis-py asyncio RedisCluster",
    "coredis": "coredis RedisCluster",
    "trio-cluster": "trio-cluster (one command per round trip)",
    "trio-cluster-ap": "trio-cluster, autopipeline=True",
}


def plot(report: dict[str, Any], out: str) -> None:
    """Write the three panels of ``report`` to the PNG file ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results: dict[str, dict[str, Any]] = report["results"]
    task_shapes = [s for s in SHAPES if not SHAPES[s].pipeline]
    pipe_shapes = [s for s in SHAPES if SHAPES[s].pipeline]
    fig, (ops_ax, p99_ax, pipe_ax) = plt.subplots(1, 3, figsize=(17, 5.2))
    for client, by_shape in results.items():
        points = [
            (SHAPES[s].tasks, by_shape[s]["ops_per_s"], by_shape[s].get("p99_ms"))
            for s in task_shapes
            if s in by_shape and "ops_per_s" in by_shape[s]
        ]
        if points:
            tasks = [p[0] for p in points]
            ops_ax.plot(tasks, [p[1] for p in points], marker="o", label=LABELS.get(client, client))
            p99_ax.plot(tasks, [p[2] for p in points], marker="o", label=LABELS.get(client, client))
    for ax, title, unit in (
        (ops_ax, "throughput, 50/50 GET/SET", "ops/s"),
        (p99_ax, "p99 latency per command", "ms"),
    ):
        ax.set_xscale("log")
        ax.set_xlabel("concurrent tasks")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    p99_ax.set_yscale("log")
    ops_ax.legend(fontsize=8)
    clients = [c for c in results if any(s in results[c] for s in pipe_shapes)]
    width = 0.8 / max(1, len(clients))
    for i, client in enumerate(clients):
        values = [results[client].get(s, {}).get("ops_per_s", 0) or 0 for s in pipe_shapes]
        positions = [j + i * width for j in range(len(pipe_shapes))]
        pipe_ax.bar(positions, values, width, label=LABELS.get(client, client))
    pipe_ax.set_xticks([j + 0.4 - width / 2 for j in range(len(pipe_shapes))])
    pipe_ax.set_xticklabels([f"4 x {SHAPES[s].pipeline}" for s in pipe_shapes])
    pipe_ax.set_ylabel("commands/s")
    pipe_ax.set_title("pipelines of SET across the cluster")
    pipe_ax.grid(True, axis="y", alpha=0.3)
    environment = report.get("environment", {})
    fig.suptitle(
        f"benchmarks.peers: {environment.get('server', '')[:22]}, "
        f"{environment.get('cpus', '?')} CPUs, medians of {report['settings']['rounds']} rounds"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("report", help="JSON written by python -m benchmarks.peers --json")
    parser.add_argument("out", help="PNG file to write")
    args = parser.parse_args(argv)
    with open(args.report) as source:
        plot(json.load(source), args.out)


if __name__ == "__main__":
    main()
