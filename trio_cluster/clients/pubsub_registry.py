"""The book of a client's dedicated pub/sub connections: the bound on how many may be open
at once (:class:`PubSubRegistry`, one per client, shared by all its PubSubs) and the
counters of what happened to them (:class:`PubSubStats`), kept per PubSub and per client."""

from __future__ import annotations

from typing import Literal

import attrs
from redis import exceptions as rex

__all__ = ["CounterName", "PubSubLimitError", "PubSubRegistry", "PubSubStats", "Tally"]

CounterName = Literal[
    "connects",
    "connect_errors",
    "disconnects",
    "gaps",
    "moved",
    "slot_moves",
    "messages",
    "limit_rejections",
]


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

    def add(self, name: CounterName, amount: int = 1) -> None:
        setattr(self, name, getattr(self, name) + amount)

    def stats(self, max_connections: int, open_connections: int) -> PubSubStats:
        return PubSubStats(
            max_connections=max_connections,
            open_connections=open_connections,
            **attrs.asdict(self),
        )


class PubSubRegistry:
    """A client's book of dedicated pub/sub connections: the bound and the counters.

    One per client, shared by all its PubSub objects.  A slot is taken when a connection is
    about to be opened and given back when it is closed; a connection being re-established
    after a failure gives its slot back first, so recovery never trips the bound on its own.
    """

    def __init__(self, max_connections: int = 64) -> None:
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(f"max_pubsub_connections must be an int >= 1; got {max_connections!r}")
        self.max_connections = max_connections
        self.open = 0
        self.counters = _Counters()

    def __repr__(self) -> str:
        return f"<PubSubRegistry open={self.open} max_connections={self.max_connections}>"

    def check(self, extra: int) -> None:
        """Raise :class:`PubSubLimitError` unless ``extra`` more connections fit."""
        if self.open + extra > self.max_connections:
            self.counters.add("limit_rejections")
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
        return self.counters.stats(self.max_connections, self.open)


class Tally:
    """One PubSub's side of the registry: its own counters, each added to the client's too,
    and the bound, a refusal counted in both."""

    def __init__(self, registry: PubSubRegistry) -> None:
        self.registry = registry
        self._own = _Counters()

    def add(self, name: CounterName, amount: int = 1) -> None:
        """Count ``amount`` more of ``name``, for this PubSub and for the client."""
        self._own.add(name, amount)
        self.registry.counters.add(name, amount)

    def check(self, extra: int) -> None:
        """:meth:`PubSubRegistry.check` (which counts a refusal for the client), a refusal
        counted for this PubSub too."""
        try:
            self.registry.check(extra)
        except PubSubLimitError:
            self._own.add("limit_rejections")
            raise

    def acquire(self) -> None:
        """:meth:`PubSubRegistry.acquire`, a refusal counted for this PubSub too."""
        self.check(1)
        self.registry.acquire()

    def release(self) -> None:
        """:meth:`PubSubRegistry.release`."""
        self.registry.release()

    def stats(self, open_connections: int) -> PubSubStats:
        """This PubSub's counters, with its own open connections."""
        return self._own.stats(self.registry.max_connections, open_connections)
