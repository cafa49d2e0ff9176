"""``python -m trio_cluster.testing [demo]``: start a local cluster, write and read a key in
every one of the 16384 slots, show each node, stop the cluster (``nox -s demo``).

``python -m trio_cluster.testing serve``: start a local cluster, print its URL, keep it up until
interrupted (Ctrl-C), then stop every process.  With ``--password`` every node requires it
(replicas authenticate to their primaries); the URL is printed with the password as ``***``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import trio

from ..conn.connection import Connection
from ..routing.rules import key_slot
from . import LocalCluster, find_server_binary, parse_info, server_version

SLOTS = 16384


def keys_for_every_slot() -> dict[int, str]:
    """One key per slot, found by trying hash tags until every slot has one."""
    keys: dict[int, str] = {}
    tag = 0
    while len(keys) < SLOTS:
        slot = key_slot(str(tag).encode())
        keys.setdefault(slot, f"demo:{{{tag}}}")
        tag += 1
    return keys


async def run(masters: int, replicas: int) -> None:
    """Form the cluster, write/read every slot through each slot's owner, print the picture."""
    binary = find_server_binary()
    print(f"server: {server_version(binary)}")
    started = time.monotonic()
    async with LocalCluster(masters=masters, replicas_per_master=replicas) as cluster:
        print(f"cluster of {len(cluster.nodes)} nodes ready in {time.monotonic() - started:.2f} s")
        keys = keys_for_every_slot()
        owners = {}
        for slot_range in await cluster.slot_map():
            for slot in range(slot_range.start, slot_range.end + 1):
                owners[slot] = slot_range.primary
        written = verified = 0
        began = time.monotonic()
        for node in cluster.primaries:
            mine = [keys[s] for s in sorted(keys) if owners[s] == node.address]
            conn = await Connection.open(node.config())
            try:
                await conn.execute_many([["SET", k, f"value-of-{k}"] for k in mine])
                written += len(mine)
                values = await conn.execute_many([["GET", k] for k in mine])
                verified += sum(
                    v == f"value-of-{k}".encode() for k, v in zip(mine, values, strict=True)
                )
            finally:
                await conn.aclose()
        elapsed = time.monotonic() - began
        print(f"wrote {written} keys, read back {verified} correct, in {elapsed:.2f} s")
        print(f"{'node':<18}{'role':<9}{'slots':>7}{'keys':>7}  replica of")
        slot_map = await cluster.slot_map()
        for node in cluster.nodes:
            replication = parse_info(await node.execute("INFO", "replication"))
            keyspace = parse_info(await node.execute("INFO", "keyspace"))
            count = keyspace.get("db0", "keys=0").split(",")[0].split("=")[1]
            slots = sum(r.end - r.start + 1 for r in slot_map if r.primary == node.address)
            role = "primary" if replication["role"] == "master" else "replica"
            upstream = ""
            if role == "replica":
                upstream = f"{replication['master_host']}:{replication['master_port']}"
            print(f"{node.host}:{node.port:<8}{role:<9}{slots:>7}{count:>7}  {upstream}")
        if verified != SLOTS:
            raise SystemExit(f"only {verified} of {SLOTS} keys read back correctly")
    print("cluster stopped; every process ended")


async def serve(masters: int, replicas: int, password: str | None) -> None:
    """Form the cluster, print its URL (and each node) on stdout, and wait until cancelled."""
    started = time.monotonic()
    async with LocalCluster(
        masters=masters, replicas_per_master=replicas, password=password
    ) as cluster:
        print(f"cluster of {len(cluster.nodes)} nodes ready in {time.monotonic() - started:.2f} s")
        for node in cluster.nodes:
            role = "primary" if node in cluster.primaries else "replica"
            print(f"  {node.host}:{node.port} {role}")
        print(f"URL: {cluster.url(redacted=True)}")
        if password is not None:
            print("(*** stands for the password you gave)")
        print("serving until interrupted (Ctrl-C)", flush=True)
        await trio.sleep_forever()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m trio_cluster.testing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=("demo", "serve"), default="demo",
                        help="demo (default): write and read every slot, then stop; "
                             "serve: keep the cluster up until Ctrl-C")  # fmt: skip
    parser.add_argument("--masters", type=int, default=3, help="primaries (default 3)")
    parser.add_argument("--replicas", type=int, default=1, help="replicas per primary (default 1)")
    parser.add_argument(
        "--password",
        default=os.environ.get("TRIO_CLUSTER_PASSWORD"),
        help="serve: every node requires this password (default: $TRIO_CLUSTER_PASSWORD; "
        "none if unset)",
    )
    args = parser.parse_args(argv)
    if args.masters < 1 or args.replicas < 0:
        parser.error("--masters must be >= 1 and --replicas >= 0")
    if args.command == "demo":
        trio.run(run, args.masters, args.replicas)
        return 0
    try:
        trio.run(serve, args.masters, args.replicas, args.password)
    except KeyboardInterrupt:
        # The normal way to stop serving: the cluster's processes are already ended.
        print("interrupted: cluster stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
