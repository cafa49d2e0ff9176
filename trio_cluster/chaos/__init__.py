"""chaos: the origin's example load tool, rebuilt on trio-cluster, plus failure scenarios.

``trio-cluster-chaos list`` / ``trio-cluster-chaos run [SCENARIO...]`` (also ``python -m
trio_cluster.chaos``; see :mod:`trio_cluster.chaos.cli`).
Modules, one job each: ``target`` (the cluster a run works on, parsed once), ``address`` (the
one form of a node's address), ``records`` (what a run records), ``workload`` (seeded workers
that check every reply), ``monitor`` (pool/connection sampling, handing the load's figures on),
``faultlib`` (the faults, and the harness a scenario may set up around its run),
``maintenance`` (harnesses and faults for maintenance notifications and credential rotation),
``scenarios`` (the registry), ``env`` (cluster + proxies), ``runner`` (one scenario end to end),
``session`` (a whole run), ``invariants`` (pure checkers and their table), ``figures``,
``report``, ``plot`` and ``document`` (what a run prints and writes), ``progress`` (live
progress, ETA, summary table), ``metrics`` (Prometheus), ``clientspec`` (client options and the
bounds they imply).  chaos uses trio-cluster's public API only (``trio_cluster`` and
``trio_cluster.testing``; an import-linter contract keeps it so).  It lives under
``trio_cluster`` so that its import name cannot shadow, or be shadowed by, another
distribution's top-level ``chaos`` (PyPI has one).
"""
