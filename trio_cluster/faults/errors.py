"""``ToxiproxyError``: the one error of the Toxiproxy API, on both of its sides.

The API answers an error as ``{"error": message, "status": code}``.  The embedded server's
handlers raise a ``ToxiproxyError`` to answer one (``trio_cluster.faults.api`` writes it as Go's
``http.Error`` does); the client raises one when it receives such an answer, or when it
cannot reach the server at all (``status`` None).  Its text is the Go client's
(``HTTP 404: proxy not found``), which ``toxiproxy-cli`` prints.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ToxiproxyError"]


class ToxiproxyError(Exception):
    """An error answer of a Toxiproxy API (``status``: its code), or a server that could not
    be reached or did not answer in time (``status`` None).  ``message`` is the bare error
    text; ``extra`` holds any further fields of the answer (populate's ``proxies``)."""

    def __init__(self, status: int | None, message: str, **extra: Any) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.extra = extra

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"HTTP {self.status}: {self.message}"
