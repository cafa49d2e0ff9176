"""The run as Prometheus metrics (``--metrics-port``), so that a staging drill shows up in the
same dashboards as the application: what the load did, by scenario and by part of the
cluster, and when each fault was on.

Names follow OpenTelemetry's database-client conventions where one exists, as its Prometheus
exporter writes them (``db.client.operation.duration`` in seconds ->
``db_client_operation_duration_seconds``, attributes with ``_`` for ``.``), and are
``trio_cluster_chaos_*`` otherwise:

* ``db_client_operation_duration_seconds`` (histogram): every operation the workload did not
  cancel itself; labels ``db_system_name`` (``redis``), ``db_operation_name`` (``get``,
  ``set``, ``incr``, ``pipeline``, ``publish``, ``spublish``), ``error_type`` (the exception's
  class, empty on success), ``scenario``, ``part``;
* ``trio_cluster_chaos_operations_total`` (counter): the same operations by ``scenario``,
  ``part`` and ``outcome`` (``ok`` or ``error``): ``rate()`` gives per-second successes and
  errors;
* ``trio_cluster_chaos_fault_active`` (gauge): 1 while a fault is on, 0 after; labels
  ``scenario``, ``fault`` and ``node`` (the real ``host:port`` it hit, or ``all``);
* ``trio_cluster_chaos_scenario_active`` (gauge): 1 while a scenario runs;
* ``trio_cluster_chaos_check_failed`` (gauge): per ``scenario`` and ``check``, 1 if the check
  failed, 0 if it passed (set when the scenario ends; checks not made are left out).

``part`` is ``faulted`` for an operation on a slot of the node of the latest fault on one node
(from that fault's start on), ``healthy`` for the other operations on keys, and ``unkeyed``
for the rest (publishes on classic channels).  The monitor hands the operations on twice a
second (``chaos.monitor``); the server answers ``GET /metrics`` with the text format.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Final

import h11
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .monitor import Hit
from .records import Op

__all__ = ["OPERATION_BUCKETS", "ChaosMetrics", "serve_metrics"]

#: OpenTelemetry's advice for ``db.client.operation.duration``, seconds.
OPERATION_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
#: Longest a scrape may take to send its request (a stuck client is dropped).
REQUEST_TIMEOUT: Final = 10.0


class ChaosMetrics:
    """The metrics of one run, in their own registry (a ``chaos.monitor.MetricsSink``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.duration = Histogram(
            "db_client_operation_duration",
            "Duration of the workload's database client operations.",
            ("db_system_name", "db_operation_name", "error_type", "scenario", "part"),
            unit="seconds",
            buckets=OPERATION_BUCKETS,
            registry=self.registry,
        )
        self.operations = Counter(
            "trio_cluster_chaos_operations",
            "Operations of the chaos workload, by outcome.",
            ("scenario", "part", "outcome"),
            registry=self.registry,
        )
        self.fault_active = Gauge(
            "trio_cluster_chaos_fault_active",
            "1 while a chaos fault is on, 0 after.",
            ("scenario", "fault", "node"),
            registry=self.registry,
        )
        self.scenario_active = Gauge(
            "trio_cluster_chaos_scenario_active",
            "1 while a chaos scenario runs.",
            ("scenario",),
            registry=self.registry,
        )
        self.check_failed = Gauge(
            "trio_cluster_chaos_check_failed",
            "1 if a chaos scenario's check failed, 0 if it passed.",
            ("scenario", "check"),
            registry=self.registry,
        )

    def scenario(self, name: str, running: bool, checks: dict[str, str] | None = None) -> None:
        """A scenario starts or ends (with its checks: code -> passed/failed/not checked)."""
        self.scenario_active.labels(name).set(1 if running else 0)
        for code, status in (checks or {}).items():
            if status in ("passed", "failed"):
                self.check_failed.labels(name, code).set(1 if status == "failed" else 0)

    def observe(self, scenario: str, ops: Sequence[tuple[Op, str | None]]) -> None:
        """Count operations (see the module docstring)."""
        for op, part in ops:
            if not op.counted:
                continue
            where = part or "unkeyed"
            self.duration.labels(
                "redis", op.kind, op.error or "", scenario, where
            ).observe(op.latency)  # fmt: skip
            self.operations.labels(scenario, where, "ok" if op.ok else "error").inc()

    def fault(self, scenario: str, name: str, hit: Hit, active: bool) -> None:
        """Set the fault gauge of every node ``hit`` names."""
        nodes = ["all"] if hit.everywhere else [str(node) for node in hit.nodes]
        for node in nodes:
            self.fault_active.labels(scenario, name, node).set(1 if active else 0)

    def exposition(self) -> bytes:
        """The Prometheus text format."""
        return generate_latest(self.registry)


async def serve_metrics(
    metrics: ChaosMetrics,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer ``GET /metrics`` on ``host:port`` until cancelled; ``task_status`` gets the port
    (useful with port 0)."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await _answer(stream, metrics)

    await trio.serve_listeners(handle, listeners)


async def _answer(stream: trio.SocketStream, metrics: ChaosMetrics) -> None:
    """One request, one response, then close (Prometheus opens a connection per scrape)."""
    connection = h11.Connection(h11.SERVER)
    request: h11.Request | None = None
    with trio.move_on_after(REQUEST_TIMEOUT):
        while request is None:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some()
                connection.receive_data(data)
                if not data:
                    return
            elif isinstance(event, h11.Request):
                request = event
            else:
                return
    if request is None:
        return
    path = request.target.split(b"?", 1)[0]
    if request.method != b"GET" or path != b"/metrics":
        status, body, kind = 404, b"not found: GET /metrics\n", "text/plain; charset=utf-8"
    else:
        status, body, kind = 200, metrics.exposition(), CONTENT_TYPE_LATEST
    headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
               ("Connection", "close")]  # fmt: skip
    response = h11.Response(status_code=status, headers=headers)
    out = connection.send(response) or b""
    out += connection.send(h11.Data(data=body)) or b""
    out += connection.send(h11.EndOfMessage()) or b""
    with suppress(trio.BrokenResourceError):  # the scraper went away
        await stream.send_all(out)
