"""The command layer shared by every client: redis-py's command mixins on top of our I/O.

redis-py's ``AsyncCoreCommands`` build each command's arguments and call
``self.execute_command(*args, **options)``; its response callbacks turn raw replies into the
Python shapes redis-py users know.  This module supplies what those mixins expect from a client,
without asyncio: argument normalisation, the callback table, and reply parsing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import ExecAbortError, ResponseError, WatchError

from ..redispy import (
    EMPTY_RESPONSE,
    NEVER_DECODE,
    RedisCluster,
    parse_cluster_shards_with_str_keys,
    response_callbacks,
    safe_str,
    truncate_text,
    zset_score_pairs_resp3_to_resp2_legacy,
)

__all__ = [
    "BLOCKING_COMMANDS",
    "COMMAND_NAME",
    "ReplyParser",
    "annotate_pipeline_error",
    "blocking_seconds",
    "normalize_args",
    "pipeline_results",
    "queue_entry",
    "transaction_results",
]


#: The option under which a queued command keeps the name its reply is parsed by, when that
#: differs from the first word sent (``"CONFIG GET"`` is sent as ``CONFIG``, ``GET``).
COMMAND_NAME = "_trio_cluster_command_name"
_RESOLVED_NAMES = 4096


def normalize_args(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Split a multi-word command name (redis-py passes ``"CLUSTER SLOTS"`` as one string)."""
    name = args[0]
    if isinstance(name, str) and " " in name:
        return (*name.split(), *args[1:])
    return args


