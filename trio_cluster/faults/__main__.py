"""``trio-cluster-faults serve|cli|version`` (also ``python -m trio_cluster.faults``).

``serve`` runs the embedded server with the Go server's flags (``-host``, ``-port``,
``-config``, ``-seed``, ``-proxy-metrics``, ``-runtime-metrics``, ``-version``; the
``--double-dash`` spellings work too) plus ``-log-level`` (default: Go's ``LOG_LEVEL``
environment variable, else every level, as Go prints).  ``cli`` is ``toxiproxy-cli``
(see ``trio_cluster.faults.cli``).  Both need the ``chaos`` extra (h11, prometheus_client):
without it a command exits 2 with one line that says what to install, not a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Final

from .extra import INSTALL, command_name, missing_extra
from .version import VERSION

# Not ``__name__``: under ``python -m trio_cluster.faults`` that is ``__main__``, outside the
# ``trio_cluster.faults`` hierarchy whose records ``logs.configure`` prints.
log = logging.getLogger("trio_cluster.faults.__main__")


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"{_prog()} serve",
        description="Run a Toxiproxy 2.12-compatible server: its HTTP API on -host:-port, "
        "TCP proxies with every built-in toxic, Go's JSON log lines on stdout.  Go's "
        "toxiproxy-server flags, in its single-dash spelling or with two dashes.",
    )
    parser.add_argument(
        "-host",
        "--host",
        default="localhost",
        help="host for toxiproxy's API to listen on (default: localhost)",
    )
    parser.add_argument(
        "-port",
        "--port",
        type=int,
        default=8474,
        help="port for toxiproxy's API to listen on (default: 8474)",
    )
    parser.add_argument(
        "-config",
        "--config",
        default=None,
        metavar="FILE",
        help="JSON file containing proxies to create on startup",
    )
    parser.add_argument(
        "-seed",
        "--seed",
        type=int,
        default=None,
        help="seed for randomizing toxics with (default: random)",
    )
    parser.add_argument(
        "-proxy-metrics",
        "--proxy-metrics",
        action="store_true",
        help="enable toxiproxy-specific prometheus metrics on GET /metrics",
    )
    parser.add_argument(
        "-runtime-metrics",
        "--runtime-metrics",
        action="store_true",
        help="enable runtime-related prometheus metrics on GET /metrics",
    )
    parser.add_argument(
        "-log-level",
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "trace"),
        metavar="LEVEL",
        help="trace, debug, info, warn or error (default: $LOG_LEVEL, else trace, as Go)",
    )
    parser.add_argument(
        "-version", "--version", action="store_true", help="print the version and exit"
    )
    return parser


def serve(argv: list[str]) -> int:
    """Run the server until interrupted."""
    import trio

    from . import logs
    from .logs import event
    from .metrics import Metrics
    from .server import ToxiproxyServer

    parser = _serve_parser()
    args = parser.parse_args(argv)
    if args.version:
        print(f"toxiproxy-server version {VERSION}")
        return 0
    try:
        logs.configure(args.log_level)
    except ValueError as exc:
        parser.error(str(exc))
    event(log, logging.INFO, "Starting Toxiproxy", version=VERSION)
    metrics = Metrics(proxy_metrics=args.proxy_metrics, runtime_metrics=args.runtime_metrics)
    server = ToxiproxyServer(
        args.host, args.port, seed=args.seed, config=args.config, metrics=metrics
    )

    async def run() -> None:
        # As Go's server: SIGINT or SIGTERM logs "Shutdown started" and stops it cleanly.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.run)
                async for _ in signals:
                    event(log, logging.INFO, "Shutdown started")
                    nursery.cancel_scope.cancel()
                    break

    try:
        trio.run(run)
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _prog() -> str:
    """``trio-cluster-faults`` (the console script), or ``python -m trio_cluster.faults``."""
    return command_name("trio_cluster.faults", "trio-cluster-faults")


def _parser() -> argparse.ArgumentParser:
    """The top-level help (each command parses its own flags, Go's single-dash ones)."""
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Fault injection for trio-cluster: a Toxiproxy 2.12-compatible server "
        "and a toxiproxy-cli work-alike, interchangeable with Go's Toxiproxy.",
        epilog=f"Run '{_prog()} COMMAND --help' for a command's flags.  The commands need "
        f"the chaos extra: {INSTALL}.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, text in (
        ("serve", "run the server (Go's toxiproxy-server flags)"),
        (
            "cli",
            "toxiproxy-cli: list, inspect, create, toggle and delete proxies; add, update and "
            "remove toxics",
        ),
        ("version", "print the Toxiproxy version the server and CLI imitate"),
    ):
        commands.add_parser(name, help=text, description=text)
    return parser


#: The optional dependencies (the ``chaos`` extra) each command imports.
_NEEDS: Final = {"serve": ("h11", "prometheus_client"), "cli": ("h11",)}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``serve``, ``cli`` or ``version``; a missing dependency exits 2, saying
    which extra to install."""
    args = sys.argv[1:] if argv is None else argv
    parser = _parser()
    if not args or args[0] in ("-h", "--help"):
        parser.print_help(sys.stdout if args else sys.stderr)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in ("serve", "cli", "version"):
        parser.print_usage(sys.stderr)
        print(f"{_prog()}: unknown command {command!r}", file=sys.stderr)
        return 2
    problem = missing_extra(f"{_prog()} {command}", _NEEDS.get(command, ()))
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    if command == "serve":
        return serve(rest)
    if command == "cli":
        from . import cli

        return cli.main(rest)
    if rest:  # version takes no flags: --help shows its help, anything else is refused
        try:
            parser.parse_args(args)
        except SystemExit as exit:
            return exit.code if isinstance(exit.code, int) else 2
    print(VERSION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
