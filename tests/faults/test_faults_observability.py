"""Metrics (``-proxy-metrics``, ``-runtime-metrics``, ``GET /metrics``) and log lines as Go's
server has them.  Each test starts its own server process with the flags it needs: the Go
binary when the suite runs against it (TOXIPROXY_SERVER), else ``python -m trio_cluster.faults
serve``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trio
from faults_helpers import (
    AGAINST_REAL,
    REAL_BINARY,
    Backend,
    ServerProcess,
    free_port,
    http,
    read_exactly,
)

pytestmark = pytest.mark.skipif(
    AGAINST_REAL and not REAL_BINARY, reason="needs to start servers: set TOXIPROXY_SERVER"
)


async def _echo_once(listen: str, payload: bytes) -> None:
    host, port = listen.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(payload)
        assert await read_exactly(stream, len(payload)) == payload


async def _metric_lines(url: str, wanted: str) -> list[str]:
    """The /metrics sample lines, once one containing ``wanted`` is there (Go counts a
    link's bytes when the link ends, just after the client sees the close)."""
    while True:
        resp = await http(url, "GET", "/metrics")
        assert resp.status == 200
        assert resp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        lines = resp.body.decode().splitlines()
        if any(wanted in line for line in lines):
            return lines
        await trio.sleep(0.02)


async def test_no_metrics_route_without_the_flags() -> None:
    async with ServerProcess() as server:
        resp = await http(server.url, "GET", "/metrics")
        assert (resp.status, resp.body) == (404, b"404 page not found\n")


async def test_proxy_metrics_count_bytes_per_direction(backend: Backend) -> None:
    async with ServerProcess("-proxy-metrics") as server:
        created = await http(
            server.url,
            "POST",
            "/proxies",
            {"name": "p", "listen": "127.0.0.1:0", "upstream": backend.address},
        )
        listen = created.json()["listen"]
        await _echo_once(listen, b"hello")
        lines = await _metric_lines(
            server.url, 'toxiproxy_proxy_sent_bytes_total{direction="upstream"'
        )
        for name in ("received", "sent"):
            assert f"# TYPE toxiproxy_proxy_{name}_bytes_total counter" in lines
            for direction in ("upstream", "downstream"):
                labels = (
                    f'direction="{direction}",listener="{listen}",proxy="p",'
                    f'upstream="{backend.address}"'
                )
                if direction == "downstream" and name == "sent":
                    continue  # may still be in flight: the downstream link ends last
                assert f"toxiproxy_proxy_{name}_bytes_total{{{labels}}} 5" in lines
        assert 'promhttp_metric_handler_errors_total{cause="encoding"} 0' in lines
        assert not any(line.startswith("process_") for line in lines)


async def test_runtime_metrics_are_process_metrics() -> None:
    async with ServerProcess("-runtime-metrics") as server:
        lines = await _metric_lines(server.url, "process_")
        for name in (
            "go_info",  # the two Toxiproxy's end-to-end script greps for
            "go_goroutines",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_max_fds",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_virtual_memory_bytes",
        ):
            assert any(re.match(rf"{name}[ {{]", line) for line in lines), name
        assert not any(line.startswith("toxiproxy_") for line in lines)


async def _log_line(server: ServerProcess, message: str, **fields: Any) -> dict[str, Any]:
    """The first log line with this message and fields (waits until it is written)."""
    while True:
        # Whether it had exited before the log is read: its last line may be the one.
        exited = not server.alive()
        for line in server.log_lines():
            if line.get("message", "") == message and all(
                line.get(k) == v for k, v in fields.items()
            ):
                return line
        if exited:
            pytest.fail("the server exited:\n" + server.log_text()[-2000:])
        await trio.sleep(0.02)


def _check_shape(line: dict[str, Any], level: str) -> None:
    keys = list(line)
    assert keys[0] == "level" and line["level"] == level
    tail = ["caller", "time", "message"] if "message" in line else ["caller", "time"]
    assert keys[-len(tail) :] == tail
    assert line["time"].endswith("Z")


async def test_logs_like_go_at_debug_level(backend: Backend) -> None:
    async with ServerProcess(env={"LOG_LEVEL": "debug"}) as server:
        started = await _log_line(server, "Starting Toxiproxy", version="2.12.0")
        _check_shape(started, "info")
        serving = await _log_line(server, "Starting Toxiproxy HTTP server")
        assert serving["address"] == f"127.0.0.1:{server.port}"
        await http(server.url, "GET", "/nope")  # router-level 404: no access line
        doc = {"name": "p", "listen": "127.0.0.1:0", "upstream": backend.address}
        listen = (await http(server.url, "POST", "/proxies", doc)).json()["listen"]
        proxy_fields = {"name": "p", "listen": "127.0.0.1:0", "upstream": backend.address}
        _check_shape(await _log_line(server, "Started proxy", **proxy_fields), "info")
        access = await _log_line(server, "", handler="ProxyCreate")
        _check_shape(access, "debug")
        assert (access["method"], access["url"], access["status"]) == ("POST", "/proxies", 201)
        assert access["user_agent"] == "faults-tests/1" and len(access["request_id"]) == 20
        assert {"client", "size", "duration"} <= set(access)

        await _echo_once(listen, b"hi")
        accepted = await _log_line(server, "Accepted client", **proxy_fields)
        _check_shape(accepted, "info")
        assert accepted["client"].startswith("127.0.0.1:")
        for direction in ("upstream", "downstream"):
            line = await _log_line(server, "Setup connection", direction=direction)
            _check_shape(line, "debug")
        terminated = await _log_line(server, "Source terminated", **proxy_fields)
        _check_shape(terminated, "warn")  # the other direction's read, cut by the close
        assert terminated["error"].endswith(": use of closed network connection")

        await http(server.url, "POST", "/proxies/p", {"enabled": False})
        deprecated = await _log_line(
            server, "ProxyUpdate: HTTP method POST is depercated. Use HTTP PATCH instead."
        )
        _check_shape(deprecated, "warn")
        _check_shape(await _log_line(server, "Terminated proxy", **proxy_fields), "info")
        await _log_line(server, "", handler="ProxyUpdate")
        assert not any(line.get("url") == "/nope" for line in server.log_lines())


async def test_log_level_info_drops_debug_lines(backend: Backend) -> None:
    async with ServerProcess(env={"LOG_LEVEL": "info"}) as server:
        doc = {"name": "p", "listen": "127.0.0.1:0", "upstream": backend.address}
        listen = (await http(server.url, "POST", "/proxies", doc)).json()["listen"]
        await _echo_once(listen, b"hi")
        await _log_line(server, "Accepted client")
        await http(server.url, "DELETE", "/proxies/p")
        await _log_line(server, "Terminated proxy")
        levels = {line["level"] for line in server.log_lines()}
        assert levels <= {"info", "warn"} and "info" in levels


async def test_the_metrics_checks_of_toxiproxys_end_to_end_script(backend: Backend) -> None:
    # scripts/test-e2e: a server with both flags, a proxy on localhost, then three greps.
    async with ServerProcess("-proxy-metrics", "-runtime-metrics") as server:
        port = free_port()
        doc = {"name": "shopify_http", "listen": f"localhost:{port}", "upstream": backend.address}
        assert (await http(server.url, "POST", "/proxies", doc)).status == 201
        await _echo_once(f"127.0.0.1:{port}", b"GET /test1")
        wanted = (
            r'^toxiproxy_proxy_sent_bytes_total\{direction="downstream",'
            rf'listener="127\.0\.0\.1:{port}",proxy="shopify_http",'
            rf'upstream="{re.escape(backend.address)}"\}} [0-9]+'
        )
        lines = await _metric_lines(server.url, 'sent_bytes_total{direction="downstream"')
        for pattern in (wanted, r"^go_info", r"^go_goroutines"):
            assert any(re.search(pattern, line) for line in lines), pattern


@pytest.mark.parametrize(
    ("content", "message", "fields"),
    [
        (
            '[{"name":"c1","listen":"127.0.0.1:0","upstream":"127.0.0.1:1"}]',
            "Populated proxies from file",
            {"level": "info", "proxies": 1},
        ),
        (
            '[{"name":"c1"}]',
            "Failed to populate proxies from file",
            {"level": "error", "error": "missing required field: upstream at proxy 1"},
        ),
        (
            "{",
            "Failed to populate proxies from file",
            {"level": "error", "error": "bad request body: unexpected EOF"},
        ),
        (None, "Error reading config file", {"level": "error"}),
    ],
)
async def test_config_file_populates_or_logs_why_not(
    tmp_path: Path, content: str | None, message: str, fields: dict[str, Any]
) -> None:
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    async with ServerProcess("-config", str(config)) as server:
        line = await _log_line(server, message, **fields)
        if content is None:
            assert line["error"] == f"open {config}: no such file or directory"
        # The server runs on either way.
        names = list((await http(server.url, "GET", "/proxies")).json())
        assert names == (["c1"] if fields["level"] == "info" else [])


async def test_sigterm_logs_shutdown_and_exits_cleanly() -> None:
    async with ServerProcess() as server:
        server.proc.terminate()
        await _log_line(server, "Shutdown started", level="info")
        assert await trio.to_thread.run_sync(server.proc.wait) == 0
