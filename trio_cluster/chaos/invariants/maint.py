"""Invariants of the client's maintenance features: endpoint handoffs after MOVING, relaxed
timeouts around MIGRATING, and credential rotation (re-authentication)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..records import AuthCheck, HandoffCheck, Op, Window
from .base import SHOWN, Violation
from .data import starved

__all__ = ["check_auth", "check_handoffs", "check_relaxed"]


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
            shown = ", ".join(check.stragglers[:SHOWN])
            extra = len(check.stragglers) - SHOWN
            more = f" and {extra} more" if extra > 0 else ""
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
        inside = [op for op in ops if window.contains(op.start) and op.counted]
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
