"""Every Python example of the documentation runs as written and prints what the page says.

The pages: ``README.md``, ``docs/*.md``, every folder's ``README.md`` and every subpackage's
(``trio_cluster/faults/README.md``).  Each fenced block
names its language; each ```` ```python ```` block is a whole program that starts the server or
cluster it needs (``trio_cluster.testing``, with the binary these tests use) and is run here,
unless the line before it (blank lines aside) is ``<!-- not run: REASON -->``: a fragment,
shown for its shape, with the reason it cannot run on its own.  So no example is left out
silently: a new block runs, or says why not.

What a run must print: every ``print(...)`` line is followed by a comment, on its line or the
next, with the line it prints; ``...`` in it stands for text that varies (a port, an id).
The program's output must be exactly those lines, in order, and it must exit 0.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    {
        *ROOT.glob("*.md"),
        *ROOT.glob("docs/*.md"),
        *(p for p in ROOT.glob("*/README.md") if not p.parent.name.startswith(".")),
        *ROOT.glob("trio_cluster/*/README.md"),
    }
)

FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    flags=re.M | re.S,
)
NOT_RUN = re.compile(r"<!-- not run: (?P<reason>.*?) -->")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, for a fragment

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str, text: str) -> list[Block]:
    """The fenced blocks of ``text``, the page ``page``, in order."""
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        marker = NOT_RUN.fullmatch(before)
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                lang=match["lang"].strip(),
                code=textwrap.dedent(match["body"]),
                not_run=marker["reason"].strip() if marker else None,
            )
        )
    return found


ALL = [block for p in PAGES for block in blocks(str(p.relative_to(ROOT)), p.read_text())]
RUNNABLE = [b for b in ALL if b.lang == "python" and b.not_run is None]


def expected_output(code: str) -> list[str]:
    """What the comments say ``code`` prints: one line per ``print(`` line, from the comment
    after it on that line, else from the comment line that follows it."""
    lines = code.splitlines()
    expected = []
    for i, line in enumerate(lines):
        if not line.lstrip().startswith("print("):
            continue
        code_part, _, comment = line.partition("  # ")
        if not comment:
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert following.startswith("# "), f"no output comment after {code_part.strip()!r}"
            comment = following[2:]
        expected.append(comment)
    return expected


def matches(expected: str, printed: str) -> bool:
    """Whether ``printed`` is the ``expected`` line, ``...`` standing for any text."""
    pattern = ".+?".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, printed) is not None


def test_the_pages_are_found_and_have_examples() -> None:
    names = {str(p.relative_to(ROOT)) for p in PAGES}
    assert {"README.md", "docs/pubsub.md", "docs/architecture.md"} <= names
    assert "trio_cluster/faults/README.md" in names
    assert len(RUNNABLE) >= 6, [b.name for b in RUNNABLE]


def test_every_block_names_its_language() -> None:
    unnamed = [b.name for b in ALL if not b.lang]
    assert not unnamed, f"fenced blocks without a language: {unnamed}"


def test_every_marker_is_on_a_python_block_and_says_why() -> None:
    marked = {(b.page, b.line) for b in ALL if b.not_run is not None}
    for page in PAGES:
        text = page.read_text()
        for match in NOT_RUN.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            rel = str(page.relative_to(ROOT))
            after = [b for b in ALL if b.page == rel and b.line > line]
            assert after and (after[0].page, after[0].line) in marked, (
                f"{rel}:{line}: a not-run marker that is not right before a block"
            )
            assert after[0].lang == "python", f"{rel}:{line}: only python blocks are run"
            assert match["reason"].strip(), f"{rel}:{line}: a not-run marker gives no reason"


def test_the_output_rules() -> None:
    assert expected_output("print(1)  # 1\nprint(2)\n# 2\nx = 3  # not a print\n") == ["1", "2"]
    with pytest.raises(AssertionError, match="no output comment"):
        expected_output("print(1)\nx = 2\n")
    assert matches("127.0.0.1:... IDLE", "127.0.0.1:7000 IDLE")
    assert not matches("127.0.0.1:... IDLE", "127.0.0.1:7000 IN_USE")
    assert not matches("[1]", "[1] ")
    text = "x\n<!-- not run: a fragment -->\n\n```python\nf()\n```\n  ```python\n  g()\n  ```\n"
    found = blocks("page.md", text)
    assert [(b.not_run, b.code) for b in found] == [("a fragment", "f()\n"), (None, "g()\n")]


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_example_runs_and_prints_what_the_page_says(block: Block) -> None:
    expected = expected_output(block.code)
    result = subprocess.run(
        [sys.executable, "-c", block.code],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    printed = result.stdout.splitlines()
    assert len(printed) == len(expected), (printed, expected, result.stderr)
    for want, got in zip(expected, printed, strict=True):
        assert matches(want, got), (want, got)
