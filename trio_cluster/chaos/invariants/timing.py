"""The run against its own baseline: what the load did before the first fault
(:class:`Baseline`), how long it took to come back after each fault (:class:`Recovery`), and how
much of the cluster a fault on one node took down with it (:class:`BlastRadius`).

These are measurements first (the report shows them) and checks second (``recovery``,
``blast-radius``); both compare the run with itself, never with absolute figures.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from ..address import Address
from ..records import Op, RunRecord, Window
from .base import Violation

__all__ = [
    "BASELINE_SKIP",
    "RECOVERY_WINDOW",
    "SUCCESS_MARGIN",
    "THROUGHPUT_MARGIN",
    "Baseline",
    "BlastRadius",
    "Partition",
    "Recovery",
    "baseline_of",
    "blast_radii",
    "check_blast_radius",
    "check_recovery",
    "faulted",
    "percentile",
    "recoveries",
    "run_baseline",
    "steadiness",
]


@dataclass(frozen=True)
class Baseline:
    """What the load did before the first fault (or over the whole run without faults): the
    reference the run's own bounds are derived from."""

    start: float
    end: float
    ops: int
    """Operations counted (started in the window; those the workload cancelled excluded)."""
    ok: int
    p50: float = 0.0
    p99: float = 0.0
    """Latency of successful operations, seconds."""

    @property
    def seconds(self) -> float:
        """Length of the window."""
        return max(self.end - self.start, 0.0)

    @property
    def throughput(self) -> float:
        """Operations per second."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    @property
    def success(self) -> float:
        """Fraction of operations that succeeded (1.0 with none)."""
        return self.ok / self.ops if self.ops else 1.0

    @property
    def measured(self) -> bool:
        """Enough load to compare against (``MIN_BASELINE_OPS`` over ``MIN_BASELINE_S``)."""
        return self.ops >= MIN_BASELINE_OPS and self.seconds >= MIN_BASELINE_S


#: A baseline needs this many operations over this many seconds to be compared against.
MIN_BASELINE_OPS = 50
MIN_BASELINE_S = 0.3
#: The first moments of a run (dials, pool fill) are not part of the baseline.
BASELINE_SKIP = 0.2
#: Recovered: over a sliding window of RECOVERY_WINDOW seconds, throughput is at least
#: THROUGHPUT_MARGIN of the baseline's and the success rate at most SUCCESS_MARGIN below it.
#: An outage cuts throughput to a few percent of the baseline; on a busy shared machine, other
#: processes alone can halve it (measured: 830 -> 320 ops/s with no fault), so a quarter.
RECOVERY_WINDOW = 1.0
THROUGHPUT_MARGIN = 0.25
SUCCESS_MARGIN = 0.01
#: The first 1/RECOVERY_PARTS of the recovery window must meet the throughput margin too.
RECOVERY_PARTS = 4
#: Step of the sliding window when looking for the recovery instant.
RECOVERY_STEP = 0.05


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted ``values``; 0 when there are none."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def baseline_of(ops: Sequence[Op], start: float, end: float) -> Baseline:
    """The baseline of the operations that started in ``[start + BASELINE_SKIP, end)``."""
    lo = start + BASELINE_SKIP if end - start > 2 * BASELINE_SKIP else start
    counted = [op for op in ops if lo <= op.start < end and op.counted]
    lat = sorted(op.latency for op in counted if op.ok)
    ok = sum(1 for op in counted if op.ok)
    return Baseline(lo, end, len(counted), ok, percentile(lat, 0.5), percentile(lat, 0.99))


def run_baseline(record: RunRecord) -> Baseline:
    """The baseline of a run: before its first fault, or the whole load without faults."""
    first = min((w.start for w in record.fault_windows), default=record.end)
    start = record.start if record.warm_at is None else min(record.warm_at, first)
    return baseline_of(record.ops, start, first)


@dataclass(frozen=True)
class Recovery:
    """How one fault window ended: seconds from its end until throughput and success rate
    were back within the margins of the baseline."""

    window: str
    seconds: float | None
    """None: they never came back (or could not be measured: see ``measured``)."""
    ops_after: int
    measured: bool = True
    """False when the baseline or the load after the fault was too short to judge."""
    throughput_after: float = 0.0
    """Operations per second over the recovery window found (or the whole tail)."""
    success_after: float = 1.0


def recoveries(
    ops: Sequence[Op], faults: Sequence[Window], baseline: Baseline, load_end: float
) -> list[Recovery]:
    """For each fault window: how long after its end the load was back to normal, i.e. the
    first instant ``t`` such that the operations started in ``[t, t + RECOVERY_WINDOW)`` (and
    in its first quarter) ran at ``THROUGHPUT_MARGIN`` of the baseline's throughput or more,
    with a success rate at most
    ``SUCCESS_MARGIN`` below the baseline's (searched until the next fault or the end of the
    load).  A window counts only the operations started in it, so an outage shows as missing
    throughput even when the few operations that ran succeeded."""
    counted = sorted((op for op in ops if op.counted), key=lambda op: op.start)
    starts = [op.start for op in counted]
    ordered = sorted(faults, key=lambda w: w.start)
    need_rate = THROUGHPUT_MARGIN * baseline.throughput
    need_success = baseline.success - SUCCESS_MARGIN
    out = []
    for index, window in enumerate(ordered):
        until = ordered[index + 1].start if index + 1 < len(ordered) else load_end
        after = bisect_left(starts, until) - bisect_left(starts, window.end)
        if not baseline.measured or until - window.end < RECOVERY_WINDOW:
            out.append(Recovery(window.name, None, after, measured=False))
            continue
        seconds = None
        rate = success = 0.0
        t = window.end
        while t + RECOVERY_WINDOW <= until + 1e-9:
            inside = counted[bisect_left(starts, t) : bisect_left(starts, t + RECOVERY_WINDOW)]
            rate = len(inside) / RECOVERY_WINDOW
            success = sum(1 for op in inside if op.ok) / len(inside) if inside else 0.0
            if success >= need_success and _steady(starts, t, need_rate):
                seconds = t - window.end
                break
            t += RECOVERY_STEP
        out.append(Recovery(window.name, seconds, after, True, rate, success))
    return out


def _steady(starts: Sequence[float], t: float, need_rate: float) -> bool:
    """Operations started at ``need_rate`` or more over ``[t, t + RECOVERY_WINDOW)`` and over
    its first ``1 / RECOVERY_PARTS`` (so a window that begins in the outage and ends back to
    normal does not count: the instant found is at most that fraction early)."""
    first = RECOVERY_WINDOW / RECOVERY_PARTS
    whole = bisect_left(starts, t + RECOVERY_WINDOW) - bisect_left(starts, t)
    head = bisect_left(starts, t + first) - bisect_left(starts, t)
    return whole > 0 and whole / RECOVERY_WINDOW >= need_rate and head / first >= need_rate


def check_recovery(found: Sequence[Recovery], bound: float) -> list[Violation]:
    """After each fault, throughput and success rate came back within ``bound`` seconds."""
    out = []
    for rec in found:
        if not rec.measured:
            continue  # listed as "not checked" by check_all
        if rec.seconds is None:
            out.append(
                Violation(
                    "recovery",
                    f"after {rec.window}: throughput/success never returned within the margins "
                    f"of the baseline ({rec.ops_after} ops afterwards; last window "
                    f"{rec.throughput_after:.0f} ops/s, {100 * rec.success_after:.1f}% ok)",
                )
            )
        elif rec.seconds > bound:
            out.append(
                Violation(
                    "recovery",
                    f"after {rec.window}: recovered in {rec.seconds:.2f} s, bound {bound:.2f} s",
                )
            )
    return out


# --- blast radius ------------------------------------------------------------------------------

#: The baseline is cut into this many equal parts to see how steady it was (see ``steadiness``).
STEADINESS_PARTS = 4


@dataclass(frozen=True)
class BlastRadius:
    """How the rest of the cluster fared while a fault held one node: the successful operations
    per second on the slots that node did not serve, against the baseline's.

    Only operations on keys count (their slots are known); an operation is *faulted* when one
    of its keys is on a slot the faulted node served as the fault began, *healthy* otherwise.
    """

    window: str
    node: Address
    seconds: float
    """Length of the fault."""
    healthy_share: float
    """Of the baseline's successful operations, the fraction on healthy slots."""
    baseline_ok_per_s: float
    """Successful operations per second in the baseline (both parts)."""
    healthy_ok_per_s: float
    """Successful operations per second on healthy slots during the fault."""
    faulted_ok_per_s: float
    """Successful operations per second on the faulted node's slots during the fault."""
    steadiness: float
    """The baseline's slowest part (of ``STEADINESS_PARTS``) over its mean, in successful
    operations per second: how much a busy machine alone moved the load."""
    bound: float
    """Least ``ratio`` allowed: ``healthy_share x (1 - held / seconds) x steadiness``."""
    unchecked: str | None = None
    """Why the check could not be made (None: it was)."""

    @property
    def ratio(self) -> float:
        """``healthy_ok_per_s / baseline_ok_per_s``."""
        return self.healthy_ok_per_s / self.baseline_ok_per_s if self.baseline_ok_per_s else 0.0


