"""The invariants every scenario checks, as pure functions over a ``RunRecord``.

Each checker returns a list of :class:`Violation`; an empty list means the invariant held.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import (
    AuthCheck,
    Delivery,
    HandoffCheck,
    Observation,
    Op,
    Publish,
    PubSubRecord,
    RunRecord,
    Window,
)

__all__ = [
    "CANCELLED",
    "Baseline",
    "Bounds",
    "PubSubTally",
    "Recovery",
    "Verdict",
    "Violation",
    "baseline_of",
    "check_all",
    "check_auth",
    "check_blocked",
    "check_client_counts",
    "check_failures",
    "check_handoffs",
    "check_leaks",
    "check_lost_writes",
    "check_misdelivery",
    "check_pool_bounds",
    "check_pubsub",
    "check_pubsub_connections",
    "check_pubsub_duplicates",
    "check_pubsub_gaps",
    "check_pubsub_losses",
    "check_pubsub_misdelivery",
    "check_pubsub_order",
    "check_recovery",
    "check_relaxed",
    "check_unusable",
    "in_flight",
    "pubsub_tally",
    "recoveries",
    "run_baseline",
    "starved",
]

#: ``Op.error`` for a command the workload itself cancelled (its own random deadline).
CANCELLED = "Cancelled"


@dataclass(frozen=True)
class Violation:
    """One broken invariant, with enough detail to start debugging."""

    invariant: str
    message: str


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
    counted = [op for op in ops if lo <= op.start < end and op.error != CANCELLED]
    lat = sorted(op.latency for op in counted if op.ok)
    ok = sum(1 for op in counted if op.ok)
    return Baseline(lo, end, len(counted), ok, percentile(lat, 0.5), percentile(lat, 0.99))


def run_baseline(record: RunRecord) -> Baseline:
    """The baseline of a run: before its first fault, or the whole load without faults."""
    first = min((w.start for w in record.fault_windows), default=record.end)
    start = record.start if record.warm_at is None else min(record.warm_at, first)
    return baseline_of(record.ops, start, first)


@dataclass(frozen=True)
class Bounds:
    """The limits a scenario's run is checked against."""

    pool_size: int
    """Most connections one client may hold to one node (``PoolOptions.size``/``max_active``)."""
    unusable: float
    """Longest a connection may stay UNUSABLE (read timeout + slack)."""
    blocked: float
    """Longest a caller may be blocked in one command (see ``chaos.clientspec.blocked_bound``)."""
    recovery: float
    """Seconds after a fault clears by which throughput and success rate must be back within
    the margins of the baseline (see :func:`recoveries`)."""
    zero_failures: bool = False
    """Every command must succeed (the fault is one the client must hide completely)."""
    read_timeout: float = 0.5
    """The client's read timeout (relaxed-timeout windows must have exceeded it)."""
    handoff_timeout: float | None = None
    """The client's handoff timeout, when it has maintenance notifications on."""
    longest_read_timeout: float = 0.0
    """The read timeout as maintenance notifications may relax it (0: not relaxable)."""
    slack: float = 0.0
    """Scheduling slack included in the time bounds (derived from the baseline's p99)."""
    explain: dict[str, str] = field(default_factory=dict)
    """One line per bound: where its figure comes from."""


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


def _in_any(t: float, windows: Iterable[Window]) -> Window | None:
    return next((w for w in windows if w.contains(t)), None)


def check_misdelivery(anomalies: Sequence[Observation]) -> list[Violation]:
    """A read returned a value of another key, a version never written, or something that is
    not a value the workload writes: a reply reached the wrong caller."""
    out = []
    for obs in anomalies:
        if obs.got_key is None or obs.got_key != obs.key or obs.got_version > obs.hi:
            out.append(
                Violation(
                    "no-misdelivered-reply",
                    f"read of {obs.key} at t={obs.at:.3f} returned {obs.raw!r} "
                    f"(expected {obs.key} version {obs.lo}..{obs.hi})",
                )
            )
    return out


