"""What a PubSub's consumer asked for, as data: per family (channels, patterns, shard
channels), each name with its message handler or None.

It is the truth that every new connection replays, that placement reads, and that
``PubSub.channels`` / ``patterns`` / ``shard_channels`` show (as redis-py's dictionaries).
A name is in it from the subscribe call until the unsubscribe call, or until the server
refuses the subscription.  Pure bookkeeping: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .pubsub_messages import MESSAGE_KINDS, Family, Handler, name_bytes

__all__ = ["FAMILIES", "Subscriptions", "parse_names"]

#: Every family, in the order a connection replays them.
FAMILIES: tuple[Family, ...] = ("channel", "pattern", "shard")


def parse_names(
    args: tuple[Any, ...], handlers: Mapping[str, Handler]
) -> dict[bytes, Handler | None]:
    """redis-py's arguments of ``subscribe`` and friends as names (bytes) -> handler: names
    positionally (or one list of names first), ``name=handler`` keywords."""
    if args and isinstance(args[0], list | tuple):
        args = (*args[0], *args[1:])  # redis-py's list_or_args
    names: dict[bytes, Handler | None] = dict.fromkeys(name_bytes(a) for a in args)
    for name, handler in handlers.items():
        if not callable(handler):
            raise TypeError(
                f"the handler of {name!r} must be a function taking the message; "
                f"got {type(handler).__name__}"
            )
        names[name_bytes(name)] = handler
    return names


class Subscriptions:
    """The names asked for, by family, each with its handler (None: to the stream)."""

    def __init__(self) -> None:
        self._wanted: dict[Family, dict[bytes, Handler | None]] = {f: {} for f in FAMILIES}

    def __repr__(self) -> str:
        counts = ", ".join(f"{f}={len(names)}" for f, names in self._wanted.items())
        return f"<Subscriptions {counts}>"

    def add(self, family: Family, names: Mapping[bytes, Handler | None]) -> None:
        """Subscribe ``names``; a name subscribed again takes its new handler (or none), as
        in redis-py."""
        self._wanted[family].update(names)

    def remove(self, family: Family, names: Iterable[bytes]) -> list[bytes]:
        """Forget ``names``; returns those that were subscribed."""
        wanted = self._wanted[family]
        return [n for n in names if wanted.pop(n, _MISSING) is not _MISSING]

    def names(self, family: Family) -> list[bytes]:
        """The names of ``family``, in the order they were first subscribed."""
        return list(self._wanted[family])

    def wants(self, family: Family, name: bytes) -> bool:
        """Whether ``name`` of ``family`` is subscribed."""
        return name in self._wanted[family]

    @property
    def subscribed(self) -> bool:
        """Whether anything is subscribed (as redis-py's ``PubSub.subscribed``)."""
        return any(self._wanted.values())

    @property
    def classic(self) -> bool:
        """Whether any channel or pattern is subscribed (they share the classic connection)."""
        return bool(self._wanted["channel"] or self._wanted["pattern"])

    def handler_for(self, item: Mapping[str, Any]) -> Handler | None:
        """The handler of a published message's channel (or pattern), if it has one."""
        family = MESSAGE_KINDS.get(item["type"])
        if family is None:
            return None
        name = item["pattern"] if family == "pattern" else item["channel"]
        return self._wanted[family].get(name)

    def unhandled(self) -> list[tuple[Family, bytes]]:
        """Every subscription without a handler (``PubSub.run`` needs one for each)."""
        return [(f, n) for f, names in self._wanted.items() for n, h in names.items() if h is None]

    def view(
        self, family: Family, decode: Callable[[bytes], Any] | None
    ) -> dict[Any, Handler | None]:
        """``family``'s names -> handlers as redis-py shows them (a new dictionary): names
        decoded by ``decode`` (the client's ``decode_responses``), else bytes."""
        wanted = self._wanted[family]
        if decode is None:
            return dict(wanted)
        return {decode(name): handler for name, handler in wanted.items()}


_MISSING: Any = object()
