"""The state and lifetime of a :class:`~trio_cluster.clients.pubsub.PubSub`, and what its
parts share: the links (one dedicated connection each), the client-wide registry and
counters, message shapes."""

from __future__ import annotations

import collections
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal, Protocol, Self

import attrs
import trio
from redis import exceptions as rex

from ..conn.connection import Connection
from ..conn.dialer import Dialer
from ..errors import (
    ProtocolError,
)
from ..lifetime import NurseryOwner
from ..routing.slotmap import SlotMap
from ..routing.topology import Address
from ..wire.protocol import EncodableArg

__all__ = ["PubSubHost", "PubSubLimitError", "PubSubRegistry", "PubSubStats"]


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
_SUBSCRIPTION_TYPES: Final = frozenset({*_SUBSCRIBE_KINDS, *_UNSUBSCRIBE_KINDS})
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


class _PubSubState(NurseryOwner):
    """What every part of a PubSub works on: the subscriptions asked for, the links, the
    message stream, and the tasks (each under its own cancel scope) in the owned nursery."""

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