def faulted(op: Op, slots: frozenset[int]) -> bool:
    """Whether ``op`` touched a key on one of ``slots``."""
    return any(slot in slots for slot in op.slots)


class Partition:
    """Which operations were on the faulted part of the cluster: an operation is ``faulted``
    when a key of it is on a slot the node of the latest fault on one node begun by then
    served (before the first such fault, the first one's), ``healthy`` when it has keys but
    none there, and has no part (None) when it has no key.  With no fault on one node at
    all, every operation with keys is healthy."""

    def __init__(self) -> None:
        self._starts: list[float] = []
        self._slots: list[frozenset[int]] = []

    @classmethod
    def of(cls, faults: Sequence[Window]) -> Partition:
        """The partition of a finished run's fault windows."""
        partition = cls()
        for w in sorted(faults, key=lambda w: w.start):
            if w.single_node is not None:
                partition.add(w.start, w.slots)
        return partition

    def add(self, start: float, slots: frozenset[int]) -> None:
        """A fault on one node began at ``start`` (the latest yet), on a node serving
        ``slots``."""
        self._starts.append(start)
        self._slots.append(slots)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def part(self, op: Op) -> str | None:
        """``faulted``, ``healthy`` or None (see the class docstring)."""
        if not op.slots:
            return None
        if not self._starts:
            return "healthy"
        index = max(bisect_right(self._starts, op.start) - 1, 0)
        return "faulted" if faulted(op, self._slots[index]) else "healthy"


