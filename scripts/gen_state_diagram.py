"""Generate the state diagram and tables in ``docs/state-machine.md`` from the state table.

The block is never edited by hand: it sits between two marker comments and is rewritten from
:data:`trio_cluster.conn.state.MOVES` (every transition, who makes it and when) and
:data:`trio_cluster.conn.state.HOLDER` (who holds a connection in each state), so the doc
cannot drift from the code (a unit test checks it). Usage::

    python scripts/gen_state_diagram.py          # rewrite the block in place
    python scripts/gen_state_diagram.py --check  # exit 1 if the doc is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trio_cluster.conn.state import HOLDER, MOVES, ConnState  # noqa: E402

DOC = ROOT / "docs" / "state-machine.md"
BEGIN = "<!-- BEGIN GENERATED: scripts/gen_state_diagram.py -->"
END = "<!-- END GENERATED -->"


def render() -> str:
    """The generated block (markers included): the diagram, then the states and their
    holders, then every move, in table order."""
    lines = [BEGIN, "```mermaid", "stateDiagram-v2", "    [*] --> CREATED"]
    for move in MOVES:
        lines.append(f"    {move.frm.name} --> {move.to.name} : {move.when}")
    lines += ["    CLOSED --> [*]", "```", "", "| state | held by |", "|---|---|"]
    lines += [f"| `{state.name}` | {HOLDER[state]} |" for state in ConnState]
    lines += ["", "| from | to | made by | when |", "|---|---|---|---|"]
    lines += [f"| `{m.frm.name}` | `{m.to.name}` | {m.by} | {m.when} |" for m in MOVES]
    lines.append(END)
    return "\n".join(lines)


def splice(doc_text: str, block: str) -> str:
    """Replace the generated block inside ``doc_text`` with ``block``."""
    head, sep, rest = doc_text.partition(BEGIN)
    if not sep:
        raise ValueError(f"{DOC} has no {BEGIN!r} marker")
    _, sep, tail = rest.partition(END)
    if not sep:
        raise ValueError(f"{DOC} has no {END!r} marker")
    return head + block + tail


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check`` verify) the generated block of the doc."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the doc is stale")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    wanted = splice(current, render())
    if args.check:
        if current != wanted:
            sys.stderr.write(f"{DOC} is stale: run python scripts/gen_state_diagram.py\n")
            return 1
        return 0
    if current != wanted:
        DOC.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
