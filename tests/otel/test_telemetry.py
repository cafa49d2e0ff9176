"""OpenTelemetry end to end: the real SDK (in-memory reader and exporter) against real servers,
with faults (a read timeout, a MOVED) whose effect on the spans and the metrics is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest
import trio
from redis.exceptions import ResponseError
from redis.observability.config import OTelConfig

from trio_cluster import BreakerOptions, Client, ClusterClient, PoolOptions, ReadTimeoutError
from trio_cluster.hooks import CommandCall, Hook
from trio_cluster.otel import TrioClusterInstrumentor, instrument_client
from trio_cluster.otel.instrumentor import ALL_GROUPS
from trio_cluster.routing.rules import key_slot
from trio_cluster.testing import LocalCluster, LocalServer

from .conftest import Telemetry

SECRET_KEY = "otel-secret-key-7f3a"
SECRET_VALUE = "otel-secret-value-91b2"


def _attributes_text(telemetry: Telemetry) -> str:
    """Every attribute and event of every finished span, as text."""
    return json.dumps(
        [
            {
                "attributes": dict(span.attributes or {}),
                "events": [(e.name, dict(e.attributes or {})) for e in span.events],
            }
            for span in telemetry.spans.get_finished_spans()
        ],
        default=str,
    )


async def test_commands_pipelines_and_errors_become_spans_and_metrics(
    local_server: LocalServer, telemetry: Telemetry
) -> None:
    with trio.fail_after(20):
        client = Client(local_server.host, local_server.port)
        instrument_client(
            client,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            config=OTelConfig(metric_groups=ALL_GROUPS),
        )
        async with client as r:
            await r.set(SECRET_KEY, SECRET_VALUE)
            assert await r.get(SECRET_KEY) == SECRET_VALUE.encode()
            with pytest.raises(ResponseError):
                await r.incr(SECRET_KEY)  # not an integer
            async with r.pipeline(transaction=True) as p:
                p.set(SECRET_KEY, SECRET_VALUE)
                p.get(SECRET_KEY)
                assert await p.execute() == [True, SECRET_VALUE.encode()]
            await r.delete(SECRET_KEY)
            live_points = telemetry.points("db.client.connection.count")

    spans = {span.name: span for span in telemetry.spans.get_finished_spans()}
    for name in ("SET", "GET", "INCRBY", "MULTI", "DEL"):
        assert name in spans, sorted(spans)
    get = spans["GET"]
    assert get.attributes is not None
    assert get.attributes["db.system.name"] == "redis"
    assert get.attributes["db.operation.name"] == "GET"
    assert get.attributes["db.namespace"] == "0"
    assert get.attributes["server.address"] == local_server.host
    assert get.attributes["server.port"] == local_server.port
    assert "error.type" not in get.attributes
    incr = spans["INCRBY"]
    assert incr.attributes is not None and incr.attributes["error.type"] == "ResponseError"
    assert not incr.status.is_ok
    multi = spans["MULTI"]
    assert multi.attributes is not None and multi.attributes["db.operation.batch.size"] == 2
    children = [s for s in telemetry.spans.get_finished_spans() if s.parent is not None]
    assert {s.name for s in children} >= {"SET", "GET"}
    assert all(s.parent.span_id == multi.context.span_id for s in children)  # type: ignore[union-attr]
    # Argument values are never recorded.
    text = _attributes_text(telemetry)
    assert SECRET_KEY not in text and SECRET_VALUE not in text

    assert telemetry.value("db.client.operation.duration", **{"db.operation.name": "GET"}) == 1
    assert telemetry.value("db.client.operation.duration", **{"db.operation.name": "MULTI"}) == 1
    assert (
        telemetry.value(
            "redis.client.errors",
            **{"error.type": "ResponseError", "redis.client.errors.internal": False},
        )
        == 1
    )
    # The error reply's code, as redis-py 8.2 reports it ("ERR value is not an integer...").
    assert telemetry.value("redis.client.errors", **{"db.response.status_code": "ERR"}) == 1
    assert telemetry.value("db.client.connection.create_time") >= 1
    # While open: the connection gauges had the client's pool; once closed, they are empty.
    pool = f"{local_server.host}:{local_server.port}"
    assert any(p.attributes["db.client.connection.pool.name"] == pool for p in live_points)
    assert telemetry.value("db.client.connection.count") == 0
    # Counters outlive the client (a closed client's counts are kept).
    assert telemetry.value("redis.client.connection.closed") >= 1


async def test_a_read_timeout_shows_in_the_span_and_the_error_counter(
    telemetry: Telemetry,
) -> None:
    with trio.fail_after(30), LocalServer() as server:
        client = Client(
            server.host,
            server.port,
            read_timeout=0.3,
            pool=PoolOptions(size=2, min_idle=1),
            breaker=BreakerOptions(failure_threshold=1, cooldown=60.0),
        )
        instrument_client(
            client,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            config=OTelConfig(metric_groups=ALL_GROUPS),
        )
        async with client as r:
            await r.ping()
            server.pause()
            try:
                with pytest.raises(ReadTimeoutError):
                    await r.get("k")
                states = {
                    p.attributes["trio_cluster.connection.state"]
                    for p in telemetry.points("trio_cluster.connection.states")
                }
            finally:
                server.resume()
    timed_out = [s for s in telemetry.spans.get_finished_spans() if s.name == "GET"]
    assert len(timed_out) == 1
    assert timed_out[0].attributes is not None
    assert timed_out[0].attributes["error.type"] == "ReadTimeoutError"
    assert telemetry.value("redis.client.errors", **{"error.type": "ReadTimeoutError"}) == 1
    assert (
        telemetry.value("db.client.operation.duration", **{"error.type": "ReadTimeoutError"}) == 1
    )
    assert "IDLE" in states or "CREATED" in states or "INITIALIZING" in states


async def _move_slot(cluster: LocalCluster, slot: int) -> tuple[str, int]:
    """Give ``slot`` (empty) to another primary behind every client's back; its new owner."""
    owners = {r.primary[1]: r for r in await cluster.slot_map() if r.start <= slot <= r.end}
    source = cluster.node(next(iter(owners)))
    target = next(p for p in cluster.primaries if p is not source)
    target_id = cluster.node_ids[target.port]
    # The target first, as Redis's resharding does: it takes a new config epoch, so gossip
    # from a node not told yet cannot give the slot back to the source meanwhile (a busy
    # machine let that happen: MOVED answered by both nodes, back and forth).
    for primary in [target, *(p for p in cluster.primaries if p is not target)]:
        await primary.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    return target.host, target.port


