"""``Client``: one node behind one pool, with redis-py's command API.

``async with Client(host=..., port=...) as r:`` opens a nursery that holds the pool's background
work (min-idle filling, reaping, draining cancelled replies); leaving the block stops all of it
and closes every connection.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import Any

import trio
from redis.exceptions import ResponseError

from ..config import ConnectionConfig, RetryOptions, connection_options
from ..conn.connection import Connection
from ..conn.watchdog import Watchdog
from ..errors import AskError, MovedError
from ..hooks import Hooks, default_hooks
from ..jobs.credentials import CredentialManager, CredentialSource
from ..jobs.handoff import HandoffManager
from ..jobs.maint import MaintNotificationsOptions
from ..lifetime import raise_not_open
from ..pooling.breaker import BreakerOptions, CircuitBreaker
from ..pooling.pool import ConnectionInfo, Pool, PoolOptions, PoolStats
from ..redispy import AbstractRetry, AsyncCoreCommands
from ..routing.nodecall import call
from ..routing.nodes import NodeFactory
from ..routing.policy import Rule, classify
from ..routing.rules import CommandTable
from ..routing.specs import CommandSpec, CommandSpecs, batch_wait, script_wait
from ..wire.commands import pipeline_results, transaction_results
from ..wire.encoding import Encoding, prepare_args
from .clientbase import ClientBase
from .options import take_redis_py_options
from .pipelinebase import PipelineBase
from .pubsub import PubSubRegistry

__all__ = ["Client", "Pipeline"]

logger = logging.getLogger("trio_cluster.client")


# redis-py's own mixins disagree on command_info's signature once another base is added.
class Client(ClientBase, AsyncCoreCommands):  # type: ignore[misc]
    """A client for one Redis/Valkey node.

    Keyword arguments configure the connections (see
    :class:`~trio_cluster.config.ConnectionConfig`), ``pool`` the pool
    (:class:`~trio_cluster.pooling.pool.PoolOptions`) and ``breaker`` the node's circuit
    breaker (:class:`~trio_cluster.pooling.breaker.BreakerOptions`: a node that keeps failing
    is known bad, and commands fail at once until a probe readmits it).  ``protocol=None``
    speaks RESP3 and returns redis-py's default reply shapes; ``protocol=3`` returns RESP3
    shapes; ``protocol=2`` speaks RESP2.  Command methods take no ``timeout=``: wrap a call
    in ``trio.move_on_after``.  ``retry`` (``RetryOptions`` or a redis-py ``Retry``) sends
    reads and commands that provably never reached the server again; by default nothing
    is retried.  redis-py's other options (``max_connections``,
    ``single_connection_client``, ``ssl_*``, ``retry_on_timeout``...) are mapped by
    :mod:`trio_cluster.clients.options`.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        *,
        pool: PoolOptions | None = None,
        protocol: int | None = None,
        credentials: CredentialSource | None = None,
        maint_notifications: str | MaintNotificationsOptions = "auto",
        max_pubsub_connections: int = 64,
        breaker: BreakerOptions | None = None,
        retry: RetryOptions | AbstractRetry[Any] | None = None,
        **connection: Any,
    ) -> None:
        maint = (
            maint_notifications
            if isinstance(maint_notifications, MaintNotificationsOptions)
            else MaintNotificationsOptions(mode=maint_notifications)
        )
        owner = type(self).__name__
        connection = dict(connection)
        redis_py = take_redis_py_options(owner, connection, pool=pool, retry=retry, cluster=False)
        pool = redis_py.pool
        #: How commands are retried (``None``: not at all, the default): see ``RetryOptions``;
        #: only reads and commands that provably were not sent are ever sent again.
        self.retry = redis_py.retry
        connection = connection_options(owner, connection)
        self._encoding = Encoding.take_from(connection)
        config = ConnectionConfig(
            host=host,
            port=port,
            protocol=2 if protocol == 2 else 3,
            maint_notifications=maint.mode,
            moving_endpoint_type=maint.endpoint_type,
            **connection,
        )
        self.pool_options = pool if pool is not None else PoolOptions()
        self._watchdog = Watchdog()
        self._hooks = Hooks(default_hooks())
        self._db = config.db
        self._credentials = CredentialManager(credentials) if credentials is not None else None
        # One node, made as a cluster's nodes are (the one node factory).
        self._node = NodeFactory(
            config=config,
            pool=self.pool_options,
            breaker=breaker or BreakerOptions(),
            maint=maint,
            watchdog=self._watchdog,
            credentials=self._credentials,
            hooks=self._hooks,
        )((host, port))
        self._dialer = self._node.dialer
        self._pool: Pool[Connection] = self._node.pool
        #: The node's circuit breaker: once the node is known bad, commands fail at once
        #: (``CircuitOpenError``) until one probe succeeds (see ``BreakerOptions``).
        self.breaker: CircuitBreaker = self._node.breaker
        self._replies = self._encoding.reply_parser(protocol)
        self._specs = CommandSpecs(self._replies)
        self._errors: Counter[str] = Counter()
        self._shown_url: str | None = None
        self.pubsub_registry = PubSubRegistry(max_pubsub_connections)

    def __repr__(self) -> str:
        where = self._shown_url or self._dialer.config.address
        return f"<{type(self).__name__} {where} {self._pool!r}>"

    @property
    def config(self) -> ConnectionConfig:
        """How this client's connections reach and greet the node (credentials aside)."""
        return self._dialer.config

    # --- lifetime ----------------------------------------------------------------------------

    async def _start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self._watchdog.run)
        if self._credentials is not None:
            await self._credentials.start(nursery)
        await self._node.start(nursery)
        if self.retry is not None:
            # Which commands only read (so that one whose outcome is unknown may be sent
            # again) is the server's COMMAND table's say, as for a cluster client.
            reply = await call(self._node, ("COMMAND",), self._specs.get("COMMAND"), self._dialer)
            self._specs.install(CommandTable(reply))
        self._opened()

    async def _stop(self) -> None:
        await self._pool.aclose()
        self._closed()

    def _connection_config(self) -> ConnectionConfig:
        return self._dialer.config

    def _maintenance_managers(self) -> list[HandoffManager]:
        return [self._node.handoffs] if self._node.handoffs is not None else []

    async def aclose(self) -> None:
        """Close the pool: every connection, in use or not.  Prefer leaving ``async with``."""
        await self._pool.aclose()

    # --- observability -----------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters and connection counts."""
        return self._pool.stats()

    def connections(self) -> list[ConnectionInfo]:
        """Every connection of the pool: id, node, state, creation and last-use times."""
        return self._pool.connections()

    @property
    def pool(self) -> Pool[Connection]:
        """The pool (for hooks and advanced use)."""
        return self._pool

    # --- running commands --------------------------------------------------------------------

    def _route(
        self, spec: CommandSpec, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Awaitable[Any]:
        """Every command goes to the one node (:func:`~trio_cluster.routing.nodecall.call`),
        under the retry rules when ``retry`` is set."""
        if self.retry is None:
            return call(self._node, args, spec, self._dialer)
        return self._call_retrying(self.retry, spec, args)

    async def _call_retrying(
        self, retry: RetryOptions, spec: CommandSpec, args: tuple[Any, ...]
    ) -> Any:
        """The command, sent again after a failure that the cluster client's rule would
        retry (``routing.policy.classify``: a read whose outcome is unknown, or a command
        that provably never reached the server), up to ``retry.retries`` times, with its
        backoff."""
        server = spec.on_server(args)
        readonly = server is not None and server.readonly
        failures = 0
        while True:
            try:
                return await call(self._node, args, spec, self._dialer)
            except Exception as error:
                if failures >= retry.retries or classify(error, readonly) is not Rule.RETRY_AFTER:
                    raise
            await trio.sleep(retry.backoff(failures))
            failures += 1

    def _explain(self, error: Exception) -> None:
        hint_redirect(error)

    async def _get_connection(self) -> Connection:
        try:
            return await self._pool.get()
        except RuntimeError:
            if self._nursery is None:
                raise_not_open(self)
            raise

    # --- pipelines -----------------------------------------------------------------------------

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        """Queue commands and send them in one round trip, wrapped in MULTI/EXEC unless
        ``transaction=False`` (redis-py's ``Redis.pipeline()`` default: atomic).  Use
        ``watch()`` for optimistic locking (on a dedicated connection).  ``shard_hint`` is
        accepted and unused, as in redis-py."""
        return Pipeline(self, transaction)


class Pipeline(PipelineBase):
    """Commands queued on the client side, sent together by :meth:`execute`.

    Command methods queue and return the pipeline (do not await them).  After :meth:`watch`,
    commands run at once on the pipeline's own connection until :meth:`multi`.
    """

    def __init__(self, client: Client, transaction: bool) -> None:
        super().__init__(transaction, client._hooks)
        self._client = client

    async def _immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        assert self._conn is not None
        client = self._client
        spec = client._specs.queued(args, options)
        reply = await self._conn.execute(prepare_args(args, client._encoding))
        return client._replies.apply(spec.callbacks, reply, options)

    async def watch(self, *names: Any) -> bool:  # type: ignore[override]
        """WATCH keys on a connection the pipeline keeps until execute() or reset()."""
        if self._explicit_multi:
            raise ResponseError("cannot issue a WATCH after a MULTI")
        if self._conn is None:
            self._conn = await self._client._pool.get()
        result = await self._conn.execute(("WATCH", *names))
        return bool(result == b"OK")

    async def unwatch(self) -> bool:  # type: ignore[override]
        """Forget every WATCH and give the connection back."""
        if self._conn is not None:
            await self._conn.execute(("UNWATCH",))
            self._release()
        return True

    def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._pool.put(conn)

    def _server_of(self, args: tuple[Any, ...], options: dict[str, Any]) -> tuple[str, int]:
        return self._client._node.address  # type: ignore[no-any-return]

    async def _execute(self, raise_on_error: bool) -> list[Any]:
        """Send every queued command in one write and return their results in order."""
        if not self.command_stack and self._conn is None:
            return []
        stack = await self._checked_stack(self._client._encoding)  # nothing sent if refused
        await self._load_scripts()
        transaction = self.transaction or self._explicit_multi
        conn = self._conn
        pool = self._client._pool
        self._conn = None
        if conn is None:
            conn = await self._client._get_connection()
        specs = [self._client._specs.queued(*entry) for entry in stack]
        config = conn.config
        try:
            if transaction:  # blocking commands do not block inside MULTI; scripts run
                wait = batch_wait([script_wait(config) for spec in specs if spec.script])
                results = await _run_transaction(conn, stack, wait)
            else:
                wait = batch_wait(
                    [
                        spec.extra_wait(args, config)
                        for spec, (args, _) in zip(specs, stack, strict=True)
                    ]
                )
                results = await conn.execute_many([args for args, _ in stack], blocks_for=wait)
        finally:
            pool.put(conn)
            self.command_stack = []
            self._explicit_multi = False
        for result in results:
            hint_redirect(result)
        chains = [spec.callbacks for spec in specs]
        return pipeline_results(self._client._replies, chains, stack, results, raise_on_error)


#: Added to a MOVED or ASK that reaches a ``Client``'s caller.
REDIRECT_HINT = (
    " (this node is part of a Redis Cluster and another node serves this key's slot: use "
    "trio_cluster.ClusterClient, as redis-py's RedisCluster, which follows redirects)"
)


def hint_redirect(error: object) -> None:
    """Say, in the message of a MOVED or ASK error a ``Client`` got, that the node belongs to
    a cluster and ``ClusterClient`` is the client for it (the class stays redis-py's)."""
    if isinstance(error, MovedError | AskError) and not error.message.endswith(REDIRECT_HINT):
        error.message += REDIRECT_HINT
        error.args = (error.message,)


async def _run_transaction(
    conn: Connection, stack: Sequence[tuple[tuple[Any, ...], dict[str, Any]]], wait: float
) -> list[Any]:
    """MULTI, the commands, EXEC in one write; returns EXEC's results (errors as values).
    ``wait``: seconds beyond the read timeout EXEC may take (its scripts)."""
    commands: list[Sequence[Any]] = [("MULTI",), *(args for args, _ in stack), ("EXEC",)]
    replies = await conn.execute_many(commands, blocks_for=wait)
    try:
        return transaction_results(stack, replies[0], replies[1:-1], replies[-1])
    except ResponseError as error:
        if "wrong number of results" in str(error):
            conn.broken = True  # out of step with the server: never reuse it
        raise
