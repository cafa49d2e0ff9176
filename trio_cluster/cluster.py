"""``ClusterClient``: the slot map, one pool per node, routing, redirects, retries, refresh.

How a command travels: its keys give a slot (``routing``), the slot gives a node (the current
``Topology``), the node's breaker lets it through, its pool lends a connection, and the reply
comes back typed.  Then:

* MOVED: the slot is pointed at the new owner at once, a topology refresh is requested
  (single-flight, rate-limited, in the background) and the command goes to the new owner.
* ASK: ASKING and the command go to the named node; the map is left alone.
* TRYAGAIN, CLUSTERDOWN, MASTERDOWN, LOADING: retried with exponential backoff and jitter.
* A command that provably never reached a server (refused, dial failure, breaker open) is
  retried for any command, after a refresh, inside a time budget long enough to ride out a
  failover.  A command that may have run is retried only when it only reads.

Every redirect and retry is counted in :meth:`ClusterClient.stats`, apart from the errors
that reached callers.  Background work (pools, refresh, retiring departed nodes) lives in the
nursery that ``async with ClusterClient(...)`` opens.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, Self

import attrs
import trio
from redis import exceptions as rex
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.commands import AsyncCoreCommands

from .autopipeline import execute_guarded
from .breaker import BreakerOptions, BreakerState, CircuitBreaker, CircuitOpenError
from .client import run_blocking
from .clientbase import ClientBase
from .clusterhelpers import ClusterHelpers, ClusterNode
from .commands import COMMAND_NAME, blocking_seconds, normalize_args
from .config import ConnectionConfig, connection_options, parse_url, redact_url
from .connection import Connection, mark_unsent, was_unsent
from .credentials import CredentialManager, CredentialSource
from .dialer import Dialer
from .encoding import Encoding, prepare_args, reply_decoder
from .errors import (
    ArgumentTypeError,
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterUnreachableError,
    CrossSlotKeysError,
    MasterDownError,
    MovedError,
    PoolClosedError,
    PoolTimeoutError,
    TryAgainError,
    UnknownCommandError,
)
from .lifetime import first_error, open_nursery, raise_not_open
from .logs import LogLimiter
from .maint import MaintenanceManager, MaintNotificationsOptions
from .pool import ConnectionInfo, Pool, PoolOptions, PoolStats
from .pubsub import PubSubRegistry
from .routing import (
    RESULT_CALLBACKS,
    CommandSpec,
    CommandTable,
    Target,
    key_slot_of,
    keyless_target,
    slot_of,
)
from .topology import SLOTS, Address, AddressRemap, Topology, parse_shards, parse_slots
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .cluster_pipeline import ClusterPipeline

__all__ = ["ClusterClient", "ClusterStats", "ReadFrom", "RetryOptions"]

logger = logging.getLogger("trio_cluster.cluster")

_TRANSIENT = (TryAgainError, ClusterDownError, MasterDownError, BusyLoadingError)
_NETWORK = (rex.ConnectionError, rex.TimeoutError)
#: Multi-key commands split per slot when their keys span several slots (not atomic).
_SPLITTABLE = frozenset({"MGET", "MSET", "DEL", "EXISTS", "UNLINK", "TOUCH"})


class ReadFrom(enum.Enum):
    """Where read-only commands go."""

    PRIMARY = "primary"
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    LOWEST_LATENCY = "lowest-latency"


@attrs.frozen(kw_only=True)
class RetryOptions:
    """How hard the client tries before an error reaches the caller."""

    max_redirects: int = 5
    """MOVED/ASK followed per command."""
    retries: int = 3
    """Retries of a read whose outcome is unknown (a timeout or a dropped connection)."""
    transient_retries: int = 30
    """Retries of replies saying the server did not run the command (TRYAGAIN, CLUSTERDOWN,
    MASTERDOWN, LOADING), within ``budget``."""
    backoff_base: float = 0.025
    """First backoff (seconds); doubles each retry, with full jitter."""
    backoff_cap: float = 0.5
    """Longest single backoff."""
    budget: float = 10.0
    """Seconds a command that provably never reached a server keeps being retried."""

    def __attrs_post_init__(self) -> None:
        for name in ("max_redirects", "retries", "transient_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0; got {value!r}")
        for name in ("backoff_base", "backoff_cap", "budget"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0; got {value!r}")

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th retry (0-based)."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


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


class _Node:
    """One node: its pool, breaker and measured latency."""

    def __init__(self, address: Address, pool: Pool[Connection], breaker: CircuitBreaker) -> None:
        self.address = address
        self.name = f"{address[0]}:{address[1]}"
        self.pool = pool
        self.breaker = breaker
        self.latency = 0.0
        self.started = trio.Event()
        self.retired = False
        self.dialer: Dialer | None = None

    def __repr__(self) -> str:
        return f"<node {self.name}{' retired' if self.retired else ''}>"


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
        self._remap = address_remap
        self.startup_nodes = [self._map(tuple(n)) for n in nodes]  # type: ignore[arg-type]
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
        for name, value in (("refresh_interval", refresh_interval),
                            ("refresh_min_interval", refresh_min_interval)):  # fmt: skip
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0; got {value!r}")
        self.refresh_interval = float(refresh_interval)
        self.refresh_min_interval = float(refresh_min_interval)
        self._replies = self._encoding.reply_parser(protocol, cluster=True)
        self._commands = CommandTable()
        self._nodes: dict[Address, _Node] = {}
        self._retired: list[_Node] = []
        self._topology = Topology.from_shards([])
        self._slot_primary: list[_Node | None] = [None] * SLOTS
        self._slot_replicas: list[tuple[_Node, ...]] = [()] * SLOTS
        self._shard_nodes: list[tuple[_Node, tuple[_Node, ...]]] = []
        self._round_robin = itertools.count()
        self._default_node: _Node | None = None
        self._refresh_wanted = trio.Event()
        self._refresh_done = trio.Event()
        self._last_refresh = -math.inf
        self._closed = False
        self._shown_url: str | None = None
        self._pubsub_registry = PubSubRegistry(max_pubsub_connections)
        self._moved = 0
        self._ask = 0
        self._retries: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._refreshes = 0
        self._refresh_failures = 0
        self._retired_rejections = 0
        self._outage_log = LogLimiter(logger)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A client that starts from the node a ``redis://`` / ``rediss://`` URL names."""
        options = parse_url(url)
        options.update(kwargs)
        client = cls(**options)
        client._shown_url = redact_url(url)
        return client

    def __repr__(self) -> str:
        where = self._shown_url or ",".join(f"{h}:{p}" for h, p in self.startup_nodes)
        return f"<ClusterClient {where} nodes={len(self._nodes)}>"

    def _map(self, address: Address) -> Address:
        return self._remap(address) if self._remap is not None else address

    # --- lifetime ----------------------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._watchdog.run)
        if self._credentials is not None:
            await self._credentials.start(nursery)
        await self._refresh_once(initial=True)
        nursery.start_soon(self._refresher)

    def _connection_config(self) -> ConnectionConfig:
        node = self._default_node
        if node is None:
            return self._base_config
        return attrs.evolve(self._base_config, host=node.address[0], port=node.address[1])

    def _maintenance_managers(self) -> list[MaintenanceManager]:
        return [n.dialer.maint for n in self._nodes.values() if n.dialer and n.dialer.maint]

    async def aclose(self) -> None:
        """Close every node's pool and stop the background work now (redis-py's ``aclose``);
        leaving ``async with`` does the same.  Idempotent."""
        await self._stop()

    async def _stop(self) -> None:
        self._closed = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        with trio.CancelScope(shield=True):
            for node in [*self._nodes.values(), *self._retired]:
                await node.pool.aclose()

    # --- nodes and topology ------------------------------------------------------------------

    async def _node(self, address: Address) -> _Node:
        """The node at ``address`` (already remapped), its pool started."""
        node = self._nodes.get(address)
        if node is None:
            if self._closed or self._nursery is None:
                raise PoolClosedError("the cluster client is closed")
            config = attrs.evolve(self._base_config, host=address[0], port=address[1])
            name = config.address
            dialer = Dialer(config, watchdog=self._watchdog, credentials=self._credentials)
            pool: Pool[Connection] = Pool(
                dialer, self.pool_options, node_name=name, timeout=self._pool_timeout()
            )
            dialer.attach(pool, self._maint, on_smigrated=self.request_refresh)
            node = _Node(address, pool, CircuitBreaker(name, self.breaker_options))
            node.dialer = dialer
            self._nodes[address] = node
            try:
                if dialer.maint is not None:
                    dialer.maint.start(self._nursery)
                await pool.start_background(self._nursery)
            finally:
                node.started.set()
        elif not node.started.is_set():
            await node.started.wait()
        return node

    def _pool_timeout(self) -> float:
        if self.pool_options.timeout is not None:
            return self.pool_options.timeout
        read = self._base_config.read_timeout
        return math.inf if read is None else read + 1.0

    async def _install(self, topology: Topology) -> None:
        """Make ``topology`` current: nodes created, slot tables rebuilt, departed nodes retired."""
        shard_nodes = []
        for shard in topology.shards:
            primary = await self._node(shard.primary)
            replicas = tuple([await self._node(r) for r in shard.replicas])
            shard_nodes.append((primary, replicas))
        slot_primary: list[_Node | None] = [None] * SLOTS
        slot_replicas: list[tuple[_Node, ...]] = [()] * SLOTS
        for slot, index in enumerate(topology.owner):
            if index >= 0:
                slot_primary[slot], slot_replicas[slot] = shard_nodes[index]
        self._slot_primary = slot_primary
        self._slot_replicas = slot_replicas
        self._shard_nodes = shard_nodes
        self._topology = topology
        current = set(topology.nodes)
        for address in [a for a in self._nodes if a not in current]:
            node = self._nodes.pop(address)
            node.retired = True
            self._retired_rejections += node.breaker.rejected  # keep the count cumulative
            self._retired.append(node)
            assert self._nursery is not None
            self._nursery.start_soon(self._retire, node)
        if self._default_node is None or self._default_node.address not in topology.primaries:
            self._default_node = shard_nodes[0][0] if shard_nodes else None

    async def _retire(self, node: _Node) -> None:
        """Close a departed node's pool once its in-flight commands are done (bounded)."""
        with trio.move_on_after(30.0):
            while node.pool.stats().in_use_connections:  # noqa: ASYNC110 - no event for "all returned"
                await trio.sleep(0.05)
        await node.pool.aclose()
        self._retired.remove(node)

    def request_refresh(self) -> None:
        """Ask the background refresher for a topology refresh (never blocks)."""
        self._refresh_wanted.set()

    async def refresh(self) -> None:
        """Request a topology refresh and wait until one has completed."""
        done = self._refresh_done
        self.request_refresh()
        await done.wait()

    async def _refresher(self) -> None:
        while True:
            with trio.move_on_after(self.refresh_interval):
                await self._refresh_wanted.wait()
            # Rate limit: a storm of MOVED replies costs one refresh per interval.
            await trio.sleep_until(self._last_refresh + self.refresh_min_interval)
            self._refresh_wanted = trio.Event()
            try:
                await self._refresh_once()
            except Exception as exc:
                self._refresh_failures += 1
                self._outage_log.log(
                    logging.WARNING, "topology", "topology refresh failed: %s", exc
                )
            else:
                held = self._outage_log.reset("topology")
                if held:
                    logger.info("topology refresh works again after %d more failures", held)
            finally:
                done, self._refresh_done = self._refresh_done, trio.Event()
                done.set()

    async def _refresh_once(self, *, initial: bool = False) -> None:
        """Fetch the slot map from the first node that answers and install it."""
        self._last_refresh = trio.current_time()
        candidates = list(self._topology.primaries)
        random.shuffle(candidates)
        replicas = [a for a in self._topology.nodes if a not in candidates]
        random.shuffle(replicas)
        candidates += replicas
        candidates += [a for a in self.startup_nodes if a not in candidates]
        failures = []
        for address in candidates:
            try:
                topology, table = await self._fetch_topology(address, load_commands=initial)
            except Exception as exc:
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            if not topology.covered:
                failures.append(f"{address[0]}:{address[1]}: no slot is assigned")
                continue
            if table is not None:
                self._commands = table
            await self._install(topology)
            self._refreshes += 1
            return
        raise ClusterUnreachableError(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: "
            + "; ".join(failures)
        )

    async def _fetch_topology(
        self, address: Address, *, load_commands: bool
    ) -> tuple[Topology, CommandTable | None]:
        # A one-off connection (a saturated pool must not delay a refresh), with the newest
        # credentials like every other.
        conn = await self._dialer.open(address, maint_notifications="disabled")
        try:
            try:
                reply = await conn.execute(["CLUSTER", "SHARDS"])
                topology = parse_shards(reply, address, self._remap)
            except UnknownCommandError:
                reply = await conn.execute(["CLUSTER", "SLOTS"])
                topology = parse_slots(reply, address, self._remap)
            table = CommandTable(await conn.execute(["COMMAND"])) if load_commands else None
            return topology, table
        finally:
            await conn.aclose()

    # --- routing -------------------------------------------------------------------------------

    def _slot_for(
        self, args: tuple[Any, ...], spec: CommandSpec | bool | None = False
    ) -> int | Target:
        """The slot of a keyed command, or where a keyless one goes.  Raises
        CrossSlotKeysError if its keys span slots."""
        keys = self._commands.keys(args, spec)
        if keys:
            slot = slot_of(keys)
            if slot is None:
                raise CrossSlotKeysError(_cross_slot_message(args))
            return slot
        name = _word(args[0])
        if name == "PUBLISH" and len(args) > 1:
            # As redis-py's cluster: the channel's slot, where a PubSub subscribing to it
            # connects too, so the reply counts that subscriber.
            return key_slot_of(args[1])
        target = keyless_target(f"{name} {_word(args[1])}" if len(args) > 1 else name)
        if target is None:
            target = keyless_target(name)
        if target is Target.SLOT_ID:
            return int(args[2])
        return target if target is not None else Target.DEFAULT_NODE

    def _read_node(self, slot: int, primary: _Node) -> _Node:
        replicas = self._slot_replicas[slot]
        if not replicas:
            return primary
        strategy = self.read_from
        if strategy is ReadFrom.ROUND_ROBIN:
            candidates = (primary, *replicas)
            return candidates[next(self._round_robin) % len(candidates)]
        if strategy is ReadFrom.RANDOM:
            return random.choice(replicas)
        return min((primary, *replicas), key=lambda n: n.latency)

    # --- running commands ----------------------------------------------------------------------

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Route and run one command, following redirects and retrying as documented."""
        name = args[0]  # the name redis-py looks the callback up by ("CONFIG GET")
        try:
            readonly = self._commands.single_key.get(name) if len(args) > 1 else None
            if readonly is not None and not (options and "target_nodes" in options):
                # The hot path (GET, SET, INCR...): the slot is that of the first argument.
                if self._encoding.encodes_str:
                    args = prepare_args(args, self._encoding)
                try:
                    reply = await self._execute_on_slot(
                        key_slot_of(args[1]), args, readonly, simple=True
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
                    return await self._execute_on_targets(targets, name, args, options)
                if command in _SPLITTABLE and len(args) > 2:
                    split = await self._execute_split(command, args, options)
                    if split is not _NOT_SPLIT:
                        return split
                # One look-up in the command table serves routing and the retry rules.
                spec = self._commands.spec(args)
                if self._commands.needs_getkeys(args, spec):
                    route = await self._route_with_getkeys(args)
                else:
                    route = self._slot_for(args, spec)
                if type(route) is not int:
                    return await self._execute_keyless(route, name, args, options)  # type: ignore[arg-type]
                readonly = spec is not None and spec.readonly
                reply = await self._execute_on_slot(route, args, readonly)
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

    async def _route_with_getkeys(self, args: tuple[Any, ...]) -> int | Target:
        node = self._default_node or await self._node(self.startup_nodes[0])
        try:
            keys = await self._execute_on_node(node, ("COMMAND", "GETKEYS", *args))
        except rex.ResponseError:
            return Target.DEFAULT_NODE  # no keys (or malformed: the real call will say so)
        slot = slot_of(keys) if keys else None
        if keys and slot is None:
            raise CrossSlotKeysError(_cross_slot_message(args))
        return slot if slot is not None else Target.DEFAULT_NODE

    async def _execute_on_slot(
        self,
        slot: int,
        args: tuple[Any, ...],
        readonly: bool | None = None,
        *,
        simple: bool = False,
    ) -> Any:
        """Run a command on the owner of ``slot`` (or a replica for reads), with every
        redirect and retry rule applied.  ``readonly``: whether the command only reads
        (looked up when not given)."""
        retry = self.retry
        if readonly is None:
            readonly = self._commands.is_readonly(args)
        use_replica = readonly and self.read_from is not ReadFrom.PRIMARY
        redirects = transient = unknown = 0
        asking: _Node | None = None
        node: _Node | None = None
        deadline = math.inf  # set at the first retry: the happy path never reads the clock
        while True:
            try:
                if asking is not None:
                    node, asking = asking, None
                    return await self._execute_on_node(node, args, asking=True)
                primary = self._slot_primary[slot]
                if primary is None:
                    if self._nursery is None:
                        raise_not_open(self)
                    self.request_refresh()
                    raise mark_unsent(ClusterDownError(f"CLUSTERDOWN slot {slot} is not served"))
                node = self._read_node(slot, primary) if use_replica else primary
                return await self._execute_on_node(node, args, simple=simple)
            except MovedError as moved:
                redirects += 1
                self._moved += 1
                if redirects > retry.max_redirects:
                    raise
                target = await self._node(self.redirect_address(moved, node))
                self._slot_primary[moved.slot] = target
                self.request_refresh()
            except AskError as ask:
                redirects += 1
                self._ask += 1
                if redirects > retry.max_redirects:
                    raise
                asking = await self._node(self.redirect_address(ask, node))
            except _TRANSIENT as error:
                # The server says it did not run the command: safe to retry for any command.
                now = trio.current_time()
                if deadline == math.inf:
                    deadline = now + retry.budget
                if transient >= retry.transient_retries or now >= deadline:
                    raise
                self._retries[type(error).__name__] += 1
                if isinstance(error, ClusterDownError | MasterDownError):
                    self.request_refresh()
                await trio.sleep(retry.backoff(transient))
                transient += 1
            except PoolTimeoutError:
                raise  # waiting again would break the caller's bound on a pool wait
            except _NETWORK as error:
                if use_replica and node is not self._slot_primary[slot]:
                    # A replica failed (or its breaker is open): fall back to the primary at
                    # once; a read is safe to repeat there whether or not it reached the replica.
                    self._retries["replica_fallback"] += 1
                    use_replica = False
                    continue
                if was_unsent(error):
                    now = trio.current_time()
                    if deadline == math.inf:
                        deadline = now + retry.budget
                    if self._closed or now >= deadline:
                        raise
                    self._retries["unsent"] += 1
                    await self._settle_after_failure(unknown)
                    unknown += 1
                elif readonly and unknown < retry.retries:
                    self._retries["read"] += 1
                    await self._settle_after_failure(unknown)
                    unknown += 1
                else:
                    raise

    async def _settle_after_failure(self, attempt: int) -> None:
        """Back off, and wait (briefly) for a fresh topology: the node may be gone."""
        with trio.move_on_after(max(self.retry.backoff(attempt), 0.01) + 1.0):
            await self.refresh()
        await trio.sleep(self.retry.backoff(attempt))

    def redirect_address(self, error: MovedError | AskError, node: _Node | None) -> Address:
        """Where a MOVED/ASK points, remapped; an empty host means "the node you asked"."""
        host = error.host or (node.address[0] if node is not None else "127.0.0.1")
        return self._map((host, error.port))

    async def _execute_on_node(
        self, node: _Node, args: tuple[Any, ...], *, asking: bool = False, simple: bool = False
    ) -> Any:
        """One attempt on one node: breaker, pool, connection; errors raised typed.

        ``simple``: a command known not to block (skips that check on the hot path).
        """
        breaker = node.breaker
        breaker.before_call()
        pool = node.pool
        if (
            simple
            and pool.autopipeliner is not None
            and self.read_from is not ReadFrom.LOWEST_LATENCY  # measures each round trip
        ):
            return await execute_guarded(pool.autopipeliner, breaker, args)  # autopipelining
        try:
            conn = await pool.get()
        except PoolClosedError as error:
            breaker.abandon_probe()
            raise mark_unsent(error) from None  # the node left the map: nothing was sent
        except PoolTimeoutError:
            breaker.abandon_probe()  # a busy pool says nothing about the node's health
            raise
        except _NETWORK:
            breaker.record_failure()  # the dial failed: the node is unreachable
            raise
        except trio.Cancelled:
            breaker.abandon_probe()
            raise
        measure = self.read_from is ReadFrom.LOWEST_LATENCY
        started = trio.current_time() if measure else 0.0
        try:
            blocks = None if simple else blocking_seconds(args[0], args)
            if asking:
                replies = await conn.execute_many([("ASKING",), args])
                reply = replies[1]
                if isinstance(reply, Exception):
                    raise reply
            elif blocks is not None:
                reply = await run_blocking(conn, args, blocks, self._dialer)
            else:
                reply = await conn.execute(args)
        except _NETWORK as error:
            if not isinstance(error, BusyLoadingError | PoolTimeoutError):
                breaker.record_failure()
            raise
        except trio.Cancelled:
            breaker.abandon_probe()
            raise
        except BaseException:
            breaker.record_success()  # an error reply: the node answered
            raise
        finally:
            pool.put(conn)
        breaker.record_success()
        if measure:
            node.latency = 0.8 * node.latency + 0.2 * (trio.current_time() - started)
        return reply

    async def execute_batch(self, node: _Node, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send ``commands`` to one node in one write; replies in order, errors as values.

        A failure of the node itself becomes that error for every command of the batch.
        """
        breaker = node.breaker
        try:
            breaker.before_call()
            conn = await node.pool.get()
        except Exception as error:
            if isinstance(error, PoolClosedError):
                mark_unsent(error)  # the node left the map while we waited: nothing sent
                breaker.abandon_probe()
            elif isinstance(error, PoolTimeoutError):
                breaker.abandon_probe()
            elif isinstance(error, _NETWORK) and not isinstance(error, CircuitOpenError):
                breaker.record_failure()  # the dial failed: the node is unreachable
            return [error] * len(commands)
        except trio.Cancelled:
            breaker.abandon_probe()
            raise
        try:
            replies = await conn.execute_many(commands)
        except _NETWORK as error:
            if not isinstance(error, BusyLoadingError):
                breaker.record_failure()
            return [error] * len(commands)
        except trio.Cancelled:
            breaker.abandon_probe()
            raise
        finally:
            node.pool.put(conn)
        breaker.record_success()
        return replies

    async def _execute_on_targets(
        self, targets: Any, name: str, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        """redis-py's ``target_nodes=``: a flag ("primaries", "replicas", "all", "random",
        "default-node"), a :class:`ClusterNode`, a list of them or a dict of them (as
        ``get_primaries()`` and friends return), or node names ``host:port``."""
        if isinstance(targets, str) and targets in _TARGET_NAMES:
            return await self._execute_keyless(_TARGET_NAMES[targets], name, args, options)
        nodes = self._nodes_named(targets)
        return self._combine(name, await self._on_each(nodes, name, args, options), options)

    def _nodes_named(self, targets: Any) -> list[_Node]:
        """The nodes ``target_nodes=`` names (see :meth:`_execute_on_targets`)."""
        if isinstance(targets, str | ClusterNode):
            targets = [targets]
        elif isinstance(targets, dict):
            targets = list(targets.values())
        elif not isinstance(targets, list | tuple):
            raise TypeError(
                "target_nodes type can be one of the following: node_flag (primaries, "
                "replicas, all, random), ClusterNode, list<ClusterNode>, or "
                f"dict<any, ClusterNode>. The passed type is {type(targets)}"
            )
        by_name = {node.name: node for node in self._nodes.values()}
        names = [t.name if isinstance(t, ClusterNode) else str(t) for t in targets]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise rex.RedisClusterException(
                f"target_nodes names unknown nodes: {', '.join(unknown)}"
            )
        return [by_name[n] for n in names]

    async def _execute_keyless(
        self, target: Target, name: str, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        if target in (Target.PRIMARIES, Target.ALL_NODES, Target.REPLICAS):
            if target is Target.PRIMARIES:
                nodes = [primary for primary, _ in self._shard_nodes]
            elif target is Target.REPLICAS:
                nodes = [r for _, replicas in self._shard_nodes for r in replicas]
            else:
                nodes = list(self._nodes.values())
            return self._combine(name, await self._on_each(nodes, name, args, options), options)
        if target is Target.RANDOM:
            node = random.choice(list(self._nodes.values()))
        else:
            node = self._default_node or await self._node(self.startup_nodes[0])
        reply = await self._execute_on_node(node, args)
        # As redis-py: a command with a result callback goes through it from one node too
        # (PING -> True, CLIENT UNBLOCK -> 0/1, SCAN -> its cursor shape...).
        parsed = self._replies.parse(name, reply, dict(options))
        return self._combine(name, {node.name: parsed}, options)

    @staticmethod
    def _combine(name: str, results: dict[str, Any], options: dict[str, Any]) -> Any:
        """Combine replies from several nodes as redis-py's cluster client does
        (``RedisCluster._process_result``)."""
        callback = RESULT_CALLBACKS.get(str(name).upper())
        if callback is not None:
            extra = {k: v for k, v in options.items() if k not in _INTERNAL_OPTIONS}
            return callback(name, results, **extra)
        return next(iter(results.values())) if len(results) == 1 else results

    async def _on_each(
        self, nodes: Sequence[_Node], name: str, args: tuple[Any, ...], options: dict[str, Any]
    ) -> dict[str, Any]:
        """Run ``args`` on every node concurrently; {node name: parsed reply}.

        Every node runs to completion (as redis-py's ``gather``); if some failed, the first
        failure in node order is raised with the others attached (never an ExceptionGroup).
        """
        results: dict[str, Any] = {}
        failures: dict[str, Exception] = {}

        async def one(node: _Node) -> None:
            try:
                reply = await self._execute_on_node(node, args)
                results[node.name] = self._replies.parse(name, reply, dict(options))
            except Exception as error:
                failures[node.name] = error

        async with open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(one, node)
        if failures:
            raise first_error([failures[n.name] for n in nodes if n.name in failures])
        return {n.name: results[n.name] for n in nodes}

    async def _execute_split(
        self, name: str, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        """MGET/MSET/DEL/... (``name``) whose keys span slots: one command per slot,
        concurrently, reassembled in the caller's order.  Not atomic across slots."""
        wire = args[0]  # ``name`` as sent (encoded when the client encodes str itself)
        step = 2 if name == "MSET" else 1
        items = args[1:]
        groups: dict[int, list[int]] = {}
        for index in range(0, len(items), step):
            groups.setdefault(slot_of([items[index]]) or 0, []).append(index)
        if len(groups) == 1:
            return _NOT_SPLIT
        replies: dict[int, Any] = {}
        failures: dict[int, Exception] = {}

        async def run(slot: int, indexes: list[int]) -> None:
            part = tuple(x for i in indexes for x in items[i : i + step])
            try:
                replies[slot] = await self._execute_on_slot(slot, (wire, *part))
            except Exception as error:
                failures[slot] = error

        async with open_nursery() as nursery:
            for slot, indexes in groups.items():
                nursery.start_soon(run, slot, indexes)
        if failures:
            raise first_error([failures[slot] for slot in groups if slot in failures])
        if name == "MGET":
            values: list[Any] = [None] * len(items)
            for slot, indexes in groups.items():
                for index, value in zip(indexes, replies[slot], strict=True):
                    values[index] = value
            return self._replies.parse(name, values, options)
        if name == "MSET":
            return self._replies.parse(name, b"OK", options)
        return sum(int(r) for r in replies.values())

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
        for node, _ in list(self._shard_nodes):
            cursor: Any = 0
            while True:
                args: list[Any] = ["SCAN", cursor]
                if match is not None:
                    args += ["MATCH", match]
                if count is not None:
                    args += ["COUNT", count]
                if _type is not None:
                    args += ["TYPE", _type]
                cursor, keys = await self._execute_on_node(node, tuple(args))
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
        from .cluster_pipeline import ClusterPipeline

        return ClusterPipeline(self, transaction)

    # --- observability -------------------------------------------------------------------------

    def stats(self) -> ClusterStats:
        """Per-node pool stats, totals, redirects, retries, surfaced errors, breakers."""
        per_node = {node.name: node.pool.stats() for node in self._nodes.values()}
        totals: dict[str, float] = {}
        for pool_stats in per_node.values():
            for field in attrs.fields(PoolStats):
                value = getattr(pool_stats, field.name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    totals[field.name] = totals.get(field.name, 0) + value
        topology = {
            f"{s.primary[0]}:{s.primary[1]}": [f"{h}:{p}" for h, p in s.replicas]
            for s in self._topology.shards
        }
        return ClusterStats(
            nodes=per_node,
            totals=totals,
            moved=self._moved,
            ask=self._ask,
            retries=dict(self._retries),
            errors=dict(self._errors),
            refreshes=self._refreshes,
            refresh_failures=self._refresh_failures,
            breakers={n.name: n.breaker.state.value for n in self._nodes.values()},
            breaker_rejections=self._retired_rejections
            + sum(n.breaker.rejected for n in self._nodes.values()),
            topology=topology,
        )

    def connections(self) -> list[ConnectionInfo]:
        """Every connection of every node's pool."""
        return [info for node in self._nodes.values() for info in node.pool.connections()]

    def node_names(self) -> list[str]:
        """``host:port`` of every node the client currently knows."""
        return [node.name for node in self._nodes.values()]

    @property
    def topology(self) -> Topology:
        """The slot map the client is routing by."""
        return self._topology

    def breaker_state(self, name: str) -> BreakerState:
        """The breaker state of node ``host:port``."""
        for node in self._nodes.values():
            if node.name == name:
                return node.breaker.state
        raise KeyError(name)


_NOT_SPLIT: Any = object()
#: Options the command mixins pass for the client itself, never for a callback.
_INTERNAL_OPTIONS = frozenset({EMPTY_RESPONSE, NEVER_DECODE, "keys", COMMAND_NAME})
_RETRY: Any = object()


def _word(arg: Any) -> str:
    """A command word in upper case, whether sent as str or (encoded) bytes."""
    return (arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)).upper()


def _cross_slot_message(args: tuple[Any, ...]) -> str:
    """redis-py's words for a command whose keys span slots."""
    return f"{_word(args[0])} - all keys must map to the same key slot"


_TARGET_NAMES = {
    "primaries": Target.PRIMARIES,
    "replicas": Target.REPLICAS,
    "all": Target.ALL_NODES,
    "random": Target.RANDOM,
    "default-node": Target.DEFAULT_NODE,
}