def check_lost_writes(
    observations: Sequence[Observation], loss_windows: Sequence[Window]
) -> tuple[list[Violation], list[Observation]]:
    """An acknowledged write is older than what was read later (or the key is gone).

    Returns the violations and the losses that the server was allowed to make because the
    write was acknowledged inside a loss window (a failover).
    """
    violations: list[Violation] = []
    excused: list[Observation] = []
    for obs in observations:
        if obs.got_key != obs.key or obs.got_version > obs.hi:
            continue  # a misdelivery, reported by check_misdelivery
        if obs.got_version >= obs.lo or obs.lo == 0:
            continue
        window = _in_any(obs.acked_at, loss_windows)
        if window is not None:
            excused.append(obs)
            continue
        where = "end-of-run read" if obs.final else f"read at t={obs.at:.3f}"
        got = "missing" if obs.got_version == -1 else f"version {obs.got_version}"
        violations.append(
            Violation(
                "no-acknowledged-write-lost",
                f"{obs.key}: version {obs.lo} acknowledged at t={obs.acked_at:.3f}, "
                f"{where} found {got}",
            )
        )
    return violations, excused


def check_pool_bounds(max_per_node: dict[str, int], limit: int) -> list[Violation]:
    """No client ever held more connections to one node than its pool allows."""
    return [
        Violation("pool-bound", f"{node}: {count} connections open at once, bound {limit}")
        for node, count in sorted(max_per_node.items())
        if count > limit
    ]


def check_unusable(spans: dict[int, float], bound: float) -> list[Violation]:
    """No connection stayed UNUSABLE longer than ``bound`` seconds."""
    return [
        Violation("unusable-bound", f"connection {cid} UNUSABLE for {span:.3f} s, bound {bound} s")
        for cid, span in sorted(spans.items())
        if span > bound
    ]


def check_blocked(ops: Sequence[Op], bound: float, limit: int = 5) -> list[Violation]:
    """No caller was blocked in one command longer than ``bound`` seconds."""
    slow = sorted((op for op in ops if op.latency > bound), key=lambda op: -op.latency)
    out = [
        Violation(
            "caller-blocked-bound",
            f"worker {op.worker} {op.kind} at t={op.start:.3f} blocked {op.latency:.3f} s "
            f"(bound {bound:.3f} s, ended with {op.error or 'success'})",
        )
        for op in slow[:limit]
    ]
    if len(slow) > limit:
        out.append(Violation("caller-blocked-bound", f"... and {len(slow) - limit} more"))
    return out


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
    counted = sorted((op for op in ops if op.error != CANCELLED), key=lambda op: op.start)
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


def check_leaks(leaked: Sequence[str]) -> list[Violation]:
    """Every connection of every client is closed once the client is."""
    return [Violation("connections-closed", f"still open after close: {c}") for c in leaked]


def check_client_counts(
    baseline: dict[int, int], final: dict[int, int], kind: str = "clients"
) -> list[Violation]:
    """Each server's client count is back to its baseline (only nodes measured both times)."""
    return [
        Violation(
            "server-clients-baseline",
            f"node :{port} has {final[port]} {kind}, baseline {baseline[port]}",
        )
        for port in sorted(baseline)
        if port in final and final[port] > baseline[port]
    ]


#: Failures a client timeout raised (excusable when the machine itself was too slow).
TIMEOUT_ERRORS = frozenset({"ReadTimeoutError", "WriteTimeoutError", "ConnectTimeoutError",
                            "PoolTimeoutError"})  # fmt: skip


def starved(op: Op, stalls: Sequence[Window], timeout: float) -> bool:
    """Whether ``op`` failed on a client timeout while this process's event loop stalled for
    at least half of ``timeout``: the machine's doing, not the client's."""
    if op.error not in TIMEOUT_ERRORS:
        return False
    stalled = sum(
        min(w.end, op.end) - max(w.start, op.start)
        for w in stalls
        if w.start < op.end and w.end > op.start
    )
    return stalled >= timeout / 2


def check_failures(
    ops: Sequence[Op],
    limit: int = 5,
    excuse_timeouts: bool = False,
    stalls: Sequence[Window] = (),
    timeout: float = math.inf,
) -> list[Violation]:
    """No command failed (commands the workload cancelled itself do not count; nor, with
    ``excuse_timeouts``, those a client timeout failed; nor those :func:`starved`)."""
    failed = [
        op
        for op in ops
        if not op.ok
        and op.error != CANCELLED
        and not (excuse_timeouts and op.error in TIMEOUT_ERRORS)
        and not starved(op, stalls, timeout)
    ]
    if not failed:
        return []
    by_error = Counter(op.error or "?" for op in failed)
    summary = ", ".join(f"{error}={n}" for error, n in sorted(by_error.items()))
    out = [Violation("no-failed-command", f"{len(failed)} commands failed ({summary})")]
    out += [
        Violation(
            "no-failed-command",
            f"worker {op.worker} {op.kind} at t={op.start:.3f} failed with {op.error}",
        )
        for op in sorted(failed, key=lambda op: op.start)[:limit]
    ]
    return out


