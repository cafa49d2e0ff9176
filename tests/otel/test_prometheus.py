"""``examples/prometheus_app.py`` serves trio-cluster's metrics in Prometheus' text format, as
``docs/observability.md`` says: run it against a real server and scrape it."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from trio_cluster.testing import LocalServer

ROOT = Path(__file__).resolve().parents[2]

#: What a scrape must show once the example's first commands ran: the per-command histogram
#: (redis-py's name, the COMMAND group), an error count (its INCR of a string), and one of the
#: state machine's own instruments.
EXPECTED = (
    "db_client_operation_duration_seconds_count{",
    'db_operation_name="SET"',
    'redis_client_errors_total{db_response_status_code="error"',
    "trio_cluster_connection_states{",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body.decode()


def test_the_example_serves_the_metrics(local_server: LocalServer, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    app = subprocess.Popen(
        [
            sys.executable,
            "examples/prometheus_app.py",
            f"redis://{local_server.host}:{local_server.port}",
            "--port",
            str(port),
            "--seconds",
            "40",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr").open("w"),  # a pipe nobody reads could fill and block it
        text=True,
    )
    try:
        assert app.stdout is not None
        assert app.stdout.readline() == f"serving metrics on {url}\n"
        # The exporter answers at once; the client's first commands come a little later.
        deadline = time.monotonic() + 30
        while True:
            body = scrape(url)
            missing = [line for line in EXPECTED if line not in body]
            if not missing:
                break
            assert app.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, f"never scraped {missing}"
            time.sleep(0.2)  # polling another process, whose progress we cannot await
    finally:
        app.terminate()
        app.wait(10)
