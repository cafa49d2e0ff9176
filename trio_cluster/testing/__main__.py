"""Demo: start a local cluster, write and read a key in every one of the 16384 slots, show
each node, stop the cluster.  Run with ``python -m trio_cluster.testing`` (or ``nox -s demo``).
"""

from __future__ import annotations

import argparse
import time

import trio
from redis.crc import key_slot

from ..connection import Connection
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


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--masters", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args()
    trio.run(run, args.masters, args.replicas)


if __name__ == "__main__":
    main()
