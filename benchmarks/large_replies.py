"""Large replies: trio-cluster against redis-py asyncio, through ClusterClient and Client.

Workloads (one key each, read whole, on a local server and a local 3-primary cluster):
``LRANGE`` of 1,000,000 one-byte elements (and of its first 100,000), ``HGETALL`` of 100,000
fields, ``ZRANGE ... WITHSCORES`` of 100,000 members, ``GET`` of a 16 MiB value.  Clients:
``trio-cluster`` (``Client`` / ``ClusterClient``) and ``redis-py`` (``redis.asyncio.Redis`` /
``redis.asyncio.cluster.RedisCluster``, hiredis parser), each with its default protocol.  Every
measurement runs in its own subprocess; rounds interleave the clients (the order rotates).

Also measured, in the same run:

* the event loop's longest stall while one ``LRANGE`` of 1,000,000 elements is read: a ticker
  task asks to wake every millisecond and records how late it woke (both libraries);
* hostile replies to ``GET`` (``HOSTILE_SHAPES``), each sent by a child process on a real
  socket while a 1 ms ticker runs in the client's event loop: issue 27's (a declared 100
  million elements, then endless small ones), the same nested so that no header declares much,
  and a declared 2^40-byte string, at the top level and nested.  For each: the process's peak
  RSS, the longest stall of the ticker (from the hostile ``GET`` to the end of the next
  command on the same client), how it ended and whether the next command got its reply.
  redis-py is shown for the 2^40 shapes, its server stopping after 512 MiB.

    python -m benchmarks.large_replies [--rounds 5] [--repeat 5] [--hostile-repeat 3]
                                       [--hostile-only] [--json FILE]

Prints one JSON document; ratios are redis-py's time over trio-cluster's (above 1: faster),
each time being a worker's best of ``--repeat`` reads, median over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from benchmarks._common import (
    format_nodes,
    measure,
    parse_nodes,
    progress,
    ratio,
    report_main,
    rss_bytes,
    run_worker,
    script_parser,
)

LIBS = ("trio-cluster", "redis-py")
APIS = ("client", "cluster")
WORKLOADS = ("lrange_1m", "lrange_100k", "hgetall_100k", "zrange_withscores_100k", "get_16mib")
# One hash tag: on the cluster every key lives on one node, as on the single server.
KEYS = {
    "lrange_1m": "{lr}:list",
    "lrange_100k": "{lr}:list",  # the first 100,000 of the same list
    "hgetall_100k": "{lr}:hash",
    "zrange_withscores_100k": "{lr}:zset",
    "get_16mib": "{lr}:string",
}
LIST_LEN = 1_000_000
FIELDS = 100_000
BIG = 16 * 1024 * 1024
TICK = 0.001
MIB = 1024 * 1024
#: Hostile replies to ``GET``: (header, the unit repeated after it, bytes of units sent before
#: the server goes quiet, holding the connection open).
HOSTILE_SHAPES = {
    "strings": (b"*100000000\r\n", b"$2\r\nxx\r\n", 60 * MIB),
    "integers": (b"*100000000\r\n", b":1\r\n", 120 * MIB),
    "empty_arrays": (b"*100000000\r\n", b"*0\r\n", 30 * MIB),
    "nested_strings": (b"*100000\r\n", b"*999\r\n" + b"$2\r\nxx\r\n" * 999, 60 * MIB),
    "nested_integers": (b"*100000\r\n", b"*999\r\n" + b":1\r\n" * 999, 120 * MIB),
    "nested_empty_arrays": (b"*100000\r\n", b"*999\r\n" + b"*0\r\n" * 999, 30 * MIB),
    "nested_empty_maps": (b"*100000\r\n", b"*999\r\n" + b"%0\r\n" * 999, 30 * MIB),
    "top": (b"$1099511627776\r\n", b"x" * 65536, 1024 * MIB),
    "nested": (b"*2\r\n:1\r\n$1099511627776\r\n", b"x" * 65536, 1024 * MIB),
}
#: The shapes redis-py reads too (it has no bound: its server stops after 512 MiB).
REDIS_PY_HOSTILE = ("top", "nested")
REDIS_PY_HOSTILE_CAP = 512 * MIB
#: The hostile read's timeout: far longer than a refusal takes, so that without a bound the
#: whole budget of units is read (as in issue 27, where the read timeout ended it).
HOSTILE_READ_TIMEOUT = 30.0


def load(address: tuple[str, int], cluster: bool) -> None:
    """Write the four keys (redis-py, synchronous)."""
    import redis

    r: Any = (
        redis.RedisCluster(host=address[0], port=address[1]) if cluster else redis.Redis(*address)
    )
    r.delete(*KEYS.values())
    for _ in range(0, LIST_LEN, 100_000):
        r.rpush(KEYS["lrange_1m"], *[b"a"] * 100_000)
    for start in range(0, FIELDS, 50_000):
        r.hset(KEYS["hgetall_100k"], mapping={f"f{i}": b"v" for i in range(start, start + 50_000)})
        r.zadd(
            KEYS["zrange_withscores_100k"], {f"m{i}": i / 7 for i in range(start, start + 50_000)}
        )
    r.set(KEYS["get_16mib"], b"s" * BIG)
    r.close()


def _calls(client: Any) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "lrange_1m": lambda: client.lrange(KEYS["lrange_1m"], 0, -1),
        "lrange_100k": lambda: client.lrange(KEYS["lrange_100k"], 0, FIELDS - 1),
        "hgetall_100k": lambda: client.hgetall(KEYS["hgetall_100k"]),
        "zrange_withscores_100k": lambda: client.zrange(
            KEYS["zrange_withscores_100k"], 0, -1, withscores=True
        ),
        "get_16mib": lambda: client.get(KEYS["get_16mib"]),
    }


_SIZES = {
    "lrange_1m": LIST_LEN,
    "lrange_100k": FIELDS,
    "hgetall_100k": FIELDS,
    "zrange_withscores_100k": FIELDS,
    "get_16mib": BIG,
}


def _check(workload: str, reply: Any) -> None:
    if len(reply) != _SIZES[workload]:
        raise AssertionError(f"{workload}: {len(reply)} items, expected {_SIZES[workload]}")


# --- timing workers -----------------------------------------------------------------------------


async def _time_workloads(client: Any, repeat: int) -> dict[str, dict[str, list[float]]]:
    """Seconds each workload took, ``repeat`` times, on ``client`` (either event loop: only
    ``await``), after a PING that opens the connection; every reply checked.  ``wall``: the
    read's wall-clock time; ``cpu``: this thread's CPU time during it (the client's own work:
    neither the server's nor the time the OS ran other processes, which on a shared machine
    moves the wall-clock figure by more than the clients differ)."""
    await client.ping()
    calls = _calls(client)
    times: dict[str, list[float]] = {w: [] for w in WORKLOADS}
    cpu: dict[str, list[float]] = {w: [] for w in WORKLOADS}
    for _ in range(repeat):
        for workload in WORKLOADS:
            started, started_cpu = time.perf_counter(), time.thread_time()
            reply = await calls[workload]()
            times[workload].append(time.perf_counter() - started)
            cpu[workload].append(time.thread_time() - started_cpu)
            _check(workload, reply)
            del reply
    return {"wall": times, "cpu": cpu}


class _Ticker:
    """A task ticking every :data:`TICK` on either event loop (its clock and sleep given):
    the worst lateness of a tick is how long the loop stalled."""

    def __init__(self, now: Callable[[], float], sleep: Callable[[float], Awaitable[Any]]):
        self.now = now
        self.sleep = sleep
        self.stall = 0.0
        self.ticks = 0
        self.done = False

    async def run(self) -> None:
        """Tick until :meth:`during` has finished."""
        while not self.done:
            target = self.now() + TICK
            await self.sleep(TICK)
            self.stall = max(self.stall, self.now() - target)
            self.ticks += 1

    async def during(self, read: Callable[[], Awaitable[Any]]) -> Any:
        """``await read()`` once the ticker runs (three ticks), the stall counted from then
        on; the ticker stops after it."""
        await self.sleep(TICK * 3)
        self.stall = 0.0
        try:
            return await read()
        finally:
            self.done = True

    def result(self) -> dict[str, Any]:
        """The worst stall (ms) and the ticks counted."""
        return {"stall_ms": round(self.stall * 1000, 2), "ticks": self.ticks}


async def trio_worker(api: str, nodes: list[tuple[str, int]], repeat: int) -> dict[str, Any]:
    """trio-cluster: each workload ``repeat`` times, then the stall during one LRANGE."""
    from trio_cluster import Client, ClusterClient

    client: Any = Client(*nodes[0]) if api == "client" else ClusterClient(startup_nodes=nodes)
    async with client:
        timed = await _time_workloads(client, repeat)
        ticker = _Ticker(trio.current_time, trio.sleep)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker.run)
            reply = await ticker.during(_calls(client)["lrange_1m"])
        _check("lrange_1m", reply)
    return {"times": timed["wall"], "cpu_times": timed["cpu"], **ticker.result()}


def redis_py_worker(api: str, nodes: list[tuple[str, int]], repeat: int) -> dict[str, Any]:
    """redis-py asyncio: the same, on asyncio."""
    from redis.asyncio import Redis
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    async def main() -> dict[str, Any]:
        client: Any = (
            Redis(host=nodes[0][0], port=nodes[0][1])
            if api == "client"
            else RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes])
        )
        try:
            timed = await _time_workloads(client, repeat)
            ticker = _Ticker(asyncio.get_running_loop().time, asyncio.sleep)
            task = asyncio.create_task(ticker.run())
            reply = await ticker.during(_calls(client)["lrange_1m"])
            await task
            _check("lrange_1m", reply)
        finally:
            await client.aclose()
        return {"times": timed["wall"], "cpu_times": timed["cpu"], **ticker.result()}

    return asyncio.run(main())


class _StepTimer(trio.abc.Instrument):
    """The longest task step in this thread's CPU time: what the ticker's lateness would be
    on an idle machine (on a shared one, the OS preempting the process adds to the ticker's
    figure but not to this one).  A garbage collection runs inside the step that set it off."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._start = time.thread_time()  # added during a step: that step counts from here

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._start = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        self.longest = max(self.longest, time.thread_time() - self._start)


