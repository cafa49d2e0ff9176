"""Ctrl-C at every point of the library's nursery work ends in a plain KeyboardInterrupt.

Under ``trio.run``'s default delivery trio raises KeyboardInterrupt at any bytecode that is not
KeyboardInterrupt-protected.  ``trio_cluster.testing.ctrl_c`` raises it at each such line in
turn (deterministically, instead of a signal landing by chance) and runs each case in a thread
of its own, so a case that hangs is reported instead of hanging the test.

The control test shows the probe finds the bug the library works around: trio's own
``nursery.start_soon`` is not protected, and a KeyboardInterrupt inside it ends ``trio.run`` in
``TrioInternalError`` (``scripts/trio_start_soon_ctrl_c.py`` reproduces it with real signals).
"""

from __future__ import annotations

import gc
import weakref

import pytest
import trio

from trio_cluster.lifetime import NurseryOwner, open_nursery, start_soon
from trio_cluster.testing.ctrl_c import CtrlCProbe, Outcome, each_point

#: A case still running after this long is "hung" (it takes milliseconds).
HANG_AFTER = 5.0


async def _child() -> None:
    await trio.lowlevel.checkpoint()


def _all_points(program: object) -> list[Outcome]:
    """Each point's outcome, stopping at the first that is not a plain KeyboardInterrupt."""
    outcomes = []
    for outcome in each_point(program, timeout=HANG_AFTER):  # type: ignore[arg-type]
        outcomes.append(outcome)
        if outcome.ending != "KeyboardInterrupt":
            break
    return outcomes


def _assert_all_plain(outcomes: list[Outcome], at_least: int) -> None:
    bad = [o for o in outcomes if o.ending != "KeyboardInterrupt"]
    assert not bad, (
        f"Ctrl-C at {bad[0].where} (point {bad[0].at}): {bad[0].ending}\n{bad[0].detail}"
    )
    assert len(outcomes) >= at_least, f"only {len(outcomes)} points were interrupted"


def test_fan_out_nursery_and_start_soon_survive_ctrl_c_at_every_point() -> None:
    async def program(probe: CtrlCProbe) -> None:
        with probe:
            for _ in range(2):  # entering, spawning into, leaving, and entering again
                async with open_nursery() as nursery:
                    for _ in range(3):
                        start_soon(nursery, _child)

    _assert_all_plain(_all_points(program), at_least=50)


class _Owner(NurseryOwner):
    async def _start(self, nursery: trio.Nursery) -> None:
        start_soon(nursery, trio.sleep_forever)

    async def _stop(self) -> None:
        await trio.lowlevel.checkpoint()


def test_nursery_owner_survives_ctrl_c_at_every_point() -> None:
    async def program(probe: CtrlCProbe) -> None:
        with probe:
            async with _Owner():
                await trio.lowlevel.checkpoint()

    _assert_all_plain(_all_points(program), at_least=20)


@pytest.mark.filterwarnings("ignore:coroutine '_child' was never awaited:RuntimeWarning")
def test_control_trios_own_start_soon_is_not_ctrl_c_safe() -> None:
    """If this fails, trio protects ``start_soon`` now: the README's note and
    ``lifetime.start_soon`` can go."""

    async def program(probe: CtrlCProbe) -> None:
        with probe:
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    nursery.start_soon(_child)

    endings = []
    for outcome in each_point(program, timeout=HANG_AFTER):
        endings.append(outcome.ending)  # trio's nursery: KeyboardInterrupt in a group, mostly
        if outcome.ending in ("TrioInternalError", "hung"):
            break
    gc.collect()  # the orphaned tasks' coroutines warn here, under this test's filter
    assert endings[-1] == "TrioInternalError", endings


def test_the_probe_skips_callbacks_where_cpython_drops_the_exception() -> None:
    """A weak set's removal callback runs wherever an object dies; CPython drops what it
    raises, so a Ctrl-C there is lost whatever the library does: not a point to test."""

    class Member:
        pass

    async def program(probe: CtrlCProbe) -> None:
        members: weakref.WeakSet[Member] = weakref.WeakSet()
        member = Member()
        members.add(member)
        with probe:
            del member  # the removal callback runs here, inside the probe
            await trio.lowlevel.checkpoint()

    _assert_all_plain(_all_points(program), at_least=1)
