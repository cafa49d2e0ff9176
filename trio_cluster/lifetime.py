"""``async with`` lifetimes: :class:`Scoped` (entering opens, leaving always closes),
:class:`NurseryOwner` (the same, owning a nursery: ``Client``, ``ClusterClient``, pools,
pub/sub), and the one place where trio's exception groups are turned back into single
exceptions.

Entering opens a nursery and calls :meth:`NurseryOwner._start` with it; leaving calls
:meth:`NurseryOwner._stop` (close pools, connections...), cancels whatever background work is
left in the nursery and waits for it.  Nothing outlives the block, also when it raises or
when starting fails half-way.

trio's nurseries always wrap what leaves them in an ``ExceptionGroup``.  A redis-py user writes
``except redis.exceptions.ResponseError:`` around a call or an ``async with`` block, so no group
may cross the public API: :func:`collapse` picks the one exception a caller expects (a
``KeyboardInterrupt`` first, then the block's own exception, then the first real error) and
attaches the others to it as notes and as ``other_errors``.

Ctrl-C: under ``trio.run``'s default delivery a KeyboardInterrupt can be raised at any bytecode
that is not KeyboardInterrupt-protected.  Entering and leaving a nursery, and starting a task in
one (:func:`start_soon`: trio's own is not protected), are protected here, as trio protects its
own nursery manager, so a Ctrl-C never leaves trio's bookkeeping half-updated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from types import TracebackType
from typing import NoReturn, Self, TypeVarTuple, Unpack

import trio

from .errors import ClientNotOpenError

PosArgT = TypeVarTuple("PosArgT")

__all__ = [
    "BlockingScoped",
    "FanOutNursery",
    "NurseryOwner",
    "Scoped",
    "collapse",
    "first_error",
    "open_nursery",
    "raise_not_open",
    "start_soon",
]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for sub in error.exceptions for leaf in _leaves(sub)]
    return [error]


def first_error(errors: Sequence[BaseException]) -> BaseException:
    """The one exception to raise for ``errors`` (in order); the others are attached to it
    with ``add_note`` and listed in its ``other_errors`` attribute.  Cancellations that ride
    along with a real error are dropped: the cancel scope that caused them is left anyway."""
    chosen = errors[0]
    real = [e for e in errors if not isinstance(e, trio.Cancelled)]
    if real:
        chosen = real[0]
    others = [e for e in real if e is not chosen]
    if others:
        for other in others:
            chosen.add_note(f"also raised: {type(other).__name__}: {other}")
        chosen.other_errors = tuple(others)  # type: ignore[attr-defined]
    return chosen


def collapse(group: BaseExceptionGroup[BaseException], preferred: BaseException | None = None
             ) -> BaseException:  # fmt: skip
    """The single exception a trio user expects from a nursery's ``group``.

    A ``KeyboardInterrupt`` anywhere in it wins (Ctrl-C must read as Ctrl-C, not three groups
    deep); then ``preferred`` (the exception of the ``async with`` body) if it is among the
    group's direct members; then the first non-``Cancelled`` member.  Only the level the
    nursery added is removed: an application's own group comes out as it went in.
    """
    for leaf in _leaves(group):
        if isinstance(leaf, KeyboardInterrupt):
            return leaf
    members = list(group.exceptions)
    if preferred is not None:
        same = [m for m in members if _same(m, preferred)]
        if same:
            # trio may hand back a copy of a group it passed through (derived by split()):
            # the caller gets its own object back.
            members = [preferred, *(m for m in members if m is not same[0])]
    return first_error(members)


def _same(member: BaseException, preferred: BaseException) -> bool:
    if member is preferred:
        return True
    if isinstance(member, BaseExceptionGroup) and isinstance(preferred, BaseExceptionGroup):
        return [id(x) for x in _leaves(member)] == [id(x) for x in _leaves(preferred)]
    return False


class FanOutNursery:
    """What :func:`open_nursery` returns: ``async with`` it for a ``trio.Nursery``.

    A class with KeyboardInterrupt-protected ``__aenter__``/``__aexit__``, as trio's own
    nursery manager, not an ``@asynccontextmanager``: under trio's default Ctrl-C delivery (at
    any bytecode outside protected code) a KeyboardInterrupt landing in contextlib's
    ``__aexit__`` before it resumed the generator left trio's nursery open on the task
    ("Nursery stack corrupted"), and one landing in the weakref callback that drops each
    finished async generator from trio's registry was swallowed ("Exception ignored"): the
    Ctrl-C was lost.  Protected, a Ctrl-C arriving meanwhile is raised at the next checkpoint.
    """

    __slots__ = ("_manager",)

    def __init__(self) -> None:
        self._manager: AbstractAsyncContextManager[trio.Nursery] | None = None

    @trio.lowlevel.enable_ki_protection
    async def __aenter__(self) -> trio.Nursery:
        self._manager = trio.open_nursery()
        return await self._manager.__aenter__()

    @trio.lowlevel.enable_ki_protection
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._manager is not None, "__aexit__ without __aenter__"
        try:
            return bool(await self._manager.__aexit__(exc_type, exc, tb))
        except BaseExceptionGroup as group:
            error = collapse(group)
        raise error  # outside the handler: no "during handling of ExceptionGroup" context


def open_nursery() -> FanOutNursery:
    """``trio.open_nursery()`` whose failures leave as one exception (see :func:`collapse`),
    for the library's short-lived fan-out nurseries."""
    return FanOutNursery()


