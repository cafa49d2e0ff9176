"""Each invariant checker fails on a synthetic record that breaks it, and passes otherwise."""

from __future__ import annotations

from chaos.invariants import (
    CANCELLED,
    Bounds,
    check_all,
    check_blocked,
    check_client_counts,
    check_leaks,
    check_lost_writes,
    check_misdelivery,
    check_pool_bounds,
    check_recovery,
    check_unusable,
    recoveries,
)
from chaos.records import Observation, Op, RunRecord, Window, decode_value, encode_value


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
    assert check_pool_bounds({"c0/n1": 8}, 8) == []
    assert check_pool_bounds({"c0/n1": 9}, 8)


def test_unusable_bound() -> None:
    assert check_unusable({1: 0.4}, 1.0) == []
    assert check_unusable({1: 1.5}, 1.0)


def test_blocked_bound() -> None:
    assert check_blocked([Op(0, "get", 0.0, 1.0, True)], 2.0) == []
    assert check_blocked([Op(0, "get", 0.0, 3.0, False, "ReadTimeoutError")], 2.0)


def _ops(fail_until: float, end: float = 10.0, step: float = 0.01) -> list[Op]:
    ops, t = [], 0.0
    while t < end:
        ops.append(Op(0, "set", t, t + 0.001, t >= fail_until, None if t >= fail_until else "X"))
        t += step
    return ops


def test_recovery() -> None:
    window = [Window("fault", 1.0, 2.0)]
    found = recoveries(_ops(fail_until=2.5), window, 0.999, 10.0)
    assert 0.45 < (found[0].seconds or 0) < 0.55
    assert check_recovery(found, 1.0) == []
    assert check_recovery(found, 0.2)
    never = recoveries(_ops(fail_until=11.0), window, 0.999, 10.0)
    assert never[0].seconds is None and check_recovery(never, 5.0)
    cancelled = [Op(0, "get", 3.0, 3.01, False, CANCELLED), *_ops(fail_until=0.0)]
    assert recoveries(cancelled, window, 0.999, 10.0)[0].seconds == 0.0


def test_leaks_and_client_counts() -> None:
    assert check_leaks([]) == []
    assert check_leaks(["client 0 connection 3 to n1 in IDLE"])
    assert check_client_counts({7000: 1}, {7000: 1}) == []
    assert check_client_counts({7000: 1}, {7000: 3})


def test_check_all_on_a_clean_and_a_broken_record() -> None:
    bounds = Bounds(pool_size=4, unusable=1.0, blocked=5.0, recovery=2.0)
    record = RunRecord(start=0.0, end=10.0, ops=_ops(fail_until=0.0))
    assert check_all(record, bounds)[0] == []
    record.max_per_node = {"client0/n": 5}
    record.final_reads = [Observation("k", 9.0, "k", 1, 2, 2, 3.0, final=True)]
    names = {v.invariant for v in check_all(record, bounds)[0]}
    assert names == {"pool-bound", "no-acknowledged-write-lost"}