def queue_entry(
    args: tuple[Any, ...], options: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A pipeline's queue entry: the words sent, and options that remember the full command
    name (redis-py looks callbacks up by ``args[0]`` as the command method passed it)."""
    wire = normalize_args(args)
    if wire is not args:
        options = {**options, COMMAND_NAME: args[0]}
    return wire, options


def _last_arg_seconds(args: Sequence[Any]) -> float:
    return float(args[-1])


def _second_arg_seconds(args: Sequence[Any]) -> float:
    return float(args[1])


def _block_option_ms(args: Sequence[Any]) -> float | None:
    for index, arg in enumerate(args):
        if (
            isinstance(arg, str | bytes)
            and str(arg if isinstance(arg, str) else arg.decode()).upper() == "BLOCK"
        ):
            return float(args[index + 1]) / 1000.0
    return None


def _wait_ms(position: int) -> Callable[[Sequence[Any]], float]:
    return lambda args: float(args[position]) / 1000.0


#: Commands the server may legitimately hold for a while, and how to read how long from their
#: arguments (seconds; 0 means "forever").  The read timeout is extended by that much.
BLOCKING_COMMANDS: dict[str, Callable[[Sequence[Any]], float | None]] = {
    "BLPOP": _last_arg_seconds,
    "BRPOP": _last_arg_seconds,
    "BRPOPLPUSH": _last_arg_seconds,
    "BLMOVE": _last_arg_seconds,
    "BZPOPMIN": _last_arg_seconds,
    "BZPOPMAX": _last_arg_seconds,
    "BLMPOP": _second_arg_seconds,
    "BZMPOP": _second_arg_seconds,
    "XREAD": _block_option_ms,
    "XREADGROUP": _block_option_ms,
    "WAIT": _wait_ms(2),
    "WAITAOF": _wait_ms(3),
}

#: Blocking commands whose reply carries data taken from the server (a popped element, stream
#: entries delivered to a group): if such a reply arrives, the data exists nowhere else.
DATA_TAKING_COMMANDS = frozenset(BLOCKING_COMMANDS) - {"WAIT", "WAITAOF"}


def blocking_seconds(
    reader: Callable[[Sequence[Any]], float | None], args: Sequence[Any]
) -> float | None:
    """How long a blocking command may wait server-side (``math.inf`` for forever), read by
    its entry of :data:`BLOCKING_COMMANDS`; None if this invocation does not block (XREAD
    without BLOCK)."""
    try:
        seconds = reader(args)
    except (IndexError, ValueError, TypeError):
        return None  # malformed (or None: refused before sending): the server or DataError says so
    if seconds is None:
        return None
    return math.inf if seconds == 0 else seconds


def _scores_as_floats(response: Any, **options: Any) -> Any:
    """redis-py's RESP3-to-legacy ``WITHSCORES`` callback, without its round trip per score.

    redis-py formats every RESP3 double back to RESP2 bytes and parses it again, so that a
    custom ``score_cast_func`` sees bytes.  With the default cast (``float``) that round trip
    is the identity (17 significant digits), so the pairs are built directly: the same values,
    several times faster on a 100k-member reply.
    """
    cast = options.get("score_cast_func", float)  # redis-py's zrange() passes float itself
    if cast is not float or not response or not options.get("withscores"):
        return zset_score_pairs_resp3_to_resp2_legacy(response, **options)  # type: ignore[no-untyped-call]
    return [(member, float(score)) for member, score in response]


class ReplyParser:
    """redis-py's response callbacks, chosen as redis-py chooses them and looked up, as
    redis-py does, by the command name the command method passed (``"CONFIG GET"``, not
    ``"CONFIG"``).

    ``protocol=None`` (the default) speaks RESP3 on the wire but returns the same shapes as
    redis-py's default client; ``3`` returns RESP3 shapes; ``2`` RESP2 shapes.  ``cluster``
    adds ``RedisCluster``'s second layer (``CLUSTER SLOTS``/``SHARDS``/``MYSHARDID``), applied
    after the node's callback; there ``set_response_callback`` replaces that second layer,
    as it does in redis-py's ``RedisCluster``.
    """

    def __init__(self, protocol: int | None, *, cluster: bool = False) -> None:
        callbacks = response_callbacks(protocol)
        self.callbacks: dict[str, Callable[..., Any]] = {
            k.upper(): _scores_as_floats if v is zset_score_pairs_resp3_to_resp2_legacy else v
            for k, v in callbacks.items()
        }
        self.cluster_callbacks: dict[str, Callable[..., Any]] | None = None
        if cluster:
            layer = dict(RedisCluster.CLUSTER_COMMANDS_RESPONSE_CALLBACKS)
            if protocol is None:
                layer["CLUSTER SHARDS"] = parse_cluster_shards_with_str_keys
            self.cluster_callbacks = {k.upper(): v for k, v in layer.items()}

        # The callbacks of each command name seen, both layers resolved: one dictionary
        # look-up per reply.  At most _RESOLVED_NAMES names (``execute_command`` takes any
        # name); emptied whenever a callback changes.
        self._resolved: dict[str, tuple[Callable[..., Any], ...]] = {}

    def set_callback(self, command: str, callback: Callable[..., Any]) -> None:
        """Replace the callback of one command (as redis-py's ``set_response_callback``)."""
        table = self.callbacks if self.cluster_callbacks is None else self.cluster_callbacks
        table[command.upper()] = callback
        self._resolved.clear()

    def parse(self, name: str, reply: Any, options: dict[str, Any]) -> Any:
        """Apply the command's callback to its reply (``options`` as the mixin passed them)."""
        if options:
            name = options.pop(COMMAND_NAME, name)
        return self.apply(self.chain(name), reply, options)

    def chain(self, name: Any) -> tuple[Callable[..., Any], ...]:
        """The callbacks of command ``name`` (as the command method passed it), in order."""
        # Only text names are kept (a bytes name is decoded by _chain; any other goes there).
        chain = self._resolved.get(name) if type(name) is str else None
        if chain is None:
            chain = self._chain(name)
        return chain

    def apply(
        self, chain: tuple[Callable[..., Any], ...], reply: Any, options: dict[str, Any]
    ) -> Any:
        """Apply the callbacks ``chain`` (see :meth:`chain`) to a reply, with the mixin's
        ``options`` less the client's own."""
        if options:
            options.pop(COMMAND_NAME, None)
            options.pop(NEVER_DECODE, None)
            options.pop(EMPTY_RESPONSE, None)
            options.pop("keys", None)
            options.pop("target_nodes", None)  # routing, not parsing (cluster pipelines)
        for callback in chain:
            reply = callback(reply, **options)
        return reply

    def _chain(self, name: str | bytes) -> tuple[Callable[..., Any], ...]:
        """The callbacks for ``name``, the node's first, looked up as given, then in upper
        case (the mixins pass upper case; users of ``execute_command`` may not)."""
        text = name if type(name) is str else (
            name.decode() if isinstance(name, bytes) else str(name)
        )  # fmt: skip
        found: list[Callable[..., Any]] = []
        for table in (self.callbacks, self.cluster_callbacks):
            if table:
                callback = table.get(text)
                if callback is None:
                    callback = table.get(text.upper())
                if callback is not None:
                    found.append(callback)
        chain = tuple(found)
        if type(name) is str and len(self._resolved) < _RESOLVED_NAMES:
            self._resolved[name] = chain
        return chain


PipelineStack = Sequence[tuple[tuple[Any, ...], dict[str, Any]]]


def annotate_pipeline_error(error: Exception, position: int, args: tuple[Any, ...]) -> None:
    """Say in ``error`` which queued command (1-based, with its arguments, shortened) it
    belongs to, in redis-py's words."""
    command = truncate_text(" ".join(map(safe_str, args)))  # type: ignore[no-untyped-call]
    first = error.args[0] if error.args else error
    error.args = (f"Command # {position + 1} ({command}) of pipeline caused error: {first}",
                  *error.args[1:])  # fmt: skip


def transaction_results(
    stack: PipelineStack, multi: Any, queued: Sequence[Any], executed: Any
) -> list[Any]:
    """EXEC's results for the queued commands, or the error the transaction ended with: the
    first rejected command (EXECABORT), ``WatchError`` (a watched key changed), or another."""
    if isinstance(multi, Exception):
        raise multi
    if isinstance(executed, ExecAbortError):
        for position, reply in enumerate(queued):
            if isinstance(reply, Exception):
                annotate_pipeline_error(reply, position, stack[position][0])
                raise reply from executed
        raise executed
    if isinstance(executed, Exception):
        raise executed
    if executed is None:
        raise WatchError("Watched variable changed.")  # redis-py's words
    if len(executed) != len(stack):
        raise ResponseError("wrong number of results from EXEC")
    return list(executed)


def pipeline_results(
    replies: ReplyParser,
    chains: Sequence[tuple[Callable[..., Any], ...]],
    stack: PipelineStack,
    results: Sequence[Any],
    raise_on_error: bool,
) -> list[Any]:
    """Parse each queued command's result with its callbacks (``chains``, one per command,
    see :meth:`ReplyParser.chain`); errors stay values, or the first is raised."""
    out: list[Any] = []
    for position, ((args, options), result) in enumerate(zip(stack, results, strict=True)):
        if isinstance(result, Exception):
            if isinstance(result, ResponseError) and EMPTY_RESPONSE in options:
                out.append(options[EMPTY_RESPONSE])
                continue
            if raise_on_error:
                annotate_pipeline_error(result, position, args)
                raise result
            out.append(result)
        else:
            out.append(replies.apply(chains[position], result, dict(options)))
    return out
