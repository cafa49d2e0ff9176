"""Ctrl-C at every point of a ClusterClient command: one run per point, deterministically.

Starts one local cluster, then for each line of one ``dbsize()`` (a fan-out) plus ``get()``
where trio's default Ctrl-C delivery could raise KeyboardInterrupt, runs a fresh client in a
fresh ``trio.run`` and raises it there (``trio_cluster.testing.ctrl_c``).  Prints each run that
does not end in a plain KeyboardInterrupt, and a count of endings.  About 2,000 points at about
0.1 s each; on a shared machine run it under ``nice -n 19``::

    nice -n 19 .venv/bin/python scripts/ctrl_c_points.py            # every point
    nice -n 19 .venv/bin/python scripts/ctrl_c_points.py --step 10  # every 10th

Exit status: 0 when every run ended in a plain KeyboardInterrupt, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from trio_cluster import ClusterClient
from trio_cluster.testing import LocalCluster
from trio_cluster.testing.ctrl_c import CtrlCProbe, each_point


def main() -> int:
    """Run every ``--step``-th point from ``--start``; print the bad ones and the counts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", type=int, default=1)
    parser.add_argument("--step", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=20.0, help="a run longer is 'hung'")
    args = parser.parse_args()
    endings: Counter[str] = Counter()
    with LocalCluster(masters=3, replicas_per_master=1) as cluster:
        host, port = cluster.startup_nodes[0]

        async def program(probe: CtrlCProbe) -> None:
            async with ClusterClient(host=host, port=port) as rc:
                await rc.dbsize()  # connections made, slot map known: a stable path below
                await rc.get("tb:ctrl-c")
                with probe:
                    await rc.dbsize()
                    await rc.get("tb:ctrl-c")

        for outcome in each_point(program, start=args.start, step=args.step, timeout=args.timeout):
            endings[outcome.ending] += 1
            if outcome.ending != "KeyboardInterrupt":
                print(f"--- point {outcome.at} at {outcome.where}: {outcome.ending} ---")
                print(outcome.detail, flush=True)
            if sum(endings.values()) % 100 == 0:
                print(f"{sum(endings.values())} points: {dict(endings)}", flush=True)
    print(f"done: {dict(endings)}")
    return 0 if set(endings) <= {"KeyboardInterrupt"} else 1


if __name__ == "__main__":
    sys.exit(main())