async def test_a_moved_is_a_redirect_event_and_a_counted_redirect(telemetry: Telemetry) -> None:
    with trio.fail_after(60):
        async with LocalCluster(masters=3, replicas_per_master=0) as cluster:
            client = ClusterClient(startup_nodes=cluster.startup_nodes[:1])
            instrument_client(
                client,
                tracer_provider=telemetry.tracer_provider,
                meter_provider=telemetry.meter_provider,
            )
            async with client as rc:
                key = "otel-moved"
                assert await rc.get(key) is None
                new_owner = await _move_slot(cluster, key_slot(key.encode()))
                telemetry.spans.clear()
                assert await rc.get(key) is None  # MOVED, followed
                redirects = telemetry.value(
                    "trio_cluster.redirects", **{"trio_cluster.redirect.kind": "moved"}
                )
    (span,) = [s for s in telemetry.spans.get_finished_spans() if s.name == "GET"]
    assert span.attributes is not None
    assert (span.attributes["server.address"], span.attributes["server.port"]) == new_owner
    events = [e for e in span.events if e.name == "redirect"]
    assert len(events) == 1 and events[0].attributes is not None
    assert events[0].attributes["kind"] == "moved"
    assert events[0].attributes["to"] == f"{new_owner[0]}:{new_owner[1]}"
    assert events[0].attributes["slot"] == key_slot(key.encode())
    assert redirects == 1


