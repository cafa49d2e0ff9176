"""Opening a pool's connections the way its client wants them.

One ``Dialer`` per pool (per node): it holds the node's current connection settings (a MOVING
notification may point them at a new endpoint), asks the credential manager for the newest
credentials, and attaches the client's watchdog and maintenance-notification handler to every
connection it opens.  Shared by ``Client`` and ``ClusterClient`` so both behave the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

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
        conn = await Connection.open(config)
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
