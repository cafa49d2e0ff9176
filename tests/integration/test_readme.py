"""The README's quick start runs exactly as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_quick_start_runs_as_written() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python quick start"
    for block in blocks:
        result = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "b'hello'" in result.stdout
        assert "[True, b'1', 1]" in result.stdout
        assert "[b'hello', b'1', None]" in result.stdout
        assert "IDLE" in result.stdout
