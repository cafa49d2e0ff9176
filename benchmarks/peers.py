"""trio-cluster against peer cluster clients on one local cluster (3 primaries + 3 replicas).

Clients: ``raw`` (trio streams + hiredis, one connection per task and node, no pool, no
timeouts: the ceiling), ``redis-py`` (``redis.asyncio.cluster.RedisCluster`` on asyncio),
``glide`` (valkey-glide's ``GlideClusterClient`` on trio: a Rust core, multiplexed),
``coredis`` (``coredis.RedisCluster`` on trio; only when named with ``--clients``),
``trio-cluster`` (``ClusterClient``, one command per round trip) and ``trio-cluster-ap``
(``ClusterClient`` with ``PoolOptions(autopipeline=True)``); when named, ``trio-cluster-metrics``
and ``trio-cluster-otel`` are the default mode with OpenTelemetry metrics on, and with metrics
and a span per command (the SDK's providers; ratios ``metrics_on_over_off_*``,
``otel_on_over_off_*``).  Workload: 50/50 GET/SET of
64-byte values over 10,000 keys, at 1, 10, 50, 200 and 1,000 tasks, and 4 tasks x pipelines
of 10, 100 and 1,000 SETs.  Each measurement runs in its own subprocess; the parent
interleaves clients and shapes over ``--rounds`` rounds and prints one JSON document with the
medians, p50/p99 latencies, the ratios, and trio-cluster's memory per idle pooled connection.

    python -m benchmarks.peers [--rounds 3] [--seconds 3] [--json FILE]

The server binary comes from ``TRIO_CLUSTER_SERVER`` or PATH (see ``trio_cluster.testing``).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import os
import platform
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from benchmarks._common import (
    BASELINE,
    SHAPES,
    VALUE,
    Address,
    Shape,
    comparison_parser,
    drive_asyncio,
    drive_trio,
    figure,
    format_nodes,
    format_slots,
    idle_connection_memory,
    keys_by_primary,
    measure_worker,
    paired_ratio,
    parse_nodes,
    parse_slots,
    pipelined_sets,
    preload_cluster,
    progress,
    ratio,
    raw_task_client,
    report_main,
    run_rounds,
    slot_table,
    summarize,
)

CLIENTS = (
    "raw",
    "redis-py",
    "glide",
    "coredis",
    "trio-cluster",
    "trio-cluster-ap",
    "trio-cluster-metrics",  # OpenTelemetry metrics on (only when named)
    "trio-cluster-otel",  # metrics and a span per command (only when named)
    "trio-cluster-otel-1pct",  # the same, the spans sampled at 1 % (only when named)
    BASELINE,  # the default mode from another checkout (--baseline)
)
#: The telemetry variants of the default mode, and their labels in the ratios (on over off).
VARIANTS = (
    ("trio-cluster-metrics", "metrics"),
    ("trio-cluster-otel", "otel"),
    ("trio-cluster-otel-1pct", "otel_1pct"),
)
#: Run unless ``--clients`` says otherwise (coredis is slow and not a target of issue 17).
DEFAULT_CLIENTS = ("raw", "redis-py", "glide", "trio-cluster", "trio-cluster-ap")
#: Pool size per node for the pooled clients: one connection per task at 50 tasks.
POOL_SIZE = 50


# --- workers (each runs in its own process) ---------------------------------------------------


async def raw_worker(
    shape: Shape, ranges: list[tuple[int, int, Address]], seconds: float, warmup: float
) -> dict[str, Any]:
    """The ceiling: one raw connection per task and primary, routed by slot."""
    primaries, table = slot_table(ranges)
    return await drive_trio(
        shape, seconds, warmup, per_task=lambda: raw_task_client(primaries, table)
    )


def redis_py_worker(
    shape: Shape, nodes: list[Address], seconds: float, warmup: float
) -> dict[str, Any]:
    """``redis.asyncio.cluster.RedisCluster`` (RESP2, hiredis parser) under ``asyncio.run``."""
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    async def main() -> dict[str, Any]:
        rc = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in nodes],
            # redis-py cannot queue for a connection (it raises MaxConnectionsError), so its
            # pool grows to one connection per task.
            max_connections=max(POOL_SIZE, shape.tasks),
        )
        await rc.initialize()
        try:
            pipe = functools.partial(pipelined_sets, rc)
            return await drive_asyncio(shape, seconds, warmup, get=rc.get, set_=rc.set, pipe=pipe)
        finally:
            await rc.aclose()

    return asyncio.run(main())


async def coredis_worker(
    shape: Shape, nodes: list[Address], seconds: float, warmup: float
) -> dict[str, Any]:
    """``coredis.RedisCluster`` (anyio) running on trio."""
    import coredis

    client: Any = coredis.RedisCluster(
        startup_nodes=[{"host": host, "port": port} for host, port in nodes],
        max_connections=POOL_SIZE,
        max_connections_per_node=True,
    )
    async with client:

        async def pipe(keys: Sequence[bytes]) -> None:
            async with client.pipeline() as p:
                for key in keys:
                    p.set(key, VALUE)

        return await drive_trio(shape, seconds, warmup, get=client.get, set_=client.set, pipe=pipe)


async def glide_worker(
    shape: Shape, nodes: list[Address], seconds: float, warmup: float
) -> dict[str, Any]:
    """valkey-glide's ``GlideClusterClient`` (a Rust core; one multiplexed connection per
    node) running on trio, with a 3 s request timeout.  Pipelines are non-atomic
    ``ClusterBatch`` objects."""
    from glide import ClusterBatch, GlideClusterClient, GlideClusterClientConfiguration, NodeAddress

    config = GlideClusterClientConfiguration(
        [NodeAddress(host, port) for host, port in nodes], request_timeout=3000
    )
    client = await GlideClusterClient.create(config)

    async def pipe(keys: Sequence[bytes]) -> Any:
        batch = ClusterBatch(is_atomic=False)
        for key in keys:
            batch.set(key, VALUE)
        return await client.exec(batch, raise_on_error=True)

    try:
        return await drive_trio(shape, seconds, warmup, get=client.get, set_=client.set, pipe=pipe)
    finally:
        await client.close()


@asynccontextmanager
async def open_trio_cluster(
    nodes: list[Address],
    size: int,
    *,
    autopipeline: bool = False,
    read_spin: int | None = None,
    telemetry: str | None = None,
) -> AsyncIterator[Any]:
    """``ClusterClient`` with pools of ``size`` per node and 3 s read/write timeouts
    (``read_spin``: the client's option, its default when None).  ``telemetry``:
    ``"metrics"`` records trio-cluster's OpenTelemetry metrics into an SDK MeterProvider (read
    at the end, as a periodic exporter would between intervals), ``"all"`` also a span per
    command through the SDK's batch processor into an exporter that drops them,
    ``"sampled"`` the same with 1 % of the traces sampled (``TraceIdRatioBased(0.01)``)."""
    from trio_cluster import ClusterClient, PoolOptions

    spin: dict[str, Any] = {} if read_spin is None else {"read_spin": read_spin}
    rc = ClusterClient(
        startup_nodes=nodes,
        pool=PoolOptions(size=size, autopipeline=autopipeline),
        read_timeout=3.0,
        write_timeout=3.0,
        **spin,
    )
    providers = _instrument(rc, telemetry) if telemetry else None
    async with rc:
        yield rc
    if providers is not None:
        for provider in providers:
            provider.shutdown()


def _instrument(client: Any, telemetry: str) -> list[Any]:
    """The SDK providers ``client`` records into (see :func:`open_trio_cluster`)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from trio_cluster.otel import instrument_client

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    if telemetry == "sampled":  # what a busy service runs: 1 % of the traces recorded
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        tracers = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    else:
        tracers = TracerProvider()
    tracers.add_span_processor(BatchSpanProcessor(Drop()))
    instrument_client(
        client,
        meter_provider=meters,
        tracer_provider=tracers,
        tracing=telemetry in ("all", "sampled"),
    )
    return [meters, tracers]


