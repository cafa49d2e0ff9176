"""Invariants on what callers saw and what the client held: replies reached the right caller,
acknowledged writes stayed, pools kept their bounds, nothing stayed UNUSABLE or blocked a caller
too long, everything was closed, and (when the fault must be hidden) nothing failed."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from ..address import Address
from ..records import Observation, Op, Window
from .base import Violation

__all__ = [
    "TIMEOUT_ERRORS",
    "check_blocked",
    "check_client_counts",
    "check_failures",
    "check_leaks",
    "check_lost_writes",
    "check_misdelivery",
    "check_pool_bounds",
    "check_unusable",
    "starved",
]


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


def check_pool_bounds(max_per_node: dict[tuple[int, Address], int], limit: int) -> list[Violation]:
    """No client ever held more connections to one node than its pool allows (``max_per_node``:
    (client, node) -> most connections seen open at once)."""
    return [
        Violation(
            "pool-bound",
            f"client {client} to {node}: {count} connections open at once, bound {limit}",
        )
        for (client, node), count in sorted(max_per_node.items())
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
        if op.failed
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
