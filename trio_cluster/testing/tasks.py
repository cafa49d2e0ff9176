"""How many trio tasks are alive: the leak check of the tests and the ``go_goroutines`` gauge
of the embedded fault server."""

from __future__ import annotations

import trio

__all__ = ["live_tasks"]


def live_tasks() -> int:
    """Every live task of the running ``trio.run``, its root included (0 outside trio)."""
    try:
        root = trio.lowlevel.current_root_task()
    except RuntimeError:
        return 0
    count, stack = 0, [root] if root is not None else []
    while stack:
        task = stack.pop()
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count