def _total(maintenance: Mapping[str, Mapping[str, Any]], field: str) -> float:
    return sum(float(stats.get(field, 0)) for stats in maintenance.values())


def check_handoffs(
    checks: Sequence[HandoffCheck],
    maintenance: Mapping[str, Mapping[str, Any]],
    timeout: float | None,
) -> list[Violation]:
    """After a MOVING, every connection of the node is on the new endpoint, handoffs happened,
    none failed, and none kept its connection out of use for the handoff timeout.

    ``maintenance`` is each client's ``maintenance_stats()``; nothing is checked when no MOVING
    was sent (``checks`` empty)."""
    if not checks:
        return []
    out = []
    for check in checks:
        if check.targeted == 0:
            out.append(
                Violation("handoff", f"{check.when}: no connection to {check.node} to check")
            )
        if check.stragglers:
            shown = ", ".join(check.stragglers[:5])
            more = f" and {len(check.stragglers) - 5} more" if len(check.stragglers) > 5 else ""
            out.append(
                Violation(
                    "handoff",
                    f"{check.when}: {len(check.stragglers)} of {check.targeted} connections to "
                    f"{check.node} not on {check.endpoint}: {shown}{more}",
                )
            )
    out += _job_ran_cleanly(
        maintenance,
        "handoff",
        ("handoffs", "MOVING was sent but the client handed off nothing"),
        ("handoff_failures", "handoffs failed"),
    )
    longest = max((float(s.get("longest_unusable", 0.0)) for s in maintenance.values()), default=0)
    if timeout is not None and longest >= timeout:
        out.append(
            Violation(
                "handoff",
                f"a handoff kept its connection UNUSABLE {longest:.3f} s, handoff timeout "
                f"{timeout} s",
            )
        )
    return out


def check_relaxed(
    ops: Sequence[Op],
    windows: Sequence[Window],
    read_timeout: float,
    stalls: Sequence[Window] = (),
    relaxed: float = math.inf,
) -> list[Violation]:
    """While relaxed (a MIGRATING announced it), commands slower than the read timeout still
    succeed: none that started in a relaxed window failed, and at least one of them did take
    longer than the read timeout (otherwise the window proved nothing)."""
    out = []
    for window in windows:
        inside = [op for op in ops if window.contains(op.start) and op.error != CANCELLED]
        failed = [op for op in inside if not op.ok and not starved(op, stalls, relaxed)]
        if failed:
            errors = Counter(op.error or "?" for op in failed)
            summary = ", ".join(f"{error}={n}" for error, n in sorted(errors.items()))
            out.append(
                Violation(
                    "relaxed-timeouts",
                    f"{window.name}: {len(failed)} of {len(inside)} commands failed while "
                    f"relaxed ({summary})",
                )
            )
        if not any(op.ok and op.latency > read_timeout for op in inside):
            out.append(
                Violation(
                    "relaxed-timeouts",
                    f"{window.name}: no command took longer than the read timeout "
                    f"({read_timeout} s): the relaxed timeouts were not exercised",
                )
            )
    return out


def check_auth(
    checks: Sequence[AuthCheck], maintenance: Mapping[str, Mapping[str, Any]]
) -> list[Violation]:
    """After a credential rotation, no connection was left on the old credentials, every
    connection the client holds is authenticated as the new user, and no re-authentication
    failed.  Nothing is checked when no rotation happened (``checks`` empty)."""
    if not checks:
        return []
    out = []
    for check in checks:
        if check.rotated_in is None:
            out.append(
                Violation(
                    "credential-rotation",
                    f"{check.node}: connections were still on the old credentials at the "
                    "rotation deadline",
                )
            )
        if not check.users:
            out.append(
                Violation("credential-rotation", f"{check.node}: the client had no connection")
            )
        wrong = Counter(user for user in check.users if user != check.expected)
        if wrong:
            listed = ", ".join(f"{user} x{n}" for user, n in sorted(wrong.items()))
            out.append(
                Violation(
                    "credential-rotation",
                    f"{check.node}: {sum(wrong.values())} of {len(check.users)} connections "
                    f"not authenticated as {check.expected}: {listed}",
                )
            )
    out += _job_ran_cleanly(
        maintenance,
        "credential-rotation",
        ("reauths", "no connection re-authenticated"),
        ("reauth_failures", "re-authentications failed"),
    )
    return out