@trio.lowlevel.enable_ki_protection
def start_soon(
    nursery: trio.Nursery,
    async_fn: Callable[[Unpack[PosArgT]], Awaitable[object]],
    *args: *PosArgT,
    name: object = None,
) -> None:
    """``nursery.start_soon(async_fn, *args)``, safe against Ctrl-C: the library starts its
    tasks through this.

    trio's own ``start_soon`` is not KeyboardInterrupt-protected (trio 0.25 to 0.35 at least):
    a KeyboardInterrupt raised inside it by trio's default Ctrl-C delivery can leave a task
    that the run loop counts and nobody runs (``trio.run`` then ends in ``TrioInternalError``)
    or a nursery waiting forever for a task that never runs (a hang).  Called from a protected
    frame, the spawn completes and a Ctrl-C arriving meanwhile is raised at the next
    checkpoint.  ``scripts/trio_start_soon_ctrl_c.py`` reproduces it with trio alone.
    """
    nursery.start_soon(async_fn, *args, name=name)


class Scoped:
    """Base class for an object used with ``async with``: entering runs :meth:`_open`;
    leaving, however the block ends, runs :meth:`_close`, and so does an :meth:`_open` that
    failed half-way (then the failure is raised).  Both do nothing unless overridden."""

    async def _open(self) -> None:
        """Whatever entering needs (connect, start, acquire...)."""

    async def _close(self) -> None:
        """Give back whatever the object holds; also called after a failed :meth:`_open`,
        so it must cope with a half-opened object."""

    async def __aenter__(self) -> Self:
        try:
            await self._open()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()


class BlockingScoped:
    """:class:`Scoped` for a plain ``with`` block: entering runs :meth:`_open_blocking`,
    leaving (or a failed :meth:`_open_blocking`) runs :meth:`close`."""

    def _open_blocking(self) -> None:
        """Whatever entering needs."""

    def close(self) -> None:
        """Give back whatever the object holds (idempotent, copes with a half-open object)."""

    def __enter__(self) -> Self:
        try:
            self._open_blocking()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class NurseryOwner:
    """Base class for objects whose ``async with`` owns a nursery for their background work."""

    _stack: AsyncExitStack | None = None
    _nursery: trio.Nursery | None = None
    _entered = False  # whether ``async with`` was ever entered (for the error message)

    async def _start(self, nursery: trio.Nursery) -> None:
        """Start the background work in ``nursery`` (and anything else entering needs)."""
        raise NotImplementedError

    async def _stop(self) -> None:
        """Close what the object owns; the nursery is cancelled afterwards."""
        raise NotImplementedError

    # Both KeyboardInterrupt-protected (as trio's own nursery manager): a Ctrl-C raised between
    # opening the nursery and recording it in the stack, or inside AsyncExitStack's exit,
    # would leave trio's nursery open on the task.  A Ctrl-C arriving meanwhile is raised at
    # the next checkpoint (opening and closing both wait on the network).
    @trio.lowlevel.enable_ki_protection
    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError(f"{self!r} is already open")
        stack = AsyncExitStack()
        try:
            self._nursery = await stack.enter_async_context(trio.open_nursery())
            await self._start(self._nursery)
        except BaseException as error:
            failure: BaseException = error
        else:
            self._stack = stack
            self._entered = True
            return self
        # Starting failed: undo, then raise the failure itself, never a group around it.
        try:
            with trio.CancelScope(shield=True):
                await self._stop()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            await stack.__aexit__(type(failure), failure, failure.__traceback__)
        except BaseExceptionGroup as group:
            failure = collapse(group, failure)
        except BaseException as other:
            failure = other if isinstance(other, KeyboardInterrupt) else failure
        raise failure

    @trio.lowlevel.enable_ki_protection
    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        stack, self._stack = self._stack, None
        pending = exc  # what leaves the block: the body's exception, or a failure to close
        try:
            await self._stop()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()  # background work left: watchdog etc.
        except BaseException as close_error:
            pending = close_error
        if stack is not None:
            try:
                if await stack.__aexit__(
                    type(pending) if pending is not None else None,
                    pending,
                    pending.__traceback__ if pending is not None else None,
                ):
                    return True  # the nursery's own (cancelled) scope absorbed a Cancelled
            except BaseExceptionGroup as group:
                pending = collapse(group, pending)
            except BaseException as error:
                pending = error
        if pending is None or pending is exc:
            return False  # nothing, or the body's own exception unchanged: Python re-raises it
        raise pending  # outside any handler of ours: no group in its context


def raise_not_open(owner: NurseryOwner) -> NoReturn:
    """Raise :class:`ClientNotOpenError` saying whether ``owner`` was never opened with
    ``async with`` or its block has ended."""
    name = type(owner).__name__
    if owner._entered:
        raise ClientNotOpenError(f"{owner!r} is closed: its `async with` block has ended")
    raise ClientNotOpenError(
        f"{owner!r} is not open: use it inside `async with {name}(...) as client:`"
    )