# --- hostile servers (peak RSS, stalls) -----------------------------------------------------


async def _hostile_trio(shape: str) -> dict[str, Any]:
    """The fake server (``tests/integration/fake_resp.py``) answers the handshake, then ``GET
    flood`` with ``shape`` sent by a child process; the trio-cluster ``Client`` reads it with a
    ticker running, then sends one more command.  Returns peak RSS, the stall, the outcome."""
    from tests.integration.fake_resp import FakeRedis, bulk, pump
    from trio_cluster import Client

    header, unit, total = HOSTILE_SHAPES[shape]

    async def serve(args: list[bytes], stream: trio.SocketStream) -> None:
        if args[1] == b"flood":
            await pump(stream, header, unit, max(1, 65536 // len(unit)), total)
        else:
            await stream.send_all(bulk(b"v:" + args[1]))

    outcome = "completed"
    next_reply: Any = None

    async def scenario() -> None:
        nonlocal outcome, next_reply
        try:
            await client.get("flood")
        except Exception as exc:  # the typed error is the expected outcome
            outcome = f"{type(exc).__name__}: {exc}"
        next_reply = await client.get("next")  # the same client, a fresh connection

    baseline = rss_bytes()
    # What one full garbage collection of this process costs before the reply: a reference
    # for the stalls (any step that sets one off takes at least that long).
    before = time.thread_time()
    gc.collect()
    full_gc = time.thread_time() - before
    async with trio.open_nursery() as nursery:
        server = await FakeRedis(stream=serve).start(nursery)
        async with Client(*server.address, read_timeout=HOSTILE_READ_TIMEOUT) as client:
            await client.ping()
            ticker = _Ticker(trio.current_time, trio.sleep)
            steps = _StepTimer()
            nursery.start_soon(ticker.run)
            trio.lowlevel.add_instrument(steps)
            started = time.perf_counter()
            await ticker.during(scenario)
            elapsed = time.perf_counter() - started
            trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    return {
        **_hostile_record(baseline, ("bytes_of_units_budget_mb", total), elapsed, outcome),
        **ticker.result(),
        "longest_step_cpu_ms": round(steps.longest * 1000, 2),
        "full_gc_cpu_ms_before": round(full_gc * 1000, 2),
        "next_command_ok": next_reply == b"v:next",
    }


def _hostile_record(
    baseline: int, sent: tuple[str, int], elapsed: float, outcome: str
) -> dict[str, Any]:
    """A hostile-server measurement: RSS before and at peak, what the server sent (the
    field's name, bytes), how long it took and how it ended."""
    return {
        "baseline_rss_mb": round(baseline / 2**20, 1),
        "peak_rss_mb": round(_peak_rss() / 2**20, 1),
        sent[0]: round(sent[1] / 2**20, 1),
        "seconds": round(elapsed, 3),
        "outcome": outcome[:160],
    }


def _peak_rss() -> int:
    """This process's peak resident set size (``VmHWM``; ``ru_maxrss`` would also count the
    parent it was forked from)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _hostile_redis_py(header: bytes) -> dict[str, Any]:
    """The same hostile server on asyncio, read by ``redis.asyncio.Redis``; the server stops
    after 512 MiB (redis-py would read on)."""
    from redis.asyncio import Redis

    async def main() -> dict[str, Any]:
        sent = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            await reader.readuntil(b"\r\n")
            writer.write(header)
            chunk = b"x" * 65536
            while sent < REDIS_PY_HOSTILE_CAP:
                writer.write(chunk)
                sent += len(chunk)
                await writer.drain()
            writer.close()

        baseline = rss_bytes()
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = Redis(host="127.0.0.1", port=port, socket_timeout=60)
        started = time.perf_counter()
        outcome = "completed"
        try:
            await client.get("flood")
        except Exception as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        await client.aclose()
        server.close()
        return _hostile_record(baseline, ("bytes_sent_mb", sent), elapsed, outcome)

    return asyncio.run(main())


# --- worker entry and the parent ----------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in this process and return its JSON record."""
    record: dict[str, Any] = {"lib": args.worker, "api": args.api, "hostile": args.hostile}
    return measure(record, lambda: _measure(args))


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.hostile:
        if args.worker == "trio-cluster":
            return trio.run(_hostile_trio, args.hostile)
        return _hostile_redis_py(HOSTILE_SHAPES[args.hostile][0])
    if args.worker == "trio-cluster":
        return trio.run(trio_worker, args.api, parse_nodes(args.nodes), args.repeat)
    return redis_py_worker(args.api, parse_nodes(args.nodes), args.repeat)


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """The timing comparison (unless ``--hostile-only``), then the hostile servers."""
    started = time.monotonic()
    report: dict[str, Any] = {"benchmark": "large_replies"}
    if not args.hostile_only:
        report.update(await _timing(args))
    report["hostile"] = await _hostile(args)
    report["wall_seconds"] = round(time.monotonic() - started, 1)
    return report


async def _hostile(args: argparse.Namespace) -> dict[str, Any]:
    """Every hostile shape ``--hostile-repeat`` times (each in its own process): the records,
    and per shape the worst peak RSS and the median and worst stall."""
    hostile: dict[str, Any] = {}
    for shape in HOSTILE_SHAPES:
        for lib in LIBS if shape in REDIS_PY_HOSTILE else LIBS[:1]:
            records = []
            for _ in range(args.hostile_repeat if lib == "trio-cluster" else 1):
                record = await run_worker(
                    "benchmarks.large_replies", ["--worker", lib, "--hostile", shape], 180
                )
                records.append(record)
                progress(f"hostile {shape:20} {lib:12} {record}")
            good = [r for r in records if "error" not in r]
            hostile[f"{lib}_{shape}"] = {
                "max_peak_rss_mb": max((r["peak_rss_mb"] for r in good), default=None),
                "stalls_ms": [r.get("stall_ms") for r in good],
                "longest_steps_cpu_ms": [r.get("longest_step_cpu_ms") for r in good],
                "full_gc_cpu_ms_before": [r.get("full_gc_cpu_ms_before") for r in good],
                "runs": records,
            }
    return hostile


async def _timing(args: argparse.Namespace) -> dict[str, Any]:
    """Start a server and a cluster, load them, run the interleaved workers, build the report."""
    from trio_cluster.testing import LocalCluster, LocalServer, server_version

    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        api: {lib: [] for lib in LIBS} for api in APIS
    }
    progress("starting a server and a 3-primary cluster ...")
    with LocalServer() as server:
        async with LocalCluster(masters=3, replicas_per_master=0) as cluster:
            version = server_version(cluster.nodes[0].binary)
            await trio.to_thread.run_sync(load, server.address, False)
            await trio.to_thread.run_sync(load, cluster.startup_nodes[0], True)
            nodes = {
                "client": format_nodes([server.address]),
                "cluster": format_nodes(cluster.startup_nodes),
            }
            for round_ in range(args.rounds):
                for api in APIS:
                    order = LIBS if round_ % 2 == 0 else LIBS[::-1]
                    for lib in order:
                        record = await run_worker(
                            "benchmarks.large_replies",
                            ["--worker", lib, "--api", api, "--nodes", nodes[api],
                             "--repeat", str(args.repeat)],
                            300,
                        )  # fmt: skip
                        samples[api][lib].append(record)
                        progress(f"round {round_ + 1} {api:7} {lib:12} {_brief(record)}")
    results = {api: {lib: _summary(samples[api][lib]) for lib in LIBS} for api in APIS}

    def ratios(field: str) -> dict[str, float | None]:
        return {
            f"{api}_{workload}": ratio(
                results[api]["redis-py"][field].get(workload),
                results[api]["trio-cluster"][field].get(workload),
            )
            for api in APIS
            for workload in WORKLOADS
        }

    return {
        "server": version,
        "workloads": {
            "lrange_1m": "LRANGE of 1,000,000 one-byte elements",
            "lrange_100k": "LRANGE of the first 100,000 of them",
            "hgetall_100k": "HGETALL of 100,000 fields",
            "zrange_withscores_100k": "ZRANGE 0 -1 WITHSCORES of 100,000 members",
            "get_16mib": "GET of a 16 MiB value",
        },
        "settings": {"rounds": args.rounds, "repeat": args.repeat},
        "results": results,
        "ratios_redis_py_time_over_trio_cluster_time": ratios("median_s"),
        "ratios_of_best_reads": ratios("best_s"),
        # The same ratio of the clients' own CPU time per read (median of each worker's best).
        "ratios_of_client_cpu": ratios("median_cpu_s"),
        # The longest lateness of a 1 ms ticker in each run (one LRANGE of 1M each): the
        # median over runs, and the worst run (which also counts the OS preempting the
        # process on a busy machine).
        "stall_ms_during_lrange_1m": {
            api: {
                lib: {
                    "median": results[api][lib]["median_stall_ms"],
                    "max": results[api][lib]["max_stall_ms"],
                }
                for lib in LIBS
            }
            for api in APIS
        },
    }


def _brief(record: dict[str, Any]) -> str:
    if "error" in record:
        return str(record["error"])
    times = record["times"]
    return " ".join(f"{w}={min(times[w]):.3f}s" for w in WORKLOADS) + (
        f" stall={record['stall_ms']}ms"
    )


def _summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in records if "error" not in r]
    errors = [r["error"] for r in records if "error" in r]
    # Each worker's best read (the machine's other load only ever adds time), median over
    # the rounds; the median over every read is kept too.
    median_s = {
        w: round(statistics.median(min(r["times"][w]) for r in good), 4) for w in WORKLOADS if good
    }
    every_read = {
        w: round(statistics.median(t for r in good for t in r["times"][w]), 4)
        for w in WORKLOADS
        if good
    }
    best = {w: round(min(t for r in good for t in r["times"][w]), 4) for w in WORKLOADS if good}
    median_cpu = {
        w: round(statistics.median(min(r["cpu_times"][w]) for r in good), 4)
        for w in WORKLOADS
        if good
    }
    return {
        "median_s": median_s,
        "median_cpu_s": median_cpu,
        "median_s_every_read": every_read,
        "best_s": best,
        "max_stall_ms": max((r["stall_ms"] for r in good), default=None),
        "median_stall_ms": statistics.median(r["stall_ms"] for r in good) if good else None,
        "stalls_ms": [r["stall_ms"] for r in good],
        "samples": len(good),
        "errors": errors,
    }


def options() -> argparse.ArgumentParser:
    """Command-line options (the ``--worker`` ones are internal)."""
    parser = script_parser(__doc__, 5, "client x api", LIBS)
    parser.add_argument("--repeat", type=int, default=5, help="reads of each workload per worker")
    parser.add_argument("--api", choices=APIS, help=argparse.SUPPRESS)
    parser.add_argument("--nodes", help=argparse.SUPPRESS)
    parser.add_argument("--hostile", choices=list(HOSTILE_SHAPES), help=argparse.SUPPRESS)
    parser.add_argument("--hostile-repeat", type=int, default=3, help="runs of each hostile shape")
    parser.add_argument("--hostile-only", action="store_true", help="only the hostile servers")
    return parser


if __name__ == "__main__":
    report_main(options(), worker_main, lambda args: trio.run(run_all, args))
