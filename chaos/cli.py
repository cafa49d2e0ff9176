"""``python -m chaos list`` and ``python -m chaos run [SCENARIO...] [options]``.

Exit status: 0 when every invariant held, 1 when one failed, 2 for usage or setup errors.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import trio

from .env import SetupError, open_environment
from .report import plot, render_text, to_json
from .runner import ScenarioResult, run_scenario
from .scenarios import GROUPS, SCENARIOS, select

__all__ = ["main"]

EXIT_OK, EXIT_VIOLATION, EXIT_SETUP = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the scenarios")
    run = sub.add_parser("run", help="run scenarios (default: those of --mode)")
    run.add_argument("scenarios", nargs="*", metavar="SCENARIO")
    run.add_argument("--mode", choices=("all", *GROUPS), default="all")
    run.add_argument("--cluster", default="local", help="'local' or a redis:// URL")
    run.add_argument("--toxiproxy", default="embedded", help="'embedded' or an http:// URL")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of steady load / of each fault (default: per scenario)",
    )
    run.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    run.add_argument("--report-dir", type=Path, default=None,
                     help="write text reports and latency plots (PNG) here")  # fmt: skip
    return parser


def _list() -> int:
    for s in SCENARIOS.values():
        flag = f"  [unavailable: {s.unavailable}]" if s.unavailable else ""
        local = "  [local only]" if s.needs_local else ""
        print(f"{s.name:24} {s.group:9} {s.description}{local}{flag}")
    return EXIT_OK


async def _run_all(args: argparse.Namespace, seed: int) -> list[ScenarioResult]:
    chosen = select(args.scenarios, args.mode)
    run_id = uuid.uuid4().hex[:8]
    results: list[ScenarioResult] = []
    print(f"chaos run {run_id}: seed {seed}, {len(chosen)} scenarios, cluster {args.cluster}, "
          f"toxiproxy {args.toxiproxy}", file=sys.stderr)  # fmt: skip
    async with open_environment(args.cluster, args.toxiproxy, run_id) as env:
        for scenario in chosen:
            started = time.monotonic()
            print(f"--- {scenario.name}", file=sys.stderr, flush=True)
            result = await run_scenario(
                env, scenario, seed, hold=args.duration, duration=args.duration
            )
            results.append(result)
            print(render_text(result), end="", flush=True)
            if not result.skipped:
                print(f"  ({time.monotonic() - started:.1f}s)", flush=True)
    return results


def _write_outputs(args: argparse.Namespace, results: list[ScenarioResult], seed: int) -> None:
    payload: dict[str, Any] = {
        "seed": seed,
        "passed": all(r.passed for r in results),
        "scenarios": [to_json(r) for r in results],
    }
    if args.json is not None:
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "results.json").write_text(json.dumps(payload, indent=2, default=str))
        for r in results:
            (args.report_dir / f"{r.scenario.name}.txt").write_text(render_text(r))
            if not r.skipped and not plot(r, args.report_dir / f"{r.scenario.name}.png"):
                print("matplotlib is not installed: no plots", file=sys.stderr)
                break


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_OK if exc.code == 0 else EXIT_SETUP
    if args.command == "list":
        return _list()
    if args.duration is not None and args.duration <= 0:
        print("--duration must be > 0", file=sys.stderr)
        return EXIT_SETUP
    try:
        select(args.scenarios, args.mode)
    except KeyError as exc:
        print(f"unknown scenario(s): {exc.args[0]}; see `python -m chaos list`", file=sys.stderr)
        return EXIT_SETUP
    unavailable = [n for n in args.scenarios if SCENARIOS[n].unavailable]
    if unavailable:
        for name in unavailable:
            print(f"{name}: unavailable: {SCENARIOS[name].unavailable}", file=sys.stderr)
        return EXIT_SETUP
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    try:
        results = trio.run(_run_all, args, seed)
    except SetupError as exc:
        print(f"setup error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    _write_outputs(args, results, seed)
    ran = [r for r in results if not r.skipped]
    failed = [r for r in ran if not r.passed]
    print(f"\n{len(ran)} scenarios run, {len(results) - len(ran)} skipped, "
          f"{len(failed)} failed (seed {seed})")  # fmt: skip
    for r in failed:
        print(f"  FAILED {r.scenario.name}: {len(r.violations)} violation(s)")
    return EXIT_VIOLATION if failed else EXIT_OK
