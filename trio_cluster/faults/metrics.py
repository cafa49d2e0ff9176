"""Prometheus metrics like Toxiproxy's ``-proxy-metrics`` and ``-runtime-metrics``.

Proxy metrics are Go's two counters, ``toxiproxy_proxy_received_bytes_total`` and
``toxiproxy_proxy_sent_bytes_total``, labelled ``direction``, ``proxy``, ``listener`` and
``upstream``, added to when a link ends (as Go adds ``io.Copy``'s total when it returns).
Runtime metrics are the process collector (``process_*``, the same names as Go's), Python's
own ``python_*`` collectors, and the three ``go_*`` series tools grep for (Toxiproxy's own
end-to-end script checks ``go_info`` and ``go_goroutines``), measuring this runtime:
``go_goroutines`` counts trio tasks, ``go_threads`` threads, ``go_info`` names the Python
version.  Each server has its own registry.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Iterator
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from trio_cluster.testing import live_tasks

__all__ = ["CONTENT_TYPE", "Metrics"]

#: The exposition format's content type, as Go's promhttp sends it (the 0.0.4 text format).
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_LABELS: Final = ("direction", "proxy", "listener", "upstream")


class Metrics:
    """The metrics of one server; ``enabled`` when either kind was asked for."""

    def __init__(self, *, proxy_metrics: bool = False, runtime_metrics: bool = False) -> None:
        self.proxy_metrics = proxy_metrics
        self.runtime_metrics = runtime_metrics
        self.registry = CollectorRegistry()
        self._received: Counter | None = None
        self._sent: Counter | None = None
        if self.enabled:  # promhttp's own counter, always present on Go's /metrics
            handler_errors = Counter(
                "promhttp_metric_handler_errors",
                "Total number of internal errors encountered by the promhttp metric handler.",
                ("cause",),
                registry=self.registry,
            )
            for cause in ("encoding", "gathering"):
                handler_errors.labels(cause)
        if proxy_metrics:
            # Go gives these no help text.
            self._received = Counter(
                "toxiproxy_proxy_received_bytes", "", _LABELS, registry=self.registry
            )
            self._sent = Counter("toxiproxy_proxy_sent_bytes", "", _LABELS, registry=self.registry)
        if runtime_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            self.registry.register(_RuntimeCollector())

    @property
    def enabled(self) -> bool:
        """True when ``GET /metrics`` is served (Go registers the route only then)."""
        return self.proxy_metrics or self.runtime_metrics

    def link_done(
        self, direction: str, proxy: str, listener: str, upstream: str, received: int, sent: int
    ) -> None:
        """Count one finished link's bytes (a no-op without proxy metrics)."""
        if self._received is None or self._sent is None:
            return
        labels = (direction, proxy, listener, upstream)
        self._received.labels(*labels).inc(received)
        self._sent.labels(*labels).inc(sent)

    def exposition(self) -> bytes:
        """The text exposition of every registered metric (Go's counters have no
        ``_created`` series, so neither do these)."""
        lines = generate_latest(self.registry).splitlines(keepends=True)
        return b"".join(_go_value(line) for line in lines if not _is_created(line))


def _go_value(line: bytes) -> bytes:
    """Write a whole-number sample as Go does (``5``, where Python writes ``5.0``)."""
    if not line.startswith(b"#") and line.endswith(b".0\n"):
        return line[:-3] + b"\n"
    return line


def _is_created(line: bytes) -> bool:
    """True for a sample, HELP or TYPE line of a ``*_created`` series."""
    parts = line.split(b" ")
    name = parts[2] if line.startswith(b"#") and len(parts) > 2 else parts[0]
    return name.split(b"{")[0].endswith(b"_created")


class _RuntimeCollector(Collector):
    """``go_goroutines``, ``go_threads`` and ``go_info``, measured on this runtime."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "go_goroutines", "Number of goroutines that currently exist.", value=live_tasks()
        )
        yield GaugeMetricFamily(
            "go_threads", "Number of OS threads created.", value=threading.active_count()
        )
        info = GaugeMetricFamily(
            "go_info", "Information about the Go environment.", labels=["version"]
        )
        info.add_metric([f"python{platform.python_version()}"], 1)
        yield info
