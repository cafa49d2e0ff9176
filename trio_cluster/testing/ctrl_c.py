"""Ctrl-C at every point: raise ``KeyboardInterrupt`` where trio's SIGINT handler could.

Under ``trio.run``'s default delivery, trio's SIGINT handler raises ``KeyboardInterrupt`` at
whatever bytecode the main thread is running, unless that code is KeyboardInterrupt-protected
(``trio.lowlevel.currently_ki_protected()``).  A real signal lands there by chance; this module
lands it deterministically: :class:`CtrlCProbe` traces every line the thread runs, counts those
where trio's handler would raise, and raises ``KeyboardInterrupt`` at the ``at``-th one (from
the trace function, so it surfaces in that frame at that line, as from the handler).
:func:`each_point` runs a program once per counted point, in a thread of its own so that a
program the interrupt leaves hanging is reported instead of hanging the caller.

Used by ``tests/unit/test_lifetime_ctrl_c.py``, ``tests/integration/test_cluster_ctrl_c.py``
and ``scripts/ctrl_c_points.py``.
"""

from __future__ import annotations

import dis
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from types import CodeType, FrameType, TracebackType
from typing import Any, Self

import attrs
import trio

__all__ = ["CLUSTER_APP", "CtrlCProbe", "Outcome", "each_point", "run_once"]

#: A program to interrupt with a real SIGINT (``python -c CLUSTER_APP HOST PORT``): a
#: ``ClusterClient`` running a fan-out command and a keyed one in a loop, under trio's default
#: Ctrl-C delivery; it prints ``ready`` once connected.
CLUSTER_APP = """
import sys, trio
from trio_cluster import ClusterClient

async def main() -> None:
    async with ClusterClient(host=sys.argv[1], port=int(sys.argv[2])) as rc:
        await rc.ping()
        print("ready", flush=True)
        while True:  # a fan-out command and a keyed one, over and over
            await rc.dbsize()
            await rc.get("tb:ctrl-c")

trio.run(main)  # trio's default: KeyboardInterrupt at any bytecode outside protected code
"""

#: A program for :func:`run_once`: an async function given the probe to enter.
Program = Callable[["CtrlCProbe"], Any]


class CtrlCProbe:
    """``with CtrlCProbe(at=k):`` in a trio task: from there on, raise ``KeyboardInterrupt`` at
    the ``k``-th line (1-based) run by this thread where trio's SIGINT handler would raise it.
    ``at=None`` only counts those lines (in :attr:`count`).  :attr:`where` names the line it
    was raised at (``file:line function``), ``None`` if it never was."""

    def __init__(self, at: int | None, where: Callable[[FrameType], bool] | None = None) -> None:
        self.at = at
        #: Which frames count (default: all); others are run but never interrupted.
        self.counts_in = where
        self.count = 0
        self.where: str | None = None

    def _global(self, frame: FrameType, event: str, arg: object) -> Any:
        return self._local

    def _local(self, frame: FrameType, event: str, arg: object) -> Any:
        if event != "line" or self.where is not None:
            return self._local
        # Called from ``frame``: trio walks up from here, as from its handler's frame.
        if (
            trio.lowlevel.currently_ki_protected()
            or not _signal_can_land(frame)
            or _exception_is_dropped(frame)
        ):
            return self._local
        if self.counts_in is not None and not self.counts_in(frame):
            return self._local
        self.count += 1
        if self.count == self.at:
            self.where = (
                f"{_short(frame.f_code.co_filename)}:{frame.f_lineno} {frame.f_code.co_name}"
            )
            sys.settrace(None)
            raise KeyboardInterrupt
        return self._local

    def __enter__(self) -> Self:
        frame = sys._getframe(1)
        while frame is not None:  # the frames already running get traced too
            frame.f_trace = self._local
            frame = frame.f_back  # type: ignore[assignment]
        sys.settrace(self._global)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sys.settrace(None)


_LANDS: dict[tuple[CodeType, int], bool] = {}


