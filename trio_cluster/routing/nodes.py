"""The one node factory: each node's dialer, breaker, pool and maintenance handoffs, wired once.

``Client`` (one node) and ``ClusterClient`` (one per node of the map) both make their nodes
here, so a node is the same thing in both. The parts are made in the order they depend on each
other, each complete when made, and nothing is attached or patched afterwards:

1. the maintenance notices (``jobs.maint.MaintNotices``: needs nothing);
2. the dialer (``conn.dialer``: the settings, the watchdog, the credentials, the notices);
3. the breaker (``CircuitBreaker``, with the client's ``BreakerOptions``, among the breakers
   of the client's other nodes, which a slow reply is compared with; when it opens it fails
   the gets parked on the pool made next);
4. the pool (``Pool``: the dialer is its ``dial``; the breaker guards its automatic
   pipelining; the connect timeout bounds each dial, retries included);
5. the handoff manager (``jobs.handoff``: the notices, the pool, the dialer), which registers
   as a claimant of the pool; the credential manager watches the pool likewise.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import attrs

from ..config import ConnectionConfig
from ..conn.dialer import Dialer
from ..conn.watchdog import Watchdog
from ..hooks import Hooks
from ..jobs.credentials import CredentialManager
from ..jobs.handoff import HandoffManager
from ..jobs.maint import MaintNotices, MaintNotificationsOptions
from ..pooling.breaker import BreakerOptions, CircuitBreaker, Peers
from ..pooling.pool import Pool, PoolOptions
from ..pooling.pooltypes import C
from .slotmap import Node
from .topology import Address

__all__ = ["NodeFactory", "guarded_pool", "pool_timeout"]


def pool_timeout(options: PoolOptions, config: ConnectionConfig) -> float:
    """How long a get waits for a connection: ``options.timeout``, else the read timeout
    plus a second (``math.inf`` when reads have no timeout)."""
    if options.timeout is not None:
        return options.timeout
    if config.read_timeout is None:
        return math.inf
    return config.read_timeout + 1.0


def guarded_pool(
    name: str,
    dial: Callable[[], Awaitable[C]],
    options: PoolOptions,
    breaker_options: BreakerOptions,
    *,
    peers: Peers,
    read_timeout: float | None,
    timeout: float,
    dial_timeout: float | None = None,
    hooks: Hooks | None = None,
) -> tuple[CircuitBreaker, Pool[C]]:
    """A node's breaker (among ``peers``, its slow replies judged against ``read_timeout``)
    and its pool (``dial``; the breaker guards its automatic pipelining), wired so that the
    breaker opening fails the gets parked on the pool."""

    def refuse_parked() -> None:
        # ``pool`` is the one made below: the breaker can only open once calls run.
        pool.refuse_parked(breaker.refusal_error)

    breaker = CircuitBreaker(
        name,
        breaker_options,
        slow_after=breaker_options.slow_after(read_timeout),
        peers=peers,
        on_open=refuse_parked,
    )
    pool: Pool[C] = Pool(
        dial,
        options,
        node_name=name,
        timeout=timeout,
        dial_timeout=dial_timeout,
        breaker=breaker,
        hooks=hooks,
    )
    return breaker, pool


@attrs.frozen(kw_only=True)
class NodeFactory:
    """Makes the nodes of one client (call it with an address); see the module docstring."""

    config: ConnectionConfig
    """What every node's connections start from (the host and port are the node's)."""
    pool: PoolOptions
    breaker: BreakerOptions
    maint: MaintNotificationsOptions
    watchdog: Watchdog
    """The client's: it bounds every round trip on a pooled connection."""
    credentials: CredentialManager | None
    hooks: Hooks = attrs.field(factory=Hooks)
    """The client's command hooks: told of every dial and every wait for a connection."""
    on_smigrated: Callable[[], None] | None = None
    """Called for each new SMIGRATED notification (the cluster's refresh request)."""
    peers: Peers = attrs.field(factory=Peers)
    """The breakers of this client's nodes (a slow reply is an outlier only beside a faster
    one)."""
    reads_replicas: bool = True
    """Whether commands go to replicas by default (a cluster client's ``read_from``); if not,
    a replica's pool keeps no idle connections (``min_idle`` 0): it dials only for the
    commands sent to it by name (``target_nodes=``)."""

    def __call__(self, address: Address, replica: bool = False) -> Node:
        """A new node at ``address``, not started (:meth:`Node.start`); ``replica``: the
        topology names it a replica."""
        config = attrs.evolve(self.config, host=address[0], port=address[1])
        options = self.pool
        if replica and not self.reads_replicas and options.min_idle:
            options = attrs.evolve(options, min_idle=0)
        name = config.address
        notices = None
        if self.maint.mode != "disabled":
            notices = MaintNotices(self.maint, on_smigrated=self.on_smigrated)
        dialer = Dialer(
            config,
            watchdog=self.watchdog,
            credentials=self.credentials,
            notices=notices,
            hooks=self.hooks,
        )

        breaker, pool = guarded_pool(
            name,
            dialer,
            options,
            self.breaker,
            peers=self.peers,
            read_timeout=config.read_timeout,
            timeout=pool_timeout(options, config),
            dial_timeout=config.connect_timeout,
            hooks=self.hooks,
        )
        handoffs = HandoffManager(notices, pool, dialer) if notices is not None else None
        if self.credentials is not None:
            self.credentials.watch(pool)
        return Node(address, pool, breaker, dialer, handoffs)
