"""The Prometheus example (``examples/prometheus_app.py``) run as a user would run it, against
a real server, and its ``/metrics`` scraped and parsed with prometheus_client's own parser:
redis-py's metric names as Prometheus spells them, with values that moved."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_cluster.testing import LocalServer, free_port

APP = Path(__file__).parents[2] / "examples" / "prometheus_app.py"


def _scrape(port: int) -> dict[str, float]:
    """``{sample name with labels: value}`` of one scrape."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


async def test_the_example_serves_redis_py_metric_names_in_prometheus_format(
    local_server: LocalServer,
) -> None:
    port = free_port("127.0.0.1")
    url = f"redis://{local_server.host}:{local_server.port}"
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(APP), url, "--port", str(port), "--seconds", "30"],
            stdout=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            banner = b""
            while b"serving metrics" not in banner:
                chunk = await process.stdout.receive_some()
                assert chunk, "the example ended before serving"
                banner += chunk
            while True:  # until the workload has run a while (a scrape every 100 ms)
                samples = await trio.to_thread.run_sync(_scrape, port)
                gets = [
                    v
                    for k, v in samples.items()
                    if k.startswith("db_client_operation_duration_seconds_count{")
                    and "db_operation_name=GET" in k
                ]
                if gets and gets[0] >= 100:
                    break
                await trio.sleep(0.1)
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    names = {k.split("{")[0] for k in samples}
    assert {
        "db_client_operation_duration_seconds_bucket",
        "db_client_connection_count",
        "db_client_connection_create_time_seconds_count",
        "redis_client_errors_total",
        "trio_cluster_connection_states",
    } <= names, sorted(names)
    errors = [
        v
        for k, v in samples.items()
        if k.startswith("redis_client_errors_total{") and "error_type=ResponseError" in k
    ]
    assert errors and errors[0] >= 1  # the example's deliberate INCR of a text value
