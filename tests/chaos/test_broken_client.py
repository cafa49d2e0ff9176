"""One scenario against a real cluster, with a correct client and with deliberately broken ones:
the invariants catch the broken behaviour end to end."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from chaos.env import Environment
from chaos.runner import ScenarioResult, run_scenario
from chaos.scenarios import Scenario
from chaos.workload import Workload
from faults import EmbeddedToxiproxy
from faults.nodes import NodeProxies
from trio_cluster import ClusterClient
from trio_cluster.testing import LocalCluster

SCENARIO = Scenario(
    "tiny",
    "basic",
    "four workers for one second",
    Workload(workers=4, think=(0.0, 0.002), keys_per_worker=2),
    duration=1.0,
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


async def _run(env: _Env, client_class: type[ClusterClient]) -> ScenarioResult:
    env.client_class = client_class
    with trio.fail_after(30):
        return await run_scenario(env, SCENARIO, seed=3, progress=None)


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
