"""The differential suite's drift log: every row whose behaviour the tables and
``redispy_versions.py`` did not expect for the installed redis-py, printed once at the end of
the run as a short list (the lines to turn into ``Change`` entries or fixes)."""

from __future__ import annotations

import pytest

from .harness import Drift, drift_summary
from .redispy_versions import REDIS_PY

DRIFT = pytest.StashKey[list[Drift]]()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    drift = config.stash.get(DRIFT, [])
    if drift:
        lines = drift_summary(drift)
        terminalreporter.section(f"redis-py {REDIS_PY}: {len(lines)} changed behaviours")
        for line in lines:
            terminalreporter.line(line)
