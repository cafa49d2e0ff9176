"""A sick node must cost only its own slots: throughput of the healthy part of a cluster while
one primary is hung, dead or blackholed, for trio-cluster and its peers.

Cluster: 3 primaries, no replicas, ``cluster-node-timeout`` 60 s (no failover, and the cluster
never declares the sick node failed, so its healthy nodes keep serving).  Load: 50
closed-loop tasks, 50/50 GET/SET of 64-byte values over 10,000 keys on all slots, 1 s read,
write and connect timeouts.  Each run: 1 s warm-up, 3 s baseline, 8 s of fault on one
primary, 4 s after it returns.  Faults:

* ``sigstop``: the primary is SIGSTOPped, then SIGCONTed (it returns with its connections);
* ``sigkill``: the primary is SIGKILLed (connections refused), then restarted (it returns
  once the cluster is ready again);
* ``blackhole``: a Toxiproxy ``timeout`` toxic (the embedded ``trio_cluster.faults`` server)
  drops every byte to and from the primary, then is removed (which closes the held
  connections).  For this fault every node announces its proxy's port, so every client goes
  through the proxies, baseline included.

Figures per fault and client (targets of issue 23 in brackets):

* ``healthy_ratio``: successful ops/s on the healthy slots over the last 6 s of the fault, over
  the baseline's successful ops/s on all slots [>= 0.6] (``healthy_ratio_full``: over the
  whole 8 s; ``healthy_over_healthy_baseline``: over the healthy slots' own baseline);
* ``recovered_in``: seconds from the node's return until throughput (all slots, 0.5 s
  windows) is back to 0.8x the baseline [<= 1 s]; ``after_ratio``: ops/s 1-3 s after the
  return over the baseline;
* ``p99_ratio``: the healthy slots' p99 latency over the last 6 s of the fault over their
  baseline p99 [<= 2];
* ``wrong``: replies that were not the command's (must be 0); errors by class.

Clients: ``trio-cluster`` and ``trio-cluster-ap`` (automatic pipelining), ``redis-py``
(``redis.asyncio.cluster.RedisCluster`` under asyncio, ``socket_timeout=1``), ``glide``
(valkey-glide's ``GlideClusterClient`` on trio, ``request_timeout=1000``).  Each run is a
fresh subprocess; the parent holds the cluster (and the proxies) and injects the fault on the
worker's schedule (both read the system's monotonic clock).

    python -m benchmarks.partial_failure [--faults ...] [--clients ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from redis.crc import key_slot

from benchmarks._common import (
    KEY_COUNT,
    KEYS,
    REPO_ROOT,
    VALUE,
    emit,
    format_nodes,
    parse_nodes,
    percentile,
    preload_cluster,
    progress,
)

CLIENTS = ("trio-cluster", "trio-cluster-ap", "redis-py", "glide")
FAULTS = ("sigstop", "sigkill", "blackhole")
TASKS = 50
TIMEOUT = 1.0
WARMUP, BASELINE, FAULT, TAIL = 1.0, 3.0, 8.0, 4.0
#: The window the headline figure reads: the last 6 s of the fault (as issue 23's probe).
LAST = 6.0
BUCKET = 0.1

GetFn = Callable[[bytes], Awaitable[Any]]
SetFn = Callable[[bytes, bytes], Awaitable[Any]]


# --- the load (in the worker) ---------------------------------------------------------------


class Recorder:
    """Per-100 ms counts of successful ops on healthy and on sick slots, errors, and the
    healthy slots' latencies in the baseline and the fault's last ``LAST`` seconds."""

    def __init__(self, sick: set[int]) -> None:
        self.healthy_key = [key_slot(key) not in sick for key in KEYS]
        buckets = int((BASELINE + FAULT + TAIL) / BUCKET) + 1
        self.ok_healthy = [0] * buckets
        self.ok_sick = [0] * buckets
        self.failed = [0] * buckets
        self.errors: dict[str, int] = {}
        self.wrong = 0
        self.base_latency: list[float] = []
        self.fault_latency: list[float] = []
        self.t0 = 0.0
        self.stop = False

    def start(self) -> float:
        """The measured timeline starts now (after the warm-up)."""
        self.t0 = time.monotonic()
        return self.t0

    def record(self, index: int, started: float, error: BaseException | None) -> None:
        ended = time.monotonic()
        at = ended - self.t0
        if not self.t0 or at < 0:
            return
        bucket = int(at / BUCKET)
        if bucket >= len(self.failed):
            return
        if error is not None:
            self.failed[bucket] += 1
            name = type(error).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
            return
        if self.healthy_key[index]:
            self.ok_healthy[bucket] += 1
            if at < BASELINE:
                self.base_latency.append(ended - started)
            elif BASELINE + FAULT - LAST <= at < BASELINE + FAULT:
                self.fault_latency.append(ended - started)
        else:
            self.ok_sick[bucket] += 1

    def check(self, reply: Any, was_get: bool) -> None:
        """Count a reply that cannot be this command's (a misdelivered one)."""
        if was_get:
            if reply is not None and reply not in (VALUE, VALUE.decode()):
                self.wrong += 1
        elif reply not in (True, b"OK", "OK"):
            self.wrong += 1

    def result(self) -> dict[str, Any]:
        def p99(samples: list[float]) -> float | None:
            value = percentile(sorted(samples), 99)
            return None if value is None else round(value * 1000, 3)

        return {
            "ok_healthy": self.ok_healthy,
            "ok_sick": self.ok_sick,
            "failed": self.failed,
            "errors": self.errors,
            "wrong": self.wrong,
            "base_p99_ms": p99(self.base_latency),
            "fault_p99_ms": p99(self.fault_latency),
        }


