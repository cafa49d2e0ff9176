"""The connection state machine.

Every connection owns one :class:`ConnStateMachine`. Its state moves along the edges of
:data:`ALLOWED_TRANSITIONS` (one table, data rather than scattered ``if``\\ s) and *every* change
goes through :meth:`ConnStateMachine.transition`, which also serves whoever is parked in
:meth:`ConnStateMachine.wait_and_transition`. That single funnel is what avoids the lost wake-up
of go-redis #4027, where a release that bypassed the notifier left a re-auth worker waiting for an
IDLE connection until it timed out.

trio is single-threaded, so "check the state, then set it" with no ``await`` in between is atomic:
the table check in :meth:`~ConnStateMachine.transition` plays the part of a compare-and-swap.

Invariant kept by the wake-up logic: **no parked waiter ever matches the current state.** Every
transition hands itself on to the first matching waiter (in arrival order) before returning, and
keeps doing so while the new state matches someone. So a newcomer that finds its wanted state can
take it at once without barging past anybody.
"""

from __future__ import annotations

import collections
import enum
import types
from collections.abc import Container, Iterable, Mapping
from typing import Any

import outcome
import trio

from ..errors import InvalidTransition, StateMachineClosed

__all__ = ["ALLOWED_TRANSITIONS", "ConnState", "ConnStateMachine"]


class ConnState(enum.Enum):
    """The life-cycle states of one connection."""

    CREATED = "CREATED"
    """Object exists, nothing sent yet."""
    INITIALIZING = "INITIALIZING"
    """Handshake (HELLO/AUTH/...) running, or a handoff / re-auth re-initialising it."""
    IDLE = "IDLE"
    """Ready, sitting in its pool."""
    IN_USE = "IN_USE"
    """Handed to exactly one caller."""
    UNUSABLE = "UNUSABLE"
    """Owned by a background job (draining owed replies, handoff, re-auth); never handed out."""
    CLOSED = "CLOSED"
    """Terminal."""

    # Members are singletons compared by identity, so identity hashing is correct; Enum's own
    # __hash__ is Python-level and made the table lookup 4x slower on the per-command path.
    __hash__ = object.__hash__


_S = ConnState

_EDGES: dict[ConnState, frozenset[ConnState]] = {
    _S.CREATED: frozenset({_S.INITIALIZING}),
    _S.INITIALIZING: frozenset({_S.IDLE}),
    _S.IDLE: frozenset({_S.IN_USE, _S.UNUSABLE}),
    _S.IN_USE: frozenset({_S.IDLE, _S.UNUSABLE}),
    _S.UNUSABLE: frozenset({_S.INITIALIZING, _S.IDLE}),
    _S.CLOSED: frozenset(),
}

ALLOWED_TRANSITIONS: Mapping[ConnState, frozenset[ConnState]] = types.MappingProxyType(
    # Any state may close. CLOSED -> CLOSED is allowed and is a no-op, so closing is idempotent
    # (a connection may be closed by its pool and by an I/O error in the same instant).
    {state: targets | {_S.CLOSED} for state, targets in _EDGES.items()}
)
"""``from_state -> frozenset of allowed target states``. Anything not listed raises
:class:`~trio_cluster.errors.InvalidTransition`."""


class _Waiter:
    """One task parked in :meth:`ConnStateMachine.wait_and_transition`."""

    __slots__ = ("from_states", "task", "to")

    def __init__(self, from_states: frozenset[ConnState], to: ConnState, task: trio.lowlevel.Task):
        self.from_states = from_states
        self.to = to
        self.task = task


