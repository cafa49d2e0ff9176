"""In-memory cluster nodes for unit tests of routing (router, node call, pipelines, fan-out,
refresher, isolation), on trio's autojump clock.

A :class:`FakeNode` answers commands from a small key-value store (GET, SET, MGET, MSET, DEL,
PING, MULTI/EXEC...) unless the test scripts its next outcomes (``node.script``: replies or
error replies, in order).  It can be down (dials refused: nothing sent), hung (nothing answers
until it resumes: reads time out) or slow.  :class:`FakeConn` is what the pool hands out: the
real pool, breaker, slot map, router and policy run on top, only the socket is replaced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import hiredis
import trio
from redis import exceptions as rex

from trio_cluster.config import ConnectionConfig, RetryOptions
from trio_cluster.conn.connection import mark_unsent
from trio_cluster.conn.state import ConnState, ConnStateMachine
from trio_cluster.errors import ExecAbortError, ReadTimeoutError
from trio_cluster.pooling.breaker import BreakerOptions, Peers
from trio_cluster.pooling.pool import PoolOptions
from trio_cluster.routing.nodes import guarded_pool
from trio_cluster.routing.router import Router
from trio_cluster.routing.rules import CommandTable, key_slot
from trio_cluster.routing.slotmap import Node, ReadFrom, SlotMap
from trio_cluster.routing.specs import CommandSpecs
from trio_cluster.routing.topology import Address, Shard, Topology
from trio_cluster.wire.commands import ReplyParser

__all__ = ["COMMANDS", "THREE", "FakeCluster", "FakeConn", "FakeNode", "fake_cluster", "key_on"]

_ids = itertools.count(1)

#: ``COMMAND`` entries (name, arity, flags, first key, last key, step) for what the fakes run.
COMMANDS: list[Any] = [
    [b"get", 2, [b"readonly", b"fast"], 1, 1, 1],
    [b"set", -3, [b"write"], 1, 1, 1],
    [b"incr", 2, [b"write"], 1, 1, 1],
    [b"incrby", 3, [b"write"], 1, 1, 1],
    [b"mget", -2, [b"readonly"], 1, -1, 1],
    [b"mset", -3, [b"write"], 1, -1, 2],
    [b"del", -2, [b"write"], 1, -1, 1],
    [b"exists", -2, [b"readonly"], 1, -1, 1],
    [b"ping", -1, [b"fast"], 0, 0, 0],
    [b"dbsize", 1, [b"readonly"], 0, 0, 0],
    [b"flushall", -1, [b"write"], 0, 0, 0],
    [b"blpop", -3, [b"write", b"blocking"], 1, -2, 1],
]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class FakeNode:
    """One node's behaviour: its data, its scripted outcomes, whether it is down or hung."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.name = f"{address[0]}:{address[1]}"
        self.data: dict[bytes, bytes] = {}
        #: Outcomes of the next commands, in order (a value, an exception to reply with, or
        #: a function of the command's arguments); then the store answers.
        self.script: list[Any] = []
        #: Every command the node answered (ASKING, MULTI... included).
        self.calls: list[tuple[Any, ...]] = []
        #: Commands that reached the node, answered or not (a hung node holds them).
        self.received = 0
        self.dials = 0
        #: What CLUSTER NODES answers (the cluster's view of its nodes, as this node has it).
        self.cluster_nodes = ""
        #: What CONFIG GET cluster-node-timeout answers (None: CONFIG refused, as managed
        #: services may).
        self.node_timeout_ms: int | None = 1000
        self.down = False
        self.latency = 0.0
        self._resumed: trio.Event | None = None

    def hang(self) -> None:
        """Stop answering (commands in flight and new ones wait) until :meth:`resume`."""
        if self._resumed is None:
            self._resumed = trio.Event()

    def resume(self) -> None:
        """Answer again (held commands get their replies now)."""
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    @property
    def hung(self) -> bool:
        return self._resumed is not None

    async def reply_to(self, args: Sequence[Any], *, queued: bool = False) -> Any:
        """The node's reply to one command (an error reply as an exception object), after
        its latency and while it is not hung.  ``queued`` (inside MULTI): only a scripted
        outcome, else None (the command waits for EXEC)."""
        self.received += 1
        if self.latency:
            await trio.sleep(self.latency)
        while self._resumed is not None:
            await self._resumed.wait()
        self.calls.append(tuple(args))
        if self.script:
            outcome = self.script.pop(0)
            return outcome(args) if callable(outcome) else outcome
        return None if queued else self.answer(args)

    def answer(self, args: Sequence[Any]) -> Any:
        name = _text(args[0]).upper()
        keys = [_bytes(a) for a in args[1:]]
        if name == "GET":
            return self.data.get(keys[0])
        if name == "SET":
            self.data[keys[0]] = keys[1]
            return b"OK"
        if name in ("INCR", "INCRBY"):
            value = int(self.data.get(keys[0], b"0")) + (int(keys[1]) if len(keys) > 1 else 1)
            self.data[keys[0]] = str(value).encode()
            return value
        if name == "MGET":
            return [self.data.get(k) for k in keys]
        if name == "MSET":
            self.data.update(zip(keys[::2], keys[1::2], strict=True))
            return b"OK"
        if name in ("DEL", "EXISTS"):
            found = sum(1 for k in keys if k in self.data)
            if name == "DEL":
                for k in keys:
                    self.data.pop(k, None)
            return found
        if name == "DBSIZE":
            return len(self.data)
        if name == "FLUSHALL":
            self.data.clear()
            return b"OK"
        if name == "CLUSTER" and len(args) > 1 and _text(args[1]).upper() == "NODES":
            return self.cluster_nodes.encode()
        if name == "CONFIG" and [_text(a).lower() for a in args[1:]] == [
            "get",
            "cluster-node-timeout",
        ]:
            if self.node_timeout_ms is None:
                return rex.ResponseError("ERR unknown command 'CONFIG'")
            return [b"cluster-node-timeout", str(self.node_timeout_ms).encode()]
        if name == "TIME":
            now = trio.current_time()
            return [str(int(now)).encode(), str(int(now % 1 * 1e6)).encode()]
        if name in ("PING", "ASKING", "READONLY", "MULTI"):
            return b"PONG" if name == "PING" else b"OK"
        return rex.ResponseError(f"ERR unknown command '{name}'")


