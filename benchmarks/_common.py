"""Shared pieces of the benchmark scripts: the workload, the load drivers (trio and asyncio),
a raw trio + hiredis client (the ceiling), worker subprocesses and the statistics.

Workload (the one the performance targets were set with): 50/50 GET and SET of 64-byte
values over 10,000 keys.  Shapes:

* ``tasks1``, ``tasks10``, ``tasks50``, ``tasks200``, ``tasks1000``: that many tasks, each
  running one command at a time;
* ``pipeline10``, ``pipeline`` (100), ``pipeline1000``: 4 tasks, each sending pipelines of that
  many SETs across the cluster (throughput counted in commands).

Every measurement runs in its own subprocess (so asyncio and trio clients never share an event
loop, and one client's garbage never weighs on another's figures); the parent interleaves them.
A worker prints one JSON line: ``{"client", "shape", "ops_per_s", "p50_ms", "p99_ms", ...}`` or
``{"client", "shape", "error"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import statistics
import sys
import time
import traceback
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import trio
from redis.crc import key_slot

from benchmarks import BASELINE_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
KEY_COUNT = 10_000
VALUE_SIZE = 64
PIPELINE_DEPTH = 100
SLOTS = 16384
#: The shape name of the idle-connection memory worker.
MEMORY_SHAPE = "idle-memory"

KEYS: list[bytes] = [f"bench:{i}".encode() for i in range(KEY_COUNT)]
VALUE: bytes = b"v" * VALUE_SIZE

Address = tuple[str, int]
GetFn = Callable[[bytes], Awaitable[Any]]
SetFn = Callable[[bytes, bytes], Awaitable[Any]]
PipeFn = Callable[[Sequence[bytes]], Awaitable[Any]]


@dataclass(frozen=True)
class Shape:
    """How many tasks run the workload, and whether they pipeline."""

    name: str
    tasks: int
    pipeline: int = 0  # commands per pipeline; 0 = one command per round trip


SHAPES: dict[str, Shape] = {
    "tasks1": Shape("tasks1", 1),
    "tasks10": Shape("tasks10", 10),
    "tasks50": Shape("tasks50", 50),
    "tasks200": Shape("tasks200", 200),
    "tasks1000": Shape("tasks1000", 1000),
    "pipeline10": Shape("pipeline10", 4, 10),
    "pipeline": Shape("pipeline", 4, PIPELINE_DEPTH),
    "pipeline1000": Shape("pipeline1000", 4, 1000),
}


# --- addresses and slot maps (passed to workers on the command line) ---------------------------


def format_nodes(nodes: Sequence[Address]) -> str:
    """``[(host, port), ...]`` as ``host:port,host:port``."""
    return ",".join(f"{host}:{port}" for host, port in nodes)


def parse_nodes(text: str) -> list[Address]:
    """The inverse of :func:`format_nodes`."""
    nodes = []
    for item in text.split(","):
        host, _, port = item.rpartition(":")
        nodes.append((host, int(port)))
    return nodes


def format_slots(ranges: Sequence[tuple[int, int, Address]]) -> str:
    """``[(start, end, (host, port)), ...]`` as ``start-end@host:port,...``."""
    return ",".join(f"{start}-{end}@{host}:{port}" for start, end, (host, port) in ranges)


def parse_slots(text: str) -> list[tuple[int, int, Address]]:
    """The inverse of :func:`format_slots`."""
    ranges = []
    for item in text.split(","):
        span, _, where = item.partition("@")
        start, _, end = span.partition("-")
        host, _, port = where.rpartition(":")
        ranges.append((int(start), int(end), (host, int(port))))
    return ranges


def slot_table(ranges: Sequence[tuple[int, int, Address]]) -> tuple[list[Address], list[int]]:
    """The primaries, and for every slot the index of the primary serving it."""
    primaries = sorted({where for _, _, where in ranges})
    table = [0] * SLOTS
    for start, end, where in ranges:
        index = primaries.index(where)
        for slot in range(start, end + 1):
            table[slot] = index
    return primaries, table


def keys_by_primary(ranges: Sequence[tuple[int, int, Address]]) -> list[list[bytes]]:
    """The workload's keys grouped by the primary that serves them (order of ``slot_table``)."""
    primaries, table = slot_table(ranges)
    groups: list[list[bytes]] = [[] for _ in primaries]
    for key in KEYS:
        groups[table[key_slot(key)]].append(key)
    return groups


# --- load drivers ------------------------------------------------------------------------------


