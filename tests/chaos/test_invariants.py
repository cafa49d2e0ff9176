"""Each invariant checker fails on a synthetic record that breaks it, and passes otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from trio_cluster.chaos.address import Address
from trio_cluster.chaos.invariants import (
    CANCELLED,
    Bounds,
    baseline_of,
    blast_radii,
    check_all,
    check_auth,
    check_blast_radius,
    check_blocked,
    check_client_counts,
    check_failures,
    check_handoffs,
    check_leaks,
    check_lost_writes,
    check_misdelivery,
    check_pool_bounds,
    check_recovery,
    check_relaxed,
    check_unusable,
    recoveries,
    run_baseline,
    steadiness,
)
from trio_cluster.chaos.records import (
    AuthCheck,
    HandoffCheck,
    Observation,
    Op,
    RunRecord,
    Window,
    decode_value,
    encode_value,
)

N1, E2 = Address("127.0.0.1", 7000), Address("127.0.0.1", 2)


def obs(got_key: str | None, got: int, lo: int, hi: int, acked_at: float = 1.0) -> Observation:
    return Observation("k", 2.0, got_key, got, lo, hi, acked_at)


def test_values_name_key_and_version() -> None:
    assert decode_value(encode_value("a:1", 7, pad=5).encode()) == ("a:1", 7)
    assert decode_value(b"OK") is None
    assert decode_value(None) is None


def test_misdelivery_detected() -> None:
    assert check_misdelivery([obs("k", 3, 2, 4)]) == []
    assert check_misdelivery([obs("other", 3, 2, 4)])  # another key's value
    assert check_misdelivery([obs(None, -1, 2, 4)])  # not a value at all (e.g. "OK")
    assert check_misdelivery([obs("k", 9, 2, 4)])  # a version never written


def test_lost_write_detected_and_excused_only_in_window() -> None:
    assert check_lost_writes([obs("k", 2, 2, 3)], []) == ([], [])
    violations, excused = check_lost_writes([obs("k", 1, 2, 3, acked_at=5.0)], [])
    assert violations and not excused
    violations, _ = check_lost_writes([obs("k", -1, 2, 3)], [])  # the key vanished
    assert violations
    window = Window("failover", 4.0, 6.0)
    violations, excused = check_lost_writes([obs("k", 1, 2, 3, acked_at=5.0)], [window])
    assert not violations and len(excused) == 1
    violations, _ = check_lost_writes([obs("k", 1, 2, 3, acked_at=7.0)], [window])
    assert violations


def test_pool_bound() -> None:
    node = Address("127.0.0.1", 7000)
    assert check_pool_bounds({(0, node): 8}, 8) == []
    (found,) = check_pool_bounds({(0, node): 9}, 8)
    assert "client 0 to 127.0.0.1:7000: 9 connections" in found.message


def test_unusable_bound() -> None:
    assert check_unusable({1: 0.4}, 1.0) == []
    assert check_unusable({1: 1.5}, 1.0)


def test_blocked_bound() -> None:
    assert check_blocked([Op(0, "get", 0.0, 1.0, True)], 2.0) == []
    assert check_blocked([Op(0, "get", 0.0, 3.0, False, "ReadTimeoutError")], 2.0)


def _even(start: float, end: float, rate: float, ok: bool = True) -> list[Op]:
    """Operations started at ``rate`` per second over ``[start, end)``, 1 ms each."""
    n = round((end - start) * rate)
    return [Op(0, "set", start + i / rate, start + i / rate + 0.001, ok, None if ok else "X")
            for i in range(n)]  # fmt: skip


def test_baseline() -> None:
    ops = [*_even(0.0, 1.0, 100), *_even(1.0, 2.0, 100, ok=False)]
    base = baseline_of(ops, 0.0, 1.0)
    assert base.measured and 95 < base.throughput < 105 and base.success == 1.0
    record = RunRecord(start=0.0, end=2.0, ops=ops, fault_windows=[Window("f", 1.0, 1.5)])
    assert run_baseline(record) == base  # before the first fault
    assert not baseline_of(ops, 0.0, 0.1).measured  # too short to compare against


def test_recovery_is_throughput_and_success_back_to_the_baseline() -> None:
    window = [Window("fault", 1.0, 2.0)]
    before = _even(0.0, 1.0, 100)
    base = baseline_of(before, 0.0, 1.0)
    # An outage: the few operations that run all succeed, but throughput is 3 % of baseline.
    outage = [*before, *_even(2.0, 2.5, 3), *_even(2.5, 10.0, 100)]
    found = recoveries(outage, window, base, 10.0)
    assert 0.25 < (found[0].seconds or 0) < 0.55
    assert check_recovery(found, 1.0) == []
    assert check_recovery(found, 0.2)
    # Failures at full throughput: not recovered until the success rate is back.
    failing = [*before, *_even(2.0, 2.5, 100, ok=False), *_even(2.5, 10.0, 100)]
    assert 0.25 < (recoveries(failing, window, base, 10.0)[0].seconds or 0) < 0.55
    never = recoveries([*before, *_even(2.0, 10.0, 3)], window, base, 10.0)
    assert never[0].seconds is None and never[0].measured
    assert "never returned" in check_recovery(never, 5.0)[0].message
    cancelled = [Op(0, "get", 3.0, 3.01, False, CANCELLED), *before, *_even(2.0, 10.0, 100)]
    assert recoveries(cancelled, window, base, 10.0)[0].seconds == 0.0
    # Not enough load after the fault, or no baseline: not measured, not a violation.
    short = recoveries(outage, window, base, 2.5)
    assert not short[0].measured and check_recovery(short, 1.0) == []
    no_base = recoveries(outage, window, baseline_of([], 0.0, 1.0), 10.0)
    assert not no_base[0].measured


def test_leaks_and_client_counts() -> None:
    assert check_leaks([]) == []
    assert check_leaks(["client 0 connection 3 to n1 in IDLE"])
    assert check_client_counts({7000: 1}, {7000: 1}) == []
    assert check_client_counts({7000: 1}, {7000: 3})


def test_check_all_on_a_clean_and_a_broken_record() -> None:
    bounds = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0)
    record = RunRecord(start=0.0, end=10.0, ops=_even(0.0, 10.0, 100))
    assert check_all(record, bounds).violations == []
    record.max_per_node = {(0, N1): 5}
    record.final_reads = [Observation("k", 9.0, "k", 1, 2, 2, 3.0, final=True)]
    names = {v.invariant for v in check_all(record, bounds).violations}
    assert names == {"pool-bound", "no-acknowledged-write-lost"}


def test_zero_failures_only_when_asked() -> None:
    ops = [Op(0, "set", 1.0, 1.1, True), Op(1, "get", 2.0, 2.5, False, "ReadTimeoutError")]
    assert check_failures(ops[:1]) == []
    assert check_failures([Op(0, "get", 1.0, 1.1, False, CANCELLED)]) == []
    found = check_failures(ops)
    assert found and all(v.invariant == "no-failed-command" for v in found)
    assert "ReadTimeoutError=1" in found[0].message
    record = RunRecord(start=0.0, end=10.0, ops=[*_even(0.0, 10.0, 100), ops[1]])
    lenient = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0)
    strict = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0, zero_failures=True)
    assert check_all(record, lenient).violations == []
    assert {v.invariant for v in check_all(record, strict).violations} == {"no-failed-command"}


def _maint(**stats: float) -> dict[str, dict[str, Any]]:
    base: dict[str, Any] = {"handoffs": 0, "handoff_failures": 0, "longest_unusable": 0.0,
                            "reauths": 0, "reauth_failures": 0}  # fmt: skip
    return {"client0": {**base, **stats}, "client1": dict(base)}


def test_handoffs() -> None:
    moved = HandoffCheck(N1, E2, 12, [])
    good = _maint(handoffs=12, longest_unusable=0.05)
    assert check_handoffs([], {}, 5.0) == []  # no MOVING: nothing to check
    assert check_handoffs([moved], good, 5.0) == []
    late = HandoffCheck(N1, E2, 12, ["#3 on 127.0.0.1:1"], when="end of load")
    assert "end of load: 1 of 12" in check_handoffs([late], good, 5.0)[0].message
    assert check_handoffs([HandoffCheck(N1, E2, 0, [])], good, 5.0)  # nothing was moved
    assert check_handoffs([moved], _maint(), 5.0)  # the client never handed off
    assert check_handoffs([moved], _maint(handoffs=11, handoff_failures=1), 5.0)
    slow = check_handoffs([moved], _maint(handoffs=12, longest_unusable=5.2), 5.0)
    assert len(slow) == 1 and "UNUSABLE 5.200 s" in slow[0].message


def test_relaxed_windows() -> None:
    window = Window("MIGRATING n1", 1.0, 3.0)
    slow_ok = Op(0, "get", 1.5, 2.5, True)
    assert check_relaxed([], [], 0.5) == []
    assert check_relaxed([slow_ok, Op(1, "set", 1.1, 1.2, True)], [window], 0.5) == []
    timed_out = Op(2, "get", 2.0, 2.5, False, "ReadTimeoutError")
    found = check_relaxed([slow_ok, timed_out], [window], 0.5)
    assert len(found) == 1 and "ReadTimeoutError=1" in found[0].message
    # Failures outside the window are not this checker's business.
    assert check_relaxed([slow_ok, Op(2, "get", 3.5, 4.0, False, "X")], [window], 0.5) == []
    # Nothing slower than the read timeout: the window proved nothing.
    fast = check_relaxed([Op(0, "get", 1.5, 1.6, True)], [window], 0.5)
    assert len(fast) == 1 and "not exercised" in fast[0].message


def test_auth_checks() -> None:
    good = AuthCheck(N1, "b", ["b", "b"], 0.05)
    done = _maint(reauths=8)
    assert check_auth([], {}) == []
    assert check_auth([good], done) == []
    mixed = check_auth([AuthCheck(N1, "b", ["b", "a", "a"], 0.05)], done)
    assert len(mixed) == 1 and "2 of 3" in mixed[0].message and "a x2" in mixed[0].message
    assert check_auth([AuthCheck(N1, "b", [], 0.05)], done)  # no connection to look at
    assert check_auth([AuthCheck(N1, "b", ["b"], None)], done)  # stale at the deadline
    assert check_auth([good], _maint())  # nothing re-authenticated
    assert check_auth([good], _maint(reauths=8, reauth_failures=1))


def test_check_all_runs_the_maintenance_checkers() -> None:
    bounds = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0, handoff_timeout=5.0)
    record = RunRecord(start=0.0, end=10.0, ops=_even(0.0, 10.0, 100))
    record.handoffs = [HandoffCheck(N1, E2, 4, ["#1"])]
    record.relaxed_windows = [Window("MIGRATING", 4.0, 5.0)]
    record.auth_checks = [AuthCheck(N1, "b", ["a"], 0.1)]
    record.maintenance = _maint(handoffs=4, reauths=4)
    names = {v.invariant for v in check_all(record, bounds).violations}
    assert names == {"handoff", "relaxed-timeouts", "credential-rotation"}


def test_timeouts_excused_only_when_the_baseline_shows_a_machine_too_slow() -> None:
    strict = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0, zero_failures=True,
                    read_timeout=0.5)  # fmt: skip
    timeout = Op(1, "get", 5.0, 5.5, False, "ReadTimeoutError")
    fast = _even(0.0, 10.0, 100)  # 1 ms each: the machine meets the 0.5 s read timeout
    verdict = check_all(RunRecord(start=0.0, end=10.0, ops=[*fast, timeout]), strict)
    assert {v.invariant for v in verdict.violations} == {"no-failed-command"}
    slow = [Op(0, "set", i / 100, i / 100 + 0.3, True) for i in range(1000)]  # p99 300 ms
    verdict = check_all(RunRecord(start=0.0, end=10.0, ops=[*slow, timeout]), strict)
    assert verdict.violations == []
    assert verdict.checks["no-failed-command"].startswith("not checked: 1 timeouts")
    other = Op(2, "set", 6.0, 6.1, False, "ConnectionError")
    verdict = check_all(RunRecord(start=0.0, end=10.0, ops=[*slow, timeout, other]), strict)
    assert "ConnectionError=1" in verdict.violations[0].message
    assert verdict.checks["no-failed-command"] == "failed"


def test_timeouts_during_an_event_loop_stall_are_the_machines() -> None:
    strict = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0, zero_failures=True,
                    read_timeout=0.5)  # fmt: skip
    timeout = Op(1, "get", 5.0, 5.5, False, "ReadTimeoutError")
    record = RunRecord(start=0.0, end=10.0, ops=[*_even(0.0, 10.0, 100), timeout])
    assert check_all(record, strict).violations  # no stall: the client's timeout
    record.stalls = [Window("event loop stalled", 5.1, 5.2)]  # 0.1 s: not enough
    assert check_all(record, strict).violations
    record.stalls = [Window("event loop stalled", 5.1, 5.45)]  # 0.35 s of the 0.5 s
    verdict = check_all(record, strict)
    assert verdict.violations == []
    assert "event loop stalled" in verdict.checks["no-failed-command"]
    # Any other failure still fails the check.
    record.ops.append(Op(2, "set", 5.2, 5.3, False, "ConnectionError"))
    assert check_all(record, strict).violations


def _keyed(
    start: float, end: float, rate: float, slots: tuple[int, ...], ok: bool = True
) -> list[Op]:
    """Operations on ``slots`` started at ``rate`` per second over ``[start, end)``."""
    n = round((end - start) * rate)
    return [Op(0, "get", start + i / rate, start + i / rate + 0.001, ok, None if ok else "X",
               slots) for i in range(n)]  # fmt: skip


def test_blast_radius_compares_the_healthy_slots_with_the_baseline() -> None:
    sick, well = (7,), (9,)
    fault = Window("hang", 1.0, 6.0, (N1,), slots=frozenset(sick))
    before = [*_keyed(0.0, 1.0, 100, well), *_keyed(0.0, 1.0, 50, sick)]  # healthy share 2/3
    base = baseline_of(before, 0.0, 1.0)
    # The healthy part keeps its pace while the sick node's slots fail: the bound holds.
    kept = [*before, *_keyed(1.0, 6.0, 100, well), *_keyed(1.0, 6.0, 50, sick, ok=False)]
    (b,) = blast_radii(kept, [fault], base, held=1.0)
    assert b.healthy_share == pytest.approx(2 / 3, abs=0.02)
    assert b.ratio == pytest.approx(b.healthy_share, abs=0.03)
    assert b.bound == pytest.approx(b.healthy_share * (1 - 1.0 / 5.0) * b.steadiness)
    assert 0.9 < b.steadiness <= 1.0 and check_blast_radius([b]) == []
    # Every task stuck on the sick node: the healthy part collapses too.
    stalled = [*before, *_keyed(1.0, 6.0, 3, well)]
    (b,) = blast_radii(stalled, [fault], base, held=1.0)
    (violation,) = check_blast_radius([b])
    assert b.ratio < 0.05 and "hang on 127.0.0.1:7000" in violation.message
    # A pipeline that touched the sick slot counts as faulted, not healthy.
    mixed = [*before, *_keyed(1.0, 6.0, 100, (7, 9))]
    assert blast_radii(mixed, [fault], base, held=1.0)[0].healthy_ok_per_s == 0
    # Not checked: a fault no longer than a task may be held, or no baseline to compare with.
    short = Window("failover", 1.0, 1.5, (N1,), slots=frozenset(sick))
    assert blast_radii(stalled, [short], base, held=1.0)[0].unchecked is not None
    empty = baseline_of([], 0.0, 1.0)
    assert blast_radii(stalled, [fault], empty, held=1.0)[0].unchecked == "baseline too short"
    # Only faults on a single node have a blast radius.
    everywhere = Window("reset-storm", 1.0, 6.0, everywhere=True)
    assert blast_radii(stalled, [everywhere], base, held=1.0) == []


def test_check_all_lists_the_blast_radius_only_for_single_node_faults() -> None:
    bounds = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0, held=1.0)
    ops = [*_keyed(0.0, 1.0, 100, (9,)), *_keyed(1.0, 10.0, 3, (9,))]
    fault = Window("hang", 1.0, 6.0, (N1,), slots=frozenset({7}))
    verdict = check_all(RunRecord(start=0.0, end=10.0, ops=ops, fault_windows=[fault]), bounds)
    assert verdict.checks["blast-radius"] == "failed" and len(verdict.blast) == 1
    verdict = check_all(RunRecord(start=0.0, end=10.0, ops=ops), bounds)
    assert "blast-radius" not in verdict.checks and verdict.blast == []


def test_steadiness_is_the_slowest_part_of_the_baseline() -> None:
    even = _keyed(0.0, 1.0, 100, (1,))
    assert steadiness(even, 0.0, 1.0) == pytest.approx(1.0)
    lumpy = [*_keyed(0.0, 0.75, 100, (1,)), *_keyed(0.75, 1.0, 40, (1,))]
    assert steadiness(lumpy, 0.0, 1.0) == pytest.approx(10 / 21.25, abs=0.02)
    assert steadiness([], 0.0, 1.0) == 0.0
