"""The command line: ``trio-cluster-chaos list`` and ``trio-cluster-chaos run [SCENARIO...]
[options]`` (also ``python -m trio_cluster.chaos``).  The help texts (:data:`DESCRIPTION`,
:data:`RUN_DESCRIPTION`, :data:`RUN_EPILOG`) are plain text, exit statuses included
(:data:`EXIT_STATUSES`).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import sys
import uuid
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import trio
from rich.console import Console

from trio_cluster.faults.extra import command_name

from .document import SCHEMA_VERSION, document, junit_xml, render_json
from .plot import plot
from .progress import LiveUI, summary_table
from .redact import Redactor
from .report import render_text
from .scenarios import GROUPS, SCENARIOS, select
from .session import RunOutcome, RunPlan, execute
from .target import ClusterTarget, TargetError

__all__ = ["EXIT_ALL_SKIPPED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_SETUP", "EXIT_VIOLATION",
           "main"]  # fmt: skip

EXIT_OK, EXIT_VIOLATION, EXIT_SETUP, EXIT_ALL_SKIPPED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """A bad argument (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with errors as one line (``UsageError``) instead of usage + message."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def _duration(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, not {text}")
    return value


#: What ``trio-cluster-chaos --help`` says first (plain text: argparse prints it as it is).
DESCRIPTION = """\
Chaos drills for a Redis Cluster with trio-cluster: a seeded load that checks every reply,
faults injected through proxies chaos creates in front of every node (and, on a local
cluster, process faults: SIGSTOP, kill, restart, failover, resharding), and invariants
checked after each scenario (no misdelivered reply, no acknowledged write lost, pool and
time bounds derived from the run's own baseline, recovery, blast radius...).

commands (trio-cluster-chaos is also python -m trio_cluster.chaos):
  trio-cluster-chaos list                      every scenario, its group and what it does
  trio-cluster-chaos run [SCENARIO...] [opts]  run scenarios; see trio-cluster-chaos run --help
"""

#: The exit statuses of ``run`` (also in the module docstring and docs/chaos.md).
EXIT_STATUSES = """\
exit status:
  0    every invariant held in every scenario that ran
  1    an invariant failed (or a scenario could not run to its end)
  2    usage or setup error (bad argument, unreachable cluster or proxy...): one line on
       stderr, the traceback only with --debug
  3    every selected scenario was skipped (0 with --allow-skip)
  130  interrupted (Ctrl-C), after cleanup: faults undone, the run's keys deleted, proxies
       removed, and the partial report, JSON and JUnit written
"""

RUN_DESCRIPTION = """\
Run scenarios (default: every scenario of --mode) and report each: the text report on
stdout as each ends, live progress on stderr, a summary table at the end, and the files
asked for.  Bounds are derived from the run's own baseline and the client's timeouts;
each is explained in one line of the report.
"""