class _Run:
    """The bookkeeping of one measurement: a warm-up, then a measured window."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.measuring = False
        self.stop = False
        self.latencies: list[float] = []
        self.commands = 0
        self.window = 0.0
        self.started = 0.0
        self.cpu_started = self.cpu = 0.0

    async def one_by_one(self, seed: int, get: GetFn, set_: SetFn) -> None:
        """One task of the ``tasks*`` shapes: random key, GET or SET with equal odds."""
        rng = random.Random(seed)
        choose, coin = rng.randrange, rng.random
        clock, record = time.perf_counter, self.latencies.append
        while not self.stop:
            key = KEYS[choose(KEY_COUNT)]
            started = clock()
            if coin() < 0.5:
                await get(key)
            else:
                await set_(key, VALUE)
            if self.measuring:
                record(clock() - started)

    async def pipelined(self, seed: int, pipe: PipeFn) -> None:
        """One task of the ``pipeline`` shape: pipelines of ``shape.pipeline`` SETs."""
        rng = random.Random(seed)
        depth = self.shape.pipeline
        while not self.stop:
            batch = [KEYS[rng.randrange(KEY_COUNT)] for _ in range(depth)]
            started = time.perf_counter()
            await pipe(batch)
            if self.measuring:
                self.latencies.append(time.perf_counter() - started)
                self.commands += depth

    def begin(self) -> None:
        """Start the measured window (after the warm-up; garbage collected first)."""
        gc.collect()
        self.measuring = True
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def end(self) -> None:
        """End the measured window and tell the tasks to stop."""
        self.measuring, self.stop = False, True
        self.window = time.perf_counter() - self.started
        self.cpu = time.process_time() - self.cpu_started

    def result(self) -> dict[str, Any]:
        """Throughput and latency percentiles of the measured window."""
        count = len(self.latencies)
        ops = self.commands if self.shape.pipeline else count
        ordered = sorted(self.latencies)
        return {
            "shape": self.shape.name,
            "tasks": self.shape.tasks,
            "ops": ops,
            "seconds": round(self.window, 3),
            "ops_per_s": round(ops / self.window, 1) if self.window else 0.0,
            # The client process's CPU (all its threads) per operation: steadier than ops/s
            # on a busy machine, and what a client's own overhead adds to.
            "cpu_us_per_op": round(self.cpu / ops * 1e6, 2) if ops else None,
            "p50_ms": _ms(percentile(ordered, 50)),
            "p99_ms": _ms(percentile(ordered, 99)),
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of sorted samples, or None when there are none."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


async def drive_trio(
    shape: Shape,
    seconds: float,
    warmup: float,
    *,
    get: GetFn | None = None,
    set_: SetFn | None = None,
    pipe: PipeFn | None = None,
    per_task: Callable[[], AbstractAsyncContextManager[tuple[GetFn, SetFn, PipeFn]]] | None = None,
) -> dict[str, Any]:
    """Run ``shape`` on trio for ``warmup`` + ``seconds`` and return the measured figures.

    Either pass shared ``get``/``set_``/``pipe`` callables (a client with a pool), or
    ``per_task``: a factory of async context managers that give each task its own callables
    (the raw client: one connection per task and node) and clean up after it.
    """
    run = _Run(shape)

    async def task(index: int) -> None:
        if per_task is not None:
            async with per_task() as (g, s, p):
                await _task_body(run, index, g, s, p)
        else:
            assert get is not None and set_ is not None and pipe is not None
            await _task_body(run, index, get, set_, pipe)

    async with trio.open_nursery() as nursery:
        for index in range(shape.tasks):
            nursery.start_soon(task, index)
        await trio.sleep(warmup)
        run.begin()
        await trio.sleep(seconds)
        run.end()
        nursery.cancel_scope.deadline = trio.current_time() + 10  # bound the wind-down
    return run.result()


async def drive_asyncio(
    shape: Shape, seconds: float, warmup: float, *, get: GetFn, set_: SetFn, pipe: PipeFn
) -> dict[str, Any]:
    """:func:`drive_trio` for asyncio clients (shared callables only)."""
    run = _Run(shape)
    tasks = [
        asyncio.ensure_future(_task_body(run, index, get, set_, pipe))
        for index in range(shape.tasks)
    ]
    await asyncio.sleep(warmup)
    run.begin()
    await asyncio.sleep(seconds)
    run.end()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    return run.result()


async def _task_body(run: _Run, index: int, get: GetFn, set_: SetFn, pipe: PipeFn) -> None:
    if run.shape.pipeline:
        await run.pipelined(index, pipe)
    else:
        await run.one_by_one(index, get, set_)


# --- the raw client: trio streams + hiredis, no pool, no timeouts -----------------------------


def pack(*args: bytes) -> bytes:
    """One command in RESP (hiredis' C encoder)."""
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # stub: 1-tuple
    return packed


class RawConnection:
    """One trio TCP stream and a hiredis reader; nothing else."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = hiredis.Reader()

    @classmethod
    async def open(cls, address: Address) -> RawConnection:
        """Connect to ``address``."""
        return cls(await trio.open_tcp_stream(*address))

    async def call(self, *args: bytes) -> Any:
        """Send one command and return its reply."""
        await self.stream.send_all(pack(*args))
        return await self.read()

    async def read(self) -> Any:
        """The next reply on the wire."""
        reader = self.reader
        reply = reader.gets()
        while reply is False:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            reader.feed(data)
            reply = reader.gets()
        return reply

    async def aclose(self) -> None:
        """Close the stream."""
        await self.stream.aclose()


class RawCluster:
    """One task's view of a cluster: one :class:`RawConnection` per primary, routed with
    ``redis.crc.key_slot`` and the slot map."""

    def __init__(self, primaries: list[Address], table: list[int]) -> None:
        self.primaries = primaries
        self.table = table
        self.conns: list[RawConnection] = []

    async def __aenter__(self) -> RawCluster:
        self.conns = [await RawConnection.open(address) for address in self.primaries]
        return self

    async def __aexit__(self, *exc: object) -> None:
        with trio.CancelScope(shield=True):
            for conn in self.conns:
                await conn.aclose()

    async def get(self, key: bytes) -> Any:
        """GET ``key`` from the primary that serves it."""
        return await self.conns[self.table[key_slot(key)]].call(b"GET", key)

    async def set(self, key: bytes, value: bytes) -> Any:
        """SET ``key`` on the primary that serves it."""
        return await self.conns[self.table[key_slot(key)]].call(b"SET", key, value)

    async def pipeline_set(self, keys: Sequence[bytes]) -> list[Any]:
        """SET every key to :data:`VALUE`: one batch per node, all written before any is read."""
        batches: dict[int, list[bytes]] = {}
        for key in keys:
            batches.setdefault(self.table[key_slot(key)], []).append(key)
        for index, batch in batches.items():
            payload = b"".join(pack(b"SET", k, VALUE) for k in batch)
            await self.conns[index].stream.send_all(payload)
        replies: list[Any] = []
        for index, batch in batches.items():
            conn = self.conns[index]
            replies.extend([await conn.read() for _ in batch])
        return replies


@asynccontextmanager
async def raw_task_client(
    primaries: list[Address], table: list[int]
) -> AsyncIterator[tuple[GetFn, SetFn, PipeFn]]:
    """One task's raw callables (``get``, ``set``, ``pipeline_set``), for :func:`drive_trio`."""
    async with RawCluster(primaries, table) as raw:
        yield raw.get, raw.set, raw.pipeline_set


async def preload_cluster(ranges: Sequence[tuple[int, int, Address]]) -> None:
    """SET every workload key once, so GETs find values from the first round on."""
    primaries, table = slot_table(ranges)
    async with RawCluster(primaries, table) as raw:
        for start in range(0, KEY_COUNT, 1000):
            await raw.pipeline_set(KEYS[start : start + 1000])


# --- worker subprocesses and the parent's bookkeeping -----------------------------------------


def emit(record: dict[str, Any]) -> None:
    """Print one JSON line (a worker's answer) and flush."""
    print(json.dumps(record), flush=True)


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only JSON)."""
    print(message, file=sys.stderr, flush=True)


#: The client name of ``trio-cluster`` measured from another checkout (``--baseline``).
BASELINE = "trio-cluster-baseline"


async def run_worker(
    module: str, args: Sequence[str], budget: float, library: Path | None = None
) -> dict[str, Any]:
    """Run ``python -m module args...`` and return the JSON of its last stdout line;
    ``library``: a checkout whose ``trio_cluster`` the worker imports instead of this one
    (``benchmarks.BASELINE_ENV``).

    The process is killed if it outlives ``budget`` seconds; failures come back as
    ``{"error": ...}``.
    """
    command = [sys.executable, "-m", module, *args]
    env = dict(
        os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    if library is not None:
        env[BASELINE_ENV] = str(library)
    with trio.move_on_after(budget) as scope:
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False, cwd=REPO_ROOT, env=env
        )
    if scope.cancelled_caught:
        return {"error": f"worker timed out after {budget:.0f} s"}
    lines = [line for line in done.stdout.decode().splitlines() if line.startswith("{")]
    if lines:
        record: dict[str, Any] = json.loads(lines[-1])
        return record
    tail = done.stderr.decode().strip().splitlines()[-3:]
    return {"error": f"exit {done.returncode}: " + " | ".join(tail)}


def script_parser(
    doc: str | None, rounds: int, what: str, workers: Sequence[str]
) -> argparse.ArgumentParser:
    """The options every benchmark script has: ``--rounds`` (default ``rounds``, of every
    ``what``), ``--json``, and the internal ``--worker`` (one of ``workers``)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--rounds", type=int, default=rounds, help=f"rounds of every {what}")
    parser.add_argument("--json", metavar="FILE", help="also write the report to FILE")
    parser.add_argument("--worker", choices=workers, help=argparse.SUPPRESS)
    return parser


