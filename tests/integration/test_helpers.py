"""redis-py's helpers the trio way, on real servers: lock() under cancellation and contention,
monitor(), PubSub ping/get_message(timeout=)/listen(), scripts queued on a cluster pipeline,
cluster PUBLISH counting its subscriber, target_nodes=, and callbacks by full command name.
(Reply shapes against redis-py itself are in tests/differential.)"""

from __future__ import annotations

import pytest
import redis
import trio
from conflict import ConflictOnce
from redis.exceptions import LockError, LockNotOwnedError, RedisClusterException

from trio_cluster import Client, ClusterClient
from trio_cluster.clients.clusterhelpers import ClusterNode
from trio_cluster.testing import LocalCluster, LocalServer


def _client(server: LocalServer) -> Client:
    return Client(server.host, server.port)


def _cluster(cluster: LocalCluster) -> ClusterClient:
    return ClusterClient(startup_nodes=cluster.startup_nodes)


# --- lock ----------------------------------------------------------------------------------


async def test_lock_excludes_concurrent_holders(local_server: LocalServer) -> None:
    with trio.fail_after(20):
        async with _client(local_server) as r:
            await r.delete("helpers:lock:mutex")
            inside = 0
            most = 0
            done = 0

            async def worker() -> None:
                nonlocal inside, most, done
                async with r.lock("helpers:lock:mutex", timeout=10, sleep=0.005):
                    inside += 1
                    most = max(most, inside)
                    await trio.lowlevel.checkpoint()  # let the others try meanwhile
                    await r.ping()
                    inside -= 1
                done += 1

            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(worker)
            assert (most, done) == (1, 6)
            assert await r.exists("helpers:lock:mutex") == 0


