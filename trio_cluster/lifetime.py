"""``async with`` owning a nursery: the lifetime shared by ``Client`` and ``ClusterClient``.

Entering opens a nursery and calls :meth:`NurseryOwner._start` with it; leaving calls
:meth:`NurseryOwner._stop` (close pools, connections...), cancels whatever background work is
left in the nursery and waits for it.  Nothing outlives the block, also when it raises or
when starting fails half-way.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from types import TracebackType
from typing import Self

import trio

__all__ = ["NurseryOwner"]


class NurseryOwner:
    """Base class for objects whose ``async with`` owns a nursery for their background work."""

    _stack: AsyncExitStack | None = None
    _nursery: trio.Nursery | None = None

    async def _start(self, nursery: trio.Nursery) -> None:
        """Start the background work in ``nursery`` (and anything else entering needs)."""
        raise NotImplementedError

    async def _stop(self) -> None:
        """Close what the object owns; the nursery is cancelled afterwards."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already open")
        stack = AsyncExitStack()
        try:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            await self._start(self._nursery)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._stop()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        try:
            await self._stop()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()  # background work left: watchdog etc.
        except BaseException as close_error:
            if stack is None or not await stack.__aexit__(
                type(close_error), close_error, close_error.__traceback__
            ):
                raise
            return None
        if stack is not None:
            return await stack.__aexit__(exc_type, exc, tb)
        return None
