"""Unit tests for the connection state machine (trio_cluster/conn/state.py): the table, its
derived forms, the one funnel, and the generated doc."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path
from types import ModuleType

import pytest

from trio_cluster.conn.state import ALLOWED_TRANSITIONS, HOLDER, MOVES, ConnState, ConnStateMachine
from trio_cluster.errors import InvalidTransition

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


def test_every_move_is_described_and_every_state_has_a_holder() -> None:
    assert {(m.frm, m.to) for m in MOVES} == EXPECTED_EDGES
    assert all(m.by and m.when for m in MOVES)
    assert len({(m.frm, m.to, m.by) for m in MOVES}) == len(MOVES)  # no move listed twice
    assert set(HOLDER) == set(S) and all(HOLDER.values())


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(S, S)))
def test_every_pair(frm: ConnState, to: ConnState) -> None:
    sm = ConnStateMachine(frm)
    if (frm, to) in EXPECTED_EDGES:
        sm.transition(to)
        assert sm.state is to
    else:
        with pytest.raises(InvalidTransition) as info:
            sm.transition(to)
        assert info.value.from_state is frm
        assert info.value.to_state is to
        assert frm.name in str(info.value) and to.name in str(info.value)
        assert sm.state is frm  # a refused transition changes nothing


def test_closed_to_closed_is_an_idempotent_no_op() -> None:
    sm = ConnStateMachine(S.IDLE)
    sm.transition(S.CLOSED)
    sm.transition(S.CLOSED)
    assert sm.state is S.CLOSED


def test_default_initial_state_is_created() -> None:
    assert ConnStateMachine().state is S.CREATED
    assert repr(ConnStateMachine(S.IDLE)) == "<ConnStateMachine IDLE>"


def test_transition_allocates_nothing() -> None:
    sm = ConnStateMachine(S.IDLE)
    for _ in range(100):  # warm up any lazily created caches
        sm.transition(S.IN_USE)
        sm.transition(S.IDLE)
    before = sys.getallocatedblocks()
    for _ in range(10_000):
        sm.transition(S.IN_USE)
        sm.transition(S.IDLE)
    # A per-call allocation would show up as thousands of blocks.
    assert sys.getallocatedblocks() - before < 50


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_state_diagram", ROOT / "scripts" / "gen_state_diagram.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_block_matches_the_table() -> None:
    gen = _load_generator()
    doc = (ROOT / "docs" / "state-machine.md").read_text(encoding="utf-8")
    block = gen.render()
    assert block in doc
    assert gen.splice(doc, block) == doc
    # Every move of the table is drawn, and nothing else is.
    arrows = [
        tuple(line.strip().split(" : ")[0].split(" --> "))
        for line in block.splitlines()
        if " --> " in line and "[*]" not in line
    ]
    assert sorted(arrows) == sorted((m.frm.name, m.to.name) for m in MOVES)
    for move in MOVES:
        assert f"    {move.frm.name} --> {move.to.name} : {move.when}" in block
    for state in S:
        assert f"| `{state.name}` | {HOLDER[state]} |" in block