async def trio_cluster_worker(
    shape: Shape,
    nodes: list[Address],
    seconds: float,
    warmup: float,
    autopipeline: bool = False,
    read_spin: int | None = None,
    telemetry: str | None = None,
) -> dict[str, Any]:
    """``trio_cluster.ClusterClient``, with or without automatic pipelining (``telemetry``:
    see :func:`open_trio_cluster`)."""
    async with open_trio_cluster(
        nodes, POOL_SIZE, autopipeline=autopipeline, read_spin=read_spin, telemetry=telemetry
    ) as rc:
        pipe = functools.partial(pipelined_sets, rc)
        return await drive_trio(shape, seconds, warmup, get=rc.get, set_=rc.set, pipe=pipe)


async def trio_cluster_memory(
    nodes: list[Address], ranges: list[tuple[int, int, Address]], per_node: int
) -> dict[str, Any]:
    """Bytes per idle pooled connection of ``ClusterClient`` (see ``idle_connection_memory``)."""
    return await idle_connection_memory(
        lambda size: open_trio_cluster(nodes, size), keys_by_primary(ranges), per_node
    )


def worker_main(args: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in this process and return its JSON record."""
    nodes = parse_nodes(args.nodes)
    ranges = parse_slots(args.slots)
    timing = (args.seconds, args.warmup)
    spin = args.read_spin
    workers: dict[str, Callable[[Shape], Any]] = {
        "raw": lambda shape: trio.run(raw_worker, shape, ranges, *timing),
        "redis-py": lambda shape: redis_py_worker(shape, nodes, *timing),
        "glide": lambda shape: trio.run(glide_worker, shape, nodes, *timing),
        "coredis": lambda shape: trio.run(coredis_worker, shape, nodes, *timing),
        "trio-cluster": lambda shape: trio.run(
            trio_cluster_worker, shape, nodes, *timing, False, spin
        ),
        "trio-cluster-ap": lambda shape: trio.run(
            trio_cluster_worker, shape, nodes, *timing, True, spin
        ),
        "trio-cluster-metrics": lambda shape: trio.run(
            trio_cluster_worker, shape, nodes, *timing, False, spin, "metrics"
        ),
        "trio-cluster-otel": lambda shape: trio.run(
            trio_cluster_worker, shape, nodes, *timing, False, spin, "all"
        ),
        "trio-cluster-otel-1pct": lambda shape: trio.run(
            trio_cluster_worker, shape, nodes, *timing, False, spin, "sampled"
        ),
    }
    return measure_worker(
        args, workers, lambda: trio.run(trio_cluster_memory, nodes, ranges, args.idle_per_node)
    )


# --- the parent: one cluster, interleaved measurements ----------------------------------------


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Start the cluster, run every (round, shape, client) worker, and build the report."""
    from trio_cluster.testing import LocalCluster, server_version

    clients: list[str] = args.clients
    shapes: list[str] = args.shapes
    if (BASELINE in clients) != bool(args.baseline):
        raise SystemExit(f"--baseline CHECKOUT and --clients ... {BASELINE} go together")
    started = time.monotonic()
    progress("starting the cluster ...")
    async with LocalCluster(masters=3, replicas_per_master=1) as cluster:
        server = server_version(cluster.nodes[0].binary)
        ranges = [(r.start, r.end, r.primary) for r in await cluster.slot_map()]
        await preload_cluster(ranges)
        common = [
            "--nodes", format_nodes(cluster.startup_nodes),
            "--slots", format_slots(ranges),
            "--idle-per-node", str(args.idle_per_node),
        ]  # fmt: skip
        if args.read_spin is not None:
            common += ["--read-spin", str(args.read_spin)]
        samples, memory = await run_rounds("benchmarks.peers", args, common)
    results = {c: {s: summarize(samples[c][s]) for s in shapes} for c in clients}
    return {
        "benchmark": "peers",
        "workload": "50/50 GET/SET, 64-byte values, 10,000 keys; cluster 3 primaries + 3 replicas",
        "shapes": {
            name: (
                f"4 tasks x pipelines of {shape.pipeline} SET, commands/s"
                if shape.pipeline
                else f"{shape.tasks} task{'s' if shape.tasks > 1 else ''}, ops/s"
            )
            for name, shape in SHAPES.items()
            if name in shapes
        },
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "pool_size_per_node": POOL_SIZE,
            "read_spin": args.read_spin,
        },
        "environment": _environment(server),
        "results": results,
        "ratios": _ratios(results),
        "ratios_of_medians": _ratios(results, paired=False),
        "trio_cluster_idle_memory": _memory_summary(memory),
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def _ratios(results: dict[str, dict[str, Any]], *, paired: bool = True) -> dict[str, Any]:
    """Per shape: each trio-cluster mode over redis-py and over raw (ops/s), redis-py over
    raw, and each mode's p99 over redis-py's.  ``paired``: the median of the ratios measured
    round by round (the headline figures); otherwise the ratio of the medians."""

    def over(top: str, bottom: str, shape: str, field: str = "ops_per_s") -> float | None:
        if paired:
            return paired_ratio(results, top, bottom, shape, field)
        return ratio(figure(results, top, shape, field), figure(results, bottom, shape, field))

    shapes = sorted({s for by_shape in results.values() for s in by_shape}, key=list(SHAPES).index)
    out: dict[str, Any] = {}
    for mode, label in (("trio-cluster", "trio_cluster"), ("trio-cluster-ap", "autopipeline")):
        if mode not in results:
            continue
        for shape in shapes:
            out[f"{label}_over_redis_py_{shape}"] = over(mode, "redis-py", shape)
            out[f"{label}_over_raw_{shape}"] = over(mode, "raw", shape)
            out[f"p99_{label}_over_redis_py_{shape}"] = over(mode, "redis-py", shape, "p99_ms")
            if "glide" in results:
                out[f"{label}_over_glide_{shape}"] = over(mode, "glide", shape)
                out[f"p99_{label}_over_glide_{shape}"] = over(mode, "glide", shape, "p99_ms")
    for variant, label in VARIANTS:
        if variant in results and "trio-cluster" in results:
            for shape in shapes:
                out[f"{label}_on_over_off_{shape}"] = over(variant, "trio-cluster", shape)
    if BASELINE in results and "trio-cluster" in results:
        for shape in shapes:
            out[f"trio_cluster_over_baseline_{shape}"] = over("trio-cluster", BASELINE, shape)
            out[f"cpu_per_op_trio_cluster_over_baseline_{shape}"] = over(
                "trio-cluster", BASELINE, shape, "cpu_us_per_op"
            )
    for variant, label in VARIANTS:
        if variant in results and "trio-cluster" in results:
            for shape in shapes:
                out[f"cpu_per_op_{label}_on_over_off_{shape}"] = over(
                    variant, "trio-cluster", shape, "cpu_us_per_op"
                )
    for shape in shapes:
        out[f"redis_py_over_raw_{shape}"] = over("redis-py", "raw", shape)
        out[f"p99_ms_{shape}"] = {c: figure(results, c, shape, "p99_ms") for c in results}
    return out


def _memory_summary(memory: dict[str, Any] | None) -> dict[str, Any] | None:
    if memory is None or "error" in memory:
        return None if memory is None else {"error": memory["error"], "bytes": None}
    return {k: v for k, v in memory.items() if k not in ("client", "shape")}


def _environment(server: str) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "python": platform.python_version(),
        "server": server,
        "cpus": len(os.sched_getaffinity(0)),
        "packages": {
            name: version(name)
            for name in (
                "trio",
                "redis",
                "hiredis",
                "coredis",
                "valkey-glide",
                "anyio",
                "trio-cluster",
            )
        },
    }


def options() -> argparse.ArgumentParser:
    """Command-line options (the ``--worker`` ones are internal)."""
    parser = comparison_parser(__doc__, CLIENTS, DEFAULT_CLIENTS, list(SHAPES), seconds=2.0)
    parser.add_argument(
        "--idle-per-node", type=int, default=100, help="idle connections per node (memory)"
    )
    parser.add_argument(
        "--read-spin",
        type=int,
        help="trio-cluster's read_spin option (default: the client's own default)",
    )
    parser.add_argument(
        "--baseline",
        metavar="CHECKOUT",
        help=f"a checkout of another commit (e.g. a git worktree): its default mode is measured"
        f" as {BASELINE} (add it to --clients), to compare two commits in one run",
    )
    parser.add_argument("--nodes", help=argparse.SUPPRESS)
    parser.add_argument("--slots", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    report_main(options(), worker_main, lambda args: trio.run(run_all, args))
