"""What pub/sub frames mean and what the consumer receives: the frame kinds, the commands per
subscription family, redis-py's message shapes (and the gap event), and the bounded stream
that carries them from the link tasks to the consumer.

Everything here but :class:`MessageStream` is pure: no I/O, no state.  Channel and pattern
names are bytes everywhere inside a PubSub (as the server echoes them back); they are decoded
only on the way out, under the client's ``decode_responses``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

import attrs
import trio

from ..errors import PoolClosedError
from ..wire.protocol import EncodableArg

__all__ = [
    "CONFIRMATION_KINDS",
    "MESSAGE_KINDS",
    "SUBSCRIBE_KINDS",
    "UNSUBSCRIBE_KINDS",
    "Command",
    "Failure",
    "Family",
    "Handler",
    "MessageStream",
    "frame_kind",
    "gap_message",
    "message",
    "name_bytes",
    "pong_message",
    "skipped",
    "verb",
]

#: The three kinds of subscription: SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE.
Family = Literal["channel", "pattern", "shard"]
#: What a PubSub sends on a link: a command and its arguments.
Command = tuple[EncodableArg, ...]
#: A message handler given as ``subscribe(name=handler)``: a plain or an async function.
Handler = Callable[[dict[str, Any]], Any]

#: Push kinds that carry a published message, with the family that delivers them.
MESSAGE_KINDS: Final[dict[str, Family]] = {
    "message": "channel",
    "pmessage": "pattern",
    "smessage": "shard",
}
#: Subscribe confirmations, with the family they concern.
SUBSCRIBE_KINDS: Final[dict[str, Family]] = {
    "subscribe": "channel",
    "psubscribe": "pattern",
    "ssubscribe": "shard",
}
#: Unsubscribe confirmations (asked for, or the server's own), with their family.
UNSUBSCRIBE_KINDS: Final[dict[str, Family]] = {
    "unsubscribe": "channel",
    "punsubscribe": "pattern",
    "sunsubscribe": "shard",
}
#: What ``ignore_subscribe_messages`` drops.
CONFIRMATION_KINDS: Final = frozenset({*SUBSCRIBE_KINDS, *UNSUBSCRIBE_KINDS})
_PUBSUB_KINDS: Final = frozenset({*MESSAGE_KINDS, *CONFIRMATION_KINDS, "pong"})

_VERBS: Final[dict[tuple[Family, bool], str]] = {
    ("channel", False): "SUBSCRIBE",
    ("channel", True): "UNSUBSCRIBE",
    ("pattern", False): "PSUBSCRIBE",
    ("pattern", True): "PUNSUBSCRIBE",
    ("shard", False): "SSUBSCRIBE",
    ("shard", True): "SUNSUBSCRIBE",
}


def verb(family: Family, *, unsubscribe: bool = False) -> str:
    """The command that (un)subscribes names of ``family``."""
    return _VERBS[(family, unsubscribe)]


def name_bytes(value: Any) -> bytes:
    """A channel or pattern as bytes (as the server echoes it back); redis-py's rules for
    what may be a name (str, bytes, numbers)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value).encode()
    raise TypeError(f"a channel or pattern must be str or bytes; got {type(value).__name__}")


def frame_kind(frame: Any) -> str | None:
    """The pub/sub kind of a frame (a RESP3 push, or a RESP2 array in subscribed mode), or
    None for anything else (a plain reply, a maintenance notification...)."""
    if isinstance(frame, list) and frame and isinstance(frame[0], bytes):
        kind = frame[0].decode("ascii", "replace").lower()
        if kind in _PUBSUB_KINDS:
            return kind
    return None


def message(kind: str, frame: list[Any]) -> dict[str, Any]:
    """A published message or a confirmation in redis-py's shape: type, pattern, channel,
    data (a confirmation's data is the count of subscriptions left on that connection)."""
    if kind == "pmessage":
        return {"type": kind, "pattern": frame[1], "channel": frame[2], "data": frame[3]}
    return {"type": kind, "pattern": None, "channel": frame[1], "data": frame[2]}


def pong_message(data: Any) -> dict[str, Any]:
    """The answer to ``PubSub.ping()``, as redis-py shapes it."""
    return {"type": "pong", "pattern": None, "channel": None, "data": data}


def gap_message(
    node: str,
    reason: str,
    channels: list[bytes],
    patterns: list[bytes],
    shard_channels: list[bytes],
) -> dict[str, Any]:
    """The gap event: redis-py's keys (so generic consumers do not break) plus what was hit:
    confirmed subscriptions that were lost for a while on ``node``."""
    return {
        "type": "gap",
        "pattern": None,
        "channel": None,
        "data": reason,
        "node": node,
        "channels": channels,
        "patterns": patterns,
        "shard_channels": shard_channels,
    }


def skipped(item: dict[str, Any], ignore_subscribe_messages: bool) -> bool:
    """Whether ``ignore_subscribe_messages`` drops ``item`` (a confirmation)."""
    return ignore_subscribe_messages and item["type"] in CONFIRMATION_KINDS


@attrs.frozen
class Failure:
    """An error for the consumer, carried in the stream: taking it raises it (as redis-py
    raises a subscribe command's error from ``get_message``)."""

    error: Exception


class MessageStream:
    """The bounded buffer between the link tasks (``put``) and the consumer (``take``).

    A full buffer makes ``put`` wait: the link tasks stop reading and the server buffers
    instead (backpressure).  Closing it ends the consumer's wait with
    :class:`~trio_cluster.errors.PoolClosedError`.
    """

    def __init__(self, size: int) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"buffer must be an int >= 1; got {size!r}")
        self._send, self._receive = trio.open_memory_channel[dict[str, Any] | Failure](size)

    async def put(self, item: dict[str, Any] | Failure) -> None:
        """Hand ``item`` to the consumer (waits while the buffer is full)."""
        await self._send.send(item)

    async def take(self) -> dict[str, Any]:
        """The next message, waiting as long as the caller's cancel scope allows (a cancelled
        wait loses nothing); raises a carried :class:`Failure`'s error."""
        try:
            item = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise PoolClosedError("this PubSub is closed") from None
        return _unwrapped(item)

    def take_nowait(self) -> dict[str, Any] | None:
        """The next buffered message, or None if none is buffered right now."""
        try:
            item = self._receive.receive_nowait()
        except trio.WouldBlock:
            return None
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise PoolClosedError("this PubSub is closed") from None
        return _unwrapped(item)

    def buffered(self) -> int:
        """How many items wait in the buffer."""
        return self._receive.statistics().current_buffer_used

    def close(self) -> None:
        """No more items: the consumer sees the end once the buffer is drained."""
        self._send.close()


def _unwrapped(item: dict[str, Any] | Failure) -> dict[str, Any]:
    if isinstance(item, Failure):
        raise item.error
    return item
