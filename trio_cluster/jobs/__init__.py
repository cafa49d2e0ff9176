"""Background jobs on pooled connections: maintenance notifications (handoff, relaxed
timeouts) and credential rotation, each run on a connection claimed through its pool
(``claims.py``).  The dialer they open connections with is below the pool, in ``conn``."""
