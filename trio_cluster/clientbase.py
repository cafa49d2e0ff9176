"""What ``Client`` and ``ClusterClient`` share beyond their routing: the lifetime of their
nursery (:class:`~trio_cluster.lifetime.NurseryOwner`), pub/sub, credential rotation,
maintenance statistics, response callbacks and the ``transaction`` helper."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from redis.exceptions import WatchError

from .commands import ReplyParser
from .credentials import CredentialManager
from .lifetime import NurseryOwner
from .maint import MaintenanceManager
from .pubsub import PubSub, PubSubRegistry, PubSubStats
from .watchdog import Watchdog

__all__ = ["ClientBase"]


class ClientBase(NurseryOwner):
    """The parts of a client that do not depend on how commands are routed."""

    _credentials: CredentialManager | None
    #: redis-py's typing marker: its command methods are typed as awaitables returning the
    #: precise reply type (``await r.get(k)`` is ``bytes | str | None``), as for
    #: ``redis.asyncio`` clients.
    _is_async_client: Literal[True] = True
    # redis-py's command protocol declares it (an abstract member for type checkers);
    # nothing here dispatches redis-py events.
    _event_dispatcher: Any = None
    _pubsub_registry: PubSubRegistry
    _replies: ReplyParser
    _watchdog: Watchdog

    def _maintenance_managers(self) -> list[MaintenanceManager]:
        """The maintenance-notification managers of every pool the client has."""
        raise NotImplementedError

    def pipeline(self, transaction: bool = False) -> Any:
        """Queue commands, sent together (``transaction=True``: MULTI/EXEC)."""
        raise NotImplementedError

    def pubsub(self, **options: Any) -> PubSub:
        """Subscriptions on dedicated connections, outside the command pool (see
        ``docs/pubsub.md``): ``async with client.pubsub() as p: await p.subscribe("ch")``."""
        options.setdefault("registry", self._pubsub_registry)
        return PubSub(self, **options)  # type: ignore[arg-type]

    def pubsub_stats(self) -> PubSubStats:
        """Pub/sub connections (open, bound) and their counters, over every PubSub."""
        return self._pubsub_registry.stats()

    def maintenance_stats(self) -> dict[str, Any]:
        """Handoffs and re-authentications done and failed, relaxed connections, notifications
        received by type (summed over nodes), and commands timed out by the watchdog."""
        managers = self._maintenance_managers()
        received: Counter[str] = Counter()
        for manager in managers:
            received.update(manager.received)
        creds = self._credentials
        return {
            "handoffs": sum(m.handoffs for m in managers),
            "handoff_failures": sum(m.handoff_failures for m in managers),
            "longest_unusable": max((m.longest_unusable for m in managers), default=0.0),
            "relaxed_connections": sum(m.relaxed_connections() for m in managers),
            "notifications": dict(received),
            "malformed_notifications": sum(m.malformed for m in managers),
            "reauths": creds.reauths if creds else 0,
            "reauth_failures": creds.reauth_failures if creds else 0,
            "credential_rotations": creds.rotations if creds else 0,
            "stale_credential_connections": creds.stale_connections() if creds else 0,
            "timeouts_by_watchdog": self._watchdog.expired,
        }

    def rotate_credentials(self, username: str | None, password: str) -> None:
        """Switch to new credentials now: new connections use them, pooled ones
        re-authenticate in the background.  (A streaming provider does this by itself.)"""
        if self._credentials is None:
            raise RuntimeError("give credentials= at construction to rotate them later")
        self._credentials.rotate((username, password))

    def set_response_callback(self, command: str, callback: Callable[..., Any]) -> None:
        """Replace how one command's reply is parsed (as in redis-py)."""
        self._replies.set_callback(command, callback)

    async def transaction(self, func: Any, *watches: Any, value_from_callable: bool = False) -> Any:
        """Run ``await func(pipe)`` under WATCH ``watches`` until EXEC succeeds, as redis-py's
        ``transaction`` (on a cluster, the keys must share a slot; a slot that moves
        meanwhile is one more retry)."""
        async with self.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if watches:
                        await pipe.watch(*watches)
                    result = await func(pipe)
                    executed = await pipe.execute()
                    return result if value_from_callable else executed
                except WatchError:
                    continue
