"""Credentials that change while the client runs, and keeping every connection on the newest.

A source of credentials is one of:

* a static ``(username, password)`` pair (``username`` may be None for the default user);
* a callable, sync or async, returning such a pair: asked at every new connection;
* a streaming provider: an async iterable the client consumes in its nursery, yielding new
  pairs over time (token rotation).

When new credentials arrive, every pooled connection re-authenticates in the background:
idle ones at once, in-use ones right after their command (the job asks the pool to claim the
connection when it comes back, before any caller can have it; see ``claims.py``).  A
connection takes part only while its job holds it (state UNUSABLE), so callers never see a
half-authenticated connection.  AUTH failing
(WRONGPASS, a timeout) closes the connection: none stays on stale credentials.  New
connections always use the newest credentials.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, TypeAlias

import attrs
import trio

from ..conn.connection import Connection
from ..conn.redact import redact
from ..conn.state import ConnState
from ..pooling.pool import Pool
from .claims import Claims

__all__ = ["CredentialManager", "CredentialSource", "Credentials"]

logger = logging.getLogger(__name__)

Credentials: TypeAlias = tuple[str | None, str]
CredentialSource: TypeAlias = (
    Credentials | Callable[[], Credentials | Awaitable[Credentials]] | AsyncIterable[Credentials]
)


class CredentialManager:
    """Owns the current credentials and the re-authentication jobs of the pools it watches."""

    def __init__(self, source: CredentialSource, *, timeout: float = 5.0) -> None:
        self._source = source
        self._timeout = timeout
        self._current: Credentials | None = None
        self.version = 0
        self._pools: list[Pool[Connection]] = []
        #: Re-authentication jobs on pooled connections.
        self._claims = Claims(self._reauth, wait_limit=timeout * 4)
        #: Counters, for stats.
        self.reauths = 0
        self.reauth_failures = 0
        self.rotations = 0
        if isinstance(source, tuple):
            self._current = _check(source)
            self.version = 1

    def __repr__(self) -> str:  # never the secret
        user = self._current[0] if self._current else None
        return f"<CredentialManager user={user!r} version={self.version}>"

    @property
    def streaming(self) -> bool:
        """Whether the source is an async iterable consumed in the background."""
        return isinstance(self._source, AsyncIterable)

    async def start(self, nursery: trio.Nursery) -> None:
        """Begin: for a streaming source, wait for its first credentials, then keep consuming."""
        self._claims.start(nursery)
        if self.streaming:
            await nursery.start(self._consume)

    async def _consume(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert isinstance(self._source, AsyncIterable)
        started = False
        async for credentials in self._source:
            self.rotate(credentials)
            if not started:
                started = True
                task_status.started()
        if not started:
            raise ValueError("the credentials provider ended without yielding credentials")

    async def for_new_connection(self) -> tuple[Credentials | None, int]:
        """The credentials a new connection must use, and their version."""
        source = self._source
        if callable(source) and not isinstance(source, tuple):
            result = source()
            if inspect.isawaitable(result):
                result = await result
            credentials = _check(result)
            if credentials != self._current:
                self._current = credentials
                self.version += 1
            return credentials, self.version
        return self._current, self.version

    def watch(self, pool: Pool[Connection]) -> None:
        """Keep ``pool``'s connections on the current credentials: none is handed out on
        older ones."""
        self._pools.append(pool)
        self._claims.watch(pool, self._is_stale)

    def rotate(self, credentials: Credentials) -> None:
        """New credentials: new connections use them at once; existing ones re-authenticate
        in the background (idle ones now, in-use ones when released)."""
        self._current = _check(credentials)
        self.version += 1
        self.rotations += 1
        for pool in self._pools:
            for conn in pool.live_connections():
                self._claims.schedule(pool, conn)

    def stale_connections(self) -> int:
        """How many open connections still use older credentials."""
        return sum(
            1
            for pool in self._pools
            for conn in pool.live_connections()
            if conn.credentials_version < self.version and conn.state.state is not ConnState.CLOSED
        )

    def _is_stale(self, conn: Connection) -> bool:
        return conn.credentials_version < self.version

    # --- the job -----------------------------------------------------------------------------

    async def _reauth(self, conn: Connection) -> None:
        """``conn`` is claimed: AUTH with the newest credentials (broken if that fails)."""
        while conn.credentials_version < self.version and self._current is not None:
            version = self.version
            username, password = self._current
            args: list[Any] = (
                ["AUTH", password] if username is None else ["AUTH", username, password]
            )
            with trio.move_on_after(self._timeout) as scope:
                try:
                    await conn.execute(args)
                except Exception as exc:
                    self.reauth_failures += 1
                    redact(exc, password)  # the connection masks only the password it had
                    logger.warning("re-authentication on %s failed: %s", conn.config.address, exc)
                    conn.broken = True
                    break
            if scope.cancelled_caught:
                self.reauth_failures += 1
                conn.broken = True
                break
            # The connection runs as these credentials now: its errors mask this password.
            conn.config = attrs.evolve(conn.config, username=username, password=password)
            conn.credentials_version = version
            self.reauths += 1


def _check(credentials: Any) -> Credentials:
    if (
        not isinstance(credentials, tuple)
        or len(credentials) != 2
        or not (credentials[0] is None or isinstance(credentials[0], str))
        or not isinstance(credentials[1], str)
    ):
        raise TypeError(
            "credentials must be a (username or None, password) pair of strings; got a "
            f"{type(credentials).__name__}"
        )
    return credentials
