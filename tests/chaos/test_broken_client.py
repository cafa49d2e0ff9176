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
#: A primary hangs for 5 s under single-key GET/SET (what the isolating wrapper below covers).
HANG = Scenario(
    "hang",
    "faults",
    "a primary swallows all data for 5 s",
    Workload(workers=16, mix=(("get", 0.5), ("set", 0.5)), think=(0.001, 0.004)),
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


class IsolatingClient(ClusterClient):
    """What issue 23 asks of the client, sketched as a wrapper over single-key commands: no
    command waits on a node longer than the read timeout; a node that timed out (or refused)
    is isolated for a second, its commands failing at once; then one probe at a time gets
    through, and a success readmits it.  Not a fix: the yardstick that shows the blast-radius
    bound can be met."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self._read_timeout = float(options["read_timeout"])
        self._sick_until: dict[str, float] = {}
        self._probing: set[str] = set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        node = self.get_node_from_key(args[1]) if len(args) > 1 else None
        if node is None:
            return await super().execute_command(*args, **options)
        name = node.name
        sick = name in self._sick_until
        if sick and (trio.current_time() < self._sick_until[name] or name in self._probing):
            raise rex.ConnectionError(f"{name} is isolated")
        if sick:
            self._probing.add(name)
        try:
            with trio.fail_after(self._read_timeout):
                reply = await super().execute_command(*args, **options)
        except (trio.TooSlowError, rex.ConnectionError, rex.TimeoutError) as exc:
            self._sick_until[name] = trio.current_time() + 1.0
            raise rex.ConnectionError(f"{name} isolated after {type(exc).__name__}") from exc
        finally:
            self._probing.discard(name)
        self._sick_until.pop(name, None)
        return reply


class WaitingClient(IsolatingClient):
    """Broken: the isolating client, but a caller retries a failed command until its node
    answers, so every task ends up waiting on the hung node."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        while True:
            try:
                return await super().execute_command(*args, **options)
            except rex.ConnectionError:
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


async def test_a_client_that_isolates_a_hung_node_keeps_the_blast_radius(env: _Env) -> None:
    result = await _run(env, IsolatingClient, HANG)
    assert result.checks["blast-radius"] == "passed", result.violations
    (blast,) = result.blast
    assert blast.unchecked is None and blast.ratio >= blast.bound > 0


async def test_a_client_that_waits_on_a_hung_node_fails_the_blast_radius(env: _Env) -> None:
    result = await _run(env, WaitingClient, HANG)
    assert result.checks["blast-radius"] == "failed"
    (blast,) = result.blast
    assert blast.ratio < blast.bound