def _job_ran_cleanly(
    maintenance: Mapping[str, Mapping[str, Any]],
    rule: str,
    ran: tuple[str, str],
    failed: tuple[str, str],
) -> list[Violation]:
    """A background job's counters summed over the clients: ``ran`` (counter, message if
    zero) must be non-zero, ``failed`` (counter, what failed) zero."""
    out = []
    if _total(maintenance, ran[0]) == 0:
        out.append(Violation(rule, ran[1]))
    failures = _total(maintenance, failed[0])
    if failures:
        out.append(Violation(rule, f"{failures:.0f} {failed[1]}"))
    return out


# --- pub/sub ---------------------------------------------------------------------------------

#: A subscription may have been lost this long before its gap event reached the consumer (the
#: client learns of a dead connection after the fact, and the consumer may lag a little).
#: ``check_pubsub`` adds the run's own in-flight time (:func:`in_flight`).
GAP_SLACK = 1.0
#: Pub/sub losses and gaps may start this long before a fault window (the fault is applied a
#: moment after its window opens); ``check_pubsub`` adds the run's in-flight time too.
PUBSUB_WINDOW_SLACK = 1.0
#: Examples shown per kind of pub/sub violation.
SHOWN = 5

_Key = tuple[int, str]
"""(subscriber, channel)"""


@dataclass
class PubSubTally:
    """What the pub/sub load published, what each subscriber should have received, and what
    it did receive, lost (and why it may have), got twice or got on the wrong channel."""

    published: int = 0
    """Publishes the server acknowledged."""
    failed_publishes: int = 0
    """Publishes that failed (delivered or not: neither expected nor forbidden)."""
    received: int = 0
    """Deliveries of any kind, misdelivered and duplicated ones included."""
    expected: int = 0
    """(acknowledged message, subscriber of its channel) pairs."""
    received_due: int = 0
    """Of ``expected``: those received."""
    lost: list[tuple[int, Publish]] = field(default_factory=list)
    """(subscriber, message) pairs expected and never received."""
    lost_in_gap: list[tuple[int, Publish]] = field(default_factory=list)
    """Of ``lost``: published while that subscriber's subscription was down (between a gap
    event, widened by ``GAP_SLACK``, and the confirmation of the resubscription)."""
    gaps: int = 0
    duplicates: list[Delivery] = field(default_factory=list)
    misdelivered: list[tuple[Delivery, str]] = field(default_factory=list)
    reordered: list[tuple[Delivery, int]] = field(default_factory=list)
    """Deliveries that came after a later message of the same publisher and channel (with
    the seq seen before), in one subscription epoch."""
    confirms: dict[_Key, list[float]] = field(default_factory=dict)
    gap_times: dict[_Key, list[float]] = field(default_factory=dict)


def _in_window(
    t: float, windows: Sequence[Window], after: float, before: float = PUBSUB_WINDOW_SLACK
) -> Window | None:
    return next((w for w in windows if w.start - before <= t <= w.end + after), None)


def in_flight(record: PubSubRecord, before: float) -> float:
    """How long a message stays in flight in this run: the p99 of publish-to-delivery times
    of the messages published before ``before`` (the first fault).  A message still in flight
    when a fault cuts its subscriber's connection is lost with it, so the slacks before a gap
    and before a fault window grow by this much (on a busy machine it exceeds a second)."""
    sent = {(p.channel, p.publisher, p.seq): p.start for p in record.publishes if p.ok}
    times = sorted(
        d.at - start
        for d in record.deliveries
        if (start := sent.get((d.channel, d.publisher, d.seq))) is not None and start < before
    )
    return max(0.0, percentile(times, 0.99))


