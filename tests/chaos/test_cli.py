"""The CLI's usage errors exit 2 without starting anything; ``list`` names every scenario."""

from __future__ import annotations

import pytest

from chaos.cli import main
from chaos.scenarios import SCENARIOS, select


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in SCENARIOS:
        assert name in out
    assert "unavailable" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "no-such-scenario"],
        ["run", "advanced-pubsub"],
        ["run", "--mode", "nonsense"],
        ["run", "--duration", "0"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert main(argv) == 2


def test_default_suite_is_big_enough() -> None:
    runnable = [s for s in select([], "all") if not s.unavailable]
    assert len(runnable) >= 15
    assert {s.group for s in runnable} == {"basic", "advanced", "detect", "faults"}