class FakeConn:
    """A pooled connection to a :class:`FakeNode` (the pool's ``PoolableConnection`` and what
    the node call and the automatic pipeliner use of a ``Connection``)."""

    def __init__(self, node: FakeNode, config: ConnectionConfig) -> None:
        self.id = next(_ids)
        self.node = node
        self.config = config
        self.state = ConnStateMachine()
        self.state.transition(ConnState.INITIALIZING)
        self.state.transition(ConnState.IDLE)
        self.created_at = self.last_used_at = trio.current_time()
        self.owed_replies = 0
        self.broken = False
        self.out_of_step = False
        self.relaxed_until = -math.inf  # no maintenance notice relaxes a fake's timeouts
        self.sent_at = 0.0
        self.client_id: int | None = self.id
        self._queued: list[Any] | None = None  # inside MULTI: the replies EXEC will give

    def peer_closed(self) -> bool:
        return False

    async def drain(self) -> None:
        await trio.lowlevel.checkpoint()
        self.owed_replies = 0

    async def aclose(self) -> None:
        if self.state.state is not ConnState.CLOSED:
            self.state.transition(ConnState.CLOSED)
        await trio.lowlevel.checkpoint()

    async def execute(self, args: Sequence[Any], *, blocks_for: float = 0.0) -> Any:
        reply = (await self.execute_many([args], blocks_for=blocks_for))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def execute_encoded(self, data: bytes, count: int) -> list[Any]:
        reader = hiredis.Reader()
        reader.feed(data)
        return await self.execute_many([reader.gets() for _ in range(count)])

    async def execute_many(
        self, commands: Sequence[Sequence[Any]], *, blocks_for: float = 0.0
    ) -> list[Any]:
        """The commands' replies, errors as values; a read timeout (the node hung or too
        slow) raises ``ReadTimeoutError`` and breaks the connection, as a real one does."""
        if self.broken:
            raise mark_unsent(rex.ConnectionError(f"connection {self.id} is closed"))
        self.sent_at = trio.current_time()
        self.owed_replies += len(commands)
        timeout = self.config.read_timeout
        replies: list[Any] = []
        with trio.move_on_after(timeout + blocks_for if timeout else float("inf")) as scope:
            for args in commands:
                replies.append(await self._one(args))
                self.owed_replies -= 1
        if scope.cancelled_caught:
            self.broken = True
            raise ReadTimeoutError(f"no reply from {self.node.name} within {timeout} s")
        return replies

    async def _one(self, args: Sequence[Any]) -> Any:
        """One command, MULTI/EXEC as the server does it: commands queued (an error at queue
        time makes EXEC abort), run at EXEC."""
        name = _text(args[0]).upper()
        queued = self._queued
        if name == "MULTI":
            reply = await self.node.reply_to(args)
            self._queued = [] if not isinstance(reply, Exception) else None
            return reply
        if name == "EXEC":
            await self.node.reply_to(args, queued=True)
            self._queued = None
            if queued is None:
                return rex.ResponseError("ERR EXEC without MULTI")
            if any(isinstance(q, Exception) for q in queued):
                return ExecAbortError("EXECABORT Transaction discarded because of previous errors.")
            return [self.node.answer(q) for q in queued]
        if queued is not None:
            refused = await self.node.reply_to(args, queued=True)
            queued.append(refused if isinstance(refused, Exception) else args)
            return refused if isinstance(refused, Exception) else b"QUEUED"
        return await self.node.reply_to(args)


class FakeDialer:
    """The router's dialer (for the helper that unblocks a blocking command); unused here,
    but for its ``config`` (pipelines read the script and read timeouts there)."""

    config = ConnectionConfig()

    async def open(self, address: Address, **_: Any) -> Any:
        raise AssertionError("the fakes do not open one-off connections")