def _confirmed_after(confirms: Sequence[float], t: float) -> float:
    """The first confirmation at or after ``t`` (infinity if none)."""
    return next((c for c in confirms if c >= t), math.inf)


def pubsub_tally(record: PubSubRecord, gap_slack: float = GAP_SLACK) -> PubSubTally:
    """Account for every message of ``record`` (pure; the checkers and the report use it);
    ``gap_slack``: how long before its gap event a subscription may have been lost."""
    tally = PubSubTally()
    subscribers_of: dict[str, list[int]] = defaultdict(list)
    for subscriber, channels in record.subscriptions.items():
        for channel in channels:
            subscribers_of[channel].append(subscriber)
    confirms: dict[_Key, list[float]] = defaultdict(list)
    gap_times: dict[_Key, list[float]] = defaultdict(list)
    for event in record.events:
        if event.kind in ("subscribe", "ssubscribe"):
            for channel in event.channels:
                confirms[(event.subscriber, channel)].append(event.at)
        elif event.kind == "gap":
            tally.gaps += 1
            for channel in event.channels:
                gap_times[(event.subscriber, channel)].append(event.at)
    for times in (*confirms.values(), *gap_times.values()):
        times.sort()
    sent = {(p.channel, p.publisher, p.seq) for p in record.publishes}
    received: set[tuple[int, str, int, int]] = set()
    tally.received = len(record.deliveries)
    # Stream order per subscriber: deliveries and gap events share the position numbering.
    stream: list[tuple[int, int, Delivery | None, tuple[str, ...]]] = [
        (d.subscriber, d.pos, d, ()) for d in record.deliveries
    ]
    stream += [(e.subscriber, e.pos, None, e.channels) for e in record.events if e.kind == "gap"]
    stream.sort(key=lambda item: (item[0], item[1]))
    epoch: Counter[_Key] = Counter()
    last: dict[tuple[int, str, int], tuple[int, int]] = {}
    for subscriber, _, delivery, gap_channels in stream:
        if delivery is None:
            for channel in gap_channels:
                epoch[(subscriber, channel)] += 1
            continue
        d = delivery
        wanted = record.subscriptions.get(subscriber, ())
        kind = "smessage" if d.channel in record.sharded else "message"
        reason = None
        if d.named is None:
            reason = "not a payload any publisher sent"
        elif d.named != d.channel:
            reason = f"its payload names channel {d.named}"
        elif d.channel not in wanted:
            reason = "a channel this subscriber never subscribed to"
        elif d.kind != kind:
            reason = f"a {d.kind} where a {kind} was due"
        elif (d.channel, d.publisher, d.seq) not in sent:
            reason = f"publisher {d.publisher} never sent seq {d.seq} there"
        if reason is not None:
            tally.misdelivered.append((d, reason))
            continue
        key = (subscriber, d.channel, d.publisher, d.seq)
        if key in received:
            tally.duplicates.append(d)
            continue
        received.add(key)
        current = epoch[(subscriber, d.channel)]
        previous = last.get((subscriber, d.channel, d.publisher))
        if previous is not None and previous[0] == current and d.seq < previous[1]:
            tally.reordered.append((d, previous[1]))
        else:
            last[(subscriber, d.channel, d.publisher)] = (current, d.seq)
    for p in record.publishes:
        if not p.ok:
            tally.failed_publishes += 1
            continue
        tally.published += 1
        for subscriber in subscribers_of.get(p.channel, ()):
            first = confirms.get((subscriber, p.channel))
            if not first or p.start < first[0]:
                continue  # published before the subscription was confirmed: not due
            tally.expected += 1
            if (subscriber, p.channel, p.publisher, p.seq) in received:
                tally.received_due += 1
                continue
            tally.lost.append((subscriber, p))
            key2 = (subscriber, p.channel)
            down = [
                (g - gap_slack, _confirmed_after(confirms.get(key2, []), g))
                for g in gap_times.get(key2, [])
            ]
            if any(lo <= p.start <= hi for lo, hi in down):
                tally.lost_in_gap.append((subscriber, p))
    tally.confirms = dict(confirms)
    tally.gap_times = dict(gap_times)
    return tally


def _more(count: int) -> list[Violation]:
    return [] if count <= SHOWN else [Violation("pubsub", f"... and {count - SHOWN} more")]


