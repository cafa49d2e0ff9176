"""``ClusterClient``: a Redis Cluster client with redis-py's command API.

It owns the lifetime of everything (a nursery holding each node's pool work, the topology
refresher, the retiring of departed nodes) and composes the layers below: the slot map
(``routing.slotmap``: nodes, slot owners, MOVED/ASK), the router (``routing.router``: where a
command goes, redirects and retries, counted in :meth:`ClusterClient.stats`), and the fan-out
of multi-node commands (``fanout``).  docs/architecture.md follows one command through them.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import attrs
import trio

from ..config import ConnectionConfig, RetryOptions, connection_options
from ..conn.dialer import Dialer
from ..conn.watchdog import Watchdog
from ..errors import PoolClosedError
from ..hooks import Hooks, default_hooks
from ..jobs.credentials import CredentialManager, CredentialSource
from ..jobs.handoff import HandoffManager
from ..jobs.maint import MaintNotificationsOptions
from ..lifetime import start_soon
from ..pooling.breaker import BreakerOptions, BreakerState
from ..pooling.pool import ConnectionInfo, PoolOptions, PoolStats
from ..redispy import AbstractRetry, AsyncCoreCommands
from ..routing.nodes import NodeFactory
from ..routing.refresher import Refresher
from ..routing.router import Router
from ..routing.rules import CommandTable, key_slot
from ..routing.slotmap import Node, ReadFrom, SlotMap
from ..routing.specs import CommandSpec, CommandSpecs
from ..routing.topology import Address, AddressRemap, Topology
from ..wire.encoding import Encoding, reply_decoder
from .clientbase import ClientBase, Parsed
from .cluster_pipeline import ClusterPipeline
from .clusterhelpers import ClusterHelpers
from .fanout import NOT_SPLIT, FanOut
from .options import take_redis_py_options
from .pubsub import PubSubRegistry

__all__ = ["ClusterClient", "ClusterStats", "ReadFrom", "RetryOptions"]

logger = logging.getLogger("trio_cluster.cluster")


@attrs.frozen
class ClusterStats:
    """A snapshot of the whole client: per-node pools, totals, redirects, retries, errors."""

    nodes: dict[str, PoolStats]
    totals: dict[str, float]
    moved: int
    ask: int
    retries: dict[str, int]
    errors: dict[str, int]
    """Errors that reached callers, by exception class name."""
    refreshes: int
    refresh_failures: int
    breakers: dict[str, str]
    breaker_rejections: int
    topology: dict[str, list[str]]
    """Primary -> replicas, as the client currently sees the cluster."""
    isolated: int = 0
    """Commands failed at once because their node was known bad (``RetryOptions``'s
    ``failover_wait``)."""


# redis-py's own mixins disagree on command_info's signature once another base is added.
class ClusterClient(ClientBase, ClusterHelpers, AsyncCoreCommands):  # type: ignore[misc]
    """A Redis Cluster client.

    Start from ``host``/``port``, or ``startup_nodes=[(host, port), ...]``, or
    :meth:`from_url`.  Other keywords configure connections
    (:class:`~trio_cluster.config.ConnectionConfig`: timeouts, credentials, TLS...).
    ``pool`` sizes each node's pool.  ``read_from`` sends read-only commands to replicas;
    with ``ReadFrom.LOWEST_LATENCY`` a node not read from for ``latency_probe_interval``
    seconds gets one read, to measure it again (a node that once looked slow is not
    forgotten).
    ``address_remap`` maps every address the cluster announces, in topology replies and in
    MOVED/ASK, before use.  ``require_full_coverage`` (as redis-py's, on by default) refuses
    a slot map with a slot no node serves; ``reinitialize_steps``: every how many MOVED
    replies a full refresh is asked for (1 by default, redis-py's is 5; 0: never, a MOVED
    always patches its own slot); ``dynamic_startup_nodes=False`` refreshes from the startup
    nodes only.  redis-py's other options (``read_from_replicas``,
    ``load_balancing_strategy``, ``max_connections``, ``retry=Retry(...)``,
    ``cluster_error_retry_attempts``, ``ssl_*``...) are mapped by
    :mod:`trio_cluster.clients.options`.
    """

    # redis-py's command protocol declares it; nothing here dispatches redis-py events.
    _event_dispatcher: Any = None

    def __init__(
        self,
        host: str | None = None,
        port: int | None = None,
        *,
        startup_nodes: Sequence[Address] | None = None,
        pool: PoolOptions | None = None,
        protocol: int | None = None,
        read_from: ReadFrom | str | None = None,
        address_remap: AddressRemap | None = None,
        retry: RetryOptions | AbstractRetry[Any] | None = None,
        breaker: BreakerOptions | None = None,
        refresh_interval: float = 30.0,
        refresh_min_interval: float = 0.1,
        latency_probe_interval: float = 1.0,
        credentials: CredentialSource | None = None,
        maint_notifications: str | MaintNotificationsOptions = "auto",
        max_pubsub_connections: int = 64,
        require_full_coverage: bool = True,
        reinitialize_steps: int = 1,
        dynamic_startup_nodes: bool = True,
        **connection: Any,
    ) -> None:
        nodes = list(startup_nodes or [])
        if host is not None or port is not None:
            nodes.insert(0, (host or "127.0.0.1", port or 6379))
        if not nodes:
            raise ValueError("give host/port or startup_nodes: at least one node to start from")
        owner = type(self).__name__
        connection = dict(connection)
        redis_py = take_redis_py_options(owner, connection, pool=pool, retry=retry, cluster=True)
        if redis_py.read_from is not None and read_from is not None:
            raise TypeError(
                f"give {owner}() read_from= or redis-py's read_from_replicas/"
                "load_balancing_strategy, not both"
            )
        pool, retry_options = redis_py.pool, redis_py.retry
        refresh_min_interval = redis_py.cluster.get("refresh_min_interval", refresh_min_interval)
        self.read_from = ReadFrom(redis_py.read_from or read_from or ReadFrom.PRIMARY)
        self.startup_nodes: list[Address] = [
            address_remap((n[0], n[1])) if address_remap else (n[0], n[1]) for n in nodes
        ]
        maint = (
            maint_notifications
            if isinstance(maint_notifications, MaintNotificationsOptions)
            else MaintNotificationsOptions(mode=maint_notifications)
        )
        connection = connection_options(owner, connection)
        self._encoding = Encoding.take_from(connection)
        self._base_config = ConnectionConfig(
            host=self.startup_nodes[0][0],
            port=self.startup_nodes[0][1],
            protocol=2 if protocol == 2 else 3,
            readonly=self.read_from is not ReadFrom.PRIMARY,
            maint_notifications=maint.mode,
            moving_endpoint_type=maint.endpoint_type,
            **connection,
        )
        self._watchdog = Watchdog()
        self._hooks = Hooks(default_hooks())
        self._db = self._base_config.db
        self._credentials = CredentialManager(credentials) if credentials is not None else None
        # One-off connections to any node (topology fetch, pub/sub, MONITOR); each node's
        # pool has its own dialer (its endpoint may move).
        self._dialer = Dialer(self._base_config, watchdog=None, credentials=self._credentials)
        self.pool_options = pool if pool is not None else PoolOptions()
        self.retry = retry_options if retry_options is not None else RetryOptions()
        self.breaker_options = breaker if breaker is not None else BreakerOptions()
        self._replies = self._encoding.reply_parser(protocol, cluster=True)
        self._specs = CommandSpecs(self._replies)
        self._retired: list[Node] = []
        #: Keeps the topology current, in the background.
        self.refresher = Refresher(
            dialer=self._dialer,
            startup=self.startup_nodes,
            remap=address_remap,
            current=lambda: self.slot_map.topology,
            install=self._install,
            interval=refresh_interval,
            min_interval=refresh_min_interval,
            known_bad=lambda address: self.slot_map.known_bad(address),
            require_full_coverage=require_full_coverage,
            dynamic_startup_nodes=dynamic_startup_nodes,
        )
        #: Makes each node: its dialer, breaker, pool and maintenance handoffs.
        self._make_node = NodeFactory(
            config=self._base_config,
            pool=self.pool_options,
            breaker=self.breaker_options,
            maint=maint,
            watchdog=self._watchdog,
            credentials=self._credentials,
            hooks=self._hooks,
            on_smigrated=self.refresher.request,
            reads_replicas=self.read_from is not ReadFrom.PRIMARY,
        )
        #: The one owner of nodes, slot owners, the public topology and MOVED/ASK.
        self.slot_map = SlotMap(
            read_from=self.read_from,
            remap=address_remap,
            create=self._create_node,
            start=self._start_node,
            request_refresh=self.refresher.request,
            refresh=self.refresher.refresh,
            latency_probe_interval=latency_probe_interval,
            reinitialize_steps=reinitialize_steps,
        )
        #: Where each command goes, with the redirect and retry rules.
        self.router = Router(
            self.slot_map, self.retry, self._dialer, self._specs, self.startup_nodes
        )
        self._fanout = FanOut(self.router, self._replies)
        self._shown_url: str | None = None
        self.pubsub_registry = PubSubRegistry(max_pubsub_connections)
        self._errors: Counter[str] = Counter()
        self._retired_rejections = 0

    def __repr__(self) -> str:
        where = self._shown_url or ",".join(f"{h}:{p}" for h, p in self.startup_nodes)
        return f"<ClusterClient {where} nodes={len(self.slot_map.nodes())}>"

    # --- lifetime ----------------------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._watchdog.run)
        if self._credentials is not None:
            await self._credentials.start(nursery)
        await self.refresher.once(initial=True)
        start_soon(nursery, self.refresher.run)
        self._opened()

    def _connection_config(self) -> ConnectionConfig:
        node = self.slot_map.default_node
        if node is None:
            return self._base_config
        return attrs.evolve(self._base_config, host=node.address[0], port=node.address[1])

    def _maintenance_managers(self) -> list[HandoffManager]:
        return [n.handoffs for n in self.slot_map.nodes() if n.handoffs is not None]

    async def aclose(self) -> None:
        """Close every node's pool and stop the background work now (redis-py's ``aclose``);
        leaving ``async with`` does the same.  Idempotent."""
        await self._stop()

    async def _stop(self) -> None:
        self.router.policy.closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            for node in [*self.slot_map.nodes(), *self._retired]:
                await node.pool.aclose()
        self._closed()

    # --- nodes and topology ------------------------------------------------------------------

    def _create_node(self, address: Address, replica: bool) -> Node:
        """A node for the slot map (not started), made by the one node factory."""
        if self.router.policy.closed or self._nursery is None:
            raise PoolClosedError("the cluster client is closed")
        return self._make_node(address, replica)

    async def _start_node(self, node: Node) -> None:
        """Start a new node's background work in the client's nursery."""
        assert self._nursery is not None
        await node.start(self._nursery)

    async def _install(self, topology: Topology, table: CommandTable | None) -> None:
        """Make ``topology`` (and the command table) current; departed nodes are closed once
        their commands are done."""
        if table is not None:
            self._specs.install(table)
        for node in await self.slot_map.install(topology):
            self._retired_rejections += node.breaker.rejected  # keep the count cumulative
            self._retired.append(node)
            assert self._nursery is not None
            start_soon(self._nursery, self._retire, node)

    async def _retire(self, node: Node) -> None:
        """Close a departed node's pool once its in-flight commands are done (bounded)."""
        with trio.move_on_after(30.0):
            while node.pool.stats().in_use_connections:  # noqa: ASYNC110 - no event for "all returned"
                await trio.sleep(0.05)
        await node.pool.aclose()
        self._retired.remove(node)

    def request_refresh(self) -> None:
        """Ask the background refresher for a topology refresh (never blocks)."""
        self.refresher.request()

    async def refresh(self) -> None:
        """Request a topology refresh and wait until one has completed."""
        await self.refresher.refresh()

    # --- running commands ----------------------------------------------------------------------

    def _route(
        self, spec: CommandSpec, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Awaitable[Any]:
        """Where a command goes.  The hot path (GET, SET, INCR...: the only key is the first
        argument) goes straight to the slot's node, under the retry policy; any other
        command is routed by :meth:`_route_other`."""
        if spec.keyed_first and len(args) > 1 and not (options and "target_nodes" in options):
            return self.router.on_slot(key_slot(args[1]), args, spec, spec.readonly)
        return self._route_other(spec, args, options)

    async def _route_other(
        self, spec: CommandSpec, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        """``target_nodes=`` and keyless commands go to the nodes they name (fan-out),
        multi-key commands whose keys span slots are split per slot, the others go to their
        slot's node under the retry policy."""
        fanout = self._fanout
        targets = options.pop("target_nodes", None) if options else None
        if targets is not None:
            return Parsed(await fanout.on_targets(targets, spec, args, options))
        if spec.splittable and len(args) > 2:
            split = await fanout.split(spec, args, options)
            if split is not NOT_SPLIT:
                return Parsed(split)
        route = await self.router.route(args, spec)
        if type(route) is not int:
            return Parsed(await fanout.keyless(route, spec, args, options))  # type: ignore[arg-type]
        server = spec.on_server(args)
        readonly = server is not None and server.readonly
        return await self.router.on_slot(route, args, spec, readonly)

    # --- multi-node helpers ------------------------------------------------------------------

    async def scan_iter(  # type: ignore[override]
        self,
        match: Any = None,
        count: int | None = None,
        _type: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Every key of every primary, node by node (keys may repeat across a resharding)."""
        decode = reply_decoder(self._replies)
        scan = self._specs.get("SCAN")
        for node in self.slot_map.primaries():
            cursor: Any = 0
            while True:
                args: list[Any] = ["SCAN", cursor]
                if match is not None:
                    args += ["MATCH", match]
                if count is not None:
                    args += ["COUNT", count]
                if _type is not None:
                    args += ["TYPE", _type]
                cursor, keys = await self.router.call(node, tuple(args), scan)
                if decode is not None:
                    keys = decode(keys)
                for key in keys:
                    yield key
                if int(cursor) == 0:
                    break

    def pipeline(self, transaction: bool = False, shard_hint: Any = None) -> ClusterPipeline:
        """A pipeline across nodes (``transaction=True``: MULTI/EXEC within one slot; use
        ``watch()`` for optimistic locking on a connection of the slot's primary).
        ``shard_hint`` is accepted and unused, as in redis-py."""
        return ClusterPipeline(
            self, self.router, self._encoding, self._replies, transaction, self._hooks
        )

    # --- observability -------------------------------------------------------------------------

    def stats(self) -> ClusterStats:
        """Per-node pool stats, totals, redirects, retries, surfaced errors, breakers."""
        nodes = self.slot_map.nodes()
        per_node = {node.name: node.pool.stats() for node in nodes}
        totals: dict[str, float] = {}
        for pool_stats in per_node.values():
            for field in attrs.fields(PoolStats):
                value = getattr(pool_stats, field.name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[field.name] = totals.get(field.name, 0) + value
        topology = {
            f"{s.primary[0]}:{s.primary[1]}": [f"{h}:{p}" for h, p in s.replicas]
            for s in self.slot_map.topology.shards
        }
        return ClusterStats(
            nodes=per_node,
            totals=totals,
            moved=self.slot_map.moved,
            ask=self.slot_map.ask,
            retries=dict(self.router.policy.retries),
            errors=dict(self._errors),
            refreshes=self.refresher.refreshes,
            refresh_failures=self.refresher.failures,
            breakers={n.name: n.breaker.state.value for n in nodes},
            breaker_rejections=self._retired_rejections + sum(n.breaker.rejected for n in nodes),
            topology=topology,
            isolated=self.router.policy.isolated,
        )

    def connections(self) -> list[ConnectionInfo]:
        """Every connection of every node's pool."""
        return [info for node in self.slot_map.nodes() for info in node.pool.connections()]

    def node_names(self) -> list[str]:
        """``host:port`` of every node the client currently knows."""
        return [node.name for node in self.slot_map.nodes()]

    @property
    def topology(self) -> Topology:
        """The slot map the client is routing by."""
        return self.slot_map.topology

    @property
    def pubsub_shards(self) -> SlotMap:
        """The slot map: it places a PubSub's classic connection and shard channels."""
        return self.slot_map

    def breaker_state(self, name: str) -> BreakerState:
        """The breaker state of node ``host:port``."""
        node = self.slot_map.by_name(name)
        if node is None:
            raise KeyError(name)
        return node.breaker.state
