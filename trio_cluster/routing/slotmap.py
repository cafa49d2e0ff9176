"""The slot map: the one owner of the cluster's nodes, of which node serves which slot, of the
public topology, of MOVED/ASK application and of node selection (primary, replica strategy).

The cluster client, its pipelines, pub/sub and split commands all go through its public
methods: a MOVED is applied in one place (:meth:`SlotMap.apply_moved`), which updates both the
routing table and the public :attr:`SlotMap.topology`.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections.abc import Awaitable, Callable

import trio

from ..conn.connection import Connection, mark_unsent
from ..conn.dialer import Dialer
from ..errors import AskError, ClusterDownError, MovedError
from ..jobs.handoff import HandoffManager
from ..pooling.breaker import BreakerState, CircuitBreaker
from ..pooling.pool import Pool
from .topology import SLOTS, Address, AddressRemap, Shard, Topology

__all__ = ["LATENCY_MEMORY", "Node", "ReadFrom", "SlotMap"]

_CLOSED = BreakerState.CLOSED


class ReadFrom(enum.Enum):
    """Where read-only commands go."""

    PRIMARY = "primary"
    ROUND_ROBIN = "round-robin"  # primary and replicas in turn (redis-py's ROUND_ROBIN)
    ROUND_ROBIN_REPLICAS = "round-robin-replicas"  # the replicas in turn
    RANDOM = "random"  # a random replica (redis-py's RANDOM_REPLICA)
    RANDOM_NODE = "random-node"  # the primary or a replica, at random (redis-py's RANDOM)
    LOWEST_LATENCY = "lowest-latency"  # the node with the lowest measured latency


#: Seconds over which a node's measured latency forgets its past: a sample taken that long
#: after the previous one weighs about two thirds (a re-probe of a node that looked slow
#: replaces most of its old figure); back-to-back samples weigh 0.2 each.
LATENCY_MEMORY = 1.0


class Node:
    """One node: its pool, breaker, dialer, maintenance handoffs and measured latency.

    Made, wired, by :class:`~trio_cluster.routing.nodes.NodeFactory`.
    """

    def __init__(
        self,
        address: Address,
        pool: Pool[Connection],
        breaker: CircuitBreaker,
        dialer: Dialer,
        handoffs: HandoffManager | None = None,
    ) -> None:
        self.address = address
        self.name = f"{address[0]}:{address[1]}"
        self.pool = pool
        self.breaker = breaker
        self.dialer = dialer
        self.handoffs = handoffs
        #: Round-trip time (seconds), a moving average of the reads measured for
        #: ``ReadFrom.LOWEST_LATENCY``; 0 until the first.
        self.latency = 0.0
        #: When ``latency`` was last measured, and when a read last went to this node to
        #: measure it again (``SlotMap.for_read``).
        self.measured_at = -math.inf
        self.probed_at = -math.inf
        self.started = trio.Event()
        self.retired = False

    def __repr__(self) -> str:
        return f"<node {self.name}{' retired' if self.retired else ''}>"

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the node's background work (its handoffs, its pool's jobs) in ``nursery``."""
        if self.handoffs is not None:
            self.handoffs.start(nursery)
        await self.pool.start_background(nursery)

    def record_latency(self, sample: float, now: float) -> None:
        """Fold one measured round trip into :attr:`latency`: weight 0.2 for back-to-back
        samples, more the older the figure it updates (see :data:`LATENCY_MEMORY`)."""
        weight = max(0.2, 1.0 - math.exp(-(now - self.measured_at) / LATENCY_MEMORY))
        self.latency += weight * (sample - self.latency)
        self.measured_at = self.probed_at = now


