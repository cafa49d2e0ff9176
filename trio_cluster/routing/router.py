"""The router: from a command to the node that runs it, with every redirect and retry rule.

How a command travels: its keys give a slot (:mod:`.rules`), the slot gives a node (the
:class:`~.slotmap.SlotMap`), the node call (:mod:`.nodecall`) checks the breaker, borrows a
connection and classifies the outcome.  Then:

* MOVED: the slot map applies it (the slot points at the new owner at once, a topology refresh
  is requested) and the command goes to the new owner.
* ASK: ASKING and the command go to the named node; the map is left alone.
* TRYAGAIN, CLUSTERDOWN, MASTERDOWN, LOADING: retried with exponential backoff and jitter.
* A command that provably never reached a server (refused, dial failure, breaker open) is
  retried for any command, after a refresh, inside a time budget long enough to ride out a
  failover.  A command that may have run is retried only when it only reads.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs
import trio
from redis.exceptions import ResponseError

from ..conn.connection import mark_unsent, was_unsent
from ..conn.dialer import Dialer
from ..errors import (
    NETWORK_ERRORS,
    SERVER_DID_NOT_RUN,
    AskError,
    ClusterDownError,
    CrossSlotKeysError,
    MasterDownError,
    MovedError,
    PoolTimeoutError,
)
from ..wire.encoding import text
from . import nodecall
from .rules import CommandSpec, CommandTable, Target, key_slot, keyless_target, slot_of
from .slotmap import Node, ReadFrom, SlotMap
from .topology import Address

__all__ = ["RetryOptions", "Router", "cross_slot_message"]


@attrs.frozen(kw_only=True)
class RetryOptions:
    """How hard the client tries before an error reaches the caller."""

    max_redirects: int = 5
    """MOVED/ASK followed per command."""
    retries: int = 3
    """Retries of a read whose outcome is unknown (a timeout or a dropped connection)."""
    transient_retries: int = 30
    """Retries of replies saying the server did not run the command (TRYAGAIN, CLUSTERDOWN,
    MASTERDOWN, LOADING), within ``budget``."""
    backoff_base: float = 0.025
    """First backoff (seconds); doubles each retry, with full jitter."""
    backoff_cap: float = 0.5
    """Longest single backoff."""
    budget: float = 10.0
    """Seconds a command that provably never reached a server keeps being retried."""

    def __attrs_post_init__(self) -> None:
        for name in ("max_redirects", "retries", "transient_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0; got {value!r}")
        for name in ("backoff_base", "backoff_cap", "budget"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0; got {value!r}")

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the ``attempt``-th retry (0-based)."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * (2**attempt)))


class Router:
    """Routes commands over a :class:`SlotMap` and runs them with the retry rules.

    ``commands`` is the server's command table (replaced on the first refresh); ``dialer``
    opens one-off connections (the helper that unblocks a cancelled blocking command).
    ``startup`` are the startup nodes (remapped): keyless commands go to the first until a
    topology is known.  ``closed`` is set by the owner when it closes: nothing is retried
    after that.
    """

    def __init__(
        self,
        slots: SlotMap,
        retry: RetryOptions,
        dialer: Dialer,
        commands: CommandTable,
        startup: Sequence[Address],
    ) -> None:
        self.slots = slots
        self.startup = startup
        self.retry = retry
        self.dialer = dialer
        self.commands = commands
        self.closed = False
        #: Retries taken, by reason (for stats).
        self.retries: Counter[str] = Counter()

    # --- where a command goes --------------------------------------------------------------

    def slot_for(
        self, args: tuple[Any, ...], spec: CommandSpec | bool | None = False
    ) -> int | Target:
        """The slot of a keyed command, or where a keyless one goes.  Raises
        CrossSlotKeysError if its keys span slots."""
        keys = self.commands.keys(args, spec)
        if keys:
            slot = slot_of(keys)
            if slot is None:
                raise CrossSlotKeysError(cross_slot_message(args))
            return slot
        name = text(args[0]).upper()
        if name == "PUBLISH" and len(args) > 1:
            # As redis-py's cluster: the channel's slot, where a PubSub subscribing to it
            # connects too, so the reply counts that subscriber.
            return key_slot(args[1])
        target = keyless_target(f"{name} {text(args[1]).upper()}" if len(args) > 1 else name)
        if target is None:
            target = keyless_target(name)
        if target is Target.SLOT_ID:
            return int(args[2])
        return target if target is not None else Target.DEFAULT_NODE

    async def route(self, args: tuple[Any, ...], spec: CommandSpec | None) -> int | Target:
        """:meth:`slot_for`, asking the server (COMMAND GETKEYS) for commands whose keys only
        it can find."""
        if not self.commands.needs_getkeys(args, spec):
            return self.slot_for(args, spec)
        node = await self.default_node()
        try:
            keys = await self.call(node, ("COMMAND", "GETKEYS", *args))
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

    async def call(
        self, node: Node, args: tuple[Any, ...], *, asking: bool = False, simple: bool = False
    ) -> Any:
        """One attempt on one node (:func:`.nodecall.call`)."""
        measure = self.slots.read_from is ReadFrom.LOWEST_LATENCY
        return await nodecall.call(
            node, args, dialer=self.dialer, asking=asking, simple=simple, measure=measure
        )

    async def on_slot(
        self,
        slot: int,
        args: tuple[Any, ...],
        readonly: bool | None = None,
        *,
        simple: bool = False,
    ) -> Any:
        """Run a command on the owner of ``slot`` (or a replica for reads), with every
        redirect and retry rule applied.  ``readonly``: whether the command only reads
        (looked up when not given)."""
        retry = self.retry
        slots = self.slots
        call = nodecall.call
        dialer = self.dialer
        measure = slots.read_from is ReadFrom.LOWEST_LATENCY
        if readonly is None:
            readonly = self.commands.is_readonly(args)
        use_replica = readonly and slots.read_from is not ReadFrom.PRIMARY
        redirects = transient = unknown = 0
        asking: Node | None = None
        node: Node | None = None
        deadline = math.inf  # set at the first retry: the happy path never reads the clock
        while True:
            try:
                if asking is not None:
                    node, asking = asking, None
                    return await call(node, args, dialer=dialer, asking=True, measure=measure)
                primary = slots.primary(slot)
                if primary is None:
                    slots.request_refresh()
                    raise mark_unsent(ClusterDownError(f"CLUSTERDOWN slot {slot} is not served"))
                node = slots.for_read(slot, primary) if use_replica else primary
                return await call(node, args, dialer=dialer, simple=simple, measure=measure)
            except MovedError as moved:
                redirects += 1
                if redirects > retry.max_redirects:
                    slots.moved += 1
                    raise
                await slots.apply_moved(moved, node)
            except AskError as ask:
                redirects += 1
                if redirects > retry.max_redirects:
                    slots.ask += 1
                    raise
                asking = await slots.ask_target(ask, node)
            except SERVER_DID_NOT_RUN as error:
                # The server says it did not run the command: safe to retry for any command.
                now = trio.current_time()
                if deadline == math.inf:
                    deadline = now + retry.budget
                if transient >= retry.transient_retries or now >= deadline:
                    raise
                self.retries[type(error).__name__] += 1
                if isinstance(error, ClusterDownError | MasterDownError):
                    slots.request_refresh()
                await trio.sleep(retry.backoff(transient))
                transient += 1
            except PoolTimeoutError:
                raise  # waiting again would break the caller's bound on a pool wait
            except NETWORK_ERRORS as error:
                if use_replica and node is not slots.primary(slot):
                    # A replica failed (or its breaker is open): fall back to the primary at
                    # once; a read is safe to repeat there whether or not it reached the replica.
                    self.retries["replica_fallback"] += 1
                    use_replica = False
                    continue
                if was_unsent(error):
                    now = trio.current_time()
                    if deadline == math.inf:
                        deadline = now + retry.budget
                    if self.closed or now >= deadline:
                        raise
                    self.retries["unsent"] += 1
                    await self.settle_after_failure(unknown)
                    unknown += 1
                elif readonly and unknown < retry.retries:
                    self.retries["read"] += 1
                    await self.settle_after_failure(unknown)
                    unknown += 1
                else:
                    raise

    async def settle_after_failure(self, attempt: int) -> None:
        """Back off, and wait (briefly) for a fresh topology: the node may be gone."""
        with trio.move_on_after(max(self.retry.backoff(attempt), 0.01) + 1.0):
            await self.slots.refresh()
        await trio.sleep(self.retry.backoff(attempt))

    def may_retry(self, error: object, deadline: float) -> bool:
        """Whether a pipeline may send again a command that failed with ``error``: the
        server did not run it, the client is open and the budget not spent."""
        return (
            isinstance(error, Exception)
            and (was_unsent(error) or isinstance(error, SERVER_DID_NOT_RUN))
            and trio.current_time() < deadline
            and not self.closed
        )


def cross_slot_message(args: tuple[Any, ...]) -> str:
    """redis-py's words for a command whose keys span slots."""
    return f"{text(args[0]).upper()} - all keys must map to the same key slot"
