"""``trio-cluster-faults`` (``python -m trio_cluster.faults``): its help, and a clear exit when
the ``chaos`` extra is missing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults_helpers import HERE

from trio_cluster.faults import __main__ as entry
from trio_cluster.faults import cli

ROOT = str(Path(HERE).parents[1])
EXTRA_HINT = "pip install 'trio-cluster[chaos]'"


def _run(*args: str, path: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*(path or []), ROOT])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=30, check=False
    )


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                yield from _parsers(sub)


@pytest.mark.parametrize("build", [entry._parser, entry._serve_parser, cli._parser])
def test_every_command_and_flag_has_a_help_text(build: object) -> None:
    assert callable(build)
    for parser in _parsers(build()):
        assert parser.description, parser.prog
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, (parser.prog, choice.dest)
            else:
                assert action.help, (parser.prog, action.option_strings or action.dest)


def test_help_describes_the_commands() -> None:
    result = _run("-m", "trio_cluster.faults", "--help")
    assert result.returncode == 0
    assert "Toxiproxy 2.12-compatible server" in result.stdout
    for command in ("serve", "cli", "version"):
        assert f"    {command} " in result.stdout


def test_version_has_its_own_help_and_takes_no_flags() -> None:
    shown = _run("-m", "trio_cluster.faults", "version", "--help")
    assert shown.returncode == 0, shown.stderr
    assert "print the Toxiproxy version" in shown.stdout and "2.12.0" not in shown.stdout
    assert _run("-m", "trio_cluster.faults", "version").stdout == "2.12.0\n"
    refused = _run("-m", "trio_cluster.faults", "version", "--bogus")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "--bogus" in refused.stderr


def test_no_command_prints_the_help_and_exits_2() -> None:
    result = _run("-m", "trio_cluster.faults")
    assert (result.returncode, result.stdout) == (2, "")
    assert "COMMAND" in result.stderr


def test_serve_without_prometheus_client_says_what_to_install(tmp_path: Path) -> None:
    # A directory first on the path whose prometheus_client fails to import, as a missing
    # package does.
    (tmp_path / "prometheus_client.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'prometheus_client'\", "
        "name='prometheus_client')\n"
    )
    result = _run("-m", "trio_cluster.faults", "serve", "-port", "0", path=[str(tmp_path)])
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line == (
        "python -m trio_cluster.faults serve needs the 'chaos' extra "
        f"(prometheus_client is not installed): {EXTRA_HINT}"
    )


def test_cli_without_h11_says_what_to_install() -> None:
    shim = (
        "import sys; sys.modules['h11'] = None; sys.argv[0] = 'trio-cluster-faults'; "
        "from trio_cluster.faults.__main__ import main; sys.exit(main(['cli', 'list']))"
    )
    result = _run("-c", shim)
    assert (result.returncode, result.stdout) == (2, "")
    (line,) = result.stderr.splitlines()
    assert (
        line
        == f"trio-cluster-faults cli needs the 'chaos' extra (h11 is not installed): {EXTRA_HINT}"
    )
