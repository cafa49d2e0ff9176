"""The connection layer: one socket to one node, the state machine of a connection, the
watchdog that bounds every round trip of a pooled connection, and the dialer, the one way a
client opens a connection.  Knows nothing of pools or clusters: the pool's ``dial`` is a
dialer, and what a dialer needs from above comes in as protocols."""
