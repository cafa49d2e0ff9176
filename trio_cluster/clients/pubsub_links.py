"""How a PubSub's subscriptions travel: placing them on links (the classic link, one link
per primary for shard channels), and each link's session: dial, replay, serve, handle
frames, report gaps."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import trio
from redis import exceptions as rex

from ..conn.connection import Connection
from ..errors import (
    SERVER_DID_NOT_RUN,
    ClusterDownError,
    MovedError,
    ReadTimeoutError,
)
from ..routing.rules import key_slot
from ..routing.topology import Address
from ..wire.protocol import EncodableArg
from .pubsub_base import (
    _LINK_ERRORS,
    _MESSAGE_KINDS,
    _PING,
    _REFRESH_BOUND,
    _SUBSCRIBE_KINDS,
    _UNSUBSCRIBE_KINDS,
    PubSubLimitError,
    _backoff,
    _Failure,
    _gap,
    _kind,
    _Link,
    _message,
    _PubSubState,
    _UserPing,
)

__all__: list[str] = []

logger = logging.getLogger("trio_cluster.pubsub")


class _Links(_PubSubState):
    """Placement of subscriptions on links, and the links' sessions."""

    async def _start(self, nursery: trio.Nursery) -> None:
        send, receive = trio.open_memory_channel[dict[str, Any] | _Failure](self._buffer)
        self._send, self._receive = send, receive
        self._spawn(self._placer)

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

    def _place_shard(self, names: Iterable[bytes]) -> list[bytes]:
        """Put shard channels that have no link on one (creating links as needed) and queue
        their SSUBSCRIBE, on the node the client's slot map names for their slot; returns
        the channels whose slot has no known owner."""
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
                address = self._shard_address(n)
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
                    [n for n in sorted(self._shard) if n not in self._owner]
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
                # The client's one MOVED path: its slot map and public topology learn the new
                # owner (and a refresh is requested); placement below reads that map.
                await cluster.apply_moved(error, cluster.by_name(link.name))
                try:
                    self._place_shard(taken)
                except PubSubLimitError as limit:
                    self._counters.limit_rejections += 1
                    await self._deliver(_Failure(limit))
                    self._want_placement(refresh=True)
            return
        if verb == "SSUBSCRIBE" and isinstance(error, SERVER_DID_NOT_RUN):
            # The slot's owner cannot serve it right now (a failover): try again later.
            self._unassign(link, names)
            self._failures += 1
            self._want_placement(refresh=True)
            return
        if isinstance(error, SERVER_DID_NOT_RUN):
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