def _listed(rule: str, shown: Sequence[str], total: int) -> list[Violation]:
    """One ``rule`` violation for each message of ``shown`` (the first :data:`SHOWN` of
    ``total`` findings), and a count of the rest."""
    return [Violation(rule, message) for message in shown] + _more(total)


def _msg(p: Publish) -> str:
    return f"publisher {p.publisher} seq {p.seq} on {p.channel} (published t={p.start:.3f})"


def check_pubsub_misdelivery(tally: PubSubTally) -> list[Violation]:
    """Every message arrived on the channel its payload names, one its subscriber subscribed
    to, with the right type (``smessage`` for shard channels), and was really published."""
    shown = [
        f"subscriber {d.subscriber} got {d.raw!r} as a {d.kind} on {d.channel} at "
        f"t={d.at:.3f}: {reason}"
        for d, reason in tally.misdelivered[:SHOWN]
    ]
    return _listed("pubsub-no-misdelivery", shown, len(tally.misdelivered))


def check_pubsub_duplicates(tally: PubSubTally) -> list[Violation]:
    """No subscriber received one message twice (ever, gaps or not)."""
    shown = [
        f"subscriber {d.subscriber} got publisher {d.publisher} seq {d.seq} on {d.channel} "
        f"again at t={d.at:.3f}"
        for d in tally.duplicates[:SHOWN]
    ]
    return _listed("pubsub-no-duplicate", shown, len(tally.duplicates))


def check_pubsub_order(tally: PubSubTally) -> list[Violation]:
    """Per subscriber, channel and publisher, messages arrive in the order they were published
    (within a subscription: there is no order across a gap)."""
    shown = [
        f"subscriber {d.subscriber} got publisher {d.publisher} seq {d.seq} on {d.channel} "
        f"at t={d.at:.3f}, after seq {after}"
        for d, after in tally.reordered[:SHOWN]
    ]
    return _listed("pubsub-order", shown, len(tally.reordered))


def check_pubsub_losses(
    tally: PubSubTally,
    faults: Sequence[Window],
    recovery: float,
    before: float = PUBSUB_WINDOW_SLACK,
) -> list[Violation]:
    """Every acknowledged message reached every subscriber of its channel, except messages
    published while that subscriber's subscription was down: after a gap event it was sent
    (widened by ``GAP_SLACK``) and before its resubscription was confirmed.  Such losses must
    also fall in a fault window (widened by ``PUBSUB_WINDOW_SLACK`` before it and ``recovery``
    after it).  Without faults nothing may be lost."""
    in_gap = {(s, id(p)) for s, p in tally.lost_in_gap}
    no_gap: list[tuple[int, Publish]] = []
    after_resubscribe: list[tuple[int, Publish]] = []
    outside: list[tuple[int, Publish]] = []
    for subscriber, p in tally.lost:
        if (subscriber, id(p)) not in in_gap:
            gaps = tally.gap_times.get((subscriber, p.channel), [])
            (after_resubscribe if any(g <= p.start for g in gaps) else no_gap).append(
                (subscriber, p)
            )
        elif _in_window(p.start, faults, recovery, before) is None:
            outside.append((subscriber, p))
    out = []
    if not faults and tally.lost:
        out.append(
            Violation("pubsub-no-loss", f"{len(tally.lost)} of {tally.expected} messages lost")
        )
    for name, what, found in (
        ("pubsub-gap-for-loss", "lost with no gap event for it", no_gap),
        ("pubsub-after-resubscribe", "published after the resubscription yet lost",
         after_resubscribe),
        ("pubsub-loss-in-window", "lost outside the fault window", outside),
    ):  # fmt: skip
        if not found:
            continue
        out.append(Violation(name, f"{len(found)} messages {what}"))
        out += [
            Violation(name, f"subscriber {subscriber}: {_msg(p)}")
            for subscriber, p in found[:SHOWN]
        ]
    return out


