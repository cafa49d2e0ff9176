"""The text report, JSON object, series, plot and summary table on synthetic records; the
redactor."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rich.console import Console

from trio_cluster.chaos.address import Address
from trio_cluster.chaos.figures import BUCKETS, metrics, node_stats, series
from trio_cluster.chaos.plot import plot
from trio_cluster.chaos.progress import summary_table
from trio_cluster.chaos.records import ConnSample, Op, RunRecord, Window
from trio_cluster.chaos.redact import Redactor, secrets_of_url
from trio_cluster.chaos.report import render_text, to_json
from trio_cluster.chaos.runner import ScenarioResult, judge
from trio_cluster.chaos.scenarios import SCENARIOS

PROXY, REAL = Address("127.0.0.1", 40001), Address("127.0.0.1", 7000)
IDLE_REPLICA = Address("127.0.0.1", 40002)


def _pool(hits: int) -> dict[str, object]:
    return {"hits": hits, "misses": 0, "timeouts": 0, "waits": 0, "wait_time_total": 0.0,
            "dials": 2, "dial_errors": 0, "closes": {}}  # fmt: skip


def _result() -> ScenarioResult:
    """node-down: 100 ops/s for 1 s, an outage (3 ops/s, some failing) for 2 s, back after."""
    # Keys on slot 7 (the faulted node's) and slot 9, in turn.
    ops = [Op(0, "set", i / 100, i / 100 + 0.002, True, None, (7 + 2 * (i % 2),))
           for i in range(100)]  # fmt: skip
    ops += [Op(0, "get", 1.0 + i / 3, 1.0 + i / 3 + 1.2, i % 2 == 0, "CircuitOpenError", (9,))
            for i in range(6)]  # fmt: skip
    ops += [Op(0, "set", 3.0 + i / 100, 3.0 + i / 100 + 0.003, True, None, (7 + 2 * (i % 2),))
            for i in range(300)]  # fmt: skip
    record = RunRecord(start=0.0, end=6.0, ops=ops)
    record.fault_windows = [Window("node-down", 1.0, 3.0, (REAL,), slots=frozenset({7}))]
    record.node_names = {PROXY: REAL, IDLE_REPLICA: Address("127.0.0.1", 7003)}
    record.client_stats = {"client0": {"nodes": {str(PROXY): _pool(400),
                                                 str(IDLE_REPLICA): _pool(0)},
                                       "moved": 0, "ask": 0, "retries": {},
                                       "breaker_rejections": 3}}  # fmt: skip
    record.max_per_node = {(0, PROXY): 8, (0, IDLE_REPLICA): 2}
    record.samples = [ConnSample(t / 4, 0, {PROXY: 8}, {"IDLE": 6, "UNUSABLE": 2})
                      for t in range(24)]  # fmt: skip
    return judge(SCENARIOS["node-down"], 1, record)


def test_buckets_count_every_op_and_agree_with_slow_ops() -> None:
    m = metrics(_result())
    assert sum(m["latency_buckets"].values()) == m["total_operations"] == 406
    assert list(m["latency_buckets"]) == [name for name, _ in BUCKETS]
    assert m["slow_ops_1s"] == m["latency_buckets"][">=1s"] == 6  # the failed ones too
    assert m["slow_ops_100ms"] >= m["slow_ops_1s"]


def test_series_per_second() -> None:
    points = series(_result().record)
    assert [p["t"] for p in points] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert points[0]["ops"] == 100 and points[1]["ops"] == 3
    # Successes on the faulted node's slots and on the rest, through the fault.
    assert [(p["ok_healthy"], p["ok_faulted"]) for p in points[:4]] == [
        (50, 50),
        (2, 0),
        (1, 0),
        (50, 50),
    ]
    assert points[1]["errors"] == {"CircuitOpenError": 1}
    assert points[0]["connections"] == 8 and points[0]["unusable"] == 2
    assert sum(p["ops"] for p in points) == 406


def test_only_nodes_that_served_traffic_by_real_address() -> None:
    nodes = node_stats(_result().record)
    assert list(nodes) == [str(REAL)]
    assert nodes[str(REAL)]["max_connections"] == 8


def test_text_report_shows_the_outage_bounds_and_what_was_not_checked() -> None:
    result = _result()
    text = render_text(result)
    assert f"Fault node-down on {REAL}" in text
    assert "Baseline before the fault" in text and "Recovery = time from the fault's end" in text
    for bound in ("pool_size:", "unusable:", "blocked:", "recovery:"):
        assert bound in text
    assert "NOT CHECKED server-clients-baseline" in text  # no server client counts recorded
    assert f"Blast radius of node-down on {REAL}: healthy slots 2 ok/s" in text
    assert "ok/s healthy/faulted slots (* = during the fault): 0s 50/50, 1s 2/0*, 2s 1/0*" in text
    assert "blast_radius:" in text  # the bound's one-line explanation
    assert "VIOLATION blast-radius" in text
    assert str(PROXY) not in text and "7003" not in text  # real addresses; idle replica left out
    seconds = result.recoveries[0].seconds
    assert seconds is not None and seconds < 0.5


def test_json_object_is_plain_json(tmp_path: Path) -> None:
    obj = to_json(_result())
    text = json.dumps(obj, allow_nan=False)  # no repr strings, no NaN
    assert "PoolOptions(" not in text
    assert obj["faults"] == [{"name": "node-down", "target": str(REAL), "nodes": [str(REAL)],
                              "start_s": 1.0, "end_s": 3.0}]  # fmt: skip
    assert obj["client"]["pool"]["size"] == 8
    assert obj["checks"]["recovery"] == "passed"
    assert obj["checks"]["blast-radius"] == "failed"
    blast = obj["blast_radius"]
    assert blast["node"] == str(REAL) and blast["healthy_share"] == 0.5
    assert blast["baseline_ok_per_s"] == 100.0 and blast["healthy_ok_per_s"] == 1.5
    assert blast["ratio"] == 0.015 and blast["ratio"] < blast["bound"] < 0.5
    assert {"t", "ok_healthy", "ok_faulted"} <= set(obj["series"][0])


def test_plot_and_summary_table(tmp_path: Path) -> None:
    result = _result()
    path = tmp_path / "p.png"
    assert plot(result, path) and path.stat().st_size > 10_000
    console = Console(width=160, record=True)
    console.print(summary_table([result]))
    text = console.export_text()
    assert "node-down" in text and "healthy/bound" in text
    assert re.search(r"0\.0\d/0\.\d\d", text)  # the blast radius's ratio under its bound


def test_redactor() -> None:
    assert secrets_of_url("redis://user:p%40ss@h:1") == ["p%40ss", "p@ss"]
    assert secrets_of_url("redis://lonely@h:1") == ["lonely", "lonely"]
    assert secrets_of_url("redis://h:1") == []
    redactor = Redactor()
    redactor.add_url("redis://:hunter2@h:1")
    redactor.add("hunter2-longer")
    assert redactor.scrub("a hunter2-longer b hunter2") == "a *** b ***"
    assert redactor.url("redis://:hunter2@h:1") == "redis://:***@h:1"


def test_series_without_a_fault_on_one_node_has_no_split() -> None:
    record = RunRecord(start=0.0, end=2.0, ops=[Op(0, "set", 0.1, 0.2, True, None, (7,))])
    (point, _) = series(record)
    assert point["ok"] == 1 and point["ok_healthy"] is None and point["ok_faulted"] is None
