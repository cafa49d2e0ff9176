"""PubSub against real servers: standalone and cluster, classic, pattern and sharded
subscriptions, deadlines, dropped connections, a failover, a slot move, cancellation and the
bound on pub/sub connections.

Tests that kill connections or nodes, or move slots, use servers of their own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from trio_cluster import Client, ClusterClient
from trio_cluster.clients.pubsub import PubSub, PubSubLimitError, PubSubRegistry
from trio_cluster.routing.rules import key_slot
from trio_cluster.testing import LocalCluster, LocalServer, live_tasks


@pytest.fixture(scope="module")
def own_server() -> Iterator[LocalServer]:
    """A standalone server whose pub/sub connections these tests may kill."""
    with LocalServer() as server:
        yield server


def _tag() -> str:
    return uuid.uuid4().hex[:8]


async def _next(ps: PubSub) -> dict[str, Any]:
    """The next message in the stream (waiting for it: ``timeout=None``)."""
    message = await ps.get_message(timeout=None)
    assert message is not None  # nothing here is ignored or given to a handler
    return message


async def _expect(ps: PubSub, kind: str) -> dict[str, Any]:
    """The next message, which must be of ``kind``."""
    message = await _next(ps)
    assert message["type"] == kind, message
    return message


async def _until(ps: PubSub, kind: str, channel: bytes | None = None) -> list[dict[str, Any]]:
    """Messages up to and including the first of ``kind`` (on ``channel``, if given)."""
    seen = []
    while True:
        message = await _next(ps)
        seen.append(message)
        if message["type"] == kind and (channel is None or message["channel"] == channel):
            return seen


def _channels_on_every_shard(cluster: LocalCluster, prefix: str) -> list[str]:
    """One channel per shard (the harness splits the slot space in even thirds)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(cluster.shards):
        name = f"{prefix}{i}"
        found.setdefault(min(key_slot(name.encode()) * 3 // 16384, 2), name)
        i += 1
    return [found[k] for k in sorted(found)]


async def _owner(cluster: LocalCluster, channel: str) -> LocalServer:
    slot = key_slot(channel.encode())
    for r in await cluster.slot_map():
        if r.start <= slot <= r.end:
            return cluster.node(r.primary[1])
    raise AssertionError(f"slot {slot} is not served")


async def _pubsub_clients(server: LocalServer) -> int:
    """Connections in subscribed mode on ``server`` (CLIENT LIST TYPE pubsub)."""
    listing = (await server.execute("CLIENT", "LIST", "TYPE", "pubsub")).decode()
    return len([line for line in listing.splitlines() if line.strip()])


# --- standalone ------------------------------------------------------------------------------


async def test_subscribe_psubscribe_unsubscribe_in_order(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        tag = _tag()
        a, b, pattern = f"{tag}:a", f"{tag}:b", f"{tag}:p:*"
        async with Client(local_server.host, local_server.port) as r, r.pubsub() as ps:
            await ps.subscribe(a, b)
            await ps.psubscribe(pattern)
            assert (await _expect(ps, "subscribe"))["channel"] == a.encode()
            assert (await _expect(ps, "subscribe"))["channel"] == b.encode()
            confirmed = await _expect(ps, "psubscribe")
            assert confirmed == {"type": "psubscribe", "pattern": None,
                                 "channel": pattern.encode(), "data": 3}  # fmt: skip
            assert ps.subscribed and ps.channels == {a.encode(): None, b.encode(): None}
            sent = []
            for i in range(30):
                channel = (a, b, f"{tag}:p:{i}")[i % 3]
                assert await r.publish(channel, f"m{i}") == 1
                sent.append((channel.encode(), f"m{i}".encode()))
            received = [await _next(ps) for _ in sent]
            # One connection, so the server's order is kept exactly.
            assert [(m["channel"], m["data"]) for m in received] == sent
            assert received[0] == {"type": "message", "pattern": None,
                                   "channel": a.encode(), "data": b"m0"}  # fmt: skip
            assert received[2]["type"] == "pmessage"
            assert received[2]["pattern"] == pattern.encode()

            await ps.unsubscribe(a)
            assert (await _expect(ps, "unsubscribe"))["channel"] == a.encode()
            assert await r.publish(a, "lost") == 0  # nobody listens to ``a`` any more
            assert await r.publish(b, "kept") == 1
            assert (await _next(ps))["data"] == b"kept"
            await ps.punsubscribe()
            assert (await _expect(ps, "punsubscribe"))["channel"] == pattern.encode()
            await ps.unsubscribe()
            assert (await _expect(ps, "unsubscribe"))["channel"] == b.encode()
            assert not ps.subscribed
            assert ps.stats().messages == 31
            assert r.stats().total_connections <= 1  # the pub/sub connection is not pooled


async def _poll(ps: PubSub) -> tuple[dict[str, Any], int]:
    """Poll as a redis-py loop does, with no sleep between calls: the next message, and how
    many calls returned None before it (bounded, so a poll that starves the link tasks
    fails instead of spinning forever)."""
    for empty in range(1_000_000):
        message = await ps.get_message()
        if message is not None:
            return message, empty
    raise AssertionError("a million polls and no message: the link tasks never ran")


async def test_get_message_returns_at_once_or_waits_as_asked(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        channel = f"{_tag()}:deadline"
        async with Client(local_server.host, local_server.port) as r, r.pubsub() as ps:
            assert await ps.get_message() is None  # nothing subscribed: None, at once
            await ps.subscribe(channel)
            # No timeout: each call returns at once (None while nothing has come), as
            # redis-py's; the confirmation comes once the server has sent it.
            confirmation, _ = await _poll(ps)
            assert confirmation["type"] == "subscribe"
            assert await ps.get_message() is None  # nothing published
            assert await ps.get_message(timeout=0) is None
            assert await ps.get_message(timeout=0.05) is None  # waited, nothing came
            # timeout=None: the caller's cancel scope bounds the wait.
            message = None
            with trio.move_on_after(0.2) as scope:
                message = await ps.get_message(timeout=None)
            assert scope.cancelled_caught and message is None
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(0.1):
                    await ps.get_message(timeout=None)
            # The waits that ran out lost nothing: the next message is still delivered.
            assert await r.publish(channel, "late") == 1
            late, _ = await _poll(ps)
            assert late["data"] == b"late"
            assert await r.publish(channel, "timed") == 1
            assert (await ps.get_message(timeout=5) or {}).get("data") == b"timed"
            # One message taken per call: an ignored confirmation makes it return None.
            await ps.unsubscribe(channel)
            assert await ps.get_message(ignore_subscribe_messages=True, timeout=5) is None
            assert await ps.get_message() is None


async def test_channels_and_patterns_are_decoded_as_redis_py(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        tag = _tag()
        handler_calls: list[dict[str, Any]] = []
        for decode, name in ((False, lambda s: s.encode()), (True, lambda s: s)):
            async with (
                Client(local_server.host, local_server.port, decode_responses=decode) as r,
                r.pubsub() as ps,
            ):
                await ps.subscribe(f"{tag}:a", **{f"{tag}:b": handler_calls.append})
                await ps.psubscribe(f"{tag}:*")
                await ps.ssubscribe(f"{tag}:s")
                assert ps.channels == {
                    name(f"{tag}:a"): None,
                    name(f"{tag}:b"): handler_calls.append,
                }
                assert ps.patterns == {name(f"{tag}:*"): None}
                assert ps.shard_channels == {name(f"{tag}:s"): None}
                await ps.unsubscribe(f"{tag}:a")
                assert list(ps.channels) == [name(f"{tag}:b")]


async def test_listen_ends_once_nothing_is_subscribed(own_server: LocalServer) -> None:
    with trio.fail_after(10):
        channel = f"{_tag()}:listen"
        async with (
            Client(own_server.host, own_server.port) as r,
            r.pubsub() as ps,
            trio.open_nursery() as nursery,
        ):
            assert [m async for m in ps.listen()] == []  # nothing subscribed: ends at once

            async def resume_once_all_wait() -> None:
                # The listener has decided whether to wait for the confirmation.
                await trio.testing.wait_all_tasks_blocked()
                own_server.resume()

            await ps.subscribe(channel)
            seen = []
            try:
                async for message in ps.listen():
                    seen.append((message["type"], message["data"]))
                    if message["type"] == "subscribe":
                        assert await r.publish(channel, "last") == 1
                    elif message["type"] == "message":
                        own_server.pause()  # the confirmation comes only once listen() waits
                        nursery.start_soon(resume_once_all_wait)
                        await ps.unsubscribe()
            finally:
                own_server.resume()  # (again, if the test failed: the next tests need it)
            # As redis-py: the unsubscribe confirmation is given, then the loop ends.
            assert seen == [("subscribe", 1), ("message", b"last"), ("unsubscribe", 0)]


async def test_listen_ends_when_the_confirmation_it_waits_for_cannot_come(
    own_server: LocalServer,
) -> None:
    with trio.fail_after(15):
        channel = f"{_tag()}:owed"
        async with (
            Client(own_server.host, own_server.port, socket_timeout=0.5) as r,
            r.pubsub() as ps,
        ):
            await ps.subscribe(channel)
            await _expect(ps, "subscribe")
            own_server.pause()  # the UNSUBSCRIBE is sent and never answered
            try:
                await ps.unsubscribe(channel)
                # The link gives up after the read timeout: its confirmation will not come,
                # and no gap is reported for a subscription nobody wants any more.
                assert [m async for m in ps.listen()] == []
            finally:
                own_server.resume()
            assert ps.stats().disconnects == 1 and ps.stats().gaps == 0


async def test_dropped_connection_resubscribes_and_reports_a_gap(own_server: LocalServer) -> None:
    with trio.fail_after(10):
        tag = _tag()
        channel, pattern, shard = f"{tag}:c", f"{tag}:p*", f"{tag}:s"
        async with Client(own_server.host, own_server.port) as r, r.pubsub() as ps:
            await ps.subscribe(channel)
            await ps.psubscribe(pattern)
            await ps.ssubscribe(shard)
            await _until(ps, "ssubscribe")
            assert await r.publish(channel, "before") == 1
            assert (await _next(ps))["data"] == b"before"

            assert await own_server.execute("CLIENT", "KILL", "TYPE", "pubsub") == 1
            gap = await _expect(ps, "gap")
            assert gap["channels"] == [channel.encode()]
            assert gap["patterns"] == [pattern.encode()]
            assert gap["shard_channels"] == [shard.encode()]
            assert gap["channel"] is None and "connection lost" in gap["data"]
            # Resubscribed on a new connection: the confirmations come again, then messages.
            replayed = await _until(ps, "ssubscribe")
            assert {m["type"] for m in replayed} == {"subscribe", "psubscribe", "ssubscribe"}
            assert await r.publish(channel, "after") == 1
            assert await r.spublish(shard, "after-s") == 1
            assert [(await _next(ps))["data"] for _ in range(2)] == [b"after", b"after-s"]
            stats = ps.stats()
            assert (stats.gaps, stats.disconnects, stats.connects) == (1, 1, 2)
            assert ps.registry.stats().gaps >= 1


async def test_cancelled_consumer_leaves_nothing_subscribed(own_server: LocalServer) -> None:
    with trio.fail_after(10):
        channel = f"{_tag()}:cancel"
        registry = PubSubRegistry(max_connections=4)
        received = 0
        consuming = trio.Event()
        async with Client(own_server.host, own_server.port) as r:
            # Counted once the client is connected: a background task that ends when the first
            # connection shows the server lacks a feature (maintenance notifications) is no leak.
            assert await r.ping() is True
            tasks_before = live_tasks()

            async def consumer() -> None:
                nonlocal received
                async with r.pubsub(registry=registry, buffer=4) as ps:
                    await ps.subscribe(channel)
                    await ps.ssubscribe(channel + ":s")
                    async for message in ps:
                        if message["type"] == "message":
                            received += 1
                            consuming.set()

            async def publisher() -> None:
                while True:
                    await r.publish(channel, "x" * 100)
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer)
                nursery.start_soon(publisher)
                await consuming.wait()
                nursery.cancel_scope.cancel()  # the consumer is cancelled mid-stream
            assert received > 0
            assert registry.open == 0
            # The publisher, cancelled after a write, left its connection owing a reply: the
            # pool drains it in a job of its own (bounded by the read timeout), which a busy
            # machine may not have run yet.  Once it is done, no task may be left over.
            while r.stats().unusable_connections:  # noqa: ASYNC110 - polls the pool's drain
                await trio.sleep(0.01)
            assert live_tasks() == tasks_before
            # The server closes a client's subscriptions when it reads the close, a moment
            # after our side closed: poll its state (there is no event to wait for).
            while await _pubsub_clients(own_server) or (  # noqa: ASYNC110 - polls the server
                await own_server.execute("PUBSUB", "NUMSUB", channel)
            ) != [channel.encode(), 0]:
                await trio.sleep(0.01)
            assert await own_server.execute("PUBSUB", "SHARDNUMSUB", channel + ":s") == [
                (channel + ":s").encode(),
                0,
            ]
            assert await r.ping() is True  # the command pool was never involved


async def test_bound_on_pubsub_connections_is_enforced(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        tag = _tag()
        registry = PubSubRegistry(max_connections=2)
        async with Client(local_server.host, local_server.port) as r:
            async with r.pubsub(registry=registry) as one, r.pubsub(registry=registry) as two:
                await one.subscribe(f"{tag}:1")
                await two.psubscribe(f"{tag}:*")
                async with r.pubsub(registry=registry) as three:
                    with pytest.raises(PubSubLimitError, match="at most 2"):
                        await three.subscribe(f"{tag}:3")
                    assert not three.subscribed  # refused before anything changed
                    assert registry.stats().limit_rejections == 1
                    assert registry.stats().open_connections == 2
                    await one.aclose()  # gives its connection back
                    await three.subscribe(f"{tag}:3")
                    assert (await _expect(three, "subscribe"))["channel"] == f"{tag}:3".encode()
                    assert registry.open == 2
            assert registry.open == 0
        with pytest.raises(ValueError, match="max_pubsub_connections"):
            PubSubRegistry(max_connections=0)


# --- cluster ---------------------------------------------------------------------------------


async def test_cluster_classic_pubsub_reaches_a_subscriber_on_another_node(
    local_cluster: LocalCluster,
) -> None:
    with trio.fail_after(15):
        channel = f"{_tag()}:classic"
        async with (
            ClusterClient(startup_nodes=local_cluster.startup_nodes[:1]) as rc,
            rc.pubsub() as ps,
        ):
            await ps.subscribe(channel)
            await _expect(ps, "subscribe")
            (where,) = ps.connection_addresses()
            others = [n for n in local_cluster.nodes if f"{n.host}:{n.port}" != where]
            assert len(others) == len(local_cluster.nodes) - 1
            # PUBLISH on any node, primary or replica, reaches the subscriber (in the order
            # the cluster bus delivers them: each node forwards on its own link).
            for node in others:
                await node.execute("PUBLISH", channel, str(node.port))
            received = [(await _expect(ps, "message"))["data"] for _ in others]
            assert sorted(received) == sorted(str(node.port).encode() for node in others)
            assert await rc.publish(channel, "via-client") >= 0
            assert (await _expect(ps, "message"))["data"] == b"via-client"


async def test_sharded_pubsub_across_three_shards(local_cluster: LocalCluster) -> None:
    with trio.fail_after(15):
        channels = _channels_on_every_shard(local_cluster, f"{_tag()}:s")
        async with (
            ClusterClient(startup_nodes=local_cluster.startup_nodes[:1]) as rc,
            rc.pubsub(ignore_subscribe_messages=True) as ps,
        ):
            await ps.ssubscribe(*channels)
            owners = [await _owner(local_cluster, c) for c in channels]
            # One connection per shard, each on the primary owning the channel's slot.
            assert sorted(ps.connection_addresses()) == sorted(f"{o.host}:{o.port}" for o in owners)
            for channel, owner in zip(channels, owners, strict=True):
                while (await owner.execute("PUBSUB", "SHARDNUMSUB", channel))[1] != 1:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # polling the owner: confirmations are filtered
            for i, channel in enumerate(channels):
                assert await rc.spublish(channel, f"m{i}") == 1  # routed by slot
            got = sorted((m["channel"], m["data"]) for m in [await _next(ps) for _ in channels])
            assert got == sorted((c.encode(), f"m{i}".encode()) for i, c in enumerate(channels))
            await ps.sunsubscribe(channels[0])
            while (await owners[0].execute("PUBSUB", "SHARDNUMSUB", channels[0]))[1]:  # noqa: ASYNC110 - polls the server
                await trio.sleep(0.01)
            assert await rc.spublish(channels[0], "gone") == 0
            assert ps.shard_channels == {c.encode(): None for c in channels[1:]}


async def test_sharded_connection_killed_on_one_shard(local_cluster: LocalCluster) -> None:
    with trio.fail_after(15):
        channels = _channels_on_every_shard(local_cluster, f"{_tag()}:k")
        async with (
            ClusterClient(startup_nodes=local_cluster.startup_nodes[:1]) as rc,
            rc.pubsub() as ps,
        ):
            await ps.ssubscribe(*channels)
            for _ in channels:
                await _expect(ps, "ssubscribe")
            victim = await _owner(local_cluster, channels[1])
            await victim.execute("CLIENT", "KILL", "TYPE", "pubsub")
            gap = await _expect(ps, "gap")
            assert gap["shard_channels"] == [channels[1].encode()]
            assert gap["node"] == f"{victim.host}:{victim.port}"
            again = await _expect(ps, "ssubscribe")
            assert again["channel"] == channels[1].encode()
            for i, channel in enumerate(channels):
                assert await rc.spublish(channel, f"m{i}") == 1
            got = {(await _expect(ps, "smessage"))["data"] for _ in channels}
            assert got == {b"m0", b"m1", b"m2"}
            assert ps.stats().gaps == 1


async def test_failover_of_a_primary_resubscribes_after_promotion() -> None:
    async with LocalCluster(
        masters=3, replicas_per_master=1, cluster_node_timeout_ms=1000
    ) as cluster:
        with trio.fail_after(15):
            channels = _channels_on_every_shard(cluster, f"{_tag()}:f")
            async with ClusterClient(startup_nodes=cluster.startup_nodes) as rc, rc.pubsub() as ps:
                await ps.ssubscribe(*channels)
                await ps.subscribe("classic")
                # Four connections confirm in any order: wait for all four confirmations.
                confirmed = {(await _next(ps))["channel"] for _ in range(4)}
                assert confirmed == {b"classic", *(c.encode() for c in channels)}
                # Kill the primary that carries the classic connection: both kinds of
                # subscription must come back, on other nodes.
                classic_node = next(
                    n for n in cluster.primaries
                    if ps.connection_addresses().count(f"{n.host}:{n.port}") == 2
                )  # fmt: skip
                shard = cluster.shard_of(classic_node)
                owners = [await _owner(cluster, c) for c in channels]
                lost_channel = channels[owners.index(classic_node)]
                classic_node.kill()
                seen: list[dict[str, Any]] = []
                back = {"subscribe": False, "ssubscribe": False}
                while not all(back.values()):
                    message = await _next(ps)
                    seen.append(message)
                    if message["type"] == "subscribe" and message["channel"] == b"classic":
                        back["subscribe"] = True
                    if message["type"] == "ssubscribe":
                        assert message["channel"] == lost_channel.encode()
                        back["ssubscribe"] = True
                gaps = [m for m in seen if m["type"] == "gap"]
                assert sorted(g["channels"] + g["shard_channels"] for g in gaps) == sorted(
                    [[b"classic"], [lost_channel.encode()]]
                )
                replica = shard.replicas[0]
                assert f"{replica.host}:{replica.port}" in ps.connection_addresses()
                for i, channel in enumerate(channels):
                    assert await rc.spublish(channel, f"m{i}") == 1
                # PUBLISH counts the receivers of the node it ran on only: the subscriber
                # may be elsewhere, so the proof is the message arriving.
                await rc.publish("classic", "c")
                got = {(await _next(ps))["data"] for _ in range(len(channels) + 1)}
                assert got == {b"m0", b"m1", b"m2", b"c"}
                stats = ps.stats()
                assert stats.gaps == 2 and stats.disconnects == 2


async def _move_empty_slot(
    cluster: LocalCluster, slot: int, source: LocalServer, target: LocalServer
) -> None:
    """Move an empty ``slot`` from ``source`` to ``target`` as redis-cli does."""
    target_id = cluster.node_ids[target.port]
    source_id = cluster.node_ids[source.port]
    await target.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
    await source.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    await target.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    await source.execute("CLUSTER", "SETSLOT", slot, "NODE", target_id)


async def test_slot_move_resubscribes_on_the_new_owner() -> None:
    async with LocalCluster(masters=2, replicas_per_master=0) as cluster:
        with trio.fail_after(15):
            channel = f"{_tag()}:moving"
            slot = key_slot(channel.encode())
            async with ClusterClient(startup_nodes=cluster.startup_nodes) as rc, rc.pubsub() as ps:
                await ps.ssubscribe(channel)
                await _expect(ps, "ssubscribe")
                source = await _owner(cluster, channel)
                target = next(n for n in cluster.primaries if n is not source)
                # When the source gives the slot up, it drops its shard subscribers with a
                # server-side SUNSUBSCRIBE.
                await _move_empty_slot(cluster, slot, source, target)
                gap = await _expect(ps, "gap")
                assert gap["shard_channels"] == [channel.encode()]
                assert "left" in gap["data"]
                assert (await _expect(ps, "ssubscribe"))["channel"] == channel.encode()
                assert f"{target.host}:{target.port}" in ps.connection_addresses()
                assert await rc.spublish(channel, "moved") == 1
                assert (await _expect(ps, "smessage"))["data"] == b"moved"
                stats = ps.stats()
                assert stats.slot_moves == 1 and stats.gaps == 1


async def test_ssubscribe_over_the_bound_changes_nothing(local_cluster: LocalCluster) -> None:
    with trio.fail_after(10):
        channels = _channels_on_every_shard(local_cluster, f"{_tag()}:b")
        registry = PubSubRegistry(max_connections=2)
        async with (
            ClusterClient(startup_nodes=local_cluster.startup_nodes[:1]) as rc,
            rc.pubsub(registry=registry) as ps,
        ):
            with pytest.raises(PubSubLimitError):
                await ps.ssubscribe(*channels)  # needs three connections
            assert not ps.subscribed and registry.open == 0
            await ps.ssubscribe(*channels[:2])
            assert registry.open == 2


def _routed_to(rc: ClusterClient, slot: int) -> tuple[str, int]:
    """The primary the client's public topology names for ``slot``."""
    shard = rc.topology.shard_for(slot)
    assert shard is not None
    return shard.primary


async def test_ssubscribe_moved_updates_the_clients_slot_map() -> None:
    """A MOVED answering SSUBSCRIBE goes through the client's one MOVED path: the channel is
    subscribed on the new owner, and the client's slot map and public ``topology`` name that
    owner at once (before any refresh could)."""
    async with LocalCluster(masters=2, replicas_per_master=0) as cluster:
        with trio.fail_after(15):
            channel = f"{_tag()}:redirected"
            slot = key_slot(channel.encode())
            async with ClusterClient(startup_nodes=cluster.startup_nodes) as rc, rc.pubsub() as ps:
                source = await _owner(cluster, channel)
                target = next(n for n in cluster.primaries if n is not source)
                assert _routed_to(rc, slot) == source.address
                # Behind the client's back: its map is now stale.
                await _move_empty_slot(cluster, slot, source, target)
                moved_before = rc.stats().moved
                await ps.ssubscribe(channel)  # sent to the source, which answers MOVED
                assert (await _expect(ps, "ssubscribe"))["channel"] == channel.encode()
                assert ps.stats().moved == 1
                assert rc.stats().moved == moved_before + 1  # applied by the slot map
                assert _routed_to(rc, slot) == target.address
                assert f"{target.host}:{target.port}" in ps.connection_addresses()
                assert await rc.spublish(channel, "here") == 1
                assert (await _expect(ps, "smessage"))["data"] == b"here"
