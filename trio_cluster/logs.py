"""Warnings about an outage, at most one record per interval per subject.

A cluster that is down fails every refresh and every dial, several times a second; a record for
each buries the log (and, with no logging configured, the terminal).  :class:`LogLimiter` lets
the first record of a subject through, then at most one per ``interval`` saying how many were
held back since the previous one.
"""

from __future__ import annotations

import logging
from collections import Counter

import trio

__all__ = ["LogLimiter"]


class LogLimiter:
    """Rate-limits log records per subject (a node's name, "topology"...)."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()

    def log(self, level: int, subject: str, message: str, *args: object) -> None:
        """Log ``message % args`` about ``subject`` unless one went out less than
        ``interval`` seconds ago (then count it); the next record says how many were held."""
        now = trio.current_time()
        if now - self._last.get(subject, -float("inf")) < self.interval:
            self._held[subject] += 1
            return
        self._last[subject] = now
        held = self._held.pop(subject, 0)
        if held:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, held, self.interval)
        self.logger.log(level, message, *args)

    def reset(self, subject: str) -> int:
        """Forget ``subject`` (it recovered); returns how many records were held back."""
        self._last.pop(subject, None)
        return self._held.pop(subject, 0)
