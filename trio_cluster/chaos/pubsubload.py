"""The pub/sub load: subscribers (one ``PubSub`` each, on one client) and publishers whose
every message names its channel, its publisher and the publisher's sequence number, so that
each subscriber's stream can be checked exactly (``trio_cluster.chaos.invariants.check_pubsub``).

Some channels are shard channels (SSUBSCRIBE/SPUBLISH), chosen so that every primary owns at
least one; the others are classic (SUBSCRIBE/PUBLISH).  Subscriber ``i`` takes
``channels_per_subscriber`` consecutive channels starting at ``i * stride``, so each channel
has several subscribers when there are fewer channels than subscriptions.  Publisher ``k``
cycles through every channel, starting at channel ``k``.  Publishing starts once every
subscription is confirmed, and stops with the rest of the load; the subscribers then drain
what is still in flight, and every PubSub is closed before the client is.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio

from trio_cluster import ClusterClient, PoolClosedError, PubSub

from .address import Address
from .records import (
    Delivery,
    Op,
    Publish,
    PubSubEvent,
    PubSubRecord,
    RunRecord,
    Window,
    decode_message,
    encode_message,
)

__all__ = ["PubSubLoad", "PubSubRunner"]

#: Longest wait for every subscription to be confirmed before publishing starts anyway.
SUBSCRIBE_TIMEOUT = 10.0
#: The drain after the last publish ends once nothing has arrived for this long (every
#: subscriber has caught up: what is missing by then was lost)...
QUIET = 0.3
_MESSAGES = frozenset({"message", "smessage", "pmessage"})
_CONFIRMS = frozenset({"subscribe", "ssubscribe", "psubscribe"})


def _text(name: object) -> str:
    """A channel name as text (the client gives bytes unless told to decode)."""
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


@attrs.frozen(kw_only=True)
class PubSubLoad:
    """Subscribers, channels and publishers (see the module docstring)."""

    subscribers: int = 10
    channels_per_subscriber: int = 10
    channels: int = 20
    """Distinct channels; subscribers share them when there are fewer than subscriptions."""
    sharded: int = 6
    """How many of the channels are shard channels (spread over every primary)."""
    publishers: int = 100
    interval: float = 0.010
    """Each publisher sleeps this long after each publish."""
    drain: float = 30.0
    """...or after this long at most, even while messages still arrive.  A consumer that
    lags holds seconds of messages (its PubSub's buffer, then the server's output buffer):
    on a busy machine they take many seconds to read, and cutting the drain short would
    count them as lost (a note says so when it happens)."""
    max_connections: int = 64
    """The client's ``max_pubsub_connections``."""

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.channels_per_subscriber <= self.channels:
            raise ValueError("channels_per_subscriber must be in 1..channels")
        if not 0 <= self.sharded <= self.channels:
            raise ValueError("sharded must be in 0..channels")
        if self.subscribers < 1 or self.publishers < 1:
            raise ValueError("a pub/sub load needs subscribers and publishers")

    @property
    def stride(self) -> int:
        """How far apart consecutive subscribers' first channels are."""
        return max(1, self.channels // self.subscribers)


OpenPubSubClient = Callable[[], AbstractAsyncContextManager[ClusterClient]]


class PubSubRunner:
    """Runs a :class:`PubSubLoad` on a client from ``open_client``, recording into
    ``record.pubsub`` (publishes are also recorded as operations, ``publish``/``spublish``)."""

    def __init__(
        self,
        spec: PubSubLoad,
        prefix: str,
        seed: int,
        record: RunRecord,
        open_client: OpenPubSubClient,
    ) -> None:
        self.spec = spec
        self.prefix = f"{prefix}:ps"
        self.seed = seed
        self.record = record
        self.open_client = open_client
        self.data = PubSubRecord()
        record.pubsub = self.data
        self.ready = trio.Event()
        """Set once every subscription is confirmed (or the wait for it timed out)."""
        self.rc: ClusterClient | None = None
        self.pubsubs: dict[int, PubSub] = {}
        self._pending: dict[int, set[str]] = {}
        self._pos: Counter[int] = Counter()
        self._due = 0
        """Deliveries the acknowledged publishes call for (for the drain)."""
        self._fanout: Counter[str] = Counter()

    # --- layout ----------------------------------------------------------------------------

    def _layout(self, rc: ClusterClient) -> None:
        """Name the channels (shard channels spread over every primary) and assign them."""
        spec = self.spec
        topology = rc.topology
        primaries = sorted({s.primary for s in topology.shards})
        names = [f"{self.prefix}:{i}" for i in range(spec.channels)]
        # Shard channels: the first channels whose owners cover the primaries in turn.
        by_owner: dict[Any, list[str]] = {p: [] for p in primaries}
        for name in names:
            shard = topology.shard_for(rc.keyslot(name))
            if shard is not None:
                by_owner.setdefault(shard.primary, []).append(name)
        sharded: list[str] = []
        while len(sharded) < spec.sharded and any(by_owner.values()):
            for owner in primaries:
                if by_owner.get(owner) and len(sharded) < spec.sharded:
                    sharded.append(by_owner[owner].pop(0))
        self.data.sharded = frozenset(sharded)
        for i in range(spec.subscribers):
            chosen = tuple(
                names[(i * spec.stride + j) % spec.channels]
                for j in range(spec.channels_per_subscriber)
            )
            self.data.subscriptions[i] = chosen
            self._pending[i] = set(chosen)
            for channel in chosen:
                self._fanout[channel] += 1
        self.channels = names

    # --- driving ---------------------------------------------------------------------------

    async def run(self, stop: trio.Event) -> None:
        """Subscribe, publish until ``stop`` is set, drain, close every PubSub."""
        async with self.open_client() as rc:
            self.rc = rc
            self._layout(rc)
            async with trio.open_nursery() as subscribers:
                for i in self.data.subscriptions:
                    subscribers.start_soon(self._subscriber, rc, i)
                with trio.move_on_after(SUBSCRIBE_TIMEOUT):
                    await self.ready.wait()
                if not self.ready.is_set():
                    self.data.notes.append(
                        f"subscriptions not all confirmed after {SUBSCRIBE_TIMEOUT:.0f} s"
                    )
                    self.ready.set()
                async with trio.open_nursery() as sampler:
                    sampler.start_soon(self._sample, rc)
                    start = trio.current_time()
                    async with trio.open_nursery() as publishers:
                        for k in range(self.spec.publishers):
                            publishers.start_soon(self._publisher, rc, k, stop)
                    self.data.publishing = Window("publishing", start, trio.current_time())
                    await self._drain()
                    sampler.cancel_scope.cancel()
                self.data.stats = attrs.asdict(rc.pubsub_stats())
                subscribers.cancel_scope.cancel()  # leaving each `async with` closes it
            self.data.open_after_close = rc.pubsub_stats().open_connections
            self.pubsubs.clear()

    async def _sample(self, rc: ClusterClient) -> None:
        while True:
            opened = rc.pubsub_stats().open_connections
            self.data.peak_connections = max(self.data.peak_connections, opened)
            await trio.sleep(0.02)

    async def _drain(self) -> None:
        """Wait until every due delivery arrived, nothing arrived for ``QUIET`` s, or
        ``drain`` s passed (noted: what was still buffered then counts as lost)."""
        with trio.move_on_after(self.spec.drain) as scope:
            seen, since = len(self.data.deliveries), trio.current_time()
            while len(self.data.deliveries) < self._due:
                await trio.sleep(0.05)
                now = trio.current_time()
                if len(self.data.deliveries) != seen:
                    seen, since = len(self.data.deliveries), now
                elif now - since >= QUIET:
                    return
        if scope.cancelled_caught:
            self.data.notes.append(
                f"the drain stopped after {self.spec.drain:.0f} s with messages still arriving "
                f"({len(self.data.deliveries)} deliveries of {self._due} due): those still "
                "buffered count as lost"
            )

    async def _publisher(self, rc: ClusterClient, k: int, stop: trio.Event) -> None:
        spec = self.spec
        rng = random.Random(f"{self.seed}:publisher:{k}")
        command: Any = rc  # redis-py's stubs describe the sync client
        await trio.sleep(rng.uniform(0, spec.interval))  # spread the publishers out
        seq = 0
        while not stop.is_set():
            seq += 1
            channel = self.channels[(k + seq) % len(self.channels)]
            sharded = channel in self.data.sharded
            payload = encode_message(channel, k, seq)
            start = trio.current_time()
            error: str | None = None
            try:
                if sharded:
                    await command.spublish(channel, payload)
                else:
                    await command.publish(channel, payload)
            except Exception as exc:  # recorded, the publisher goes on
                error = type(exc).__name__
            end = trio.current_time()
            ok = error is None
            self.data.publishes.append(Publish(k, seq, channel, start, end, ok, error))
            kind = "spublish" if sharded else "publish"
            # A shard channel has a slot; a classic one goes to any node.
            slots = (rc.keyslot(channel),) if sharded else ()
            self.record.ops.append(Op(10_000 + k, kind, start, end, ok, error, slots))
            if ok:
                self._due += self._fanout[channel]
            await trio.sleep(spec.interval)

    async def _subscriber(self, rc: ClusterClient, i: int) -> None:
        channels = self.data.subscriptions[i]
        classic = [c for c in channels if c not in self.data.sharded]
        shard = [c for c in channels if c in self.data.sharded]
        async with rc.pubsub() as p:
            self.pubsubs[i] = p
            if classic:
                await p.subscribe(*classic)
            if shard:
                await p.ssubscribe(*shard)
            while True:
                try:
                    message = await p.get_message(timeout=None)
                except PoolClosedError:
                    return
                except Exception as exc:  # an error the server gave a subscribe command
                    self._event(i, "error", (), f"{type(exc).__name__}: {exc}")
                    continue
                if message is not None:  # (None only for ignored or handled messages)
                    self._handle(i, message)

    def _next_pos(self, i: int) -> int:
        self._pos[i] += 1
        return self._pos[i]

    def _event(self, i: int, kind: str, channels: tuple[str, ...], detail: str = "") -> None:
        self.data.events.append(
            PubSubEvent(i, self._next_pos(i), trio.current_time(), kind, channels, detail)
        )

    def _handle(self, i: int, message: dict[str, Any]) -> None:
        kind = str(message["type"])
        if kind in _MESSAGES:
            channel = _text(message["channel"])
            decoded = decode_message(message["data"])
            named, publisher, seq = decoded if decoded is not None else (None, -1, -1)
            self.data.deliveries.append(
                Delivery(i, self._next_pos(i), trio.current_time(), kind, channel, named,
                         publisher, seq, raw=repr(message["data"])[:80])
            )  # fmt: skip
            return
        if kind == "gap":
            names = [*message["channels"], *message["shard_channels"], *message["patterns"]]
            self._event(
                i, "gap", tuple(_text(n) for n in names), f"{message['node']}: {message['data']}"
            )
            return
        channel = _text(message["channel"])
        self._event(i, kind, (channel,))
        if kind in _CONFIRMS:
            pending = self._pending[i]
            pending.discard(channel)
            if not pending and all(not p for p in self._pending.values()):
                self.ready.set()

    # --- for faults ----------------------------------------------------------------------------

    def owner(self, channel: str) -> Address | None:
        """The primary owning ``channel``'s slot, as the client addresses it."""
        rc = self.rc
        shard = rc.topology.shard_for(rc.keyslot(channel)) if rc is not None else None
        return Address.of(shard.primary) if shard is not None else None

    def classic_nodes(self) -> Counter[Address]:
        """The node carrying each subscriber's classic channels (as the client addresses
        it), counted."""
        found: Counter[Address] = Counter()
        if self.rc is None:
            return found
        for i, p in self.pubsubs.items():
            links = Counter(Address.of(a) for a in p.connection_addresses())
            owners = {self.owner(c) for c in self.data.subscriptions[i] if c in self.data.sharded}
            for address, count in links.items():
                if count > (1 if address in owners else 0):
                    found[address] += 1
        return found
