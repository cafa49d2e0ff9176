"""trio-cluster: a trio-native Redis Cluster client whose connection pool is a state machine."""

from __future__ import annotations

from .errors import (
    ConnectTimeoutError,
    PoolExhaustedError,
    PoolTimeoutError,
    ProtocolError,
    ReadTimeoutError,
    WriteTimeoutError,
)

__version__ = "0.1.0"

__all__ = [
    "ConnectTimeoutError",
    "PoolExhaustedError",
    "PoolTimeoutError",
    "ProtocolError",
    "ReadTimeoutError",
    "WriteTimeoutError",
    "__version__",
]
