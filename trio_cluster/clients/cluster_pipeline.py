"""Pipelines across cluster nodes.

Queued commands are grouped by the node that owns their slot and every node's group is sent
at once, concurrently, in one nursery.  Results come back in the caller's order.  A MOVED or
ASK for one command re-sends that command alone to the right node; a node that fails turns
into per-command errors for its commands only (``raise_on_error=False`` returns them,
``True`` raises the first).  ``transaction=True`` wraps the commands in MULTI/EXEC, which
Redis Cluster allows only within one slot: a cross-slot transaction is refused before
anything is sent.

``watch(*keys)`` (keys of one slot) takes a connection of that slot's primary and keeps it
until ``execute()``, ``unwatch()`` or ``reset()``: commands issued while watching, before
``multi()``, run at once on it, and the transaction runs on it too.  If the slot moved away
since WATCH, the transaction fails with ``WatchError`` (the watch no longer means anything),
the slot map is updated, and :meth:`ClusterClient.transaction` simply tries again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from redis.exceptions import ResponseError, WatchError

from ..conn.connection import Connection, mark_unsent, was_unsent
from ..errors import (
    AskError,
    ClusterDownError,
    CrossSlotTransactionError,
    MovedError,
)
from ..lifetime import open_nursery, start_soon
from ..routing.nodecall import accounted, call_batch, take_connection
from ..routing.router import Router
from ..routing.rules import slot_of
from ..routing.slotmap import Node
from ..wire.commands import ReplyParser, normalize_args, pipeline_results, transaction_results
from ..wire.encoding import Encoding, prepare_args
from .pipelinebase import PipelineBase

__all__ = ["ClusterPipeline"]

_Command = tuple[tuple[Any, ...], dict[str, Any]]

#: redis-py's message for a cross-slot transaction.
_ONE_SLOT = "All keys involved in a cluster transaction must map to the same slot"


class ClusterPipeline(PipelineBase):
    """Commands queued on the client side and sent per node by :meth:`execute`.

    Command methods queue and return the pipeline: do not await them.
    """

    def __init__(
        self,
        client: Any,
        router: Router,
        encoding: Encoding,
        replies: ReplyParser,
        transaction: bool,
    ) -> None:
        super().__init__(transaction)
        #: The client's public command API: scripts are loaded through it (on every primary).
        self._client = client
        self._router = router
        self._slots = router.slots
        self._encoding = encoding
        self._replies = replies
        # While WATCHing: where the watched connection comes from, and the slot it serves.
        self._watch_node: Node | None = None
        self._watch_slot: int | None = None

    def _check_watched_slot(self, args: tuple[Any, ...]) -> None:
        slot = self._slot(args)
        if slot is not None and slot != self._watch_slot:
            raise CrossSlotTransactionError(
                f"{_ONE_SLOT} ({args[0]} touches slot {slot}, the pipeline watches slot "
                f"{self._watch_slot})"
            )

    async def _immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        conn, node = self._conn, self._watch_node
        assert conn is not None and node is not None
        self._check_watched_slot(args)
        reply = await self._on_watched(conn, node, prepare_args(args, self._encoding))
        return self._replies.parse(args[0], reply, options)

    async def _on_watched(self, conn: Connection, node: Node, args: tuple[Any, ...]) -> Any:
        """One command on the watched connection, the outcome told to the node's breaker."""
        with accounted(node):
            return await conn.execute(args)

    async def watch(self, *names: Any) -> bool:  # type: ignore[override]
        """WATCH keys (all in one slot) on a connection of the slot's primary, which the
        pipeline keeps until execute(), unwatch() or reset()."""
        if self._explicit_multi:
            raise ResponseError("cannot issue a WATCH after a MULTI")
        if not names:
            raise ResponseError("WATCH needs at least one key")
        args = normalize_args(("WATCH", *names))
        slot = slot_of(names)
        if slot is None or (self._watch_slot is not None and slot != self._watch_slot):
            raise CrossSlotTransactionError(f"{_ONE_SLOT} (the watched keys do not)")
        if self._conn is None:
            node = self._slots.primary(slot)
            if node is None:
                self._slots.request_refresh()
                raise ClusterDownError(f"CLUSTERDOWN slot {slot} is not served")
            self._conn = await take_connection(node)
            self._watch_node, self._watch_slot = node, slot
        assert self._watch_node is not None
        try:
            result = await self._on_watched(self._conn, self._watch_node, args)
        except MovedError as moved:
            # The slot left this node: point it at the new owner and let the caller retry.
            await self._slots.apply_moved(moved, self._watch_node)
            await self.reset()
            raise WatchError(f"slot {slot} moved while watching; retry") from moved
        except BaseException:
            await self.reset()
            raise
        return bool(result == b"OK" or result is True)

    async def unwatch(self) -> bool:  # type: ignore[override]
        """Forget every WATCH and give the connection back."""
        conn = self._conn
        if conn is not None:
            try:
                await conn.execute(("UNWATCH",))
            except BaseException:
                conn.broken = True
                raise
            finally:
                self._release()
        return True

    def _release(self) -> None:
        conn, node = self._conn, self._watch_node
        self._conn = self._watch_node = self._watch_slot = None
        if conn is not None and node is not None:
            node.pool.put(conn)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send every queued command and return the results in the order they were queued."""
        if not self.command_stack and self._conn is None:
            return []
        # Checked before anything is sent (scripts' SCRIPT LOAD included).
        self.command_stack = await self._checked_stack(self._encoding)
        await self._load_scripts()
        if self._conn is not None:
            return await self._execute_watched(raise_on_error)
        stack, self.command_stack = self.command_stack, []
        slots = [self._slot(args) for args, _ in stack]
        if self.transaction:
            results = await self._transaction(stack, slots)
        else:
            results = await self._pipeline(stack, slots)
        return pipeline_results(self._replies, stack, results, raise_on_error)

    async def _execute_watched(self, raise_on_error: bool) -> list[Any]:
        """The queued commands on the watched connection (MULTI/EXEC for a transaction)."""
        stack = self.command_stack
        conn, node = self._conn, self._watch_node
        assert conn is not None and node is not None
        transaction = self.transaction or self._explicit_multi
        try:
            for args, _ in stack:
                self._check_watched_slot(args)
        except BaseException:
            await self.reset()
            raise
        try:
            if transaction:
                commands: list[Sequence[Any]] = [("MULTI",), *(a for a, _ in stack), ("EXEC",)]
                replies = await self._batch_on_watched(conn, node, commands)
                queued = replies[1:-1]
                moved = next((r for r in queued if isinstance(r, MovedError)), None)
                if moved is not None:
                    await self._slots.apply_moved(moved, node)
                    raise WatchError("the watched slot moved; the transaction was not executed")
                if any(isinstance(r, AskError) for r in queued):
                    raise WatchError("the watched slot is migrating; the transaction was not run")
                results = transaction_results(stack, replies[0], queued, replies[-1])
            else:
                results = await self._batch_on_watched(conn, node, [a for a, _ in stack])
        finally:
            self.command_stack = []
            self._explicit_multi = False
            self._release()  # EXEC (or its failure) ended the WATCH
        return pipeline_results(self._replies, stack, results, raise_on_error)

    async def _batch_on_watched(
        self, conn: Connection, node: Node, commands: Sequence[Sequence[Any]]
    ) -> list[Any]:
        with accounted(node):
            return await conn.execute_many(commands)

    def _slot(self, args: tuple[Any, ...]) -> int | None:
        """The command's slot; None for keyless commands (they go to the default node)."""
        route = self._router.slot_for(args)
        return route if type(route) is int else None

    def _node_for(self, slot: int | None) -> Node | None:
        if slot is None:
            return self._slots.default_node
        return self._slots.primary(slot)

    async def _pipeline(self, stack: Sequence[_Command], slots: list[int | None]) -> list[Any]:
        router, slot_map = self._router, self._slots
        results: list[Any] = [None] * len(stack)
        pending = list(range(len(stack)))
        asking: dict[int, Node] = {}
        rounds = waits = 0  # rounds of redirects followed; back-offs taken
        deadline = trio.current_time() + router.retry.budget
        while pending:
            batches: dict[int, tuple[Node, list[int]]] = {}
            for index in pending:
                node = asking.get(index) or self._node_for(slots[index])
                if node is None:
                    slot_map.request_refresh()
                    results[index] = mark_unsent(
                        ClusterDownError(f"CLUSTERDOWN slot {slots[index]} is not served")
                    )
                    continue
                batches.setdefault(id(node), (node, []))[1].append(index)
            asking_now, asking = asking, {}

            async def send(node: Node, indexes: list[int], asks: dict[int, Node]) -> None:
                commands: list[Sequence[Any]] = []
                for index in indexes:
                    if index in asks:
                        commands.append(("ASKING",))
                    commands.append(stack[index][0])
                replies = await call_batch(node, commands)
                cursor = 0
                for index in indexes:
                    if index in asks:
                        cursor += 1  # the ASKING reply
                    results[index] = replies[cursor]
                    cursor += 1

            async with open_nursery() as nursery:
                for node, indexes in batches.values():
                    start_soon(nursery, send, node, indexes, asking_now)
            retry: list[int] = []
            unsent = False
            for index in pending:
                result = results[index]
                node = asking_now.get(index) or self._node_for(slots[index])
                if isinstance(result, MovedError):
                    await slot_map.apply_moved(result, node)
                    retry.append(index)
                elif isinstance(result, AskError):
                    asking[index] = await slot_map.ask_target(result, node)
                    retry.append(index)
                elif router.may_retry(result, deadline):
                    # Safe to repeat for any command: the server did not run it.
                    router.retries[type(result).__name__] += 1
                    unsent = unsent or was_unsent(result)
                    retry.append(index)
            if not retry:
                break
            redirects_only = all(isinstance(results[i], MovedError | AskError) for i in retry)
            rounds = rounds + 1 if redirects_only else rounds
            if rounds > router.retry.max_redirects:
                break
            if unsent:
                await router.settle_after_failure(waits)  # refresh: the node may be gone
                waits += 1
            elif not redirects_only:
                await trio.sleep(router.retry.backoff(waits))
                waits += 1
            pending = retry
        return results

    async def _transaction(self, stack: Sequence[_Command], slots: list[int | None]) -> list[Any]:
        keyed = {slot for slot in slots if slot is not None}
        if len(keyed) > 1:
            raise CrossSlotTransactionError(_ONE_SLOT)
        slot = keyed.pop() if keyed else None
        node = self._node_for(slot)
        commands: list[Sequence[Any]] = [("MULTI",), *(args for args, _ in stack), ("EXEC",)]
        for _ in range(self._router.retry.max_redirects + 1):
            if node is None:
                raise ResponseError(f"CLUSTERDOWN slot {slot} is not served")
            replies = await call_batch(node, commands)
            first = len(commands) - len(stack) - 2  # MULTI's place (ASKING may come first)
            multi, queued, executed = replies[first], replies[first + 1 : -1], replies[-1]
            redirect = next((r for r in queued if isinstance(r, MovedError | AskError)), None)
            if isinstance(redirect, MovedError):
                node = await self._slots.apply_moved(redirect, node)
                continue
            if isinstance(redirect, AskError):
                node = await self._slots.ask_target(redirect, node)
                commands = [("ASKING",), *commands]
                continue
            return transaction_results(stack, multi, queued, executed)
        raise ResponseError("too many redirects for a cluster transaction")
