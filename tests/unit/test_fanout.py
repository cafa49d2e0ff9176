"""The fan-out on in-memory nodes (``fakenodes``): keyless commands to every primary combined
as redis-py combines them, multi-key commands split per slot and reassembled in order, the
first failure in node order raised with the others attached, ``target_nodes=`` by name."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from fakenodes import THREE, FakeCluster, fake_cluster, key_on
from redis import exceptions as rex

from trio_cluster.clients.fanout import NOT_SPLIT, FanOut
from trio_cluster.routing.rules import Target

A, B, C = (shard[0] for shard in THREE)


def _fanout(cluster: FakeCluster) -> FanOut:
    return FanOut(cluster.router, cluster.replies)


async def test_keyless_commands_reach_every_primary_and_are_combined(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            cluster[A].data = {b"a": b"1", b"b": b"2"}
            cluster[C].data = {b"c": b"3"}
            dbsize = cluster.specs.get("DBSIZE")
            assert await _fanout(cluster).keyless(Target.PRIMARIES, dbsize, ("DBSIZE",), {}) == 3
            ping = cluster.specs.get("PING")
            # One node: its reply still goes through the command's callback (PONG -> True).
            assert await _fanout(cluster).keyless(Target.DEFAULT_NODE, ping, ("PING",), {}) is True


async def test_split_commands_go_per_slot_and_come_back_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            keys = [key_on(2, "x"), key_on(0, "y"), key_on(1, "z")]
            fanout = _fanout(cluster)
            mset = cluster.specs.get("MSET")
            args = ("MSET", *[v for k in keys for v in (k, k.upper())])
            assert await fanout.split(mset, args, {}) is True
            mget = cluster.specs.get("MGET")
            values = await fanout.split(mget, ("MGET", *keys), {})
            assert values == [k.upper().encode() for k in keys]
            assert all(len(cluster[n].calls) == 2 for n in (A, B, C))  # MSET + MGET each
            delete = cluster.specs.get("DEL")
            assert await fanout.split(delete, ("DEL", *keys, "nosuch"), {}) == 3
            same_slot = ("MGET", "{t}1", "{t}2")
            assert await fanout.split(mget, same_slot, {}) is NOT_SPLIT


async def test_the_first_failure_in_node_order_is_raised_with_the_others_noted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            cluster[B].script = [rex.ResponseError("ERR b failed")]
            cluster[C].script = [rex.ResponseError("ERR c failed")]
            dbsize = cluster.specs.get("DBSIZE")
            with pytest.raises(rex.ResponseError, match="b failed") as raised:
                await _fanout(cluster).keyless(Target.PRIMARIES, dbsize, ("DBSIZE",), {})
            assert any("c failed" in note for note in getattr(raised.value, "__notes__", []))
            assert len(cluster[A].calls) == 1  # every node ran to completion


async def test_target_nodes_by_name_and_unknown_names_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            fanout = _fanout(cluster)
            ping = cluster.specs.get("PING")
            named = [cluster[A].name, cluster[C].name]
            # Combined as redis-py combines PING: every node answered.
            assert await fanout.on_targets(named, ping, ("PING",), {}) is True
            assert (len(cluster[A].calls), len(cluster[B].calls), len(cluster[C].calls)) == (
                1,
                0,
                1,
            )
            with pytest.raises(rex.RedisClusterException, match=r"unknown nodes: 1\.2\.3\.4:5"):
                await fanout.on_targets(["1.2.3.4:5"], ping, ("PING",), {})
