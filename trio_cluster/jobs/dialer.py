"""Opening connections the way their client wants them: the one place a connection is opened.

Every connection a client opens comes from its ``Dialer``: the pool's connections, the
one-off ones (topology fetch, pub/sub links, the ``CLIENT UNBLOCK`` helper, MONITOR) and the
new stream of a maintenance handoff.  Each gets the newest credentials from the credential
manager and the client's TLS settings and timeouts; a caller changes only what it names
(``address``, ``maint_notifications``...).  A pool's connections also get the client's
watchdog and maintenance-notification handler.  One ``Dialer`` per pool (per node): it holds
the node's current connection settings, which a MOVING notification may point at a new
endpoint.  Shared by ``Client`` and ``ClusterClient`` so both behave the same.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from typing import Any

import attrs
from redis import exceptions as rex

from ..config import ConnectionConfig
from ..conn.connection import Connection
from ..conn.watchdog import Watchdog
from ..pooling.pool import Pool
from .credentials import CredentialManager
from .maint import MaintenanceManager, MaintNotificationsOptions

__all__ = ["Dialer"]

logger = logging.getLogger("trio_cluster.dialer")


class Dialer:
    """The ``dial`` callable of one pool."""

    def __init__(
        self,
        config: ConnectionConfig,
        *,
        watchdog: Watchdog | None,
        credentials: CredentialManager | None,
    ) -> None:
        self.config = config
        self.watchdog = watchdog
        self.credentials = credentials
        self.maint: MaintenanceManager | None = None

    def attach(
        self,
        pool: Pool[Connection],
        maint: MaintNotificationsOptions,
        on_smigrated: Callable[[], None] | None = None,
    ) -> None:
        """Watch ``pool`` for credential rotations and maintenance notifications."""
        if self.credentials is not None:
            self.credentials.watch(pool)
        if maint.mode != "disabled":
            self.maint = MaintenanceManager(maint, pool, self, on_smigrated=on_smigrated)

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
        try:
            conn = await Connection.open(config)
        except rex.ConnectionError as error:
            raise _with_cause(error) from error.__cause__
        conn.credentials_version = version
        return conn

    async def handoff(self, conn: Connection, endpoint: tuple[str, int]) -> None:
        """Move ``conn`` (owned by the caller, UNUSABLE) to ``endpoint``: a new connection
        opened by :meth:`open` like every other one (the newest credentials, the client's TLS
        and timeouts), whose stream :meth:`Connection.reconnect` swaps in."""
        await conn.reconnect(lambda: self.open(endpoint))

    async def __call__(self) -> Connection:
        """A new connection for the pool (the pool's ``dial``)."""
        conn = await self.open()
        conn.watchdog = self.watchdog
        maint = self.maint
        if maint is not None and not maint.disabled:
            if conn.config.maint_notifications == "auto" and not conn.maint_notifications:
                # The server has no maintenance notifications: stop asking, quietly and once
                # per node (never a log line per connection), and take the feature off the
                # pool's hot path.
                self.config = attrs.evolve(self.config, maint_notifications="disabled")
                maint.stand_down()
                logger.debug("%s has no maintenance notifications", conn.config.address)
            else:
                conn.on_push = maint.on_push
        return conn


def _socket_causes(error: BaseException) -> list[OSError]:
    """The socket errors (with an errno) at the root of a failed connect."""
    found: list[OSError] = []
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
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
