"""What the standalone and the cluster pipeline share: queueing, WATCH mode, MULTI, and the
``async with`` that resets the pipeline (and gives back a watched connection) on exit.

Also :class:`Script` (``register_script``): redis-py's ``AsyncScript``, also callable with
``client=pipe`` on our pipelines (the script is loaded before the pipeline runs, as redis-py's
pipelines do)."""

from __future__ import annotations

import time
from collections.abc import Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Self

import trio
from redis.exceptions import ResponseError

from ..conn.connection import Connection
from ..errors import ArgumentTypeError
from ..hooks import CommandCall, Hooks, PipelineCall
from ..lifetime import Scoped
from ..redispy import AsyncCoreCommands, AsyncScript
from ..wire.commands import queue_entry
from ..wire.encoding import Encoding, prepare_stack, text

if TYPE_CHECKING:
    from ..redispy import Encoder

__all__ = ["PipelineBase", "Script"]

_Command = tuple[tuple[Any, ...], dict[str, Any]]


# The ignore: with a second base, mypy checks redis-py's own mixins against each other
# (their ``command_info`` signatures differ); nothing of ours is involved.
class PipelineBase(AsyncCoreCommands, Scoped):  # type: ignore[misc]
    """Commands queued on the client side; subclasses send them (``execute``), run commands
    at once while watching (``_immediate``) and undo WATCH (``reset``).

    Command methods queue and return the pipeline: do not await them.
    """

    # redis-py's command protocol declares it; nothing here dispatches redis-py events.
    _event_dispatcher: Any = None
    #: redis-py's typing marker, as ``redis.asyncio`` pipelines carry it.
    _is_async_client: Literal[True] = True

    _client: Any
    """The client the pipeline belongs to (its hooks, its settings)."""

    def __init__(self, transaction: bool, hooks: Hooks | None = None) -> None:
        self.transaction = transaction
        #: The client's command hooks (``before_pipeline``/``after_pipeline``).
        self._hooks = hooks if hooks is not None else Hooks()
        #: Scripts queued with ``script(..., client=pipe)``: loaded before the pipeline runs.
        self.scripts: set[Script] = set()
        self.command_stack: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._conn: Connection | None = None  # held while WATCHing
        self._explicit_multi = False

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command and return their results in the order they were queued
        (an error reply raises, or is returned in its place with ``raise_on_error=False``)."""
        hooks = self._hooks
        if not hooks.pipelines:
            return await self._execute(raise_on_error)
        stack = list(self.command_stack)
        call = PipelineCall(self.transaction or self._explicit_multi, db=self._client._db)
        call.commands = [
            CommandCall(text(args[0]).upper(), len(args) - 1, db=call.db, pipeline=call)
            for args, _ in stack
        ]
        hooks.before_pipeline(call)
        try:
            results = await self._execute(raise_on_error)
        except BaseException as error:
            self._place(call, stack, None)
            hooks.after_pipeline(call, error)
            raise
        self._place(call, stack, results)
        hooks.after_pipeline(call)
        return results

    def _place(
        self, call: PipelineCall, stack: Sequence[_Command], results: Sequence[Any] | None
    ) -> None:
        """Fill in each command's node (who owns its slot now, after any redirect) and error
        (an error reply returned in its place)."""
        for index, (command, (args, options)) in enumerate(zip(call.commands, stack, strict=True)):
            command.server = self._server_of(args, options)
            command.ended = time.perf_counter()
            result = results[index] if results is not None and index < len(results) else None
            if isinstance(result, Exception):
                command.error = result

    async def _execute(self, raise_on_error: bool) -> list[Any]:
        """Send the queued commands (the subclass's way); see :meth:`execute`."""
        raise NotImplementedError

    def _server_of(self, args: tuple[Any, ...], options: dict[str, Any]) -> tuple[str, int] | None:
        """The node a queued command went to, for the hooks."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.command_stack)

    def __bool__(self) -> bool:
        return True

    def __await__(self) -> Generator[Any, None, Self]:
        """``await pipe.set(...)`` gives the pipeline back, as redis-py's asyncio pipeline."""
        return self._self().__await__()

    async def _self(self) -> Self:
        return self

    async def _close(self) -> None:
        await self.reset()

    async def reset(self) -> None:  # type: ignore[override]
        """Forget the queued commands; if still watching, UNWATCH and give the connection
        back."""
        self.command_stack = []
        self._explicit_multi = False
        conn = self._conn
        if conn is not None:
            try:
                if not conn.broken and conn.owed_replies == 0:
                    with trio.CancelScope(shield=True):
                        await conn.execute(("UNWATCH",))
            except Exception:
                conn.broken = True  # never pool a connection that may still watch keys
            finally:
                self._release()

    def _release(self) -> None:
        """Give the watched connection back to its pool and forget it."""
        raise NotImplementedError

    async def _immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def _checked_stack(
        self, encoding: Encoding
    ) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        """The queued commands ready to send, checked before anything is: a value redis-py
        refuses (``None``...) raises its ``DataError`` and resets the pipeline, as redis-py's
        ``execute`` does; ``bytearray`` values are converted."""
        try:
            return prepare_stack(self.command_stack, encoding)
        except ArgumentTypeError:
            await self.reset()
            raise

    @property
    def watching(self) -> bool:
        """Whether WATCH is in force on the pipeline's connection."""
        return self._conn is not None

    def execute_command(self, *args: Any, **options: Any) -> Any:
        """Queue a command (or, while watching and before MULTI, run it at once)."""
        entry = queue_entry(args, options)
        if self._conn is not None and not self._explicit_multi:
            return self._immediate(*entry)
        self.command_stack.append(entry)
        return self

    def get_encoder(self) -> Encoder:
        """The client's encoder (redis-py's ``Script`` asks for it)."""
        encoder: Encoder = self._client.get_encoder()
        return encoder

    def register_script(self, script: Any) -> Script:  # type: ignore[override]
        """A script whose calls queue on this pipeline (see ``ClientBase.register_script``)."""
        return Script(self, script)  # type: ignore[arg-type]

    async def discard(self) -> None:
        """Forget the queued commands and MULTI, and end any WATCH (the server's DISCARD
        does both)."""
        await self.reset()
        self.scripts = set()

    async def _load_scripts(self) -> None:
        """Make sure the scripts queued on the pipeline exist on the server (on a cluster,
        on every primary) before EVALSHA runs, as redis-py's pipelines do."""
        scripts, self.scripts = list(self.scripts), set()
        if not scripts:
            return
        client: Any = self._client
        exists = await client.script_exists(*(s.sha for s in scripts))
        for script, present in zip(scripts, exists, strict=True):
            if not present:
                script.sha = await client.script_load(script.script)

    def multi(self) -> None:
        """Start the transaction after WATCH: later commands are queued for MULTI/EXEC."""
        if self._explicit_multi:
            raise ResponseError("MULTI calls can not be nested")
        if self.command_stack:
            raise ResponseError("commands without an initial WATCH have already been issued")
        self._explicit_multi = True


class Script(AsyncScript):
    """A Lua script run by EVALSHA (loaded again after NOSCRIPT)."""

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        """Run the script on the client it was registered with, or on ``client``: another
        client, or a pipeline (then it is queued, and the pipeline is returned)."""
        if client is None:
            client = self.registered_client  # may be a pipeline (pipe.register_script)
        if isinstance(client, PipelineBase):
            keys = list(keys or [])
            client.scripts.add(self)
            pipe: Any = client
            return pipe.evalsha(self.sha, len(keys), *keys, *(args or []))
        return await super().__call__(keys, args, client)
