"""The faults scenarios inject: each is ``async def fault(ctx) -> None`` that applies the fault,
holds it for ``ctx.hold`` seconds (or until the cluster has reacted), and undoes it.

Proxy faults act only on the proxies this run created.  Process faults and admin commands
(SIGSTOP, kill, restart, failover, resharding) require the local cluster.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self

import trio

from trio_cluster import ClusterClient
from trio_cluster.faults import ToxiproxyError
from trio_cluster.faults.nodes import (
    ProxiedNode,
    bandwidth,
    hang,
    latency,
    limit_data,
    node_down,
    reset_peer,
)
from trio_cluster.testing import LocalCluster, LocalServer

from .address import Address
from .env import Environment, SetupError
from .monitor import Hit
from .pubsubload import SUBSCRIBE_TIMEOUT, PubSubRunner
from .records import RunRecord, Window

__all__ = [
    "FaultContext",
    "FaultFn",
    "Harness",
    "bandwidth_starvation",
    "graceful_failover",
    "kill_primary",
    "latency_spike",
    "live_reshard",
    "node_down_fault",
    "node_hang",
    "pubsub_node_down",
    "reset_storm",
    "restart_primary",
    "sigstop_primary",
    "slow_close",
]

#: Writes acknowledged this long before a primary died may not have reached its replica.
REPLICATION_SLACK = 1.0
#: Upper bound on the cluster reacting to a process fault (failover, rejoin).
CLUSTER_REACTION_TIMEOUT = 30.0
#: While a process fault must not turn into a failover, the cluster's node timeout is raised to
#: the fault's length plus this much.
NO_FAILOVER_MARGIN = 10.0


class Harness:
    """What a scenario sets up around its whole run, besides the proxies every run has (fault
    tools, ACL users...): extra client options, and a check at the end of the load.

    The runner enters it (``async with harness.entered()``) before the load starts and leaves
    it after the end-of-run verification; faults reach it as ``ctx.harness``.  Entering runs
    :meth:`_open`; leaving, however the block ends, runs :meth:`_close`, and so does an
    :meth:`_open` that failed half-way.  This base class does nothing.
    """

    def __init__(self, env: Environment) -> None:
        self.env = env

    async def _open(self) -> None:
        """Set up whatever the scenario needs."""

    async def _close(self) -> None:
        """Undo it (also after a failed :meth:`_open`: it must cope with half a setup)."""

    @asynccontextmanager
    async def entered(self) -> AsyncIterator[Self]:
        """The harness set up for the run; undone on the way out, however the block ends."""
        try:
            await self._open()
            yield self
        finally:
            await self._close()

    def client_options(self) -> dict[str, Any]:
        """Keywords for every client the run opens (they override the scenario's)."""
        return {}

    def node_names(self) -> dict[Address, Address]:
        """Addresses this harness puts before the nodes -> the node's real address."""
        return {}

    async def end_of_load(self, ctx: FaultContext) -> None:
        """Called once the faults and their tails are over, with the load still running."""


@dataclass
class FaultContext:
    """What a fault may act on, and where it records what it did."""

    env: Environment
    record: RunRecord
    rng: random.Random
    hold: float
    keys: list[str]
    primaries: list[Address]
    restores: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    """Run after the load stops (e.g. bring a killed node back), in order."""
    harness: Harness | None = None
    """The scenario's harness (None outside a run)."""
    clients: Callable[[], list[ClusterClient]] = list
    """The clients open now (the workload's, during the load)."""
    pubsub: PubSubRunner | None = None
    """The scenario's pub/sub load, if it has one."""
    hits: list[Address] = field(default_factory=list)
    """Real addresses of the nodes the running fault acts on (see :meth:`hit`)."""
    everywhere: bool = False
    """The running fault acts on every node (see :meth:`hit_all`)."""
    over: float | None = None
    """When the running fault's effect ended, if before the fault returned (it went on waiting
    for the cluster to settle): its window ends there (see :meth:`over_now`)."""
    filled: trio.Event = field(default_factory=trio.Event)
    """Set once the workload's client is ready (its pools filled) and its workers start."""

    def hit(self, node: Address | ProxiedNode) -> None:
        """Record that the running fault acts on ``node`` (its real address is reported)."""
        address = self.env.real(node) if isinstance(node, ProxiedNode) else node
        if address not in self.hits:
            self.hits.append(address)

    def hit_all(self) -> None:
        """Record that the running fault acts on every node."""
        self.everywhere = True

    def begin(self) -> None:
        """A new fault starts: forget what the last one hit."""
        self.hits.clear()
        self.everywhere = False
        self.over = None

    def over_now(self) -> None:
        """The running fault's effect is over now, though the fault still waits for the
        cluster: its window (and the blast radius) end here, its recovery counts from here."""
        self.over = trio.current_time()

    def owners(self) -> dict[int, Address]:
        """The workload's slots -> the real address of the primary serving each, as the
        client's topology says now (empty when no client is open)."""
        clients = self.clients()
        if not clients:
            return {}
        rc = clients[0]
        topology = rc.topology
        out = {}
        for slot in {rc.keyslot(key) for key in self.keys}:
            shard = topology.shard_for(slot)
            if shard is not None:
                out[slot] = self.record.node(Address.of(shard.primary))
        return out

    def hit_now(self, owners: dict[int, Address]) -> Hit:
        """What the running fault has hit so far; ``owners``: what :meth:`owners` said when it
        began (the slots of a faulted node)."""
        nodes = () if self.everywhere else tuple(self.hits)
        slots: frozenset[int] = frozenset()
        if len(nodes) == 1:
            slots = frozenset(s for s, owner in owners.items() if owner == nodes[0])
        return Hit(nodes, self.everywhere, slots)

    def window(self, name: str, start: float, owners: dict[int, Address]) -> Window:
        """The window of the fault that began at ``start`` and ends now (``owners``: as for
        :meth:`hit_now`)."""
        hit = self.hit_now(owners)
        end = self.over if self.over is not None else trio.current_time()
        return Window(name, start, end, hit.nodes, hit.everywhere, hit.slots)

    def client(self) -> ClusterClient:
        """The workload's client (the oldest one open)."""
        clients = self.clients()
        if not clients:
            raise RuntimeError("no client is open")
        return clients[0]

    def loss_window(self, name: str, start: float, end: float) -> None:
        """Declare that the server itself may lose acknowledged writes made in this window."""
        self.record.loss_windows.append(Window(name, start, end))

    def note(self, text: str) -> None:
        """Add a line to the scenario's report."""
        self.record.notes.append(text)

    def target(self) -> ProxiedNode:
        """The proxy of the first primary (the node most faults hit); recorded as hit."""
        node = self.env.proxied(self.primaries[0])
        self.hit(node)
        return node

    def all_nodes(self) -> list[ProxiedNode]:
        """Every proxy of this run; recorded as hitting every node."""
        self.hit_all()
        return self.env.proxies.nodes

    def local(self) -> LocalCluster:
        """The local cluster, or a setup error if the run is against an external one."""
        if self.env.cluster is None:
            raise SetupError("this fault needs --cluster local")
        return self.env.cluster


FaultFn = Callable[[FaultContext], Awaitable[None]]

# --- network faults (proxies) -----------------------------------------------------------------


async def node_down_fault(ctx: FaultContext) -> None:
    """The first primary's proxy is disabled: connections drop and dials are refused."""
    async with node_down(ctx.target()):
        await trio.sleep(ctx.hold)


async def pubsub_node_down(ctx: FaultContext) -> None:
    """The proxy of the primary carrying the most subscribers' classic channels is disabled:
    their connections (and those of the shard channels it owns) drop, and dials to it are
    refused, for ``hold`` seconds.  The classic channels move to another primary; the shard
    channels come back when the node does."""
    runner = ctx.pubsub
    if runner is None:
        raise SetupError("this fault needs a scenario with a pub/sub load")
    with trio.move_on_after(SUBSCRIBE_TIMEOUT):
        await runner.ready.wait()
    carriers = runner.classic_nodes()
    if carriers:
        # The most used node; ties broken by address, so a seed always picks the same one.
        address, count = min(carriers.items(), key=lambda item: (-item[1], item[0]))
        node = ctx.env.proxied(address)
    else:
        node, count = ctx.target(), 0
    shard = sorted(c for c in runner.data.sharded if runner.owner(c) == node.listen)
    ctx.hit(node)
    ctx.note(
        f"proxy of :{node.upstream[1]} down for {ctx.hold:.1f} s: it carried the classic "
        f"channels of {count} of {len(runner.data.subscriptions)} subscribers and "
        f"{len(shard)} shard channels"
    )
    async with node_down(node):
        await trio.sleep(ctx.hold)


async def node_hang(ctx: FaultContext) -> None:
    """The first primary stops answering (timeout toxic): data is swallowed, sockets held."""
    async with hang(ctx.target()):
        await trio.sleep(ctx.hold)


async def latency_spike(ctx: FaultContext) -> None:
    """Replies from the first primary arrive 800 ms late: above the 500 ms read timeout."""
    async with latency(ctx.target(), 800):
        await trio.sleep(ctx.hold)


async def reset_storm(ctx: FaultContext) -> None:
    """Half of all connections, to every node, are reset on their first data."""
    async with reset_peer(ctx.all_nodes(), toxicity=0.5):
        await trio.sleep(ctx.hold)


@asynccontextmanager
async def _slow_close_toxic(node: ProxiedNode, delay_ms: int) -> AsyncIterator[None]:
    name = await node.toxiproxy.add_toxic(
        node.proxy, "slow_close", stream="downstream", name="chaos_slow_close",
        attributes={"delay": delay_ms},
    )  # fmt: skip
    try:
        yield
    finally:
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + 10
            try:
                await node.toxiproxy.remove_toxic(node.proxy, name)
            except ToxiproxyError as exc:
                if exc.status != 404:
                    raise


async def slow_close(ctx: FaultContext) -> None:
    """The proxy cuts connections to the first primary after 2 KB of replies, but closes them
    only 1.5 s later: the client sees connections go silent (half-dead peers)."""
    node = ctx.target()
    async with _slow_close_toxic(node, 1500), limit_data(node, 2048):
        await trio.sleep(ctx.hold)


async def bandwidth_starvation(ctx: FaultContext) -> None:
    """Replies from the first primary trickle at 1 KB/s."""
    async with bandwidth(ctx.target(), 1):
        await trio.sleep(ctx.hold)


# --- process faults (local cluster only) ---------------------------------------------------------


def _server(ctx: FaultContext, address: Address) -> LocalServer:
    server = ctx.local().node(address.port)
    ctx.hit(Address.of(server.address))
    return server


@asynccontextmanager
async def _node_timeout(cluster: LocalCluster, seconds: float) -> AsyncIterator[None]:
    """The cluster's node timeout set to ``seconds`` on every running node for the block, and
    set back after it (shielded, on the nodes running then).  Every node must answer when the
    block starts and ends: a paused node would not."""
    before = cluster.nodes[0].cluster_node_timeout_ms
    await cluster.set_node_timeout(round(1000 * seconds))
    try:
        yield
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await cluster.set_node_timeout(before)


async def sigstop_primary(ctx: FaultContext) -> None:
    """SIGSTOP the first primary for ``hold`` seconds: a pure hang, sockets open.  The cluster's
    node timeout is raised for the while, so the cluster does not fail the node over (as with
    the production default of 15 s)."""
    cluster = ctx.local()
    server = _server(ctx, ctx.primaries[0])
    async with _node_timeout(cluster, ctx.hold + NO_FAILOVER_MARGIN):
        with cluster.paused(server):
            await trio.sleep(ctx.hold)
    ctx.restores.append(cluster.wait_ready)


async def _primary_of(cluster: LocalCluster, slot: int, ask: LocalServer) -> int:
    for slot_range in await cluster.slot_map(ask):
        if slot_range.start <= slot <= slot_range.end:
            return slot_range.primary[1]
    return -1


async def kill_primary(ctx: FaultContext) -> None:
    """SIGKILL the first primary; the window lasts until its replica has been promoted, which
    the cluster does once the node has been silent for its node timeout: set to ``hold`` for
    the while, so the dead node's slots go unserved that long (then about a second of
    election).

    Writes acknowledged from ``REPLICATION_SLACK`` before the kill until the promotion may be
    lost by the server (asynchronous replication): that is the declared loss window.  The
    killed node is restarted after the load stops and rejoins as a replica.
    """
    cluster = ctx.local()
    server = _server(ctx, ctx.primaries[0])
    shard = cluster.shard_of(server)
    replica = shard.replicas[0]
    slot = next(r.start for r in await cluster.slot_map(replica) if r.primary[1] == server.port)
    async with _node_timeout(cluster, ctx.hold):
        start = trio.current_time()
        server.kill()
        with trio.fail_after(CLUSTER_REACTION_TIMEOUT):
            while True:
                try:
                    if await _primary_of(cluster, slot, replica) == replica.port:
                        break
                except Exception:
                    pass
                await trio.sleep(0.05)
        end = trio.current_time()
    ctx.loss_window("primary killed", start - REPLICATION_SLACK, end)
    ctx.note(
        f"replica :{replica.port} promoted {end - start:.2f} s after :{server.port} was killed"
    )

    async def restore() -> None:
        await server.restart()
        await cluster.refresh_roles()
        await cluster.wait_ready()

    ctx.restores.append(restore)


async def restart_primary(ctx: FaultContext) -> None:
    """Stop the first primary (SIGTERM: its connections close, new ones are refused), keep it
    down for ``hold`` seconds, then start it again with its AOF.  The cluster's node timeout
    is raised for the while, so the node comes back as the primary of its slots.  If the
    cluster failed over anyway, the window is declared a loss window and the report says so."""
    cluster = ctx.local()
    server = _server(ctx, ctx.primaries[0])
    async with _node_timeout(cluster, ctx.hold + NO_FAILOVER_MARGIN):
        start = trio.current_time()
        # stop() waits for the process to exit (an AOF flush): off the event loop.
        await trio.to_thread.run_sync(server.stop)
        await trio.sleep(ctx.hold)
        with trio.fail_after(CLUSTER_REACTION_TIMEOUT):
            server.spawn()
            await server.wait_ready()
            # It answers again: the outage is over, though the cluster may take a while to
            # agree that it is ready (the window ends here; the tail starts once it agrees).
            ctx.over_now()
            await cluster.refresh_roles()
            await cluster.wait_ready()
        end = trio.current_time()
    back = (ctx.over or end) - start - ctx.hold
    if cluster.shard_of(server).primary is not server:
        ctx.loss_window("restart turned into a failover", start - REPLICATION_SLACK, end)
        ctx.note(f":{server.port} was failed over while restarting")
    else:
        ctx.note(f":{server.port} down {ctx.hold:.1f} s, answering {back:.2f} s later, the "
                 f"cluster ready {end - start - ctx.hold:.2f} s later, with its slots")  # fmt: skip


async def graceful_failover(ctx: FaultContext) -> None:
    """CLUSTER FAILOVER on the first shard's replica (lossless by design: no loss window)."""
    cluster = ctx.local()
    server = _server(ctx, ctx.primaries[0])
    shard = cluster.shard_of(server)
    await cluster.failover(shard)
    ctx.note(f"shard of :{server.port}: replica :{shard.primary.port} is primary now")


# --- resharding ------------------------------------------------------------------------------


async def _move_slot(
    cluster: LocalCluster, slot: int, src: LocalServer, dst: LocalServer, pace: float
) -> int:
    ids = cluster.node_ids
    moved = 0
    await dst.execute("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[src.port])
    await src.execute("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[dst.port])
    while True:
        keys = await src.execute("CLUSTER", "GETKEYSINSLOT", slot, 2)
        if not keys:
            break
        await src.execute("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
        await trio.sleep(pace)  # keep the slot half-moved for a while: an ASK storm
    await dst.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
    await src.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
    for other in cluster.primaries:
        if other not in (src, dst):
            await other.execute("CLUSTER", "SETSLOT", slot, "NODE", ids[dst.port])
    return moved


async def live_reshard(ctx: FaultContext) -> None:
    """Move the slots holding this run's keys off the first primary and back, key by key,
    while the load runs: MOVED and ASK storms (IMPORTING/MIGRATING, MIGRATE ... KEYS,
    SETSLOT NODE)."""
    cluster = ctx.local()
    src = _server(ctx, ctx.primaries[0])
    dst = _server(ctx, ctx.primaries[1])
    owned = {r.start: r for r in await cluster.slot_map() if r.primary[1] == src.port}
    rc = ctx.client()
    slots = sorted({rc.keyslot(k) for k in ctx.keys})
    mine = [s for s in slots if any(r.start <= s <= r.end for r in owned.values())]
    chosen = mine[:12]
    pace = max(0.01, ctx.hold / max(1, 2 * len(chosen)) / 3)
    there = back = 0
    for slot in chosen:
        there += await _move_slot(cluster, slot, src, dst, pace)
    for slot in chosen:
        back += await _move_slot(cluster, slot, dst, src, pace)
    ctx.note(f"moved {len(chosen)} slots :{src.port} -> :{dst.port} ({there} keys) and back "
             f"({back} keys)")  # fmt: skip
    ctx.restores.append(cluster.wait_ready)
