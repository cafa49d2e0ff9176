"""Pub/sub on dedicated connections, with redis-py's ``PubSub`` API: classic, pattern and
sharded subscriptions that survive dropped connections, failovers and slot moves, with the
gaps they cause made visible.

:class:`PubSub` is a thin facade over parts that each do one job:

* ``pubsub_subscriptions``: what the consumer asked for, as data (names and handlers);
* ``pubsub_placement``: which connection each subscription goes to, as pure functions of the
  cluster's topology;
* ``pubsub_link``: one link session per dedicated connection (one task owns it: it writes the
  subscribe commands, reads every frame, pings, and ends when the connection fails);
* ``pubsub_links``: the links of one PubSub and the placer that puts whatever lost its link
  back on a new one, after a topology refresh in a cluster;
* ``pubsub_messages``: redis-py's message shapes and the bounded stream that carries them to
  the consumer (``get_message``, ``listen``, ``async for``);
* ``pubsub_registry``: the client-wide bound on pub/sub connections and the counters;
* ``pubsub_host``: what a PubSub uses of its client, named exactly.

Redis pub/sub is at-most-once: what is published while a subscription is down is lost.  When
a subscription the server had confirmed is lost, the stream carries a ``{"type": "gap", ...}``
message before anything the replacement subscription delivers (see ``docs/pubsub.md``).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import trio
from redis import exceptions as rex

from ..errors import PoolClosedError
from ..lifetime import NurseryOwner
from ..wire.encoding import decode_reply
from .pubsub_host import PubSubHost, ShardMap
from .pubsub_links import LinkSet
from .pubsub_messages import Family, Handler, MessageStream, name_bytes, skipped
from .pubsub_registry import PubSubLimitError, PubSubRegistry, PubSubStats, Tally
from .pubsub_subscriptions import Subscriptions, parse_names

__all__ = [
    "PubSub",
    "PubSubHost",
    "PubSubLimitError",
    "PubSubRegistry",
    "PubSubStats",
    "ShardMap",
]


class PubSub(NurseryOwner):
    """Subscriptions on dedicated connections, consumed with :meth:`get_message`,
    :meth:`listen` or ``async for``.  Get one from ``client.pubsub()`` and use it as
    ``async with client.pubsub() as p:``; leaving the block closes every connection it
    opened (which ends their subscriptions on the server) and stops its tasks.

    With a :class:`~trio_cluster.ClusterClient`, classic channels and patterns go through
    one connection to one primary (the cluster forwards every PUBLISH to every node); shard
    channels (SSUBSCRIBE) go to their slot's primary, one connection per primary.

    ``buffer``: messages held for the consumer.  When it is full the link tasks wait, so the
    server buffers instead (up to its ``client-output-buffer-limit pubsub``, beyond which it
    drops the connection: that shows up as a gap).  ``ignore_subscribe_messages`` drops the
    (un)subscribe confirmations.  ``health_check_interval``: after this many seconds without
    a frame a link sends PING, and a link whose commands go unanswered for the read timeout
    is reconnected (None: never ping).  ``registry``: the bound and counters to report to
    (default: the client's).
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
        if health_check_interval is not None and not (
            isinstance(health_check_interval, int | float) and health_check_interval > 0
        ):
            raise ValueError(
                f"health_check_interval must be a number of seconds > 0 or None; "
                f"got {health_check_interval!r}"
            )
        encoder = client.get_encoder()
        #: (encoding, errors) to decode messages and names with (decode_responses), or None.
        self._decoding: tuple[str, str] | None = (
            (encoder.encoding, encoder.encoding_errors) if encoder.decode_responses else None
        )
        self._subscriptions = Subscriptions()
        self._stream = MessageStream(buffer)
        self._tally = Tally(registry if registry is not None else client.pubsub_registry)
        self._links = LinkSet(
            client.dialer,
            client.pubsub_shards,
            self._subscriptions,
            self._stream,
            self._tally,
            ignore_subscribe_messages=ignore_subscribe_messages,
            health_check_interval=health_check_interval,
        )

    def __repr__(self) -> str:
        return (
            f"<PubSub channels={len(self._subscriptions.names('channel'))}"
            f" patterns={len(self._subscriptions.names('pattern'))}"
            f" shard_channels={len(self._subscriptions.names('shard'))}"
            f" connections={len(self._links.addresses())}>"
        )

    # --- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None or self._links.closed:
            raise RuntimeError(f"{self!r} cannot be entered twice")
        return await super().__aenter__()

    async def _start(self, nursery: trio.Nursery) -> None:
        self._links.start(nursery)

    async def _stop(self) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every connection and stop every task; idempotent (leaving ``async with``
        does it).  Usable inside the block too: the PubSub then stays closed.

        Closing a connection ends its subscriptions on the server; no UNSUBSCRIBE is sent
        first, as that would be a round trip that a cancelled caller could not wait for.
        """
        await self._links.aclose()
        self._stream.close()  # consumers in other tasks see the end of the stream

    # --- subscribing ---------------------------------------------------------------------------

    async def subscribe(self, *channels: Any, **handlers: Handler) -> None:
        """SUBSCRIBE: confirmations and messages arrive in the stream; returns at once.
        ``name=handler`` keywords subscribe too, as in redis-py: that channel's messages go to
        ``handler(message)`` (a plain or an async function, called by the task reading the
        stream) instead of the stream."""
        self._links.subscribe("channel", _some("subscribe", parse_names(channels, handlers)))
        await trio.lowlevel.checkpoint()

    async def psubscribe(self, *patterns: Any, **handlers: Handler) -> None:
        """PSUBSCRIBE (glob-style patterns); ``pattern=handler`` as for :meth:`subscribe`."""
        self._links.subscribe("pattern", _some("psubscribe", parse_names(patterns, handlers)))
        await trio.lowlevel.checkpoint()

    async def ssubscribe(
        self, *channels: Any, target_node: Any = None, **handlers: Handler
    ) -> None:
        """SSUBSCRIBE: each shard channel goes to the primary of its slot;
        ``channel=handler`` as for :meth:`subscribe`.  ``target_node`` is accepted for
        redis-py compatibility and unused: the slot decides."""
        await self._links.ssubscribe(_some("ssubscribe", parse_names(channels, handlers)))
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, *channels: Any) -> None:
        """UNSUBSCRIBE the given channels, or every channel if none is given."""
        self._links.unsubscribe("channel", self._names("channel", channels))
        await trio.lowlevel.checkpoint()

    async def punsubscribe(self, *patterns: Any) -> None:
        """PUNSUBSCRIBE the given patterns, or every pattern if none is given."""
        self._links.unsubscribe("pattern", self._names("pattern", patterns))
        await trio.lowlevel.checkpoint()

    async def sunsubscribe(self, *channels: Any, target_node: Any = None) -> None:
        """SUNSUBSCRIBE the given shard channels, or every shard channel if none is given
        (``target_node`` is accepted and unused, as for :meth:`ssubscribe`)."""
        self._links.sunsubscribe(self._names("shard", channels))
        await trio.lowlevel.checkpoint()

    async def ping(self, message: Any = None) -> None:
        """PING on the classic connection (opened if needed); the answer arrives in the
        stream as ``{"type": "pong", "pattern": None, "channel": None, "data": ...}``, as
        with redis-py."""
        self._links.ping(None if message is None else name_bytes(message))
        await trio.lowlevel.checkpoint()

    def _names(self, family: Family, given: tuple[Any, ...]) -> list[bytes]:
        """The names to unsubscribe: those given, or every name of ``family``."""
        return list(parse_names(given, {})) or self._subscriptions.names(family)

    # --- what is subscribed --------------------------------------------------------------------

    @property
    def channels(self) -> dict[Any, Handler | None]:
        """Channels subscribed -> their handler (None: to the stream), as redis-py's: names
        are str under ``decode_responses=True``, else bytes.  A channel is listed from the
        ``subscribe`` call (its confirmation arrives in the stream) until ``unsubscribe``."""
        return self._subscriptions.view("channel", self._decode_name)

    @property
    def patterns(self) -> dict[Any, Handler | None]:
        """Patterns subscribed -> their handler, as :attr:`channels`."""
        return self._subscriptions.view("pattern", self._decode_name)

    @property
    def shard_channels(self) -> dict[Any, Handler | None]:
        """Shard channels subscribed -> their handler, as :attr:`channels`."""
        return self._subscriptions.view("shard", self._decode_name)

    @property
    def subscribed(self) -> bool:
        """Whether anything is subscribed (as redis-py's ``PubSub.subscribed``)."""
        return self._subscriptions.subscribed

    @property
    def ignore_subscribe_messages(self) -> bool:
        """Whether (un)subscribe confirmations are dropped before they reach the stream."""
        return self._links.ignore_subscribe_messages

    @ignore_subscribe_messages.setter
    def ignore_subscribe_messages(self, value: bool) -> None:
        self._links.ignore_subscribe_messages = value

    def connection_addresses(self) -> list[str]:
        """``host:port`` of every connection this PubSub has open or is opening."""
        return self._links.addresses()

    def stats(self) -> PubSubStats:
        """This PubSub's counters; ``open_connections`` counts its own connections."""
        return self._links.stats()

    @property
    def registry(self) -> PubSubRegistry:
        """The client-wide bound and counters this PubSub reports to."""
        return self._tally.registry

    # --- consuming -----------------------------------------------------------------------------

    async def get_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = 0.0,  # noqa: ASYNC109 - redis-py's argument
    ) -> dict[str, Any] | None:
        """The next message, or None, as redis-py's: with no ``timeout`` (or ``timeout=0``)
        it returns at once, None when no message is buffered; ``timeout=s`` waits at most
        ``s`` seconds; ``timeout=None`` waits as long as the caller's cancel scope allows.

        One message is taken per call: a confirmation dropped by
        ``ignore_subscribe_messages``, or a message given to its handler, makes it return
        None (as redis-py).  No message is lost to a wait that ran out or was cancelled.
        Raises an error the server gave to a subscribe command, and
        :class:`~trio_cluster.errors.PoolClosedError` once closed.
        """
        stream = self._entered_stream()
        item: dict[str, Any] | None = None
        if timeout is None:
            item = await stream.take()
        elif timeout <= 0:
            # A checkpoint even when nothing waits: a polling loop must let the link tasks
            # run, or nothing would ever arrive.
            await trio.lowlevel.checkpoint()
            item = stream.take_nowait()
        else:
            with trio.move_on_after(timeout):
                item = await stream.take()
        if item is None or skipped(item, ignore_subscribe_messages):
            return None
        return None if await self._handled(item) else self._decoded(item)

    async def get_sharded_message(
        self,
        ignore_subscribe_messages: bool = False,
        timeout: float | None = 0.0,  # noqa: ASYNC109 - redis-py's argument
        target_node: Any = None,
    ) -> dict[str, Any] | None:
        """redis-py's name for reading shard-channel messages on a cluster; here every kind
        of message arrives in one stream, so this is :meth:`get_message` (``target_node``
        is accepted and unused)."""
        return await self.get_message(ignore_subscribe_messages, timeout=timeout)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Every message while anything is subscribed, as redis-py's ``listen()``: it ends
        once nothing is subscribed and the unsubscribe confirmations asked for have been
        given (at once if nothing is subscribed when it starts), or when the PubSub is
        closed.  ``async for m in p`` instead goes on until the PubSub is closed."""
        stream = self._entered_stream()
        while self.subscribed or self._links.owed() or stream.buffered():
            with self._links.interruptible() as wait:
                try:
                    item = await stream.take()
                except PoolClosedError:
                    return
            if wait.cancelled_caught:
                continue  # a link ended: what it owed will not come; look again
            if not await self._handled(item):
                yield self._decoded(item)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> dict[str, Any]:
        stream = self._entered_stream()
        try:
            while True:
                item = await stream.take()
                if not await self._handled(item):
                    return self._decoded(item)
        except PoolClosedError:
            raise StopAsyncIteration from None

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
        unhandled = self._subscriptions.unhandled()
        if unhandled:
            family, name = unhandled[0]
            raise rex.PubSubError(f"{family.capitalize()}: {name!r} has no handler registered")
        while True:
            try:
                await self.get_message(ignore_subscribe_messages=True, timeout=None)
            except PoolClosedError:
                if self._links.closed:
                    return
                raise
            except Exception as error:
                if exception_handler is None:
                    raise
                result = exception_handler(error, self)
                if inspect.isawaitable(result):
                    await result

    def _entered_stream(self) -> MessageStream:
        if not self._entered:
            raise RuntimeError("use the PubSub inside `async with client.pubsub() as p:`")
        return self._stream

    async def _handled(self, item: dict[str, Any]) -> bool:
        """Give a published message to its handler, if its channel or pattern has one."""
        handler = self._subscriptions.handler_for(item)
        if handler is None:
            return False
        result = handler(self._decoded(item))
        if inspect.isawaitable(result):
            await result
        return True

    def _decoded(self, item: dict[str, Any]) -> dict[str, Any]:
        """``item`` as the consumer sees it: decoded with the client's ``decode_responses``.
        Only here, at the way out: inside (and for handler look-ups) names are bytes."""
        if self._decoding is None:
            return item
        decoded: dict[str, Any] = decode_reply(item, *self._decoding)
        return decoded

    @property
    def _decode_name(self) -> Callable[[bytes], str] | None:
        decoding = self._decoding
        if decoding is None:
            return None
        return lambda name: name.decode(*decoding)


def _some(command: str, names: dict[bytes, Handler | None]) -> dict[bytes, Handler | None]:
    if not names:
        raise ValueError(f"{command} needs at least one name")
    return names
