"""Ctrl-C fuzzer: interrupt a ClusterClient app at random moments and collect what goes wrong.

Starts one local cluster, then runs a small app (a ``ClusterClient`` doing a fan-out
``dbsize()`` and a keyed ``get()`` in a loop, under trio's default KeyboardInterrupt delivery,
i.e. at any bytecode that is not KeyboardInterrupt-protected) in a subprocess, over and over,
sending SIGINT after a random delay once the app is ready.  A run is a hit unless it ends in a
plain ``KeyboardInterrupt`` traceback: its stderr is printed in full.  Runs are sequential (one
app at a time) and bounded; on a shared machine run it under ``nice -n 19``::

    nice -n 19 .venv/bin/python scripts/ctrl_c_fuzz.py --runs 1000

Verdicts: ``ok``; ``TrioInternalError``; ``hung`` (still running ``--timeout`` s after the
SIGINT; it then gets a second SIGINT and what that prints is kept); ``other`` (any other
ending, e.g. "Nursery stack corrupted"); ``slow start`` (not ready within ``--timeout``: a
busy machine, not counted as a hit).  Exit status: 0 when no run was a hit, 1 otherwise.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import time

import trio

from trio_cluster.testing import LocalCluster
from trio_cluster.testing.ctrl_c import CLUSTER_APP

#: Verdicts that are not a Ctrl-C problem.
NOT_HITS = ("ok", "slow start")


def classify(stderr: str) -> str:
    """The verdict for an app that ended after SIGINT, from its stderr."""
    if "TrioInternalError" in stderr:
        return "TrioInternalError"
    if not stderr.rstrip().endswith("KeyboardInterrupt"):
        return "other"
    return "ok"


async def _read_all(stream: trio.abc.ReceiveStream, into: bytearray) -> None:
    while chunk := await stream.receive_some():
        into += chunk


async def one_run(host: str, port: int, max_delay: float, wait: float) -> tuple[str, str]:
    """Run the app once, interrupt it after a random delay; return (verdict, stderr)."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CLUSTER_APP, host, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    stdout, stderr = process.stdout, process.stderr
    text = bytearray()
    hung = False
    try:
        ready = b""
        with trio.move_on_after(wait):
            while b"ready" not in ready:
                chunk = await stdout.receive_some()
                if not chunk:
                    break
                ready += chunk
        if b"ready" not in ready:
            return "slow start", ""
        await trio.sleep(random.uniform(0, max_delay))
        process.send_signal(signal.SIGINT)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_all, stderr, text)
            with trio.move_on_after(wait):
                await process.wait()
            if process.returncode is None:
                hung = True
                process.send_signal(signal.SIGINT)  # a second Ctrl-C
                with trio.move_on_after(wait):
                    await process.wait()
            if process.returncode is None:
                process.kill()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    decoded = text.decode(errors="replace")
    return ("hung" if hung else classify(decoded)), decoded


async def main(args: argparse.Namespace) -> int:
    """Start the cluster, run the app ``args.runs`` times, report hits; return exit status."""
    counts: dict[str, int] = {}
    internal_errors = 0
    started = time.monotonic()
    async with LocalCluster(masters=3, replicas_per_master=1) as cluster:
        host, port = cluster.startup_nodes[0]
        for run in range(1, args.runs + 1):
            verdict, text = await one_run(host, port, args.max_delay, args.timeout)
            counts[verdict] = counts.get(verdict, 0) + 1
            if verdict not in NOT_HITS:
                print(f"--- run {run}: {verdict} ---\n{text}--- end of run {run} ---", flush=True)
            if verdict == "TrioInternalError":
                internal_errors += 1
                if internal_errors >= args.max_hits:
                    break
            if run % 50 == 0:
                elapsed = time.monotonic() - started
                print(f"{run} runs in {elapsed:.0f} s: {counts}", flush=True)
    print(f"done: {sum(counts.values())} runs: {counts}", flush=True)
    return 1 if any(v not in NOT_HITS for v in counts) else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="runs at most (default 1000)")
    parser.add_argument(
        "--max-hits", type=int, default=3, help="stop after this many TrioInternalErrors"
    )
    parser.add_argument(
        "--max-delay", type=float, default=0.05, help="SIGINT within this many s of ready"
    )
    parser.add_argument("--timeout", type=float, default=15.0, help="see 'hung', 'slow start'")
    return parser.parse_args(argv)


if __name__ == "__main__":
    # Started in the background by a shell, SIGINT is ignored and the apps would inherit that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(trio.run(main, parse_args()))
