"""Read and write deadlines for in-flight commands, enforced by one task per client.

A cancel scope per command costs several microseconds to enter, move and leave, which at high
concurrency is a large share of a command's whole cost (measured at 50 tasks: about 0.7x the
throughput of no timeouts with one scope per command, 0.98x with this watchdog).  The
watchdog keeps the same contract more cheaply: each command records its deadline on its
connection and joins a set; the watchdog sleeps until the earliest deadline it knows of, and
wakes a command that is still in flight past it through ``trio.lowlevel.notify_closing`` on its
socket.  That command then raises the typed timeout error, and its connection, which may still
owe a reply, is closed: it is never reused.

Deadlines of fresh commands lie after the watchdog's planned wake-up almost always, so the
common case costs a set insertion and removal; only an earlier deadline moves the wake-up.
The caller's own cancel scopes are untouched: every wait is still an ordinary checkpoint.
"""

from __future__ import annotations

import math
import select
from typing import Protocol

import trio

__all__ = ["Watchdog", "Watched"]


class Watched(Protocol):
    """What the watchdog needs from a connection."""

    io_deadline: float

    def expire(self) -> None:
        """The deadline passed with the command still in flight: wake it with a timeout."""


class Watchdog:
    """Enforces the deadlines of in-flight commands; run :meth:`run` in the owner's nursery."""

    def __init__(self) -> None:
        self._inflight: set[Watched] = set()
        self._wake_at = math.inf
        self._scope: trio.CancelScope | None = None
        #: Commands timed out by the watchdog (for stats and tests).
        self.expired = 0
        #: A poll object the client's connections share for their idle health check (each
        #: registers its socket, polls and unregisters, with no await in between).
        self.poller = select.poll()

    def __len__(self) -> int:
        return len(self._inflight)

    def watch(self, conn: Watched) -> None:
        """``conn`` has a command in flight until :meth:`unwatch`; its deadline is
        ``conn.io_deadline`` (call again after moving it earlier)."""
        self._inflight.add(conn)
        if conn.io_deadline < self._wake_at:
            self._wake_at = conn.io_deadline
            if self._scope is not None:
                self._scope.deadline = conn.io_deadline

    def unwatch(self, conn: Watched) -> None:
        """The command on ``conn`` finished (however it ended)."""
        self._inflight.discard(conn)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sleep until the earliest deadline, expire what is overdue, repeat (forever)."""
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._wake_at) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            wake_at = math.inf
            for conn in list(self._inflight):
                deadline = conn.io_deadline
                if deadline <= now:
                    self._inflight.discard(conn)
                    self.expired += 1
                    conn.expire()
                elif deadline < wake_at:
                    wake_at = deadline
            self._wake_at = wake_at
