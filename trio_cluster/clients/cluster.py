"""``ClusterClient``: a Redis Cluster client with redis-py's command API.

It owns the lifetime of everything (a nursery holding each node's pool work, the topology
refresher, the retiring of departed nodes) and composes the layers below: the slot map
(``routing.slotmap``: nodes, slot owners, MOVED/ASK), the router (``routing.router``: where a
command goes, redirects and retries, counted in :meth:`ClusterClient.stats`), and the fan-out
of multi-node commands (``fanout``).  docs/architecture.md follows one command through them.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import trio
from redis import exceptions as rex

from ..config import ConnectionConfig, connection_options
from ..conn.connection import Connection
from ..conn.watchdog import Watchdog
from ..errors import (
    ArgumentTypeError,
    PoolClosedError,
)
from ..jobs.credentials import CredentialManager, CredentialSource
from ..jobs.dialer import Dialer
from ..jobs.maint import MaintenanceManager, MaintNotificationsOptions
from ..lifetime import raise_not_open, start_soon
from ..pooling.breaker import BreakerOptions, BreakerState, CircuitBreaker
from ..pooling.pool import ConnectionInfo, Pool, PoolOptions, PoolStats
from ..redispy import EMPTY_RESPONSE, AsyncCoreCommands
from ..routing.refresher import Refresher
from ..routing.router import RetryOptions, Router
from ..routing.rules import CommandTable, key_slot
from ..routing.slotmap import Node, ReadFrom, SlotMap
from ..routing.topology import Address, AddressRemap, Topology
from ..wire.commands import normalize_args
from ..wire.encoding import Encoding, prepare_args, reply_decoder
from .clientbase import ClientBase
from .cluster_pipeline import ClusterPipeline
from .clusterhelpers import ClusterHelpers
from .fanout import NOT_SPLIT, SPLITTABLE, FanOut
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


# redis-py's own mixins disagree on command_info's signature once another base is added.
class ClusterClient(ClientBase, ClusterHelpers, AsyncCoreCommands):  # type: ignore[misc]
    """A Redis Cluster client.

    Start from ``host``/``port``, or ``startup_nodes=[(host, port), ...]``, or
    :meth:`from_url`.  Other keywords configure connections
    (:class:`~trio_cluster.config.ConnectionConfig`: timeouts, credentials, TLS...).
    ``pool`` sizes each node's pool.  ``read_from`` sends read-only commands to replicas.
    ``address_remap`` maps every address the cluster announces, in topology replies and in
    MOVED/ASK, before use.
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
        read_from: ReadFrom | str = ReadFrom.PRIMARY,
        address_remap: AddressRemap | None = None,
        retry: RetryOptions | None = None,
        breaker: BreakerOptions | None = None,
        refresh_interval: float = 30.0,
        refresh_min_interval: float = 0.1,
        credentials: CredentialSource | None = None,
        maint_notifications: str | MaintNotificationsOptions = "auto",
        max_pubsub_connections: int = 64,
        **connection: Any,
    ) -> None:
        nodes = list(startup_nodes or [])
        if host is not None or port is not None:
            nodes.insert(0, (host or "127.0.0.1", port or 6379))
        if not nodes:
            raise ValueError("give host/port or startup_nodes: at least one node to start from")
        self.read_from = ReadFrom(read_from)
        self.startup_nodes: list[Address] = [
            address_remap((n[0], n[1])) if address_remap else (n[0], n[1]) for n in nodes
        ]
        self._maint = (
            maint_notifications
            if isinstance(maint_notifications, MaintNotificationsOptions)
            else MaintNotificationsOptions(mode=maint_notifications)
        )
        connection = connection_options(type(self).__name__, connection)
        self._encoding = Encoding.take_from(connection)
        self._base_config = ConnectionConfig(
            host=self.startup_nodes[0][0],
            port=self.startup_nodes[0][1],
            protocol=2 if protocol == 2 else 3,
            readonly=self.read_from is not ReadFrom.PRIMARY,
            maint_notifications=self._maint.mode,
            moving_endpoint_type=self._maint.endpoint_type,
            **connection,
        )
        self._watchdog = Watchdog()
        self._credentials = CredentialManager(credentials) if credentials is not None else None
        # One-off connections to any node (topology fetch, pub/sub, MONITOR); each node's
        # pool has its own dialer (its endpoint may move).
        self._dialer = Dialer(self._base_config, watchdog=None, credentials=self._credentials)
        self.pool_options = pool if pool is not None else PoolOptions()
        self.retry = retry if retry is not None else RetryOptions()
        self.breaker_options = breaker if breaker is not None else BreakerOptions()
        self._replies = self._encoding.reply_parser(protocol, cluster=True)
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
        )
        #: The one owner of nodes, slot owners, the public topology and MOVED/ASK.
        self.slot_map = SlotMap(
            read_from=self.read_from,
            remap=address_remap,
            create=self._create_node,
            start=self._start_node,
            request_refresh=self.refresher.request,
            refresh=self.refresher.refresh,
        )
        #: Where each command goes, with the redirect and retry rules.
        self.router = Router(
            self.slot_map, self.retry, self._dialer, CommandTable(), self.startup_nodes
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

    def _connection_config(self) -> ConnectionConfig:
        node = self.slot_map.default_node
        if node is None:
            return self._base_config
        return attrs.evolve(self._base_config, host=node.address[0], port=node.address[1])

    def _maintenance_managers(self) -> list[MaintenanceManager]:
        return [n.dialer.maint for n in self.slot_map.nodes() if n.dialer.maint]

    async def aclose(self) -> None:
        """Close every node's pool and stop the background work now (redis-py's ``aclose``);
        leaving ``async with`` does the same.  Idempotent."""
        await self._stop()

    async def _stop(self) -> None:
        self.router.closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            for node in [*self.slot_map.nodes(), *self._retired]:
                await node.pool.aclose()

    # --- nodes and topology ------------------------------------------------------------------

    def _create_node(self, address: Address) -> Node:
        """A node for the slot map: its dialer, pool and breaker (the pool not started)."""
        if self.router.closed or self._nursery is None:
            raise PoolClosedError("the cluster client is closed")
        config = attrs.evolve(self._base_config, host=address[0], port=address[1])
        name = config.address
        dialer = Dialer(config, watchdog=self._watchdog, credentials=self._credentials)
        pool: Pool[Connection] = Pool(
            dialer, self.pool_options, node_name=name, timeout=self._pool_timeout()
        )
        dialer.attach(pool, self._maint, on_smigrated=self.request_refresh)
        breaker = CircuitBreaker(name, self.breaker_options)
        if pool.autopipeliner is not None:
            pool.autopipeliner.breaker = breaker  # batches go past it, not each command
        return Node(address, pool, breaker, dialer)

    async def _start_node(self, node: Node) -> None:
        """Start a new node's background work in the client's nursery."""
        assert self._nursery is not None
        if node.dialer.maint is not None:
            node.dialer.maint.start(self._nursery)
        await node.pool.start_background(self._nursery)

    def _pool_timeout(self) -> float:
        if self.pool_options.timeout is not None:
            return self.pool_options.timeout
        read = self._base_config.read_timeout
        return math.inf if read is None else read + 1.0

    async def _install(self, topology: Topology, table: CommandTable | None) -> None:
        """Make ``topology`` (and the command table) current; departed nodes are closed once
        their commands are done."""
        if table is not None:
            self.router.commands = table
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

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Route and run one command, following redirects and retrying as documented."""
        name = args[0]  # the name redis-py looks the callback up by ("CONFIG GET")
        try:
            readonly = self.router.commands.single_key.get(name) if len(args) > 1 else None
            if readonly is not None and not (options and "target_nodes" in options):
                # The hot path (GET, SET, INCR...): the slot is that of the first argument.
                if self._encoding.encodes_str:
                    args = prepare_args(args, self._encoding)
                try:
                    reply = await self.router.on_slot(
                        key_slot(args[1]), args, readonly, simple=True
                    )
                except ArgumentTypeError:
                    # Refused before anything was sent.  Convert what redis-py accepts
                    # (bytearray...) and route again, or raise redis-py's DataError.
                    prepared = prepare_args(args, self._encoding)
                    if prepared is args:
                        raise
                    reply = _RETRY  # outside this handler: an error is counted once
            else:
                args = normalize_args(args)
                command = args[0]  # the first word, still text (routing reads it)
                # Checked before anything is sent (a split command sends several).
                args = prepare_args(args, self._encoding)
                targets = options.pop("target_nodes", None) if options else None
                if targets is not None:
                    return await self._fanout.on_targets(targets, name, args, options)
                if command in SPLITTABLE and len(args) > 2:
                    split = await self._fanout.split(command, args, options)
                    if split is not NOT_SPLIT:
                        return split
                # One look-up in the command table serves routing and the retry rules.
                spec = self.router.commands.spec(args)
                route = await self.router.route(args, spec)
                if type(route) is not int:
                    return await self._fanout.keyless(route, name, args, options)  # type: ignore[arg-type]
                readonly = spec is not None and spec.readonly
                reply = await self.router.on_slot(route, args, readonly)
        except rex.ResponseError as exc:
            if options and EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            self._errors[type(exc).__name__] += 1
            raise
        except Exception as exc:
            self._errors[type(exc).__name__] += 1
            if self._nursery is None:
                raise_not_open(self)
            raise
        if reply is _RETRY:
            return await self.execute_command(*prepared, **options)
        return self._replies.parse(name, reply, options)

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
                cursor, keys = await self.router.call(node, tuple(args))
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
        return ClusterPipeline(self, self.router, self._encoding, self._replies, transaction)

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
            retries=dict(self.router.retries),
            errors=dict(self._errors),
            refreshes=self.refresher.refreshes,
            refresh_failures=self.refresher.failures,
            breakers={n.name: n.breaker.state.value for n in nodes},
            breaker_rejections=self._retired_rejections + sum(n.breaker.rejected for n in nodes),
            topology=topology,
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


_RETRY: Any = object()