class SlotMap:
    """Nodes by address, slot owners, and the choice of a node for a command.

    ``create(address, replica)`` builds a node (its pool not started; ``replica``: the
    topology names it a replica), ``start(node)`` starts it:
    both belong to the client, which owns the nursery.  ``request_refresh`` asks for a new
    topology (a MOVED means the map is stale) and ``refresh`` waits for one.
    """

    def __init__(
        self,
        *,
        read_from: ReadFrom,
        remap: AddressRemap | None,
        create: Callable[[Address, bool], Node],
        start: Callable[[Node], Awaitable[None]],
        request_refresh: Callable[[], None],
        refresh: Callable[[], Awaitable[None]],
        latency_probe_interval: float = 1.0,
        reinitialize_steps: int = 1,
    ) -> None:
        if (
            isinstance(latency_probe_interval, bool)
            or not isinstance(latency_probe_interval, int | float)
            or not 0 < latency_probe_interval < math.inf
        ):
            raise ValueError(
                "latency_probe_interval must be a finite number of seconds > 0; "
                f"got {latency_probe_interval!r}"
            )
        if isinstance(reinitialize_steps, bool) or not isinstance(reinitialize_steps, int):
            raise ValueError(f"reinitialize_steps must be an integer; got {reinitialize_steps!r}")
        self.read_from = read_from
        #: redis-py's ``reinitialize_steps``: every how many MOVED replies a full refresh is
        #: requested (0: never; a MOVED always patches its own slot).
        self.reinitialize_steps = abs(reinitialize_steps)
        #: ``ReadFrom.LOWEST_LATENCY``: how often a node not read from is measured again.
        self.latency_probe_interval = float(latency_probe_interval)
        self._remap = remap
        self._create = create
        self._start = start
        self.request_refresh = request_refresh
        self.refresh = refresh
        self._nodes: dict[Address, Node] = {}
        self._topology = Topology.from_shards([])
        self._slot_primary: list[Node | None] = [None] * SLOTS
        self._slot_replicas: list[tuple[Node, ...]] = [()] * SLOTS
        self._shard_nodes: list[tuple[Node, tuple[Node, ...]]] = []
        self._backed: frozenset[Node] = frozenset()  # primaries with a replica
        self._round_robin = itertools.count()
        self._default: Node | None = None
        #: Redirects applied (for stats).
        self.moved = 0
        self.ask = 0

    # --- addresses and nodes ------------------------------------------------------------------

    def remap(self, address: Address) -> Address:
        """``address`` as the client must reach it (the caller's ``address_remap``)."""
        return self._remap(address) if self._remap is not None else address

    async def node(self, address: Address, *, replica: bool = False) -> Node:
        """The node at ``address`` (already remapped), created and started on first use
        (``replica``: as the replica the topology says it is)."""
        node = self._nodes.get(address)
        if node is None:
            node = self._create(address, replica)
            self._nodes[address] = node
            try:
                await self._start(node)
            finally:
                node.started.set()
        elif not node.started.is_set():
            await node.started.wait()
        return node

    def nodes(self) -> list[Node]:
        """Every node currently in the map."""
        return list(self._nodes.values())

    def primaries(self) -> list[Node]:
        """Every shard's primary."""
        return [primary for primary, _ in self._shard_nodes]

    def replicas(self) -> list[Node]:
        """Every shard's replicas."""
        return [r for _, replicas in self._shard_nodes for r in replicas]

    def shards(self) -> list[tuple[Node, tuple[Node, ...]]]:
        """Every shard as (primary, replicas)."""
        return list(self._shard_nodes)

    def has_replica(self, node: Node) -> bool:
        """Whether ``node`` is a primary with at least one replica (a failover can replace
        it)."""
        return node in self._backed

    def known_bad(self, address: Address) -> bool:
        """Whether the node at ``address`` is known bad (its circuit breaker not closed)."""
        node = self._nodes.get(address)
        return node is not None and node.breaker.state is not BreakerState.CLOSED

    def by_name(self, name: str) -> Node | None:
        """The node called ``host:port``, if the map has it."""
        return next((n for n in self._nodes.values() if n.name == name), None)

    def random_node(self) -> Node:
        """Any node of the map."""
        return random.choice(list(self._nodes.values()))

    @property
    def default_node(self) -> Node | None:
        """Where keyless commands go: a primary, kept while it stays one."""
        return self._default

    @property
    def topology(self) -> Topology:
        """The slot map the client is routing by (MOVED replies applied)."""
        return self._topology

    # --- installing a topology -----------------------------------------------------------------

    async def install(self, topology: Topology) -> list[Node]:
        """Make ``topology`` current: nodes created, slot tables rebuilt.  Returns the nodes
        that left the map (marked retired), for the client to close once idle."""
        shard_nodes = []
        for shard in topology.shards:
            primary = await self.node(shard.primary)
            replicas = tuple([await self.node(r, replica=True) for r in shard.replicas])
            shard_nodes.append((primary, replicas))
        slot_primary: list[Node | None] = [None] * SLOTS
        slot_replicas: list[tuple[Node, ...]] = [()] * SLOTS
        for slot, index in enumerate(topology.owner):
            if index >= 0:
                slot_primary[slot], slot_replicas[slot] = shard_nodes[index]
        self._slot_primary = slot_primary
        self._slot_replicas = slot_replicas
        self._shard_nodes = shard_nodes
        self._backed = frozenset(primary for primary, replicas in shard_nodes if replicas)
        self._topology = topology
        current = set(topology.nodes)
        departed = [self._nodes.pop(a) for a in [a for a in self._nodes if a not in current]]
        for node in departed:
            node.retired = True
        if self._default is None or self._default.address not in topology.primaries:
            self._default = shard_nodes[0][0] if shard_nodes else None
        return departed

    # --- choosing a node -----------------------------------------------------------------------

    def primary(self, slot: int) -> Node | None:
        """The primary serving ``slot``, or None while no node does."""
        return self._slot_primary[slot]

    def not_served(self, slot: int | None) -> ClusterDownError:
        """The error for a command whose slot no node serves (in the client's map): a
        ``CLUSTERDOWN`` marked unsent (nothing was sent), with a refresh requested.  The one
        way "slot not served" is said, by single commands, pipelines and transactions."""
        self.request_refresh()
        error = ClusterDownError(f"CLUSTERDOWN slot {slot} is not served")
        mark_unsent(error)
        return error

    def replicas_of(self, slot: int) -> tuple[Node, ...]:
        """The replicas of ``slot``'s primary."""
        return self._slot_replicas[slot]

    def for_read(self, slot: int, primary: Node) -> Node:
        """The node a read of ``slot`` goes to, by the ``read_from`` strategy."""
        replicas = self._slot_replicas[slot]
        if not replicas:
            return primary
        healthy = _CLOSED
        if any(r.breaker.state is not healthy for r in replicas):
            replicas = tuple(
                r for r in replicas if r.breaker.state is healthy
            )  # known bad: skipped
            if not replicas:
                return primary
        strategy = self.read_from
        if strategy is ReadFrom.ROUND_ROBIN:
            candidates = (primary, *replicas)
            return candidates[next(self._round_robin) % len(candidates)]
        if strategy is ReadFrom.ROUND_ROBIN_REPLICAS:
            return replicas[next(self._round_robin) % len(replicas)]
        if strategy is ReadFrom.RANDOM:
            return random.choice(replicas)
        if strategy is ReadFrom.RANDOM_NODE:
            return random.choice((primary, *replicas))
        return self._lowest_latency((primary, *replicas))

    def _lowest_latency(self, candidates: tuple[Node, ...]) -> Node:
        """The candidate measured fastest, except that a node not measured for
        ``latency_probe_interval`` seconds gets this one read (a re-probe: a node that once
        looked slow is measured again on that schedule, one read per interval)."""
        now = trio.current_time()
        due = now - self.latency_probe_interval
        for node in candidates:
            if node.probed_at <= due:
                node.probed_at = now
                return node
        return min(candidates, key=_latency)

    # --- redirects -----------------------------------------------------------------------------

    def redirect_address(self, error: MovedError | AskError, asked: Address | None) -> Address:
        """Where a MOVED/ASK points, remapped; an empty host means "the node you asked"
        (``asked``)."""
        host = error.host or (asked[0] if asked is not None else "127.0.0.1")
        return self.remap((host, error.port))

    async def apply_moved(self, moved: MovedError, node: Node | None) -> Node:
        """The one place a MOVED is applied: the slot now belongs to the node it names, in
        the routing table and in the public topology, and a full refresh is requested
        (every ``reinitialize_steps`` MOVED replies).  Returns that node."""
        self.moved += 1
        target = await self.node(self.redirect_address(moved, _address(node)))
        self._slot_primary[moved.slot] = target
        self._topology = _moved(self._topology, moved.slot, target.address)
        steps = self.reinitialize_steps
        if steps and self.moved % steps == 0:
            self.request_refresh()
        return target

    async def ask_target(self, ask: AskError, node: Node | None) -> Node:
        """The node an ASK sends one command to (the map itself does not change)."""
        self.ask += 1
        return await self.node(self.redirect_address(ask, _address(node)))


def _latency(node: Node) -> float:
    return node.latency


def _moved(topology: Topology, slot: int, address: Address) -> Topology:
    """``topology`` with ``slot`` owned by the shard whose primary is ``address`` (a new shard
    of its own if the address is no known primary)."""
    shards = list(topology.shards)
    index = next((i for i, s in enumerate(shards) if s.primary == address), -1)
    if index < 0:
        shards.append(Shard(address, (), ()))
        index = len(shards) - 1
    owner = list(topology.owner)
    owner[slot] = index
    return Topology(tuple(shards), tuple(owner))


def _address(node: Node | None) -> Address | None:
    return node.address if node is not None else None
