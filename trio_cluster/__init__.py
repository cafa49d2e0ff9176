"""trio-cluster: a trio-native Redis Cluster client whose connection pool is a state machine.

``Client`` talks to one node, ``ClusterClient`` to a Redis Cluster; both take ``PoolOptions``
and expose ``stats()`` and ``connections()``.  Errors subclass redis-py's.
``MaintNotificationsOptions`` configures ``maint_notifications=``; ``parse_url`` turns a
``redis://`` URL into the clients' keywords (what ``from_url`` does, for tools that parse a
URL once and open several clients from it) and ``redact_url`` shows a URL without its password.
``Lock`` (what ``client.lock()`` gives) and ``Script`` (what ``client.register_script()``
gives) are exported for annotations and for ``lock(..., lock_class=...)`` subclasses.
"""

from __future__ import annotations

import logging as _logging

from .clients.client import Client, Pipeline
from .clients.cluster import ClusterClient, ClusterStats, ReadFrom, RetryOptions
from .clients.cluster_pipeline import ClusterPipeline
from .clients.lock import Lock
from .clients.pipelinebase import Script
from .clients.pubsub import PubSub, PubSubLimitError, PubSubStats
from .config import ConnectionConfig, parse_url, redact_url
from .conn.state import ConnState
from .errors import (
    AskError,
    AuthenticationError,
    ConnectTimeoutError,
    InvalidTransition,
    MovedError,
    PoolClosedError,
    PoolExhaustedError,
    PoolTimeoutError,
    ProtocolError,
    ReadTimeoutError,
    ScriptTimeoutError,
    TrioRequiredError,
    WriteTimeoutError,
)
from .jobs.maint import MaintNotificationsOptions
from .pooling.breaker import BreakerOptions, BreakerState, CircuitOpenError
from .pooling.pool import ConnectionInfo, PoolOptions, PoolStats
from .version import __version__

# A library's records go where the application's logging sends them; with none configured,
# Python's last-resort handler must not print them to stderr.
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "AskError",
    "AuthenticationError",
    "BreakerOptions",
    "BreakerState",
    "CircuitOpenError",
    "Client",
    "ClusterClient",
    "ClusterPipeline",
    "ClusterStats",
    "ConnState",
    "ConnectTimeoutError",
    "ConnectionConfig",
    "ConnectionInfo",
    "InvalidTransition",
    "Lock",
    "MaintNotificationsOptions",
    "MovedError",
    "Pipeline",
    "PoolClosedError",
    "PoolExhaustedError",
    "PoolOptions",
    "PoolStats",
    "PoolTimeoutError",
    "ProtocolError",
    "PubSub",
    "PubSubLimitError",
    "PubSubStats",
    "ReadFrom",
    "ReadTimeoutError",
    "RetryOptions",
    "Script",
    "ScriptTimeoutError",
    "TrioRequiredError",
    "WriteTimeoutError",
    "__version__",
    "parse_url",
    "redact_url",
]
