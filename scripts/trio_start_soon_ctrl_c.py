"""Trio alone (no trio-cluster): a Ctrl-C that lands inside ``nursery.start_soon`` corrupts trio.

``Nursery.start_soon`` (``Runner.spawn_impl``, ``Runner.reschedule``) is not KeyboardInterrupt-
protected, so under ``trio.run``'s default delivery (KeyboardInterrupt at any bytecode outside
trio's protected internals) a SIGINT can interrupt it half-way:

- after ``runner.tasks.add(task)`` and before ``nursery._children.add(task)``: a task that
  the runner counts and nobody runs.  ``trio.run`` ends in ``TrioInternalError`` (trio's
  ``finalize_remaining`` asserts that only its own two tasks are left);
- after ``nursery._children.add(task)`` and before the task is queued to run: the nursery
  waits for a child that never runs, and the program hangs.

This script runs a loop of short-lived nurseries that each start a few tasks (the shape of a
fan-out), in a fresh interpreter per run, sends it SIGINT after a random delay, and counts how
each run ended.  Two ways out, each also a mode here:

- ``--protected``: call ``start_soon`` from a function marked with
  ``trio.lowlevel.enable_ki_protection`` (a KeyboardInterrupt then waits for the next
  checkpoint while inside it);
- ``--checkpoints``: ``trio.run(..., restrict_keyboard_interrupt_to_checkpoints=True)``.

Run it under ``nice`` on a shared machine::

    nice -n 19 python scripts/trio_start_soon_ctrl_c.py --runs 300
    nice -n 19 python scripts/trio_start_soon_ctrl_c.py --runs 300 --protected

Exit status: 1 if any run ended in TrioInternalError or hung, else 0.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys

APP = """
import os, signal, sys, threading, trio

async def child():
    pass

def spawn(nursery, fn):
    nursery.start_soon(fn)

if sys.argv[2] == "protected":
    spawn = trio.lowlevel.enable_ki_protection(spawn)

async def main():
    threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGINT)).start()
    while True:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                spawn(nursery, child)

trio.run(main, restrict_keyboard_interrupt_to_checkpoints=sys.argv[2] == "checkpoints")
"""


def one_run(mode: str, timeout: float) -> tuple[str, str]:
    """Run the app once in a fresh interpreter; return (how it ended, its stderr)."""
    delay = random.uniform(0.05, 0.25)
    process = subprocess.Popen(
        [sys.executable, "-c", APP, str(delay), mode], stderr=subprocess.PIPE, text=True
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        return "hung", stderr
    if "TrioInternalError" in stderr:
        return "TrioInternalError", stderr
    if "KeyboardInterrupt" in stderr:  # plain, or in the nursery's BaseExceptionGroup
        return "KeyboardInterrupt", stderr
    return "other", stderr


def main() -> int:
    """Run the app ``--runs`` times; print the count of each ending and the first bad one."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--timeout", type=float, default=10.0, help="a run longer is 'hung'")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--protected", action="store_true", help="start_soon KI-protected")
    group.add_argument("--checkpoints", action="store_true", help="KI at checkpoints only")
    args = parser.parse_args()
    mode = "protected" if args.protected else "checkpoints" if args.checkpoints else "default"
    counts: dict[str, int] = {}
    for _ in range(args.runs):
        ending, stderr = one_run(mode, args.timeout)
        counts[ending] = counts.get(ending, 0) + 1
        if ending != "KeyboardInterrupt" and counts[ending] == 1:
            print(f"--- first run that ended in {ending} ---\n{stderr}---", flush=True)
    print(f"mode {mode}, {args.runs} runs: {counts}")
    return 1 if counts.get("TrioInternalError") or counts.get("hung") else 0


if __name__ == "__main__":
    # Started in the background by a shell, SIGINT is ignored and the apps would inherit that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
