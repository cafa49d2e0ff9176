"""What the two command lines, ``trio-cluster-faults`` and ``trio-cluster-chaos``, do before
they import anything optional: name themselves as they were run, and check that the ``chaos``
extra is installed.

A plain ``pip install trio-cluster`` installs both commands but not the extra they need (h11,
prometheus_client, rich); run without it, a command exits 2 with one line saying what to
install, not an ``ImportError`` traceback.  It lives in faults because chaos may import faults,
never the reverse.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from typing import Final

__all__ = ["INSTALL", "command_name", "missing_extra"]

#: How to install what the commands need.
INSTALL: Final = "pip install 'trio-cluster[chaos]'"


def command_name(module: str, script: str) -> str:
    """``python -m <module>`` when run that way, else the console ``script``'s name."""
    return f"python -m {module}" if sys.argv[0].endswith("__main__.py") else script


def missing_extra(command: str, modules: Iterable[str]) -> str | None:
    """The one line ``command`` prints when one of ``modules`` (all in the ``chaos`` extra)
    does not import, or None when they all do."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            return f"{command} needs the 'chaos' extra ({name} is not installed): {INSTALL}"
    return None