def check_pubsub_gaps(
    record: PubSubRecord,
    tally: PubSubTally,
    faults: Sequence[Window],
    recovery: float,
    before: float = PUBSUB_WINDOW_SLACK,
) -> list[Violation]:
    """Every subscription was confirmed; gaps happen only around faults (and a fault that
    should have broken subscriptions did cause at least one gap); every channel a gap lists
    is subscribed again (a new confirmation) afterwards; no stream raised an error."""
    out = []
    for subscriber, channels in sorted(record.subscriptions.items()):
        missing = [c for c in channels if not tally.confirms.get((subscriber, c))]
        if missing:
            out.append(
                Violation(
                    "pubsub-subscribed",
                    f"subscriber {subscriber}: {len(missing)} channels never confirmed "
                    f"({', '.join(missing[:3])})",
                )
            )
    gaps = [e for e in record.events if e.kind == "gap"]
    for event in gaps:
        if _in_window(event.at, faults, recovery, before) is None:
            out.append(
                Violation(
                    "pubsub-unexpected-gap",
                    f"subscriber {event.subscriber}: gap at t={event.at:.3f} with no fault "
                    f"({event.detail})",
                )
            )
        for channel in event.channels:
            again = _confirmed_after(tally.confirms.get((event.subscriber, channel), []), event.at)
            if again == math.inf:
                out.append(
                    Violation(
                        "pubsub-resubscribed",
                        f"subscriber {event.subscriber}: {channel} never confirmed again after "
                        f"the gap at t={event.at:.3f}",
                    )
                )
    if faults and not gaps:
        out.append(Violation("pubsub-gap-seen", "the fault caused no gap event"))
    errors = [e for e in record.events if e.kind == "error"]
    shown = [
        f"subscriber {e.subscriber}: the stream raised {e.detail} at t={e.at:.3f}"
        for e in errors[:SHOWN]
    ]
    return out + _listed("pubsub-stream-error", shown, len(errors))


def check_pubsub_connections(record: PubSubRecord) -> list[Violation]:
    """Every pub/sub connection is closed once the PubSubs are; the client never had more
    open than its bound, nor refused one (recovery must not trip the bound)."""
    out = []
    if record.open_after_close != 0:
        out.append(
            Violation(
                "pubsub-connections-closed",
                f"pubsub_stats() shows {record.open_after_close} connections open after every "
                "PubSub was closed",
            )
        )
    bound = int(record.stats.get("max_connections", 0))
    if bound and record.peak_connections > bound:
        out.append(
            Violation(
                "pubsub-connection-bound",
                f"{record.peak_connections} pub/sub connections open at once, bound {bound}",
            )
        )
    refused = int(record.stats.get("limit_rejections", 0))
    if refused:
        out.append(Violation("pubsub-connection-bound", f"{refused} connections refused"))
    return out


def check_pubsub(
    record: PubSubRecord, faults: Sequence[Window], recovery: float
) -> list[Violation]:
    """Every pub/sub invariant; messages were published and every subscriber received some.
    The slacks before gaps and fault windows grow by the run's own in-flight time."""
    flight = in_flight(record, min((w.start for w in faults), default=math.inf))
    tally = pubsub_tally(record, GAP_SLACK + flight)
    out = check_pubsub_misdelivery(tally)
    out += check_pubsub_duplicates(tally)
    out += check_pubsub_order(tally)
    out += check_pubsub_losses(tally, faults, recovery, PUBSUB_WINDOW_SLACK + flight)
    out += check_pubsub_gaps(record, tally, faults, recovery, PUBSUB_WINDOW_SLACK + flight)
    out += check_pubsub_connections(record)
    if not tally.published:
        out.append(Violation("pubsub-activity", "nothing was published"))
    heard = {d.subscriber for d in record.deliveries}
    silent = sorted(set(record.subscriptions) - heard)
    if tally.published and silent:
        out.append(Violation("pubsub-activity", f"subscribers {silent} received nothing"))
    return out


@dataclass
class Verdict:
    """Everything :func:`check_all` found."""

    violations: list[Violation]
    excused: list[Observation]
    """Losses the server was allowed to make (acknowledged inside a loss window)."""
    recoveries: list[Recovery]
    baseline: Baseline
    checks: dict[str, str]
    """Check code -> ``passed``, ``failed`` or ``not checked: <why>``, for every check that
    applies to the run (the codes are those of :class:`Violation`; pub/sub ones are grouped
    as ``pubsub``)."""


def _check_code(invariant: str) -> str:
    return "pubsub" if invariant.startswith("pubsub") else invariant