def comparison_parser(
    doc: str | None,
    clients: Sequence[str],
    default_clients: Sequence[str],
    shapes: Sequence[str],
    seconds: float,
) -> argparse.ArgumentParser:
    """:func:`script_parser` plus the options of a client x shape comparison (the timing, the
    clients and shapes to run, ``--no-memory``; the worker's ``--shape``)."""
    parser = script_parser(doc, 3, "client x shape", clients)
    parser.add_argument("--seconds", type=float, default=seconds, help="measured seconds each")
    parser.add_argument("--warmup", type=float, default=0.5, help="unmeasured seconds first")
    parser.add_argument("--clients", nargs="+", choices=clients, default=list(default_clients))
    parser.add_argument("--shapes", nargs="+", choices=shapes, default=list(shapes))
    parser.add_argument("--no-memory", action="store_true", help="skip the memory figure")
    parser.add_argument("--shape", help=argparse.SUPPRESS)
    return parser


def measure_worker(
    args: argparse.Namespace,
    workers: Mapping[str, Callable[[Shape], Any]],
    memory: Callable[[], Any],
) -> dict[str, Any]:
    """The record of the ``--worker`` measurement ``args`` ask for: ``workers[client](shape)``,
    or ``memory()`` for the memory shape (see :func:`measure`)."""

    def run() -> Any:
        if args.shape == MEMORY_SHAPE:
            return memory()
        if args.worker not in workers:
            raise ValueError(f"unknown client {args.worker!r}")
        return workers[args.worker](SHAPES[args.shape])

    return measure({"client": args.worker, "shape": args.shape}, run)


