"""The routing layer: cluster topology, which slot and node a command goes to, the command
specs, the slot map that owns the nodes, the one node factory, the node call, the one
redirect and retry policy with its isolation of a node known bad, and the topology
refresher.  (The per-node circuit breaker is below, in ``pooling``.)"""
