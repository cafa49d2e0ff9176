"""The command-spec table: everything a client knows about one command, looked up once.

A command method calls ``execute_command(name, *args)``; the client looks ``name`` up here
once (:meth:`CommandSpecs.get`, one dictionary read on the hot path) and passes the
:class:`CommandSpec` down: to routing (key positions, keyless target, read-only flag), to the
node call (blocking, automatic-pipelining eligibility), to the fan-out (split per slot) and
back to the reply (its callbacks).  The facts come from:

* the server's ``COMMAND`` table (:class:`~.rules.CommandTable`, loaded by a cluster client
  on its first refresh): key positions and flags;
* redis-py's cluster routing flags (:func:`~.rules.keyless_target`);
* the client's reply callbacks (:class:`~trio_cluster.wire.commands.ReplyParser`: redis-py's,
  chosen by protocol, replaced by ``set_response_callback``);
* the tables below, and ``wire.commands.BLOCKING_COMMANDS``.

A spec is built the first time its name is seen and kept (at most :data:`MAX_NAMES` names;
``execute_command`` takes any name); the cache is emptied when a callback changes or the
server's table is installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from ..config import ConnectionConfig
from ..wire.commands import BLOCKING_COMMANDS, COMMAND_NAME, ReplyParser, blocking_seconds
from ..wire.encoding import text
from .rules import CommandTable, ServerCommand, Target, invocation, keyless_target

__all__ = [
    "CONNECTION_STATE",
    "MAX_NAMES",
    "SCRIPT_COMMANDS",
    "SPLITTABLE",
    "CommandSpec",
    "CommandSpecs",
    "batch_wait",
    "script_wait",
]

#: Commands that change or depend on the state of their connection: never automatically
#: pipelined on a shared connection.
CONNECTION_STATE = frozenset(
    {
        "AUTH", "HELLO", "SELECT", "CLIENT", "RESET", "QUIT", "READONLY", "READWRITE",
        "MULTI", "EXEC", "DISCARD", "WATCH", "UNWATCH", "ASKING", "MONITOR", "SYNC", "PSYNC",
        "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE",
    }
)  # fmt: skip

#: Multi-key commands a cluster client splits per slot when their keys span several slots
#: (not atomic across slots).
SPLITTABLE = frozenset({"MGET", "MSET", "DEL", "EXISTS", "UNLINK", "TOUCH"})

#: Scripts and functions: they run on the server as long as their code does, which says
#: nothing about the node's health, so their replies wait ``script_timeout`` (no bound by
#: default) instead of the read timeout, and never share a connection.
SCRIPT_COMMANDS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"})


def script_wait(config: ConnectionConfig) -> float:
    """How much longer than the read timeout a script's reply may take: no bound without
    ``script_timeout`` (``math.inf``), else the difference, so that the reply's deadline is
    ``script_timeout`` itself (it may be shorter than the read timeout)."""
    if config.script_timeout is None:
        return math.inf
    return config.script_timeout - (config.read_timeout or 0.0)


def batch_wait(waits: Sequence[float]) -> float:
    """How much longer than the read timeout a batch's replies may take: the commands run
    one after the other, so their extra waits add up (only the positive ones)."""
    return sum(wait for wait in waits if wait > 0)


#: Most names whose specs are kept.
MAX_NAMES = 4096


class CommandSpec:
    """What the client knows about one command name (as the command method passes it:
    ``"GET"``, ``"CONFIG GET"``).  Built by :class:`CommandSpecs`; read-only by convention."""

    __slots__ = (
        "blocking",
        "callbacks",
        "command",
        "keyed_first",
        "name",
        "readonly",
        "script",
        "server",
        "shares_connection",
        "splittable",
        "target",
        "words",
    )

    def __init__(
        self,
        *,
        name: Any,
        words: tuple[str, ...] | None,
        callbacks: tuple[Callable[..., Any], ...],
        blocking: Callable[[Sequence[Any]], float | None] | None,
        server: ServerCommand | None,
        target: Target | None,
        first_word: str,
    ) -> None:
        self.name = name
        #: The command's first word in upper case (``CONFIG``, ``MGET``).
        self.command = first_word
        #: The words a multi-word name is sent as (``CONFIG``, ``GET``), or None.
        self.words = words
        #: The reply callbacks, the node's first (a cluster client's second layer after).
        self.callbacks = callbacks
        #: Reads how long a blocking command may wait from its arguments (None: not one).
        self.blocking = blocking
        #: The server's description (the subcommand's for a two-word name), if it has one.
        self.server = server
        #: Where a keyless command goes (redis-py's cluster flags), if it has a rule.
        self.target = target
        #: Whether it only reads (so repeating it after an unclear failure is harmless).
        self.readonly = server is not None and server.readonly
        #: Whether it runs a script or function (``SCRIPT_COMMANDS``).
        self.script = first_word in SCRIPT_COMMANDS
        #: Whether automatic pipelining may share a connection with it (not blocking, not a
        #: script, no connection state).
        self.shares_connection = (
            blocking is None and not self.script and first_word not in CONNECTION_STATE
        )
        #: Whether a cluster client splits it per slot when its keys span slots.
        self.splittable = first_word in SPLITTABLE
        #: The hot path: its only key is its first argument (GET, SET, INCR, HGET...), with
        #: nothing else to look at (no subcommands, movable keys or blocking).
        self.keyed_first = (
            server is not None
            and server.first_key == 1
            and server.last_key == 1
            and not server.movable
            and not server.subcommands
            and blocking is None
        )

    def __repr__(self) -> str:
        return f"<CommandSpec {self.name!r}>"

    def on_server(self, args: Sequence[Any]) -> ServerCommand | None:
        """The server's description of this invocation (a subcommand's, where ``args[1]``
        names one)."""
        return invocation(self.server, args)

    def target_for(self, args: Sequence[Any]) -> Target | None:
        """Where this keyless invocation goes: a subcommand's own rule first (``SCRIPT``,
        ``LOAD`` sent under the one-word name), else the name's."""
        if self.words is None and len(args) > 1:
            target = keyless_target(f"{text(args[0]).upper()} {text(args[1]).upper()}")
            if target is not None:
                return target
        return self.target

    def blocks(self, args: Sequence[Any]) -> float | None:
        """How long the server may hold this invocation (``math.inf``: forever), or None
        if it does not block (XREAD without BLOCK)."""
        return None if self.blocking is None else blocking_seconds(self.blocking, args)

    def extra_wait(self, args: Sequence[Any], config: ConnectionConfig) -> float:
        """Seconds beyond the read timeout the server may legitimately take to answer this
        invocation: a blocking command's own timeout (``math.inf`` for 0, "forever"), a
        script's :func:`script_wait`, else 0."""
        if self.script:
            return script_wait(config)
        blocks = self.blocks(args)
        return 0.0 if blocks is None else blocks