def steadiness(ok: Sequence[Op], start: float, end: float, parts: int = STEADINESS_PARTS) -> float:
    """The rate of the slowest of ``parts`` equal parts of ``[start, end)`` over the mean rate,
    counting the starts of ``ok`` (0 with none)."""
    if not ok or end <= start:
        return 0.0
    width = (end - start) / parts
    counts = [0] * parts
    for op in ok:
        index = int((op.start - start) // width)
        if 0 <= index < parts:
            counts[index] += 1
    mean = sum(counts) / parts
    return min(counts) / mean if mean else 0.0


def blast_radii(
    ops: Sequence[Op], faults: Sequence[Window], baseline: Baseline, held: float
) -> list[BlastRadius]:
    """For each fault window on a single node: the blast radius (see :class:`BlastRadius`).
    ``held`` is the longest a task may be held by the faulted node before the client knows
    it is bad (``Bounds.held``)."""
    keyed_ok = sorted((op for op in ops if op.ok and op.slots), key=lambda op: op.start)
    starts = [op.start for op in keyed_ok]

    def between(lo: float, hi: float) -> list[Op]:
        return keyed_ok[bisect_left(starts, lo) : bisect_left(starts, hi)]

    before = between(baseline.start, baseline.end)
    rate = len(before) / baseline.seconds if baseline.seconds > 0 else 0.0
    steady = steadiness(before, baseline.start, baseline.end)
    out = []
    for w in faults:
        node = w.single_node
        if node is None:
            continue
        seconds = w.end - w.start
        share = sum(1 for op in before if not faulted(op, w.slots)) / len(before) if before else 0
        during = between(w.start, w.end)
        bad = sum(1 for op in during if faulted(op, w.slots))
        unchecked = None
        if not baseline.measured or not before:
            unchecked = "baseline too short"
        elif steady == 0:
            unchecked = (
                f"the baseline stalled (a {1 / STEADINESS_PARTS:.0%} part of it saw no success)"
            )
        elif seconds <= held:
            unchecked = (
                f"the fault ({seconds:.1f} s) is no longer than a task may be held by the node "
                f"({held:.2f} s)"
            )
        per_s = 1 / seconds if seconds > 0 else 0.0
        out.append(
            BlastRadius(
                w.name, node, seconds, share, rate, (len(during) - bad) * per_s, bad * per_s,
                steady, share * max(0.0, 1 - held / seconds) * steady if seconds > 0 else 0.0,
                unchecked,
            )
        )  # fmt: skip
    return out


def check_blast_radius(found: Sequence[BlastRadius]) -> list[Violation]:
    """While a fault held one node, the rest of the cluster kept serving: successful
    operations per second on the slots it did not serve stayed at ``bound`` of the baseline's
    or more."""
    return [
        Violation(
            "blast-radius",
            f"{b.window} on {b.node}: the healthy slots served {b.healthy_ok_per_s:.0f} ok/s over "
            f"{b.seconds:.1f} s, {b.ratio:.3f} of the baseline's {b.baseline_ok_per_s:.0f} ok/s; "
            f"bound {b.bound:.3f} (healthy share {b.healthy_share:.2f})",
        )
        for b in found
        if b.unchecked is None and b.ratio < b.bound
    ]
