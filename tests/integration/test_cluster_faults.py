"""ClusterClient under faults: resharding with MIGRATE under load (MOVED and ASK), a primary
SIGKILLed under load (failover window measured), address_remap through proxies while the
cluster announces unreachable addresses, a pipeline with a node down, the circuit breaker,
and replica reads that fall back or follow latency.

Tests that change the cluster start their own ``LocalCluster``; tests that only put proxies
in front of nodes use the shared one (every proxy is removed on exit)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio
from failover_load import failover_cluster, kill_primary_under_load
from redis import exceptions as rex

from trio_cluster import ClusterClient
from trio_cluster.clients.cluster import ReadFrom, RetryOptions
from trio_cluster.faults.embedded import EmbeddedToxiproxy
from trio_cluster.faults.nodes import NodeProxies, latency, node_down
from trio_cluster.pooling.breaker import BreakerOptions, BreakerState, CircuitOpenError
from trio_cluster.routing.rules import key_slot
from trio_cluster.testing import LocalCluster, LocalServer
from trio_cluster.wire.encoding import text


def _owner_port(topology_map: list[Any], slot: int) -> int:
    return next(r.primary[1] for r in topology_map if r.start <= slot <= r.end)


@asynccontextmanager
async def _proxied(cluster: LocalCluster) -> AsyncIterator[NodeProxies]:
    async with EmbeddedToxiproxy() as tp, NodeProxies.create(tp, cluster.startup_nodes) as np:
        yield np


@asynccontextmanager
async def _proxied_client(
    cluster: LocalCluster, **options: Any
) -> AsyncIterator[tuple[NodeProxies, ClusterClient]]:
    """Proxies for ``cluster`` and a client that reaches it only through them."""
    async with _proxied(cluster) as proxies, _via(proxies, cluster, **options) as rc:
        yield proxies, rc


def _via(proxies: NodeProxies, cluster: LocalCluster, **options: Any) -> ClusterClient:
    """A client (``options`` added) that reaches ``cluster`` only through ``proxies``."""
    return ClusterClient(
        startup_nodes=[proxies.remap(cluster.startup_nodes[0])],
        address_remap=proxies.remap,
        **options,
    )


# --- resharding ---------------------------------------------------------------------------


async def _migrate_slot(
    cluster: LocalCluster, slot: int, source: LocalServer, target: LocalServer, halfway: Any
) -> None:
    """Move ``slot`` from source to target with MIGRATE, as redis-cli --cluster reshard does;
    ``await halfway(moved)`` runs once some keys have moved (the slot is then split), with
    the keys moved so far."""
    source_id, target_id = cluster.node_ids[source.port], cluster.node_ids[target.port]
    await target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    await source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    batches, moved = 0, []
    while keys := await source.execute("CLUSTER", "GETKEYSINSLOT", slot, 10):
        await source.execute("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
        batches, moved = batches + 1, [*moved, *keys]
        if batches == 3:
            await halfway(moved)
    for primary in cluster.primaries:
        await primary.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)


async def test_reshard_under_load_follows_moved_and_ask_without_errors() -> None:
    with trio.fail_after(40):
        async with LocalCluster(
            masters=3, replicas_per_master=1, cluster_node_timeout_ms=1000
        ) as c:
            slot = key_slot(b"mig")
            source = c.node(_owner_port(await c.slot_map(), slot))
            target = next(p for p in c.primaries if p is not source)
            failures: list[BaseException] = []
            ops = 0
            async with ClusterClient(startup_nodes=c.startup_nodes[:1]) as rc:
                await rc.mset({f"{{mig}}filler{i}": i for i in range(120)})

                async def worker(n: int, stop: trio.Event) -> None:
                    nonlocal ops
                    key, value = f"{{mig}}w{n}", 0
                    while not stop.is_set():
                        value += 1
                        try:
                            if n % 4 == 0:  # pipelines follow redirects per command
                                async with rc.pipeline() as p:
                                    p.set(key, value)
                                    p.get(key)
                                    assert await p.execute() == [True, str(value).encode()]
                            else:
                                assert await rc.set(key, value) is True
                                assert await rc.get(key) == str(value).encode()
                            if n % 3 == 0:  # multi-key in a migrating slot: TRYAGAIN, retried
                                got = await rc.mget(key, f"{{mig}}filler{n}")
                                assert got == [str(value).encode(), str(n).encode()]
                            ops += 1
                        except rex.RedisError as exc:  # a wrong value fails the test
                            failures.append(exc)
                        await trio.sleep(0.001)  # let the migration interleave

                async def until(predicate: Any) -> None:
                    # Polling the client's own counters: they say when a redirect happened.
                    while not predicate():  # noqa: ASYNC110
                        await trio.sleep(0.01)

                stop = trio.Event()
                async with trio.open_nursery() as nursery:
                    for n in range(12):
                        nursery.start_soon(worker, n, stop)

                    async def halfway(moved: list[bytes]) -> None:
                        # The workers' keys may all still be on the source (the server picks
                        # which keys move first): a filler that moved is an ASK for certain.
                        filler = next(k for k in moved if k.startswith(b"{mig}filler"))
                        value = filler.removeprefix(b"{mig}filler")
                        assert await rc.get(filler) == value
                        with trio.fail_after(10):
                            await until(lambda: rc.stats().ask > 0)

                    await _migrate_slot(c, slot, source, target, halfway)
                    with trio.fail_after(10):
                        await until(lambda: rc.stats().moved > 0)
                    await trio.sleep(0.3)  # keep the workload going on the new owner a little
                    stop.set()
                stats = rc.stats()
                print(f"\nreshard: ops={ops} moved={stats.moved} ask={stats.ask} "
                      f"retries={stats.retries} errors={stats.errors}")  # fmt: skip
                assert failures == []
                assert stats.errors == {}
                assert stats.moved > 0 and stats.ask > 0
                # The client now routes the slot to the target directly.
                moved = stats.moved
                assert await rc.get("{mig}filler7") == b"7"
                assert rc.stats().moved == moved
                assert await target.execute("GET", "{mig}filler7") == b"7"
                # FLUSHALL reaches every primary (this cluster is the test's own).
                flushed = await rc.flushall()  # by node, as redis-py returns it
                assert flushed == {f"{h}:{p}": True for h, p in rc.topology.primaries}
                assert await rc.dbsize() == 0
                for primary in c.primaries:
                    assert await primary.execute("DBSIZE") == 0


# --- failover -----------------------------------------------------------------------------


async def test_primary_sigkill_under_load_errors_only_in_failover_window() -> None:
    with trio.fail_after(60):
        async with failover_cluster() as c:
            victim = c.shards[0].primary
            heir = c.shards[0].replicas[0]
            async with ClusterClient(
                startup_nodes=c.startup_nodes[:1], read_timeout=1.0, connect_timeout=0.5
            ) as rc:
                run = await kill_primary_under_load(c, rc)
                stats = rc.stats()
                errors, killed_at = run.errors, run.killed_at
                window = max((t for t, _ in errors), default=killed_at) - killed_at
                print(
                    f"\nfailover: errors reaching callers={len(errors)} {run.kinds()}, "
                    f"error window={window:.2f}s, failover took "
                    f"{run.failover_seconds:.2f}s, retries={stats.retries}, "
                    f"breaker rejections={stats.breaker_rejections}, "
                    f"ops after recovery={run.ops_after_recovery}"
                )
                for t, e in errors[:5]:
                    print(f"  at +{t - killed_at:.2f}s: {type(e).__name__}: {e}")
                assert all(t >= killed_at for t, _ in errors)
                assert window <= run.failover_seconds + 2.0  # errors only in the window
                assert len(errors) <= 20
                assert run.ops_after_recovery > 100
                assert f"127.0.0.1:{heir.port}" in stats.topology  # the heir is a primary now
                assert f"127.0.0.1:{victim.port}" not in stats.topology
                # The dead node left the map: its pool was retired and closed.
                assert f"127.0.0.1:{victim.port}" not in rc.node_names()


# --- address_remap --------------------------------------------------------------------------


async def test_address_remap_through_proxies_for_topology_and_moved() -> None:
    with trio.fail_after(40):
        async with LocalCluster(masters=3, replicas_per_master=0) as c:
            # Every node announces 127.0.0.2 as its endpoint (servers bind 127.0.0.1 only, so
            # that is refused).  The hostname endpoint is used rather than cluster-announce-ip:
            # the cluster bus keeps using the real IPs, so the cluster stays healthy.
            for node in c.nodes:
                await node.execute("CONFIG", "SET", "cluster-announce-hostname", "127.0.0.2")
                await node.execute("CONFIG", "SET", "cluster-preferred-endpoint-type", "hostname")
            # Poll (bounded) until every node describes every node at the unreachable address.
            with trio.fail_after(15):
                while True:
                    hosts = {text(r[2][0]) for n in c.nodes
                             for r in await n.execute("CLUSTER", "SLOTS")}  # fmt: skip
                    if hosts == {"127.0.0.2"}:
                        break
                    await trio.sleep(0.05)
            first = c.primaries[0]
            async with _proxied(c) as proxies:

                def remap(address: tuple[str, int]) -> tuple[str, int]:
                    if address[0] == "127.0.0.2":
                        return proxies.remap(("127.0.0.1", address[1]))
                    return address

                listen = {f"{h}:{p}" for h, p in (n.listen for n in proxies.nodes)}
                startup = [("127.0.0.2", first.port)]
                async with ClusterClient(startup_nodes=startup, address_remap=remap) as rc:
                    assert set(rc.node_names()) == listen
                    keys = [f"rm:{i}" for i in range(30)]
                    await rc.mset({k: k for k in keys})
                    assert await rc.mget(keys) == [k.encode() for k in keys]
                    # Move an empty slot behind the client's back: the next command gets
                    # MOVED 127.0.0.2:<port>, which only works if the target is remapped.
                    slot_map = await c.slot_map(first)
                    key = next(
                        k for k in (f"rm:moved{i}" for i in range(1000))
                        if _owner_port(slot_map, key_slot(k.encode())) == first.port
                    )  # fmt: skip
                    slot = key_slot(key.encode())
                    other = c.primaries[1]
                    for primary in c.primaries:
                        await primary.execute(
                            "CLUSTER", "SETSLOT", slot, "NODE", c.node_ids[other.port]
                        )
                    assert await rc.set(key, "x") is True
                    stats = rc.stats()
                    assert stats.moved == 1, stats
                    assert "unsent" not in stats.retries  # the remapped target answered at once
                    assert set(rc.node_names()) <= listen
                    assert await other.execute("GET", key) == b"x"
                    assert stats.errors == {}


# --- faults through proxies on the shared cluster -----------------------------------------


def _remap(proxies: NodeProxies) -> Any:
    return proxies.remap


def _keys_per_primary(rc: ClusterClient, prefix: str) -> dict[tuple[str, int], list[str]]:
    by_primary: dict[tuple[str, int], list[str]] = {p: [] for p in rc.topology.primaries}
    i = 0
    while any(len(v) < 3 for v in by_primary.values()):
        key = f"{prefix}{i}"
        shard = rc.topology.shard_for(key_slot(key.encode()))
        assert shard is not None
        if len(by_primary[shard.primary]) < 3:
            by_primary[shard.primary].append(key)
        i += 1
    return by_primary


async def test_pipeline_with_one_node_down(local_cluster: LocalCluster) -> None:
    with trio.fail_after(30):
        async with _proxied_client(
            local_cluster,
            retry=RetryOptions(budget=0.5),
            breaker=BreakerOptions(cooldown=0.2),
        ) as (proxies, rc):
            by_primary = _keys_per_primary(rc, "pd:")
            down_address, down_keys = next(iter(by_primary.items()))
            down = next(n for n in proxies.nodes if n.listen == down_address)
            order = [k for keys in by_primary.values() for k in keys]
            random.Random(1).shuffle(order)
            async with node_down(down):
                async with rc.pipeline() as p:
                    for key in order:
                        p.set(key, key)
                    results = await p.execute(raise_on_error=False)
                for key, result in zip(order, results, strict=True):
                    if key in down_keys:
                        assert isinstance(result, rex.ConnectionError), (key, result)
                    else:
                        assert result is True, (key, result)
                async with rc.pipeline() as p:
                    for key in order:
                        p.get(key)
                    try:
                        await p.execute()
                    except rex.ConnectionError as exc:
                        assert "of pipeline caused error" in str(exc)
                    else:
                        raise AssertionError("raise_on_error=True must raise")
            # The node is back.  It stays known bad until a probe gets through (one command,
            # after the breaker's cool-down): until then its commands fail at once, unsent.
            while True:
                try:
                    await rc.get(down_keys[0])
                    break
                except CircuitOpenError as refused:
                    assert refused.node == f"{down_address[0]}:{down_address[1]}"
                    await trio.sleep(0.02)
            # Readmitted: the same pipeline succeeds everywhere.
            async with rc.pipeline() as p:
                for key in order:
                    p.set(key, key)
                    p.get(key)
                results = await p.execute()
            assert results == [r for key in order for r in (True, key.encode())]
            await rc.delete(*order)


async def test_breaker_opens_fails_fast_and_closes(local_cluster: LocalCluster) -> None:
    with trio.fail_after(30):
        async with _proxied_client(
            local_cluster,
            retry=RetryOptions(budget=0.3),
            breaker=BreakerOptions(failure_threshold=3, cooldown=2.0),
        ) as (proxies, rc):
            by_primary = _keys_per_primary(rc, "br:")
            address, keys = next(iter(by_primary.items()))
            name = f"{address[0]}:{address[1]}"
            await rc.set(keys[0], "v")
            down = next(n for n in proxies.nodes if n.listen == address)
            async with node_down(down):
                for _ in range(3):
                    try:
                        await rc.get(keys[0])
                    except rex.ConnectionError:
                        pass
                    else:
                        raise AssertionError("the node is down")
                    if rc.breaker_state(name) is BreakerState.OPEN:
                        break
                assert rc.breaker_state(name) is BreakerState.OPEN
                stats = rc.stats()
                assert stats.breakers[name] == "open"
                assert (
                    stats.errors.get("CircuitOpenError", 0) + stats.errors.get("ConnectionError", 0)
                    >= 1
                )

                # While open, calls fail fast: they do not even ask the node's pool.
                def pool_gets() -> int:
                    node = rc.stats().nodes[name]
                    return node.hits + node.misses + node.waits

                gets = pool_gets()
                rejected = rc.stats().breaker_rejections
                with suppress(rex.ConnectionError):
                    await rc.get(keys[0])
                assert pool_gets() == gets
                assert rc.stats().breaker_rejections > rejected
                # Other nodes are unaffected.
                other = next(k for a, ks in by_primary.items() if a != address for k in ks)
                await rc.set(other, 1)
            # Back up: after the cool-down a probe goes through and closes the breaker.
            # Polling the client (bounded): each failed try is a breaker refusal, not a dial.
            while True:
                try:
                    assert await rc.get(keys[0]) == b"v"
                    break
                except rex.ConnectionError:
                    await trio.sleep(0.05)
            assert rc.breaker_state(name) is BreakerState.CLOSED
            assert rc.stats().breakers[name] == "closed"
            await rc.delete(keys[0], other)


async def test_replica_reads_fall_back_to_primary_and_follow_latency(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(30):
        async with _proxied(local_cluster) as proxies:
            replicas = [proxies[n.address] for n in local_cluster.nodes[3:]]
            primaries = [proxies[n.address] for n in local_cluster.primaries]
            keys = [f"rr:{i}" for i in range(12)]
            async with _via(proxies, local_cluster, read_from=ReadFrom.RANDOM) as rc:
                await rc.mset({k: 1 for k in keys})
                async with node_down(replicas):
                    for key in keys:
                        assert await rc.get(key) == b"1"
                stats = rc.stats()
                assert stats.retries.get("replica_fallback", 0) > 0
                assert stats.errors == {}
            # No re-probe during the test (its schedule is tested on the mock clock).
            lowest = {"read_from": ReadFrom.LOWEST_LATENCY, "latency_probe_interval": 600.0}
            async with _via(proxies, local_cluster, **lowest) as rc:

                def gets(nodes: list[Any]) -> int:
                    per_node = rc.stats().nodes
                    return sum(per_node[f"{h}:{p}"].hits + per_node[f"{h}:{p}"].misses
                               for h, p in (n.listen for n in nodes))  # fmt: skip

                # The injected latency must dwarf this machine's own noise, or a replica
                # measured during a scheduling stall loses to a primary: derive it from the
                # slowest of this run's own round trips (at least 20 ms).
                slowest = 0.0
                for _ in range(3):
                    for key in keys:
                        started = trio.current_time()
                        await rc.get(key)
                        slowest = max(slowest, trio.current_time() - started)
                inject_ms = min(1000, max(20, int(slowest * 4000)))
                async with latency(primaries, inject_ms):
                    before_p, before_r = gets(primaries), gets(replicas)
                    for _ in range(5):
                        for key in keys:
                            await rc.get(key)
                    on_p, on_r = gets(primaries) - before_p, gets(replicas) - before_r
                # Each primary is tried once (latency unknown), then the replicas win.
                assert on_r >= 5 * len(keys) - 3 and on_p <= 3, (on_p, on_r)
                async with latency(replicas, inject_ms):
                    for _ in range(3):  # let the moving average learn the replicas are slow
                        for key in keys:
                            await rc.get(key)
                    before_p, before_r = gets(primaries), gets(replicas)
                    for _ in range(5):
                        for key in keys:
                            await rc.get(key)
                    on_p, on_r = gets(primaries) - before_p, gets(replicas) - before_r
                assert on_p >= 5 * len(keys) - 3, (on_p, on_r)
            async with ClusterClient(startup_nodes=local_cluster.startup_nodes[:1]) as rc:
                await rc.delete(*keys)


async def test_refresh_falls_back_to_the_startup_nodes(local_cluster: LocalCluster) -> None:
    """Every node the client knows is down (behind its proxy): the topology still comes back,
    from a startup node reached another way."""
    with trio.fail_after(30):
        host, port = local_cluster.startup_nodes[0]
        # "localhost" is not in the remap table, so the startup node stays a direct address
        # while every node the cluster announces is reached through a proxy.
        async with (
            _proxied(local_cluster) as proxies,
            ClusterClient(startup_nodes=[("localhost", port)], address_remap=proxies.remap) as rc,
        ):
            assert host == "127.0.0.1"
            known = set(rc.node_names())
            assert known == {f"{h}:{p}" for h, p in (n.listen for n in proxies.nodes)}
            async with node_down(proxies.nodes):
                before = rc.stats()
                await rc.refresh()
                after = rc.stats()
            assert after.refreshes == before.refreshes + 1
            assert after.refresh_failures == before.refresh_failures
            assert set(rc.node_names()) == known  # the same map, fetched from localhost
