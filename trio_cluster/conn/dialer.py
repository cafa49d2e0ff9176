"""Opening connections the way their client wants them: the one place a client opens one.

Every connection a client opens comes from a ``Dialer``: the pools' connections, the one-off
ones (topology fetch, pub/sub links, the ``CLIENT UNBLOCK`` helper, MONITOR) and the new stream
of a maintenance handoff.  Each gets the newest credentials and the client's TLS settings and
timeouts; a caller changes only what it names (``address``, ``maint_notifications``...).  A
pool's connections also get the client's watchdog and their node's maintenance-notification
handler.  One ``Dialer`` per node, holding the node's current connection settings (a MOVING
notification may point them at a new endpoint), and one more per cluster client for one-off
connections to any node.

It sits below the pool (the pool's ``dial`` is a dialer) and knows nothing above it: the
credentials and the notification handler come in as the small protocols below, so wiring a
node is a straight line (``routing.nodes``), with no cycle and nothing patched in afterwards.
"""

from __future__ import annotations

import errno
import logging
import ssl
import time
from typing import Any, Protocol

import attrs
from redis import exceptions as rex

from ..config import ConnectionConfig
from ..hooks import Hooks
from ..wire.protocol import PushFrame
from .connection import Connection
from .watchdog import Watchdog

__all__ = ["CurrentCredentials", "Dialer", "PushHandlerOwner"]

logger = logging.getLogger(__name__)


class CurrentCredentials(Protocol):
    """Where a new connection's credentials come from (the client's credential manager)."""

    async def for_new_connection(self) -> tuple[tuple[str | None, str] | None, int]:
        """The ``(username, password)`` a new connection must use (None: the configured
        ones), and their version."""
        ...


class PushHandlerOwner(Protocol):
    """What handles a node's maintenance notifications (``jobs.maint.MaintNotices``)."""

    @property
    def disabled(self) -> bool:
        """Whether the node turned out to have no notifications (nothing to hand over)."""
        ...

    def on_push(self, conn: Connection, frame: PushFrame) -> None:
        """Called by a connection for each push frame it reads."""
        ...

    def stand_down(self) -> None:
        """The server has no notifications (``auto`` mode found out): stop."""
        ...


class Dialer:
    """Opens connections with the newest credentials; as a callable, the ``dial`` of a pool.

    Args:
        config: how connections reach and greet the node (credentials aside).
        watchdog: given to the pool's connections, which it bounds.
        credentials: the newest credentials (None: those in ``config``).
        notices: the node's maintenance-notification handler, for the pool's connections.
    """

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        watchdog: Watchdog | None,
        credentials: CurrentCredentials | None,
        notices: PushHandlerOwner | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        #: Where new connections go (a MOVING notification may change it) and how they greet.
        self.config = config
        self.watchdog = watchdog
        self.credentials = credentials
        self.notices = notices
        #: The client's command hooks, told of every dial (``after_dial``).
        self.hooks = hooks

    def move_to(self, endpoint: tuple[str, int]) -> None:
        """New connections go to ``endpoint`` from now on (a MOVING notification)."""
        self.config = attrs.evolve(self.config, host=endpoint[0], port=endpoint[1])

    async def settings(
        self, address: tuple[str, int] | None = None, **overrides: Any
    ) -> tuple[ConnectionConfig, int]:
        """The configuration a new connection to ``address`` (default: this node's current
        endpoint) would use, with the newest credentials, and the credentials' version."""
        config = self.config
        if address is not None:
            overrides = {"host": address[0], "port": address[1], **overrides}
        if overrides:
            config = attrs.evolve(config, **overrides)
        version = 0
        if self.credentials is not None:
            credentials, version = await self.credentials.for_new_connection()
            if credentials is not None:
                config = attrs.evolve(config, username=credentials[0], password=credentials[1])
        return config, version

    async def open(self, address: tuple[str, int] | None = None, **overrides: Any) -> Connection:
        """A connection to ``address`` (default: this node's current endpoint) outside the
        pool: the newest credentials, the client's TLS and timeouts, ``overrides`` (fields of
        :class:`~trio_cluster.config.ConnectionConfig`) applied.  The caller closes it."""
        config, version = await self.settings(address, **overrides)
        started = time.perf_counter()
        try:
            conn = await Connection.open(config)
        except rex.ConnectionError as error:
            failure = _with_cause(error)
            self._told(config, started, failure)
            raise failure from error.__cause__
        except Exception as error:
            self._told(config, started, error)
            raise
        self._told(config, started, None)
        conn.credentials_version = version
        return conn

    def _told(self, config: ConnectionConfig, started: float, error: Exception | None) -> None:
        hooks = self.hooks
        if hooks:
            hooks.after_dial((config.host, config.port), time.perf_counter() - started, error)

    async def handoff(self, conn: Connection, endpoint: tuple[str, int]) -> None:
        """Move ``conn`` (owned by the caller, UNUSABLE) to ``endpoint``: a new connection
        opened by :meth:`open` like every other one (the newest credentials, the client's TLS
        and timeouts), whose stream :meth:`Connection.reconnect` swaps in."""
        await conn.reconnect(lambda: self.open(endpoint))

    async def __call__(self) -> Connection:
        """A new connection for the pool (the pool's ``dial``)."""
        conn = await self.open()
        conn.watchdog = self.watchdog
        notices = self.notices
        if notices is not None and not notices.disabled:
            if conn.config.maint_notifications == "auto" and not conn.maint_notifications:
                # The server has no maintenance notifications: stop asking, quietly and once
                # per node (never a log line per connection), and take the feature off the
                # pool's hot path.
                self.config = attrs.evolve(self.config, maint_notifications="disabled")
                notices.stand_down()
                logger.debug("%s has no maintenance notifications", conn.config.address)
            else:
                conn.on_push = notices.on_push
        return conn


def _socket_causes(error: BaseException) -> list[OSError]:
    """The socket errors (with an errno) at the root of a failed connect.  TLS errors are
    OSErrors too (a certificate failure carries errno 1, EPERM), but they say what they are
    in their own message: not socket causes."""
    found: list[OSError] = []
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if (
            isinstance(current, OSError)
            and not isinstance(current, ssl.SSLError)
            and current.errno is not None
        ):
            found.append(current)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(reversed(current.exceptions))
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return found


def _with_cause(error: rex.ConnectionError) -> rex.ConnectionError:
    """``error`` with the root socket error named in its message: trio says only "all
    attempts to connect failed" and keeps ECONNREFUSED, EHOSTUNREACH... in a group beneath."""
    causes = _socket_causes(error)
    if not causes:
        return error
    named = sorted({f"{errno.errorcode.get(c.errno or 0, c.errno)} ({c.strerror})" for c in causes})
    better = type(error)(f"{error}: {', '.join(named)}")
    better.__dict__.update(error.__dict__)  # keeps marks such as "the command was not sent"
    return better