RUN_EPILOG = f"""\
{EXIT_STATUSES}
examples:
  trio-cluster-chaos run node-hang kill-primary --seed 7 --report-dir reports/
  trio-cluster-chaos run --mode detect
  trio-cluster-chaos run --metrics-port 9464   (Prometheus metrics while it runs)
  trio-cluster-chaos run --cluster redis://:PASSWORD@staging:7000 --toxiproxy http://toxiproxy:8474

The JSON document (schema_version {SCHEMA_VERSION}), the JUnit XML and the metrics are
described in docs/chaos.md.
"""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    """The command line's parser (its help texts are the module's constants)."""
    raw = argparse.RawDescriptionHelpFormatter
    top = _Parser(prog=command_name("trio_cluster.chaos", "trio-cluster-chaos"),
                  description=DESCRIPTION, epilog=EXIT_STATUSES,
                  formatter_class=raw)  # fmt: skip
    sub = top.add_subparsers(dest="command", required=True, metavar="{list,run}")
    sub.add_parser("list", help="list every scenario, its group and what it does",
                   description="List every scenario: its name, its group (a --mode), what it "
                   "does, and whether it needs --cluster local.")  # fmt: skip
    run = sub.add_parser("run", help="run scenarios (default: every scenario of --mode)",
                         description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
                         formatter_class=raw)  # fmt: skip
    run.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                     help="scenarios to run, in this order (trio-cluster-chaos list names them); "
                          "default: every scenario of --mode")  # fmt: skip
    run.add_argument(
        "--mode",
        choices=("all", *GROUPS),
        default="all",
        help="the group of scenarios to run when none is named (default: all)",
    )
    run.add_argument(
        "--cluster",
        default="local",
        metavar="local|URL",
        help="'local' (default: start a 3+3 cluster on free loopback ports) or the "
        "redis:// or rediss:// URL of a node of an existing cluster (its "
        "password is never shown)",
    )
    run.add_argument(
        "--toxiproxy",
        default="embedded",
        metavar="embedded|URL",
        help="'embedded' (default: a Toxiproxy-compatible server in this process) "
        "or the http:// URL of a Toxiproxy server; only proxies named "
        "chaos-<run id>-* are touched",
    )
    run.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of every random choice (workload, faults); default: random, "
        "printed, so a run can be repeated",
    )
    run.add_argument(
        "--duration",
        type=_duration,
        default=None,
        metavar="SECONDS",
        help="seconds of steady load, and of each fault (default: per scenario; "
        "a fault on one node lasts 5 s)",
    )
    run.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the run as one JSON document here (schema: docs/chaos.md)",
    )
    run.add_argument(
        "--junit",
        type=Path,
        default=None,
        metavar="FILE",
        help="write JUnit XML here (one test case per scenario)",
    )
    run.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a text report and a PNG plot per scenario, and results.json "
        "(the --json document), here",
    )
    run.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve the per-second figures as Prometheus metrics on "
        "http://HOST:PORT/metrics while the run lasts (0: a free port, "
        "printed); names in docs/chaos.md",
    )
    run.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address --metrics-port listens on (default: 127.0.0.1)",
    )
    run.add_argument(
        "--allow-skip",
        action="store_true",
        help="exit 0 (not 3) when every selected scenario was skipped",
    )
    run.add_argument(
        "--debug",
        action="store_true",
        help="show tracebacks of setup and scenario errors, and the client's and "
        "the proxies' own log lines",
    )
    return top  # fmt: skip


def _list() -> int:
    for s in SCENARIOS.values():
        flag = f"  [unavailable: {s.unavailable}]" if s.unavailable else ""
        local = "  [local only]" if s.needs_local else ""
        print(f"{s.name:24} {s.group:9} {s.description}{local}{flag}")
    return EXIT_OK


def _writable_file(path: Path, option: str) -> None:
    if path.exists():
        if path.is_dir():
            raise UsageError(f"{option} {path}: is a directory")
        if not os.access(path, os.W_OK):
            raise UsageError(f"{option} {path}: not writable")
        return
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{option} {path}: directory {parent} is not writable")


def _writable_dir(path: Path, option: str) -> None:
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{option} {path}: {existing} is not a directory")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"{option} {path}: {existing} is not writable")


def _validate(args: argparse.Namespace, redactor: Redactor) -> ClusterTarget:
    """Every argument checked before anything starts (UsageError names the bad one); the
    cluster target, parsed once for the whole run."""
    try:
        target = ClusterTarget.parse(args.cluster, redactor)
    except TargetError as exc:
        raise UsageError(f"--cluster {exc}") from None
    if args.toxiproxy != "embedded":
        redactor.add_url(args.toxiproxy)
        shown = redactor.url(args.toxiproxy)
        try:
            parts = urlsplit(args.toxiproxy)
            port = parts.port
        except ValueError:
            raise UsageError(f"--toxiproxy {shown}: bad port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise UsageError(f"--toxiproxy {shown}: use 'embedded' or an http://host:port URL")
    for option, path in (("--json", args.json), ("--junit", args.junit)):
        if path is not None:
            _writable_file(path, option)
    if args.report_dir is not None:
        _writable_dir(args.report_dir, "--report-dir")
    try:
        chosen = select(args.scenarios, args.mode)
    except KeyError as exc:
        raise UsageError(
            f"unknown scenario(s): {exc.args[0]}; trio-cluster-chaos list names them"
        ) from None
    unavailable = [s.name for s in chosen if s.unavailable and args.scenarios]
    if unavailable:
        raise UsageError(
            "; ".join(f"{n}: unavailable: {SCENARIOS[n].unavailable}" for n in unavailable)
        )
    return target


def _status(outcome: RunOutcome, allow_skip: bool) -> tuple[str, int]:
    if outcome.interrupted:
        return "interrupted", EXIT_INTERRUPTED
    if outcome.setup_error is not None and not outcome.results:
        return "setup-error", EXIT_SETUP
    if any(r.status in ("failed", "error") for r in outcome.results):
        return "failed", EXIT_VIOLATION
    if outcome.setup_error is not None:
        return "setup-error", EXIT_SETUP
    if outcome.results and all(r.status == "skipped" for r in outcome.results):
        return "all-skipped", EXIT_OK if allow_skip else EXIT_ALL_SKIPPED
    return "passed", EXIT_OK


def _write_outputs(
    args: argparse.Namespace, outcome: RunOutcome, status: str, code: int, redactor: Redactor
) -> None:
    doc = document(outcome, status, code)
    text = render_json(doc, redactor)
    if args.json is not None:
        args.json.write_text(text)
    if args.junit is not None:
        args.junit.write_text(junit_xml(outcome, redactor))
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "results.json").write_text(text)
        for r in outcome.results:
            (args.report_dir / f"{r.scenario.name}.txt").write_text(redactor.scrub(render_text(r)))
            if r.status in ("passed", "failed") and not plot(
                r, args.report_dir / f"{r.scenario.name}.png"
            ):
                print("matplotlib is not installed: no plots", file=sys.stderr)
                break


