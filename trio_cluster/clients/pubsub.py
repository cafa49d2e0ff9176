"""Pub/sub on dedicated connections: classic, pattern and sharded subscriptions that survive
dropped connections, failovers and slot moves, with the gaps they cause made visible.

``async with client.pubsub() as p:`` opens a nursery.  Each dedicated connection (a *link*) has
one task that owns it completely: it writes the subscribe commands, reads every frame, and feeds
one bounded memory channel of redis-py-shaped messages, which ``async for message in p`` and
:meth:`PubSub.get_message` consume.  Links never enter a command pool, and the client bounds how
many may be open at once (:class:`PubSubRegistry`).

What the server should have is kept as data: the sets of channels, patterns and shard channels
asked for, and, for a cluster, which link carries each shard channel.  A link that dies simply
ends; a *placer* task then puts whatever lost its link back on a (new) link, after a topology
refresh in a cluster, and every new link replays its part of the sets.  So reconnecting,
following a failover and following a slot move are one code path.

With the client's ``decode_responses=True`` the consumer (and every message handler) gets
messages with channels, patterns and data decoded to str, as from redis-py; inside, names stay
bytes.

Redis pub/sub is at-most-once: what is published while a subscription is down is lost.  When
a subscription the server had confirmed is lost, the stream carries a ``{"type": "gap", ...}``
message before anything the replacement subscription delivers (see ``docs/pubsub.md``).
"""

from __future__ import annotations

import collections
import inspect
import logging
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, Protocol, Self, overload

import attrs
import trio
from redis import exceptions as rex

from ..connection import Connection
from ..errors import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    PoolClosedError,
    ProtocolError,
    ReadTimeoutError,
    TryAgainError,
)
from ..jobs.dialer import Dialer
from ..lifetime import NurseryOwner
from ..protocol import EncodableArg
from ..routing.rules import key_slot
from ..routing.slotmap import SlotMap
from ..routing.topology import Address
from ..wire.encoding import decode_reply

__all__ = ["PubSub", "PubSubHost", "PubSubLimitError", "PubSubRegistry", "PubSubStats"]


class PubSubHost(Protocol):
    """What a PubSub needs of its client: the dialer that opens every connection (newest
    credentials, the client's TLS and timeouts).  A cluster client also has a ``slot_map``
    (:class:`~trio_cluster.routing.slotmap.SlotMap`), which places shard channels."""

    @property
    def dialer(self) -> Dialer:
        """Opens the client's connections."""
        ...


logger = logging.getLogger("trio_cluster.pubsub")

Family = Literal["channel", "pattern", "shard"]

#: Push kinds that carry a published message.
_MESSAGE_KINDS: Final = frozenset({"message", "pmessage", "smessage"})
#: Confirmations, with the subscription family they concern.
_SUBSCRIBE_KINDS: Final[dict[str, Family]] = {
    "subscribe": "channel",
    "psubscribe": "pattern",
    "ssubscribe": "shard",
}
_UNSUBSCRIBE_KINDS: Final[dict[str, Family]] = {
    "unsubscribe": "channel",
    "punsubscribe": "pattern",
    "sunsubscribe": "shard",
}
_PUBSUB_KINDS: Final = frozenset({*_MESSAGE_KINDS, *_SUBSCRIBE_KINDS, *_UNSUBSCRIBE_KINDS, "pong"})
#: Errors that say "not now" rather than "never": the subscription is retried elsewhere/later.
_TRANSIENT = (ClusterDownError, TryAgainError, MasterDownError, BusyLoadingError)
#: What ends a link's session (and makes the placer reconnect).
_LINK_ERRORS = (
    rex.ConnectionError,
    rex.TimeoutError,
    ProtocolError,
    OSError,
    trio.BrokenResourceError,
)

_VERBS: Final[dict[tuple[Family, bool], str]] = {
    ("channel", False): "SUBSCRIBE",
    ("channel", True): "UNSUBSCRIBE",
    ("pattern", False): "PSUBSCRIBE",
    ("pattern", True): "PUNSUBSCRIBE",
}
_PING: Final[tuple[EncodableArg, ...]] = ("PING",)
_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0
#: Longest wait for a topology refresh before placing with what the client knows.
_REFRESH_BOUND = 5.0


class PubSubLimitError(rex.MaxConnectionsError):
    """Opening one more pub/sub connection would exceed the client's bound."""


@attrs.frozen
class PubSubStats:
    """A snapshot of pub/sub connections and what happened to them (cumulative counters)."""

    max_connections: int
    """The bound on open pub/sub connections (per client)."""
    open_connections: int
    """Pub/sub connections open or being opened right now."""
    connects: int
    """Connections opened (first connections and reconnections alike)."""
    connect_errors: int
    """Connection attempts that failed (each is retried with backoff)."""
    disconnects: int
    """Connections lost while serving (dropped, killed, timed out, node down)."""
    gaps: int
    """Gap events put in the stream: confirmed subscriptions that were lost for a while."""
    moved: int
    """SSUBSCRIBE answered with MOVED (re-routed to the named node)."""
    slot_moves: int
    """Shard channels the server unsubscribed because their slot left the node."""
    messages: int
    """Published messages delivered to the stream (message, pmessage, smessage)."""
    limit_rejections: int
    """Connections refused by the bound (:class:`PubSubLimitError`)."""


