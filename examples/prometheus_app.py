"""A small trio application whose trio-cluster metrics a Prometheus server can scrape.

    pip install 'trio-cluster[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus
    python examples/prometheus_app.py redis://127.0.0.1:6379 --port 9464
    curl -s localhost:9464/metrics | grep db_client_operation_duration

OpenTelemetry's Prometheus exporter serves every instrument in Prometheus' text format
(``db.client.operation.duration`` becomes ``db_client_operation_duration_seconds``).  Every
metric group is turned on, the per-command histogram (the COMMAND group) included: without a
``config`` only redis-py's default groups are.  ``--cluster`` uses a ``ClusterClient``.  It
runs until interrupted, or for ``--seconds``; ``tests/otel/test_prometheus.py`` runs it and
scrapes it.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools

import trio
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server
from redis.exceptions import ResponseError
from redis.observability.config import MetricGroup, OTelConfig

from trio_cluster import Client, ClusterClient
from trio_cluster.otel import TrioClusterInstrumentor


async def workload(url: str, cluster: bool, seconds: float | None) -> None:
    """SET and GET a few keys in a loop (and one error a second, to have something to see)."""
    client = ClusterClient.from_url(url) if cluster else Client.from_url(url)
    async with client:
        with trio.move_on_after(seconds if seconds is not None else float("inf")):
            for n in itertools.count():
                await client.set(f"example:{n % 100}", n)
                await client.get(f"example:{n % 100}")
                if n % 1000 == 0:
                    await client.set("example:0-text", "text")
                    with contextlib.suppress(ResponseError):
                        await client.incr("example:0-text")  # not an integer: an error
                await trio.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="redis://host:port of a server or of a cluster node")
    parser.add_argument("--port", type=int, default=9464, help="where /metrics is served")
    parser.add_argument("--cluster", action="store_true", help="use a ClusterClient")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    args = parser.parse_args()
    start_http_server(args.port, addr="127.0.0.1")
    provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
    every_group = OTelConfig(metric_groups=list(MetricGroup))
    TrioClusterInstrumentor().instrument(meter_provider=provider, config=every_group, tracing=False)
    print(f"serving metrics on http://127.0.0.1:{args.port}/metrics", flush=True)
    trio.run(workload, args.url, args.cluster, args.seconds)


if __name__ == "__main__":
    main()
