"""Background jobs on pooled connections: maintenance notifications (handoff, relaxed
timeouts), credential rotation, and the dialer that opens every connection with both."""
