"""What ``Client`` and ``ClusterClient`` share beyond their routing: the one command entry
(:meth:`ClientBase.execute_command`), the lifetime of their nursery
(:class:`~trio_cluster.lifetime.NurseryOwner`), pub/sub, credential rotation, maintenance
statistics, response callbacks, and redis-py's helpers: ``transaction``, ``lock``,
``register_script``/``get_encoder`` and ``monitor``."""

from __future__ import annotations

import inspect
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Literal, Self

import attrs
import trio
from redis.exceptions import ResponseError, WatchError

from ..config import ConnectionConfig, parse_url, redact_url
from ..conn.connection import Connection
from ..conn.dialer import Dialer
from ..conn.watchdog import Watchdog
from ..errors import TrioRequiredError
from ..hooks import CommandCall, Hook, Hooks
from ..jobs.credentials import CredentialManager
from ..jobs.handoff import HandoffManager
from ..lifetime import NurseryOwner, raise_not_open
from ..otel.switch import redis_py_hooks
from ..redispy import EMPTY_RESPONSE, Encoder
from ..routing.specs import CommandSpec, CommandSpecs
from ..wire.commands import ReplyParser
from ..wire.encoding import Encoding, prepare_args, text
from .lock import Lock
from .monitor import Monitor
from .pipelinebase import Script
from .pubsub import PubSub, PubSubRegistry, PubSubStats, ShardMap

__all__ = ["ClientBase", "Parsed", "require_trio"]


