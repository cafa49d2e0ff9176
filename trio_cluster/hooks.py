"""Command hooks: code of the application's (or of :mod:`trio_cluster.otel`) that runs before
and after every command, pipeline and dial, as go-redis's ``AddHook`` does.

A hook is an object with any of the methods of :class:`Hook` (subclass it and override what
you need).  Register it on one client (``client.add_hook(hook)``) or, for every client created
afterwards in the process, with :func:`add_default_hook` (the one process-wide registry of the
library: it mirrors OpenTelemetry's global providers, which instrumentors are built on).

What a hook sees is a :class:`CommandCall` / :class:`PipelineCall`: the command's name, how
many arguments it has (never their values: keys and values can be secrets), the node that
actually answered (after any redirect), timing, retries and the outcome.  Hooks run
synchronously on the command's task: they must be quick and must not block or raise (an
exception from a hook is logged and dropped, so instrumentation can never fail a command).

The cost when no hook wants every command is one attribute test per command
(:attr:`Hooks.commands`); a hook that wants only failures (``command_failed``) costs the
commands that succeed nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextvars import ContextVar, Token
from typing import Any

__all__ = [
    "CURRENT_CALL",
    "CommandCall",
    "DialCall",
    "Hook",
    "Hooks",
    "PipelineCall",
    "WaitCall",
    "add_default_hook",
    "default_hooks",
    "remove_default_hook",
]

logger = logging.getLogger(__name__)

Address = tuple[str, int]


class CommandCall:
    """One command as hooks see it, from the moment it is issued until its reply is parsed.

    The command path fills ``server`` with the node that answered (each attempt overwrites it:
    after a MOVED it names the new owner) and appends to ``events`` (``"redirect"``,
    ``"retry"``, ``"reconnect"``) as they happen.  Hooks may keep their own per-call state in
    the token their ``before_command`` returns.
    """

    __slots__ = (
        "_token",
        "arg_count",
        "blocking",
        "db",
        "ended",
        "error",
        "events",
        "name",
        "pipeline",
        "retries",
        "server",
        "started",
        "tokens",
    )

    def __init__(
        self,
        name: str,
        arg_count: int,
        *,
        db: int = 0,
        blocking: bool = False,
        server: Address | None = None,
        pipeline: PipelineCall | None = None,
    ) -> None:
        self.name = name
        """The command's name, upper case (``"GET"``, ``"CONFIG GET"``)."""
        self.arg_count = arg_count
        """How many arguments follow the name (values are never exposed)."""
        self.db = db
        """The database index (``db.namespace``)."""
        self.blocking = blocking
        """Whether the server may hold the reply (BLPOP, XREAD BLOCK, WAIT...)."""
        self.server = server
        """``(host, port)`` of the node that answered, once known."""
        self.pipeline = pipeline
        """The pipeline or transaction this command was part of, if any."""
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.error: BaseException | None = None
        """What the command raised, if it failed (a cancellation included)."""
        self.retries = 0
        """Attempts after the first one (redirects excluded)."""
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        """``(time.time_ns(), name, attributes)`` of what happened along the way."""
        self.tokens: list[Any] = []
        self._token: Token[CommandCall | None] | None = None

    def event(self, name: str, **attributes: Any) -> None:
        """Record that ``name`` happened to this command now (the command path calls it)."""
        self.events.append((time.time_ns(), name, attributes))

    @property
    def duration(self) -> float:
        """Seconds from issue to outcome (so far, while it runs)."""
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    def __repr__(self) -> str:
        return f"<CommandCall {self.name} args={self.arg_count} server={self.server}>"


#: The command the running task is executing, while hooks are registered on its client: the
#: layers below the command entry (the node call, the retry policy) fill in where it went and
#: what happened to it.  None when no hook is registered: they then do nothing more.
CURRENT_CALL: ContextVar[CommandCall | None] = ContextVar("trio_cluster_call", default=None)