def _signal_can_land(frame: FrameType) -> bool:
    """Whether a signal's handler can run where ``frame`` is about to start a line.

    CPython runs signal handlers only where it checks for pending events (a function's
    start, a loop's back edge, after a call into C).  Two kinds of line starts are never such
    places, and raising there would report breakage no real Ctrl-C can cause: re-entering an
    ``await`` loop (``SEND``) when a suspended coroutine resumes, and the call of a ``with``
    block's ``__exit__``/``__aexit__`` right after the block (``LOAD_CONST None`` x3 then
    the call, or ``PUSH_EXC_INFO`` then ``WITH_EXCEPT_START``).
    """
    key = (frame.f_code, frame.f_lasti)
    lands = _LANDS.get(key)
    if lands is None:
        ops = [
            (i.opname, i.argval)
            for i in dis.get_instructions(frame.f_code)
            if i.offset >= frame.f_lasti and i.opname not in ("CACHE", "EXTENDED_ARG", "NOP")
        ][:5]
        names = [name for name, _ in ops]
        with_exit = ops[:3] == [("LOAD_CONST", None)] * 3 and "CALL" in names[3:5]
        lands = not (
            names[:1] == ["SEND"]
            or names[:2] == ["PUSH_EXC_INFO", "WITH_EXCEPT_START"]
            or with_exit
        )
        _LANDS[key] = lands
    return lands


#: Callbacks CPython runs when an object dies (from the garbage collector, at whatever line the
#: program was on): a weak set's or weak dictionary's entry removal, and finalizers.
_DEATH_CALLBACKS = frozenset({("_weakrefset.py", "_remove"), ("weakref.py", "remove")})


def _exception_is_dropped(frame: FrameType) -> bool:
    """Whether ``frame`` runs inside a callback of an object's death.  CPython prints an
    exception raised there as "Exception ignored in ..." and drops it, so a Ctrl-C landing
    there is lost whatever the program does: no point to test (the probe once counted one, on
    a busy machine whose garbage collector happened to run mid-program)."""
    current: FrameType | None = frame
    while current is not None:
        code = current.f_code
        name = code.co_filename.rpartition("/")[2]
        if code.co_name == "__del__" or (name, code.co_name) in _DEATH_CALLBACKS:
            return True
        current = current.f_back
    return False


def _short(filename: str) -> str:
    for marker in ("site-packages/", "trio_cluster/", "tests/"):
        if marker in filename:
            head = "" if marker == "site-packages/" else marker
            return head + filename.rsplit(marker, 1)[1]
    return filename


@attrs.frozen
class Outcome:
    """How one run ended: ``ending`` is ``"KeyboardInterrupt"`` (a plain one, the only good
    ending), ``"hung"``, ``"returned"``, ``"no point"`` (the program ran out of points) or the
    exception's type name; ``where`` is the interrupted line; ``detail`` a traceback."""

    at: int
    where: str | None
    ending: str
    detail: str = ""


def run_once(program: Program, at: int | None, timeout: float,
             where: Callable[[FrameType], bool] | None = None) -> tuple[Outcome, int]:  # fmt: skip
    """``trio.run(program, probe)`` in a fresh thread, interrupted at point ``at``; the
    outcome and the number of points counted.  A run still going after ``timeout`` s is
    ``"hung"`` (its thread is left behind, a daemon)."""
    probe = CtrlCProbe(at, where)
    result: list[Outcome] = []

    def target() -> None:
        try:
            trio.run(program, probe)
        except KeyboardInterrupt as error:
            result.append(Outcome(at or 0, probe.where, "KeyboardInterrupt", _format(error)))
        except BaseException as error:
            result.append(Outcome(at or 0, probe.where, type(error).__name__, _format(error)))
        else:
            ending = "returned" if probe.where is not None else "no point"
            result.append(Outcome(at or 0, probe.where, ending))

    thread = threading.Thread(target=target, name=f"ctrl-c point {at}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not result:
        return Outcome(at or 0, probe.where, "hung"), probe.count
    return result[0], probe.count


def each_point(program: Program, *, start: int = 1, stop: int | None = None, step: int = 1,
               timeout: float = 10.0, where: Callable[[FrameType], bool] | None = None
               ) -> Iterator[Outcome]:  # fmt: skip
    """Run ``program`` once per point from ``start`` (every ``step``-th), interrupted there,
    until a run ends before reaching its point (or ``stop`` is reached); yield each outcome.

    ``program(probe)`` is an async function that does its setup, then enters ``with probe:``
    around a finite piece of work to interrupt (one iteration of the application's loop).
    Points are counted afresh in each run, so the work must take the same path each time for
    the numbering to be stable.
    """
    at = start
    while stop is None or at < stop:
        outcome, _ = run_once(program, at, timeout, where)
        if outcome.ending == "no point":
            return
        yield outcome
        at += step


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))
