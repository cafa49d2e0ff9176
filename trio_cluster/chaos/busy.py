"""``python -m trio_cluster.chaos.busy [--procs 4] [--repeat 3] -- COMMAND...``: run a command
beside CPU hogs, as on a busy shared CI runner (the help text is :data:`DESCRIPTION`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

__all__ = ["main"]

HOG = "while True: pass"
DESCRIPTION = """\
Run a command beside CPU hogs, as on a busy shared CI runner.

--procs processes spin on the CPU (while True: pass) for as long as the command runs; the
command is run --repeat times in a row, stopping at the first failure.  Each run's wall time
and the 1-minute load average are printed.  The exit status is the first failing run's, or
0.  The hogs are killed on every way out (Ctrl-C included).

example:
  python -m trio_cluster.chaos.busy --procs 4 --repeat 3 -- trio-cluster-chaos run
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m trio_cluster.chaos.busy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--procs", type=int, default=4, metavar="N", help="CPU-bound processes (default 4)"
    )
    parser.add_argument(
        "--repeat", type=int, default=1, metavar="N", help="consecutive runs (default 1)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.procs < 0 or args.repeat < 1:
        parser.error("give --procs >= 0, --repeat >= 1 and a command after --")
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.procs)]
    try:
        for run in range(1, args.repeat + 1):
            started = time.monotonic()
            code = subprocess.call(command)
            took = time.monotonic() - started
            load = os.getloadavg()[0]
            print(f"trio_cluster.chaos.busy: run {run}/{args.repeat} beside {args.procs} CPU "
                  f"hogs on {os.cpu_count()} cores: exit {code} in {took:.1f} s (load average "
                  f"{load:.1f})", file=sys.stderr, flush=True)  # fmt: skip
            if code != 0:
                return code
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()


if __name__ == "__main__":
    sys.exit(main())
