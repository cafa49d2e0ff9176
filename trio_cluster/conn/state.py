"""The connection state machine: every state, who holds a connection in it, and every move.

Rules (after h11's ``_state.py``):

1. Everything about states lives here, as data. :data:`MOVES` lists every transition a
   connection can make, with who makes it and why; :data:`HOLDER` says who holds a connection
   in each state, so a connection's state *is* its place (in its pool's idle list, with one
   caller, with one job, or gone). :data:`ALLOWED_TRANSITIONS` is derived from :data:`MOVES`,
   and ``docs/state-machine.md`` draws both (``scripts/gen_state_diagram.py``).
2. Every change goes through :meth:`ConnStateMachine.transition`, which refuses anything not
   in the table. It does nothing else: deciding *which* move to make is the holder's job
   (for a pooled connection, the pool's: it alone moves its connections).

trio is single-threaded, so "check the state, then set it" with no ``await`` in between is
atomic: the table check in :meth:`~ConnStateMachine.transition` is the compare-and-swap.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from typing import NamedTuple

from ..errors import InvalidTransition

__all__ = ["ALLOWED_TRANSITIONS", "HOLDER", "MOVES", "ConnState", "ConnStateMachine", "Move"]


class ConnState(enum.Enum):
    """The life-cycle states of one connection."""

    CREATED = "CREATED"
    """Object exists, nothing sent yet."""
    INITIALIZING = "INITIALIZING"
    """Handshake (HELLO/AUTH/...) running, or a handoff re-initialising it."""
    IDLE = "IDLE"
    """Ready, in its pool's idle list."""
    IN_USE = "IN_USE"
    """Handed to exactly one caller."""
    UNUSABLE = "UNUSABLE"
    """Held by a job (draining owed replies, handoff, re-auth); never handed out."""
    CLOSED = "CLOSED"
    """Terminal."""

    # Members are singletons compared by identity, so identity hashing is correct; Enum's own
    # __hash__ is Python-level and made the table lookup 4x slower on the per-command path.
    __hash__ = object.__hash__


_S = ConnState

HOLDER: Mapping[ConnState, str] = types.MappingProxyType(
    {
        _S.CREATED: "the task opening it",
        _S.INITIALIZING: "the task opening it, or the job that claimed it (a handoff)",
        _S.IDLE: "its pool: in the idle list, and nowhere else",
        _S.IN_USE: "the one caller (or automatic-pipelining batch) the pool handed it to",
        _S.UNUSABLE: "one job: the pool's drain, or a job that claimed it from the pool",
        _S.CLOSED: "nobody (its pool may still be closing the socket)",
    }
)
"""Who holds a connection in each state: for a pooled connection, its place."""


class Move(NamedTuple):
    """One transition: from, to, who makes it, and when."""

    frm: ConnState
    to: ConnState
    by: str
    when: str


MOVES: tuple[Move, ...] = (
    Move(_S.CREATED, _S.INITIALIZING, "Connection.open", "the handshake starts"),
    Move(_S.INITIALIZING, _S.IDLE, "Connection.open", "the handshake is done"),
    Move(_S.IDLE, _S.IN_USE, "Pool", "handed to a caller (get)"),
    Move(_S.IDLE, _S.UNUSABLE, "Pool", "claimed for a job (claim_now, claim_when_idle)"),
    Move(_S.IN_USE, _S.IDLE, "Pool", "released by its caller (put)"),
    Move(_S.IN_USE, _S.UNUSABLE, "Pool", "released owing replies, to be drained by the pool"),
    Move(_S.UNUSABLE, _S.INITIALIZING, "Connection.reconnect", "a handoff swaps its stream"),
    Move(_S.UNUSABLE, _S.IDLE, "Pool", "drained, or given back by its job (give_back)"),
    Move(_S.INITIALIZING, _S.IDLE, "Pool", "given back by its job after a handoff"),
    *(
        Move(state, _S.CLOSED, "Pool, or its holder", "removed by the pool, or closed")
        for state in _S
        if state is not _S.CLOSED
    ),
    # CLOSED -> CLOSED is allowed and does nothing, so closing is idempotent (the pool may
    # decide to close a connection whose holder closes it too).
    Move(_S.CLOSED, _S.CLOSED, "anyone", "closed again, which does nothing"),
)
"""Every transition a connection can make (two moves may join the same pair of states)."""

ALLOWED_TRANSITIONS: Mapping[ConnState, frozenset[ConnState]] = types.MappingProxyType(
    {state: frozenset(m.to for m in MOVES if m.frm is state) for state in _S}
)
"""``from_state -> frozenset of allowed target states``, from :data:`MOVES`. Anything not
listed raises :class:`~trio_cluster.errors.InvalidTransition`."""


class ConnStateMachine:
    """The state of one connection.

    Cheap: :meth:`transition` is a table lookup and an attribute store, with no allocation; it
    runs twice per command (``IDLE -> IN_USE -> IDLE``).
    """

    __slots__ = ("_state",)

    def __init__(self, initial: ConnState = ConnState.CREATED) -> None:
        self._state = initial

    def __repr__(self) -> str:
        return f"<ConnStateMachine {self._state.name}>"

    @property
    def state(self) -> ConnState:
        """The current state."""
        return self._state

    def transition(self, to: ConnState) -> None:
        """Move to ``to`` if the table allows it from the current state, else raise.

        Raises:
            InvalidTransition: ``(state, to)`` is not in :data:`ALLOWED_TRANSITIONS`.
        """
        frm = self._state
        if to not in ALLOWED_TRANSITIONS[frm]:
            raise InvalidTransition(frm, to)
        self._state = to
