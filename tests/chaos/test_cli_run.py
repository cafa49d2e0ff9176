"""``trio-cluster-chaos run`` end to end against real clusters: exit statuses, no secret anywhere,
the JSON document and JUnit XML, and Ctrl-C cleanup."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import trio

from trio_cluster.chaos.cli import main
from trio_cluster.chaos.document import SCHEMA_VERSION
from trio_cluster.testing import LocalCluster, free_port

SECRET = "s3cret-chaos-pw"


@pytest.fixture(scope="module")
def secured() -> Iterator[LocalCluster]:
    """A 3+3 cluster whose every node requires ``SECRET``."""
    with LocalCluster(masters=3, replicas_per_master=1, password=SECRET) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _logger_levels() -> Iterator[None]:
    """``main`` sets the library loggers' levels as a CLI process does; later tests in this
    process get theirs back."""
    loggers = [logging.getLogger(name) for name in ("trio_cluster.faults", "trio_cluster")]
    levels = [logger.level for logger in loggers]
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def _everything(capsys: pytest.CaptureFixture[str], *paths: Path) -> str:
    out, err = capsys.readouterr()
    texts = [out, err]
    for path in paths:
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        texts += [f.read_text(errors="replace") for f in files if f.suffix != ".png"]
    return "\n".join(texts)


def _keys(cluster: LocalCluster) -> int:
    async def count() -> int:
        total = 0
        for node in cluster.primaries:
            _, keys = await node.execute("SCAN", 0, "MATCH", "chaos:*", "COUNT", 10000)
            total += len(keys)
        return total

    return trio.run(count)


@pytest.mark.timeout(120)
def test_a_run_on_a_password_protected_cluster_writes_no_secret(
    secured: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    doc_path, junit, reports = tmp_path / "r.json", tmp_path / "r.xml", tmp_path / "reports"
    argv = ["run", "basic-concurrent", "node-down", "node-sigstop", "--cluster",
            secured.url(), "--seed", "11", "--json", str(doc_path), "--junit", str(junit),
            "--report-dir", str(reports)]  # fmt: skip
    code = main(argv)
    text = _everything(capsys, doc_path, junit, reports)
    assert SECRET not in text
    assert "redis://:***@" in text  # the banner shows the URL, redacted
    # The faults' own noise (the proxy's cut links, the client's failed dials) only with --debug.
    noise = [
        r.getMessage()
        for r in caplog.records
        if r.name.split(".")[0] == "trio_cluster" and r.levelno < logging.ERROR
    ]
    assert noise == []
    doc: dict[str, Any] = json.loads(doc_path.read_text())
    statuses = {s["name"]: s["status"] for s in doc["scenarios"]}
    assert statuses["node-sigstop"] == "skipped"  # process faults need --cluster local
    assert code == (0 if doc["status"] == "passed" else 1)
    assert doc["schema_version"] == SCHEMA_VERSION and doc["exit_code"] == code
    assert len(doc["run_id"]) == 8 and doc["started_at"] < doc["ended_at"]
    assert set(doc["versions"]) == {"trio_cluster", "python", "trio", "server"}
    assert doc["versions"]["server"].split()[0] in ("valkey", "redis")
    nodes = {f"{n.host}:{n.port}" for n in secured.nodes}
    assert set(doc["target"]["nodes"]) == nodes
    assert doc["target"]["cluster"].startswith("redis://:***@")
    down = next(s for s in doc["scenarios"] if s["name"] == "node-down")
    assert isinstance(down["client"]["pool"], dict)  # configs are objects, not reprs
    assert isinstance(down["workload"]["think"], list)
    (fault,) = down["faults"]
    assert fault["target"] in {f"{p.host}:{p.port}" for p in secured.primaries}
    assert set(down["nodes"]) <= nodes  # real addresses only, never a proxy's
    assert down["baseline"]["measured"] and down["baseline"]["throughput_ops_s"] > 0
    assert down["recoveries"][0]["measured"]
    assert down["checks"]["server-clients-baseline"].startswith("not checked")
    assert len(down["series"]) >= 5
    assert {"t", "ops", "ok", "errors", "p50_ms", "p99_ms", "connections", "unusable"} <= set(
        down["series"][0]
    )
    assert sum(p["ops"] for p in down["series"]) == down["metrics"]["total_operations"]
    suite = ET.parse(junit).getroot()
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == ["basic-concurrent", "node-down", "node-sigstop"]
    assert cases["node-sigstop"].find("skipped") is not None
    for name, status in statuses.items():
        assert (cases[name].find("failure") is not None) == (status == "failed")
    assert (reports / "node-down.png").stat().st_size > 10_000
    assert _keys(secured) == 0


def test_setup_errors_exit_2_in_one_line_whatever_the_proxy(
    secured: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = f"redis://:{SECRET}@127.0.0.1:{free_port()}"
    wrong = secured.url().replace(SECRET, "not-the-password")
    for cluster, proxy in (
        (nowhere, "embedded"),
        (nowhere, f"http://127.0.0.1:{free_port()}"),
        (wrong, "embedded"),
    ):
        doc_path = tmp_path / "setup.json"
        assert main(["run", "basic-concurrent", "--cluster", cluster, "--toxiproxy", proxy,
                     "--json", str(doc_path)]) == 2  # fmt: skip
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        assert SECRET not in out + err + doc_path.read_text()
        errors = [line for line in err.splitlines() if line.startswith("setup error")]
        assert len(errors) == 1, err
        doc = json.loads(doc_path.read_text())
        assert doc["status"] == "setup-error" and doc["setup_error"] == errors[0]
    assert main(["run", "basic-concurrent", "--cluster", nowhere, "--debug"]) == 2
    _, err = capsys.readouterr()
    assert "Traceback" in err and SECRET not in err  # the traceback only with --debug


def test_every_scenario_skipped_exits_3_unless_allowed(
    secured: LocalCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "node-sigstop", "kill-primary", "--cluster", secured.url()]
    assert main(argv) == 3
    assert main([*argv, "--allow-skip"]) == 0
    assert SECRET not in "".join(capsys.readouterr())


def _proxies(api: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api}/proxies", timeout=10) as reply:
        return dict(json.loads(reply.read()))


@pytest.mark.timeout(120)
def test_ctrl_c_cleans_up_and_writes_a_partial_report(
    secured: LocalCluster, tmp_path: Path
) -> None:
    port = free_port()
    api = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proxy = subprocess.Popen(
        [sys.executable, "-m", "trio_cluster.faults", "serve", "--host", "127.0.0.1", "--port",
         str(port)],
        stderr=subprocess.DEVNULL, env=env,  # it logs every client, as Go's does
    )  # fmt: skip
    doc_path, junit = tmp_path / "r.json", tmp_path / "r.xml"
    run: subprocess.Popen[str] | None = None
    try:
        with _deadline(30):  # the API answers once the server is up
            while not _answers(f"{api}/version"):
                pass
        run = subprocess.Popen(
            [sys.executable, "-m", "trio_cluster.chaos", "run", "basic-concurrent",
             "basic-pool-load", "node-down", "--cluster", secured.url(), "--toxiproxy", api,
             "--json", str(doc_path), "--junit", str(junit)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        assert run.stdout is not None
        # The first scenario's report is printed when it ends: basic-pool-load has started.
        for line in run.stdout:
            if line.startswith("=== basic-concurrent"):
                break
        # Its keys show up once its load runs (polling the servers: they have no events).
        with _deadline(30):
            while _keys(secured) == 0:
                pass
        assert _proxies(api)  # this run's proxies are there
        run.send_signal(signal.SIGINT)
        rest = run.stdout.read()
        assert run.wait(timeout=60) == 130, rest
    finally:
        for process in (run, proxy):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    assert SECRET not in rest
    assert "Traceback" not in rest
    doc = json.loads(doc_path.read_text())
    assert doc["status"] == "interrupted" and doc["exit_code"] == 130
    assert [s["status"] for s in doc["scenarios"]] == ["passed", "interrupted"]
    assert doc["summary"]["not_run"] == 1
    assert doc["swept_keys"] is not None
    assert ET.parse(junit).getroot().get("tests") == "3"
    assert _keys(secured) == 0  # the interrupted scenario's keys were deleted


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


class _deadline:
    """A wall-clock bound for a synchronous polling loop (fails the test when exceeded)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __enter__(self) -> None:
        signal.signal(signal.SIGALRM, self._expired)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _expired(self, *args: object) -> None:
        raise TimeoutError(f"not within {self.seconds} s")
