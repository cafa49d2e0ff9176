"""A primary SIGKILLed under load: the failover tests' shared workload and measurements.

Twenty tasks SET then GET their own keys through ``rc`` while the shard's primary is killed
and its replica takes over.  Only redis errors are tolerated (recorded with their time); a
wrong value fails the test at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import trio
from redis import exceptions as rex

from trio_cluster import ClusterClient
from trio_cluster.testing import LocalCluster

WORKERS = 20


@dataclass
class FailoverRun:
    """What one run measured (times on trio's clock)."""

    killed_at: float = 0.0
    recovered_at: float | None = None
    errors: list[tuple[float, BaseException]] = field(default_factory=list)
    """Every redis error that reached a caller, with when."""
    ops_after_recovery: int = 0
    """SET+GET round trips that succeeded after the replica had taken over."""

    @property
    def failover_seconds(self) -> float:
        assert self.recovered_at is not None
        return self.recovered_at - self.killed_at

    def kinds(self) -> list[str]:
        """The error classes seen, sorted."""
        return sorted({type(e).__name__ for _, e in self.errors})


def failover_cluster() -> LocalCluster:
    """A cluster whose shard 0 fails over quickly (3 primaries with a replica each, a 1 s
    node timeout): the one :func:`kill_primary_under_load` expects."""
    return LocalCluster(masters=3, replicas_per_master=1, cluster_node_timeout_ms=1000)


async def kill_primary_under_load(cluster: LocalCluster, rc: ClusterClient) -> FailoverRun:
    """Run the workload, SIGKILL shard 0's primary after 0.5 s, wait (bounded) until its
    replica owns the slots, and go on for 1.5 s against the promoted replica."""
    victim = cluster.shards[0].primary
    heir = cluster.shards[0].replicas[0]
    run = FailoverRun()

    async def worker(n: int, stop: trio.Event) -> None:
        rng = random.Random(n)
        while not stop.is_set():
            key = f"fo:{n}:{rng.randrange(100)}"  # each worker its own keys
            value = str(rng.randrange(10**9)).encode()
            try:
                assert await rc.set(key, value) is True
                assert await rc.get(key) == value
                if run.recovered_at is not None:
                    run.ops_after_recovery += 1
            except rex.RedisError as exc:  # a wrong value fails the test
                run.errors.append((trio.current_time(), exc))
            await trio.sleep(0.002)

    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for n in range(WORKERS):
            nursery.start_soon(worker, n, stop)
        await trio.sleep(0.5)  # a steady workload first
        run.killed_at = trio.current_time()
        victim.kill()
        # Poll the cluster (bounded) until the replica has taken over.
        with trio.fail_after(20):
            while True:
                try:
                    ranges = await heir.execute("CLUSTER", "SLOTS", read_timeout=1.0)
                    if any(int(r[2][1]) == heir.port for r in ranges):
                        break
                except (rex.RedisError, OSError):  # the heir may be busy electing
                    pass
                await trio.sleep(0.05)
        run.recovered_at = trio.current_time()
        await trio.sleep(1.5)  # the workload goes on against the promoted replica
        stop.set()
    return run