class ConnStateMachine:
    """The state of one connection, plus the tasks waiting for it to reach a given state.

    Cheap on the fast path: :meth:`transition` with nobody waiting is a table lookup and an
    attribute store; it allocates nothing.
    """

    __slots__ = ("_state", "_waiters")

    def __init__(self, initial: ConnState = ConnState.CREATED) -> None:
        self._state = initial
        # An empty tuple until someone waits: most connections never have a waiter, and a
        # deque per connection would cost more memory than the rest of it.
        self._waiters: collections.deque[_Waiter] | tuple[()] = ()

    def __repr__(self) -> str:
        return f"<ConnStateMachine {self._state.name} waiters={len(self._waiters)}>"

    @property
    def state(self) -> ConnState:
        """The current state."""
        return self._state

    @property
    def waiting(self) -> int:
        """How many tasks are parked in :meth:`wait_and_transition`."""
        return len(self._waiters)

    def transition(self, to: ConnState) -> None:
        """Move to ``to`` if the table allows it from the current state, else raise.

        This is the one place where the state changes. After the change, parked waiters whose
        ``from_states`` contain the new state are served in arrival order (each is handed its own
        transition directly, so nobody can slip in between the wake-up and the waiter running).
        Moving to CLOSED fails every remaining waiter with
        :class:`~trio_cluster.errors.StateMachineClosed`.

        Raises:
            InvalidTransition: ``(state, to)`` is not in :data:`ALLOWED_TRANSITIONS`.
        """
        frm = self._state
        if to not in ALLOWED_TRANSITIONS[frm]:
            raise InvalidTransition(frm, to)
        self._state = to
        if self._waiters:
            self._serve_waiters()

    def try_transition(self, from_states: Container[ConnState], to: ConnState) -> bool:
        """Perform ``state -> to`` only if the current state is in ``from_states``; never blocks.

        Returns whether the transition happened. A tuple is the cheapest ``from_states``.

        Raises:
            InvalidTransition: the current state is in ``from_states`` but the table forbids
                the move (a programming error, not a lost race).
        """
        if self._state in from_states:
            self.transition(to)
            return True
        return False

    async def wait_and_transition(
        self, from_states: Iterable[ConnState], to: ConnState
    ) -> ConnState:
        """Wait until the state is one of ``from_states``, then move to ``to``.

        Waiters are served strictly in arrival order. The transition is performed on the
        waiter's behalf at the moment the matching state appears, so it cannot be lost to a task
        that runs in between. Returns the state the transition started from.

        Cancel-safe: a waiter cancelled while parked is removed and never transitions; a waiter
        that was already served returns normally (its transition happened) and sees the
        cancellation at its next checkpoint.

        Raises:
            StateMachineClosed: the state is, or becomes, CLOSED before the wait is served.
            InvalidTransition: ``to`` is not allowed from some state in ``from_states`` (checked
                up front, so a bad request fails at once instead of after a long wait).
            ValueError: ``from_states`` is empty.
        """
        wanted = frozenset(from_states)
        if not wanted:
            raise ValueError("from_states must name at least one state")
        for frm in wanted:
            if to not in ALLOWED_TRANSITIONS[frm]:
                raise InvalidTransition(frm, to)
        await trio.lowlevel.checkpoint_if_cancelled()
        frm = self._state
        if frm is ConnState.CLOSED:
            raise StateMachineClosed(f"cannot wait for {_names(wanted)}: connection is CLOSED")
        if frm in wanted:
            # By the invariant in the module docstring no parked waiter matches `frm`, so
            # taking it now does not jump the queue.
            self.transition(to)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return frm
        waiter = _Waiter(wanted, to, trio.lowlevel.current_task())
        if not self._waiters:
            self._waiters = collections.deque()
        waiters = self._waiters
        waiters.append(waiter)

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Only called while still parked, i.e. before any transition was handed to us.
            waiters.remove(waiter)
            return trio.lowlevel.Abort.SUCCEEDED

        result: ConnState = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    def _serve_waiters(self) -> None:
        """Hand the current state to matching waiters, first come first served, chaining."""
        waiters = self._waiters
        assert isinstance(waiters, collections.deque)
        while waiters:
            state = self._state
            if state is ConnState.CLOSED:
                while waiters:
                    w = waiters.popleft()
                    trio.lowlevel.reschedule(
                        w.task,
                        outcome.Error(
                            StateMachineClosed(
                                f"connection closed while waiting for {_names(w.from_states)}"
                            )
                        ),
                    )
                return
            for w in waiters:
                if state in w.from_states:
                    break
            else:
                return  # nobody matches: the invariant holds again
            waiters.remove(w)
            # Validated against the table when the waiter parked; assigning directly keeps
            # this loop from re-entering transition() (the table check already happened).
            self._state = w.to
            trio.lowlevel.reschedule(w.task, outcome.Value(state))


def _names(states: Iterable[ConnState]) -> str:
    return "|".join(sorted(s.name for s in states))