async def pipelined_sets(client: Any, keys: Sequence[bytes]) -> Any:
    """SET every key of ``keys`` to :data:`VALUE` in one pipeline of ``client`` (redis-py's
    pipeline API, on either event loop)."""
    async with client.pipeline() as p:
        for key in keys:
            p.set(key, VALUE)
        return await p.execute()


def measure(record: dict[str, Any], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A worker's JSON record: ``record`` updated with what ``run()`` measured, or with an
    ``error`` (traceback on stderr), so the parent goes on with the other measurements."""
    try:
        record.update(run())
        library = sys.modules.get("trio_cluster")
        if library is not None and library.__file__:  # which checkout was measured
            record["library"] = str(Path(library.__file__).parent.parent)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        record["error"] = f"{type(exc).__name__}: {exc}"
    return record


async def run_rounds(
    module: str, args: argparse.Namespace, common: Sequence[str]
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, Any] | None]:
    """Every (round, shape, client) worker of ``module`` with the ``common`` options and the
    timing ones, and the memory worker unless ``--no-memory``: the samples by client and
    shape, and the memory record.  The client order rotates each round, so no client always
    runs first or last."""
    common = [*common, "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    clients: list[str] = args.clients
    shapes: list[str] = args.shapes
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {
        c: {s: [] for s in shapes} for c in clients
    }
    timeout = args.seconds + args.warmup + 60
    for round_ in range(args.rounds):
        for shape in shapes:
            shift = round_ % len(clients)
            for client in clients[shift:] + clients[:shift]:
                library, worker = None, client
                if client == BASELINE:  # the default mode, with the other checkout's library
                    library, worker = Path(args.baseline), "trio-cluster"
                record = await run_worker(
                    module, ["--worker", worker, "--shape", shape, *common], timeout, library
                )
                samples[client][shape].append(record)
                shown = record.get("error") or f"{record.get('ops_per_s')} ops/s"
                progress(f"round {round_ + 1} {shape:9} {client:15} {shown}")
    memory: dict[str, Any] | None = None
    if "trio-cluster" in clients and not args.no_memory:
        memory = await run_worker(
            module, ["--worker", "trio-cluster", "--shape", MEMORY_SHAPE, *common], 120
        )
        progress(f"memory: {memory}")
    return samples, memory


def report_main(
    parser: argparse.ArgumentParser,
    worker_main: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[argparse.Namespace], dict[str, Any]],
) -> None:
    """A benchmark script's entry point, its command line read with ``parser``: with
    ``--worker``, one measurement in this process (its JSON line on stdout); otherwise the
    whole ``report(args)``, printed and, with ``--json``, written to that file."""
    args = parser.parse_args()
    if args.worker:
        emit(worker_main(args))
        return
    text = json.dumps(report(args), indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as out:
            out.write(text + "\n")


def summarize(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians across rounds of one client and shape (errors reported, not averaged)."""
    good = [s for s in samples if "error" not in s]
    errors = [s["error"] for s in samples if "error" in s]
    if not good:
        return {"error": errors[0] if errors else "no samples"}
    summary: dict[str, Any] = {
        "ops_per_s": round(statistics.median(s["ops_per_s"] for s in good), 1),
        "rounds_ops_per_s": [s["ops_per_s"] for s in good],
    }
    for field in ("p50_ms", "p99_ms", "cpu_us_per_op"):
        values = [s[field] for s in good if s.get(field) is not None]
        summary[field] = round(statistics.median(values), 3) if values else None
    summary["rounds_p99_ms"] = [s.get("p99_ms") for s in good]
    if errors:
        summary["errors"] = errors
    return summary


def ratio(numerator: Any, denominator: Any) -> float | None:
    """``numerator / denominator`` rounded, or None when either side is missing."""
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
        return None
    if not denominator:
        return None
    return round(numerator / denominator, 3)


def paired_ratio(
    results: dict[str, dict[str, Any]], numerator: str, denominator: str, shape: str, field: str
) -> float | None:
    """The median over rounds of ``numerator``'s ``field`` over ``denominator``'s, each pair
    measured in the same round (the clients of a round run back to back, so a busy stretch of
    the machine weighs on both sides of a pair).  ``field`` is ``"ops_per_s"`` or
    ``"p99_ms"``.  Falls back to the ratio of the medians when a side lost a round."""
    top = figure(results, numerator, shape, f"rounds_{field}")
    bottom = figure(results, denominator, shape, f"rounds_{field}")
    if not top or not bottom or len(top) != len(bottom):
        return ratio(
            figure(results, numerator, shape, field), figure(results, denominator, shape, field)
        )
    pairs = [a / b for a, b in zip(top, bottom, strict=True) if a and b]
    return round(statistics.median(pairs), 3) if pairs else None


def figure(results: dict[str, dict[str, Any]], client: str, shape: str, field: str) -> Any:
    """``results[client][shape][field]``, or None."""
    return results.get(client, {}).get(shape, {}).get(field)


# --- memory of idle pooled connections --------------------------------------------------------


def rss_bytes() -> int:
    """This process's resident set size, from ``/proc/self/statm``."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


ClientFactory = Callable[[int], AbstractAsyncContextManager[Any]]


async def idle_connection_memory(
    open_client: ClientFactory, key_groups: Sequence[Sequence[bytes]], per_node: int
) -> dict[str, Any]:
    """Bytes per idle pooled connection, by difference.

    ``open_client(size)`` returns the client (an async context manager) with pools of ``size``.
    Inside one client, one GET per node opens one connection each (baseline); then ``per_node``
    concurrent GETs per node make the pools open up to ``per_node`` connections each, which go
    idle when the GETs return.  The extra memory divided by the extra connections is the figure.
    Measured twice: RSS (everything, C allocations included) without tracing, then Python
    allocations with ``tracemalloc`` in a fresh client.
    """
    out: dict[str, Any] = {"per_node_target": per_node}
    for method in ("rss", "tracemalloc"):
        if method == "tracemalloc":
            tracemalloc.start()

        def measure(method: str = method) -> int:
            gc.collect()
            return tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else rss_bytes()

        with trio.fail_after(60):
            async with open_client(per_node) as client:
                for group in key_groups:
                    await client.get(group[0])
                base_conns, base_bytes = len(client.connections()), measure()
                async with trio.open_nursery() as nursery:
                    for group in key_groups:
                        for key in group[:per_node]:
                            nursery.start_soon(client.get, key)
                await trio.sleep(0.2)
                conns, used = len(client.connections()), measure()
        if method == "tracemalloc":
            tracemalloc.stop()
        extra = conns - base_conns
        per_conn = (used - base_bytes) / extra if extra > 0 else None
        out[method] = {
            "connections_opened": extra,
            "bytes_per_idle_connection": None if per_conn is None else round(per_conn),
            "extrapolated_10k_connections_mib": None
            if per_conn is None
            else round(per_conn * 10_000 / 2**20, 1),
        }
    return out
