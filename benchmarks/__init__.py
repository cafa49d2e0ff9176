"""Benchmarks: side-by-side comparisons of trio-cluster with peer clients (scripts print JSON).

Run them as modules from the repository root, e.g. ``python -m benchmarks.peers``; see
``benchmarks/README.md``.
"""

import os
import sys

#: A worker measuring another commit's ``trio_cluster`` (``benchmarks.peers --baseline``): that
#: checkout goes first on the path, before anything imports the library; the harness stays
#: this one, so both commits are measured by the same code.
BASELINE_ENV = "TRIO_CLUSTER_BENCH_LIBRARY"
if os.environ.get(BASELINE_ENV):
    sys.path.insert(0, os.environ[BASELINE_ENV])
