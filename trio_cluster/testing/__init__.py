"""Real-server harness: local servers and clusters on loopback, for tests and chaos runs."""

from __future__ import annotations

from .cluster import LocalCluster, Shard, SlotRange
from .servers import (
    LocalServer,
    ServerNotFoundError,
    bundled_server_binary,
    find_server_binary,
    free_port,
    parse_info,
    server_version,
)
from .tasks import live_tasks

__all__ = [
    "LocalCluster",
    "LocalServer",
    "ServerNotFoundError",
    "Shard",
    "SlotRange",
    "bundled_server_binary",
    "find_server_binary",
    "free_port",
    "live_tasks",
    "parse_info",
    "server_version",
]