def require_trio(owner: object) -> None:
    """Raise :class:`~trio_cluster.errors.TrioRequiredError` unless called inside
    ``trio.run``: used from asyncio, trio's own failure is an ``AttributeError`` deep in its
    internals, which names neither the cause nor the way out."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        pass
    else:
        return
    try:
        import sniffio

        library = sniffio.current_async_library()
    except Exception:  # sniffio missing, or no async library running at all
        library = None
    where = f"under {library}" if library else "outside trio.run"
    raise TrioRequiredError(
        f"{type(owner).__name__} runs under trio only, and was used {where}: run your code "
        "with trio.run(main) (https://trio.readthedocs.io), or, to call it from an asyncio "
        "program, through trio-asyncio (https://trio-asyncio.readthedocs.io)"
    )


class Parsed:
    """A reply a route has parsed itself (a command run on several nodes, its replies parsed
    and combined): the entry returns its ``value`` as it is."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class ClientBase(NurseryOwner):
    """The parts of a client that do not depend on how commands are routed."""

    _credentials: CredentialManager | None
    _dialer: Dialer
    """Opens every connection of the client (for ``ClusterClient``, the one-off ones)."""
    _encoding: Encoding
    #: redis-py's typing marker: its command methods are typed as awaitables returning the
    #: precise reply type (``await r.get(k)`` is ``bytes | str | None``), as for
    #: ``redis.asyncio`` clients.
    _is_async_client: Literal[True] = True
    # redis-py's command protocol declares it (an abstract member for type checkers);
    # nothing here dispatches redis-py events.
    _event_dispatcher: Any = None
    pubsub_registry: PubSubRegistry
    """The bound on this client's pub/sub connections and their counters, shared by all its
    PubSubs (``max_pubsub_connections``)."""
    _replies: ReplyParser
    _specs: CommandSpecs
    """The command-spec table (``routing.specs``): one look-up per command."""
    _errors: Counter[str]
    """Errors that reached callers of :meth:`execute_command`, by class name."""
    _shown_url: str | None
    _watchdog: Watchdog
    _hooks: Hooks
    """The command hooks (``add_hook``), shared with every node's dialer and pool."""
    _db: int
    """The database index commands run in (``db.namespace``)."""
    _told_open = False

    async def __aenter__(self) -> Self:
        """Open the client (its nursery, its pools' background work): ``async with``."""
        require_trio(self)
        return await super().__aenter__()

    if not TYPE_CHECKING:  # type checkers keep redis-py's signature, which this matches

        def set(self, name, value, *args, **kwargs):
            """redis-py's ``set``.  A plain ``set(name, value)`` sends the same command without
            redis-py's option checks and argument inspection (about a tenth of a SET's cost
            on the client); any option goes through redis-py's method."""
            if args or kwargs:
                return super().set(name, value, *args, **kwargs)
            return self.execute_command("SET", name, value)

        def get(self, name):
            """redis-py's ``get``, without the ``keys`` option it builds for routers that need
            it (here the key is the command's first argument): a dictionary and a list less
            to make and take apart on the most common command."""
            return self.execute_command("GET", name)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command (what every command method calls) and return its parsed reply.

        The one entry of every command: its name looked up once in the spec table (the
        spec is passed down), its arguments prepared once (a type redis-py refuses raises
        its ``DataError`` before anything is sent), the command routed (:meth:`_route`),
        the reply parsed by the spec's callbacks; an error reply the command method
        tolerates gives its empty response, and any other error is counted and raised
        (``ClientNotOpenError`` outside the ``async with`` block).
        """
        spec = self._specs.get(args[0])
        if spec.words is not None:
            args = (*spec.words, *args[1:])
        hooks = self._hooks
        call = self._command_call(spec, args) if hooks.commands else None
        try:
            args = prepare_args(args, self._encoding)
            reply = await self._route(spec, args, options)
            value = (
                reply.value
                if type(reply) is Parsed
                else self._replies.apply(spec.callbacks, reply, options)
            )
        except Exception as error:
            if options and EMPTY_RESPONSE in options and isinstance(error, ResponseError):
                if call is not None:
                    hooks.after_command(call)
                return options[EMPTY_RESPONSE]
            self._errors[type(error).__name__] += 1
            self._explain(error)
            if call is not None:
                hooks.after_command(call, error)
            elif hooks.failures:
                hooks.command_failed(self._failed_call(spec, args, error))
            if self._nursery is None:
                require_trio(self)
                raise_not_open(self)
            raise
        except BaseException as error:  # a cancellation: the hooks see it end too
            if call is not None:
                hooks.after_command(call, error)
            elif hooks.failures:
                hooks.command_failed(self._failed_call(spec, args, error))
            raise
        if call is not None:
            hooks.after_command(call)
        return value

    def _explain(self, error: Exception) -> None:
        """Add to an error about to reach the caller what this kind of client knows of its
        cause (``Client``: a MOVED means the node belongs to a cluster)."""

    def _command_call(self, spec: CommandSpec, args: tuple[Any, ...]) -> CommandCall:
        """The hooks' view of a command about to run (only made when a hook wants every
        command)."""
        name = spec.name if isinstance(spec.name, str) else text(spec.name)
        call = CommandCall(
            name.upper(), len(args) - 1, db=self._db, blocking=spec.blocking is not None
        )
        self._hooks.before_command(call)
        return call

    def _failed_call(
        self, spec: CommandSpec, args: tuple[Any, ...], error: BaseException
    ) -> CommandCall:
        """The hooks' view of a command that failed, made only then (for hooks that want
        failures alone: nothing is made for the commands that succeed)."""
        name = spec.name if isinstance(spec.name, str) else text(spec.name)
        call = CommandCall(
            name.upper(), len(args) - 1, db=self._db, blocking=spec.blocking is not None
        )
        call.ended = time.perf_counter()
        call.error = error
        return call

    @property
    def command_errors(self) -> dict[str, int]:
        """Errors that reached callers of commands, by exception class name (cumulative)."""
        return dict(self._errors)

    # --- hooks -------------------------------------------------------------------------------

    def add_hook(self, hook: Hook) -> None:
        """Run ``hook`` (see :mod:`trio_cluster.hooks`) around every command, pipeline and
        dial of this client, as go-redis's ``AddHook``."""
        self._hooks.add(hook)

    def remove_hook(self, hook: Hook) -> None:
        """Stop running ``hook`` (``ValueError`` if it was not added)."""
        self._hooks.remove(hook)

    def _opened(self) -> None:
        """The client is open (end of its start): redis-py's observability switch is read,
        and the hooks are told."""
        for hook in redis_py_hooks(self._hooks.hooks):
            self._hooks.add(hook)
        self._hooks.client_opened(self)
        self._told_open = True

    def _closed(self) -> None:
        """The client is closed (every connection): the hooks are told, once."""
        if self._told_open:
            self._told_open = False
            self._hooks.client_closed(self)

    def _route(
        self, spec: CommandSpec, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Awaitable[Any]:
        """Where and how the command runs: an awaitable of its raw reply, or of a
        :class:`Parsed` one.  Synchronous, returning the call's own coroutine, so that the
        common case costs no coroutine frame of its own."""
        raise NotImplementedError

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A client for ``redis://[user:password@]host[:port][/db]``, ``rediss://`` (TLS,
        verified) or ``unix://path`` (a cluster client starts from the node it names);
        keyword arguments override what the URL says.  Its repr shows the URL without the
        password."""
        options = parse_url(url)
        options.update(kwargs)
        client = cls(**options)
        client._shown_url = redact_url(url)
        return client

    @property
    def dialer(self) -> Dialer:
        """The dialer that opens this client's one-off connections (pub/sub, MONITOR,
        helpers): the newest credentials, the client's TLS and timeouts."""
        return self._dialer

    def _maintenance_managers(self) -> list[HandoffManager]:
        """The handoff managers of every node the client has (one per node that may get
        maintenance notifications; each reads its node's notices)."""
        raise NotImplementedError

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        """Queue commands, sent together; the default follows redis-py's client of the same
        kind (``Client``: MULTI/EXEC, as ``Redis``; ``ClusterClient``: not, as
        ``RedisCluster``)."""
        raise NotImplementedError

    @property
    def pubsub_shards(self) -> ShardMap | None:
        """What places a PubSub's subscriptions on a cluster (its slot map); None for one
        node."""
        return None

    def pubsub(self, **options: Any) -> PubSub:
        """Subscriptions on dedicated connections, outside the command pool (see
        ``docs/pubsub.md``): ``async with client.pubsub() as p: await p.subscribe("ch")``."""
        return PubSub(self, **options)

    def pubsub_stats(self) -> PubSubStats:
        """Pub/sub connections (open, bound) and their counters, over every PubSub."""
        return self.pubsub_registry.stats()

    def maintenance_stats(self) -> dict[str, Any]:
        """Handoffs and re-authentications done and failed, relaxed connections, notifications
        received by type (summed over nodes), and commands timed out by the watchdog."""
        managers = self._maintenance_managers()
        received: Counter[str] = Counter()
        for manager in managers:
            received.update(manager.notices.received)
        creds = self._credentials
        return {
            "handoffs": sum(m.handoffs for m in managers),
            "handoff_failures": sum(m.handoff_failures for m in managers),
            "longest_unusable": max((m.longest_unusable for m in managers), default=0.0),
            "relaxed_connections": sum(m.relaxed_connections() for m in managers),
            "notifications": dict(received),
            "malformed_notifications": sum(m.notices.malformed for m in managers),
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
        self._specs.set_callback(command, callback)

    async def transaction(
        self,
        func: Callable[[Any], Any],
        *watches: Any,
        shard_hint: Any = None,
        value_from_callable: bool = False,
        watch_delay: float | None = None,
    ) -> Any:
        """Run ``func(pipe)`` (a plain or an async function) under WATCH ``watches`` until
        EXEC succeeds, as redis-py's ``transaction`` (on a cluster, the keys must share a
        slot; a slot that moves meanwhile is one more retry).  ``watch_delay``: seconds to
        wait between attempts.  ``shard_hint`` is accepted and unused, as in redis-py."""
        async with self.pipeline(transaction=True, shard_hint=shard_hint) as pipe:
            while True:
                try:
                    if watches:
                        await pipe.watch(*watches)
                    result = func(pipe)
                    if inspect.isawaitable(result):
                        result = await result
                    executed = await pipe.execute()
                    return result if value_from_callable else executed
                except WatchError:
                    if watch_delay is not None and watch_delay > 0:
                        await trio.sleep(watch_delay)
                    continue

    # --- redis-py's helpers ----------------------------------------------------------------------

    def _connection_config(self) -> ConnectionConfig:
        """The configuration new connections start from (encoding options, credentials)."""
        raise NotImplementedError

    async def _dial_dedicated(self, target_node: Any = None) -> Connection:
        """A connection outside every pool, opened by the client's dialer (the newest
        credentials), to ``target_node`` (anything with ``host`` and ``port``, e.g. a
        ``ClusterNode``) or to the client's (default) node: for MONITOR."""
        if target_node is not None:
            return await self._dialer.open((target_node.host, int(target_node.port)))
        config = self._connection_config()
        return await self._dialer.open((config.host, config.port))

    def get_connection_kwargs(self) -> dict[str, Any]:
        """The connection options, as redis-py's ``get_connection_kwargs`` (its command
        methods read ``decode_responses`` there)."""
        options = attrs.asdict(self._connection_config(), recurse=False)
        encoding = self._encoding
        options.update(
            encoding=encoding.encoding,
            encoding_errors=encoding.encoding_errors,
            decode_responses=encoding.decode_responses,
        )
        return options

    def get_encoder(self) -> Encoder:
        """How arguments are encoded and replies decoded (redis-py's ``Encoder``)."""
        encoding = self._encoding
        return Encoder(  # type: ignore[no-untyped-call]
            encoding.encoding, encoding.encoding_errors, encoding.decode_responses
        )

    def register_script(self, script: str | bytes) -> Script:
        """A callable Lua script: ``await s(keys=[...], args=[...])``, or with
        ``client=pipe`` to queue it on a pipeline."""
        return Script(self, script)  # type: ignore[arg-type]

    def lock(
        self,
        name: Any,
        timeout: float | None = None,
        sleep: float = 0.1,
        blocking: bool = True,
        blocking_timeout: float | None = None,
        lock_class: type[Lock] | None = None,
        thread_local: bool = True,
        raise_on_release_error: bool = True,
    ) -> Lock:
        """redis-py's distributed lock in key ``name``, used as ``async with client.lock(
        "name", timeout=10) as lock:`` (see :class:`~trio_cluster.lock.Lock`)."""
        return (lock_class or Lock)(
            self,
            name,
            timeout=timeout,
            sleep=sleep,
            blocking=blocking,
            blocking_timeout=blocking_timeout,
            thread_local=thread_local,
            raise_on_release_error=raise_on_release_error,
        )

    def monitor(self, target_node: Any = None) -> Monitor:
        """``async with client.monitor() as m:`` the commands the node runs, as redis-py's
        ``Monitor``; on a cluster, the default node or ``target_node`` (a ``ClusterNode``),
        as redis-py's ``RedisCluster.monitor``."""
        return Monitor(lambda: self._dial_dedicated(target_node))