class CommandSpecs:
    """One client's spec table: its reply callbacks (``replies``) and, for a cluster
    client, the server's command table (:meth:`install`)."""

    def __init__(self, replies: ReplyParser, server: CommandTable | None = None) -> None:
        self.replies = replies
        self._server = server if server is not None else CommandTable()
        self._specs: dict[Any, CommandSpec] = {}

    @property
    def server(self) -> CommandTable:
        """The server's command table (empty until a cluster client's first refresh)."""
        return self._server

    def install(self, server: CommandTable) -> None:
        """Use the server's command table from now on."""
        self._server = server
        self._specs.clear()

    def set_callback(self, command: str, callback: Callable[..., Any]) -> None:
        """Replace how one command's reply is parsed (redis-py's ``set_response_callback``)."""
        self.replies.set_callback(command, callback)
        self._specs.clear()

    def get(self, name: Any) -> CommandSpec:
        """The spec of the command the command method called ``name`` (the one look-up
        per command)."""
        spec = self._specs.get(name)
        if spec is None:
            spec = self._build(name)
        return spec

    def queued(self, args: Sequence[Any], options: dict[str, Any]) -> CommandSpec:
        """The spec of a pipeline's queued command (its full name kept in ``options``)."""
        return self.get(options.get(COMMAND_NAME, args[0]) if options else args[0])

    def parse(self, spec: CommandSpec, reply: Any, options: dict[str, Any]) -> Any:
        """Apply ``spec``'s callbacks to ``reply`` (``options`` as the mixin passed them)."""
        return self.replies.apply(spec.callbacks, reply, options)

    def _build(self, name: Any) -> CommandSpec:
        shown = name if type(name) is str else text(name)
        words = tuple(shown.split()) if type(name) is str and " " in name else None
        first = (words[0] if words else shown).upper()
        server = self._server.specs.get(first)
        if words is not None and len(words) > 1:
            server = invocation(server, words)
            target = keyless_target(f"{first} {words[1].upper()}") or keyless_target(first)
        else:
            target = keyless_target(first)
        spec = CommandSpec(
            name=name,
            words=words,
            callbacks=self.replies.chain(name),
            blocking=BLOCKING_COMMANDS.get(first),
            server=server,
            target=target,
            first_word=first,
        )
        if type(name) is str and len(self._specs) < MAX_NAMES:
            self._specs[name] = spec
        return spec
