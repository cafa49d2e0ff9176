"""trio-cluster's single-node ``Client`` against redis-py asyncio and raw trio + hiredis.

One local server (``trio_cluster.testing.LocalServer``); workload: 50/50 GET/SET of 64-byte
values over 10,000 keys at 50 tasks and at 1 task.  Clients: ``raw`` (one connection per task,
no pool, no timeouts: the ceiling), ``redis-py`` (``redis.asyncio.Redis`` on asyncio) and
``trio-cluster`` (``trio_cluster.Client`` with ``PoolOptions(size=50)``).  Every
measurement runs in its own subprocess; rounds interleave the clients.  Prints one JSON document
(medians, p50/p99, ratios, memory per idle pooled connection of ``Client``).

    python -m benchmarks.standalone [--rounds 3] [--seconds 3] [--json FILE]
    python -m benchmarks.standalone --profile [--seconds 5]   # where one GET's time goes

``--profile`` runs the trio-cluster ``Client`` at 1 task, GETs only, under cProfile in this
process and prints the self time per component (encoding, pool, cancel scopes, I/O, parsing,
response callbacks, ...) in microseconds per GET.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.metadata
import os
import platform
import pstats
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from benchmarks._common import (
    KEY_COUNT,
    KEYS,
    VALUE,
    Address,
    GetFn,
    PipeFn,
    RawConnection,
    SetFn,
    Shape,
    comparison_parser,
    drive_asyncio,
    drive_trio,
    figure,
    idle_connection_memory,
    measure_worker,
    pack,
    ratio,
    report_main,
    run_rounds,
    summarize,
)

CLIENTS = ("raw", "redis-py", "trio-cluster")
STANDALONE_SHAPES = ("tasks50", "tasks1")
POOL_SIZE = 50


async def _unused_pipe(keys: Sequence[bytes]) -> None:
    raise NotImplementedError("no pipeline shape in the standalone benchmark")


# --- workers ----------------------------------------------------------------------------------


async def raw_worker(shape: Shape, address: Address, seconds: float, warmup: float) -> Any:
    """The ceiling: one raw connection per task."""

    @asynccontextmanager
    async def per_task() -> AsyncIterator[tuple[GetFn, SetFn, PipeFn]]:
        conn = await RawConnection.open(address)
        try:

            async def get(key: bytes) -> Any:
                return await conn.call(b"GET", key)

            async def set_(key: bytes, value: bytes) -> Any:
                return await conn.call(b"SET", key, value)

            yield get, set_, _unused_pipe
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    return await drive_trio(shape, seconds, warmup, per_task=per_task)


def redis_py_worker(shape: Shape, address: Address, seconds: float, warmup: float) -> Any:
    """``redis.asyncio.Redis`` (RESP2, hiredis parser) under ``asyncio.run``."""
    import redis.asyncio

    async def main() -> dict[str, Any]:
        r = redis.asyncio.Redis(host=address[0], port=address[1], max_connections=POOL_SIZE)
        try:
            return await drive_asyncio(
                shape, seconds, warmup, get=r.get, set_=r.set, pipe=_unused_pipe
            )
        finally:
            await r.aclose()

    return asyncio.run(main())


def open_client(address: Address, size: int = POOL_SIZE) -> Any:
    """``trio_cluster.Client`` with a pool of ``size`` (an async context manager)."""
    from trio_cluster import Client
    from trio_cluster.pooling.pool import PoolOptions

    client_class: Any = Client  # redis-py's mixins declare abstract attributes for mypy
    return client_class(address[0], address[1], pool=PoolOptions(size=size))


async def trio_cluster_worker(shape: Shape, address: Address, seconds: float, warmup: float) -> Any:
    """``trio_cluster.Client``."""
    async with open_client(address) as r:
        return await drive_trio(shape, seconds, warmup, get=r.get, set_=r.set, pipe=_unused_pipe)


def worker_main(args: argparse.Namespace) -> dict[str, Any]:
    """Run one measurement in this process and return its JSON record."""
    host, _, port = args.address.rpartition(":")
    address = (host, int(port))
    timing = (args.seconds, args.warmup)
    workers: dict[str, Callable[[Shape], Any]] = {
        "raw": lambda shape: trio.run(raw_worker, shape, address, *timing),
        "redis-py": lambda shape: redis_py_worker(shape, address, *timing),
        "trio-cluster": lambda shape: trio.run(trio_cluster_worker, shape, address, *timing),
    }
    return measure_worker(
        args,
        workers,
        lambda: trio.run(
            idle_connection_memory,
            lambda size: open_client(address, size),
            [KEYS],
            args.idle_connections,
        ),
    )


# --- the parent -------------------------------------------------------------------------------


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Start one server, run every (round, shape, client) worker, and build the report."""
    from trio_cluster.testing import LocalServer, server_version

    clients: list[str] = args.clients
    shapes: list[str] = args.shapes
    started = time.monotonic()
    with LocalServer() as server:
        version = server_version(server.binary)
        address = f"{server.host}:{server.port}"
        await _preload(server.address)
        common = [
            "--address", address,
            "--idle-connections", str(args.idle_connections),
        ]  # fmt: skip
        samples, memory = await run_rounds("benchmarks.standalone", args, common)
    results = {c: {s: summarize(samples[c][s]) for s in shapes} for c in clients}
    ratios: dict[str, Any] = {}
    for shape in shapes:
        ops = {c: figure(results, c, shape, "ops_per_s") for c in clients}
        ratios[f"trio_cluster_over_redis_py_{shape}"] = ratio(
            ops.get("trio-cluster"), ops.get("redis-py")
        )
        ratios[f"trio_cluster_over_raw_{shape}"] = ratio(ops.get("trio-cluster"), ops.get("raw"))
        ratios[f"redis_py_over_raw_{shape}"] = ratio(ops.get("redis-py"), ops.get("raw"))
        ratios[f"p99_trio_cluster_over_redis_py_{shape}"] = ratio(
            figure(results, "trio-cluster", shape, "p99_ms"),
            figure(results, "redis-py", shape, "p99_ms"),
        )
    if memory is not None:
        memory = {k: v for k, v in memory.items() if k not in ("client", "shape")}
    return {
        "benchmark": "standalone",
        "workload": "50/50 GET/SET, 64-byte values, 10,000 keys; one server",
        "settings": {
            "rounds": args.rounds,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "pool_size": POOL_SIZE,
        },
        "environment": {
            "python": platform.python_version(),
            "server": version,
            "cpus": len(os.sched_getaffinity(0)),
            "packages": {
                name: importlib.metadata.version(name) for name in ("trio", "redis", "hiredis")
            },
        },
        "results": results,
        "ratios": ratios,
        "trio_cluster_idle_memory": memory,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


async def _preload(address: Address) -> None:
    conn = await RawConnection.open(address)
    try:
        for start in range(0, KEY_COUNT, 1000):
            batch = KEYS[start : start + 1000]
            await conn.stream.send_all(b"".join(pack(b"SET", k, VALUE) for k in batch))
            for _ in batch:
                await conn.read()
    finally:
        await conn.aclose()


# --- profiling one GET ------------------------------------------------------------------------

#: (component, predicate on (filename, function name)), first match wins.  Self time only;
#: ``contextlib`` frames are counted with cancel scopes: on this path trio's CancelScope
#: (``__enter__``, ``_close``, the ``deadline`` setter) is where they come from.
_COMPONENTS: list[tuple[str, Any]] = [
    ("benchmark loop", lambda f, n: f.endswith("_common.py") or "standalone.py" in f),
    ("pool stale check (peer_closed: select() syscall)",
     lambda f, n: "select.select" in n or n == "peer_closed"),
    ("socket syscalls (os.write, recv)",
     lambda f, n: "posix.write" in n or "'recv" in n or "'send" in n),
    ("encoding (encode_command, normalize_args)",
     lambda f, n: ("protocol.py" in f and "encode" in n) or f.endswith("wire/encoding.py")
     or n == "normalize_args"
     or "_raise_for_bad_argument" in n or "pack_command" in n),
    ("parsing (RespParser + hiredis)",
     lambda f, n: "protocol.py" in f or "hiredis" in n or "Reader" in n),
    ("response callbacks (ReplyParser, redis-py callbacks)",
     lambda f, n: ("commands.py" in f and "trio_cluster" in f)
     or "redis/_parsers" in f or "helpers.py" in f),
    ("redis-py command methods (get/set)", lambda f, n: "redis/commands" in f),
    ("pool get/put + state machine",
     lambda f, n: f.endswith(("pooling/pool.py", "pooling/book.py", "conn/state.py"))),
    ("client.execute_command",
     lambda f, n: f.endswith(("clients/client.py", "clients/clientbase.py"))),
    ("connection (execute_many/_send/_read_reply)",
     lambda f, n: f.endswith(("conn/connection.py", "conn/stream.py"))),
    ("cancel scopes (trio CancelScope + contextlib)",
     lambda f, n: "contextlib.py" in f or "builtins.next" in n
     or ("_run.py" in f and n in ("__init__", "__enter__", "__exit__", "_close", "deadline",
                                   "_might_change_registered_deadline",
                                   "_activate_cancel_status", "recalculate",
                                   "_add_task", "_remove_task",
                                   "_attempt_delivery_of_any_pending_cancel",
                                   "effective_deadline", "checkpoint_if_cancelled",
                                   "parent_cancellation_is_visible_to_us"))),
    ("trio socket/stream wrappers", lambda f, n: "_socket.py" in f or "_highlevel_socket.py" in f),
    ("trio scheduler + epoll", lambda f, n: "trio" in f or "epoll" in n),
]  # fmt: skip

#: Inclusive (cumulative) time of the boundaries one GET crosses: (label, file suffix, name).
_BOUNDARIES = [
    ("Client.execute_command", "trio_cluster/clients/client.py", "execute_command"),
    ("Pool.get", "trio_cluster/pooling/pool.py", "get"),
    ("Pool.put", "trio_cluster/pooling/pool.py", "put"),
    ("Connection.execute_many", "trio_cluster/conn/connection.py", "execute_many"),
    ("encode_command", "trio_cluster/wire/protocol.py", "encode_command"),
    ("Connection._send", "trio_cluster/conn/stream.py", "_send"),
    ("Connection._read_reply", "trio_cluster/conn/stream.py", "_read_reply"),
    ("RespParser.next_reply", "trio_cluster/wire/protocol.py", "next_reply"),
    ("ReplyParser.parse (callbacks)", "trio_cluster/wire/commands.py", "parse"),
    ("CancelScope.__enter__", "trio/_core/_run.py", "__enter__"),
    ("CancelScope.__exit__", "trio/_core/_run.py", "__exit__"),
    ("CancelScope.deadline (setter)", "trio/_core/_run.py", "deadline"),
]


def _component(filename: str, name: str) -> str:
    for label, matches in _COMPONENTS:
        if matches(filename, name):
            return str(label)
    return "other"


async def _profile_gets(address: Address, seconds: float) -> tuple[int, cProfile.Profile]:
    profiler = cProfile.Profile()
    async with open_client(address) as r:
        for key in KEYS[:100]:  # warm: connection open, caches filled
            await r.get(key)
        count = 0
        deadline = time.perf_counter() + seconds
        profiler.enable()
        while time.perf_counter() < deadline:
            for key in KEYS[:1000]:
                await r.get(key)
            count += 1000
        profiler.disable()
    return count, profiler


async def _time_gets(address: Address, seconds: float) -> float:
    async with open_client(address) as r:
        for key in KEYS[:100]:
            await r.get(key)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            for key in KEYS[:1000]:
                await r.get(key)
            count += 1000
        return (time.perf_counter() - started) / count


def profile(seconds: float, top: int) -> dict[str, Any]:
    """cProfile the trio-cluster ``Client`` at 1 task (GETs) and group self time by component.

    Returns microseconds per GET per component (under the profiler, which inflates Python
    function calls relative to C calls and syscalls), the unprofiled time per GET, and the
    ``top`` functions by self time.
    """
    from trio_cluster.testing import LocalServer

    with LocalServer() as server:
        trio.run(_preload, server.address)
        plain = trio.run(_time_gets, server.address, seconds)
        count, profiler = trio.run(_profile_gets, server.address, seconds)
    stats = pstats.Stats(profiler)
    raw_stats: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_component: dict[str, float] = {}
    rows = []
    for (filename, _line, name), (_cc, calls, tottime, _ct, _callers) in raw_stats.items():
        label = _component(filename, name)
        by_component[label] = by_component.get(label, 0.0) + tottime
        rows.append((tottime, calls, f"{os.path.basename(filename)}:{name}", label))
    total = sum(by_component.values())
    rows.sort(reverse=True)
    inclusive: dict[str, dict[str, float]] = {}
    for label, suffix, func in _BOUNDARIES:
        for (filename, _line, name), (_cc, calls, _tt, cumtime, _callers) in raw_stats.items():
            if name == func and filename.endswith(suffix):
                entry = inclusive.setdefault(label, {"calls_per_get": 0.0, "us_per_get": 0.0})
                entry["calls_per_get"] = round(entry["calls_per_get"] + calls / count, 2)
                entry["us_per_get"] = round(entry["us_per_get"] + cumtime / count * 1e6, 2)
    return {
        "benchmark": "standalone-profile",
        "gets": count,
        "us_per_get_unprofiled": round(plain * 1e6, 2),
        "us_per_get_profiled": round(total / count * 1e6, 2),
        "components_us_per_get": {
            k: round(v / count * 1e6, 2)
            for k, v in sorted(by_component.items(), key=lambda item: -item[1])
        },
        "components_share": {
            k: round(v / total, 3) for k, v in sorted(by_component.items(), key=lambda i: -i[1])
        },
        "inclusive_us_per_get": inclusive,
        "top_functions": [
            {
                "function": where,
                "component": label,
                "calls_per_get": round(calls / count, 2),
                "us_per_get": round(tt / count * 1e6, 2),
            }
            for tt, calls, where, label in rows[:top]
        ],
    }


def options() -> argparse.ArgumentParser:
    """Command-line options (the ``--worker`` ones are internal)."""
    parser = comparison_parser(__doc__, CLIENTS, CLIENTS, STANDALONE_SHAPES, seconds=3.0)
    parser.add_argument(
        "--idle-connections", type=int, default=200, help="idle connections (memory figure)"
    )
    parser.add_argument("--profile", action="store_true", help="profile one GET instead")
    parser.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    parser.add_argument("--address", help=argparse.SUPPRESS)
    return parser


def report(args: argparse.Namespace) -> dict[str, Any]:
    """The comparison, or with ``--profile`` the profile of one GET."""
    return profile(args.seconds, args.top) if args.profile else trio.run(run_all, args)


if __name__ == "__main__":
    report_main(options(), worker_main, report)
