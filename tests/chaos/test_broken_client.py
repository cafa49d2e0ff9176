"""One scenario against a real cluster, with a correct client and with deliberately broken ones:
the invariants catch the broken behaviour end to end."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.exceptions as rex
import trio

from trio_cluster import ClusterClient
from trio_cluster.chaos import faultlib
from trio_cluster.chaos.clientspec import ClientSpec
from trio_cluster.chaos.env import Environment
from trio_cluster.chaos.runner import ScenarioResult, run_scenario
from trio_cluster.chaos.scenarios import Scenario
from trio_cluster.chaos.workload import Workload
from trio_cluster.faults import EmbeddedToxiproxy
from trio_cluster.faults.nodes import NodeProxies
from trio_cluster.testing import LocalCluster

SCENARIO = Scenario(
    "tiny",
    "basic",
    "four workers for one second",
    Workload(workers=4, think=(0.0, 0.002), keys_per_worker=2),
    duration=1.0,
)
#: A primary hangs for 5 s under single-key GET/SET.  The workers think long enough that the
#: load, not the CPU, sets the rate: beside CPU-bound processes a CPU-bound rate wanders by a
#: third between the baseline and the fault, which no bound derived from the baseline sees.
HANG = Scenario(
    "hang",
    "faults",
    "a primary swallows all data for 5 s",
    Workload(workers=16, mix=(("get", 0.5), ("set", 0.5)), think=(0.01, 0.03)),
    ClientSpec(),
    faults=(("node-hang", faultlib.node_hang),),
    hold=5.0,
    tail=1.5,
)


class MisdeliveringClient(ClusterClient):
    """Every 7th GET answers with another key's value (a reply for the wrong caller)."""

    _calls = itertools.count()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] == "GET" and next(self._calls) % 7 == 6:
            *head, _, _ = str(args[1]).split(":")
            args = ("GET", ":".join([*head, "0", "0"]))
        return await super().execute_command(*args, **options)


class ForgetfulClient(ClusterClient):
    """Every 5th SET is acknowledged without being sent (an acknowledged write lost)."""

    _calls = itertools.count()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if args[0] == "SET" and next(self._calls) % 5 == 4:
            return True
        return await super().execute_command(*args, **options)


class WaitingClient(ClusterClient):
    """Broken: a caller retries a failed command until its node answers, so every task ends
    up waiting on the hung node, however fast the client itself refuses it."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        while True:
            try:
                return await super().execute_command(*args, **options)
            except (rex.ConnectionError, rex.TimeoutError):
                await trio.sleep(0.01)


class _Env(Environment):
    client_class: type[ClusterClient] = ClusterClient

    def client(self, **options: Any) -> ClusterClient:
        return self.client_class(
            startup_nodes=self.startup_nodes, address_remap=self.proxies.remap, **options
        )


@pytest.fixture
async def env(local_cluster: LocalCluster) -> AsyncIterator[_Env]:
    async with (
        EmbeddedToxiproxy() as tp,
        NodeProxies.create(tp, local_cluster.startup_nodes, prefix="chaos-test") as proxies,
    ):
        yield _Env(proxies, local_cluster.startup_nodes, "test", local_cluster)


async def _run(
    env: _Env, client_class: type[ClusterClient], scenario: Scenario = SCENARIO
) -> ScenarioResult:
    env.client_class = client_class
    with trio.fail_after(40):
        return await run_scenario(env, scenario, seed=3, progress=None)


async def test_correct_client_passes(env: _Env) -> None:
    result = await _run(env, ClusterClient)
    assert result.violations == []
    assert len(result.record.ops) > 100
    assert result.record.final_clients == result.record.baseline_clients


async def test_misdelivery_is_caught(env: _Env) -> None:
    result = await _run(env, MisdeliveringClient)
    assert "no-misdelivered-reply" in {v.invariant for v in result.violations}


async def test_lost_write_is_caught(env: _Env) -> None:
    result = await _run(env, ForgetfulClient)
    assert "no-acknowledged-write-lost" in {v.invariant for v in result.violations}


async def test_the_client_keeps_the_blast_radius_of_a_hung_node(env: _Env) -> None:
    result = await _run(env, ClusterClient, HANG)
    assert result.checks["blast-radius"] == "passed", result.violations
    assert result.checks["recovery"] == "passed", result.violations
    (blast,) = result.blast
    assert blast.unchecked is None and blast.ratio >= blast.bound > 0


async def test_a_client_that_waits_on_a_hung_node_fails_the_blast_radius(env: _Env) -> None:
    result = await _run(env, WaitingClient, HANG)
    assert result.checks["blast-radius"] == "failed"
    (blast,) = result.blast
    assert blast.ratio < blast.bound
