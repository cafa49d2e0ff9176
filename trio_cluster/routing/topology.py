"""The cluster's shape: which node serves which slot, and who replicates whom.

Built from CLUSTER SHARDS (Redis 7+, Valkey) or, on older servers, CLUSTER SLOTS.  Every address
the cluster announces goes through the caller's ``address_remap`` before it is used, so a
client behind per-node proxies or NAT reaches the right place.  Pure data and parsing: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..wire.encoding import text

__all__ = ["SLOTS", "Address", "AddressRemap", "Shard", "Topology", "parse_shards", "parse_slots"]

SLOTS = 16384

Address = tuple[str, int]
AddressRemap = Callable[[Address], Address]


@attrs.frozen
class Shard:
    """A primary, its healthy replicas, and the slot ranges (inclusive) they serve."""

    primary: Address
    replicas: tuple[Address, ...]
    ranges: tuple[tuple[int, int], ...]


@attrs.frozen
class Topology:
    """An immutable snapshot of the slot map.  ``owner[slot]`` is the shard index or -1."""

    shards: tuple[Shard, ...]
    owner: tuple[int, ...] = attrs.field(repr=False)

    @classmethod
    def from_shards(cls, shards: Iterable[Shard]) -> Topology:
        """Index shards by slot."""
        shard_list = tuple(s for s in shards if s.ranges)
        owner = [-1] * SLOTS
        for index, shard in enumerate(shard_list):
            for start, end in shard.ranges:
                owner[start : end + 1] = [index] * (end - start + 1)
        return cls(shard_list, tuple(owner))

    def shard_for(self, slot: int) -> Shard | None:
        """The shard serving ``slot``, or None if no node does."""
        index = self.owner[slot]
        return self.shards[index] if index >= 0 else None

    @property
    def primaries(self) -> list[Address]:
        """Every primary's address."""
        return [s.primary for s in self.shards]

    @property
    def nodes(self) -> list[Address]:
        """Every address, primaries first."""
        return self.primaries + [r for s in self.shards for r in s.replicas]

    @property
    def covered(self) -> int:
        """How many slots have an owner."""
        return sum(1 for index in self.owner if index >= 0)


def _pairs(entry: Any) -> Mapping[str, Any]:
    """A RESP3 map, or a RESP2 flat list of alternating keys and values, as a dict."""
    if isinstance(entry, Mapping):
        return {text(k): v for k, v in entry.items()}
    items = list(entry)
    return {text(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _announced(node: Mapping[str, Any], queried: Address) -> Address:
    """The address a node announces in CLUSTER SHARDS.

    ``endpoint`` is the preferred one.  An empty endpoint means "unknown endpoint" (the server
    runs with ``cluster-preferred-endpoint-type unknown-endpoint``): use the host the reply
    came from, as the Redis docs ask (and as CLUSTER SLOTS and MOVED say with an empty host).
    ``?`` means "no hostname set" (``hostname`` type): the node's IP is the best bet.
    """
    port = int(node.get("port") or node.get("tls-port") or 0)
    if "endpoint" in node:
        endpoint = text(node["endpoint"] or "")
        if not endpoint:
            return (queried[0], port)
        if endpoint != "?":
            return (endpoint, port)
    ip = text(node.get("ip") or "")
    return (ip if ip and ip != "?" else queried[0], port)


def parse_shards(reply: Sequence[Any], queried: Address, remap: AddressRemap | None) -> Topology:
    """Build a Topology from a CLUSTER SHARDS reply (as sent by ``queried``)."""
    shards = []
    for raw in reply:
        fields = _pairs(raw)
        bounds = [int(x) for x in fields.get("slots", [])]
        ranges = tuple((bounds[i], bounds[i + 1]) for i in range(0, len(bounds) - 1, 2))
        primary: Address | None = None
        replicas: list[Address] = []
        for raw_node in fields.get("nodes", []):
            node = _pairs(raw_node)
            address = _announced(node, queried)
            if remap is not None:
                address = remap(address)
            health = text(node.get("health", "online"))
            if text(node.get("role", "")) == "master":
                if health != "fail":
                    primary = address
            elif health == "online":
                replicas.append(address)
        if primary is not None and ranges:
            shards.append(Shard(primary, tuple(replicas), ranges))
    return Topology.from_shards(shards)


def parse_slots(reply: Sequence[Any], queried: Address, remap: AddressRemap | None) -> Topology:
    """Build a Topology from a CLUSTER SLOTS reply (servers without CLUSTER SHARDS)."""
    by_primary: dict[Address, tuple[list[tuple[int, int]], list[Address]]] = {}
    for entry in reply:
        start, end, primary_info, *replica_infos = entry
        primary = _slot_node_address(primary_info, queried, remap)
        ranges, replicas = by_primary.setdefault(primary, ([], []))
        ranges.append((int(start), int(end)))
        for info in replica_infos:
            address = _slot_node_address(info, queried, remap)
            if address not in replicas:
                replicas.append(address)
    return Topology.from_shards(
        Shard(primary, tuple(replicas), tuple(sorted(ranges)))
        for primary, (ranges, replicas) in by_primary.items()
    )


def _slot_node_address(
    info: Sequence[Any], queried: Address, remap: AddressRemap | None
) -> Address:
    """``[endpoint, port, id, metadata]``: a NULL/empty endpoint is the queried host; ``?``
    (no hostname set) falls back to the ``ip`` metadata, if any."""
    host = text(info[0]) if info[0] else ""
    if host == "?":
        host = text(_pairs(info[3]).get("ip") or "") if len(info) > 3 and info[3] else ""
    address = (host if host and host != "?" else queried[0], int(info[1]))
    return remap(address) if remap is not None else address