@attrs.define
class _Counters:
    connects: int = 0
    connect_errors: int = 0
    disconnects: int = 0
    gaps: int = 0
    moved: int = 0
    slot_moves: int = 0
    messages: int = 0
    limit_rejections: int = 0


class PubSubRegistry:
    """A client's book of dedicated pub/sub connections: the bound and the counters.

    One per client, shared by all its :class:`PubSub` objects.  A slot is taken when a
    connection is about to be opened and given back when it is closed; a connection being
    re-established after a failure gives its slot back first, so recovery never trips the
    bound on its own.
    """

    def __init__(self, max_connections: int = 64) -> None:
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise ValueError(f"max_pubsub_connections must be an int >= 1; got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(f"max_pubsub_connections must be an int >= 1; got {max_connections!r}")
        self.max_connections = max_connections
        self.open = 0
        self.counters = _Counters()

    def check(self, extra: int) -> None:
        """Raise :class:`PubSubLimitError` unless ``extra`` more connections fit."""
        if self.open + extra > self.max_connections:
            self.counters.limit_rejections += 1
            raise PubSubLimitError(
                f"this client already has {self.open} pub/sub connection(s) and may have at most "
                f"{self.max_connections} (max_pubsub_connections); {extra} more are needed. "
                "Close a PubSub, subscribe through fewer PubSub objects, or raise the bound."
            )

    def acquire(self) -> None:
        """Take one slot (raises :class:`PubSubLimitError` when none is left)."""
        self.check(1)
        self.open += 1

    def release(self) -> None:
        """Give one slot back."""
        self.open -= 1

    def stats(self) -> PubSubStats:
        """Counters summed over every PubSub of the client."""
        return _stats(self.max_connections, self.open, self.counters)


def _stats(max_connections: int, open_connections: int, counters: _Counters) -> PubSubStats:
    return PubSubStats(
        max_connections=max_connections,
        open_connections=open_connections,
        **attrs.asdict(counters),
    )


@attrs.frozen
class _Failure:
    """An error for the consumer: :meth:`PubSub.get_message` raises it."""

    error: Exception


def _name(value: Any) -> bytes:
    """A channel or pattern as bytes (as the server echoes it back)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    raise TypeError(f"a channel or pattern must be str or bytes; got {type(value).__name__}")


def _backoff(failures: int) -> float:
    # Full jitter keeps many subscribers from reconnecting to a recovering node in lockstep.
    return random.uniform(0.5, 1.0) * min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** min(failures, 16))


def _kind(frame: Any) -> str | None:
    """The pub/sub kind of a frame (RESP3 push, or a RESP2 array in subscribed mode)."""
    if isinstance(frame, list) and frame and isinstance(frame[0], bytes):
        kind = frame[0].decode("ascii", "replace").lower()
        if kind in _PUBSUB_KINDS:
            return kind
    return None


def _message(kind: str, frame: list[Any]) -> dict[str, Any]:
    """The redis-py shape: type, pattern, channel, data."""
    if kind == "pmessage":
        return {"type": kind, "pattern": frame[1], "channel": frame[2], "data": frame[3]}
    return {"type": kind, "pattern": None, "channel": frame[1], "data": frame[2]}


class _UserPing(tuple[Any, ...]):
    """A PING the consumer asked for (``PubSub.ping``): its answer goes to the stream."""

    answered = False


def _skipped(item: dict[str, Any], ignore_subscribe_messages: bool) -> bool:
    return ignore_subscribe_messages and item["type"] in _SUBSCRIPTION_TYPES


class _Link:
    """One dedicated connection and what it should carry.

    A link lives for one connection: it dials, replays, serves, and ends.  Only its own task
    touches the connection; other tasks append commands to ``outbox`` and wake the task.
    """

    def __init__(self, classic: bool, address: Address | None) -> None:
        self.classic = classic
        self.address = address
        #: Shard channels this link carries (the classic link carries channels and patterns
        #: by definition, and, standalone, the shard channels too).
        self.shard_channels: set[bytes] = set()
        self.conn: Connection | None = None
        #: Commands to write (only while serving: a connecting link replays instead).
        self.outbox: list[tuple[EncodableArg, ...]] = []
        #: Commands written whose closing PONG has not come yet, oldest first.
        self.sent: collections.deque[tuple[EncodableArg, ...]] = collections.deque()
        #: Subscriptions the server confirmed on this connection.
        self.active: set[tuple[Family, bytes]] = set()
        #: Unsubscribes we asked for and whose confirmation has not come: any other
        #: sunsubscribe is the server's (a slot left the node).
        self.unsubscribing: Counter[tuple[Family, bytes]] = Counter()
        self.activity = 0.0
        self.wake_scope: trio.CancelScope | None = None
        self.woken = False

    @property
    def name(self) -> str:
        return f"{self.address[0]}:{self.address[1]}" if self.address else "?"

    def queue(self, command: tuple[EncodableArg, ...]) -> bool:
        """Queue a command if the link is serving (else its replay will cover it)."""
        if self.conn is None:
            return False
        self.outbox.append(command)
        self.wake()
        return True

    def wake(self) -> None:
        if self.wake_scope is not None:
            self.woken = True
            self.wake_scope.cancel()


class PubSub(NurseryOwner):
    """Subscriptions on dedicated connections, consumed with ``async for`` or
    :meth:`get_message`.  Get one from ``client.pubsub()`` and use it as
    ``async with client.pubsub() as p:``; leaving the block closes every connection it opened
    (which ends their subscriptions on the server) and stops its tasks.

    With a :class:`~trio_cluster.ClusterClient`, classic channels and patterns go through one
    connection to one primary (the cluster forwards every PUBLISH to every node); shard
    channels (SSUBSCRIBE) go to their slot's primary, one connection per primary.

    ``buffer``: messages held for the consumer.  When it is full the link tasks wait, so the
    server buffers instead (up to its ``client-output-buffer-limit pubsub``, beyond which it
    drops the connection: that shows up as a gap).  ``ignore_subscribe_messages`` drops the
    (un)subscribe confirmations.  ``health_check_interval``: after this many seconds without a
    frame a link sends PING, and a link whose commands go unanswered for the read timeout is
    reconnected (None: never ping).
    """

    def __init__(
        self,
        client: PubSubHost,
        *,
        registry: PubSubRegistry | None = None,
        buffer: int = 1024,
        ignore_subscribe_messages: bool = False,
        health_check_interval: float | None = 30.0,
    ) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an int >= 1; got {buffer!r}")
        if health_check_interval is not None and not (
            isinstance(health_check_interval, int | float) and health_check_interval > 0
        ):
            raise ValueError(
                f"health_check_interval must be a number of seconds > 0 or None; "
                f"got {health_check_interval!r}"
            )
        self._client = client
        slot_map = getattr(client, "slot_map", None)
        #: The cluster's slot map; None for a one-node client.
        self._cluster: SlotMap | None = slot_map if isinstance(slot_map, SlotMap) else None
        encoding = getattr(client, "_encoding", None)
        #: (encoding, errors) to decode messages with (the client's decode_responses), or None.
        self._decoding: tuple[str, str] | None = (
            (encoding.encoding, encoding.encoding_errors)
            if encoding is not None and encoding.decode_responses
            else None
        )
        if registry is None:
            registry = getattr(client, "_pubsub_registry", None) or PubSubRegistry()
        self._registry = registry
        self._buffer = buffer
        self.ignore_subscribe_messages = ignore_subscribe_messages
        self.health_check_interval = health_check_interval
        self._counters = _Counters()
        #: What the consumer asked for (the truth that links replay).
        self._channels: set[bytes] = set()
        self._patterns: set[bytes] = set()
        self._shard: set[bytes] = set()
        self._classic: _Link | None = None
        self._shard_links: dict[Address, _Link] = {}
        self._owner: dict[bytes, _Link] = {}
        self._links: set[_Link] = set()
        self._place_wanted = trio.Event()
        self._refresh_wanted = False
        self._failures = 0
        self._avoid: Address | None = None
        #: The channel whose slot's primary carries the classic link (see _classic_address).
        self._home: bytes | None = None
        #: ping() calls made before the classic link was serving.
        self._pending_pings: list[tuple[EncodableArg, ...]] = []
        #: Message handlers given to subscribe(name=handler), by (family, name).
        self._handlers: dict[tuple[Family, bytes], Callable[[dict[str, Any]], Any]] = {}
        self._send: trio.MemorySendChannel[dict[str, Any] | _Failure] | None = None
        self._receive: trio.MemoryReceiveChannel[dict[str, Any] | _Failure] | None = None
        self._closed = False
        #: One cancel scope per task, so that aclose() can stop them all without leaving the
        #: nursery (which must be exited in the order it was entered).
        self._scopes: set[trio.CancelScope] = set()
        self._running = 0
        self._idle = trio.Event()

    def __repr__(self) -> str:
        return (
            f"<PubSub channels={len(self._channels)} patterns={len(self._patterns)}"
            f" shard_channels={len(self._shard)} connections={len(self._links)}>"
        )

    # --- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None or self._closed:
            raise RuntimeError(f"{self!r} cannot be entered twice")
        return await super().__aenter__()

    async def _start(self, nursery: trio.Nursery) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any] | _Failure](self._buffer)
        self._send, self._receive = send, receive
        self._spawn(self._placer)

    async def _stop(self) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and stop every task; idempotent (leaving ``async with``
        does it).  Usable inside the block too: the PubSub then stays closed.

        Closing a connection ends its subscriptions on the server; no UNSUBSCRIBE is sent
        first, as that would be a round trip that a cancelled caller could not wait for.
        """
        self._closed = True
        for scope in list(self._scopes):
            scope.cancel()
        # Shielded: each task only has to run its (shielded, quick) connection close.
        with trio.CancelScope(shield=True):
            while self._running:
                await self._idle.wait()
        if self._send is not None:
            self._send.close()  # consumers in other tasks see the end of the stream

    def _spawn(self, function: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start a task in the nursery under a cancel scope of its own."""
        nursery = self._check_open()
        scope = trio.CancelScope()
        self._scopes.add(scope)
        if not self._running:
            self._idle = trio.Event()
        self._running += 1

        async def run() -> None:
            try:
                with scope:
                    await function(*args)
            finally:
                self._scopes.discard(scope)
                self._running -= 1
                if not self._running:
                    self._idle.set()

        nursery.start_soon(run, name=getattr(function, "__qualname__", None))

    def _check_open(self) -> trio.Nursery:
        if self._nursery is None or self._closed:
            raise RuntimeError("use the PubSub inside `async with client.pubsub() as p:`")
        return self._nursery

    # --- subscribing ---------------------------------------------------------------------------

    async def subscribe(self, *channels: Any, **handlers: Callable[[dict[str, Any]], Any]) -> None:
        """SUBSCRIBE: confirmations and messages arrive in the stream; returns at once.
        ``name=handler`` keywords subscribe too, as in redis-py: that channel's messages go to
        ``handler(message)`` (a plain or an async function, called by the task reading the
        stream) instead of the stream."""
        names = [_name(c) for c in channels]
        async with self._handling("channel", handlers) as named:
            await self._classic_command("channel", names + named)

    async def psubscribe(self, *patterns: Any, **handlers: Callable[[dict[str, Any]], Any]) -> None:
        """PSUBSCRIBE (glob-style patterns); ``pattern=handler`` as for :meth:`subscribe`."""
        names = [_name(p) for p in patterns]
        async with self._handling("pattern", handlers) as named:
            await self._classic_command("pattern", names + named)

    async def unsubscribe(self, *channels: Any) -> None:
        """UNSUBSCRIBE the given channels, or every channel if none is given."""
        names = [_name(c) for c in channels] or sorted(self._channels)
        self._forget_handlers("channel", names)
        await self._classic_command("channel", names, unsubscribe=True)

    async def punsubscribe(self, *patterns: Any) -> None:
        """PUNSUBSCRIBE the given patterns, or every pattern if none is given."""
        names = [_name(p) for p in patterns] or sorted(self._patterns)
        self._forget_handlers("pattern", names)
        await self._classic_command("pattern", names, unsubscribe=True)

    @asynccontextmanager
    async def _handling(
        self, family: Family, handlers: dict[str, Callable[[dict[str, Any]], Any]]
    ) -> AsyncIterator[list[bytes]]:
        """Register ``handlers`` (by name) for the subscribe command run in the block,
        and take them back if it fails."""
        named = {_name(name): handler for name, handler in handlers.items()}
        for name, handler in named.items():
            self._handlers[(family, name)] = handler
        try:
            yield list(named)
        except BaseException:
            self._forget_handlers(family, named)
            raise

    def _forget_handlers(self, family: Family, names: Iterable[bytes]) -> None:
        for name in names:
            self._handlers.pop((family, name), None)

    async def ssubscribe(self, *channels: Any, **handlers: Callable[[dict[str, Any]], Any]) -> None:
        """SSUBSCRIBE: each shard channel goes to the primary of its slot;
        ``channel=handler`` as for :meth:`subscribe`."""
        async with self._handling("shard", handlers) as named:
            await self._ssubscribe([_name(c) for c in channels] + named)

    async def _ssubscribe(self, names: list[bytes]) -> None:
        self._check_open()
        if not names:
            raise ValueError("ssubscribe needs at least one channel")
        cluster = self._cluster
        if cluster is not None:
            targets = [self._shard_address(n) for n in names]
            if None in targets:
                await self._refresh()  # the map has a hole: look again before giving up
                targets = [self._shard_address(n) for n in names]
            if None in targets:
                missing = [n for n, t in zip(names, targets, strict=True) if t is None]
                raise ClusterDownError(f"no primary serves the slot of {missing[0]!r}")
            new = {t for t in targets if t not in self._shard_links}
            self._check_limit(len(new))
        else:
            self._check_limit(0 if self._classic is not None else 1)
        # Channels already placed are subscribed again, as redis-py does (a new confirmation).
        again: dict[tuple[_Link, int], list[bytes]] = defaultdict(list)
        for n in dict.fromkeys(names):
            link = self._owner.get(n)
            if link is not None:
                again[(link, key_slot(n))].append(n)
        self._shard.update(names)
        self._place_shard(names, hint=None)
        for (link, _), group in again.items():
            link.queue(("SSUBSCRIBE", *group))
        await trio.lowlevel.checkpoint()

    async def sunsubscribe(self, *channels: Any) -> None:
        """SUNSUBSCRIBE the given shard channels, or every shard channel if none is given."""
        self._check_open()
        names = [_name(c) for c in channels] or sorted(self._shard)
        self._forget_handlers("shard", names)
        groups: dict[tuple[_Link, int], list[bytes]] = defaultdict(list)
        for n in names:
            self._shard.discard(n)
            link = self._owner.pop(n, None)
            if link is not None:
                link.shard_channels.discard(n)
                groups[(link, key_slot(n))].append(n)
        for (link, _), group in groups.items():
            if link.queue(("SUNSUBSCRIBE", *group)):
                link.unsubscribing.update(("shard", n) for n in group)
        await trio.lowlevel.checkpoint()

    async def _classic_command(
        self, family: Family, names: list[bytes], *, unsubscribe: bool = False
    ) -> None:
        self._check_open()
        wanted = self._channels if family == "channel" else self._patterns
        verb = _VERBS[(family, unsubscribe)]
        if unsubscribe:
            wanted.difference_update(names)
            link = self._classic
            if names and link is not None and link.queue((verb, *names)):
                link.unsubscribing.update((family, n) for n in names)
        else:
            if not names:
                raise ValueError(f"{verb.lower()} needs at least one name")
            if self._classic is None:
                self._check_limit(1)
                self._home = names[0]
                address = self._classic_address()  # may raise: before anything changes
                wanted.update(names)
                self._classic = self._start_link(classic=True, address=address)
            else:
                wanted.update(names)
                self._classic.queue((verb, *names))
        await trio.lowlevel.checkpoint()

    # --- consuming -----------------------------------------------------------------------------

    @overload
    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: None = None,  # noqa: ASYNC109 - redis-py's argument
    ) -> dict[str, Any]: ...

    @overload
    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        *,
        timeout: float,  # noqa: ASYNC109 - redis-py's argument
    ) -> dict[str, Any] | None: ...

    @overload
    async def get_message(
        self,
        ignore_subscribe_messages: bool,
        timeout: float,  # noqa: ASYNC109 - redis-py's argument
    ) -> dict[str, Any] | None: ...

    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's argument
    ) -> dict[str, Any] | None:
        """The next message, waiting as long as the caller's cancel scope allows.

        Put a deadline around it as everywhere in trio: under ``trio.move_on_after`` a wait
        that runs out returns nothing from the ``with`` block (the variable you assign stays
        as it was, e.g. ``None``); under ``trio.fail_after`` it raises ``trio.TooSlowError``.
        ``timeout=`` (redis-py's argument) waits at most that many seconds for one message
        and returns None if none came, or if it was ignored or given to its handler (as
        redis-py); ``timeout=0`` does not wait.  No message is lost to a cancelled
        wait.  Raises an error the server gave to a subscribe command, and
        :class:`~trio_cluster.errors.PoolClosedError` once closed.
        """
        if timeout is None:
            while True:
                item = await self._next_wanted(ignore_subscribe_messages)
                if item is not None:
                    return item
        # As redis-py with a timeout: one message is read, and one that is ignored or given
        # to its handler makes this return None.
        if timeout <= 0:
            item = self._take_nowait()
        else:
            item = None
            with trio.move_on_after(timeout):
                item = await self._next()
        if item is None or _skipped(item, ignore_subscribe_messages):
            return None
        return None if await self._handled(item) else self._decoded(item)

    async def get_sharded_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = None,  # noqa: ASYNC109 - redis-py's argument
        target_node: Any = None,
    ) -> dict[str, Any] | None:
        """redis-py's name for reading shard-channel messages on a cluster; here every kind
        of message arrives in one stream, so this is :meth:`get_message` (``target_node``
        is accepted and unused)."""
        if timeout is None:
            return await self._next_wanted(ignore_subscribe_messages)
        return await self.get_message(ignore_subscribe_messages, timeout=timeout)

    async def _next_wanted(self, ignore_subscribe_messages: bool) -> dict[str, Any] | None:
        """The next message the caller wants; None if it went to its handler."""
        while True:
            item = await self._next()
            if not _skipped(item, ignore_subscribe_messages):
                return None if await self._handled(item) else self._decoded(item)

    async def _handled(self, item: dict[str, Any]) -> bool:
        """Give a published message to its handler, if its channel or pattern has one."""
        if not self._handlers:
            return False
        kind = item["type"]
        if kind == "pmessage":
            handler = self._handlers.get(("pattern", item["pattern"]))
        elif kind == "message":
            handler = self._handlers.get(("channel", item["channel"]))
        elif kind == "smessage":
            handler = self._handlers.get(("shard", item["channel"]))
        else:
            return False
        if handler is None:
            return False
        result = handler(self._decoded(item))
        if inspect.isawaitable(result):
            await result
        return True

    async def run(
        self,
        *,
        exception_handler: Callable[[BaseException, PubSub], Any] | None = None,
        poll_timeout: float = 1.0,
    ) -> None:
        """Give every message to its handler until the PubSub is closed, as redis-py's
        ``run()`` (run it in a nursery; cancel its scope to stop it).  Every channel and
        pattern must have a handler.  ``exception_handler(error, pubsub)`` (plain or async)
        receives errors instead of ``run`` raising them.  ``poll_timeout`` is accepted for
        redis-py compatibility: waits here last until a message comes."""
        unhandled = [
            (family, name)
            for family, names in (
                ("channel", self._channels),
                ("pattern", self._patterns),
                ("shard", self._shard),
            )
            for name in names
            if (family, name) not in self._handlers
        ]
        if unhandled:
            family, name = unhandled[0]
            raise rex.PubSubError(f"{family.capitalize()}: {name!r} has no handler registered")
        while True:
            try:
                await self.get_message(ignore_subscribe_messages=True)
            except PoolClosedError:
                if self._closed:
                    return
                raise
            except Exception as error:
                if exception_handler is None:
                    raise
                result = exception_handler(error, self)
                if inspect.isawaitable(result):
                    await result

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Every message, as redis-py's ``listen()`` (the same as ``async for m in p``);
        ends when the PubSub is closed."""
        async for item in self:
            yield item

    async def ping(self, message: Any = None) -> None:
        """PING on the classic connection (opened if needed); the answer arrives in the
        stream as ``{"type": "pong", "pattern": None, "channel": None, "data": ...}``, as
        with redis-py."""
        self._check_open()
        command = _UserPing(("PING",) if message is None else ("PING", _name(message)))
        if self._classic is None:
            self._check_limit(1)
            self._classic = self._start_link(classic=True, address=self._classic_address())
            self._pending_pings.append(command)
        elif not self._classic.queue(command):
            self._pending_pings.append(command)  # connecting: its replay sends it
        await trio.lowlevel.checkpoint()

    def get_message_nowait(self) -> dict[str, Any] | None:
        """The next buffered message, or None if none is buffered right now."""
        item = self._take_nowait()
        return None if item is None else self._decoded(item)

    def _decoded(self, item: dict[str, Any]) -> dict[str, Any]:
        """``item`` as the consumer sees it: decoded with the client's ``decode_responses``.
        Only here, at the way out: inside (and for handler look-ups) names are bytes."""
        if self._decoding is None:
            return item
        decoded: dict[str, Any] = decode_reply(item, *self._decoding)
        return decoded

    def _take_nowait(self) -> dict[str, Any] | None:
        receive = self._receiver()
        try:
            item = receive.receive_nowait()
        except trio.WouldBlock:
            return None
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise PoolClosedError("this PubSub is closed") from None
        if isinstance(item, _Failure):
            raise item.error
        return item

    async def _next(self) -> dict[str, Any]:
        receive = self._receiver()
        try:
            item = await receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise PoolClosedError("this PubSub is closed") from None
        if isinstance(item, _Failure):
            raise item.error
        return item

    def _receiver(self) -> trio.MemoryReceiveChannel[dict[str, Any] | _Failure]:
        if self._receive is None:
            raise RuntimeError("use the PubSub inside `async with client.pubsub() as p:`")
        return self._receive

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            while True:
                item = await self._next()
                if not await self._handled(item):
                    return self._decoded(item)
        except PoolClosedError:
            raise StopAsyncIteration from None

    # --- observability -------------------------------------------------------------------------

    @property
    def channels(self) -> frozenset[bytes]:
        """Channels subscribed (asked for; confirmations arrive in the stream)."""
        return frozenset(self._channels)

    @property
    def patterns(self) -> frozenset[bytes]:
        """Patterns subscribed."""
        return frozenset(self._patterns)

    @property
    def shard_channels(self) -> frozenset[bytes]:
        """Shard channels subscribed."""
        return frozenset(self._shard)

    @property
    def subscribed(self) -> bool:
        """Whether anything is subscribed (as redis-py's ``PubSub.subscribed``)."""
        return bool(self._channels or self._patterns or self._shard)

    def connection_addresses(self) -> list[str]:
        """``host:port`` of every connection this PubSub has open or is opening."""
        return sorted(link.name for link in self._links)

    def stats(self) -> PubSubStats:
        """This PubSub's counters; ``open_connections`` counts its own connections."""
        return _stats(self._registry.max_connections, len(self._links), self._counters)

    @property
    def registry(self) -> PubSubRegistry:
        """The client-wide bound and counters this PubSub reports to."""
        return self._registry

    def _count(self, name: str, amount: int = 1) -> None:
        setattr(self._counters, name, getattr(self._counters, name) + amount)
        shared = self._registry.counters
        setattr(shared, name, getattr(shared, name) + amount)

    # --- placing subscriptions on links ----------------------------------------------------------

    def _check_limit(self, extra: int) -> None:
        try:
            self._registry.check(extra)
        except PubSubLimitError:
            self._counters.limit_rejections += 1
            raise

    def _start_link(self, *, classic: bool, address: Address | None) -> _Link:
        """Take a slot of the bound and start a link task (synchronous: no await)."""
        self._check_open()
        self._registry.acquire()
        link = _Link(classic, address)
        self._links.add(link)
        if not classic and address is not None:
            self._shard_links[address] = link
        self._spawn(self._run_link, link)
        return link

    def _classic_address(self) -> Address | None:
        """Where the classic link goes.  In a cluster, as redis-py's ``ClusterPubSub``: the
        primary of the first channel's (or pattern's) slot, where ``publish()`` on that
        channel also goes, so that PUBLISH counts this subscriber; any other primary if that
        one just failed (the cluster forwards every PUBLISH to every node anyway)."""
        cluster = self._cluster
        if cluster is None:
            config = self._client.dialer.config
            return (config.host, config.port)
        first = self._home
        if first is not None:
            owner = cluster.primary(key_slot(first))
            if owner is not None and owner.address != self._avoid:
                return owner.address
        primaries = list(cluster.topology.primaries)
        preferred = [a for a in primaries if a != self._avoid] or primaries
        if not preferred:
            raise ClusterDownError("the cluster client knows no primary")
        return random.choice(preferred)

    def _shard_address(self, name: bytes) -> Address | None:
        cluster = self._cluster
        if cluster is None:
            return None
        node = cluster.primary(key_slot(name))
        return node.address if node is not None else None

    def _place_shard(self, names: Iterable[bytes], *, hint: Address | None) -> list[bytes]:
        """Put shard channels that have no link on one (creating links as needed) and queue
        their SSUBSCRIBE; returns the channels whose slot has no known owner.  ``hint`` (the
        node a MOVED named) overrides the client's slot map."""
        if self._closed:
            return []  # a link task finishing a frame while the PubSub closes
        groups: dict[tuple[_Link, int], list[bytes]] = defaultdict(list)
        homeless = []
        for n in names:
            if n not in self._shard or n in self._owner:
                continue
            if self._cluster is None:
                # One node: the classic link carries the shard channels too.
                if self._classic is None:
                    self._classic = self._start_link(classic=True, address=self._classic_address())
                link = self._classic
            else:
                address = hint or self._shard_address(n)
                if address is None:
                    homeless.append(n)
                    continue
                link = self._shard_links.get(address) or self._start_link(
                    classic=False, address=address
                )
            link.shard_channels.add(n)
            self._owner[n] = link
            groups[(link, key_slot(n))].append(n)
        # SSUBSCRIBE's channels must share a slot, hence one command per slot.
        for (link, _), group in groups.items():
            link.queue(("SSUBSCRIBE", *group))
        return homeless

    def _want_placement(self, *, refresh: bool) -> None:
        self._refresh_wanted = self._refresh_wanted or refresh
        self._place_wanted.set()

    async def _refresh(self) -> None:
        cluster = self._cluster
        if cluster is not None:
            with trio.move_on_after(_REFRESH_BOUND):
                await cluster.refresh()

    async def _placer(self) -> None:
        """Give a link back to every subscription that lost its own (after a failure, a
        MOVED to an unknown node, a slot move), with backoff while attempts keep failing."""
        while not self._closed:
            await self._place_wanted.wait()
            self._place_wanted = trio.Event()
            if self._failures:
                await trio.sleep(_backoff(self._failures - 1))
            if self._refresh_wanted:
                self._refresh_wanted = False
                await self._refresh()
            try:
                if (self._channels or self._patterns) and self._classic is None:
                    self._classic = self._start_link(classic=True, address=self._classic_address())
                homeless = self._place_shard(
                    [n for n in sorted(self._shard) if n not in self._owner], hint=None
                )
            except (PubSubLimitError, ClusterDownError) as error:
                if isinstance(error, PubSubLimitError):
                    self._counters.limit_rejections += 1
                await self._deliver(_Failure(error))
                self._failures += 1
                self._want_placement(refresh=True)
                continue
            if homeless:
                self._failures += 1
                self._want_placement(refresh=True)

    def _unassign(self, link: _Link, names: Iterable[bytes]) -> list[bytes]:
        taken = []
        for n in names:
            if self._owner.get(n) is link:
                del self._owner[n]
                link.shard_channels.discard(n)
                taken.append(n)
        return taken

    def _link_ended(self, link: _Link) -> None:
        """Forget a link (synchronous) and let the placer re-place what it carried."""
        if link not in self._links:
            return
        self._links.discard(link)
        self._registry.release()
        if self._classic is link:
            self._classic = None
        if link.address is not None and self._shard_links.get(link.address) is link:
            del self._shard_links[link.address]
        self._unassign(link, list(link.shard_channels))
        if not self._closed and self.subscribed:
            self._want_placement(refresh=self._cluster is not None)

    # --- one link --------------------------------------------------------------------------------

    async def _dial(self, link: _Link) -> Connection:
        # The client's dialer: the newest credentials, the client's TLS and timeouts.
        # Maintenance notifications are about the command pools' connections; none here.
        dialer = self._client.dialer
        if self._cluster is None:
            return await dialer.open(maint_notifications="disabled")
        assert link.address is not None
        return await dialer.open(link.address, readonly=False, maint_notifications="disabled")

    async def _run_link(self, link: _Link) -> None:
        try:
            try:
                conn = await self._dial(link)
            except _LINK_ERRORS as error:
                self._count("connect_errors")
                self._failures += 1
                if link.classic:
                    self._avoid = link.address
                logger.info("pub/sub connection to %s failed: %s", link.name, error)
                return
            self._count("connects")
            try:
                await self._serve(link, conn)
            except _LINK_ERRORS as error:
                self._count("disconnects")
                if link.classic:
                    self._avoid = link.address
                logger.info("pub/sub connection to %s lost: %s", link.name, error)
                await self._report_gap(link, f"connection lost: {error}")
            finally:
                link.conn = None
                with trio.CancelScope(shield=True):
                    await conn.aclose()
        finally:
            self._link_ended(link)

    def _replay(self, link: _Link) -> list[tuple[EncodableArg, ...]]:
        commands: list[tuple[EncodableArg, ...]] = []
        if link.classic and self._pending_pings:
            commands += self._pending_pings
            self._pending_pings = []
        if link.classic:
            if self._channels:
                commands.append(("SUBSCRIBE", *sorted(self._channels)))
            if self._patterns:
                commands.append(("PSUBSCRIBE", *sorted(self._patterns)))
        by_slot: dict[int, list[bytes]] = defaultdict(list)
        for n in sorted(link.shard_channels):
            by_slot[key_slot(n)].append(n)
        commands += [("SSUBSCRIBE", *group) for group in by_slot.values()]
        return commands

    async def _serve(self, link: _Link, conn: Connection) -> None:
        """Own one connection: write what is queued, read every frame, until it fails."""
        config = conn.config
        read_timeout = config.read_timeout if config.read_timeout is not None else float("inf")
        write_timeout = config.write_timeout if config.write_timeout is not None else float("inf")
        health = self.health_check_interval or float("inf")
        # From here on, commands are queued instead of replayed: set both with no await between.
        link.conn = conn
        link.outbox = self._replay(link)
        self._failures = 0
        link.activity = trio.current_time()
        while True:
            if link.outbox:
                batch, link.outbox = link.outbox, []
                wire: list[tuple[EncodableArg, ...]] = []
                for command in batch:
                    # Each command is followed by a PING: its PONG says the command's answer
                    # (pushes, or one error reply) is complete, so errors are attributed.
                    if command is not _PING:
                        wire.append(command)
                    wire.append(_PING)
                    link.sent.append(command)
                with trio.move_on_after(write_timeout + read_timeout) as scope:
                    frame = await conn.read_push(send=wire)
                if scope.cancelled_caught:
                    raise ReadTimeoutError(f"{link.name} did not answer pub/sub commands in time")
            else:
                # Idle: wait for a frame, or to be woken for new commands, or for the time to
                # ping (nothing outstanding) or to give up (an answer overdue).
                limit = read_timeout if link.sent else health
                link.woken = False
                with trio.CancelScope(deadline=link.activity + limit) as scope:
                    link.wake_scope = scope
                    try:
                        frame = await conn.read_push()
                    finally:
                        link.wake_scope = None
                if scope.cancelled_caught:
                    if link.woken:
                        continue
                    if link.sent:
                        raise ReadTimeoutError(f"no answer from {link.name} within {limit} s")
                    link.outbox.append(_PING)
                    continue
            await self._handle(link, frame)
            link.activity = trio.current_time()

    async def _handle(self, link: _Link, frame: Any) -> None:
        kind = _kind(frame)
        waiting = link.sent[0] if link.sent else None
        if (
            type(waiting) is _UserPing
            and not waiting.answered
            and not isinstance(frame, Exception)
            and (kind == "pong" or (kind is None and not isinstance(frame, list)))
        ):
            # The answer to ping(): the PING after it closes the command, as for others.
            waiting.answered = True
            data = frame[1] if kind == "pong" else frame
            await self._deliver({"type": "pong", "pattern": None, "channel": None, "data": data})
            return
        if kind is None:
            if frame == b"PONG":
                if link.sent:
                    link.sent.popleft()
            elif isinstance(frame, Exception):
                await self._command_failed(link, link.sent[0] if link.sent else None, frame)
            # Anything else (a maintenance notification...) is not for the consumer.
            return
        if kind == "pong":  # RESP2's PING answer in subscribed mode
            if link.sent:
                link.sent.popleft()
            return
        if kind in _MESSAGE_KINDS:
            self._count("messages")
            await self._deliver(_message(kind, frame))
            return
        name = frame[1]
        if kind in _SUBSCRIBE_KINDS:
            link.active.add((_SUBSCRIBE_KINDS[kind], name))
        else:
            family = _UNSUBSCRIBE_KINDS[kind]
            link.active.discard((family, name))
            key = (family, name)
            if link.unsubscribing[key] > 0:
                link.unsubscribing[key] -= 1
                if not link.unsubscribing[key]:
                    del link.unsubscribing[key]
            elif family == "shard" and not link.classic and name in link.shard_channels:
                # Not ours: the server dropped it because the slot left this node.
                await self._slot_moved(link, name)
                return
        if not self.ignore_subscribe_messages:
            await self._deliver(_message(kind, frame))

    async def _slot_moved(self, link: _Link, name: bytes) -> None:
        self._count("slot_moves")
        self._count("gaps")
        await self._deliver(_gap(link, f"slot of {name!r} left {link.name}", [], [], [name]))
        self._unassign(link, [name])
        self._want_placement(refresh=True)

    async def _command_failed(
        self, link: _Link, command: tuple[EncodableArg, ...] | None, error: Exception
    ) -> None:
        verb = str(command[0]).upper() if command else ""
        names = [n for n in command[1:] if isinstance(n, bytes)] if command else []
        if verb == "SSUBSCRIBE" and isinstance(error, MovedError):
            self._count("moved")
            taken = self._unassign(link, names)
            cluster = self._cluster
            if cluster is not None:
                cluster.request_refresh()
                target = cluster.redirect_address(error, link.address)
                try:
                    self._place_shard(taken, hint=target)
                except PubSubLimitError as limit:
                    self._counters.limit_rejections += 1
                    await self._deliver(_Failure(limit))
                    self._want_placement(refresh=True)
            return
        if verb == "SSUBSCRIBE" and isinstance(error, _TRANSIENT):
            # The slot's owner cannot serve it right now (a failover): try again later.
            self._unassign(link, names)
            self._failures += 1
            self._want_placement(refresh=True)
            return
        if isinstance(error, _TRANSIENT):
            raise rex.ConnectionError(f"{link.name} cannot serve pub/sub now: {error}")
        # A refusal (ACL, bad argument...): forget what was refused so it is not replayed,
        # and tell the consumer, as redis-py raises it from get_message.
        if verb in ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"):
            wanted = {"SUBSCRIBE": self._channels, "PSUBSCRIBE": self._patterns}.get(
                verb, self._shard
            )
            wanted.difference_update(names)
            if verb == "SSUBSCRIBE":
                self._unassign(link, names)
        await self._deliver(_Failure(error))

    async def _report_gap(self, link: _Link, reason: str) -> None:
        active = link.active
        if not active:
            return  # nothing had been confirmed on this connection: nothing was missed
        self._count("gaps")
        await self._deliver(
            _gap(
                link,
                reason,
                sorted(n for f, n in active if f == "channel"),
                sorted(n for f, n in active if f == "pattern"),
                sorted(n for f, n in active if f == "shard"),
            )
        )

    async def _deliver(self, item: dict[str, Any] | _Failure) -> None:
        # Blocks while the buffer is full: that is the backpressure (see the class docstring).
        assert self._send is not None
        await self._send.send(item)


_SUBSCRIPTION_TYPES: Final = frozenset({*_SUBSCRIBE_KINDS, *_UNSUBSCRIBE_KINDS})


def _gap(
    link: _Link,
    reason: str,
    channels: list[bytes],
    patterns: list[bytes],
    shard_channels: list[bytes],
) -> dict[str, Any]:
    """The gap event: redis-py's keys (so generic consumers do not break) plus what was hit."""
    return {
        "type": "gap",
        "pattern": None,
        "channel": None,
        "data": reason,
        "node": link.name,
        "channels": channels,
        "patterns": patterns,
        "shard_channels": shard_channels,
    }
