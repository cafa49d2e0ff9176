"""The routing layer: cluster topology, which slot and node a command goes to, the slot map
that owns the nodes, and the per-node circuit breaker."""
