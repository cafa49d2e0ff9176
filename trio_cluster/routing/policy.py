"""The one redirect and retry policy of the cluster client.

What an outcome means and what happens next is decided here and nowhere else, for single
commands and the parts of split commands (:meth:`.router.Router.on_slot`), pipelines and
transactions (``clients/cluster_pipeline.py``).  A MOVED is applied by the slot map
(:meth:`.slotmap.SlotMap.apply_moved`), the one place that does it, for pub/sub as well.

:func:`classify` names an outcome (a :class:`Rule`, pure).  An :class:`Attempt` (one per
command, or per transaction) holds the budgets: :meth:`Attempt.decide` says whether the rule
may still be followed (``RAISE`` once its budget is spent) and counts the retry; then the
caller follows it, with :meth:`Attempt.redirect` or a pause (:meth:`RetryPolicy.pause`).

The rules (budgets are ``RetryOptions`` fields):

* ``MOVED``: the slot map applies it, the command goes to the new owner (``max_redirects``).
* ``ASK``: ASKING and the command go to the node named, the map unchanged (``max_redirects``).
* ``TRYAGAIN`` (TRYAGAIN, LOADING: the server did not run it, and will soon): back off, send
  again (``transient_retries``, within ``budget``).
* ``CLUSTERDOWN`` (CLUSTERDOWN, MASTERDOWN, a slot no node serves: not run, and the map may be
  wrong): a refresh requested, back off, send again (``transient_retries``, within ``budget``).
* ``RETRY_AFTER`` (it never reached a server: refused, breaker open, dial failed; or a read
  whose outcome is unknown: a timeout, a dropped connection): wait briefly for a fresh map,
  back off, send again (within ``budget`` if unsent, ``retries`` for reads); a read that
  failed on a replica goes to the primary at once.
* ``RAISE``: anything else (a pool timeout, a write whose outcome is unknown, an error reply),
  or a budget spent: the error reaches the caller.  A failure on a node known bad (its
  breaker open) is raised at once too, unless a failover may end it soon
  (:mod:`.isolation`): a sick node costs only its own slots.
"""

from __future__ import annotations

import enum
import math
from collections import Counter

import trio

from ..config import RetryOptions
from ..conn.connection import was_unsent
from ..errors import (
    NETWORK_ERRORS,
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    MovedError,
    PoolTimeoutError,
    ScriptTimeoutError,
    TryAgainError,
)
from ..hooks import CURRENT_CALL, CommandCall
from .isolation import Isolation, known_bad
from .slotmap import Node, SlotMap

__all__ = ["Attempt", "RetryPolicy", "Rule", "classify", "longer_wait"]


class Rule(enum.Enum):
    """What an outcome means for the command (see the module's table)."""

    DONE = "done"
    MOVED = "moved"
    ASK = "ask"
    TRYAGAIN = "tryagain"
    CLUSTERDOWN = "clusterdown"
    RETRY_AFTER = "retry-after"
    RAISE = "raise"


#: Which of two waits a pipeline round takes when its commands need several (the longer one
#: covers the shorter: a refresh wait also backs off).
_WAIT_ORDER = {Rule.TRYAGAIN: 0, Rule.CLUSTERDOWN: 1, Rule.RETRY_AFTER: 2}


def classify(error: BaseException | None, readonly: bool) -> Rule:
    """The rule for an outcome, budgets aside: ``error`` is what the call raised (None: a
    reply came), ``readonly`` whether the command only reads (so repeating it is harmless
    even when it may have run)."""
    if error is None:
        return Rule.DONE
    if isinstance(error, MovedError):
        return Rule.MOVED
    if isinstance(error, AskError):
        return Rule.ASK
    if isinstance(error, ClusterDownError | MasterDownError):
        return Rule.CLUSTERDOWN
    if isinstance(error, TryAgainError | BusyLoadingError):
        return Rule.TRYAGAIN
    if (
        isinstance(error, NETWORK_ERRORS)
        # Waiting again would break the caller's bound on a pool wait (or on a script,
        # which would run again from the start).
        and not isinstance(error, PoolTimeoutError | ScriptTimeoutError)
        and (readonly or was_unsent(error))
    ):
        return Rule.RETRY_AFTER
    return Rule.RAISE


class RetryPolicy:
    """The rules' shared state: the options, the slot map the rules act on, the retry
    counters (for stats) and whether the client has closed (then nothing is retried)."""

    def __init__(self, options: RetryOptions, slots: SlotMap, isolation: Isolation) -> None:
        self.options = options
        self.slots = slots
        #: Whether a command for a known-bad node's slots waits for a failover.
        self.isolation = isolation
        self.closed = False
        #: Commands failed at once because their node was known bad (isolated).
        self.isolated = 0
        #: Retries taken, by reason: the error class for replies saying the server did not
        #: run the command, ``unsent``, ``read`` (outcome unknown), ``replica_fallback``.
        self.retries: Counter[str] = Counter()

    def attempt(self, readonly: bool) -> Attempt:
        """The budgets of one command (or transaction); ``readonly``: it only reads."""
        return Attempt(self, readonly)

    async def pause(self, rule: Rule, waits: int) -> None:
        """The wait before sending again under ``rule``, the ``waits``-th of its command: a
        full-jitter backoff, after asking for a refresh (``CLUSTERDOWN``) or after waiting,
        briefly, for one to complete (``RETRY_AFTER``: the node may be gone)."""
        delay = self.options.backoff(waits)
        if rule is Rule.CLUSTERDOWN:
            self.slots.request_refresh()
        elif rule is Rule.RETRY_AFTER:
            with trio.move_on_after(max(delay, 0.01) + 1.0):
                await self.slots.refresh()
        await trio.sleep(delay)