class FakeCluster:
    """Fake nodes behind a real slot map, pools, breakers, router and retry policy."""

    def __init__(
        self,
        nursery: trio.Nursery,
        shards: Sequence[tuple[Address, Sequence[Address], Sequence[tuple[int, int]]]],
        *,
        retry: RetryOptions,
        breaker: BreakerOptions,
        pool: PoolOptions,
        read_timeout: float,
        read_from: ReadFrom,
    ) -> None:
        self.nursery = nursery
        self.fakes: dict[Address, FakeNode] = {}
        for primary, replicas, _ in shards:
            for address in (primary, *replicas):
                self.fakes[address] = FakeNode(address)
        self.topology = Topology.from_shards(
            Shard(primary, tuple(replicas), tuple(ranges)) for primary, replicas, ranges in shards
        )
        self.breaker = breaker
        self.peers = Peers()
        self.pool_options = pool
        self.read_timeout = read_timeout
        self.refreshes = 0
        self.refresh_requests = 0
        self.slots = SlotMap(
            read_from=read_from,
            remap=None,
            create=self._create,
            start=self._start,
            request_refresh=self._request_refresh,
            refresh=self._refresh,
        )
        self.replies = ReplyParser(None, cluster=True)
        self.specs = CommandSpecs(self.replies, CommandTable(COMMANDS))
        self.router = Router(self.slots, retry, FakeDialer(), self.specs, list(self.fakes)[:1])  # type: ignore[arg-type]

    def __getitem__(self, address: Address) -> FakeNode:
        return self.fakes[address]

    def node(self, address: Address) -> Node:
        """The slot map's node at ``address``."""
        found = self.slots.by_name(f"{address[0]}:{address[1]}")
        assert found is not None
        return found

    def _create(self, address: Address, replica: bool = False) -> Node:
        fake = self.fakes.setdefault(address, FakeNode(address))
        config = ConnectionConfig(host=address[0], port=address[1], read_timeout=self.read_timeout)

        async def dial() -> FakeConn:
            fake.dials += 1
            await trio.lowlevel.checkpoint()
            if fake.down:
                raise mark_unsent(rex.ConnectionError(f"cannot connect to {fake.name}: refused"))
            return FakeConn(fake, config)

        breaker, pool = guarded_pool(
            fake.name,
            dial,
            self.pool_options,
            self.breaker,
            peers=self.peers,
            read_timeout=self.read_timeout,
            timeout=5.0,
        )
        return Node(address, pool, breaker, FakeDialer())  # type: ignore[arg-type]

    async def _start(self, node: Node) -> None:
        await node.pool.start_background(self.nursery)

    def _request_refresh(self) -> None:
        self.refresh_requests += 1

    async def _refresh(self) -> None:
        self.refreshes += 1
        await self.slots.install(self.topology)

    async def install(self, topology: Topology | None = None) -> None:
        """Make ``topology`` (by default the one built from ``shards``) the map's."""
        if topology is not None:
            self.topology = topology
        await self.slots.install(self.topology)

    async def run(self, *args: Any, slot: int | None = None) -> Any:
        """Route and run one keyed command as the cluster client's hot path does."""
        spec = self.specs.get(args[0])
        target = key_slot(_bytes(args[1])) if slot is None else slot
        reply = await self.router.on_slot(target, tuple(args), spec, spec.readonly)
        return self.replies.apply(spec.callbacks, reply, {})


@asynccontextmanager
async def fake_cluster(
    shards: Sequence[tuple[Address, Sequence[Address], Sequence[tuple[int, int]]]],
    *,
    retry: RetryOptions | None = None,
    breaker: BreakerOptions | None = None,
    pool: PoolOptions | None = None,
    read_timeout: float = 1.0,
    read_from: ReadFrom = ReadFrom.PRIMARY,
) -> AsyncIterator[FakeCluster]:
    """A :class:`FakeCluster` whose pools live in a nursery of the block; the topology is
    installed on entry."""
    async with trio.open_nursery() as nursery:
        cluster = FakeCluster(
            nursery,
            shards,
            retry=retry or RetryOptions(),
            breaker=breaker or BreakerOptions(),
            pool=pool or PoolOptions(),
            read_timeout=read_timeout,
            read_from=read_from,
        )
        await cluster.install()
        yield cluster
        nursery.cancel_scope.cancel()


#: Three primaries, no replicas: 0-5460, 5461-10922, 10923-16383.
THREE: list[tuple[Address, Sequence[Address], Sequence[tuple[int, int]]]] = [
    (("10.0.0.1", 7000), (), ((0, 5460),)),
    (("10.0.0.2", 7000), (), ((5461, 10922),)),
    (("10.0.0.3", 7000), (), ((10923, 16383),)),
]


def key_on(shard: int, prefix: str = "k") -> str:
    """A key whose slot belongs to shard ``shard`` of :data:`THREE`."""
    bounds = THREE[shard][2][0]
    for i in itertools.count():
        key = f"{prefix}{i}"
        if bounds[0] <= key_slot(key.encode()) <= bounds[1]:
            return key
    raise AssertionError("unreachable")
