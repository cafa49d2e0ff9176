"""Commands that run on several nodes of a cluster: ``target_nodes=``, keyless commands sent
to every primary (or replica, or node), and multi-key commands whose keys span slots (split per
slot).  Replies are combined as redis-py's cluster client combines them.

Every node call goes through the router (:class:`~trio_cluster.routing.router.Router`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import exceptions as rex

from ..lifetime import first_error, open_nursery, start_soon
from ..redispy import EMPTY_RESPONSE, NEVER_DECODE
from ..routing.router import Router
from ..routing.rules import RESULT_CALLBACKS, Target, slot_of
from ..routing.slotmap import Node
from ..routing.specs import CommandSpec
from ..wire.commands import COMMAND_NAME, ReplyParser
from .clusterhelpers import ClusterNode

__all__ = ["NOT_SPLIT", "FanOut"]

#: What :meth:`FanOut.split` returns for a command whose keys share one slot.
NOT_SPLIT: Any = object()
#: Options the command mixins pass for the client itself, never for a callback.
_INTERNAL_OPTIONS = frozenset({EMPTY_RESPONSE, NEVER_DECODE, "keys", COMMAND_NAME})

_TARGET_NAMES = {
    "primaries": Target.PRIMARIES,
    "replicas": Target.REPLICAS,
    "all": Target.ALL_NODES,
    "random": Target.RANDOM,
    "default-node": Target.DEFAULT_NODE,
}


class FanOut:
    """Runs one command on several nodes (or slots) through ``router``, parsing replies
    with ``replies``."""

    def __init__(self, router: Router, replies: ReplyParser) -> None:
        self._router = router
        self._replies = replies

    async def on_targets(
        self, targets: Any, spec: CommandSpec, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        """redis-py's ``target_nodes=``: a flag ("primaries", "replicas", "all", "random",
        "default-node"), a :class:`ClusterNode`, a list of them or a dict of them (as
        ``get_primaries()`` and friends return), or node names ``host:port``."""
        if isinstance(targets, str) and targets in _TARGET_NAMES:
            return await self.keyless(_TARGET_NAMES[targets], spec, args, options)
        nodes = self._nodes_named(targets)
        return self._combine(spec, await self._on_each(nodes, spec, args, options), options)

    def _nodes_named(self, targets: Any) -> list[Node]:
        """The nodes ``target_nodes=`` names (see :meth:`on_targets`)."""
        if isinstance(targets, str | ClusterNode):
            targets = [targets]
        elif isinstance(targets, dict):
            targets = list(targets.values())
        elif not isinstance(targets, list | tuple):
            raise TypeError(
                "target_nodes type can be one of the following: node_flag (primaries, "
                "replicas, all, random), ClusterNode, list<ClusterNode>, or "
                f"dict<any, ClusterNode>. The passed type is {type(targets)}"
            )
        by_name = {node.name: node for node in self._router.slots.nodes()}
        names = [t.name if isinstance(t, ClusterNode) else str(t) for t in targets]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise rex.RedisClusterException(
                f"target_nodes names unknown nodes: {', '.join(unknown)}"
            )
        return [by_name[n] for n in names]

    async def keyless(
        self, target: Target, spec: CommandSpec, args: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        """A keyless command where its target says (one node, or several combined)."""
        slots = self._router.slots
        if target in (Target.PRIMARIES, Target.ALL_NODES, Target.REPLICAS):
            if target is Target.PRIMARIES:
                nodes = slots.primaries()
            elif target is Target.REPLICAS:
                nodes = slots.replicas()
            else:
                nodes = slots.nodes()
            return self._combine(spec, await self._on_each(nodes, spec, args, options), options)
        if target is Target.RANDOM:
            node = slots.random_node()
        else:
            node = await self._router.default_node()
        reply = await self._router.call(node, args, spec)
        # As redis-py: a command with a result callback goes through it from one node too
        # (PING -> True, CLIENT UNBLOCK -> 0/1, SCAN -> its cursor shape...).
        parsed = self._replies.apply(spec.callbacks, reply, dict(options))
        return self._combine(spec, {node.name: parsed}, options)

    @staticmethod
    def _combine(spec: CommandSpec, results: dict[str, Any], options: dict[str, Any]) -> Any:
        """Combine replies from several nodes as redis-py's cluster client does
        (``RedisCluster._process_result``)."""
        name = spec.name
        callback = RESULT_CALLBACKS.get(str(name).upper())
        if callback is not None:
            extra = {k: v for k, v in options.items() if k not in _INTERNAL_OPTIONS}
            return callback(name, results, **extra)
        return next(iter(results.values())) if len(results) == 1 else results

    async def _on_each(
        self,
        nodes: Sequence[Node],
        spec: CommandSpec,
        args: tuple[Any, ...],
        options: dict[str, Any],
    ) -> dict[str, Any]:
        """Run ``args`` on every node concurrently; {node name: parsed reply}.

        Every node runs to completion (as redis-py's ``gather``); if some failed, the first
        failure in node order is raised with the others attached (never an ExceptionGroup).
        """
        results: dict[str, Any] = {}
        failures: dict[str, Exception] = {}

        async def one(node: Node) -> None:
            try:
                reply = await self._router.call(node, args, spec)
                results[node.name] = self._replies.apply(spec.callbacks, reply, dict(options))
            except Exception as error:
                failures[node.name] = error

        async with open_nursery() as nursery:
            for node in nodes:
                start_soon(nursery, one, node)
        if failures:
            raise first_error([failures[n.name] for n in nodes if n.name in failures])
        return {n.name: results[n.name] for n in nodes}

    async def split(self, spec: CommandSpec, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """MGET/MSET/DEL/... (``spec``) whose keys span slots: one command per slot,
        concurrently, reassembled in the caller's order.  Not atomic across slots.
        :data:`NOT_SPLIT` if every key is in one slot."""
        name = spec.command
        wire = args[0]  # the name as sent (encoded when the client encodes str itself)
        step = 2 if name == "MSET" else 1
        items = args[1:]
        groups: dict[int, list[int]] = {}
        for index in range(0, len(items), step):
            groups.setdefault(slot_of([items[index]]) or 0, []).append(index)
        if len(groups) == 1:
            return NOT_SPLIT
        replies: dict[int, Any] = {}
        failures: dict[int, Exception] = {}
        readonly = spec.readonly

        async def run(slot: int, indexes: list[int]) -> None:
            part = tuple(x for i in indexes for x in items[i : i + step])
            try:
                replies[slot] = await self._router.on_slot(slot, (wire, *part), spec, readonly)
            except Exception as error:
                failures[slot] = error

        async with open_nursery() as nursery:
            for slot, indexes in groups.items():
                start_soon(nursery, run, slot, indexes)
        if failures:
            raise first_error([failures[slot] for slot in groups if slot in failures])
        if name == "MGET":
            values: list[Any] = [None] * len(items)
            for slot, indexes in groups.items():
                for index, value in zip(indexes, replies[slot], strict=True):
                    values[index] = value
            return self._replies.apply(spec.callbacks, values, options)
        if name == "MSET":
            return self._replies.apply(spec.callbacks, b"OK", options)
        return sum(int(r) for r in replies.values())
