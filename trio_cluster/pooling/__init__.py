"""The pool layer: the connection pool of one node (an explicit state machine over its
connections), automatic pipelining on a shared connection, and the circuit breaker."""
