"""redis-py's ``RedisCluster`` helpers on :class:`~trio_cluster.ClusterClient`: nodes
(``get_nodes``, ``get_primaries``, ...), ``keyslot``, the ``cluster_*`` command methods with
their ``target_nodes=`` defaults, and ``mget_nonatomic``/``mset_nonatomic``.

The ``cluster_*`` methods are redis-py's own (``ClusterManagementCommands``): they build the
command and call ``execute_command``, whose routing and reply combination follow redis-py's
cluster client.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from redis.exceptions import DataError

from ..redispy import ClusterManagementCommands, list_or_args
from ..routing.rules import key_slot
from ..routing.slotmap import Node, SlotMap

if TYPE_CHECKING:
    from ..redispy import Encoder


__all__ = ["PRIMARY", "REPLICA", "ClusterHelpers", "ClusterNode"]

PRIMARY = "primary"
REPLICA = "replica"


class ClusterNode:
    """A node of the cluster as redis-py's ``ClusterNode`` describes it: ``host``, ``port``,
    ``name`` (``host:port``) and ``server_type`` (``"primary"`` or ``"replica"``).  Equal to
    any ``ClusterNode`` of the same name; pass it (or a list, or a dict of them) as
    ``target_nodes=``."""

    __slots__ = ("host", "name", "port", "server_type")

    def __init__(self, host: str, port: int, server_type: str | None = None) -> None:
        self.host = host
        self.port = port
        self.name = f"{host}:{port}"
        self.server_type = server_type

    def __repr__(self) -> str:
        return (
            f"[host={self.host},port={self.port},name={self.name},server_type={self.server_type}]"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterNode) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class ClusterHelpers:
    """The helpers; mixed into ``ClusterClient``, which supplies the node tables."""

    # redis-py's node flags, for ``target_nodes=`` (``rc.PRIMARIES`` as with RedisCluster).
    PRIMARIES = "primaries"
    REPLICAS = "replicas"
    ALL_NODES = "all"
    RANDOM = "random"
    DEFAULT_NODE = "default-node"

    slot_map: SlotMap

    if TYPE_CHECKING:  # provided by ClusterClient

        async def execute_command(self, *args: Any, **options: Any) -> Any: ...

        def get_encoder(self) -> Encoder: ...

        def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> Any: ...

    # --- nodes -----------------------------------------------------------------------------------

    def get_primaries(self) -> list[ClusterNode]:
        """Every primary the client currently routes to."""
        return [_describe(primary, PRIMARY) for primary in self.slot_map.primaries()]

    def get_replicas(self) -> list[ClusterNode]:
        """Every replica the client currently knows."""
        return [_describe(r, REPLICA) for r in self.slot_map.replicas()]

    def get_nodes(self) -> list[ClusterNode]:
        """Every node: primaries and replicas."""
        nodes: list[ClusterNode] = []
        for primary, replicas in self.slot_map.shards():
            nodes.append(_describe(primary, PRIMARY))
            nodes.extend(_describe(r, REPLICA) for r in replicas)
        return nodes

    def get_node(
        self, host: str | None = None, port: int | None = None, node_name: str | None = None
    ) -> ClusterNode | None:
        """The node named ``node_name`` (``host:port``) or at ``host``/``port``; None if
        the client does not know it (as redis-py)."""
        if node_name is None:
            if host is None or port is None:
                raise DataError(
                    "get_node requires one of the following: 1. node name 2. host and port"
                )
            node_name = f"{host}:{port}"
        return next((n for n in self.get_nodes() if n.name == node_name), None)

    def get_default_node(self) -> ClusterNode | None:
        """The primary that keyless commands without a routing rule go to."""
        node = self.slot_map.default_node
        return _describe(node, PRIMARY) if node is not None else None

    def get_random_node(self) -> ClusterNode:
        """Any node."""
        return random.choice(self.get_nodes())

    def keyslot(self, key: Any) -> int:
        """The slot of ``key``, computed here (no round trip), encoded as commands encode it."""
        return key_slot(self.get_encoder().encode(key))  # type: ignore[no-untyped-call]

    def get_node_from_key(self, key: Any, replica: bool = False) -> ClusterNode | None:
        """The primary serving ``key``'s slot (``replica=True``: one of its replicas)."""
        slot = self.keyslot(key)
        if replica:
            replicas = self.slot_map.replicas_of(slot)
            return _describe(replicas[0], REPLICA) if replicas else None
        primary = self.slot_map.primary(slot)
        return _describe(primary, PRIMARY) if primary is not None else None

    # --- multi-slot helpers --------------------------------------------------------------------

    def _by_slot(self, items: Iterable[Any], step: int) -> dict[int, list[Any]]:
        items = list(items)
        groups: dict[int, list[Any]] = {}
        for index in range(0, len(items), step):
            groups.setdefault(self.keyslot(items[index]), []).extend(items[index : index + step])
        return groups

    async def mget_nonatomic(self, keys: Any, *args: Any) -> list[Any]:
        """MGET per slot (not atomic across slots); values in the order of ``keys``."""
        keys = list_or_args(keys, args)
        groups = self._by_slot(keys, 1)
        pipe = self.pipeline()
        for group in groups.values():
            pipe.execute_command("MGET", *group)
        found: dict[Any, Any] = {}
        for group, values in zip(groups.values(), await pipe.execute(), strict=True):
            found.update(zip(group, values, strict=True))
        return [found[key] for key in keys]

    async def mset_nonatomic(self, mapping: Mapping[Any, Any]) -> list[bool]:
        """MSET per slot (not atomic across slots); one result per slot, as redis-py."""
        pairs = [x for pair in mapping.items() for x in pair]
        groups = self._by_slot(pairs, 2)
        pipe = self.pipeline()
        for group in groups.values():
            pipe.execute_command("MSET", *group)
        return list(await pipe.execute())

    async def cluster_delslots(self, *slots: Any) -> list[bool]:
        """CLUSTER DELSLOTS, each slot sent to the node that serves it."""
        return [await self.execute_command("CLUSTER DELSLOTS", slot) for slot in slots]

    # redis-py's own command builders (they only assemble arguments for execute_command), with
    # RedisCluster's defaults (client_tracking_* on every node) and its refusals (slaveof,
    # replicaof, swapdb and hotkeys_* raise, as they make no sense on a cluster).
    client_tracking_off = ClusterManagementCommands.client_tracking_off
    client_tracking_on = ClusterManagementCommands.client_tracking_on
    hotkeys_get = ClusterManagementCommands.hotkeys_get
    hotkeys_reset = ClusterManagementCommands.hotkeys_reset
    hotkeys_start = ClusterManagementCommands.hotkeys_start
    hotkeys_stop = ClusterManagementCommands.hotkeys_stop
    readonly = ClusterManagementCommands.readonly
    readwrite = ClusterManagementCommands.readwrite
    replicaof = ClusterManagementCommands.replicaof
    slaveof = ClusterManagementCommands.slaveof
    swapdb = ClusterManagementCommands.swapdb
    cluster_addslots = ClusterManagementCommands.cluster_addslots
    cluster_addslotsrange = ClusterManagementCommands.cluster_addslotsrange
    cluster_bumpepoch = ClusterManagementCommands.cluster_bumpepoch
    cluster_count_failure_report = ClusterManagementCommands.cluster_count_failure_report
    cluster_countkeysinslot = ClusterManagementCommands.cluster_countkeysinslot
    cluster_delslotsrange = ClusterManagementCommands.cluster_delslotsrange
    cluster_failover = ClusterManagementCommands.cluster_failover
    cluster_flushslots = ClusterManagementCommands.cluster_flushslots
    cluster_get_keys_in_slot = ClusterManagementCommands.cluster_get_keys_in_slot
    cluster_info = ClusterManagementCommands.cluster_info
    cluster_keyslot = ClusterManagementCommands.cluster_keyslot
    cluster_links = ClusterManagementCommands.cluster_links
    cluster_meet = ClusterManagementCommands.cluster_meet
    cluster_myid = ClusterManagementCommands.cluster_myid
    cluster_myshardid = ClusterManagementCommands.cluster_myshardid
    cluster_nodes = ClusterManagementCommands.cluster_nodes
    cluster_replicas = ClusterManagementCommands.cluster_replicas
    cluster_replicate = ClusterManagementCommands.cluster_replicate
    cluster_reset = ClusterManagementCommands.cluster_reset
    cluster_save_config = ClusterManagementCommands.cluster_save_config
    cluster_set_config_epoch = ClusterManagementCommands.cluster_set_config_epoch
    cluster_setslot = ClusterManagementCommands.cluster_setslot
    cluster_setslot_stable = ClusterManagementCommands.cluster_setslot_stable
    cluster_shards = ClusterManagementCommands.cluster_shards
    cluster_slots = ClusterManagementCommands.cluster_slots


def _describe(node: Node, server_type: str) -> ClusterNode:
    return ClusterNode(node.address[0], node.address[1], server_type)