class PipelineCall:
    """One pipeline or transaction as hooks see it: its size and its commands."""

    __slots__ = ("commands", "db", "ended", "error", "started", "tokens", "transaction")

    def __init__(self, transaction: bool, *, db: int = 0) -> None:
        self.transaction = transaction
        """``True`` for MULTI/EXEC."""
        self.db = db
        self.commands: list[CommandCall] = []
        """One call per queued command (their ``server`` says where each one went)."""
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.error: BaseException | None = None
        self.tokens: list[Any] = []

    @property
    def name(self) -> str:
        """``"MULTI"`` for a transaction, ``"PIPELINE"`` otherwise."""
        return "MULTI" if self.transaction else "PIPELINE"

    @property
    def size(self) -> int:
        """How many commands the batch holds."""
        return len(self.commands)

    @property
    def duration(self) -> float:
        """Seconds from ``execute()`` to its outcome."""
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started


class DialCall:
    """One attempt to open a connection to a node: how long it took and how it ended."""

    __slots__ = ("duration", "error", "server")

    def __init__(self, server: Address, duration: float, error: BaseException | None) -> None:
        self.server = server
        self.duration = duration
        self.error = error


class WaitCall:
    """One caller parked in a node's pool for a connection: how long, and whether it gave up
    (``PoolTimeoutError``)."""

    __slots__ = ("duration", "server", "timed_out")

    def __init__(self, server: Address, duration: float, timed_out: bool) -> None:
        self.server = server
        self.duration = duration
        self.timed_out = timed_out


class Hook:
    """The methods a hook may have; each default does nothing.  ``before_*`` may return a
    token, handed back to the matching ``after_*`` (a span, a start time...)."""

    def before_command(self, call: CommandCall) -> Any:
        """A command is about to be routed and sent."""
        return None

    def after_command(self, call: CommandCall, token: Any) -> None:
        """The command ended: ``call.error`` is None on success."""

    def command_failed(self, call: CommandCall) -> None:
        """A command raised ``call.error`` (called only then: a hook that needs nothing else
        costs the commands that succeed nothing)."""

    def before_pipeline(self, call: PipelineCall) -> Any:
        """A pipeline or transaction is about to be sent (its commands are in ``call``)."""
        return None

    def after_pipeline(self, call: PipelineCall, token: Any) -> None:
        """The pipeline ended."""

    def after_dial(self, call: DialCall) -> None:
        """A connection attempt ended (``call.error`` set when it failed)."""

    def after_pool_wait(self, call: WaitCall) -> None:
        """A caller that had to park for a connection got one, or gave up."""

    def client_opened(self, client: Any) -> None:
        """``client`` (a ``Client`` or ``ClusterClient``) entered its ``async with``."""

    def client_closed(self, client: Any) -> None:
        """``client`` left its ``async with`` (every connection closed)."""

    def wants(self, event: str) -> bool:
        """Whether this hook wants ``event`` (``"command"``: before/after every command;
        ``"failure"``, ``"pipeline"``, ``"dial"``, ``"wait"``, ``"client"``).  By default,
        the events whose methods the hook's class overrides; a hook whose needs depend on
        its configuration says so here, so that nothing is called for it in vain."""
        return any(
            getattr(type(self), method) is not getattr(Hook, method) for method in _EVENTS[event]
        )


#: The methods of :class:`Hook` behind each event.
_EVENTS: dict[str, tuple[str, ...]] = {
    "command": ("before_command", "after_command"),
    "failure": ("command_failed",),
    "pipeline": ("before_pipeline", "after_pipeline"),
    "dial": ("after_dial",),
    "wait": ("after_pool_wait",),
    "client": ("client_opened", "client_closed"),
}


def _safely(hook: Hook, method: str, *args: Any) -> Any:
    try:
        return getattr(hook, method)(*args)
    except Exception:  # instrumentation never fails a command
        logger.exception("hook %r raised in %s (ignored)", hook, method)
        return None


