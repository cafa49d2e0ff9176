"""The connection layer: one socket to one node, the state machine of a connection, and the
watchdog that bounds every round trip.  Knows nothing of pools or clusters."""
