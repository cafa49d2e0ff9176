"""The I/O a pool's decisions imply: dialling (with retries, and pacing after failures),
closing, draining.

:class:`Background` runs these as jobs in the pool's nursery. It keeps no record of the pool's
connections and never changes their state: it opens, closes and drains, counts what it did, and
reports each outcome through the callbacks the pool gives it (``dialled``, ``dial_failed``,
``closed``, ``drained``), where the pool takes the decision that follows. That boundary is what
lets the pool alone move its connections, and what lets this module be tested on its own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Generic

import trio
from redis import exceptions as rex

from ..conn.connection import mark_unsent
from ..errors import CertificateVerificationError, ConnectTimeoutError
from ..lifetime import start_soon
from .pooltypes import C, PoolOptions

__all__ = ["MIN_IDLE_RETRY_DELAY", "Background"]

logger = logging.getLogger(__name__)

# A close is a socket close (maybe a TLS goodbye); bound it so a stuck peer cannot hold up pool
# shutdown. It runs shielded, hence the explicit deadline.
_CLOSE_TIMEOUT = 5.0
#: After a dial has failed, wait this long before dialling again just to refill min_idle. Dials
#: for parked callers are not delayed: each caller deserves its own attempt.
MIN_IDLE_RETRY_DELAY = 1.0
#: Failures that another attempt cannot fix: wrong credentials, a certificate that does not
#: verify. (redis-py's AuthenticationError is a ConnectionError, hence the explicit list.)
_PERMANENT = (rex.AuthenticationError, CertificateVerificationError)
_TRANSIENT = (rex.ConnectionError, rex.TimeoutError, OSError)


class Background(Generic[C]):
    """The dials, closes and drains of one pool (see the module docstring).

    Args:
        dial: connects and handshakes; returns an IDLE connection.
        options: the pool's settings (``dial_retries``, ``dial_backoff``).
        node_name: for logs and errors.
        dial_timeout: bounds a whole dial, every attempt and back-off included (the client's
            connect timeout); None: only each attempt's own bounds apply.
        spawn: starts a job in the pool's nursery.
        dialled: a dial succeeded: the pool takes the connection.
        dial_failed: a dial failed for good (retries spent): the pool decides who hears it.
        closed: a close finished (capacity is free again).
        drained: a drain finished, with whether the connection is fit for reuse.
    """

    def __init__(
        self,
        dial: Callable[[], Awaitable[C]],
        options: PoolOptions,
        node_name: str,
        *,
        dial_timeout: float | None,
        spawn: Callable[..., None],
        dialled: Callable[[C], None],
        dial_failed: Callable[[Exception], None],
        closed: Callable[[], None],
        drained: Callable[[C, bool], None],
    ) -> None:
        self._dial = dial
        self._options = options
        self._node_name = node_name
        self._dial_timeout = dial_timeout
        self._spawn = spawn
        self._dialled = dialled
        self._dial_failed = dial_failed
        self._closed = closed
        self._drained = drained
        #: Dials running now, dial attempts so far (each retry counts), and failed attempts.
        self.dialing = 0
        self.dials = 0
        self.dial_errors = 0
        #: Connections being closed (removed from the pool, socket not yet closed).
        self.closing: dict[int, C] = {}
        self._failures_in_row = 0
        self._last_failure = -math.inf

    # --- dials -------------------------------------------------------------------------------

    def fill_resumes_at(self) -> float:
        """When dialling only to refill ``min_idle`` may start again (after a failed dial)."""
        return self._last_failure + MIN_IDLE_RETRY_DELAY

    def dial(self, count: int) -> None:
        """Start ``count`` dials, each reporting to ``dialled`` or ``dial_failed``."""
        for _ in range(count):
            self.dialing += 1
            self._spawn(self._dial_one)

    async def _dial_one(self) -> None:
        try:
            try:
                conn = await self.dial_with_retries()
            finally:
                self.dialing -= 1
        except Exception as exc:
            self._failed(exc)
            self._dial_failed(exc)
            return
        if self._failures_in_row:
            logger.info(
                "pool %s: dialling works again after %d failed dials",
                self._node_name,
                self._failures_in_row,
            )
            self._failures_in_row = 0
        self._dialled(conn)

    async def dial_with_retries(self) -> C:
        """Dial, retrying network errors ``dial_retries`` times with back-off, all within
        ``dial_timeout``. Wrong credentials and certificates that fail verification are not
        retried: another attempt would fail the same way."""
        options = self._options
        timeout = self._dial_timeout
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        attempt = 0
        while True:
            self.dials += 1
            try:
                with trio.move_on_at(deadline) as scope:
                    return await self._dial()
            except Exception as exc:
                self.dial_errors += 1
                pause = options.dial_backoff * 2**attempt
                if (
                    isinstance(exc, _PERMANENT)
                    or not isinstance(exc, _TRANSIENT)
                    or attempt >= options.dial_retries
                    or trio.current_time() + pause >= deadline
                ):
                    raise
            if scope.cancelled_caught:  # a retry cut short by the whole dial's deadline
                self.dial_errors += 1
                raise mark_unsent(
                    ConnectTimeoutError(
                        f"dialling {self._node_name} took longer than {timeout} s"
                        f" ({attempt + 1} attempts)"
                    )
                )
            await trio.sleep(pause)
            attempt += 1

    def _failed(self, exc: Exception) -> None:
        """Log a failed dial (the first of a run; the rest at debug: an outage fails every
        dial) and pace the refilling of ``min_idle``."""
        self._failures_in_row += 1
        self._last_failure = trio.current_time()
        level = logging.WARNING if self._failures_in_row == 1 else logging.DEBUG
        logger.log(level, "pool %s: dial failed: %s: %s", self._node_name, type(exc).__name__, exc)

    # --- closing -------------------------------------------------------------------------------

    def close(self, conn: C) -> None:
        """Close a connection the pool has removed, as a job; ``closed`` follows."""
        self.closing[conn.id] = conn
        self._spawn(self._close_one, conn)

    async def _close_one(self, conn: C) -> None:
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_TIMEOUT):
                await conn.aclose()
        except Exception as exc:
            logger.debug("pool %s: closing connection %d: %s", self._node_name, conn.id, exc)
        finally:
            del self.closing[conn.id]
            self._closed()

    async def close_all(self, conns: list[C]) -> None:
        """Close ``conns`` concurrently and wait for them, shielded (closing the pool)."""
        if not conns:
            return
        for conn in conns:
            self.closing[conn.id] = conn
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for conn in conns:
                    start_soon(nursery, self._close_one, conn)

    # --- draining ------------------------------------------------------------------------------

    def drain(self, conn: C) -> None:
        """Read the replies ``conn`` still owes, as a job; ``drained`` follows."""
        self._spawn(self._drain_one, conn)

    async def _drain_one(self, conn: C) -> None:
        try:
            await conn.drain()
            ok = conn.owed_replies == 0 and not conn.broken
        except Exception as exc:
            logger.debug("pool %s: draining connection %d: %s", self._node_name, conn.id, exc)
            ok = False
        self._drained(conn, ok)
