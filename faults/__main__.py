"""``python -m faults serve``: the embedded Toxiproxy server, with the Go server's options."""

from __future__ import annotations

import argparse
import sys
from functools import partial

import trio

from faults.api import VERSION
from faults.server import ToxiproxyServer


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the requested command."""
    parser = argparse.ArgumentParser(prog="python -m faults")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a Toxiproxy 2.12-compatible server")
    serve.add_argument("--host", default="localhost", help="API host (Go: -host)")
    serve.add_argument("--port", type=int, default=8474, help="API port (Go: -port)")
    serve.add_argument(
        "--config", default=None, help="JSON file of proxies to populate at start (Go: -config)"
    )
    serve.add_argument(
        "--seed", type=int, default=None, help="seed for toxicity and jitter randomness (Go: -seed)"
    )
    sub.add_parser("version", help="print the imitated Toxiproxy version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(VERSION)
        return 0
    server = ToxiproxyServer(args.host, args.port, seed=args.seed, config=args.config)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            print(f"faults: Toxiproxy-compatible API on {server.url}", file=sys.stderr, flush=True)

    try:
        trio.run(partial(run))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
