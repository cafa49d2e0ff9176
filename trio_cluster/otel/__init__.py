"""OpenTelemetry for trio-cluster (``pip install 'trio-cluster[otel]'``): metrics named as
redis-py 8 names them, plus the state machine's own, and a span per command and per pipeline,
all built on the command hooks of :mod:`trio_cluster.hooks`.

``TrioClusterInstrumentor().instrument()`` (or ``opentelemetry-instrument``) turns it on for
every client; ``instrument_client(client)`` for one.  redis-py 8's own switch
(``redis.observability``) is respected without importing this package.  Names and what each
instrument measures: ``docs/observability.md``.

The names below are imported lazily, so that ``trio_cluster.otel.switch`` (which the clients
use) never needs OpenTelemetry installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .instrumentor import TrioClusterInstrumentor, instrument_client, make_hooks
    from .metrics import MetricsHook
    from .tracing import TracingHook

__all__ = [
    "MetricsHook",
    "TracingHook",
    "TrioClusterInstrumentor",
    "instrument_client",
    "make_hooks",
]

_WHERE = {
    "TrioClusterInstrumentor": "instrumentor",
    "instrument_client": "instrumentor",
    "make_hooks": "instrumentor",
    "MetricsHook": "metrics",
    "TracingHook": "tracing",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'trio_cluster.otel' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f".{module}", __name__), name)
