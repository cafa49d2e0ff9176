"""Cancellation storms: commands interrupted at any moment must never hand a caller a
reply that is not its own.  :class:`Storm` keeps the tallies the storm tests assert on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio


class Storm:
    """Attempts that a cancellation may interrupt: how many completed, how many were
    cancelled, and every reply that was not the one its caller expected."""

    def __init__(self) -> None:
        self.completed = 0
        self.cancelled = 0
        self.misdelivered: list[tuple[str, Any]] = []

    @contextmanager
    def attempt(self, scope: trio.CancelScope) -> Iterator[None]:
        """Run the block in ``scope``: counted as completed if it ran to its end, as
        cancelled if ``scope`` caught a cancellation."""
        with scope:
            yield
            self.completed += 1
        if scope.cancelled_caught:
            self.cancelled += 1

    def expect(self, key: str, got: Any, wanted: Any) -> None:
        """Record ``got`` as misdelivered unless it is ``wanted`` (same type, equal), the
        reply for ``key``."""
        if type(got) is not type(wanted) or got != wanted:
            self.misdelivered.append((key, got))

    def check(self) -> None:
        """No reply went to the wrong caller, and the storm both completed and cancelled
        commands (otherwise it proved nothing)."""
        assert self.misdelivered == []
        assert self.completed > 0 and self.cancelled > 0
