"""``async with`` ownership of background tasks, for faults' servers.

``EmbeddedToxiproxy`` and ``MaintInjector`` run their listeners and connections in a nursery
that lives exactly as long as their ``async with`` block.  faults keeps this small helper to
itself because it may use only trio_cluster's public API (trio_cluster's own lifetime classes
are internal to the client library).

trio wraps whatever leaves a nursery in an ``ExceptionGroup``; a tool used from tests must
raise what went wrong, so :func:`single_error` turns the group back into one exception.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Self

import trio

__all__ = ["TaskOwner", "single_error"]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def single_error(
    group: BaseExceptionGroup[BaseException], preferred: BaseException | None = None
) -> BaseException:
    """The one exception to raise for a nursery's ``group``.

    A ``KeyboardInterrupt`` wins; then ``preferred`` (the ``async with`` body's own exception)
    if it is in the group; then the first exception that is not a cancellation, the others
    attached to it as notes.  A group of cancellations only gives its first ``Cancelled``,
    which the cancel scope that caused it catches.
    """
    leaves = _leaves(group)
    for leaf in leaves:
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    real = [leaf for leaf in leaves if not isinstance(leaf, trio.Cancelled)]
    if not real:
        return leaves[0]
    chosen = preferred if preferred is not None and preferred in real else real[0]
    for other in real:
        if other is not chosen:
            chosen.add_note(f"also raised: {type(other).__name__}: {other}")
    return chosen


class TaskOwner:
    """Base class: ``async with obj:`` opens a nursery (``_nursery`` while open) and calls
    :meth:`_start` with it; leaving cancels whatever still runs there and waits for it.
    Nothing outlives the block, also when it raises or when starting fails half-way, and an
    error leaves as itself."""

    _nursery: trio.Nursery | None = None
    _manager: AbstractAsyncContextManager[trio.Nursery] | None = None

    async def _start(self, nursery: trio.Nursery) -> None:
        """Start the background work in ``nursery``."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        if self._manager is not None:
            raise RuntimeError(f"{self!r} is already open")
        manager = trio.open_nursery()
        self._nursery = nursery = await manager.__aenter__()
        try:
            await self._start(nursery)
        except BaseException as failure:
            self._nursery = None
            nursery.cancel_scope.cancel()
            error = await _close(manager, failure) or failure
        else:
            self._manager = manager
            return self
        raise error  # outside the handler: no group in its context

    async def __aexit__(self, *exc_info: object) -> bool:
        manager, nursery = self._manager, self._nursery
        self._manager = self._nursery = None
        if manager is None or nursery is None:
            return False
        exc = exc_info[1] if isinstance(exc_info[1], BaseException) else None
        nursery.cancel_scope.cancel()
        error = await _close(manager, exc)
        if error is None:
            return exc is not None  # the nursery absorbed the body's exception (a Cancelled)
        if error is exc:
            return False  # the body's own exception: Python raises it on
        raise error


async def _close(
    manager: AbstractAsyncContextManager[trio.Nursery], exc: BaseException | None
) -> BaseException | None:
    """Leave the nursery with ``exc``; what leaves it, as one exception (None: nothing)."""
    try:
        swallowed = await manager.__aexit__(
            type(exc) if exc is not None else None, exc, exc.__traceback__ if exc else None
        )
    except BaseExceptionGroup as group:
        return single_error(group, exc)
    except BaseException as error:
        return error
    return None if swallowed else exc
