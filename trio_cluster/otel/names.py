"""The names trio-cluster's telemetry uses: redis-py 8's instrument and attribute names where
redis-py has one (so a dashboard built for redis-py works unchanged), documented
``trio_cluster.*`` names for what only an explicit state machine can show.  The table in
``docs/observability.md`` lists every one; ``tests/otel/test_names.py`` checks the two
agree, and that the shared names are redis-py's own.
"""

from __future__ import annotations

from ..version import __version__

# --- instruments redis-py 8 has (redis/observability/metrics.py) -----------------------------
OPERATION_DURATION = "db.client.operation.duration"
CONNECTION_COUNT = "db.client.connection.count"
CONNECTION_CREATE_TIME = "db.client.connection.create_time"
CONNECTION_WAIT_TIME = "db.client.connection.wait_time"
CONNECTION_TIMEOUTS = "db.client.connection.timeouts"
CLIENT_ERRORS = "redis.client.errors"
CONNECTION_CLOSED = "redis.client.connection.closed"
CONNECTION_RELAXED_TIMEOUT = "redis.client.connection.relaxed_timeout"
CONNECTION_HANDOFF = "redis.client.connection.handoff"
MAINTENANCE_NOTIFICATIONS = "redis.client.maintenance.notifications"
PUBSUB_MESSAGES = "redis.client.pubsub.messages"

# --- instruments only trio-cluster has --------------------------------------------------------
CONNECTION_STATES = "trio_cluster.connection.states"
CONNECTION_UNUSABLE_TIME = "trio_cluster.connection.unusable_time"
POOL_WAITERS = "trio_cluster.pool.waiters"
BREAKER_STATE = "trio_cluster.breaker.state"
BREAKER_REJECTIONS = "trio_cluster.breaker.rejections"
REDIRECTS = "trio_cluster.redirects"
RETRIES = "trio_cluster.retries"
TOPOLOGY_REFRESHES = "trio_cluster.topology.refreshes"
REAUTHS = "trio_cluster.reauths"
HANDOFF_FAILURES = "trio_cluster.connection.handoff_failures"

# --- attributes (redis-py's, from redis/observability/attributes.py) --------------------------
DB_SYSTEM = "db.system"
DB_NAMESPACE = "db.namespace"
DB_OPERATION_NAME = "db.operation.name"
DB_RESPONSE_STATUS_CODE = "db.response.status_code"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
POOL_NAME = "db.client.connection.pool.name"
CONNECTION_STATE = "db.client.connection.state"
CLIENT_LIBRARY = "redis.client.library"
CLOSE_REASON = "redis.client.connection.close.reason"
NOTIFICATION = "redis.client.connection.notification"
RETRY_ATTEMPTS = "redis.client.operation.retry_attempts"
BLOCKING = "redis.client.operation.blocking"
ERROR_INTERNAL = "redis.client.errors.internal"
ERROR_CATEGORY = "redis.client.errors.category"
PUBSUB_DIRECTION = "redis.client.pubsub.message.direction"

# --- attributes only trio-cluster has ---------------------------------------------------------
STATE = "trio_cluster.connection.state"
"""A connection's state in the pool's state machine (``IDLE``, ``IN_USE``, ``UNUSABLE``...)."""
DETAILED_CLOSE_REASON = "trio_cluster.close_reason"
"""Why the pool closed a connection, in its own words (``PoolStats.closes`` keys)."""
REDIRECT_KIND = "trio_cluster.redirect.kind"
RETRY_REASON = "trio_cluster.retry.reason"
OUTCOME = "trio_cluster.outcome"

# --- span attributes (OpenTelemetry's database semantic conventions) -------------------------
DB_SYSTEM_NAME = "db.system.name"
BATCH_SIZE = "db.operation.batch.size"

LIBRARY = f"trio-cluster:v{__version__}"
"""The value of ``redis.client.library`` (redis-py says ``redis-py:v<version>``)."""
METER_NAME = "trio-cluster"
