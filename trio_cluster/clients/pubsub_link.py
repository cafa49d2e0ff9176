"""One link: a dedicated pub/sub connection, for its whole life, owned by one task.

The task dials, sends what its owner says the connection must carry (the replay), then
serves: it writes queued commands, each followed by a PING whose PONG closes that command's
answer (so an error reply is matched to its command), reads every frame, pings when the
connection has been quiet for ``health_check_interval``, and gives up when an answer is
overdue by the read timeout.  Published messages and confirmations go to the owner's stream;
what needs a decision about placement (an error answer, a shard channel the server dropped)
goes to the owner, and so does the end of the link.  The link never reconnects: its owner
starts a new one.
"""

from __future__ import annotations

import collections
import logging
from collections import Counter
from typing import Any, Final, Protocol

import trio
from redis import exceptions as rex

from ..conn.connection import Connection
from ..errors import ProtocolError, ReadTimeoutError
from ..routing.topology import Address
from .pubsub_messages import (
    MESSAGE_KINDS,
    SUBSCRIBE_KINDS,
    UNSUBSCRIBE_KINDS,
    Command,
    Family,
    frame_kind,
    gap_message,
    message,
    pong_message,
)
from .pubsub_placement import CLASSIC, LinkKey
from .pubsub_registry import Tally

__all__ = ["LINK_ERRORS", "Link", "LinkOwner", "UserPing"]

logger = logging.getLogger(__name__)

#: What ends a link (its owner then places what it carried on a new one).
LINK_ERRORS = (
    rex.ConnectionError,
    rex.TimeoutError,
    ProtocolError,
    OSError,
    trio.BrokenResourceError,
)
#: The PING that closes each command's answer, and the health check.
_PING: Final[Command] = ("PING",)


class UserPing(tuple[Any, ...]):
    """A PING the consumer asked for (``PubSub.ping``): its answer goes to the stream."""

    answered = False


class LinkOwner(Protocol):
    """What a link reports to (the PubSub's :class:`~.pubsub_links.LinkSet`)."""

    async def dial(self, link: Link) -> Connection:
        """A new connection for ``link``."""
        ...

    def on_ready(self, link: Link) -> list[Command]:
        """``link`` is connected: the commands that restore what it carries."""
        ...

    async def deliver(self, item: dict[str, Any]) -> None:
        """Put a message in the consumer's stream."""
        ...

    async def command_failed(self, link: Link, command: Command | None, error: Exception) -> None:
        """The server answered ``command`` with ``error`` (raise to end the link)."""
        ...

    async def slot_left(self, link: Link, name: bytes) -> None:
        """The server dropped shard channel ``name``: its slot left the node."""
        ...

    def link_ended(self, link: Link, error: Exception | None, *, connected: bool) -> None:
        """``link`` is over (``error``: why it failed; ``connected``: whether it had
        connected); its connection is closed."""
        ...


