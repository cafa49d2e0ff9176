"""trio-cluster's instruments that share a name with redis-py 8's are redis-py's own: the
same name, unit and kind, read from redis-py's collector (the oracle) with a meter that
records what it is asked to create.  And every instrument is in docs/observability.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from redis.observability.config import MetricGroup, OTelConfig
from redis.observability.metrics import RedisMetricsCollector

from trio_cluster.otel import MetricsHook, names
from trio_cluster.otel.metrics import OBSERVABLE

ALL = list(MetricGroup)


class RecordingMeter:
    """A Meter that only remembers what instruments it was asked for: name -> (kind, unit)."""

    def __init__(self) -> None:
        self.created: dict[str, tuple[str, str]] = {}

    def __getattr__(self, method: str) -> Any:
        if not method.startswith("create_"):
            raise AttributeError(method)

        def create(name: str, *args: Any, unit: str = "", **kwargs: Any) -> Any:
            kind = method.removeprefix("create_").removeprefix("observable_")
            self.created[name] = (kind, unit)
            return _Instrument()

        return create


class _Instrument:
    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None


#: How the same kind is spelt in an observable instrument (what a dashboard sees is the same
#: data point type: a histogram, a monotonic sum, a non-monotonic sum or a gauge).
_SAME_KIND = {"up_down_counter": "up_down_counter", "counter": "counter", "histogram": "histogram"}


def _ours() -> dict[str, tuple[str, str]]:
    meter = RecordingMeter()
    MetricsHook(meter, OTelConfig(metric_groups=ALL))  # type: ignore[arg-type]
    return meter.created


def test_shared_names_units_and_kinds_are_redis_pys() -> None:
    theirs = RecordingMeter()
    RedisMetricsCollector(theirs, OTelConfig(metric_groups=ALL))  # type: ignore[arg-type]
    ours = _ours()
    shared = {name for name in ours if not name.startswith("trio_cluster.")}
    assert shared, "no redis-py instrument is produced"
    for name in sorted(shared):
        assert name in theirs.created, f"{name} is not one of redis-py's instruments"
        assert ours[name] == theirs.created[name], (name, ours[name], theirs.created[name])


def test_every_instrument_is_listed_in_the_docs() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
    missing = [name for name in _ours() if f"`{name}`" not in doc]
    assert not missing, f"docs/observability.md does not list {missing}"


@pytest.mark.parametrize("group", ALL)
def test_groups_choose_the_instruments(group: MetricGroup) -> None:
    """An instrument exists only when its group is asked for."""
    meter = RecordingMeter()
    MetricsHook(meter, OTelConfig(metric_groups=[group]))  # type: ignore[arg-type]
    expected = {name for name, spec in OBSERVABLE.items() if spec[2] == group}
    assert expected <= set(meter.created)
    others = {name for name, spec in OBSERVABLE.items() if spec[2] != group}
    assert not others & set(meter.created)


def test_name_constants_are_unique() -> None:
    values = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str)]
    instruments = [v for v in values if v.startswith(("db.client.", "redis.client.", "trio_"))]
    assert len(instruments) == len(set(instruments))
