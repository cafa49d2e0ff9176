"""What a PubSub uses of its client, named exactly: the host protocol.

``Client`` and ``ClusterClient`` provide it with public attributes: the dialer that opens
every connection (the newest credentials, the client's TLS and timeouts), the client-wide
registry of pub/sub connections, redis-py's ``get_encoder()`` (whether and how to decode
messages), and, for a cluster, the slot map (:class:`ShardMap`: the topology placement reads,
the refresh it waits for, the one path that applies a MOVED).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from ..conn.dialer import Dialer
from ..errors import MovedError
from ..redispy import Encoder
from ..routing.slotmap import Node
from ..routing.topology import Topology
from .pubsub_registry import PubSubRegistry

__all__ = ["PubSubHost", "ShardMap"]


class ShardMap(Protocol):
    """What a PubSub uses of a cluster client's slot map
    (:class:`~trio_cluster.routing.slotmap.SlotMap`)."""

    @property
    def topology(self) -> Topology:
        """The slot owners the client routes by (MOVED replies applied)."""
        ...

    @property
    def refresh(self) -> Callable[[], Awaitable[None]]:
        """Fetch the topology now (single-flight) and wait for it."""
        ...

    def by_name(self, name: str) -> Node | None:
        """The node called ``host:port``, if the map has it."""
        ...

    async def apply_moved(self, moved: MovedError, node: Node | None) -> Node:
        """Apply a MOVED answered by ``node``: the slot belongs to the node it names."""
        ...


class PubSubHost(Protocol):
    """What :class:`~trio_cluster.clients.pubsub.PubSub` needs of its client."""

    @property
    def dialer(self) -> Dialer:
        """Opens the pub/sub connections (for one node, to that node)."""
        ...

    @property
    def pubsub_registry(self) -> PubSubRegistry:
        """The client-wide bound on pub/sub connections, and their counters."""
        ...

    @property
    def pubsub_shards(self) -> ShardMap | None:
        """The cluster's slot map, which places subscriptions; None for a single node."""
        ...

    def get_encoder(self) -> Encoder:
        """redis-py's encoder: ``decode_responses``, ``encoding``, ``encoding_errors``."""
        ...
