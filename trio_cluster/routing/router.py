"""The router: from a command to the node that runs it.

How a command travels: its keys give a slot (:mod:`.rules`), the slot gives a node (the
:class:`~.slotmap.SlotMap`), the node call (:mod:`.nodecall`) checks the breaker, borrows a
connection and tells the breaker how the call went, and the one retry policy (:mod:`.policy`)
classifies the outcome and says what follows: done, a redirect, a wait and another try, or
the error raised.  A command for a known-bad node that the policy would not wait for is
refused here, before the node call (:meth:`Router._isolated_refusal`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio
from redis.exceptions import ResponseError

from ..config import RetryOptions
from ..conn.dialer import Dialer
from ..errors import CrossSlotKeysError
from ..pooling.breaker import BreakerState, CircuitOpenError
from ..wire.encoding import text
from . import nodecall
from .isolation import Isolation
from .policy import Attempt, RetryPolicy, Rule
from .rules import Target, command_keys, key_slot, needs_getkeys, slot_of
from .slotmap import Node, ReadFrom, SlotMap
from .specs import CommandSpec, CommandSpecs
from .topology import Address

__all__ = ["REFUSALS_PER_CHECKPOINT", "Router", "cross_slot_message"]

#: Refusals of commands for known-bad nodes per checkpoint (see ``Router._isolated_refusal``).
REFUSALS_PER_CHECKPOINT = 8


class Router:
    """Routes commands over a :class:`SlotMap` and runs them with the retry rules.

    ``specs`` is the client's command-spec table (the server's command table installed into
    it on the first refresh); ``dialer`` opens one-off connections (the helper that unblocks
    a cancelled blocking command).  ``startup`` are the startup nodes (remapped): keyless
    commands go to the first until a topology is known.  ``retry`` configures the retry
    policy (:attr:`policy`), whose ``closed`` the owner sets when it closes: nothing is
    retried after that.
    """

    def __init__(
        self,
        slots: SlotMap,
        retry: RetryOptions,
        dialer: Dialer,
        specs: CommandSpecs,
        startup: Sequence[Address],
    ) -> None:
        self.slots = slots
        self.startup = startup
        self.dialer = dialer
        self.specs = specs
        isolation = Isolation(
            slots, retry.failover_wait, nodecall.call_batch, retry.failover_wait_max
        )
        #: The redirect and retry rules, with their counters.
        self.policy = RetryPolicy(retry, slots, isolation)

    # --- where a command goes --------------------------------------------------------------

    def slot_for(self, args: tuple[Any, ...], spec: CommandSpec) -> int | Target:
        """The slot of a keyed command, or where a keyless one goes.  Raises
        CrossSlotKeysError if its keys span slots."""
        keys = command_keys(spec.on_server(args), args)
        if keys:
            slot = slot_of(keys)
            if slot is None:
                raise CrossSlotKeysError(cross_slot_message(args))
            return slot
        target = spec.target_for(args)
        if target is Target.CHANNEL_SLOT:
            return key_slot(args[1]) if len(args) > 1 else Target.DEFAULT_NODE
        if target is Target.SLOT_ID:
            return int(args[2])
        return target if target is not None else Target.DEFAULT_NODE

    async def route(self, args: tuple[Any, ...], spec: CommandSpec) -> int | Target:
        """:meth:`slot_for`, asking the server (COMMAND GETKEYS) for commands whose keys only
        it can find."""
        if not needs_getkeys(spec.on_server(args)):
            return self.slot_for(args, spec)
        node = await self.default_node()
        try:
            keys = await self.call(node, ("COMMAND", "GETKEYS", *args), self.specs.get("COMMAND"))
        except ResponseError:
            return Target.DEFAULT_NODE  # no keys (or malformed: the real call will say so)
        slot = slot_of(keys) if keys else None
        if keys and slot is None:
            raise CrossSlotKeysError(cross_slot_message(args))
        return slot if slot is not None else Target.DEFAULT_NODE

    async def default_node(self) -> Node:
        """Where keyless commands go (the first startup node before any topology)."""
        node = self.slots.default_node
        return node if node is not None else await self.slots.node(self.startup[0])

    # --- running -----------------------------------------------------------------------------

    async def call(self, node: Node, args: tuple[Any, ...], spec: CommandSpec) -> Any:
        """One attempt on one node (:func:`.nodecall.call`), no retries."""
        measure = self.slots.read_from is ReadFrom.LOWEST_LATENCY
        return await nodecall.call(node, args, spec, self.dialer, measure=measure)

    async def _isolated_refusal(self, node: Node) -> CircuitOpenError | None:
        """The refusal for a command to a known-bad node's slots when the policy would not
        wait for the node (no replica, or the cluster finds it healthy), after one
        checkpoint; None when the full path must decide (a probe is due, or the policy must
        ask the cluster).  A refused command must cost as little as it can, or the healthy
        slots pay for it: in a closed loop a third of the commands may be refused (issue
        23's blast radius), and this skips the node call and the retry policy."""
        if self.policy.isolation.rides_out_now(node) is not False:
            return None
        refusal = node.breaker.refusal()
        if refusal is not None:
            self.policy.isolated += 1
            # A call that raises need not checkpoint (trio's own functions may not), but a
            # loop of refused calls must still let the others run and see its cancellation:
            # every REFUSALS_PER_CHECKPOINT-th refusal checkpoints.  A checkpoint is a trip
            # through the scheduler, the largest part of a refusal's cost.
            if not self.policy.isolated % REFUSALS_PER_CHECKPOINT:
                await trio.lowlevel.checkpoint()
        return refusal

    async def on_slot(
        self, slot: int, args: tuple[Any, ...], spec: CommandSpec, readonly: bool
    ) -> Any:
        """Run a command (described by ``spec``) on the owner of ``slot``, or a replica for a
        read (``readonly``: it only reads), following the retry policy."""
        slots = self.slots
        call = nodecall.call
        dialer = self.dialer
        measure = slots.read_from is ReadFrom.LOWEST_LATENCY
        use_replica = readonly and slots.read_from is not ReadFrom.PRIMARY
        asking: Node | None = None
        attempt: Attempt | None = None  # made at the first failure: the happy path makes none
        refused: CircuitOpenError | None = None
        while True:
            node = asking
            on_replica = False
            try:
                if node is not None:
                    asking = None
                    return await call(node, args, spec, dialer, asking=True, measure=measure)
                node = slots.primary(slot)
                if node is None:
                    raise slots.not_served(slot)
                if use_replica:
                    primary, node = node, slots.for_read(slot, node)
                    on_replica = node is not primary
                if node.breaker.state is not BreakerState.CLOSED and not on_replica:
                    refused = await self._isolated_refusal(node)
                    if refused is not None:
                        break
                return await call(node, args, spec, dialer, measure=measure)
            except Exception as error:
                if attempt is None:
                    attempt = self.policy.attempt(readonly)
                rule = await attempt.decide(error, node, replica=on_replica)
                if rule is Rule.RAISE:
                    raise
                if rule is Rule.MOVED or rule is Rule.ASK:
                    target = await attempt.redirect(rule, error, node)
                    asking = target if rule is Rule.ASK else None
                elif on_replica and rule is Rule.RETRY_AFTER:
                    use_replica = False  # the replica failed: its primary, at once
                else:
                    await attempt.pause(rule)
        assert refused is not None  # the loop is left only by a fast refusal
        raise refused


def cross_slot_message(args: tuple[Any, ...]) -> str:
    """redis-py's words for a command whose keys span slots."""
    return f"{text(args[0]).upper()} - all keys must map to the same key slot"
