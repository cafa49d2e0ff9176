"""``trio-cluster-chaos`` (``python -m trio_cluster.chaos``) without the ``chaos`` extra: exit 2
with one line naming it, no traceback; with the extra, the command runs.

A plain ``pip install trio-cluster`` installs the command but not the extra; each test hides one
module of the extra from a fresh interpreter, as a missing package would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[2])
EXTRA_HINT = "pip install 'trio-cluster[chaos]'"


def _run(*args: str, path: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*(path or []), ROOT])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def _console_script(hidden: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    """The console script's ``main`` in a fresh interpreter where ``hidden`` does not import."""
    return _run(
        "-c",
        f"import sys; sys.modules[{hidden!r}] = None; sys.argv[0] = 'trio-cluster-chaos'; "
        f"from trio_cluster.chaos.__main__ import main; sys.exit(main({argv!r}))",
    )


@pytest.mark.parametrize("missing", ["rich", "prometheus_client", "h11"])
def test_the_console_script_without_the_extra_says_what_to_install(missing: str) -> None:
    result = _console_script(missing, ["list"])
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"trio-cluster-chaos needs the 'chaos' extra ({missing} is not installed): {EXTRA_HINT}\n"
    )


def test_python_m_without_rich_says_what_to_install(tmp_path: Path) -> None:
    # A directory first on the path whose rich fails to import, as a missing package does.
    (tmp_path / "rich.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'rich'\", name='rich')\n"
    )
    result = _run("-m", "trio_cluster.chaos", "list", path=[str(tmp_path)])
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"python -m trio_cluster.chaos needs the 'chaos' extra (rich is not installed): "
        f"{EXTRA_HINT}\n"
    )


def test_python_m_with_the_extra_lists_the_scenarios() -> None:
    result = _run("-m", "trio_cluster.chaos", "list")
    assert result.returncode == 0, result.stderr
    assert "kill-primary" in result.stdout and "node-hang" in result.stdout


def test_matplotlib_is_not_required() -> None:
    """It only draws the optional plots (``--report-dir`` says when it cannot): a missing
    matplotlib must not refuse the command."""
    result = _console_script("matplotlib", ["list"])
    assert result.returncode == 0, result.stderr
    assert "kill-primary" in result.stdout