async def _task(recorder: Recorder, seed: int, get: GetFn, set_: SetFn) -> None:
    """One closed-loop task: a random key, GET or SET, again."""
    import random

    rng = random.Random(seed)
    while not recorder.stop:
        index = rng.randrange(KEY_COUNT)
        key = KEYS[index]
        was_get = rng.random() < 0.5
        started = time.monotonic()
        try:
            reply = await (get(key) if was_get else set_(key, VALUE))
        except Exception as error:
            # No yield of our own: a client's failing call must be a checkpoint itself.
            recorder.record(index, started, error)
            continue
        recorder.record(index, started, None)
        recorder.check(reply, was_get)


async def drive_trio(recorder: Recorder, get: GetFn, set_: SetFn) -> None:
    async with trio.open_nursery() as nursery:
        for seed in range(TASKS):
            nursery.start_soon(_task, recorder, seed, get, set_)
        await trio.sleep(WARMUP)
        emit({"t0": recorder.start()})
        await trio.sleep(BASELINE + FAULT + TAIL)
        recorder.stop = True
        nursery.cancel_scope.deadline = trio.current_time() + 2 * TIMEOUT + 1


async def drive_asyncio(recorder: Recorder, get: GetFn, set_: SetFn) -> None:
    tasks = [asyncio.ensure_future(_task(recorder, seed, get, set_)) for seed in range(TASKS)]
    await asyncio.sleep(WARMUP)
    emit({"t0": recorder.start()})
    await asyncio.sleep(BASELINE + FAULT + TAIL)
    recorder.stop = True
    await asyncio.wait(tasks, timeout=2 * TIMEOUT + 10)
    for task in tasks:
        task.cancel()


async def trio_cluster_worker(nodes: list[tuple[str, int]], recorder: Recorder, ap: bool) -> None:
    from trio_cluster import ClusterClient, PoolOptions

    async with ClusterClient(
        startup_nodes=nodes,
        pool=PoolOptions(size=TASKS, autopipeline=ap),
        read_timeout=TIMEOUT,
        write_timeout=TIMEOUT,
        connect_timeout=TIMEOUT,
    ) as rc:
        await drive_trio(recorder, rc.get, rc.set)


def redis_py_worker(nodes: list[tuple[str, int]], recorder: Recorder) -> None:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    async def main() -> None:
        rc = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            max_connections=TASKS,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
        )
        await rc.initialize()
        try:
            await drive_asyncio(recorder, rc.get, rc.set)
        finally:
            await rc.aclose()

    asyncio.run(main())


async def glide_worker(nodes: list[tuple[str, int]], recorder: Recorder) -> None:
    from glide import GlideClusterClient, GlideClusterClientConfiguration, NodeAddress

    config = GlideClusterClientConfiguration(
        [NodeAddress(host, port) for host, port in nodes], request_timeout=int(TIMEOUT * 1000)
    )
    client = await GlideClusterClient.create(config)
    try:
        await drive_trio(recorder, client.get, client.set)
    finally:
        await client.close()


