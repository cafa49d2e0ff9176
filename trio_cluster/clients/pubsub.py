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

import inspect
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Self, overload

import trio
from redis import exceptions as rex

from ..errors import (
    ClusterDownError,
    PoolClosedError,
)
from ..routing.rules import key_slot
from ..wire.encoding import decode_reply
from .pubsub_base import (
    _VERBS,
    Family,
    PubSubHost,
    PubSubLimitError,
    PubSubRegistry,
    PubSubStats,
    _Failure,
    _Link,
    _name,
    _skipped,
    _UserPing,
)
from .pubsub_links import _Links

__all__ = ["PubSub", "PubSubHost", "PubSubLimitError", "PubSubRegistry", "PubSubStats"]


class PubSub(_Links):
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
        self._place_shard(names)
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
