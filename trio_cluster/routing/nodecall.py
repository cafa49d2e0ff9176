"""The one path of a call to a node: breaker check, pool get, execute, the outcome told to
the breaker, release.  Single commands (:func:`call`), a cluster client's pipelines and
transactions (:func:`call_batch`, through :class:`NodeConnection`) and its watched connection
(:func:`take_connection`, then :func:`accounted` around each command) all take it; the rules
that classify an error (did the server run it? does it count against the node?) live in
:mod:`trio_cluster.errors`.

A blocking command (BLPOP...) goes through :func:`run_blocking`, so that cancelling it never
loses what it took.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import trio

from ..config import ConnectionConfig
from ..conn.connection import Connection, mark_unsent
from ..conn.dialer import Dialer
from ..errors import NETWORK_ERRORS, PoolClosedError, ReadTimeoutError, ScriptTimeoutError
from ..hooks import CURRENT_CALL
from ..pooling.breaker import BreakerState, CircuitOpenError
from ..pooling.pool import Pool
from ..wire.commands import DATA_TAKING_COMMANDS
from .slotmap import Node
from .specs import CommandSpec, script_wait

__all__ = [
    "NodeConnection",
    "accounted",
    "call",
    "call_batch",
    "run_blocking",
    "run_script",
    "take_connection",
]

logger = logging.getLogger(__name__)


async def take_connection(node: Node) -> Connection:
    """A connection of ``node``'s pool, once its breaker lets the call through.

    An open breaker raises ``CircuitOpenError`` (marked unsent); a closed pool (the node left
    the map) is raised marked unsent; a failed dial counts against the node; a busy pool or a
    cancellation says nothing about it.  The caller gives the connection back to
    ``node.pool`` and reports the call's outcome with :func:`accounted`.
    """
    breaker = node.breaker
    try:
        breaker.before_call()
    except CircuitOpenError:
        # Still a checkpoint: a loop of calls to a known-bad node lets the others run.
        await trio.lowlevel.checkpoint()
        raise
    pool = node.pool
    try:
        conn = pool.get_idle()  # the common case, without a coroutine
        if conn is None:
            conn = await pool.get()
        interval = conn.config.health_check_interval
        if interval and trio.current_time() - conn.last_used_at > interval:
            conn = await _health_checked(pool, conn)
        return conn
    except BaseException as error:
        breaker.record_get_failure(error)
        if isinstance(error, PoolClosedError):
            raise mark_unsent(error) from None  # the node left the map: nothing was sent
        raise


async def _health_checked(pool: Pool[Connection], conn: Connection) -> Connection:
    """redis-py's ``health_check_interval``: a connection idle that long is sent a ``PING``
    first; one that fails it is closed and another taken from the pool (once)."""
    try:
        await conn.execute(("PING",))
        return conn
    except NETWORK_ERRORS:
        conn.broken = True  # closed by the pool
        pool.put(conn)
    except BaseException:
        pool.put(conn)
        raise
    return await pool.get()


@contextmanager
def accounted(node: Node) -> Iterator[None]:
    """Tell ``node``'s breaker how the call inside the block went
    (:meth:`CircuitBreaker.record`)."""
    try:
        yield
    except BaseException as error:
        node.breaker.record(error)
        raise
    node.breaker.record(None)


class NodeConnection:
    """:func:`take_connection` for one call, its outcome told to the breaker, and the
    connection given back.  A class, not a generator: it is on every command's path."""

    __slots__ = ("_conn", "_node")

    def __init__(self, node: Node) -> None:
        self._node = node
        self._conn: Connection | None = None

    async def __aenter__(self) -> Connection:
        self._conn = await take_connection(self._node)
        return self._conn

    async def __aexit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: object
    ) -> None:
        node = self._node
        try:
            node.breaker.record(error)
        finally:
            assert self._conn is not None
            node.pool.put(self._conn)


