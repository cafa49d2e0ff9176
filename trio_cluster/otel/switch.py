"""redis-py 8's own observability switch, respected: when an application turned on
``redis.observability`` (``get_observability_instance().init(OTelConfig(...))``), trio-cluster
clients record the same metrics, with the same groups and command filters, into the same
global MeterProvider, without the application doing anything else.

Imported by the clients at ``async with`` time; it imports nothing of OpenTelemetry unless the
switch is on (and then redis-py itself needed OpenTelemetry installed).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..hooks import Hook
from ..version import __version__


def redis_py_hooks(present: Sequence[Hook]) -> tuple[Hook, ...]:
    """A metrics hook configured from redis-py's switch, when it is on and none of
    ``present`` records metrics already; else nothing."""
    try:
        from redis.observability.providers import get_observability_instance
    except ImportError:  # a redis-py without observability
        return ()
    manager = get_observability_instance().get_provider_manager()
    if manager is None or not manager.config.is_enabled():
        return ()
    from .metrics import MetricsHook

    if any(isinstance(hook, MetricsHook) for hook in present):
        return ()
    return (_shared_hook(manager.config),)


#: One hook per redis-py configuration object (instruments are created once per meter): the
#: switch is process-wide in redis-py, so this cache is too.
_hooks_by_config: dict[object, Hook] = {}


def _shared_hook(config: object) -> Hook:
    """One hook per redis-py configuration (instruments are created once per meter)."""
    from opentelemetry import metrics

    from . import names
    from .metrics import MetricsHook

    hook = _hooks_by_config.get(config)
    if hook is None:
        meter = metrics.get_meter(names.METER_NAME, __version__)
        hook = _hooks_by_config[config] = MetricsHook(meter, config)  # type: ignore[arg-type]
    return hook
