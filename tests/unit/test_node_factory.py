"""The one node factory (trio_cluster/routing/nodes.py): each part of a node is complete when
made, wired to the others at construction (nothing attached afterwards), the same for
``Client`` and ``ClusterClient``."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster import Client, ClusterClient
from trio_cluster.config import ConnectionConfig
from trio_cluster.conn.connection import was_unsent
from trio_cluster.conn.watchdog import Watchdog
from trio_cluster.jobs.credentials import CredentialManager
from trio_cluster.jobs.maint import MaintNotificationsOptions
from trio_cluster.pooling.breaker import BreakerOptions, BreakerState, CircuitOpenError
from trio_cluster.pooling.pool import PoolOptions
from trio_cluster.routing.nodes import NodeFactory, pool_timeout


def _factory(mode: str = "auto", **overrides: object) -> NodeFactory:
    settings: dict[str, object] = {
        "config": ConnectionConfig(connect_timeout=2.5, read_timeout=4.0),
        "pool": PoolOptions(size=3),
        "breaker": BreakerOptions(),
        "maint": MaintNotificationsOptions(mode=mode),
        "watchdog": Watchdog(),
        "credentials": None,
    }
    settings.update(overrides)
    return NodeFactory(**settings)  # type: ignore[arg-type]


def test_a_node_is_wired_at_construction() -> None:
    credentials = CredentialManager(("alice", "pw"))
    make = _factory(credentials=credentials)
    node = make(("10.0.0.7", 7001))
    assert node.name == node.pool.node_name == "10.0.0.7:7001" == node.breaker.name
    assert (node.dialer.config.host, node.dialer.config.port) == ("10.0.0.7", 7001)
    assert node.dialer.watchdog is make.watchdog and node.dialer.credentials is credentials
    # The dialer hands pooled connections the notices that the handoff manager follows.
    assert node.handoffs is not None and node.dialer.notices is node.handoffs.notices
    assert node.pool.timeout == 5.0  # the read timeout plus a second
    other = make(("10.0.0.8", 7001))
    assert other.pool is not node.pool and other.dialer is not node.dialer


def test_no_maintenance_parts_when_notifications_are_disabled() -> None:
    node = _factory("disabled")(("h", 1))
    assert node.handoffs is None and node.dialer.notices is None


def test_pool_timeout_rule() -> None:
    config = ConnectionConfig(read_timeout=2.0)
    assert pool_timeout(PoolOptions(timeout=7.0), config) == 7.0
    assert pool_timeout(PoolOptions(), config) == 3.0
    assert pool_timeout(PoolOptions(), ConnectionConfig(read_timeout=None)) == math.inf


async def test_the_breaker_guards_automatic_pipelining_from_the_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The breaker reaches the pool's pipeliner when both are made (it used to be patched on
    afterwards, by the cluster client only)."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        make = _factory(
            pool=PoolOptions(size=2, autopipeline=True, dial_retries=0),
            breaker=BreakerOptions(failure_threshold=1, cooldown=60.0),
        )
        node = make(("127.0.0.1", port))
        pipeliner = node.pool.autopipeliner
        assert pipeliner is not None
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await node.start(nursery)
                with pytest.raises(rex.ConnectionError):
                    await pipeliner.execute(("GET", "k"))  # the dial is refused
                assert node.breaker.state is BreakerState.OPEN
                with pytest.raises(CircuitOpenError) as refused:
                    await pipeliner.execute(("GET", "k"))
                assert was_unsent(refused.value)
                nursery.cancel_scope.cancel()  # the pool and the handoff manager stop


def test_both_clients_make_their_nodes_with_it() -> None:
    client = Client("127.0.0.1", 6390, maint_notifications="disabled")
    assert client._node.pool is client._pool and client._node.dialer is client._dialer
    # The one node's breaker is the client's: a node known bad fails commands at once.
    assert client._node.breaker is client.breaker and client.breaker.options.enabled
    cluster = ClusterClient("127.0.0.1", 7000)
    assert isinstance(cluster._make_node, NodeFactory)
    assert cluster._make_node.breaker is cluster.breaker_options
