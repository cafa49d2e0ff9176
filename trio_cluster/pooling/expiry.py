"""When a pooled connection must go: its record (:class:`Entry`, with the moment its lifetime
ends), the rules that retire an idle one, and the next moment one of them can apply.

Pure functions of the records, the options and the clock, so the pool's reaping timer and its
hand-outs apply one set of rules.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from typing import Generic

import trio

from .pooltypes import C, CloseReason, PoolOptions

__all__ = ["Entry", "next_check", "stale_reason"]


class Entry(Generic[C]):
    """The pool's record of one connection it owns: the connection, when its
    ``max_lifetime`` (with jitter) ends, and since when a job has held it (UNUSABLE)."""

    __slots__ = ("conn", "expires_at", "unusable_since")

    def __init__(self, conn: C, options: PoolOptions) -> None:
        self.conn = conn
        #: When the pool handed the connection to a job (a drain, a claim), while a job
        #: holds it; None otherwise.
        self.unusable_since: float | None = None
        lifetime = options.max_lifetime
        if lifetime is None:
            self.expires_at = math.inf
        else:
            jitter = options.lifetime_jitter
            if jitter:
                # Connections dialled together must not all expire together.
                lifetime *= 1 + random.uniform(-jitter, jitter)
            self.expires_at = trio.current_time() + lifetime


def stale_reason(entry: Entry[C], now: float, options: PoolOptions) -> CloseReason | None:
    """Why an idle connection must not be handed out again (cheapest check first), or None."""
    if now >= entry.expires_at:
        return CloseReason.LIFETIME
    max_idle_time = options.max_idle_time
    if max_idle_time is not None and now - entry.conn.last_used_at >= max_idle_time:
        return CloseReason.IDLE_TIME
    if entry.conn.peer_closed():
        # Bytes no command was owed (out of step) are not the server closing the socket.
        return CloseReason.UNSOLICITED_REPLY if entry.conn.out_of_step else CloseReason.PEER_CLOSED
    return None


def next_check(idle: Iterable[Entry[C]], now: float, options: PoolOptions) -> float:
    """The next moment an idle connection (of ``idle``, or one released from now on) can
    reach its idle time or its lifetime."""
    soonest = math.inf
    if options.max_idle_time is not None:
        # Whatever is released from now on cannot expire sooner than this.
        soonest = now + options.max_idle_time
    if options.max_lifetime is not None:
        soonest = min(soonest, now + options.max_lifetime * (1 - options.lifetime_jitter))
    if soonest < math.inf:
        for entry in idle:
            if options.max_idle_time is not None:
                soonest = min(soonest, entry.conn.last_used_at + options.max_idle_time)
            soonest = min(soonest, entry.expires_at)
    return soonest
