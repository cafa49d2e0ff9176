"""``trio-cluster-chaos``, also ``python -m trio_cluster.chaos``: the command line of
:mod:`trio_cluster.chaos.cli`.

It needs the ``chaos`` extra; without it, it exits 2 with one line that says what to
install, before anything optional is imported.
"""

from __future__ import annotations

import sys
from typing import Final

from trio_cluster.faults.extra import command_name, missing_extra

#: What the command imports from the ``chaos`` extra (matplotlib only draws the optional
#: plots: without it, ``--report-dir`` writes no PNG and says so).
NEEDS: Final = ("h11", "prometheus_client", "rich")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    problem = missing_extra(command_name("trio_cluster.chaos", "trio-cluster-chaos"), NEEDS)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    from .cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
