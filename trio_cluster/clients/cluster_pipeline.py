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

from redis.exceptions import ResponseError, WatchError

from ..conn.connection import Connection
from ..errors import NETWORK_ERRORS, AskError, CrossSlotTransactionError, MovedError
from ..hooks import Hooks
from ..lifetime import open_nursery, start_soon
from ..routing.nodecall import accounted, call_batch, take_connection
from ..routing.policy import Attempt, Rule, classify, longer_wait
from ..routing.router import Router
from ..routing.rules import slot_of
from ..routing.slotmap import Node
from ..routing.specs import CommandSpec, batch_wait, script_wait
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
        hooks: Hooks | None = None,
    ) -> None:
        super().__init__(transaction, hooks)
        #: The client's public command API: scripts are loaded through it (on every primary).
        self._client = client
        self._router = router
        self._slots = router.slots
        self._specs = router.specs
        self._encoding = encoding
        self._replies = replies
        # While WATCHing: where the watched connection comes from, and the slot it serves.
        self._watch_node: Node | None = None
        self._watch_slot: int | None = None

    def _check_watched_slot(self, args: tuple[Any, ...], spec: CommandSpec) -> None:
        slot = self._slot(args, spec)
        if slot is not None and slot != self._watch_slot:
            raise CrossSlotTransactionError(
                f"{_ONE_SLOT} ({args[0]} touches slot {slot}, the pipeline watches slot "
                f"{self._watch_slot})"
            )

    async def _immediate(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        conn, node = self._conn, self._watch_node
        assert conn is not None and node is not None
        spec = self._specs.queued(args, options)
        self._check_watched_slot(args, spec)
        reply = await self._on_watched(conn, node, prepare_args(args, self._encoding))
        return self._replies.apply(spec.callbacks, reply, options)

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
                raise self._slots.not_served(slot)
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

    def _server_of(self, args: tuple[Any, ...], options: dict[str, Any]) -> tuple[str, int] | None:
        node = self._node_for(self._slot(args, self._specs.queued(args, options)))
        return node.address if node is not None else None

    async def _execute(self, raise_on_error: bool) -> list[Any]:
        """Send every queued command and return the results in the order they were queued."""
        if not self.command_stack and self._conn is None:
            return []
        # Checked before anything is sent (scripts' SCRIPT LOAD included).
        self.command_stack = await self._checked_stack(self._encoding)
        await self._load_scripts()
        if self._conn is not None:
            return await self._execute_watched(raise_on_error)
        stack, self.command_stack = self.command_stack, []
        specs = [self._specs.queued(*entry) for entry in stack]
        slots = [self._slot(args, spec) for (args, _), spec in zip(stack, specs, strict=True)]
        if self.transaction:
            scripts = sum(1 for spec in specs if spec.script)
            results = await self._transaction(stack, slots, scripts)
        else:
            results = await self._pipeline(stack, specs, slots)
        chains = [spec.callbacks for spec in specs]
        return pipeline_results(self._replies, chains, stack, results, raise_on_error)

    async def _execute_watched(self, raise_on_error: bool) -> list[Any]:
        """The queued commands on the watched connection (MULTI/EXEC for a transaction)."""
        stack = self.command_stack
        conn, node = self._conn, self._watch_node
        assert conn is not None and node is not None
        transaction = self.transaction or self._explicit_multi
        specs = [self._specs.queued(*entry) for entry in stack]
        try:
            for (args, _), spec in zip(stack, specs, strict=True):
                self._check_watched_slot(args, spec)
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
        chains = [spec.callbacks for spec in specs]
        return pipeline_results(self._replies, chains, stack, results, raise_on_error)

    async def _batch_on_watched(
        self, conn: Connection, node: Node, commands: Sequence[Sequence[Any]]
    ) -> list[Any]:
        with accounted(node):
            return await conn.execute_many(commands)

    def _slot(self, args: tuple[Any, ...], spec: CommandSpec) -> int | None:
        """The command's slot; None for keyless commands (they go to the default node)."""
        route = self._router.slot_for(args, spec)
        return route if type(route) is int else None

    def _node_for(self, slot: int | None) -> Node | None:
        if slot is None:
            return self._slots.default_node
        return self._slots.primary(slot)

    async def _pipeline(
        self, stack: Sequence[_Command], specs: Sequence[CommandSpec], slots: list[int | None]
    ) -> list[Any]:
        """Each node's commands in one batch, all nodes at once; then the retry policy for
        each failed command: redirected ones go again at once, waits are taken once per round
        (the longest any command needs)."""
        policy = self._router.policy
        slot_map = self._slots
        results: list[Any] = [None] * len(stack)
        pending = list(range(len(stack)))
        asking: dict[int, Node] = {}
        attempts: dict[int, Attempt] = {}
        waits = 0
        while pending:
            batches: dict[int, tuple[Node, list[int]]] = {}
            sent_to: dict[int, Node | None] = {}
            for index in pending:
                node = sent_to[index] = asking.get(index) or self._node_for(slots[index])
                if node is None:
                    results[index] = slot_map.not_served(slots[index])
                    continue
                batches.setdefault(id(node), (node, []))[1].append(index)
            asking_now, asking = asking, {}

            async def send(node: Node, indexes: list[int], asks: dict[int, Node]) -> None:
                commands: list[Sequence[Any]] = []
                for index in indexes:
                    if index in asks:
                        commands.append(("ASKING",))
                    commands.append(stack[index][0])
                config = node.dialer.config
                wait = batch_wait([specs[i].extra_wait(stack[i][0], config) for i in indexes])
                replies = await call_batch(node, commands, blocks_for=wait)
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
            wait: Rule | None = None
            for index in pending:
                result = results[index]
                if not isinstance(result, Exception):
                    continue
                attempt = attempts.get(index)
                if attempt is None:
                    server = specs[index].on_server(stack[index][0])
                    readonly = server is not None and server.readonly
                    attempt = attempts[index] = policy.attempt(readonly)
                node = sent_to[index]
                rule = await attempt.decide(result, node)
                if rule is Rule.RAISE:
                    continue
                if rule is Rule.MOVED or rule is Rule.ASK:
                    target = await attempt.redirect(rule, result, node)
                    if rule is Rule.ASK:
                        asking[index] = target
                else:
                    wait = longer_wait(wait, rule)
                retry.append(index)
            if wait is not None:
                await policy.pause(wait, waits)
                waits += 1
            pending = retry
        return results

    async def _transaction(
        self, stack: Sequence[_Command], slots: list[int | None], scripts: int
    ) -> list[Any]:
        """MULTI, the commands and EXEC in one batch to the slot's node, under the retry
        policy: a command refused at queue time (MOVED, ASK, TRYAGAIN...: EXEC then runs
        nothing) or a batch that never left sends the whole transaction again.  EXEC's
        reply waits the ``scripts`` scripts' time too (blocking commands do not block
        inside MULTI)."""
        keyed = {slot for slot in slots if slot is not None}
        if len(keyed) > 1:
            raise CrossSlotTransactionError(_ONE_SLOT)
        slot = keyed.pop() if keyed else None
        commands: list[Sequence[Any]] = [("MULTI",), *(args for args, _ in stack), ("EXEC",)]
        attempt = self._router.policy.attempt(readonly=False)
        asking: Node | None = None
        while True:
            asked, asking = asking, None
            node = asked if asked is not None else self._node_for(slot)
            try:
                if node is None:
                    raise self._slots.not_served(slot)
                batch = commands if asked is None else [("ASKING",), *commands]
                wait = batch_wait([script_wait(node.dialer.config)] * scripts)
                replies = await call_batch(node, batch, blocks_for=wait)
                first = len(batch) - len(stack) - 2  # MULTI's place (ASKING may come first)
                multi, queued, executed = replies[first], replies[first + 1 : -1], replies[-1]
                refused = next((r for r in queued if classify(r, False) in _RESEND), None)
                if refused is not None:
                    raise refused  # EXEC ran nothing: the policy decides
                if isinstance(executed, NETWORK_ERRORS):
                    raise executed  # the node failed (unsent or not: the policy decides)
                return transaction_results(stack, multi, queued, executed)
            except Exception as error:
                rule = await attempt.decide(error, node)
                if rule is Rule.RAISE:
                    raise
                if rule is Rule.MOVED or rule is Rule.ASK:
                    target = await attempt.redirect(rule, error, node)
                    asking = target if rule is Rule.ASK else None
                else:
                    await attempt.pause(rule)


#: Rules under which a transaction refused at queue time is sent again.
_RESEND = frozenset({Rule.MOVED, Rule.ASK, Rule.TRYAGAIN, Rule.CLUSTERDOWN})
