"""Opening a pool's connections the way its client wants them.

One ``Dialer`` per pool (per node): it holds the node's current connection settings (a MOVING
notification may point them at a new endpoint), asks the credential manager for the newest
credentials, and attaches the client's watchdog and maintenance-notification handler to every
connection it opens.  Shared by ``Client`` and ``ClusterClient`` so both behave the same.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable

import attrs
from redis import exceptions as rex

from .config import ConnectionConfig
from .connection import Connection
from .credentials import CredentialManager
from .maint import MaintenanceManager, MaintNotificationsOptions
from .pool import Pool
from .watchdog import Watchdog

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
            self.maint = MaintenanceManager(
                maint, pool, lambda: self.config, self._set_config, on_smigrated=on_smigrated
            )

    def _set_config(self, config: ConnectionConfig) -> None:
        self.config = config

    async def __call__(self) -> Connection:
        config = self.config
        version = 0
        if self.credentials is not None:
            credentials, version = await self.credentials.for_new_connection()
            if credentials is not None:
                config = attrs.evolve(config, username=credentials[0], password=credentials[1])
        try:
            conn = await Connection.open(config)
        except rex.ConnectionError as error:
            raise _with_cause(error) from error.__cause__
        conn.watchdog = self.watchdog
        conn.credentials_version = version
        maint = self.maint
        if maint is not None and not maint.disabled:
            if config.maint_notifications == "auto" and not conn.maint_notifications:
                # The server has no maintenance notifications: stop asking, quietly and once
                # per node (never a log line per connection), and take the feature off the
                # pool's hot path.
                self.config = attrs.evolve(self.config, maint_notifications="disabled")
                maint.stand_down()
                logger.debug("%s has no maintenance notifications", config.address)
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