async def call(
    node: Node,
    args: tuple[Any, ...],
    spec: CommandSpec,
    dialer: Dialer,
    *,
    asking: bool = False,
    measure: bool = False,
) -> Any:
    """One attempt of one command (described by ``spec``) on one node; errors raised typed.

    With automatic pipelining the command joins the node's shared connection (its batch
    consults the breaker) unless it may not share one, follows an ASK, is measured, or the
    breaker is not closed (then the breaker's answer, or its single probe, is this call's
    own).  Otherwise: :func:`take_connection`, the command (``asking``: preceded by ASKING;
    a blocking one through :func:`run_blocking`, which unblocks it with a helper from
    ``dialer`` if cancelled), the outcome told to the breaker, the connection given back.
    ``measure``: update the node's latency (lowest-latency reads).
    """
    current = CURRENT_CALL.get()
    if current is not None:
        current.server = node.address
    pipeliner = node.pool.autopipeliner
    breaker = node.breaker
    if (
        pipeliner is not None
        and spec.shares_connection
        and not (asking or measure)
        and breaker.state is BreakerState.CLOSED
    ):
        return await pipeliner.execute(args)
    conn = await take_connection(node)
    timed = True  # whether the reply's time says something about the node
    try:
        if asking:
            reply = (await conn.execute_many([("ASKING",), args]))[1]
            if isinstance(reply, Exception):
                raise reply
        elif spec.blocking is not None and (blocks := spec.blocks(args)) is not None:
            timed = False
            reply = await run_blocking(conn, args, blocks, dialer)
        elif spec.script:
            timed = False
            reply = await run_script(conn, args)
        else:
            reply = await conn.execute(args)
    except ScriptTimeoutError:
        breaker.abandon_probe()  # the script's length, not the node's health
        raise
    except BaseException as error:
        breaker.record(error)
        raise
    finally:
        node.pool.put(conn)
    # Not under a maintenance notice either: its relaxed timeouts expect slow replies.
    if timed and conn.relaxed_until <= conn.sent_at:
        breaker.record_reply(conn.sent_at)
    else:
        breaker.record(None)
    if measure:
        now = trio.current_time()
        node.record_latency(now - conn.sent_at, now)
    return reply


async def call_batch(
    node: Node, commands: Sequence[Sequence[Any]], *, blocks_for: float = 0.0
) -> list[Any]:
    """Send ``commands`` to one node in one write; replies in order, errors as values.

    ``blocks_for``: seconds beyond the read timeout the server may take (the batch's blocking
    commands and scripts, ``specs.batch_wait``).  A failure of the node itself (breaker open,
    pool closed or busy, dial or link failure) becomes that error for every command of the
    batch.
    """
    try:
        async with NodeConnection(node) as conn:
            return await conn.execute_many(commands, blocks_for=blocks_for)
    except NETWORK_ERRORS as error:
        return [error] * len(commands)


async def run_blocking(
    conn: Connection, args: tuple[Any, ...], blocks: float, dialer: Dialer
) -> Any:
    """Run a blocking command so that cancelling it never loses what it took.

    If the caller is cancelled while the server holds the command, the command is ended with
    CLIENT UNBLOCK from a second connection, opened by ``dialer`` (the newest credentials:
    ``conn``'s own may have been rotated and deleted since it was opened), before the
    cancellation proceeds.  If the server
    had already served it (an element was popped), the result is returned: the operation
    completed, and dropping its reply would lose the element.
    """
    try:
        return await conn.execute(args, blocks_for=blocks)
    except trio.Cancelled:
        if conn.owed_replies != 1 or conn.broken or conn.client_id is None:
            raise
        with trio.CancelScope(shield=True) as cleanup:
            cleanup.deadline = trio.current_time() + _cleanup_budget(conn.config)
            reply = await _unblock(conn, dialer)
        if cleanup.cancelled_caught:
            conn.broken = True
            logger.warning(
                "could not unblock a cancelled %s on %s; its connection is closed and an "
                "element it popped, if any, is lost",
                args[0],
                conn.config.address,
            )
            raise
        if reply is None or isinstance(reply, Exception) or not _takes_data(args[0]):
            raise
        return reply


async def run_script(conn: Connection, args: tuple[Any, ...]) -> Any:
    """Run a script or function: its reply waits ``script_timeout`` (no bound by default)
    instead of the read timeout, and running past it raises :class:`ScriptTimeoutError`
    (the connection, which still owes the reply, is closed)."""
    try:
        return await conn.execute(args, blocks_for=script_wait(conn.config))
    except ReadTimeoutError:
        limit = conn.config.script_timeout
        message = (
            f"{args[0]} on {conn.config.address} ran longer than script_timeout ({limit} s); "
            "the server may still be running it (SCRIPT KILL or FUNCTION KILL stops it)"
        )
    raise ScriptTimeoutError(message)


async def _unblock(conn: Connection, dialer: Dialer) -> Any:
    # The helper goes where ``conn`` is (a handoff may have moved the dialer on meanwhile).
    address = (conn.config.host, conn.config.port)
    helper = await dialer.open(address, maint_notifications="disabled")
    try:
        await helper.execute(["CLIENT", "UNBLOCK", conn.client_id or 0])
    finally:
        await helper.aclose()
    return await conn.read_owed_reply()


def _takes_data(name: str) -> bool:
    return name.upper() in DATA_TAKING_COMMANDS


def _cleanup_budget(config: ConnectionConfig) -> float:
    parts = (config.connect_timeout, config.write_timeout, config.read_timeout)
    return sum(p if p is not None else 5.0 for p in parts)