async def test_cancelled_block_still_releases_the_lock(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            await r.delete("helpers:lock:cancel")
            with trio.CancelScope() as scope:
                async with r.lock("helpers:lock:cancel", timeout=30) as lock:
                    assert await lock.owned()
                    scope.cancel()
                    await trio.sleep_forever()
            assert scope.cancelled_caught
            assert await r.exists("helpers:lock:cancel") == 0
            assert lock.token is None


async def test_acquire_waits_as_long_as_the_cancel_scope_allows(
    local_server: LocalServer,
) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            await r.set("helpers:lock:held", "another-holder")
            lock = r.lock("helpers:lock:held", sleep=0.01)
            with trio.move_on_after(0.1) as scope:
                await lock.acquire()  # blocking_timeout=None: only the scope ends the wait
            assert scope.cancelled_caught and lock.token is None
            assert await lock.acquire(blocking_timeout=0.05) is False
            with pytest.raises(LockError, match="Unable to acquire"):
                async with r.lock("helpers:lock:held", blocking_timeout=0.02, sleep=0.01):
                    pytest.fail("acquired a lock someone else holds")
            assert await r.get("helpers:lock:held") == b"another-holder"
            await r.delete("helpers:lock:held")


async def test_lock_interoperates_with_redis_py(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            await r.delete("helpers:lock:interop")
            reference = redis.Redis(local_server.host, local_server.port)
            theirs = reference.lock("helpers:lock:interop", timeout=30)
            try:
                assert await trio.to_thread.run_sync(theirs.acquire)
                ours = r.lock("helpers:lock:interop", timeout=30)
                assert await ours.acquire(blocking=False) is False
                await trio.to_thread.run_sync(theirs.release)
                assert await ours.acquire(blocking=False) is True
                assert await trio.to_thread.run_sync(theirs.locked)
                await ours.release()
            finally:
                reference.close()


async def test_expired_lock_raises_not_owned(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r:
            await r.delete("helpers:lock:expired")
            lock = r.lock("helpers:lock:expired", timeout=30)
            assert await lock.acquire()
            await r.delete("helpers:lock:expired")  # as if it had expired
            with pytest.raises(LockNotOwnedError):
                await lock.extend(1)
            with pytest.raises(LockNotOwnedError):
                await lock.release()


# --- monitor, pub/sub ----------------------------------------------------------------------


async def test_monitor_on_a_cluster_watches_the_default_node(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            async with rc.monitor() as monitor:
                await rc.echo("helpers-monitor-marker")  # keyless: the default node
                while True:
                    entry = await monitor.next_command()
                    if "helpers-monitor-marker" in entry["command"]:
                        break
            assert entry["command"] == "ECHO helpers-monitor-marker"
            assert entry["client_type"] == "tcp" and isinstance(entry["time"], float)
            assert await rc.ping() is True  # the dedicated connection never touched a pool
            # A chosen node: a key's primary sees the key's command.
            owner = rc.get_node_from_key("helpers:monitored")
            assert owner is not None
            async with rc.monitor(target_node=owner) as monitor:
                await rc.set("helpers:monitored", "1")
                while True:
                    entry = await monitor.next_command()
                    if "helpers:monitored" in entry["command"]:
                        break
            assert entry["command"] == "SET helpers:monitored 1"


async def test_pubsub_ping_and_nonblocking_get(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r, r.pubsub() as p:
            assert await p.get_message(timeout=0) is None
            await p.ping()  # before any subscription: opens the connection
            pong = await p.get_message(timeout=5)
            assert pong is not None and pong["type"] == "pong"
            await p.subscribe("helpers:ch")
            assert (await p.get_message(timeout=5) or {})["type"] == "subscribe"
            await p.ping("payload")
            assert await p.get_message(timeout=5) == {
                "type": "pong",
                "pattern": None,
                "channel": None,
                "data": b"payload",
            }
            await r.publish("helpers:ch", "m")
            async for message in p.listen():
                assert message["data"] == b"m"
                break
            await p.aclose()
            assert [m async for m in p.listen()] == []  # listen() ends once closed


async def test_cluster_publish_counts_subscribers_of_every_slot(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            channels = [f"helpers:count:{i}" for i in range(12)]
            assert len({rc.keyslot(c) for c in channels}) == 12
            for channel in channels:
                async with rc.pubsub() as p:
                    await p.subscribe(channel)
                    assert (await p.get_message(timeout=5) or {})["type"] == "subscribe"
                    assert await rc.publish(channel, "x") == 1
                    assert (await p.get_message(timeout=5) or {})["data"] == b"x"


# --- scripts, pipelines, cluster helpers -----------------------------------------------------


async def test_script_on_a_cluster_pipeline_is_loaded_first(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            script = rc.register_script("return 'loaded ' .. KEYS[1]")
            await rc.script_flush()  # every primary, as redis-py routes it
            async with rc.pipeline() as pipe:
                await script(keys=["helpers:a"], client=pipe)
                await script(keys=["helpers:b"], client=pipe)
                assert await pipe.execute() == [b"loaded helpers:a", b"loaded helpers:b"]
            # On the client itself: same sha, no NOSCRIPT.
            assert await script(keys=["helpers:c"]) == b"loaded helpers:c"
            # Registered on a transaction pipeline: its calls queue there.
            await rc.script_flush()
            async with rc.pipeline(transaction=True) as pipe:
                queued = pipe.register_script("return 'tx ' .. KEYS[1]")
                assert await queued(keys=["{helpers}:d"]) is pipe
                pipe.get("{helpers}:d")
                assert await pipe.execute() == [b"tx {helpers}:d", None]


async def test_target_nodes_forms(local_cluster: LocalCluster) -> None:
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            primaries = rc.get_primaries()
            replicas = rc.get_replicas()
            assert len(primaries) == 3 and len(replicas) == 3
            assert all(isinstance(n, ClusterNode) for n in [*primaries, *replicas])
            by_name = await rc.ping(target_nodes=primaries)
            assert by_name is True  # PING's results are combined as redis-py combines them
            times = await rc.time(target_nodes=primaries)
            assert sorted(times) == sorted(n.name for n in primaries)
            one = await rc.time(target_nodes=primaries[0])
            assert isinstance(one, tuple)
            mapping = {n.name: n for n in replicas}
            assert sorted(await rc.time(target_nodes=mapping)) == sorted(mapping)
            with pytest.raises(RedisClusterException):
                await rc.ping(target_nodes=ClusterNode("127.0.0.1", 1))
            with pytest.raises(TypeError):
                await rc.ping(target_nodes=42)
            # In a pipeline, as redis-py's helpers queue commands: routing stays by slot and
            # the option never reaches the reply's callback.
            await rc.sadd("helpers:tn", "m")
            owner = rc.get_node_from_key("helpers:tn")
            async with rc.pipeline() as pipe:
                pipe.execute_command("SMEMBERS", "helpers:tn", target_nodes=[owner])
                assert await pipe.execute() == [{b"m"}]


async def test_set_response_callback_by_full_name_on_a_cluster(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            rc.set_response_callback("CLUSTER SLOTS", lambda reply, **_: len(reply))
            assert await rc.cluster_slots() == 3
            assert await rc.execute_command("CLUSTER SLOTS") == 3
            raw = await rc.execute_command("CLUSTER", "SLOTS")  # no callback: "CLUSTER"
            assert isinstance(raw, list) and len(raw) == 3


async def test_transaction_with_watch_delay_retries_until_it_commits(
    local_server: LocalServer,
) -> None:
    with trio.fail_after(20):
        async with _client(local_server) as r:
            await r.set("helpers:tx", 0)
            bump = ConflictOnce(r, "helpers:tx", spoil=1, add=10)
            seen = await r.transaction(
                bump, "helpers:tx", value_from_callable=True, watch_delay=0.01
            )
            assert (bump.attempts, seen, await r.get("helpers:tx")) == (2, 1, b"11")


async def test_pubsub_run_gives_every_message_to_its_handler(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with _client(local_server) as r, r.pubsub() as p:
            received: list[bytes] = []
            failures: list[str] = []
            done = trio.Event()

            async def handler(message: dict[str, object]) -> None:
                data = message["data"]
                assert isinstance(data, bytes)
                if data == b"boom":
                    raise ValueError("handler failed")
                received.append(data)
                if len(received) == 2:
                    done.set()

            def on_error(error: BaseException, pubsub: object) -> None:
                failures.append(f"{type(error).__name__}: {error}")

            # Each confirmation read before going on: the server has done each step.
            await p.subscribe(**{"helpers:run": handler})
            assert (await p.get_message(timeout=5) or {}).get("type") == "subscribe"
            await p.subscribe("helpers:run:nohandler")
            assert (await p.get_message(timeout=5) or {}).get("type") == "subscribe"
            with pytest.raises(redis.exceptions.PubSubError, match="no handler"):
                await p.run()
            await p.unsubscribe("helpers:run:nohandler")
            assert (await p.get_message(timeout=5) or {}).get("type") == "unsubscribe"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: p.run(exception_handler=on_error))
                for data in ("one", "boom", "two"):
                    await r.publish("helpers:run", data)
                await done.wait()
                nursery.cancel_scope.cancel()
            assert received == [b"one", b"two"]
            assert failures == ["ValueError: handler failed"]
            # A closed PubSub ends run() instead of spinning on the error.
            await p.aclose()
            await p.run()


# --- the merge of the two halves: conversion, encoding and full-name parsing together -----


async def test_converted_argument_keeps_the_full_command_name(
    local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    """A bytearray argument makes the client convert and resend; the reply is still parsed by
    "CONFIG GET" (a dict), not by the first word sent."""
    with trio.fail_after(20):
        async with _client(local_server) as r, _cluster(local_cluster) as rc:
            for client in (r, rc):
                reply = await client.config_get(bytearray(b"maxmemory"))
                assert isinstance(reply, dict) and set(reply) == {"maxmemory"}, reply


async def test_non_utf8_encoding_splits_and_routes_like_utf8(
    local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    """With encoding="latin-1" every str is encoded by the client: a two-word command still
    goes out as two words, a cross-slot MSET is still split, and replies decode back."""
    keys = {"helpers:enc:{a}é": "à", "helpers:enc:{b}é": "ü"}
    with trio.fail_after(20):
        async with (
            Client(local_server.host, local_server.port, encoding="latin-1",
                   decode_responses=True) as r,
            ClusterClient(startup_nodes=local_cluster.startup_nodes, encoding="latin-1",
                          decode_responses=True) as rc,
        ):  # fmt: skip
            for client in (r, rc):
                assert set(await client.config_get("maxmemory")) == {"maxmemory"}
                assert await client.mset(keys) is True
                assert await client.mget(list(keys)) == list(keys.values())
                assert await client.delete(*keys) == 2
