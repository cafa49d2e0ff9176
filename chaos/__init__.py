"""chaos: the origin's example load tool, rebuilt on trio-cluster, plus failure scenarios.

``python -m chaos list`` / ``python -m chaos run [SCENARIO...]`` (see :mod:`chaos.cli`).
Modules, one job each: ``records`` (what a run records), ``workload`` (seeded workers that
check every reply), ``monitor`` (pool/connection sampling, progress), ``faultlib`` (the
faults, and the harness a scenario may set up around its run), ``maintenance`` (harnesses and
faults for maintenance notifications and credential rotation), ``scenarios`` (the registry),
``env`` (cluster + proxies), ``runner`` (one scenario end to end), ``invariants`` (pure
checkers), ``report`` (text, JSON, plot), ``clientspec`` (client options and the bounds they
imply).
"""
