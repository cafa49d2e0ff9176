"""What a person sees: live progress while a run goes (``rich``), and a summary table at the end.

On a terminal, one live line shows scenario n/N, elapsed and estimated time left, ops/s,
errors, p99, connections and the fault in progress.  When stderr is not a terminal (CI, a
pipe), a plain line per scenario is printed instead, so logs stay readable.  Everything shown
goes through the run's :class:`~chaos.redact.Redactor`.

The time left (:class:`Eta`) comes from each scenario's planned duration
(``Scenario.planned``); the errors shown are ``Op.failed``, the report's definition.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .figures import deciding, metrics
from .monitor import ProgressSink, Snapshot
from .redact import Redactor
from .report import render_text
from .runner import ScenarioResult
from .scenarios import Planned, Scenario
from .session import UI

__all__ = ["Eta", "LiveUI", "summary_table"]

#: Seconds of planned extra time, at the planned pace, the ETA starts from (see ``Eta.scale``).
ETA_PRIOR = 3.0

_STYLE = {"passed": "green", "failed": "bold red", "error": "bold red", "skipped": "yellow",
          "interrupted": "magenta"}  # fmt: skip


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Eta:
    """Time left in a run, from the planned duration of each scenario (:class:`Planned`).

    What a plan fixes (warm-up, holds, tails, steady load: sleeps) is taken as it is; the
    rest (work, the cluster's reactions) is scaled by how much longer than planned the
    finished scenarios took beyond their fixed part, since a busy machine stretches only
    that.  Inside the running scenario, what is left of its own plan counts (never less
    than nothing).  Times are whatever clock the caller reads (tests pass their own).
    """

    def __init__(self, plan: Sequence[Planned]) -> None:
        self.plan = list(plan)
        self._current: int | None = None
        """The running scenario (None: between two)."""
        self._next = 0
        """The first scenario not started yet."""
        self._began = 0.0
        self._done_extra = 0.0
        """Planned extra seconds of the finished scenarios..."""
        self._took_extra = 0.0
        """...and what they really took beyond their fixed part."""

    @property
    def scale(self) -> float:
        """How much longer than planned the unfixed part runs on this machine: 1 at first, then
        the finished scenarios' ratio, weighed against ``ETA_PRIOR`` planned seconds at 1 (so that
        the first short scenario, slow to dial, does not set it alone)."""
        took = max(self._took_extra, 0.0)
        return (took + ETA_PRIOR) / (self._done_extra + ETA_PRIOR)

    def start(self, index: int, now: float) -> None:
        """Scenario ``index`` starts at ``now``."""
        self._current, self._next, self._began = index, index + 1, now

    def finish(self, index: int, now: float) -> None:
        """Scenario ``index`` ended at ``now``."""
        planned = self.plan[index]
        self._done_extra += planned.extra
        self._took_extra += (now - self._began) - planned.fixed
        self._current = None

    def left(self, now: float) -> float:
        """Seconds the run should still take, from ``now``."""
        scale = self.scale
        later = sum(p.fixed + scale * p.extra for p in self.plan[self._next :])
        if self._current is None:
            return later
        planned = self.plan[self._current]
        return later + max(planned.fixed + scale * planned.extra - (now - self._began), 0.0)


class LiveUI(UI):
    """Progress on ``stream`` (default stderr); reports of finished scenarios on ``out``.
    ``plan``: every scenario's planned duration, in the order they run (for the ETA)."""

    def __init__(
        self,
        redactor: Redactor,
        plan: Sequence[Planned] = (),
        *,
        stream: TextIO | None = None,
        out: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redactor = redactor
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.out = out or sys.stdout
        self.clock = clock
        self.started = clock()
        self.eta = Eta(plan)
        self.index = 0
        self.total = 0
        self.name = ""
        self._live: Live | None = None
        self._last: Snapshot | None = None

    # --- session hooks -----------------------------------------------------------------------

    def scenario_started(self, index: int, total: int, scenario: Scenario) -> None:
        self.index, self.total, self.name = index, total, scenario.name
        self.eta.start(index, self.clock())
        self._last = None
        if self.console.is_terminal:
            if self._live is None:
                # No auto-refresh: that would be a thread; the run refreshes on each snapshot.
                self._live = Live(self._line(), console=self.console, transient=True,
                                  auto_refresh=False)  # fmt: skip
                self._live.start()
            self._live.update(self._line(), refresh=True)
        else:
            self.console.print(f"[{index + 1}/{total}] {scenario.name} ... "
                               f"elapsed {_clock(self._elapsed())}, "
                               f"left ~{_clock(self._eta())}")  # fmt: skip

    def snapshot(self) -> ProgressSink | None:
        return self._on_snapshot

    def scenario_done(self, result: ScenarioResult) -> None:
        self.eta.finish(self.index, self.clock())
        text = self.redactor.scrub(render_text(result))
        if self._live is not None:
            self._live.console.print(text, end="", markup=False, highlight=False)
        else:
            print(text, end="", file=self.out, flush=True)
        if self._live is not None and self.index + 1 == self.total:
            self.stop()

    def message(self, text: str) -> None:
        self.console.print(self.redactor.scrub(text), markup=False, highlight=False)

    def stop(self) -> None:
        """End the live display (idempotent)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    # --- rendering ---------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return self.clock() - self.started

    def _eta(self) -> float:
        return self.eta.left(self.clock())

    def _on_snapshot(self, snap: Snapshot) -> None:
        self._last = snap
        if self._live is not None:
            self._live.update(self._line(), refresh=True)

    def _line(self) -> Text:
        line = Text()
        line.append(f"[{self.index + 1}/{self.total}] ", style="bold")
        line.append(f"{self.name:<22}", style="cyan")
        line.append(f" elapsed {_clock(self._elapsed())}  left ~{_clock(self._eta())}")
        snap = self._last
        if snap is not None:
            line.append(f"  t={snap.elapsed:4.1f}s  {snap.ops_per_s:6.0f} ops/s  ")
            line.append(f"errors {snap.errors}", style="red" if snap.errors else "")
            line.append(f"  p99 {snap.p99_ms:.1f}ms  conns {snap.connections}")
            if snap.unusable:
                line.append(f"  unusable {snap.unusable}", style="yellow")
            if snap.fault:
                line.append(f"  fault: {snap.fault}", style="bold yellow")
        return line


def summary_table(results: list[ScenarioResult]) -> Table:
    """One row per scenario: status, time, operations, throughput, errors, p99, recovery, the
    blast radius (the healthy slots' share of the baseline during a fault on one node, against
    its bound) and the first violation."""
    table = Table(title="chaos run summary", show_lines=False)
    for column, justify in (("scenario", "left"), ("status", "left"), ("time", "right"),
                            ("ops", "right"), ("ops/s", "right"), ("errors", "right"),
                            ("p99 ms", "right"), ("recovery", "right"),
                            ("healthy/bound", "right"),
                            ("first violation / reason", "left")):  # fmt: skip
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in results:
        status = Text(r.status, style=_STYLE.get(r.status, ""))
        if r.status in ("skipped", "error", "interrupted"):
            why = r.skipped or r.error or "Ctrl-C"
            table.add_row(r.scenario.name, status, f"{r.seconds:.1f}s", "", "", "", "", "", "",
                          why)  # fmt: skip
            continue
        m = metrics(r)
        recovery = ""
        if r.recoveries:
            worst = [x.seconds for x in r.recoveries if x.measured]
            if any(x is None for x in worst):
                recovery = "never"
            elif worst:
                recovery = f"{max(x for x in worst if x is not None):.2f}s"
            else:
                recovery = "n/a"
        first = r.violations[0].invariant if r.violations else ""
        if len(r.violations) > 1:
            first += f" (+{len(r.violations) - 1})"
        table.add_row(
            r.scenario.name, status, f"{r.seconds:.1f}s", str(m["total_operations"]),
            f"{m['throughput_ops_s']:.0f}", str(m["failed"]), f"{m['p99_ms']:.1f}", recovery,
            _blast(r), first,
        )  # fmt: skip
    return table


def _blast(result: ScenarioResult) -> Text:
    """``ratio/bound`` of the blast radius that decides the check (red when under), ``n/c``
    when it could not be checked, empty without a fault on one node."""
    blast = deciding(result.blast)
    if blast is None:
        return Text("")
    if blast.unchecked is not None:
        return Text("n/c")
    held = blast.ratio >= blast.bound
    return Text(f"{blast.ratio:.2f}/{blast.bound:.2f}", style="" if held else "bold red")
