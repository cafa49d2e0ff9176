"""Where a ``ClusterClient`` command's time goes: cProfile around the peers workload.

Starts a local cluster (3 primaries, no replicas), runs ``--tasks`` tasks of 50/50 GET/SET of
64-byte values for a warm-up, then profiles ``--seconds`` of it and prints the unprofiled-style
rate (profiled, so lower than the benchmark's), system calls and writes per command, and the
top functions by self time.  ``--autopipeline`` turns on ``PoolOptions(autopipeline=True)``.

    python -m benchmarks.profile_cluster [--tasks 50] [--seconds 3] [--autopipeline]

cProfile inflates Python calls against C calls and system calls: read the shares.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import random
import time
from collections.abc import Sequence

import trio

from benchmarks._common import KEY_COUNT, KEYS, VALUE
from trio_cluster import ClusterClient, PoolOptions
from trio_cluster.testing import LocalCluster

_EPOLL = "<method '{}' of 'select.epoll' objects>"


async def profile(tasks: int, seconds: float, autopipeline: bool, top: int) -> str:
    """Run the workload and return the report text."""
    async with (
        LocalCluster(masters=3, replicas_per_master=0) as cluster,
        ClusterClient(
            startup_nodes=cluster.startup_nodes,
            pool=PoolOptions(size=50, autopipeline=autopipeline),
            read_timeout=3.0,
            write_timeout=3.0,
        ) as rc,
    ):
        done = 0
        stop = False

        async def worker(seed: int) -> None:
            nonlocal done
            rng = random.Random(seed)
            while not stop:
                key = KEYS[rng.randrange(KEY_COUNT)]
                if rng.random() < 0.5:
                    await rc.get(key)
                else:
                    await rc.set(key, VALUE)
                done += 1

        profiler = cProfile.Profile()
        async with trio.open_nursery() as nursery:
            for seed in range(tasks):
                nursery.start_soon(worker, seed)
            await trio.sleep(0.5)
            start_count, started = done, time.perf_counter()
            profiler.enable()
            await trio.sleep(seconds)
            profiler.disable()
            commands = done - start_count
            elapsed = time.perf_counter() - started
            stop = True
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    calls = {
        name: stats.stats[key][0]  # type: ignore[attr-defined]
        for key in stats.stats  # type: ignore[attr-defined]
        for name in ("write", "read", "poll")
        if key[2] in (f"<built-in method posix.{name}>", _EPOLL.format(name))
    }
    print(
        f"tasks={tasks} autopipeline={autopipeline}: {commands} commands in {elapsed:.2f} s"
        f" ({commands / elapsed:,.0f}/s profiled); per command: "
        + ", ".join(f"{name} {count / max(1, commands):.3f}" for name, count in calls.items()),
        file=out,
    )
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--autopipeline", action="store_true")
    parser.add_argument("--top", type=int, default=20, help="functions listed")
    args = parser.parse_args(argv)
    print(trio.run(profile, args.tasks, args.seconds, args.autopipeline, args.top))


if __name__ == "__main__":
    main()
