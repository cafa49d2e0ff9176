"""``--metrics-port``: the run's figures as Prometheus metrics, scraped over HTTP while a real
run goes and read back with prometheus_client's own parser."""

from __future__ import annotations

import re

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from trio_cluster.chaos.address import Address
from trio_cluster.chaos.metrics import ChaosMetrics, serve_metrics
from trio_cluster.chaos.monitor import Hit
from trio_cluster.chaos.records import CANCELLED, Op
from trio_cluster.chaos.redact import Redactor
from trio_cluster.chaos.scenarios import SCENARIOS
from trio_cluster.chaos.session import UI, RunPlan, execute
from trio_cluster.chaos.target import ClusterTarget

NODE = Address("127.0.0.1", 7000)


def _samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and labels.items() <= s.labels.items())  # fmt: skip


async def _get(port: int, path: str = "/metrics") -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"Content-Length: (\d+)", head)
    if length is None or len(body) != int(length.group(1)):
        raise trio.BrokenResourceError("cut short")  # the server went away mid-answer
    return int(head.split()[1]), body.decode()


async def test_names_labels_and_text_format() -> None:
    metrics = ChaosMetrics()
    metrics.scenario("node-hang", running=True)
    metrics.observe("node-hang", [
        (Op(0, "get", 0.0, 0.002, True, None, (7,)), "faulted"),
        (Op(1, "set", 0.0, 0.6, False, "ReadTimeoutError", (9,)), "healthy"),
        (Op(2, "get", 0.0, 0.01, False, CANCELLED, (9,)), "healthy"),  # the workload's own
        (Op(3, "publish", 0.0, 0.001, True), None),
    ])  # fmt: skip
    metrics.fault("node-hang", "node-hang", Hit((NODE,), False, frozenset({7})), active=True)
    samples = _samples(metrics.exposition().decode())
    total = "trio_cluster_chaos_operations_total"
    assert _value(samples, total, part="faulted", outcome="ok") == 1
    assert _value(samples, total, part="healthy", outcome="error") == 1
    assert _value(samples, total, part="unkeyed", outcome="ok") == 1
    assert _value(samples, total) == 3  # the cancelled one is not counted, as in the report
    duration = "db_client_operation_duration_seconds"
    assert _value(samples, f"{duration}_count", db_system_name="redis") == 3
    slow = {"error_type": "ReadTimeoutError", "db_operation_name": "set", "le": "0.5"}
    assert _value(samples, f"{duration}_bucket", **slow) == 0  # 0.6 s: above the 0.5 bucket
    fault = {"scenario": "node-hang", "fault": "node-hang", "node": "127.0.0.1:7000"}
    assert _value(samples, "trio_cluster_chaos_fault_active", **fault) == 1
    metrics.fault("node-hang", "node-hang", Hit((NODE,), False, frozenset({7})), active=False)
    metrics.scenario(
        "node-hang",
        running=False,
        checks={
            "blast-radius": "failed",
            "recovery": "passed",
            "handoff": "not checked: no MOVING",
        },
    )
    samples = _samples(metrics.exposition().decode())
    assert _value(samples, "trio_cluster_chaos_fault_active", **fault) == 0
    assert _value(samples, "trio_cluster_chaos_scenario_active", scenario="node-hang") == 0
    failed = "trio_cluster_chaos_check_failed"
    assert _value(samples, failed, check="blast-radius") == 1
    assert _value(samples, failed, check="recovery") == 0
    assert not [s for s in samples if s.labels.get("check") == "handoff"]


async def test_served_over_http_and_nothing_else() -> None:
    metrics = ChaosMetrics()
    metrics.scenario("x", running=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_metrics, metrics, "127.0.0.1", 0)
            status, body = await _get(port)
            assert status == 200
            assert _value(_samples(body), "trio_cluster_chaos_scenario_active", scenario="x") == 1
            assert (await _get(port, "/"))[0] == 404
            nursery.cancel_scope.cancel()


class _Watch(UI):
    """Catches the metrics address the run announces."""

    def __init__(self) -> None:
        self.port: int | None = None
        self.announced = trio.Event()

    def message(self, text: str) -> None:
        found = re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", text)
        if found:
            self.port = int(found.group(1))
            self.announced.set()


@pytest.mark.timeout(120)
async def test_a_run_is_scraped_while_it_goes() -> None:
    scenario = SCENARIOS["node-down"]
    plan = RunPlan([scenario], ClusterTarget.parse("local", Redactor()), "embedded", 5,
                   "metrics0", duration=1.0, metrics=("127.0.0.1", 0))  # fmt: skip
    ui = _Watch()
    scrapes: list[list[Sample]] = []

    async def scrape() -> None:
        await ui.announced.wait()
        assert ui.port is not None
        while True:
            try:
                status, body = await _get(ui.port)
            except (OSError, trio.BrokenResourceError):
                return  # the run ended: its server with it
            assert status == 200
            scrapes.append(_samples(body))
            await trio.sleep(0.1)

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scrape)
            outcome = await execute(plan, Redactor(), ui)
            nursery.cancel_scope.cancel()
    (result,) = outcome.results
    assert result.status in ("passed", "failed") and scrapes
    (window,) = result.record.fault_windows
    fault = {"scenario": "node-down", "fault": "node-down", "node": window.target}
    gauge = [_value(s, "trio_cluster_chaos_fault_active", **fault) for s in scrapes]
    assert 1 in gauge and gauge[-1] == 0  # on during the fault, off after it
    last = scrapes[-1]
    total = "trio_cluster_chaos_operations_total"
    for part in ("healthy", "faulted"):
        assert _value(last, total, scenario="node-down", part=part, outcome="ok") > 0
    # Exported as it went: the counters grew from scrape to scrape.
    seen = [_value(s, total, scenario="node-down") for s in scrapes]
    assert len({v for v in seen if v}) >= 3
    failures = sum(1 for op in result.record.ops if op.failed)
    assert _value(last, total, scenario="node-down", outcome="error") <= failures