def worker_main(args: argparse.Namespace) -> None:
    nodes = parse_nodes(args.nodes)
    sick = _slots(args.sick)
    recorder = Recorder(sick)
    try:
        if args.worker == "redis-py":
            redis_py_worker(nodes, recorder)
        elif args.worker == "glide":
            trio.run(glide_worker, nodes, recorder)
        else:
            trio.run(trio_cluster_worker, nodes, recorder, args.worker == "trio-cluster-ap")
        emit(recorder.result())
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})
        raise


def _slots(text: str) -> set[int]:
    slots: set[int] = set()
    for span in text.split(","):
        start, _, end = span.partition("-")
        slots.update(range(int(start), int(end) + 1))
    return slots


# --- the parent: cluster, faults, figures ---------------------------------------------------


@dataclass
class Setup:
    """A cluster ready for one fault: the primary to fault, its slots (``a-b,...``), the
    addresses clients start from, the proxies (``blackhole``) or None."""

    cluster: Any
    victim: Any
    sick: str
    nodes: list[tuple[str, int]]
    proxies: Any


@asynccontextmanager
async def fault_cluster(fault: str) -> AsyncIterator[Setup]:
    """A fresh cluster for ``fault``.  For ``blackhole`` every node announces its proxy."""
    from trio_cluster.testing import LocalCluster

    async with LocalCluster(masters=3, replicas_per_master=0, cluster_node_timeout_ms=60000) as c:
        ranges = [(r.start, r.end, r.primary) for r in await c.slot_map()]
        await preload_cluster(ranges)
        victim = c.shards[0].primary
        sick = ",".join(f"{a}-{b}" for a, b, where in ranges if where == victim.address)
        if fault != "blackhole":
            yield Setup(c, victim, sick, list(c.startup_nodes), None)
            return
        from trio_cluster.faults.embedded import EmbeddedToxiproxy
        from trio_cluster.faults.nodes import NodeProxies

        async with EmbeddedToxiproxy() as tp, NodeProxies.create(tp, c.startup_nodes) as proxies:
            for node in c.nodes:
                port = proxies[node.address].listen[1]
                await node.execute("CONFIG", "SET", "cluster-announce-port", port)
            listen = {n.listen[1] for n in proxies.nodes}
            with trio.fail_after(30):  # every node describes every node at its proxy
                while True:
                    seen = {
                        int(r[2][1]) for n in c.nodes for r in await n.execute("CLUSTER", "SLOTS")
                    }
                    if seen <= listen:
                        break
                    await trio.sleep(0.05)
            yield Setup(c, victim, sick, [n.listen for n in proxies.nodes], proxies)


async def inject(fault: str, setup: Setup, until: float) -> float:
    """Run ``fault`` on ``victim`` until the monotonic time ``until``; return when the node
    is back (for ``sigkill``: restarted and the cluster ready)."""
    victim = setup.victim
    if fault == "sigstop":
        victim.pause()
        await _sleep_until(until)
        victim.resume()
        return time.monotonic()
    if fault == "sigkill":
        victim.kill()
        await _sleep_until(until)
        await setup.cluster.restart(victim)
        return time.monotonic()
    from trio_cluster.faults.nodes import hang

    async with hang(setup.proxies[victim.address]):
        await _sleep_until(until)
    return time.monotonic()


async def _sleep_until(deadline: float) -> None:
    await trio.sleep(max(0.0, deadline - time.monotonic()))


async def run_one(fault: str, client: str, setup: Setup) -> dict[str, Any]:
    """One worker under one fault; the worker's figures with the fault's times."""
    command = [sys.executable, "-m", "benchmarks.partial_failure", "--worker", client,
               "--nodes", format_nodes(setup.nodes), "--sick", setup.sick]  # fmt: skip
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=sys.stderr.fileno(), cwd=REPO_ROOT, env=env
    )
    lines = _Lines(process.stdout)
    try:
        with trio.fail_after(WARMUP + BASELINE + FAULT + TAIL + 90):
            ready = await lines.next(client)
            if "error" in ready:
                return ready
            t0 = ready["t0"]
            await _sleep_until(t0 + BASELINE)
            returned = await inject(fault, setup, t0 + BASELINE + FAULT)
            result = await lines.next(client)
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                with trio.move_on_after(10):
                    await process.wait()
                process.kill()
            await process.wait()
    if "error" in result:
        return result
    return figures(result, t0, returned)


