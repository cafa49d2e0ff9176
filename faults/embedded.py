"""``async with EmbeddedToxiproxy() as tp:``: an in-process server on a free port for tests."""

from __future__ import annotations

from types import TracebackType

import trio

from faults.client import Toxiproxy
from faults.server import ToxiproxyServer

__all__ = ["EmbeddedToxiproxy"]


class EmbeddedToxiproxy:
    """Run a ``ToxiproxyServer`` in a nursery for the duration of an ``async with`` block.

    Entering yields a ``Toxiproxy`` client handle bound to the server; ``.server`` gives the
    server itself (its ``collection`` for white-box tests).  Leaving cancels the server, which
    closes its listener, its proxies and every proxied connection.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, seed: int | None = None) -> None:
        self.server = ToxiproxyServer(host, port, seed=seed)
        self._nursery_cm = trio.open_nursery()
        self._nursery: trio.Nursery | None = None

    async def __aenter__(self) -> Toxiproxy:
        self._nursery = await self._nursery_cm.__aenter__()
        try:
            await self._nursery.start(self.server.run)
        except BaseException as exc:
            await self._nursery_cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return Toxiproxy(self.server.url)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        return await self._nursery_cm.__aexit__(exc_type, exc, tb)