class Attempt:
    """The budgets of one command: redirects followed, retries taken, the deadline of its
    retry budget (set at its first retry: the happy path never reads the clock), and how
    many waits it took (the backoff's exponent)."""

    __slots__ = ("_policy", "deadline", "readonly", "reads", "redirects", "transient", "waits")

    def __init__(self, policy: RetryPolicy, readonly: bool) -> None:
        self._policy = policy
        self.readonly = readonly
        self.redirects = 0
        self.transient = 0
        self.reads = 0
        self.waits = 0
        self.deadline = math.inf

    async def decide(
        self, error: BaseException, node: Node | None, *, replica: bool = False
    ) -> Rule:
        """:meth:`_decide`, told to the command's hooks (a redirect or a retry event)."""
        rule = await self._decide(error, node, replica)
        current = CURRENT_CALL.get()
        if current is not None and rule is not Rule.RAISE:
            _tell(current, rule, error, node)
        return rule

    async def _decide(self, error: BaseException, node: Node | None, replica: bool) -> Rule:
        """The rule to follow after ``error`` (raised by ``node``; ``replica``: a replica
        serving a read), or ``RAISE`` when none applies or its budget is spent.  A retry
        decided here is counted.  ``RETRY_AFTER`` from a replica means: the primary, at once
        (a read is safe to repeat there whether or not it reached the replica).

        A node that failed and is known bad (its breaker open or probing) is isolated:
        ``RAISE`` at once, no refresh wait and no backoff, unless a failover may end its
        outage soon (:meth:`.isolation.Isolation.rides_out`)."""
        policy = self._policy
        options = policy.options
        rule = classify(error, self.readonly)
        if rule is Rule.MOVED or rule is Rule.ASK:
            self.redirects += 1
            return rule if self.redirects <= options.max_redirects else Rule.RAISE
        if rule is Rule.RAISE or policy.closed:
            return Rule.RAISE
        if replica and rule is Rule.RETRY_AFTER:
            policy.retries["replica_fallback"] += 1
            return rule
        if rule is Rule.RETRY_AFTER and node is not None and known_bad(node):
            isolation = policy.isolation
            rides_out = isolation.rides_out_now(node)
            if rides_out is None:
                rides_out = await isolation.rides_out(node)
            if not rides_out:
                policy.isolated += 1
                return Rule.RAISE
        now = trio.current_time()
        if self.deadline == math.inf:
            self.deadline = now + options.budget
        if rule is not Rule.RETRY_AFTER:  # TRYAGAIN, CLUSTERDOWN: the server did not run it
            if self.transient >= options.transient_retries or now >= self.deadline:
                return Rule.RAISE
            self.transient += 1
            policy.retries[type(error).__name__] += 1
        elif was_unsent(error):
            if now >= self.deadline:
                return Rule.RAISE
            policy.retries["unsent"] += 1
        elif self.reads < options.retries:
            self.reads += 1
            policy.retries["read"] += 1
        else:
            return Rule.RAISE
        return rule

    async def redirect(self, rule: Rule, error: BaseException, node: Node | None) -> Node:
        """Follow a ``MOVED`` (the slot map applies it) or an ``ASK`` (the node to ask);
        returns the node the command goes to next."""
        slots = self._policy.slots
        if rule is Rule.MOVED:
            assert isinstance(error, MovedError)
            return await slots.apply_moved(error, node)
        assert isinstance(error, AskError)
        return await slots.ask_target(error, node)

    async def pause(self, rule: Rule) -> None:
        """:meth:`RetryPolicy.pause` for this command's next wait."""
        waits, self.waits = self.waits, self.waits + 1
        await self._policy.pause(rule, waits)


def _tell(call: CommandCall, rule: Rule, error: BaseException, node: Node | None) -> None:
    """Record on the command's hook view what the policy decided (no argument values)."""
    where = node.name if node is not None else ""
    if rule is Rule.MOVED or rule is Rule.ASK:
        target = getattr(error, "node_addr", None)
        call.event(
            "redirect",
            kind=rule.value,
            slot=getattr(error, "slot_id", -1),
            **{"from": where},
            to=f"{target[0]}:{target[1]}" if target else "",
        )
        return
    call.retries += 1
    call.event("retry", attempt=call.retries, reason=type(error).__name__, node=where)
    if isinstance(error, NETWORK_ERRORS):
        call.event("reconnect", node=where)


def longer_wait(current: Rule | None, rule: Rule) -> Rule:
    """Of two waits a pipeline round needs, the one that covers the other."""
    if current is None or _WAIT_ORDER[rule] > _WAIT_ORDER[current]:
        return rule
    return current
