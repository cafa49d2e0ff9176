"""docs/pubsub.md's examples run as written and print what their comments say.

Each ```python block of the page is a whole program that starts the server or cluster it
needs (``trio_cluster.testing``, with the binary these tests use).  Every ``print(...)`` is
followed by a comment, on its line or the next, with what it prints; the program's output
must be exactly those lines, in order."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "pubsub.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def expected_output(block: str) -> list[str]:
    """What the comments say ``block`` prints: one line per ``print(`` line, from the
    comment after it on that line, else from the comment line that follows it."""
    lines = block.splitlines()
    expected = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("print("):
            continue
        code, _, comment = line.partition("  # ")
        if not comment:
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert following.startswith("# "), f"no output comment after {code.strip()!r}"
            comment = following[2:]
        expected.append(comment)
    return expected


def test_the_page_has_examples_that_print() -> None:
    assert len(BLOCKS) >= 4
    assert all(expected_output(block) for block in BLOCKS)
    assert expected_output("print(1)  # 1\nprint(2)\n# 2\nx = 3  # not a print\n") == ["1", "2"]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=lambda i: f"example-{i + 1}")
def test_example_runs_and_prints_what_the_page_says(index: int) -> None:
    block = BLOCKS[index]
    result = subprocess.run(
        [sys.executable, "-c", block], capture_output=True, text=True, timeout=50
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected_output(block), result.stderr
