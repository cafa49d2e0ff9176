"""The cluster pipeline and transaction on in-memory nodes (``fakenodes``) and the autojump
clock: one batch per node, results in order, per-command redirects and retries under the one
retry policy, a node's failure confined to its commands, transactions sent again whole."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from fakenodes import THREE, FakeCluster, fake_cluster, key_on
from redis import exceptions as rex

from trio_cluster.clients.cluster_pipeline import ClusterPipeline
from trio_cluster.config import RetryOptions
from trio_cluster.errors import CrossSlotTransactionError, MovedError, TryAgainError
from trio_cluster.pooling.breaker import BreakerOptions
from trio_cluster.routing.rules import key_slot
from trio_cluster.wire.encoding import Encoding

A, B, C = (shard[0] for shard in THREE)


def _pipeline(cluster: FakeCluster, transaction: bool = False) -> ClusterPipeline:
    return ClusterPipeline(None, cluster.router, Encoding(), cluster.replies, transaction)


def _batches(calls: list[tuple[Any, ...]]) -> list[str]:
    return [str(c[0]) for c in calls]


async def test_one_batch_per_node_results_in_the_callers_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            keys = [key_on(2, "a"), key_on(0, "b"), key_on(1, "c"), key_on(0, "d")]
            pipe = _pipeline(cluster)
            for key in keys:
                pipe.set(key, key)
                pipe.get(key)
            results = await pipe.execute()
            assert results == [r for key in keys for r in (True, key.encode())]
            assert (len(cluster[A].calls), len(cluster[B].calls), len(cluster[C].calls)) == (
                4,
                2,
                2,
            )
            assert cluster[A].dials == 1  # one connection, one batch


async def test_a_moved_command_alone_goes_again_to_the_new_owner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            moved, stays = key_on(0, "m"), key_on(1, "s")
            slot = key_slot(moved.encode())
            cluster[A].script = [MovedError(f"{slot} {C[0]}:{C[1]}")]
            pipe = _pipeline(cluster)
            pipe.set(moved, 1).set(stays, 2)
            assert await pipe.execute() == [True, True]
            assert cluster[C].data == {moved.encode(): b"1"}
            assert len(cluster[B].calls) == 1  # not sent twice
            assert cluster.slots.primary(slot) is cluster.node(C)


async def test_a_down_node_fails_only_its_own_commands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        retry = RetryOptions(budget=0.5)
        async with fake_cluster(
            THREE, retry=retry, breaker=BreakerOptions(enabled=False)
        ) as cluster:
            down, up = key_on(0, "x"), key_on(1, "y")
            cluster[A].down = True
            pipe = _pipeline(cluster)
            pipe.set(down, 1).set(up, 2)
            results = await pipe.execute(raise_on_error=False)
            assert isinstance(results[0], rex.ConnectionError) and results[1] is True
            assert cluster.router.policy.retries["unsent"] >= 1  # retried within the budget
            pipe.get(down)
            with pytest.raises(rex.ConnectionError, match="of pipeline caused error"):
                await pipe.execute()


async def test_transient_replies_are_retried_per_command(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            key = key_on(1)
            cluster[B].data[key.encode()] = b"1"
            cluster[B].script = [TryAgainError("TRYAGAIN")]
            pipe = _pipeline(cluster)
            pipe.get(key).get(key)
            assert await pipe.execute() == [b"1", b"1"]
            assert len(cluster[B].calls) == 3  # the first GET went twice, alone the second time
            assert cluster.router.policy.retries == {"TryAgainError": 1}


async def test_a_transaction_refused_at_queue_time_is_sent_again_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            key = key_on(0)
            slot = key_slot(key.encode())
            # MULTI is accepted, the SET is refused with MOVED: EXEC runs nothing.
            cluster[A].script = [b"OK", MovedError(f"{slot} {B[0]}:{B[1]}")]
            pipe = _pipeline(cluster, transaction=True)
            pipe.set(key, 1).incr(key)
            assert await pipe.execute() == [True, 2]
            assert cluster[A].data == {} and cluster[B].data == {key.encode(): b"2"}
            assert _batches(cluster[B].calls) == ["MULTI", "SET", "INCRBY", "EXEC"]
            # TRYAGAIN at queue time: backed off and sent again.
            cluster[B].script = [b"OK", TryAgainError("TRYAGAIN")]
            pipe.set(key, 5)
            assert await pipe.execute() == [True]
            assert cluster.router.policy.retries == {"TryAgainError": 1}


async def test_a_cross_slot_transaction_is_refused_before_anything_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with fake_cluster(THREE) as cluster:
            pipe = _pipeline(cluster, transaction=True)
            pipe.set(key_on(0), 1).set(key_on(1), 2)
            with pytest.raises(CrossSlotTransactionError):
                await pipe.execute()
            assert not any(cluster[n].calls for n in (A, B, C))