class _Scrub(logging.Filter):
    """Log records leave with every secret of the run masked."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.scrub(record.getMessage())
        record.args = None
        return True


def _logging(redactor: Redactor, debug: bool) -> None:
    """Log lines on stderr, scrubbed.  The client's warnings (a dial failed...) and the
    embedded proxy's (a link cut: "Source terminated", as Go's Toxiproxy logs it) are what the
    faults cause, and the report counts them: shown only with --debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_Scrub(redactor))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])  # no-op if configured
    # The embedded proxy logs at ERROR what a fault does on purpose (a link to a stopped node
    # cannot open): only with --debug.
    logging.getLogger("trio_cluster").setLevel(logging.WARNING if debug else logging.ERROR)
    logging.getLogger("trio_cluster.faults").setLevel(
        logging.WARNING if debug else logging.CRITICAL
    )


def _run(args: argparse.Namespace, target: ClusterTarget, redactor: Redactor) -> int:
    _logging(redactor, args.debug)
    chosen = select(args.scenarios, args.mode)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    metrics = None if args.metrics_port is None else (args.metrics_host, args.metrics_port)
    plan = RunPlan(chosen, target, args.toxiproxy, seed, uuid.uuid4().hex[:8],
                   args.duration, metrics)  # fmt: skip
    toxiproxy = "embedded" if args.toxiproxy == "embedded" else redactor.url(args.toxiproxy)
    print(f"chaos run {plan.run_id}: seed {seed}, {count(len(chosen), 'scenario')}, cluster "
          f"{target.shown}, toxiproxy {toxiproxy}", file=sys.stderr, flush=True)  # fmt: skip
    ui = LiveUI(redactor, [s.planned(args.duration) for s in chosen])
    try:
        outcome = trio.run(execute, plan, redactor, ui)
    finally:
        ui.stop()
    status, code = _status(outcome, args.allow_skip)
    if args.debug:
        for tb in outcome.tracebacks:
            print(tb, file=sys.stderr)
    if outcome.results:
        # A fixed width off a terminal: CI logs get whole rows, not wrapped cells.
        console = Console(file=sys.stdout, highlight=False)
        if not console.is_terminal:
            console = Console(file=sys.stdout, highlight=False, width=140)
        console.print(summary_table(outcome.results))
    try:
        _write_outputs(args, outcome, status, code, redactor)
    except OSError as exc:
        print(redactor.scrub(f"cannot write the results: {exc}"), file=sys.stderr)
        return EXIT_SETUP
    if outcome.setup_error is not None:
        print(outcome.setup_error, file=sys.stderr)
    counts = {s: sum(1 for r in outcome.results if r.status == s)
              for s in ("passed", "failed", "error", "skipped", "interrupted")}  # fmt: skip
    ran = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    swept = "" if outcome.swept_keys is None else f", {outcome.swept_keys} leftover keys deleted"
    print(f"chaos run {plan.run_id}: {status} (exit {code}): {ran or 'nothing ran'} of "
          f"{len(chosen)} selected (seed {seed}){swept}", flush=True)  # fmt: skip
    return code


def count(n: int, noun: str) -> str:
    """``1 scenario``, ``3 scenarios``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    redactor = Redactor()
    try:
        args = parser().parse_args(argv)
        if args.command == "list":
            return _list()
        target = _validate(args, redactor)
    except SystemExit as exc:  # --help
        return EXIT_OK if exc.code in (0, None) else EXIT_SETUP
    except UsageError as exc:
        print(f"usage error: {redactor.scrub(str(exc))}", file=sys.stderr)
        return EXIT_SETUP
    try:
        return _run(args, target, redactor)
    except KeyboardInterrupt:  # Ctrl-C outside the run (the run itself handles its own)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
