"""``async with EmbeddedToxiproxy() as tp:``: an in-process server on a free port for tests."""

from __future__ import annotations

import trio

from .client import Toxiproxy
from .lifetime import TaskOwner
from .server import ToxiproxyServer

__all__ = ["EmbeddedToxiproxy"]


class EmbeddedToxiproxy(TaskOwner):
    """Run a ``ToxiproxyServer`` in a nursery for the duration of an ``async with`` block.

    Entering yields a ``Toxiproxy`` client bound to the server; ``.server`` gives the server
    itself (its ``collection`` for white-box tests).  Leaving cancels the server, which closes
    its listener, its proxies and every proxied connection.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int | None = None) -> None:
        self.server = ToxiproxyServer(host, port, seed=seed)

    # Entering gives the client, not the object itself (hence the override).
    async def __aenter__(self) -> Toxiproxy:  # type: ignore[override]
        await super().__aenter__()
        return Toxiproxy(self.server.url)

    async def _start(self, nursery: trio.Nursery) -> None:
        await nursery.start(self.server.run)
