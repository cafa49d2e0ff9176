"""Benchmarks: side-by-side comparisons of trio-cluster with peer clients (scripts print JSON).

Run them as modules from the repository root, e.g. ``python -m benchmarks.peers``; see
``benchmarks/README.md``.
"""
