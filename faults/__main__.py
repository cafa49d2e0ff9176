"""``python -m faults serve|cli|version``.

``serve`` runs the embedded server with the Go server's flags (``-host``, ``-port``,
``-config``, ``-seed``, ``-proxy-metrics``, ``-runtime-metrics``, ``-version``; the
``--double-dash`` spellings work too) plus ``-log-level`` (default: Go's ``LOG_LEVEL``
environment variable, else every level, as Go prints).  ``cli`` is ``toxiproxy-cli``
(see ``faults.cli``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from faults.version import VERSION

log = logging.getLogger("faults.server")


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m faults serve", description="run a Toxiproxy 2.12-compatible server"
    )
    parser.add_argument("-host", "--host", default="localhost", help="API host (Go: -host)")
    parser.add_argument("-port", "--port", type=int, default=8474, help="API port (Go: -port)")
    parser.add_argument(
        "-config", "--config", default=None, help="JSON file of proxies to create on startup"
    )
    parser.add_argument(
        "-seed", "--seed", type=int, default=None, help="seed for randomizing toxics with"
    )
    parser.add_argument(
        "-proxy-metrics",
        "--proxy-metrics",
        action="store_true",
        help="enable toxiproxy-specific prometheus metrics",
    )
    parser.add_argument(
        "-runtime-metrics",
        "--runtime-metrics",
        action="store_true",
        help="enable runtime-related prometheus metrics",
    )
    parser.add_argument(
        "-log-level",
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "trace"),
        help="trace, debug, info, warn or error (default: $LOG_LEVEL, else trace, as Go)",
    )
    parser.add_argument("-version", "--version", action="store_true", help="print the version")
    return parser


def serve(argv: list[str]) -> int:
    """Run the server until interrupted."""
    import trio

    from faults import logs
    from faults.logs import event
    from faults.metrics import Metrics
    from faults.server import ToxiproxyServer

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


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``serve``, ``cli`` or ``version``."""
    args = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m faults {serve,cli,version} [options]"
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve(rest)
    if command == "cli":
        from faults import cli

        return cli.main(rest)
    if command == "version":
        print(VERSION)
        return 0
    print(f"{usage}\nunknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
