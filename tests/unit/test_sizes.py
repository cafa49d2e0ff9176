"""Small modules with one job each: no module over 600 lines and no class over 400, in the
library, the fault server and the chaos tool (issue 26's limits, kept by this test)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400


def _too_big() -> list[str]:
    found = []
    for path in sorted((ROOT / "trio_cluster").rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            found.append(f"{where}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                size = node.end_lineno - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    found.append(f"{where}: class {node.name}, {size} lines")
    return found


def test_no_module_over_600_lines_and_no_class_over_400() -> None:
    assert _too_big() == []


def test_the_check_sees_the_packages() -> None:
    """It would pass vacuously if it looked in the wrong place."""
    assert (ROOT / "trio_cluster" / "clients" / "cluster.py").exists()
    assert (ROOT / "trio_cluster" / "faults" / "proxy.py").exists()
    assert (ROOT / "trio_cluster" / "chaos" / "runner.py").exists()
