"""Log lines shaped like Toxiproxy's (zerolog JSON on stdout), through Python's ``logging``.

The server logs on the ``trio_cluster.faults`` logger hierarchy with ``event(...)``, which
attaches Go's structured fields; as a library nothing is printed unless the application
configures logging.  ``trio-cluster-faults serve`` calls ``configure``, which prints one JSON
object per line like the Go server: ``level``, the event's fields, ``caller``, ``time`` and
``message``.  Levels are zerolog's: trace, debug, info, warn, error (Go's default, as here,
prints every level).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Final, TextIO

__all__ = ["LEVELS", "TRACE", "JsonLineFormatter", "configure", "event"]

# A library stays silent unless the application configures logging (no "last resort" output
# of warnings such as Go's "Source terminated" on every closed connection).
logging.getLogger("trio_cluster.faults").addHandler(logging.NullHandler())

#: Below DEBUG: zerolog's trace level.
TRACE: Final = 5
logging.addLevelName(TRACE, "TRACE")

#: zerolog level names and the ``logging`` levels they map to.
LEVELS: Final = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
}
_NAMES: Final = {
    TRACE: "trace",
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warn",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}


def event(logger: logging.Logger, level: int, message: str = "", /, **fields: Any) -> None:
    """Log ``message`` with zerolog-style ``fields`` (in the order given)."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"fields": fields}, stacklevel=2)


class JsonLineFormatter(logging.Formatter):
    """One zerolog-like JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"level": _NAMES.get(record.levelno, "info")}
        doc.update(getattr(record, "fields", {}))
        if record.exc_info and record.exc_info[1] is not None:
            doc["error"] = repr(record.exc_info[1])
        doc["caller"] = f"{record.filename}:{record.lineno}"
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        doc["time"] = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        message = record.getMessage()
        if message:  # zerolog leaves the key out for an empty message (access lines)
            doc["message"] = message
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def configure(level: str = "trace", stream: TextIO | None = None) -> None:
    """Print the ``trio_cluster.faults`` loggers' records as JSON lines on ``stream`` (stdout)
    at ``level``.

    Raises ``ValueError`` naming the level when it is not one of ``LEVELS``.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: choose from {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(JsonLineFormatter())
    root = logging.getLogger("trio_cluster.faults")
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level.lower()])
    root.propagate = False
