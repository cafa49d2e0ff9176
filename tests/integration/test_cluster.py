"""ClusterClient against the shared 3+3 cluster: every routing rule, multi-key splitting,
keyless commands, SCAN, pipelines, transactions and WATCH, replica reads, observability.

These tests never kill, pause or reshard: they only read and write their own keys (prefixed
``tc:``), so they can share the session cluster."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pytest
import trio
from redis.exceptions import ResponseError, WatchError

from trio_cluster import ClusterClient
from trio_cluster.clients.cluster import ReadFrom
from trio_cluster.errors import ClusterCrossSlotError
from trio_cluster.routing.rules import key_slot
from trio_cluster.testing import LocalCluster, LocalServer, parse_info


def _prefix() -> str:
    return f"tc:{uuid.uuid4().hex[:8]}:"


async def _owner(cluster: LocalCluster, key: str) -> int:
    """The port of the primary serving ``key``, as the cluster itself says."""
    slot = key_slot(key.encode())
    for r in await cluster.slot_map():
        if r.start <= slot <= r.end:
            return r.primary[1]
    raise AssertionError(f"slot {slot} is not served")


def _keys_on_every_shard(cluster: LocalCluster, prefix: str, per_shard: int = 2) -> list[str]:
    """Keys whose slots fall in each third of the slot space (the harness splits evenly)."""
    found: dict[int, list[str]] = {0: [], 1: [], 2: []}
    i = 0
    while any(len(v) < per_shard for v in found.values()):
        key = f"{prefix}{i}"
        third = min(key_slot(key.encode()) * 3 // 16384, 2)
        if len(found[third]) < per_shard:
            found[third].append(key)
        i += 1
    return [k for v in found.values() for k in v]


def _client(cluster: LocalCluster, **kwargs: object) -> ClusterClient:
    return ClusterClient(startup_nodes=cluster.startup_nodes[:1], **kwargs)  # type: ignore[arg-type]


async def _calls(node: LocalServer, command: str) -> int:
    stats = parse_info(await node.execute("INFO", "commandstats")).get(f"cmdstat_{command}")
    if stats is None:
        return 0
    return int(dict(f.split("=") for f in stats.split(","))["calls"])


async def test_keyed_commands_go_to_the_slot_owner(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        prefix = _prefix()
        keys = _keys_on_every_shard(local_cluster, prefix)
        async with _client(local_cluster) as rc:
            for key in keys:
                assert await rc.set(key, key) is True
            for key in keys:
                # The owner itself has the value (a plain connection: no redirect possible).
                assert await local_cluster.execute(
                    await _owner(local_cluster, key), "GET", key
                ) == (key.encode())
                assert await rc.get(key) == key.encode()
            # Hash tags keep multi-key commands in one slot.
            assert await rc.rpush(f"{{{prefix}}}l", 1, 2) == 2
            assert await rc.lmove(f"{{{prefix}}}l", f"{{{prefix}}}m") == b"1"
            # A subcommand with a key (OBJECT ENCODING) and a movable-key command (EVAL).
            for key in keys:
                assert await rc.object("encoding", key) in (b"embstr", b"raw")
                assert await rc.eval("return redis.call('GET', KEYS[1])", 1, key) == key.encode()
            # MIGRATE's keys are found by COMMAND GETKEYS: an empty MIGRATE to nowhere answers
            # NOKEY from the owner rather than MOVED from a wrong node.
            assert (
                await rc.execute_command(
                    "MIGRATE", "127.0.0.1", 1, "", 0, 100, "KEYS", f"{prefix}missing"
                )
                == b"NOKEY"
            )
            stats = rc.stats()
            assert stats.moved == 0 and stats.ask == 0, stats  # every command went straight
            assert stats.errors == {}
            assert len(stats.nodes) == 6 and len(stats.topology) == 3
            assert stats.totals["hits"] + stats.totals["misses"] > 0
            conns = rc.connections()
            assert {c.node for c in conns} >= {
                f"127.0.0.1:{p.port}" for p in local_cluster.primaries
            }
            await rc.delete(*keys)


async def test_cross_slot_is_refused_before_sending(local_cluster: LocalCluster) -> None:
    with trio.fail_after(10):
        prefix = _prefix()
        a, b, *_ = _keys_on_every_shard(local_cluster, prefix, 1)
        async with _client(local_cluster) as rc:
            with pytest.raises(ClusterCrossSlotError):
                await rc.rename(a, b)
            with pytest.raises(ClusterCrossSlotError):
                await rc.eval("return redis.call('SET', KEYS[1], 1)", 2, a, b)
            assert await rc.exists(a) == 0  # nothing ran
            assert rc.stats().errors == {"CrossSlotKeysError": 2}  # a ClusterCrossSlotError too


async def test_multi_key_commands_split_per_slot_in_order(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        prefix = _prefix()
        keys = _keys_on_every_shard(local_cluster, prefix, 3)
        async with _client(local_cluster) as rc:
            mapping = {k: f"v{i}" for i, k in enumerate(keys)}
            assert await rc.mset(mapping) is True
            missing = f"{prefix}missing"
            order = [keys[5], missing, keys[0], keys[8], keys[3]]
            assert await rc.mget(order) == [mapping[k].encode() if k in mapping else None
                                            for k in order]  # fmt: skip
            assert await rc.exists(*keys, missing) == len(keys)
            assert await rc.touch(*keys[:4]) == 4
            assert await rc.unlink(*keys[:3]) == 3
            assert await rc.delete(*keys, missing) == len(keys) - 3
            assert await rc.mget(keys) == [None] * len(keys)
            for key in keys:  # the servers agree
                assert (
                    await local_cluster.execute(await _owner(local_cluster, key), "EXISTS", key)
                    == 0
                )
            assert rc.stats().moved == 0


async def test_keyless_commands_and_scan(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        prefix = _prefix()
        keys = _keys_on_every_shard(local_cluster, prefix, 2)
        async with _client(local_cluster) as rc:
            await rc.mset({k: 1 for k in keys})
            assert await rc.ping() is True
            # DBSIZE is the sum over every primary, KEYS the union.
            sizes = [await p.execute("DBSIZE") for p in local_cluster.primaries]
            assert await rc.dbsize() == sum(sizes)
            assert sorted(await rc.keys(f"{prefix}*")) == sorted(k.encode() for k in keys)
            # SCRIPT LOAD reaches every primary.
            sha = await rc.script_load(f"return '{prefix}'")
            for primary in local_cluster.primaries:
                assert await primary.execute("SCRIPT", "EXISTS", sha) == [1]
            assert await rc.evalsha(sha, 0) == prefix.encode()
            # SCAN iterates over every primary.
            found = [k async for k in rc.scan_iter(match=f"{prefix}*", count=100)]
            assert sorted(found) == sorted(k.encode() for k in keys)
            # CLUSTER COUNTKEYSINSLOT goes to the owner of the slot named in its argument.
            slot = key_slot(keys[-1].encode())
            assert await rc.execute_command("CLUSTER COUNTKEYSINSLOT", slot) >= 1
            # target_nodes= as in redis-py.
            pings = await rc.execute_command("PING", target_nodes="all")
            assert pings is True or (isinstance(pings, dict) and len(pings) == 6)
            assert rc.stats().moved == 0
            await rc.delete(*keys)


async def test_pipeline_across_nodes_keeps_order(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        prefix = _prefix()
        keys = _keys_on_every_shard(local_cluster, prefix, 2)
        async with _client(local_cluster) as rc:
            async with rc.pipeline() as p:
                for i, key in enumerate(keys):
                    p.set(key, i)
                    p.get(key)
                p.incr(keys[0])  # a command that fails on the server: its error, in place
                p.lpush(keys[1], 1)
                p.get(keys[2])
                results = await p.execute(raise_on_error=False)
            expected: list[object] = []
            for i in range(len(keys)):
                expected += [True, str(i).encode()]
            assert results[: len(expected)] == expected
            assert results[-3] == 1
            assert isinstance(results[-2], ResponseError) and "WRONGTYPE" in str(results[-2])
            assert results[-1] == b"2"
            async with rc.pipeline() as p:
                p.get(keys[0])
                p.lpush(keys[1], 1)
                with pytest.raises(ResponseError, match="Command # 2"):
                    await p.execute()
            await rc.delete(*keys)


async def test_transaction_in_one_slot_and_cross_slot_refused(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        prefix = _prefix()
        a, b, *_ = _keys_on_every_shard(local_cluster, prefix, 1)
        tag = f"{{{prefix}}}"
        async with _client(local_cluster) as rc:
            async with rc.pipeline(transaction=True) as p:
                p.set(f"{tag}x", 1)
                p.incr(f"{tag}x")
                p.get(f"{tag}x")
                assert await p.execute() == [True, 2, b"2"]
            async with rc.pipeline(transaction=True) as p:
                p.set(a, 1)
                p.set(b, 1)
                with pytest.raises(ClusterCrossSlotError):
                    await p.execute()
            assert await rc.exists(a, b) == 0  # refused before anything was sent
            await rc.delete(f"{tag}x")


async def test_watch_holds_a_connection_and_detects_changes(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        tag = f"{{{_prefix()}}}"
        counter, other = f"{tag}counter", f"{tag}other"
        async with _client(local_cluster) as rc:
            await rc.set(counter, 10)
            owner = f"127.0.0.1:{await _owner(local_cluster, counter)}"
            # Success: WATCH, read at once, MULTI, write.
            async with rc.pipeline(transaction=True) as p:
                assert await p.watch(counter) is True
                assert p.watching
                assert rc.stats().nodes[owner].in_use_connections == 1  # held while watching
                value = int(await p.get(counter))
                p.multi()
                p.set(counter, value + 1)
                p.set(other, "x")
                assert await p.execute() == [True, True]
            assert not p.watching
            assert rc.stats().nodes[owner].in_use_connections == 0
            assert await rc.get(counter) == b"11"
            # Conflict: another client changes the watched key between WATCH and EXEC.
            async with rc.pipeline(transaction=True) as p:
                await p.watch(counter)
                await local_cluster.execute(
                    await _owner(local_cluster, counter), "SET", counter, 99
                )
                p.multi()
                p.set(counter, 0)
                with pytest.raises(WatchError):
                    await p.execute()
            assert await rc.get(counter) == b"99"
            # Watching keys of two slots, or queueing a key of another slot, is refused.
            async with rc.pipeline(transaction=True) as p:
                with pytest.raises(ClusterCrossSlotError):
                    await p.watch(counter, f"{_prefix()}elsewhere")
                await p.watch(counter)
                p.multi()
                p.set(f"{_prefix()}elsewhere", 1)
                with pytest.raises(ClusterCrossSlotError):
                    await p.execute()
            assert sum(s.in_use_connections for s in rc.stats().nodes.values()) == 0

            # transaction(): retried until no conflict; the first attempt is spoiled.
            attempts = 0

            async def incr(pipe: object) -> None:
                nonlocal attempts
                attempts += 1
                value = int(await pipe.get(counter))  # type: ignore[attr-defined]
                if attempts == 1:
                    await local_cluster.execute(
                        await _owner(local_cluster, counter), "INCR", counter
                    )
                pipe.multi()  # type: ignore[attr-defined]
                pipe.set(counter, value + 1)  # type: ignore[attr-defined]

            assert await rc.transaction(incr, counter) == [True]
            assert attempts == 2
            assert await rc.get(counter) == b"101"
            await rc.delete(counter, other)


async def _replica_reads(
    cluster: LocalCluster, read_from: ReadFrom, keys: Sequence[str]
) -> tuple[int, int]:
    """(GETs served by primaries, GETs served by replicas) for 30 reads of each key."""
    before = [await _calls(n, "get") for n in cluster.nodes]
    async with _client(cluster, read_from=read_from) as rc:
        for _ in range(30):
            for key in keys:
                assert await rc.get(key) == b"1"
        assert rc.stats().moved == 0 and rc.stats().errors == {}
    after = [await _calls(n, "get") for n in cluster.nodes]
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    primaries = len(cluster.primaries)
    return sum(deltas[:primaries]), sum(deltas[primaries:])


async def test_replica_read_strategies(local_cluster: LocalCluster) -> None:
    with trio.fail_after(30):
        prefix = _prefix()
        keys = _keys_on_every_shard(local_cluster, prefix, 1)
        async with _client(local_cluster) as rc:
            await rc.mset({k: 1 for k in keys})
            # Replicas acknowledge the writes before we read from them (bounded by WAIT).
            for key in keys:
                owner = local_cluster.node(await _owner(local_cluster, key))
                assert await owner.execute("WAIT", 1, 2000) == 1
        total = 30 * len(keys)
        assert await _replica_reads(local_cluster, ReadFrom.PRIMARY, keys) == (total, 0)
        assert await _replica_reads(local_cluster, ReadFrom.RANDOM, keys) == (0, total)
        on_primaries, on_replicas = await _replica_reads(local_cluster, ReadFrom.ROUND_ROBIN, keys)
        assert on_primaries + on_replicas == total
        assert abs(on_primaries - on_replicas) <= len(keys) + 1  # alternates primary, replica
        on_primaries, on_replicas = await _replica_reads(
            local_cluster, ReadFrom.LOWEST_LATENCY, keys
        )
        assert on_primaries + on_replicas == total and on_replicas > 0
        # Connections to replicas said READONLY (flag "r" in CLIENT LIST).
        async with _client(local_cluster, read_from="random") as rc:
            await rc.get(keys[0])
            replica = local_cluster.node(
                rc.topology.shard_for(key_slot(keys[0].encode())).replicas[0][1]
            )  # type: ignore[union-attr]
            lists = (await replica.execute("CLIENT", "LIST")).decode()
            assert any("flags=r " in line and "cmd=get" in line for line in lists.splitlines())
            await rc.delete(*keys)


async def test_from_url_and_host_port(local_cluster: LocalCluster) -> None:
    with trio.fail_after(10):
        host, port = local_cluster.startup_nodes[-1]  # a replica is a fine starting point
        async with ClusterClient.from_url(f"redis://{host}:{port}/0") as rc:
            assert len(rc.topology.primaries) == 3
            assert await rc.ping() is True
        async with ClusterClient(host, port) as rc:
            assert rc.topology.covered == 16384
        # An unreachable startup node next to a good one is skipped.
        async with ClusterClient(startup_nodes=[("127.0.0.1", 1), (host, port)]) as rc:
            assert rc.topology.covered == 16384


async def test_cluster_slots_fallback(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server without CLUSTER SHARDS (Redis < 7): the topology comes from CLUSTER SLOTS."""
    from trio_cluster.conn.connection import Connection
    from trio_cluster.errors import UnknownCommandError

    real_execute = Connection.execute
    asked: list[str] = []

    async def execute(self: Connection, args: Sequence[object], **kwargs: object) -> object:
        if [str(a).upper() for a in args[:2]] == ["CLUSTER", "SHARDS"]:
            asked.append("SHARDS")
            raise UnknownCommandError("ERR unknown subcommand 'SHARDS'")
        if [str(a).upper() for a in args[:2]] == ["CLUSTER", "SLOTS"]:
            asked.append("SLOTS")
        return await real_execute(self, args, **kwargs)  # type: ignore[arg-type]

    with trio.fail_after(10):
        async with _client(local_cluster) as rc:
            expected = rc.topology
        monkeypatch.setattr(Connection, "execute", execute)
        async with _client(local_cluster) as rc:
            assert asked == ["SHARDS", "SLOTS"]
            assert set(rc.topology.shards) == set(expected.shards)  # replicas included
            assert rc.topology.covered == 16384
            key = _prefix()
            assert await rc.set(key, 1) is True
            assert rc.stats().moved == 0
            await rc.delete(key)