class Hooks:
    """The hooks of one client, called in registration order (``after_*`` in reverse, as
    nested middleware would run).  Kept per event as immutable tuples: the command path tests
    only :attr:`commands` (empty, hence false, unless a hook wants every command), and
    registering a hook while commands run never changes a tuple a running command iterates."""

    __slots__ = ("clients", "commands", "dials", "failures", "hooks", "pipelines", "waits")

    def __init__(self, hooks: Sequence[Hook] = ()) -> None:
        self._set(tuple(hooks))

    def _set(self, hooks: tuple[Hook, ...]) -> None:
        self.hooks = hooks
        #: The hooks that want each event.
        self.commands = tuple(h for h in hooks if h.wants("command"))
        self.failures = tuple(h for h in hooks if h.wants("failure"))
        self.pipelines = tuple(h for h in hooks if h.wants("pipeline"))
        self.dials = tuple(h for h in hooks if h.wants("dial"))
        self.waits = tuple(h for h in hooks if h.wants("wait"))
        self.clients = tuple(h for h in hooks if h.wants("client"))

    def __bool__(self) -> bool:
        return bool(self.hooks)

    def add(self, hook: Hook) -> None:
        """Register ``hook`` (a hook registered twice runs twice)."""
        self._set((*self.hooks, hook))

    def remove(self, hook: Hook) -> None:
        """Unregister ``hook`` (``ValueError`` if it is not registered)."""
        hooks = list(self.hooks)
        hooks.remove(hook)
        self._set(tuple(hooks))

    def before_command(self, call: CommandCall) -> None:
        """Run every ``before_command``, keep their tokens on the call, and make it the task's
        :data:`CURRENT_CALL` until :meth:`after_command`."""
        call.tokens = [_safely(hook, "before_command", call) for hook in self.commands]
        call._token = CURRENT_CALL.set(call)

    def after_command(self, call: CommandCall, error: BaseException | None = None) -> None:
        """Close the call (its end time and error) and run every ``after_command``, then,
        if it failed, every ``command_failed``."""
        call.ended = time.perf_counter()
        call.error = error
        if call._token is not None:
            CURRENT_CALL.reset(call._token)
            call._token = None
        hooks, tokens = self.commands, call.tokens
        for index in range(min(len(hooks), len(tokens)) - 1, -1, -1):
            _safely(hooks[index], "after_command", call, tokens[index])
        if error is not None:
            self.command_failed(call)

    def command_failed(self, call: CommandCall) -> None:
        """Run every ``command_failed`` for a call that ended in ``call.error``."""
        for hook in self.failures:
            _safely(hook, "command_failed", call)

    def before_pipeline(self, call: PipelineCall) -> None:
        """Run every ``before_pipeline``."""
        call.tokens = [_safely(hook, "before_pipeline", call) for hook in self.pipelines]

    def after_pipeline(self, call: PipelineCall, error: BaseException | None = None) -> None:
        """Close the pipeline call and run every ``after_pipeline``."""
        call.ended = time.perf_counter()
        call.error = error
        hooks, tokens = self.pipelines, call.tokens
        for index in range(min(len(hooks), len(tokens)) - 1, -1, -1):
            _safely(hooks[index], "after_pipeline", call, tokens[index])

    def after_dial(self, server: Address, duration: float, error: BaseException | None) -> None:
        """Report one dial to every hook that wants dials."""
        if self.dials:
            call = DialCall(server, duration, error)
            for hook in self.dials:
                _safely(hook, "after_dial", call)

    def after_pool_wait(self, server: Address, duration: float, timed_out: bool) -> None:
        """Report one parked get to every hook that wants waits."""
        if self.waits:
            call = WaitCall(server, duration, timed_out)
            for hook in self.waits:
                _safely(hook, "after_pool_wait", call)

    def client_opened(self, client: Any) -> None:
        """Tell every hook that ``client`` opened."""
        for hook in self.clients:
            _safely(hook, "client_opened", client)

    def client_closed(self, client: Any) -> None:
        """Tell every hook that ``client`` closed."""
        for hook in self.clients:
            _safely(hook, "client_closed", client)


_default: tuple[Hook, ...] = ()


def add_default_hook(hook: Hook) -> None:
    """Register ``hook`` on every client created from now on in this process (what an
    instrumentor does: ``trio_cluster.otel.TrioClusterInstrumentor().instrument()``)."""
    global _default
    _default = (*_default, hook)


def remove_default_hook(hook: Hook) -> None:
    """Stop registering ``hook`` on new clients (clients that have it keep it)."""
    global _default
    hooks = list(_default)
    hooks.remove(hook)
    _default = tuple(hooks)


def default_hooks() -> tuple[Hook, ...]:
    """The hooks a new client starts with."""
    return _default
