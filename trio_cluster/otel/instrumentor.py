"""Switching OpenTelemetry on the way Python users expect.

* ``opentelemetry-instrument python app.py`` finds :class:`TrioClusterInstrumentor` through
  the ``opentelemetry_instrumentor`` entry point and calls ``instrument()``;
* ``TrioClusterInstrumentor().instrument(tracer_provider=..., meter_provider=...)`` does the
  same from code: every client created afterwards gets the metrics and tracing hooks;
* :func:`instrument_client` instruments one client only, with no process-wide effect.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from redis.observability.config import MetricGroup, OTelConfig

from ..hooks import Hook, add_default_hook, remove_default_hook
from ..version import __version__
from . import names
from .metrics import MetricsHook
from .tracing import TracingHook

#: Every metric group trio-cluster has: ``config=OTelConfig(metric_groups=ALL_GROUPS)``.
#: Without a configuration, redis-py's default applies (RESILIENCY and CONNECTION_BASIC): the
#: COMMAND group records a histogram point per command, which costs what the OpenTelemetry
#: SDK costs per measurement (about 8 us in CPython: measured in benchmarks/README.md).
ALL_GROUPS = [
    MetricGroup.RESILIENCY,
    MetricGroup.CONNECTION_BASIC,
    MetricGroup.CONNECTION_ADVANCED,
    MetricGroup.COMMAND,
    MetricGroup.PUBSUB,
]


def make_hooks(
    *,
    tracer_provider: Any = None,
    meter_provider: Any = None,
    config: OTelConfig | None = None,
    tracing: bool = True,
    metrics_on: bool = True,
) -> list[Hook]:
    """The hooks that record trio-cluster's telemetry into the given providers (the global
    ones when None)."""
    hooks: list[Hook] = []
    if metrics_on:
        meter = metrics.get_meter(names.METER_NAME, __version__, meter_provider=meter_provider)
        hooks.append(MetricsHook(meter, config or OTelConfig()))
    if tracing:
        tracer = trace.get_tracer(names.METER_NAME, __version__, tracer_provider=tracer_provider)
        hooks.append(TracingHook(tracer))
    return hooks


def instrument_client(client: Any, **options: Any) -> list[Hook]:
    """Add the telemetry hooks to one client (options as :func:`make_hooks`); returns them,
    for ``client.remove_hook``.  Call it before the client's ``async with``."""
    hooks = make_hooks(**options)
    for hook in hooks:
        client.add_hook(hook)
    return hooks


class TrioClusterInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """The OpenTelemetry instrumentor of trio-cluster: ``instrument()`` registers the
    metrics and tracing hooks on every client created afterwards; ``uninstrument()`` stops
    that.  Keywords: ``tracer_provider``, ``meter_provider``, ``config`` (redis-py's
    ``OTelConfig``: metric groups and command filters), ``tracing`` and ``metrics_on``."""

    _hooks: list[Hook] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        """What this instruments: trio-cluster itself."""
        return ("trio-cluster",)

    def _instrument(self, **kwargs: Any) -> None:
        options = {
            key: kwargs[key]
            for key in ("tracer_provider", "meter_provider", "config", "tracing", "metrics_on")
            if key in kwargs
        }
        self._hooks = make_hooks(**options)
        for hook in self._hooks:
            add_default_hook(hook)

    def _uninstrument(self, **kwargs: Any) -> None:
        for hook in self._hooks:
            remove_default_hook(hook)
        self._hooks = []
