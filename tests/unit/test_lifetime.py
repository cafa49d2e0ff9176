"""NurseryOwner and the fan-out nursery hand back single exceptions, never trio's groups:
the body's own exception unchanged, a background failure as itself, KeyboardInterrupt bare
wherever it was raised, an application's own ExceptionGroup as it went in."""

from __future__ import annotations

import pytest
import trio
from redis import exceptions as rex

from trio_cluster.lifetime import NurseryOwner, collapse, first_error, open_nursery


class AppError(Exception):
    pass


class Owner(NurseryOwner):
    """A NurseryOwner whose background task does what the test asks."""

    def __init__(self, background: BaseException | None = None, start_fails: bool = False):
        self.background = background
        self.start_fails = start_fails
        self.stopped = False
        self.failed = trio.Event()

    async def _start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._work)
        if self.start_fails:
            raise rex.ConnectionError("cannot start")

    async def _work(self) -> None:
        if self.background is not None:
            self.failed.set()
            raise self.background
        await trio.sleep_forever()

    async def _stop(self) -> None:
        self.stopped = True


async def test_body_error_leaves_unchanged() -> None:
    error = AppError("body")
    owner = Owner()
    with pytest.raises(AppError) as caught:
        async with owner:
            raise error
    assert caught.value is error and owner.stopped
    assert not getattr(caught.value, "__notes__", None)


async def test_application_exception_group_is_not_unwrapped() -> None:
    group = ExceptionGroup("mine", [AppError("a"), AppError("b")])
    with pytest.raises(ExceptionGroup) as caught:
        async with Owner():
            raise group
    assert caught.value is group


async def test_background_failure_leaves_as_itself() -> None:
    with pytest.raises(rex.ResponseError) as caught:
        async with Owner(background=rex.ResponseError("background")) as owner:
            await owner.failed.wait()
            await trio.sleep_forever()  # cancelled by the failing task
    assert str(caught.value) == "background"


async def test_body_error_wins_and_notes_the_background_failure() -> None:
    with pytest.raises(AppError) as caught:
        async with Owner(background=rex.ResponseError("background")) as owner:
            await owner.failed.wait()
            raise AppError("body")
    others = caught.value.other_errors  # type: ignore[attr-defined]
    assert [str(o) for o in others] == ["background"]
    assert caught.value.__notes__ == ["also raised: ResponseError: background"]


async def test_keyboard_interrupt_from_background_is_bare() -> None:
    with pytest.raises(KeyboardInterrupt) as caught:
        async with Owner(background=KeyboardInterrupt()) as owner:
            await owner.failed.wait()
            await trio.sleep_forever()
    assert type(caught.value) is KeyboardInterrupt


async def test_start_failure_is_bare_and_stops() -> None:
    owner = Owner(start_fails=True)
    with pytest.raises(rex.ConnectionError, match="cannot start"):
        async with owner:
            raise AssertionError("not reached")
    assert owner.stopped


async def test_outer_cancel_passes_through() -> None:
    with trio.CancelScope() as scope:
        async with Owner():
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_open_nursery_raises_the_first_failure_with_the_others() -> None:
    async def fail(message: str, delay: float) -> None:
        await trio.sleep(delay)
        raise rex.ResponseError(message)

    with pytest.raises(rex.ResponseError) as caught:
        async with open_nursery() as nursery:
            nursery.start_soon(fail, "first", 0)
            nursery.start_soon(trio.sleep_forever)
    assert str(caught.value) == "first"
    assert not isinstance(caught.value, BaseExceptionGroup)


def test_collapse_and_first_error_choose_as_documented() -> None:
    deep_interrupt = BaseExceptionGroup(
        "outer", [AppError("x"), BaseExceptionGroup("inner", [KeyboardInterrupt()])]
    )
    assert type(collapse(deep_interrupt)) is KeyboardInterrupt
    a, b = AppError("a"), AppError("b")
    assert collapse(ExceptionGroup("g", [a, b]), preferred=b) is b
    assert b.other_errors == (a,)  # type: ignore[attr-defined]
    c, d = AppError("c"), AppError("d")
    assert first_error([c, d]) is c and c.__notes__ == ["also raised: AppError: d"]