async def test_refresh_is_single_flight_rate_limited_and_periodic(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(10):
        async with _client(local_cluster, refresh_min_interval=0.2) as rc:
            before = rc.stats().refreshes
            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(rc.refresh)
            # 50 concurrent requests: one refresh (two if one was already due), not 50.
            assert 1 <= rc.stats().refreshes - before <= 2
        async with _client(local_cluster, refresh_interval=0.05, refresh_min_interval=0.01) as rc:
            # Polling the client's counter (bounded): nothing else says a refresh happened.
            while rc.stats().refreshes < 4:  # noqa: ASYNC110
                await trio.sleep(0.02)
            assert rc.stats().refresh_failures == 0


async def test_function_load_reaches_every_primary(local_cluster: LocalCluster) -> None:
    with trio.fail_after(10):
        library = f"lib{uuid.uuid4().hex[:8]}"
        code = (
            f"#!lua name={library}\n"
            f"redis.register_function('{library}_echo', function(keys, args) return args[1] end)"
        )
        async with _client(local_cluster) as rc:
            # As in redis-py, the replies of every primary come back by node.
            loaded = await rc.function_load(code)
            assert loaded == {f"{h}:{p}": library.encode() for h, p in rc.topology.primaries}
            for primary in local_cluster.primaries:
                listed = await primary.execute("FUNCTION", "LIST", "LIBRARYNAME", library)
                assert len(listed) == 1
            assert await rc.fcall(f"{library}_echo", 1, f"{_prefix()}k", "hi") == b"hi"
            await rc.function_delete(library)
            for primary in local_cluster.primaries:
                assert await primary.execute("FUNCTION", "LIST", "LIBRARYNAME", library) == []
