"""A real Redis/Valkey cluster on loopback, formed with commands, for tests and chaos runs.

``LocalCluster(masters=3, replicas_per_master=1)`` starts one process per node on free ports,
then forms the cluster the way ``redis-cli --cluster create`` does, through the project's own
connection: distinct config epochs, slot ranges with ADDSLOTSRANGE, a full mesh of CLUSTER MEET,
then CLUSTER REPLICATE.  It is ready only when every node reports ``cluster_state:ok`` and every
node describes the same slot map, replicas included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import attrs
import trio

from ..lifetime import BlockingScoped, Scoped
from ..wire.encoding import text
from ..wire.protocol import EncodableArg
from .servers import LocalServer, find_server_binary, free_port, parse_info

__all__ = ["LocalCluster", "Shard", "SlotRange"]

SLOTS = 16384
#: Upper bound, in seconds, on forming the cluster or waiting for it to settle.
READY_TIMEOUT = 30.0
#: The shortest ``cluster-node-timeout`` a cluster is formed with (see ``LocalCluster.start``).
FORMING_NODE_TIMEOUT_MS = 5000


@attrs.frozen
class SlotRange:
    """An inclusive range of slots and who serves it (as ``(host, port)`` pairs)."""

    start: int
    end: int
    primary: tuple[str, int]
    replicas: tuple[tuple[str, int], ...]


@attrs.define
class Shard:
    """A primary and its replicas, as the harness last arranged or observed them."""

    primary: LocalServer
    replicas: list[LocalServer]


class LocalCluster(Scoped, BlockingScoped):
    """A cluster of ``masters`` primaries with ``replicas_per_master`` replicas each.

    Use ``with LocalCluster() as c:`` outside trio (pytest session fixtures), or
    ``async with LocalCluster() as c:`` inside it.  Leaving either ends every process the
    cluster started, also on errors and KeyboardInterrupt.
    """

    def __init__(
        self,
        masters: int = 3,
        replicas_per_master: int = 1,
        *,
        binary: Path | None = None,
        host: str = "127.0.0.1",
        cluster_node_timeout_ms: int = 2000,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if masters < 1 or replicas_per_master < 0:
            raise ValueError("masters must be >= 1 and replicas_per_master >= 0")
        binary = binary or find_server_binary()
        self.host = host
        self._password = password
        self.shards: list[Shard] = []
        taken: set[int] = set()
        for _ in range(masters):
            primary, *replicas = (
                LocalServer(
                    binary=binary,
                    host=host,
                    port=free_port(host, taken=taken),
                    cluster=True,
                    cluster_node_timeout_ms=cluster_node_timeout_ms,
                    password=password,
                    extra_args=extra_args,
                )
                for _ in range(1 + replicas_per_master)
            )
            self.shards.append(Shard(primary, replicas))
        self.node_ids: dict[int, str] = {}

    def __repr__(self) -> str:
        ports = ",".join(str(node.port) for node in self.nodes)
        return f"<LocalCluster {len(self.shards)} shards ports={ports}>"

    @property
    def nodes(self) -> list[LocalServer]:
        """Every node, primaries first (as arranged; see :meth:`refresh_roles`)."""
        return [s.primary for s in self.shards] + [r for s in self.shards for r in s.replicas]

    @property
    def primaries(self) -> list[LocalServer]:
        """The primary of each shard, as last arranged or observed."""
        return [s.primary for s in self.shards]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node, for a client's ``startup_nodes``."""
        return [node.address for node in self.nodes]

    def url(self, *, redacted: bool = False) -> str:
        """A ``redis://`` URL of the first node, enough for ``ClusterClient.from_url``; with
        ``redacted=True`` the password shows as ``***`` (safe to print or log)."""
        userinfo = ""
        if self._password is not None:
            userinfo = ":***@" if redacted else f":{quote(self._password, safe='')}@"
        first = self.nodes[0]
        return f"redis://{userinfo}{first.host}:{first.port}"

    def node(self, port: int) -> LocalServer:
        """The node listening on ``port``."""
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(f"no node on port {port}")

    def pids(self) -> list[int]:
        """Every pid any node of this cluster has started."""
        return [pid for node in self.nodes for pid in node.started_pids]

    # --- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every process, form the cluster, and wait until it is ready.

        Bounded by :data:`READY_TIMEOUT`; wrap it in ``trio.fail_after`` for a tighter bound.
        """
        with trio.fail_after(READY_TIMEOUT):
            # Formed with a node timeout of at least FORMING_NODE_TIMEOUT_MS: forming (a full
            # mesh of MEETs, replicas syncing) is the busiest moment, and a node that misses a
            # short timeout can be failed over, after which the map never matches the one
            # asked for.  The timeout asked for (one for every node, as __init__ and
            # set_node_timeout set it) applies once the cluster is ready.
            wanted = self.nodes[0].cluster_node_timeout_ms
            forming = max(wanted, FORMING_NODE_TIMEOUT_MS)
            for node in self.nodes:
                node.cluster_node_timeout_ms = forming
                node.spawn()
            async with trio.open_nursery() as nursery:
                for node in self.nodes:
                    nursery.start_soon(node.wait_ready)
            await self._form()
            await self.wait_ready()
            if forming != wanted:
                await self.set_node_timeout(wanted)

    def start_blocking(self) -> None:
        """:meth:`start` from synchronous code (not from inside a trio run)."""
        trio.run(self.start)

    def close(self) -> None:
        """End every process and remove their directories (idempotent)."""
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.close()
            except BaseException as exc:  # keep closing the others
                errors.append(exc)
        if errors:
            raise errors[0]

    def _open_blocking(self) -> None:
        self.start_blocking()

    async def _open(self) -> None:
        await self.start()

    async def _close(self) -> None:
        self.close()

    # --- forming ---------------------------------------------------------------------------

    async def _form(self) -> None:
        nodes = self.nodes
        for node in nodes:
            self.node_ids[node.port] = text(await node.execute("CLUSTER", "MYID"))
        per_shard = SLOTS // len(self.shards)
        for index, shard in enumerate(self.shards):
            first = index * per_shard
            last = SLOTS - 1 if index == len(self.shards) - 1 else first + per_shard - 1
            await shard.primary.execute("CLUSTER", "SET-CONFIG-EPOCH", index + 1)
            await shard.primary.execute("CLUSTER", "ADDSLOTSRANGE", first, last)
        # A full mesh of MEETs converges much faster than waiting for gossip to spread.
        for i, node in enumerate(nodes):
            for other in nodes[i + 1 :]:
                await node.execute("CLUSTER", "MEET", other.host, other.port)
        for shard in self.shards:
            primary_id = self.node_ids[shard.primary.port]
            for replica in shard.replicas:
                await self._wait_known(replica, primary_id)
                await replica.execute("CLUSTER", "REPLICATE", primary_id)

    async def _wait_known(self, node: LocalServer, node_id: str) -> None:
        # Polling is the only way: a server offers no event for "gossip arrived".
        while node_id not in text(await node.execute("CLUSTER", "NODES")):  # noqa: ASYNC110
            await trio.sleep(0.02)

    async def wait_ready(self) -> None:
        """Wait until every running node says ``cluster_state:ok`` and all agree on the map.

        Bounded by :data:`READY_TIMEOUT`.
        """
        with trio.fail_after(READY_TIMEOUT):
            while not await self._is_ready():  # noqa: ASYNC110 - polling the servers is the only way
                await trio.sleep(0.02)

    async def _is_ready(self) -> bool:
        live = [node for node in self.nodes if node.running and not node.paused]
        expected = {(s.primary.port, tuple(sorted(r.port for r in s.replicas if r in live)))
                    for s in self.shards}  # fmt: skip
        maps = []
        for node in live:
            try:
                info = parse_info(await node.execute("CLUSTER", "INFO", read_timeout=2.0))
                if info.get("cluster_state") != "ok":
                    return False
                maps.append(await self.slot_map(node))
            except Exception:
                return False
        if not maps or any(m != maps[0] for m in maps):
            return False
        owners = {(r.primary[1], tuple(sorted(p for _, p in r.replicas))) for r in maps[0]}
        covered = sum(r.end - r.start + 1 for r in maps[0])
        return covered == SLOTS and owners == expected

    async def slot_map(self, node: LocalServer | None = None) -> list[SlotRange]:
        """The slot map as ``node`` (default: the first running node) describes it."""
        node = node or next(n for n in self.nodes if n.running)
        reply = await node.execute("CLUSTER", "SLOTS", read_timeout=2.0)
        ranges = []
        for entry in reply:
            start, end, primary, *replicas = entry
            ranges.append(
                SlotRange(
                    int(start),
                    int(end),
                    (text(primary[0]), int(primary[1])),
                    tuple(sorted((text(r[0]), int(r[1])) for r in replicas)),
                )
            )
        return sorted(ranges, key=lambda r: r.start)

    # --- operations ------------------------------------------------------------------------

    async def execute(self, node: LocalServer | int, *args: EncodableArg) -> Any:
        """Run one command on a node (given as a LocalServer or its port)."""
        target = self.node(node) if isinstance(node, int) else node
        return await target.execute(*args)

    def shard_of(self, node: LocalServer) -> Shard:
        """The shard ``node`` belongs to."""
        for shard in self.shards:
            if node is shard.primary or node in shard.replicas:
                return shard
        raise KeyError(f"{node!r} is not in {self!r}")

    async def failover(self, shard: int | Shard, *, mode: str = "") -> None:
        """Promote the first replica of a shard with CLUSTER FAILOVER (``mode``: "", "FORCE",
        "TAKEOVER") and wait until every node agrees on the new roles."""
        target = self.shards[shard] if isinstance(shard, int) else shard
        if not target.replicas:
            raise ValueError("this shard has no replica to promote")
        replica = target.replicas[0]
        await replica.execute("CLUSTER", "FAILOVER", *([mode] if mode else []))
        target.replicas[0], target.primary = target.primary, replica
        await self.wait_ready()

    async def refresh_roles(self) -> None:
        """Re-read who is primary of each shard from a live node (after a failover the
        cluster did on its own, e.g. when a primary was killed)."""
        by_port = {node.port: node for node in self.nodes}
        for slot_range in await self.slot_map():
            primary = by_port.get(slot_range.primary[1])
            if primary is None:
                continue
            for shard in self.shards:
                members = [shard.primary, *shard.replicas]
                if primary in members and shard.primary is not primary:
                    members.remove(primary)
                    shard.primary, shard.replicas = primary, members

    async def set_node_timeout(self, milliseconds: int) -> None:
        """CONFIG SET cluster-node-timeout on every running node."""
        for node in self.nodes:
            if node.running:
                await node.execute("CONFIG", "SET", "cluster-node-timeout", milliseconds)
                node.cluster_node_timeout_ms = milliseconds

    async def restart(self, node: LocalServer) -> None:
        """Restart one node (same port, same nodes.conf, so it rejoins) and wait for the
        cluster to be ready again."""
        await node.restart()
        await self.wait_ready()

    async def client_counts(self) -> dict[int, int]:
        """``connected_clients`` per node port (the harness's own connection excluded)."""
        counts = {}
        for node in self.nodes:
            if node.running and not node.paused:
                info = await node.info("clients")
                counts[node.port] = int(info["connected_clients"]) - 1
        return counts

    @contextlib.contextmanager
    def paused(self, node: LocalServer) -> Iterator[LocalServer]:
        """SIGSTOP ``node`` for the duration of the block."""
        node.pause()
        try:
            yield node
        finally:
            node.resume()
