"""The CLI's usage errors exit 2 without starting anything; ``list`` names every scenario."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

import pytest

from trio_cluster import MaintNotificationsOptions
from trio_cluster.chaos.busy import main as busy
from trio_cluster.chaos.cli import count, main, parser
from trio_cluster.chaos.clientspec import CHAOS_RETRY, SLACK, ClientSpec, blocked_bound
from trio_cluster.chaos.env import Environment
from trio_cluster.chaos.runner import run_scenario
from trio_cluster.chaos.scenarios import SCENARIOS, select
from trio_cluster.faults.nodes import NodeProxies


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out
    assert "unavailable" not in out  # every scenario runs now (advanced-pubsub included)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "no-such-scenario"], "no-such-scenario"),
        (["run", "--mode", "nonsense"], "--mode"),
        (["run", "--duration", "0"], "--duration"),
        (["run", "--duration", "nan"], "--duration"),
        (["run", "--duration", "inf"], "--duration"),
        (["run", "--duration", "-3"], "--duration"),
        (["run", "--toxiproxy", "notaurl"], "--toxiproxy"),
        (["run", "--toxiproxy", "http://127.0.0.1:notaport"], "--toxiproxy"),
        (["run", "--cluster", "notaurl"], "--cluster"),
        (["run", "--cluster", "redis://:hunter2@127.0.0.1:notaport"], "--cluster"),
        (["run", "--cluster", "http://127.0.0.1:6379"], "--cluster"),
        (["run", "--seed", "x"], "--seed"),
        (["run", "--metrics-port", "70000"], "--metrics-port"),
        (["run", "--metrics-port", "http"], "--metrics-port"),
        (["frobnicate"], "frobnicate"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing started: no banner, no report
    assert err.count("\n") == 1 and named in err
    assert "Traceback" not in err and "hunter2" not in err


def test_unwritable_outputs_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    for argv in (
        ["run", "--json", str(tmp_path / "missing" / "r.json")],
        ["run", "--json", str(tmp_path)],  # a directory
        ["run", "--junit", str(a_file / "r.xml")],  # under a file
        ["run", "--report-dir", str(a_file / "reports")],
    ):
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and argv[1] in err


def test_default_suite_is_big_enough() -> None:
    runnable = [s for s in select([], "all") if not s.unavailable]
    assert len(runnable) >= 15
    assert {s.group for s in runnable} == {"basic", "advanced", "detect", "faults"}


def test_maintenance_scenarios_are_available() -> None:
    handoff, rotation = SCENARIOS["maintenance-handoff"], SCENARIOS["credential-rotation"]
    assert handoff.unavailable is None and rotation.unavailable is None
    assert handoff.zero_failures and rotation.zero_failures
    assert rotation.needs_local  # it changes the servers' ACLs


def test_pubsub_scenarios_are_available() -> None:
    plain, failure = SCENARIOS["advanced-pubsub"], SCENARIOS["pubsub-node-failure"]
    assert plain.unavailable is None and failure.unavailable is None
    assert plain.pubsub is not None and not plain.faults  # no fault: nothing may be lost
    assert failure.pubsub is not None and failure.faults
    assert not failure.needs_local  # a proxy fault: external clusters too
    assert plain.pubsub.sharded and plain.pubsub.sharded < plain.pubsub.channels
    assert "->" in plain.origin and "->" in failure.origin  # the scaling is recorded


def test_handoff_bounds_follow_the_maintenance_options() -> None:
    plain = ClientSpec()
    assert plain.handoff_timeout is None
    assert plain.unusable_bound == plain.read_timeout + SLACK
    maint = ClientSpec(maint=MaintNotificationsOptions(relaxed_timeout=2.5, handoff_timeout=5.0))
    assert maint.handoff_timeout == 5.0
    assert maint.unusable_bound == 5.0 + SLACK
    assert maint.longest_read_timeout == maint.longest_write_timeout == 2.5
    # A relaxed connection may take the relaxed timeout to read and to write.
    assert blocked_bound(maint) - blocked_bound(plain) == (1 + CHAOS_RETRY.retries) * 2 * 2.0
    off = ClientSpec(maint=MaintNotificationsOptions(mode="disabled"))
    assert off.handoff_timeout is None and off.unusable_bound == plain.unusable_bound
    assert off.kwargs()["maint_notifications"].mode == "disabled"
    assert "maint_notifications" not in plain.kwargs()


async def test_credential_rotation_never_runs_against_an_external_cluster() -> None:
    # It changes the servers' ACLs: like the process faults, it needs the local cluster.
    external = Environment(cast(NodeProxies, None), [], "ext", cluster=None)
    result = await run_scenario(external, SCENARIOS["credential-rotation"], 7, progress=None)
    assert result.skipped is not None and "--cluster local" in result.skipped
    assert result.passed and not result.record.ops


def test_busy_runs_a_command_beside_cpu_hogs_and_stops_at_the_first_failure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert busy(["--procs", "1", "--repeat", "2", "--", sys.executable, "-c", "pass"]) == 0
    assert capsys.readouterr().err.count("beside 1 CPU hogs") == 2
    fail = [sys.executable, "-c", "raise SystemExit(5)"]
    assert busy(["--procs", "1", "--repeat", "3", "--", *fail]) == 5
    assert capsys.readouterr().err.count("exit 5") == 1  # stopped at the first failure


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["list", "--help"]])
def test_help_is_plain_text_and_says_every_exit_status(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "`" not in out  # no reST markup
    if argv[0] != "list":
        for status in ("0 ", "1 ", "2 ", "3 ", "130 "):
            assert f"\n  {status}" in out
    assert main(["--help"]) == 0 and "trio-cluster-chaos list" in capsys.readouterr().out


def test_every_option_and_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    commands = _subcommands()
    assert set(commands) == {"list", "run"}
    for name, command in commands.items():
        assert command.description, name
        for action in command._actions:
            assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    for action in commands["run"]._actions:
        for option in action.option_strings:
            assert option in out
    assert main(["python"]) == 2  # an unknown command is a usage error
    capsys.readouterr()


def test_busy_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        busy(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "`" not in out and "--procs" in out and "--repeat" in out


def test_counts_say_one_scenario() -> None:
    assert count(1, "scenario") == "1 scenario"
    assert count(28, "scenario") == "28 scenarios"
