"""Ctrl-C anywhere in a ClusterClient's command ends in a plain KeyboardInterrupt.

The app of ``tests/integration/test_api_boundary.py`` (a fan-out ``dbsize()``, which starts a
task per node in a short-lived nursery, then a keyed ``get()``), interrupted deterministically
where trio's default Ctrl-C delivery could interrupt it (``trio_cluster.testing.ctrl_c``):

- at every such line of trio's core and of the library's nursery helpers, where a
  KeyboardInterrupt once left trio's bookkeeping half-updated (``TrioInternalError``, a hang,
  "Nursery stack corrupted");
- at every 25th of all such lines, the rest of the command path.

Each case is a fresh client in a fresh ``trio.run`` (in a thread of its own, so a hang is
reported).  ``scripts/ctrl_c_points.py`` runs every point; ``scripts/ctrl_c_fuzz.py`` sends
real SIGINTs at random moments.
"""

from __future__ import annotations

from types import FrameType

import pytest

from trio_cluster import ClusterClient
from trio_cluster.testing import LocalCluster
from trio_cluster.testing.ctrl_c import CtrlCProbe, Outcome, each_point

#: A case still running after this long is "hung" (a case takes about 0.1 s).
HANG_AFTER = 20.0


def _in_nursery_machinery(frame: FrameType) -> bool:
    name = frame.f_code.co_filename
    return "trio/_core/" in name or name.endswith(("trio_cluster/lifetime.py", "contextlib.py"))


@pytest.mark.parametrize(
    ("where", "step", "at_least"),
    [(_in_nursery_machinery, 1, 10), (None, 25, 40)],
    ids=["every-point-in-nursery-machinery", "every-25th-point"],
)
def test_ctrl_c_during_fan_out_and_get_is_a_plain_keyboard_interrupt(
    local_cluster: LocalCluster, where: object, step: int, at_least: int
) -> None:
    host, port = local_cluster.startup_nodes[0]

    async def program(probe: CtrlCProbe) -> None:
        async with ClusterClient(host=host, port=port) as rc:
            await rc.dbsize()  # connections made, slot map known: the path below is stable
            await rc.get("tb:ctrl-c")
            with probe:
                await rc.dbsize()
                await rc.get("tb:ctrl-c")

    outcomes: list[Outcome] = []
    for outcome in each_point(program, step=step, timeout=HANG_AFTER, where=where):  # type: ignore[arg-type]
        outcomes.append(outcome)
        assert outcome.ending == "KeyboardInterrupt", (
            f"Ctrl-C at {outcome.where} (point {outcome.at}): {outcome.ending}\n{outcome.detail}"
        )
        text = outcome.detail
        assert "Exception Group Traceback" not in text and "ExceptionGroup:" not in text, text
    assert len(outcomes) >= at_least, f"only {len(outcomes)} points were interrupted"