async def test_metrics_collected_on_the_exporters_thread_read_each_client_on_its_own(
    local_server: LocalServer,
) -> None:
    """A periodic exporter collects on a thread of its own, while the client lives on its trio
    thread: every instrument is still read (the maintenance ones need trio's clock)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        PeriodicExportingMetricReader,
    )

    class Names(MetricExporter):
        """Remembers the names of the instruments exported, and on which thread."""

        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()
            self.threads: set[int] = set()

        def export(self, metrics_data: Any, timeout_millis: float = 0, **kwargs: Any) -> Any:
            self.threads.add(threading.get_ident())
            for resource in metrics_data.resource_metrics:
                for scope in resource.scope_metrics:
                    self.names.update(metric.name for metric in scope.metrics)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 0) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 0, **kwargs: Any) -> None:
            pass

    exporter = Names()
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=50)
    provider = MeterProvider(metric_readers=[reader])
    main_thread = threading.get_ident()
    try:
        with trio.fail_after(20):
            client = Client(local_server.host, local_server.port)
            instrument_client(
                client,
                meter_provider=provider,
                tracing=False,
                config=OTelConfig(metric_groups=ALL_GROUPS),
            )
            async with client as r:
                await r.ping()
                while "redis.client.connection.relaxed_timeout" not in exporter.names:  # noqa: ASYNC110 - the exporter's thread sets no trio event
                    await trio.sleep(0.05)
                seen = set(exporter.names)
                threads = set(exporter.threads)
    finally:
        provider.shutdown()
    assert main_thread not in threads  # collected elsewhere
    assert {
        "db.client.connection.count",
        "redis.client.connection.handoff",
        "trio_cluster.connection.handoff_failures",
        "trio_cluster.reauths",
        "trio_cluster.connection.states",
    } <= seen


async def test_by_default_a_command_that_succeeds_costs_nothing(
    local_server: LocalServer, telemetry: Telemetry
) -> None:
    """redis-py's default groups (RESILIENCY, CONNECTION_BASIC): no hook runs for a command
    that succeeds (no per-command histogram), yet errors and connections are counted."""
    with trio.fail_after(20):
        client = Client(local_server.host, local_server.port)
        instrument_client(client, meter_provider=telemetry.meter_provider, tracing=False)
        assert client._hooks.commands == () and client._hooks.failures != ()
        async with client as r:
            await r.set("otel-default", "text")
            with pytest.raises(ResponseError):
                await r.incr("otel-default")
            assert telemetry.value("db.client.connection.count") >= 1
    assert telemetry.points("db.client.operation.duration") == []
    assert telemetry.value("redis.client.errors", **{"error.type": "ResponseError"}) == 1
    assert telemetry.value("db.client.connection.create_time") >= 1


async def test_the_instrumentor_reaches_clients_made_after_it(
    local_server: LocalServer, telemetry: Telemetry
) -> None:
    instrumentor = TrioClusterInstrumentor()
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider
    )
    try:
        with trio.fail_after(20):
            async with Client(local_server.host, local_server.port) as r:
                await r.ping()
    finally:
        instrumentor.uninstrument()
    with trio.fail_after(20):
        async with Client(local_server.host, local_server.port) as r:
            await r.echo("not traced")
    names = [span.name for span in telemetry.spans.get_finished_spans()]
    assert names == ["PING"]


class _Recorder(Hook):
    def __init__(self) -> None:
        self.calls: list[CommandCall] = []
        self.opened = self.closed = 0

    def after_command(self, call: CommandCall, token: Any) -> None:
        self.calls.append(call)

    def client_opened(self, client: Any) -> None:
        self.opened += 1

    def client_closed(self, client: Any) -> None:
        self.closed += 1


class _Raising(Hook):
    def before_command(self, call: CommandCall) -> Any:
        raise RuntimeError("a broken hook")


async def test_hooks_see_every_command_and_cannot_fail_one(local_server: LocalServer) -> None:
    recorder = _Recorder()
    with trio.fail_after(20):
        client = Client(local_server.host, local_server.port)
        client.add_hook(_Raising())
        client.add_hook(recorder)
        async with client as r:
            await r.set("hooked", "1")  # the raising hook is logged, the command runs
            with trio.move_on_after(0.2):
                await r.blpop(["hooked-list"], timeout=5)  # cancelled: the hooks see it end
        await client.aclose()  # a second close tells the hooks nothing more
    assert [c.name for c in recorder.calls] == ["SET", "BLPOP"]
    assert recorder.calls[0].error is None and recorder.calls[0].arg_count == 2
    assert isinstance(recorder.calls[1].error, trio.Cancelled)
    assert recorder.calls[1].blocking
    assert (recorder.opened, recorder.closed) == (1, 1)


REDIS_PY_SWITCH = """
import sys, trio
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.observability import get_observability_instance, OTelConfig, MetricGroup
from trio_cluster import Client

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
get_observability_instance().init(OTelConfig(metric_groups=[MetricGroup.COMMAND]))

async def main():
    async with Client(sys.argv[1], int(sys.argv[2])) as r:
        await r.set("switch", "1")
        await r.get("switch")

trio.run(main)
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            for point in metric.data.data_points:
                print(metric.name, point.attributes.get("db.operation.name"),
                      point.attributes.get("redis.client.library"))
"""


def test_redis_py_switch_is_respected(local_server: LocalServer) -> None:
    """redis-py 8's own ``init(OTelConfig(...))``, and nothing of trio-cluster's: its clients
    record into the global MeterProvider, with redis-py's groups (COMMAND only here)."""
    result = subprocess.run(
        [sys.executable, "-c", REDIS_PY_SWITCH, local_server.host, str(local_server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = set(result.stdout.split("\n")) - {""}
    assert lines == {
        f"db.client.operation.duration {name} trio-cluster:v{_version()}" for name in ("SET", "GET")
    }, result.stdout + result.stderr


def _version() -> str:
    from trio_cluster.version import __version__

    return __version__


AUTO_APP = """
import sys, trio
from trio_cluster import Client

async def main():
    async with Client(sys.argv[1], int(sys.argv[2])) as r:
        await r.ping()

trio.run(main)
"""


def test_opentelemetry_instrument_finds_the_instrumentor(local_server: LocalServer) -> None:
    """``opentelemetry-instrument python app.py``, with no code of ours in the app: the
    instrumentor comes from the ``opentelemetry_instrumentor`` entry point."""
    instrument = os.path.join(os.path.dirname(sys.executable), "opentelemetry-instrument")
    env = {
        **os.environ,
        "OTEL_TRACES_EXPORTER": "console",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
    }
    result = subprocess.run(
        [instrument, sys.executable, "-c", AUTO_APP, local_server.host, str(local_server.port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert '"name": "PING"' in result.stdout, result.stdout + result.stderr
    assert '"db.system.name": "redis"' in result.stdout