class _Lines:
    """JSON lines from a worker's stdout."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self, client: str) -> dict[str, Any]:
        while True:
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise RuntimeError(f"the {client} worker ended early")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.startswith(b"{"):  # a client library may print lines of its own
                record: dict[str, Any] = json.loads(line)
                return record


def figures(result: dict[str, Any], t0: float, returned: float) -> dict[str, Any]:
    """The headline figures from a worker's buckets (see the module's docstring)."""
    healthy, sick = result["ok_healthy"], result["ok_sick"]
    total = [h + s for h, s in zip(healthy, sick, strict=True)]

    def per_s(series: list[int], start: float, end: float) -> float:
        first, last = round(start / BUCKET), round(end / BUCKET)
        return sum(series[first:last]) / (end - start)

    baseline = per_s(total, 0, BASELINE)
    healthy_base = per_s(healthy, 0, BASELINE)
    fault_end = BASELINE + FAULT
    during = per_s(healthy, fault_end - LAST, fault_end)
    back = returned - t0
    recovered_in = None
    window = int(0.5 / BUCKET)
    for first in range(int(back / BUCKET), len(total) - window):
        if sum(total[first : first + window]) / 0.5 >= 0.8 * baseline:
            recovered_in = round(max(0.0, first * BUCKET - back), 2)
            break
    after_end = min(back + 3.0, BASELINE + FAULT + TAIL)
    base_p99, fault_p99 = result["base_p99_ms"], result["fault_p99_ms"]
    return {
        "baseline_ops_per_s": round(baseline),
        "healthy_ops_per_s": round(during),
        "healthy_ratio": _ratio(during, baseline),
        "healthy_ratio_full": _ratio(per_s(healthy, BASELINE, fault_end), baseline),
        "healthy_over_healthy_baseline": _ratio(during, healthy_base),
        "returned_after_fault_s": round(back - fault_end, 2),
        "recovered_in": recovered_in,
        "after_ratio": _ratio(per_s(total, min(back + 1, after_end - 1), after_end), baseline),
        "base_p99_ms": base_p99,
        "fault_p99_ms": fault_p99,
        "p99_ratio": _ratio(fault_p99, base_p99),
        "wrong": result["wrong"],
        "errors": result["errors"],
        "ops_per_s_by_second": [
            round(sum(total[i : i + 10])) for i in range(0, len(total) - 1, 10)
        ],
    }


def _ratio(top: float | None, bottom: float | None) -> float | None:
    if top is None or not bottom:
        return None
    return round(top / bottom, 3)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for fault in args.faults:
        progress(f"{fault}: starting a cluster ...")
        async with fault_cluster(fault) as setup:
            for client in args.clients:
                runs = []
                for round_ in range(args.rounds):
                    record = await run_one(fault, client, setup)
                    runs.append(record)
                    shown = record.get("error") or (
                        f"healthy {record['healthy_ratio']} recovered_in {record['recovered_in']}"
                        f" p99 {record['p99_ratio']} errors {record['errors']}"
                    )
                    progress(f"{fault:9} {client:16} round {round_ + 1}: {shown}")
                results.setdefault(fault, {})[client] = _median(runs)
    return {
        "benchmark": "partial_failure",
        "setup": (
            f"3 primaries, no replicas, cluster-node-timeout 60 s; {TASKS} closed-loop tasks, "
            f"50/50 GET/SET over {KEY_COUNT} keys; {TIMEOUT:g} s timeouts; {BASELINE:g} s "
            f"baseline, {FAULT:g} s fault on one primary, {TAIL:g} s after"
        ),
        "targets": {"healthy_ratio": ">= 0.6", "recovered_in": "<= 1 s", "p99_ratio": "<= 2"},
        "results": results,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One run as it is; several: the median of each figure, the runs kept."""
    good = [r for r in runs if "error" not in r]
    if len(runs) == 1 or not good:
        return runs[0]
    out: dict[str, Any] = {"runs": runs}
    for field in (
        "healthy_ratio",
        "healthy_ratio_full",
        "recovered_in",
        "after_ratio",
        "p99_ratio",
    ):
        values = [r[field] for r in good if r.get(field) is not None]
        out[field] = round(statistics.median(values), 3) if values else None
    return out


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--rounds", type=int, default=1, help="runs of each fault x client")
    parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", help=argparse.SUPPRESS)
    parser.add_argument("--sick", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = options().parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    text = json.dumps(trio.run(run_all, args), indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


if __name__ == "__main__":
    main()