def check_all(record: RunRecord, bounds: Bounds) -> Verdict:
    """Run every checker that applies to ``record``."""
    baseline = run_baseline(record)
    applies: dict[str, str | None] = {}
    """Code -> None (checked) or why it could not be."""
    reads = [*record.anomalies, *record.final_reads]
    violations = check_misdelivery(reads)
    lost, excused = check_lost_writes(reads, record.loss_windows)
    violations += lost
    nothing_read = None if record.reads_checked or record.final_reads else "nothing was read"
    applies["no-misdelivered-reply"] = nothing_read
    applies["no-acknowledged-write-lost"] = nothing_read
    violations += check_pool_bounds(record.max_per_node, bounds.pool_size)
    applies["pool-bound"] = None if record.samples or record.max_per_node else "no sample"
    violations += check_unusable(record.unusable_spans, bounds.unusable)
    applies["unusable-bound"] = applies["pool-bound"]
    violations += check_blocked(record.ops, bounds.blocked)
    applies["caller-blocked-bound"] = None if record.ops else "no operation"
    load_end = record.end if record.load_end is None else record.load_end
    found = recoveries(record.ops, record.fault_windows, baseline, load_end)
    if record.fault_windows:
        violations += check_recovery(found, bounds.recovery)
        unmeasured = [r.window for r in found if not r.measured]
        applies["recovery"] = None
        if unmeasured:
            short = "baseline too short" if not baseline.measured else "load after it too short"
            applies["recovery"] = f"{short} ({', '.join(unmeasured)})"
    violations += check_leaks(record.leaked_connections)
    applies["connections-closed"] = None
    violations += check_client_counts(record.baseline_clients, record.final_clients)
    violations += check_client_counts(
        record.baseline_pubsub_clients, record.final_pubsub_clients, "pub/sub clients"
    )
    applies["server-clients-baseline"] = (
        None if record.baseline_clients else "servers' client lists need --cluster local"
    )
    if bounds.zero_failures:
        # When the run's own baseline shows the machine could not meet the client's timeouts
        # (p99 at half the read timeout or more), a timeout is the machine's, not the
        # client's: such failures are excused, and the report says the check was partial.
        # Likewise a timeout during which the event loop itself stalled for half the timeout.
        slow = baseline.ops > 0 and baseline.p99 >= bounds.read_timeout / 2
        violations += check_failures(record.ops, excuse_timeouts=slow, stalls=record.stalls,
                                     timeout=bounds.read_timeout)  # fmt: skip
        timeouts = sum(1 for op in record.ops if not op.ok and op.error in TIMEOUT_ERRORS)
        stalled = sum(1 for op in record.ops if starved(op, record.stalls, bounds.read_timeout))
        applies["no-failed-command"] = None
        if slow and timeouts:
            applies["no-failed-command"] = (
                f"{timeouts} timeouts not counted: the baseline p99 "
                f"({1000 * baseline.p99:.0f} ms) was at least half the read timeout "
                f"({bounds.read_timeout} s); other failures were checked"
            )
        elif stalled:
            applies["no-failed-command"] = (
                f"{stalled} timeouts not counted: the event loop stalled for half the read "
                "timeout while they waited; other failures were checked"
            )
    violations += check_handoffs(record.handoffs, record.maintenance, bounds.handoff_timeout)
    if bounds.handoff_timeout is not None:
        applies["handoff"] = None if record.handoffs else "no MOVING was sent"
    violations += check_relaxed(
        record.ops, record.relaxed_windows, bounds.read_timeout, record.stalls,
        bounds.longest_read_timeout or math.inf,
    )  # fmt: skip
    if record.relaxed_windows:
        applies["relaxed-timeouts"] = None
    violations += check_auth(record.auth_checks, record.maintenance)
    if record.auth_checks:
        applies["credential-rotation"] = None
    if record.pubsub is not None:
        violations += check_pubsub(record.pubsub, record.fault_windows, bounds.recovery)
        applies["pubsub"] = None
    failed = {_check_code(v.invariant) for v in violations}
    checks: dict[str, str] = {}
    for code, why in applies.items():
        if code in failed:
            checks[code] = "failed"
        else:
            checks[code] = "passed" if why is None else f"not checked: {why}"
    for code in sorted(failed - set(checks)):
        checks[code] = "failed"
    return Verdict(violations, excused, found, baseline, checks)
