"""Unit tests for the connection state machine (trio_cluster/conn/state.py)."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio
import trio.testing

from trio_cluster.conn.state import ALLOWED_TRANSITIONS, ConnState, ConnStateMachine
from trio_cluster.errors import InvalidTransition, StateMachineClosed

S = ConnState
ROOT = Path(__file__).resolve().parents[2]

# The table as the design states it, written out independently of the code under test.
EXPECTED_EDGES = {
    (S.CREATED, S.INITIALIZING),
    (S.INITIALIZING, S.IDLE),
    (S.IDLE, S.IN_USE),
    (S.IN_USE, S.IDLE),
    (S.IDLE, S.UNUSABLE),
    (S.IN_USE, S.UNUSABLE),
    (S.UNUSABLE, S.INITIALIZING),
    (S.UNUSABLE, S.IDLE),
} | {(s, S.CLOSED) for s in S}


def test_table_is_exactly_the_designed_edges() -> None:
    actual = {(f, t) for f, targets in ALLOWED_TRANSITIONS.items() for t in targets}
    assert actual == EXPECTED_EDGES
    assert set(ALLOWED_TRANSITIONS) == set(S)


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(S, S)))
def test_every_pair(frm: ConnState, to: ConnState) -> None:
    sm = ConnStateMachine(frm)
    if (frm, to) in EXPECTED_EDGES:
        sm.transition(to)
        assert sm.state is to
        assert ConnStateMachine(frm).try_transition((frm,), to) is True
    else:
        with pytest.raises(InvalidTransition) as info:
            sm.transition(to)
        assert info.value.from_state is frm
        assert info.value.to_state is to
        assert frm.name in str(info.value) and to.name in str(info.value)
        assert sm.state is frm  # a refused transition changes nothing
        with pytest.raises(InvalidTransition):
            sm.try_transition((frm,), to)


def test_try_transition_is_a_no_op_when_state_does_not_match() -> None:
    sm = ConnStateMachine(S.IN_USE)
    assert sm.try_transition((S.IDLE,), S.IN_USE) is False
    assert sm.state is S.IN_USE
    assert sm.try_transition((S.IDLE, S.IN_USE), S.UNUSABLE) is True
    assert sm.state is S.UNUSABLE


def test_closed_to_closed_is_an_idempotent_no_op() -> None:
    sm = ConnStateMachine(S.IDLE)
    sm.transition(S.CLOSED)
    sm.transition(S.CLOSED)
    assert sm.state is S.CLOSED


def test_default_initial_state_is_created() -> None:
    assert ConnStateMachine().state is S.CREATED


def test_fast_path_allocates_nothing() -> None:
    sm = ConnStateMachine(S.IDLE)
    idle, in_use = (S.IDLE,), (S.IN_USE,)
    for _ in range(100):  # warm up any lazily created caches
        sm.try_transition(idle, S.IN_USE)
        sm.transition(S.IDLE)
    before = sys.getallocatedblocks()
    for _ in range(10_000):
        sm.try_transition(idle, S.IN_USE)
        sm.try_transition(in_use, S.IDLE)
        sm.transition(S.IN_USE)
        sm.transition(S.IDLE)
    # A per-call allocation would show up as thousands of blocks.
    assert sys.getallocatedblocks() - before < 50


async def test_wait_returns_at_once_when_state_matches() -> None:
    sm = ConnStateMachine(S.IDLE)
    with trio.fail_after(1):
        frm = await sm.wait_and_transition([S.IDLE, S.IN_USE], S.UNUSABLE)
    assert frm is S.IDLE
    assert sm.state is S.UNUSABLE


async def test_wait_is_a_checkpoint_and_honours_prior_cancel() -> None:
    sm = ConnStateMachine(S.IDLE)
    with trio.CancelScope() as scope:
        scope.cancel()
        await sm.wait_and_transition([S.IDLE], S.IN_USE)
    assert scope.cancelled_caught
    assert sm.state is S.IDLE  # cancelled before it could transition


async def test_bad_wait_requests_fail_immediately() -> None:
    sm = ConnStateMachine(S.IN_USE)
    with pytest.raises(InvalidTransition):
        await sm.wait_and_transition([S.IDLE, S.CREATED], S.IN_USE)  # CREATED -> IN_USE
    with pytest.raises(ValueError, match="at least one"):
        await sm.wait_and_transition([], S.IN_USE)
    assert sm.waiting == 0


async def test_waiters_are_served_fifo(autojump_clock: trio.testing.MockClock) -> None:
    sm = ConnStateMachine(S.IN_USE)
    order: list[int] = []

    async def waiter(i: int) -> None:
        await sm.wait_and_transition([S.IDLE], S.IN_USE)
        order.append(i)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(waiter, i)
                await trio.testing.wait_all_tasks_blocked()  # park them in a known order
            assert sm.waiting == 5
            for served in range(1, 6):
                sm.transition(S.IDLE)  # release: hands IDLE -> IN_USE to the next waiter
                assert sm.state is S.IN_USE  # taken at once: nobody can barge in
                assert sm.waiting == 5 - served
                await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2, 3, 4]


async def test_newcomer_cannot_barge_past_a_parked_waiter() -> None:
    sm = ConnStateMachine(S.IN_USE)
    got: list[str] = []

    async def parked() -> None:
        await sm.wait_and_transition([S.IDLE], S.UNUSABLE)
        got.append("parked")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(parked)
            await trio.testing.wait_all_tasks_blocked()
            sm.transition(S.IDLE)
            # The parked waiter already owns the transition, before it even runs again.
            assert sm.state is S.UNUSABLE
            assert sm.try_transition((S.IDLE,), S.IN_USE) is False
    assert got == ["parked"]


async def test_waiters_chain_through_successive_states() -> None:
    sm = ConnStateMachine(S.IN_USE)
    seen: list[tuple[str, ConnState]] = []

    async def w(name: str, frm: ConnState, to: ConnState) -> None:
        seen.append((name, await sm.wait_and_transition([frm], to)))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            # Parked in this order: b (UNUSABLE->IDLE) first, then a (IDLE->UNUSABLE).
            nursery.start_soon(w, "b", S.UNUSABLE, S.IDLE)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(w, "a", S.IDLE, S.UNUSABLE)
            await trio.testing.wait_all_tasks_blocked()
            sm.transition(S.IDLE)  # a matches IDLE, then b matches the UNUSABLE a produced
            assert sm.state is S.IDLE
            assert sm.waiting == 0
    assert sorted(seen) == [("a", S.IDLE), ("b", S.UNUSABLE)]


async def test_only_matching_waiters_are_served() -> None:
    sm = ConnStateMachine(S.IDLE)
    done: list[str] = []

    async def w(name: str, frm: ConnState, to: ConnState) -> None:
        await sm.wait_and_transition([frm], to)
        done.append(name)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w, "needs-unusable", S.UNUSABLE, S.INITIALIZING)
            await trio.testing.wait_all_tasks_blocked()
            sm.transition(S.IN_USE)
            sm.transition(S.IDLE)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and sm.waiting == 1
            sm.transition(S.UNUSABLE)
            await trio.testing.wait_all_tasks_blocked()
            assert done == ["needs-unusable"]
            assert sm.state is S.INITIALIZING


async def test_wait_on_closed_raises_at_once() -> None:
    sm = ConnStateMachine(S.CLOSED)
    with trio.fail_after(1), pytest.raises(StateMachineClosed):
        await sm.wait_and_transition([S.IDLE], S.IN_USE)


async def test_closing_fails_every_parked_waiter() -> None:
    sm = ConnStateMachine(S.IN_USE)
    errors: list[BaseException] = []

    async def w() -> None:
        try:
            await sm.wait_and_transition([S.IDLE], S.UNUSABLE)
        except StateMachineClosed as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(w)
            await trio.testing.wait_all_tasks_blocked()
            sm.transition(S.CLOSED)
    assert len(errors) == 3
    assert sm.waiting == 0 and sm.state is S.CLOSED


async def test_waiter_whose_transition_closes_fails_the_rest() -> None:
    sm = ConnStateMachine(S.IN_USE)
    results: list[object] = []

    async def w(to: ConnState) -> None:
        try:
            results.append(await sm.wait_and_transition([S.IDLE], to))
        except StateMachineClosed:
            results.append("closed")

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w, S.CLOSED)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(w, S.UNUSABLE)
            await trio.testing.wait_all_tasks_blocked()
            sm.transition(S.IDLE)
    assert sorted(map(str, results)) == sorted([str(S.IDLE), "closed"])
    assert sm.state is S.CLOSED


async def test_cancelled_waiter_is_removed_and_never_transitions() -> None:
    sm = ConnStateMachine(S.IN_USE)
    outcome_: list[str] = []

    async def w(scope: trio.CancelScope) -> None:
        with scope:
            await sm.wait_and_transition([S.IDLE], S.UNUSABLE)
            outcome_.append("transitioned")
        if scope.cancelled_caught:
            outcome_.append("cancelled")

    scope = trio.CancelScope()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w, scope)
            await trio.testing.wait_all_tasks_blocked()
            assert sm.waiting == 1
            scope.cancel()
            assert sm.waiting == 0  # removed synchronously by the abort
            sm.transition(S.IDLE)  # must not be handed to the cancelled waiter
            assert sm.state is S.IDLE
    assert outcome_ == ["cancelled"]


async def test_waiter_served_before_cancel_keeps_its_transition() -> None:
    sm = ConnStateMachine(S.IN_USE)
    outcome_: list[str] = []

    async def w(scope: trio.CancelScope) -> None:
        with scope:
            await sm.wait_and_transition([S.IDLE], S.UNUSABLE)
            outcome_.append("transitioned")
            await trio.lowlevel.checkpoint()  # the cancel lands here, after the transition
            outcome_.append("not reached")

    scope = trio.CancelScope()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w, scope)
            await trio.testing.wait_all_tasks_blocked()
            sm.transition(S.IDLE)  # served now ...
            scope.cancel()  # ... and cancelled before it runs again
    assert outcome_ == ["transitioned"]
    assert sm.state is S.UNUSABLE


async def test_go_redis_4027_release_wakes_a_worker_waiting_for_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """go-redis #4027: a re-auth worker waits for IDLE -> UNUSABLE while the connection is in
    use; the normal release (IN_USE -> IDLE) must wake it at once, not after its timeout."""
    sm = ConnStateMachine(S.IN_USE)
    pool_timeout = 5.0
    woke_at: list[float] = []

    async def reauth_worker() -> None:
        with trio.fail_after(pool_timeout):
            await sm.wait_and_transition([S.IDLE], S.UNUSABLE)
        woke_at.append(trio.current_time())
        sm.transition(S.IDLE)  # re-auth done

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reauth_worker)
        await trio.sleep(1.0)  # the command runs for a while
        released_at = trio.current_time()
        sm.transition(S.IDLE)  # the ordinary release path
        # The worker owns the connection now; the pool cannot hand it out.
        assert sm.state is S.UNUSABLE
        assert sm.try_transition((S.IDLE,), S.IN_USE) is False
    assert woke_at == [released_at]
    assert sm.state is S.IDLE


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_state_diagram", ROOT / "scripts" / "gen_state_diagram.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_diagram_matches_the_table() -> None:
    gen = _load_generator()
    doc = (ROOT / "docs" / "state-machine.md").read_text(encoding="utf-8")
    assert gen.render_mermaid() in doc
    assert gen.splice(doc, gen.render_mermaid()) == doc
    # Every edge of the table is in the diagram, and nothing else is.
    arrows = {
        tuple(line.strip().split(" --> "))
        for line in gen.render_mermaid().splitlines()
        if " --> " in line and "[*]" not in line
    }
    assert arrows == {(f.name, t.name) for f, t in EXPECTED_EDGES}
