"""What the observable instruments read from a client: pure functions from a client's public
snapshots (``stats()``, ``connections()``, ``maintenance_stats()``, ``pubsub_stats()``) to
``(attributes, value)`` pairs.

Reading the counters a client already keeps, when the collector asks, costs the command path
nothing: that is why most of trio-cluster's metrics are observable instruments rather than
counters bumped per command.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

from . import names

Reading = tuple[tuple[tuple[str, Any], ...], float]
"""``(attributes as sorted pairs, value)``: hashable, so readings from several clients with
the same attributes can be summed."""


class Observed(Protocol):
    """What the readings need of a client: its public snapshots."""

    def stats(self) -> Any: ...

    def connections(self) -> Any: ...

    def maintenance_stats(self) -> dict[str, Any]: ...

    def pubsub_stats(self) -> Any: ...


#: redis-py's three close reasons, for ``redis.client.connection.closed``; the pool's own
#: reason goes with them as ``trio_cluster.close_reason``.
_REDIS_PY_CLOSE_REASON = {
    "idle_time": "application_close",
    "lifetime": "application_close",
    "max_idle": "application_close",
    "pool_closed": "application_close",
    "peer_closed": "healthcheck_failed",
}


def _key(**attributes: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(attributes.items()))


def _pools(client: Observed) -> list[Any]:
    """Each node's ``PoolStats`` (a ``ClusterClient``'s are per node, a ``Client`` has one)."""
    stats = client.stats()
    nodes = getattr(stats, "nodes", None)
    return list(nodes.values()) if nodes is not None else [stats]


def _server(node: str) -> dict[str, Any]:
    host, _, port = node.rpartition(":")
    return {names.SERVER_ADDRESS: host, names.SERVER_PORT: int(port) if port.isdigit() else 0}


def connection_count(client: Observed) -> Iterator[Reading]:
    """``db.client.connection.count``: idle and used connections per pool, as redis-py."""
    for pool in _pools(client):
        used = pool.total_connections - pool.idle_connections
        for state, value in (("idle", pool.idle_connections), ("used", used)):
            yield _key(**{names.POOL_NAME: pool.node, names.CONNECTION_STATE: state}), value


def connection_states(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.connection.states``: connections per pool and per state of the state
    machine (CREATED, INITIALIZING, IDLE, IN_USE, UNUSABLE; CLOSED ones have left)."""
    counts: Counter[tuple[str, str]] = Counter(
        (info.node, info.state.name) for info in client.connections()
    )
    for (node, state), value in counts.items():
        yield _key(**{names.POOL_NAME: node, names.STATE: state}), value


def pool_waiters(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.pool.waiters``: gets parked in each pool right now."""
    for pool in _pools(client):
        yield _key(**{names.POOL_NAME: pool.node}), pool.pending_waiters


def connection_timeouts(client: Observed) -> Iterator[Reading]:
    """``db.client.connection.timeouts``: gets that ran out of pool wait, per pool."""
    for pool in _pools(client):
        yield _key(**{names.POOL_NAME: pool.node}), pool.timeouts


def connection_closed(client: Observed) -> Iterator[Reading]:
    """``redis.client.connection.closed``: per pool and reason (redis-py's and ours)."""
    for pool in _pools(client):
        for reason, value in pool.closes.items():
            common = _REDIS_PY_CLOSE_REASON.get(reason, "error")
            yield (
                _key(
                    **{
                        names.POOL_NAME: pool.node,
                        names.CLOSE_REASON: common,
                        names.DETAILED_CLOSE_REASON: reason,
                    }
                ),
                value,
            )


def unusable_time(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.connection.unusable_time``: seconds connections spent UNUSABLE (owned by
    a drain, a handoff or a re-authentication), per pool."""
    for pool in _pools(client):
        yield _key(**{names.POOL_NAME: pool.node}), pool.unusable_time_total


def breaker_state(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.breaker.state``: 0 closed, 1 half-open, 2 open, per node."""
    breakers = getattr(client.stats(), "breakers", None) or {}
    for node, state in breakers.items():
        yield _key(**_server(node)), _BREAKER_LEVEL.get(state, 0)


_BREAKER_LEVEL = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}


def breaker_rejections(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.breaker.rejections``: commands refused by an open breaker."""
    value = getattr(client.stats(), "breaker_rejections", None)
    if value is not None:
        yield (), value


def redirects(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.redirects``: MOVED and ASK answers followed."""
    stats = client.stats()
    for kind in ("moved", "ask"):
        value = getattr(stats, kind, None)
        if value is not None:
            yield _key(**{names.REDIRECT_KIND: kind}), value


def retries(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.retries``: commands sent again, by reason."""
    for reason, value in (getattr(client.stats(), "retries", None) or {}).items():
        yield _key(**{names.RETRY_REASON: reason}), value


def topology_refreshes(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.topology.refreshes``: topology reloads, by outcome."""
    stats = client.stats()
    done = getattr(stats, "refreshes", None)
    if done is not None:
        yield _key(**{names.OUTCOME: "ok"}), done
        yield _key(**{names.OUTCOME: "failed"}), getattr(stats, "refresh_failures", 0)


def reauths(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.reauths``: connections re-authenticated after a credential change."""
    stats = client.maintenance_stats()
    yield _key(**{names.OUTCOME: "ok"}), stats.get("reauths", 0)
    yield _key(**{names.OUTCOME: "failed"}), stats.get("reauth_failures", 0)


def handoffs(client: Observed) -> Iterator[Reading]:
    """``redis.client.connection.handoff``: connections handed to a MOVING endpoint."""
    yield (), client.maintenance_stats().get("handoffs", 0)


def handoff_failures(client: Observed) -> Iterator[Reading]:
    """``trio_cluster.connection.handoff_failures``: handoffs that failed."""
    yield (), client.maintenance_stats().get("handoff_failures", 0)


def relaxed_timeouts(client: Observed) -> Iterator[Reading]:
    """``redis.client.connection.relaxed_timeout``: connections whose timeouts are relaxed
    right now (during MIGRATING / FAILING_OVER)."""
    yield (), client.maintenance_stats().get("relaxed_connections", 0)


def notifications(client: Observed) -> Iterator[Reading]:
    """``redis.client.maintenance.notifications``: notifications received, by type."""
    for kind, value in client.maintenance_stats().get("notifications", {}).items():
        yield _key(**{names.NOTIFICATION: kind}), value


def pubsub_messages(client: Observed) -> Iterator[Reading]:
    """``redis.client.pubsub.messages``: messages delivered to subscribers."""
    yield _key(**{names.PUBSUB_DIRECTION: "receive"}), client.pubsub_stats().messages
