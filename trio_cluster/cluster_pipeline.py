"""Pipelines across cluster nodes.

Queued commands are grouped by the node that owns their slot and every node's group is sent
at once, concurrently, in one nursery.  Results come back in the caller's order.  A MOVED or
ASK for one command re-sends that command alone to the right node; a node that fails turns
into per-command errors for its commands only (``raise_on_error=False`` returns them,
``True`` raises the first).  ``transaction=True`` wraps the commands in MULTI/EXEC, which
Redis Cluster allows only within one slot: a cross-slot transaction is refused before
anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import trio
from redis.client import EMPTY_RESPONSE
from redis.commands import AsyncCoreCommands
from redis.exceptions import ExecAbortError, ResponseError, WatchError

from .commands import normalize_args
from .connection import was_unsent
from .errors import AskError, ClusterCrossSlotError, MovedError, TryAgainError

if TYPE_CHECKING:
    from .cluster import ClusterClient, _Node

__all__ = ["ClusterPipeline"]

_Command = tuple[tuple[Any, ...], dict[str, Any]]


class ClusterPipeline(AsyncCoreCommands):
    """Commands queued on the client side and sent per node by :meth:`execute`.

    Command methods queue and return the pipeline: do not await them.
    """

    # redis-py's command protocol declares it; nothing here dispatches redis-py events.
    _event_dispatcher: Any = None

    def __init__(self, client: ClusterClient, transaction: bool) -> None:
        self._client = client
        self.transaction = transaction
        self.command_stack: list[_Command] = []

    def __len__(self) -> int:
        return len(self.command_stack)

    def __bool__(self) -> bool:
        return True

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.command_stack = []

    def execute_command(self, *args: Any, **options: Any) -> Self:
        """Queue one command."""
        self.command_stack.append((normalize_args(args), options))
        return self

    async def reset(self) -> None:  # type: ignore[override]
        """Forget the queued commands."""
        self.command_stack = []

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command and return the results in the order they were queued."""
        stack, self.command_stack = self.command_stack, []
        if not stack:
            return []
        slots = [self._slot(args) for args, _ in stack]
        if self.transaction:
            results = await self._transaction(stack, slots)
        else:
            results = await self._pipeline(stack, slots)
        parse = self._client._replies.parse
        out: list[Any] = []
        for position, ((args, options), result) in enumerate(zip(stack, results, strict=True)):
            if isinstance(result, Exception):
                if isinstance(result, ResponseError) and EMPTY_RESPONSE in options:
                    out.append(options[EMPTY_RESPONSE])
                    continue
                if raise_on_error:
                    command = " ".join(str(a) for a in args[:2])
                    result.args = (
                        f"Command # {position + 1} ({command}) of pipeline caused error: "
                        f"{result.args[0] if result.args else result}",
                        *result.args[1:],
                    )
                    raise result
                out.append(result)
            else:
                out.append(parse(args[0], result, dict(options)))
        return out

    def _slot(self, args: tuple[Any, ...]) -> int | None:
        """The command's slot; None for keyless commands (they go to the default node)."""
        route = self._client._slot_for(args)
        return route if type(route) is int else None

    def _node_for(self, slot: int | None) -> _Node | None:
        client = self._client
        if slot is None:
            return client._default_node
        return client._slot_primary[slot]

    async def _pipeline(self, stack: Sequence[_Command], slots: list[int | None]) -> list[Any]:
        client = self._client
        results: list[Any] = [None] * len(stack)
        pending = list(range(len(stack)))
        asking: dict[int, _Node] = {}
        attempts = 0
        while pending:
            batches: dict[int, tuple[_Node, list[int]]] = {}
            for index in pending:
                node = asking.get(index) or self._node_for(slots[index])
                if node is None:
                    results[index] = ResponseError(f"CLUSTERDOWN slot {slots[index]} not served")
                    continue
                batches.setdefault(id(node), (node, []))[1].append(index)
            asking_now, asking = asking, {}

            async def send(node: _Node, indexes: list[int], asks: dict[int, _Node]) -> None:
                commands: list[Sequence[Any]] = []
                for index in indexes:
                    if index in asks:
                        commands.append(("ASKING",))
                    commands.append(stack[index][0])
                replies = await client.execute_batch(node, commands)
                cursor = 0
                for index in indexes:
                    if index in asks:
                        cursor += 1  # the ASKING reply
                    results[index] = replies[cursor]
                    cursor += 1

            async with trio.open_nursery() as nursery:
                for node, indexes in batches.values():
                    nursery.start_soon(send, node, indexes, asking_now)
            retry: list[int] = []
            for index in pending:
                result = results[index]
                node = asking_now.get(index) or self._node_for(slots[index])
                if isinstance(result, MovedError):
                    client._moved += 1
                    target = await client._node(client.redirect_address(result, node))
                    client._slot_primary[result.slot] = target
                    client.request_refresh()
                    retry.append(index)
                elif isinstance(result, AskError):
                    client._ask += 1
                    asking[index] = await client._node(client.redirect_address(result, node))
                    retry.append(index)
                elif isinstance(result, TryAgainError) or (
                    isinstance(result, Exception) and was_unsent(result)
                ):
                    client._retries[type(result).__name__] += 1
                    retry.append(index)
            attempts += 1
            if not retry or attempts > client.retry.max_redirects:
                break
            if any(not isinstance(results[i], MovedError | AskError) for i in retry):
                await trio.sleep(client.retry.backoff(attempts - 1))
            pending = retry
        return results

    async def _transaction(self, stack: Sequence[_Command], slots: list[int | None]) -> list[Any]:
        keyed = {slot for slot in slots if slot is not None}
        if len(keyed) > 1:
            raise ClusterCrossSlotError(
                "CROSSSLOT a cluster transaction must keep every key in one slot (use a hash tag)"
            )
        slot = keyed.pop() if keyed else None
        client = self._client
        node = self._node_for(slot)
        commands: list[Sequence[Any]] = [("MULTI",), *(args for args, _ in stack), ("EXEC",)]
        for _ in range(client.retry.max_redirects + 1):
            if node is None:
                raise ResponseError(f"CLUSTERDOWN slot {slot} is not served")
            replies = await client.execute_batch(node, commands)
            queued, executed = replies[1:-1], replies[-1]
            redirect = next((r for r in queued if isinstance(r, MovedError | AskError)), None)
            if isinstance(redirect, MovedError):
                client._moved += 1
                node = await client._node(client.redirect_address(redirect, node))
                client._slot_primary[redirect.slot] = node
                client.request_refresh()
                continue
            if isinstance(redirect, AskError):
                client._ask += 1
                node = await client._node(client.redirect_address(redirect, node))
                commands = [("ASKING",), *commands]
                continue
            return _transaction_results(replies[0], queued, executed, len(stack))
        raise ResponseError("too many redirects for a cluster transaction")


def _transaction_results(multi: Any, queued: list[Any], executed: Any, count: int) -> list[Any]:
    if isinstance(multi, Exception):
        raise multi
    if isinstance(executed, ExecAbortError):
        first = next((r for r in queued if isinstance(r, Exception)), None)
        raise first if first is not None else executed
    if isinstance(executed, Exception):
        raise executed
    if executed is None:
        raise WatchError("a watched key changed; the transaction was not executed")
    if len(executed) != count:
        raise ResponseError("wrong number of results from EXEC")
    return list(executed)