class Link:
    """One dedicated connection and what it should carry.

    A link lives for one connection: it dials, replays, serves, and ends.  Only its own task
    touches the connection; other tasks append commands to the outbox (:meth:`queue`) and
    wake the task.
    """

    def __init__(
        self,
        key: LinkKey,
        address: Address,
        *,
        owner: LinkOwner,
        tally: Tally,
        health_check_interval: float | None,
    ) -> None:
        self.key = key
        self.address = address
        self._owner = owner
        self._tally = tally
        self._health = health_check_interval or float("inf")
        #: Shard channels this link carries (the classic link carries channels and patterns
        #: by definition, and, on a single node, the shard channels too).
        self.shard_channels: set[bytes] = set()
        self.conn: Connection | None = None
        #: Commands to write (only while serving: a connecting link replays instead).
        self._outbox: list[Command] = []
        #: Commands written whose closing PONG has not come yet, oldest first.
        self._sent: collections.deque[Command] = collections.deque()
        #: Subscriptions the server confirmed on this connection.
        self.active: set[tuple[Family, bytes]] = set()
        #: Unsubscribes asked for whose confirmation has not come: any other
        #: sunsubscribe is the server's own (a slot left the node).
        self._unsubscribing: Counter[tuple[Family, bytes]] = Counter()
        self._activity = 0.0
        self._wake_scope: trio.CancelScope | None = None
        self._woken = False

    def __repr__(self) -> str:
        return f"<Link {self.key if self.classic else 'shard'} {self.name}>"

    @property
    def classic(self) -> bool:
        """Whether this is the classic link (channels and patterns)."""
        return self.key == CLASSIC

    @property
    def name(self) -> str:
        """``host:port`` of the node."""
        return f"{self.address[0]}:{self.address[1]}"

    @property
    def owed(self) -> int:
        """Unsubscribe confirmations asked for on this connection that have not come yet."""
        return sum(self._unsubscribing.values())

    def queue(self, command: Command) -> bool:
        """Queue a command if the link is serving (else its replay covers it); returns
        whether it was queued."""
        if self.conn is None:
            return False
        self._outbox.append(command)
        if self._wake_scope is not None:
            self._woken = True
            self._wake_scope.cancel()
        return True

    def unsubscribe(self, family: Family, names: list[bytes], command: Command) -> None:
        """Queue an unsubscribe ``command`` for ``names``, expecting their confirmations."""
        if self.queue(command):
            self._unsubscribing.update((family, n) for n in names)

    # --- the task ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Dial, serve until the connection fails or the task is cancelled, and end."""
        error: Exception | None = None
        connected = False
        try:
            try:
                conn = await self._owner.dial(self)
            except LINK_ERRORS as failure:
                error = failure
                self._tally.add("connect_errors")
                logger.info("pub/sub connection to %s failed: %s", self.name, failure)
                return
            connected = True
            self._tally.add("connects")
            try:
                await self._serve(conn)
            except LINK_ERRORS as failure:
                error = failure
                self._tally.add("disconnects")
                logger.info("pub/sub connection to %s lost: %s", self.name, failure)
                await self._report_gap(f"connection lost: {failure}")
            finally:
                self.conn = None
                with trio.CancelScope(shield=True):
                    await conn.aclose()
        finally:
            self._owner.link_ended(self, error, connected=connected)

    async def _serve(self, conn: Connection) -> None:
        """Own one connection: write what is queued, read every frame, until it fails."""
        config = conn.config
        read_timeout = config.read_timeout if config.read_timeout is not None else float("inf")
        write_timeout = config.write_timeout if config.write_timeout is not None else float("inf")
        # From here on, commands are queued instead of replayed: set both with no await between.
        self.conn = conn
        self._outbox = self._owner.on_ready(self)
        self._activity = trio.current_time()
        while True:
            if self._outbox:
                batch, self._outbox = self._outbox, []
                wire: list[Command] = []
                for command in batch:
                    # Each command is followed by a PING: its PONG says the command's answer
                    # (pushes, or one error reply) is complete, so errors are attributed.
                    if command is not _PING:
                        wire.append(command)
                    wire.append(_PING)
                    self._sent.append(command)
                with trio.move_on_after(write_timeout + read_timeout) as scope:
                    frame = await conn.read_push(send=wire)
                if scope.cancelled_caught:
                    raise ReadTimeoutError(f"{self.name} did not answer pub/sub commands in time")
            else:
                # Idle: wait for a frame, or to be woken for new commands, or for the time to
                # ping (nothing outstanding) or to give up (an answer overdue).
                limit = read_timeout if self._sent else self._health
                self._woken = False
                with trio.CancelScope(deadline=self._activity + limit) as scope:
                    self._wake_scope = scope
                    try:
                        frame = await conn.read_push()
                    finally:
                        self._wake_scope = None
                if scope.cancelled_caught:
                    if self._woken:
                        continue
                    if self._sent:
                        raise ReadTimeoutError(f"no answer from {self.name} within {limit} s")
                    self._outbox.append(_PING)
                    continue
            await self._handle(frame)
            self._activity = trio.current_time()

    # --- frames --------------------------------------------------------------------------------

    async def _handle(self, frame: Any) -> None:
        kind = frame_kind(frame)
        waiting = self._sent[0] if self._sent else None
        if (
            type(waiting) is UserPing
            and not waiting.answered
            and not isinstance(frame, Exception)
            and (kind == "pong" or (kind is None and not isinstance(frame, list)))
        ):
            # The answer to ping(): the PING after it closes the command, as for others.
            # A bare PONG (RESP3, or not subscribed yet) gives b"", as redis-py shapes it.
            waiting.answered = True
            data = frame[1] if kind == "pong" else b"" if frame == b"PONG" else frame
            await self._owner.deliver(pong_message(data))
            return
        if kind is None:
            if frame == b"PONG":
                if self._sent:
                    self._sent.popleft()
            elif isinstance(frame, Exception):
                await self._owner.command_failed(self, waiting, frame)
            # Anything else (a maintenance notification...) is not for the consumer.
            return
        if kind == "pong":  # RESP2's PING answer in subscribed mode
            if self._sent:
                self._sent.popleft()
            return
        if kind in MESSAGE_KINDS:
            self._tally.add("messages")
            await self._owner.deliver(message(kind, frame))
            return
        name = frame[1]
        if kind in SUBSCRIBE_KINDS:
            self.active.add((SUBSCRIBE_KINDS[kind], name))
        else:
            key = (UNSUBSCRIBE_KINDS[kind], name)
            self.active.discard(key)
            if self._unsubscribing[key] > 0:
                self._unsubscribing[key] -= 1
                if not self._unsubscribing[key]:
                    del self._unsubscribing[key]
            elif key[0] == "shard" and not self.classic and name in self.shard_channels:
                # Not asked for: the server dropped it because the slot left this node.
                await self._owner.slot_left(self, name)
                return
        await self._owner.deliver(message(kind, frame))

    async def _report_gap(self, reason: str) -> None:
        """Tell the consumer which confirmed subscriptions this connection lost (not those
        being unsubscribed: nobody waits for their messages)."""
        lost = {key for key in self.active if key not in self._unsubscribing}
        if not lost:
            return  # nothing wanted had been confirmed on this connection: nothing was missed
        self._tally.add("gaps")
        await self._owner.deliver(self.gap(reason, lost))

    def gap(self, reason: str, lost: set[tuple[Family, bytes]]) -> dict[str, Any]:
        """The gap event for ``lost`` subscriptions of this link."""
        return gap_message(
            self.name,
            reason,
            sorted(n for f, n in lost if f == "channel"),
            sorted(n for f, n in lost if f == "pattern"),
            sorted(n for f, n in lost if f == "shard"),
        )
