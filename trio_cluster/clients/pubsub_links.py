"""A PubSub's links, and which link carries each subscription.

:class:`LinkSet` keeps the classic link (channels and patterns) and one link per primary for
shard channels, places subscriptions on them with the pure functions of
``pubsub_placement``, and owns their tasks.  A link that ends is simply forgotten; a *placer*
task then puts whatever lost its link back on a (new) link, after a topology refresh in a
cluster, with backoff while attempts keep failing, and every new link replays its part of the
subscriptions.  So reconnecting, following a failover and following a slot move are one code
path.  The link's frame-level work is in ``pubsub_link``; the subscriptions are data in
``pubsub_subscriptions``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

import trio
from redis import exceptions as rex

from ..conn.connection import Connection
from ..conn.dialer import Dialer
from ..errors import SERVER_DID_NOT_RUN, ClusterDownError, MovedError
from ..lifetime import start_soon
from ..routing.topology import Address, Topology
from .pubsub_host import ShardMap
from .pubsub_link import Link, UserPing
from .pubsub_messages import (
    CONFIRMATION_KINDS,
    Command,
    Failure,
    Family,
    Handler,
    MessageStream,
    verb,
)
from .pubsub_placement import CLASSIC, LinkKey, by_slot, classic_address, new_links, shard_link
from .pubsub_registry import PubSubLimitError, PubSubStats, Tally
from .pubsub_subscriptions import Subscriptions

__all__ = ["LinkSet", "TaskScopes"]

_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0
#: Longest wait for a topology refresh before placing with what the client knows.
_REFRESH_BOUND = 5.0
#: The subscribe commands, with the family whose names a refusal takes back.
_SUBSCRIBED_BY: Final[dict[str, Family]] = {
    "SUBSCRIBE": "channel",
    "PSUBSCRIBE": "pattern",
    "SSUBSCRIBE": "shard",
}


def backoff(failures: int) -> float:
    """Seconds to wait before placing again after ``failures`` failed attempts in a row:
    50 ms doubling to 1 s, with full jitter so that many subscribers do not reconnect to a
    recovering node in lockstep."""
    return random.uniform(0.5, 1.0) * min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** min(failures, 16))


class TaskScopes:
    """Tasks started in a nursery owned by someone else, each under a cancel scope of its
    own, so that they can all be stopped and awaited without leaving the nursery (which must
    be exited in the order it was entered)."""

    def __init__(self) -> None:
        self._scopes: set[trio.CancelScope] = set()
        self._running = 0
        self._idle = trio.Event()

    def spawn(self, nursery: trio.Nursery, function: Callable[[], Awaitable[None]]) -> None:
        """Start ``function()`` in ``nursery`` under a cancel scope of its own."""
        scope = trio.CancelScope()
        self._scopes.add(scope)
        if not self._running:
            self._idle = trio.Event()
        self._running += 1

        async def run() -> None:
            try:
                with scope:
                    await function()
            finally:
                self._scopes.discard(scope)
                self._running -= 1
                if not self._running:
                    self._idle.set()

        start_soon(nursery, run, name=getattr(function, "__qualname__", None))

    async def stop(self) -> None:
        """Cancel every task and wait until all have ended (shielded: each only has a
        quick, shielded connection close left to run)."""
        for scope in list(self._scopes):
            scope.cancel()
        with trio.CancelScope(shield=True):
            while self._running:
                await self._idle.wait()


class LinkSet:
    """The links of one PubSub, what each carries, and the placer that mends them."""

    def __init__(
        self,
        dialer: Dialer,
        shards: ShardMap | None,
        subscriptions: Subscriptions,
        stream: MessageStream,
        tally: Tally,
        *,
        ignore_subscribe_messages: bool,
        health_check_interval: float | None,
    ) -> None:
        self._dialer = dialer
        self._shards = shards
        self._subs = subscriptions
        self._stream = stream
        self._tally = tally
        self.ignore_subscribe_messages = ignore_subscribe_messages
        self._health_check_interval = health_check_interval
        self._classic: Link | None = None
        self._shard_links: dict[Address, Link] = {}
        #: The link that carries each placed shard channel.
        self._carrier: dict[bytes, Link] = {}
        self._links: set[Link] = set()
        #: ping() calls made before the classic link was serving.
        self._pending_pings: list[Command] = []
        #: The name whose slot's primary carries the classic link (see classic_address).
        self._home: bytes | None = None
        #: The classic link's node, right after it failed there.
        self._avoid: Address | None = None
        self._failures = 0
        self._place_wanted = trio.Event()
        self._refresh_wanted = False
        self._tasks = TaskScopes()
        self._nursery: trio.Nursery | None = None
        #: Waits to interrupt when a link ends (see :meth:`interruptible`).
        self._waits: set[trio.CancelScope] = set()
        self.closed = False

    # --- lifetime ------------------------------------------------------------------------------

    def start(self, nursery: trio.Nursery) -> None:
        """Run the placer (and, later, every link) in ``nursery``."""
        self._nursery = nursery
        self._tasks.spawn(nursery, self._placer)

    async def aclose(self) -> None:
        """Stop every task and close every connection (idempotent)."""
        self.closed = True
        await self._tasks.stop()

    def check_open(self) -> trio.Nursery:
        """The nursery, or RuntimeError when used outside ``async with`` or after closing."""
        if self._nursery is None or self.closed:
            raise RuntimeError("use the PubSub inside `async with client.pubsub() as p:`")
        return self._nursery

    # --- what the facade asks ------------------------------------------------------------------

    def subscribe(self, family: Family, names: dict[bytes, Handler | None]) -> None:
        """(P)SUBSCRIBE ``names`` on the classic link, opened if needed (raises before
        anything changes if the bound or the cluster refuses it)."""
        self.check_open()
        if self._classic is None:
            self._tally.check(1)
            home = next(iter(names))
            address = self._classic_address(home)  # may raise: before anything changes
            self._home = home
            self._subs.add(family, names)
            self._classic = self._start_link(CLASSIC, address)  # its replay subscribes
        else:
            self._subs.add(family, names)
            self._classic.queue((verb(family), *names))

    def unsubscribe(self, family: Family, names: list[bytes]) -> None:
        """(P)UNSUBSCRIBE ``names``: forgotten now, confirmed in the stream if the classic
        link is serving (else they are simply not replayed)."""
        self.check_open()
        self._subs.remove(family, names)
        if names and self._classic is not None:
            self._classic.unsubscribe(family, names, (verb(family, unsubscribe=True), *names))

    async def ssubscribe(self, names: dict[bytes, Handler | None]) -> None:
        """SSUBSCRIBE ``names``, each on its slot's primary (raises before anything changes
        if the bound refuses the connections needed, or no node serves a slot)."""
        self.check_open()
        topology = self._topology()
        if any(shard_link(topology, n) is None for n in names):
            await self._refresh()  # the map has a hole: look again before giving up
            topology = self._topology()
        missing = [n for n in names if shard_link(topology, n) is None]
        if missing:
            raise ClusterDownError(f"no primary serves the slot of {missing[0]!r}")
        existing: set[LinkKey] = set(self._shard_links)
        if self._classic is not None:
            existing.add(CLASSIC)
        self._tally.check(len(new_links(topology, names, existing)))
        # Channels already placed are subscribed again, as redis-py does (a new confirmation).
        again = [n for n in names if n in self._carrier]
        self._subs.add("shard", names)
        self._place_shard(names)
        for link, group in self._by_link(again):
            link.queue(("SSUBSCRIBE", *group))

    def sunsubscribe(self, names: list[bytes]) -> None:
        """SUNSUBSCRIBE ``names``, on the links that carry them."""
        self.check_open()
        self._subs.remove("shard", names)
        placed = [n for n in names if n in self._carrier]
        groups = self._by_link(placed)
        self._unassign(placed)
        for link, group in groups:
            link.unsubscribe("shard", group, ("SUNSUBSCRIBE", *group))

    def ping(self, message: bytes | None) -> None:
        """PING on the classic link (opened if needed); the answer goes to the stream."""
        self.check_open()
        command = UserPing(("PING",) if message is None else ("PING", message))
        if self._classic is None:
            self._tally.check(1)
            self._classic = self._start_link(CLASSIC, self._classic_address(None))
            self._pending_pings.append(command)
        elif not self._classic.queue(command):
            self._pending_pings.append(command)  # connecting: its replay sends it

    def owed(self) -> int:
        """Unsubscribe confirmations asked for that have not come yet (on links still up:
        a link that ends owes nothing, its connection's subscriptions are gone)."""
        return sum(link.owed for link in self._links)

    @contextmanager
    def interruptible(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for a wait that must end when a link ends (``listen`` waiting
        for confirmations that link owed): check ``cancelled_caught`` afterwards."""
        with trio.CancelScope() as scope:
            self._waits.add(scope)
            try:
                yield scope
            finally:
                self._waits.discard(scope)

    def addresses(self) -> list[str]:
        """``host:port`` of every link, open or opening."""
        return sorted(link.name for link in self._links)

    def stats(self) -> PubSubStats:
        """This PubSub's counters and open connections."""
        return self._tally.stats(len(self._links))

    # --- placing -------------------------------------------------------------------------------

    def _topology(self) -> Topology | None:
        return self._shards.topology if self._shards is not None else None

    def _classic_address(self, home: bytes | None) -> Address:
        config = self._dialer.config
        return classic_address(self._topology(), (config.host, config.port), home, self._avoid)

    def _start_link(self, key: LinkKey, address: Address) -> Link:
        """Take a slot of the bound and start a link task (synchronous: no await)."""
        nursery = self.check_open()
        self._tally.acquire()
        link = Link(
            key,
            address,
            owner=self,
            tally=self._tally,
            health_check_interval=self._health_check_interval,
        )
        self._links.add(link)
        if key != CLASSIC:
            self._shard_links[address] = link
        self._tasks.spawn(nursery, link.run)
        return link

    def _place_shard(self, names: Iterable[bytes]) -> list[bytes]:
        """Put wanted shard channels that have no link on one (starting links as needed) and
        queue their SSUBSCRIBE; returns the channels whose slot has no known owner."""
        if self.closed:
            return []  # a link task finishing a frame while the PubSub closes
        topology = self._topology()
        homeless = []
        placed = []
        for name in names:
            if not self._subs.wants("shard", name) or name in self._carrier:
                continue
            key = shard_link(topology, name)
            if key is None:
                homeless.append(name)
                continue
            if key == CLASSIC:
                if self._classic is None:
                    self._classic = self._start_link(CLASSIC, self._classic_address(None))
                link = self._classic
            else:
                link = self._shard_links.get(key) or self._start_link(key, key)
            link.shard_channels.add(name)
            self._carrier[name] = link
            placed.append(name)
        for link, group in self._by_link(placed):
            link.queue(("SSUBSCRIBE", *group))
        return homeless

    def _by_link(self, names: list[bytes]) -> list[tuple[Link, list[bytes]]]:
        """Placed shard channels as (link, channels of one slot): one command each."""
        per_link: dict[Link, list[bytes]] = {}
        for name in names:
            per_link.setdefault(self._carrier[name], []).append(name)
        return [(link, group) for link, mine in per_link.items() for group in by_slot(mine)]

    def _unassign(self, names: Iterable[bytes], link: Link | None = None) -> list[bytes]:
        """Take shard channels off their link (only off ``link``, if given)."""
        taken = []
        for name in names:
            carrier = self._carrier.get(name)
            if carrier is not None and (link is None or carrier is link):
                del self._carrier[name]
                carrier.shard_channels.discard(name)
                taken.append(name)
        return taken

    def _want_placement(self, *, refresh: bool) -> None:
        self._refresh_wanted = self._refresh_wanted or refresh
        self._place_wanted.set()

    async def _refresh(self) -> None:
        if self._shards is not None:
            with trio.move_on_after(_REFRESH_BOUND):
                await self._shards.refresh()

    async def _placer(self) -> None:
        """Give a link back to every subscription that lost its own (after a failure, a
        MOVED to an unknown node, a slot move), with backoff while attempts keep failing."""
        while not self.closed:
            await self._place_wanted.wait()
            self._place_wanted = trio.Event()
            if self._failures:
                await trio.sleep(backoff(self._failures - 1))
            if self._refresh_wanted:
                self._refresh_wanted = False
                await self._refresh()
            try:
                if self._subs.classic and self._classic is None:
                    address = self._classic_address(self._home)
                    self._classic = self._start_link(CLASSIC, address)
                homeless = self._place_shard(self._subs.names("shard"))
            except (PubSubLimitError, ClusterDownError) as error:
                await self._stream.put(Failure(error))
                self._failures += 1
                self._want_placement(refresh=True)
                continue
            if homeless:
                self._failures += 1
                self._want_placement(refresh=True)

    # --- what links report (LinkOwner) ---------------------------------------------------------

    async def dial(self, link: Link) -> Connection:
        """A connection for ``link``, by the client's dialer (the newest credentials, the
        client's TLS and timeouts); maintenance notifications concern the command pools'
        connections, none here."""
        if self._shards is None:
            return await self._dialer.open(maint_notifications="disabled")
        return await self._dialer.open(link.address, readonly=False, maint_notifications="disabled")

    def on_ready(self, link: Link) -> list[Command]:
        """``link`` connected: placing works again, and this is what it must send."""
        self._failures = 0
        commands: list[Command] = []
        if link.classic:
            commands += self._pending_pings
            self._pending_pings = []
            for family in ("channel", "pattern"):
                names = self._subs.names(family)
                if names:
                    commands.append((verb(family), *sorted(names)))
        commands += [("SSUBSCRIBE", *group) for group in by_slot(sorted(link.shard_channels))]
        return commands

    async def deliver(self, item: dict[str, Any]) -> None:
        """Put ``item`` in the stream (waits while it is full: the backpressure), unless it
        is a confirmation and those are ignored."""
        if not (self.ignore_subscribe_messages and item["type"] in CONFIRMATION_KINDS):
            await self._stream.put(item)

    async def slot_left(self, link: Link, name: bytes) -> None:
        """The server dropped shard channel ``name`` (its slot left ``link``'s node): a gap,
        and the channel is placed again after a refresh."""
        self._tally.add("slot_moves")
        self._tally.add("gaps")
        await self._stream.put(link.gap(f"slot of {name!r} left {link.name}", {("shard", name)}))
        self._unassign([name], link)
        self._want_placement(refresh=True)

    async def command_failed(self, link: Link, command: Command | None, error: Exception) -> None:
        """The server answered ``command`` on ``link`` with ``error``."""
        called = str(command[0]).upper() if command else ""
        names = [n for n in command[1:] if isinstance(n, bytes)] if command else []
        if called == "SSUBSCRIBE" and isinstance(error, MovedError):
            self._tally.add("moved")
            taken = self._unassign(names, link)
            if self._shards is not None:
                # The client's one MOVED path: its slot map and public topology learn the new
                # owner (and a refresh is requested); placement below reads that map.
                await self._shards.apply_moved(error, self._shards.by_name(link.name))
                try:
                    self._place_shard(taken)
                except PubSubLimitError as limit:
                    await self._stream.put(Failure(limit))
                    self._want_placement(refresh=True)
            return
        if called == "SSUBSCRIBE" and isinstance(error, SERVER_DID_NOT_RUN):
            # The slot's owner cannot serve it right now (a failover): try again later.
            self._unassign(names, link)
            self._failures += 1
            self._want_placement(refresh=True)
            return
        if isinstance(error, SERVER_DID_NOT_RUN):
            raise rex.ConnectionError(f"{link.name} cannot serve pub/sub now: {error}")
        # A refusal (ACL, bad argument...): forget what was refused so it is not replayed,
        # and tell the consumer, as redis-py raises it from get_message.
        family = _SUBSCRIBED_BY.get(called)
        if family is not None:
            self._unassign(names, link)
            self._subs.remove(family, names)
        await self._stream.put(Failure(error))

    def link_ended(self, link: Link, error: Exception | None, *, connected: bool) -> None:
        """Forget ``link`` (synchronous) and let the placer re-place what it carried."""
        if error is not None:
            if link.classic:
                self._avoid = link.address
            if not connected:
                self._failures += 1
        if link not in self._links:
            return
        self._links.discard(link)
        for wait in self._waits:
            wait.cancel()
        self._tally.release()
        if self._classic is link:
            self._classic = None
        if self._shard_links.get(link.address) is link:
            del self._shard_links[link.address]
        self._unassign(list(link.shard_channels), link)
        if not self.closed and self._subs.subscribed:
            self._want_placement(refresh=self._shards is not None)
