"""One ``chaos run``: the environment, every selected scenario in turn, Ctrl-C, and the sweep.

* An error while setting up (cluster, proxies) ends the run as a setup error; an error inside
  one scenario is that scenario's ``error`` and the run goes on with the next one.
* Ctrl-C (SIGINT) cancels the running scenario only: its faults are undone (shielded), then
  the run's keys are swept, the proxies removed and the cluster stopped as on a normal exit;
  the results so far are returned, marked interrupted.  A second Ctrl-C abandons the cleanup.
* At the end, every key of the run (``chaos:<run id>:*``) left on any primary is deleted.
"""

from __future__ import annotations

import platform
import signal
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

import trio_cluster
from trio_cluster import Client, PoolOptions

from .address import Address
from .env import Environment, open_environment
from .metrics import ChaosMetrics, serve_metrics
from .monitor import ProgressSink
from .records import RunRecord
from .redact import Redactor
from .runner import ScenarioResult, derive_bounds, run_scenario
from .scenarios import Scenario
from .target import ClusterTarget

__all__ = ["RunOutcome", "RunPlan", "describe", "execute"]

#: Longest the end-of-run key sweep may take.
SWEEP_TIMEOUT = 30.0


@dataclass
class RunPlan:
    """What to run, and where."""

    scenarios: list[Scenario]
    cluster: ClusterTarget
    toxiproxy: str
    seed: int
    run_id: str
    duration: float | None = None
    metrics: tuple[str, int] | None = None
    """Where to serve Prometheus metrics while the run lasts (host, port; port 0: any)."""


@dataclass
class RunOutcome:
    """What a run did (for the reports, the JSON document and the exit status)."""

    plan: RunPlan
    started_at: datetime
    ended_at: datetime | None = None
    results: list[ScenarioResult] = field(default_factory=list)
    interrupted: bool = False
    setup_error: str | None = None
    """One line: why the run could not start (or could not be torn down)."""
    tracebacks: list[str] = field(default_factory=list)
    """Full tracebacks of setup and scenario errors (shown with ``--debug``)."""
    target: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    swept_keys: int | None = None
    """Keys of this run the end-of-run sweep deleted (None: the sweep did not run)."""


class UI:
    """What the session tells the person watching (see ``chaos.progress``)."""

    def scenario_started(self, index: int, total: int, scenario: Scenario) -> None:
        """Scenario ``index`` (0-based) of ``total`` starts."""

    def snapshot(self) -> ProgressSink | None:
        """Where the running scenario's progress snapshots go (None: nowhere)."""
        return None

    def scenario_done(self, result: ScenarioResult) -> None:
        """A scenario ended (in any status)."""

    def message(self, text: str) -> None:
        """A one-line message (already scrubbed of secrets)."""


def describe(exc: BaseException) -> str:
    """One line for an exception: the first leaf of an exception group, its class and the
    first line of its message."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _Interrupt:
    """Ctrl-C: the first one cancels the running scenario, the second one everything."""

    def __init__(self, everything: trio.CancelScope) -> None:
        self.everything = everything
        self.scenario: trio.CancelScope | None = None
        self.count = 0

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                self.count += 1
                if self.count == 1 and self.scenario is not None:
                    self.scenario.cancel()
                else:  # during setup, or a second time: stop everything
                    self.everything.cancel()


def _versions(server: str) -> dict[str, str]:
    return {
        "trio_cluster": trio_cluster.__version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "server": server,
    }


def _node(env: Environment, address: Address) -> Client:
    """A client for one node, straight to it (not through its proxy), with the run's
    credentials; one connection is all it needs."""
    host, port = address
    return Client(host=host, port=port, pool=PoolOptions(size=1), **env.client_options)


async def _server_version(env: Environment) -> str:
    async with _node(env, env.upstreams[0]) as node:
        fields: dict[str, Any] = await node.info("server")
    name = "valkey" if "valkey_version" in fields else "redis"
    return f"{name} {fields.get(f'{name}_version', fields.get('redis_version', '?'))!s}"


async def sweep_keys(env: Environment) -> int:
    """Delete every key of this run (``chaos:<run id>:*``) on every primary; the count."""
    pattern = f"chaos:{env.run_id}:*"
    deleted = 0
    for address in await env.primaries():
        async with _node(env, address) as node:
            cursor = 0
            while True:
                cursor, keys = await node.scan(cursor, match=pattern, count=500)
                if keys:
                    # One UNLINK per key: the keys of one SCAN page may be in different slots.
                    pipe = node.pipeline(transaction=False)
                    for key in keys:
                        pipe.unlink(key)
                    await pipe.execute()
                    deleted += len(keys)
                if not cursor:
                    break
    return deleted


def _target(plan: RunPlan, env: Environment, redactor: Redactor) -> dict[str, Any]:
    return {
        "cluster": plan.cluster.shown,
        "local": env.local,
        "nodes": [str(address) for address in env.upstreams],
        "toxiproxy": plan.toxiproxy
        if plan.toxiproxy == "embedded"
        else redactor.url(plan.toxiproxy),
    }


async def execute(plan: RunPlan, redactor: Redactor, ui: UI) -> RunOutcome:
    """Run ``plan``; never raises for setup or scenario errors (they are in the outcome)."""
    outcome = RunOutcome(plan, datetime.now(UTC))
    outcome.versions = _versions("?")
    metrics = ChaosMetrics() if plan.metrics is not None else None
    with trio.CancelScope() as everything:
        interrupt = _Interrupt(everything)
        async with trio.open_nursery() as nursery:
            await nursery.start(interrupt.watch)
            if await _serve(nursery, plan, metrics, outcome, redactor, ui):
                await _run(plan, outcome, interrupt, redactor, ui, metrics)
            nursery.cancel_scope.cancel()
    if everything.cancelled_caught:
        outcome.interrupted = True
        ui.message("interrupted again: cleanup abandoned")
    outcome.interrupted = outcome.interrupted or interrupt.count > 0
    outcome.ended_at = datetime.now(UTC)
    return outcome


async def _serve(
    nursery: trio.Nursery,
    plan: RunPlan,
    metrics: ChaosMetrics | None,
    outcome: RunOutcome,
    redactor: Redactor,
    ui: UI,
) -> bool:
    """Serve ``metrics`` in ``nursery`` if the plan asks for it; False (a setup error in
    ``outcome``) if the port cannot be had."""
    if metrics is None or plan.metrics is None:
        return True
    host, port = plan.metrics
    try:
        port = await nursery.start(serve_metrics, metrics, host, port)
    except OSError as exc:
        outcome.setup_error = redactor.scrub(
            f"setup error: cannot serve metrics on {host}:{port}: {describe(exc)}"
        )
        return False
    ui.message(f"metrics: http://{host}:{port}/metrics")
    return True


async def _run(
    plan: RunPlan,
    outcome: RunOutcome,
    interrupt: _Interrupt,
    redactor: Redactor,
    ui: UI,
    metrics: ChaosMetrics | None,
) -> None:
    entered = False
    try:
        async with open_environment(plan.cluster, plan.toxiproxy, plan.run_id) as env:
            entered = True
            env.redactor = redactor
            outcome.target = _target(plan, env, redactor)
            try:
                outcome.versions = _versions(await _server_version(env))
            except Exception as exc:
                ui.message(redactor.scrub(f"server version unknown: {describe(exc)}"))
            await _scenarios(plan, outcome, interrupt, env, redactor, ui, metrics)
            with trio.move_on_after(SWEEP_TIMEOUT):
                try:
                    outcome.swept_keys = await sweep_keys(env)
                except Exception as exc:
                    ui.message(redactor.scrub(f"key sweep failed: {describe(exc)}"))
    except Exception as exc:
        where = "setup" if not entered else "teardown"
        outcome.setup_error = redactor.scrub(f"{where} error: {describe(exc)}")
        outcome.tracebacks.append(redactor.scrub(traceback.format_exc()))
    except KeyboardInterrupt:  # only if SIGINT came before the signal receiver was installed
        outcome.interrupted = True


async def _scenarios(
    plan: RunPlan,
    outcome: RunOutcome,
    interrupt: _Interrupt,
    env: Environment,
    redactor: Redactor,
    ui: UI,
    metrics: ChaosMetrics | None,
) -> None:
    total = len(plan.scenarios)
    for index, scenario in enumerate(plan.scenarios):
        if interrupt.count:
            break
        ui.scenario_started(index, total, scenario)
        if metrics is not None:
            metrics.scenario(scenario.name, running=True)
        began = time.monotonic()
        result: ScenarioResult | None = None
        with trio.CancelScope() as scope:
            interrupt.scenario = scope
            try:
                result = await run_scenario(
                    env, scenario, plan.seed, hold=plan.duration, duration=plan.duration,
                    progress=ui.snapshot(), metrics=metrics,
                )  # fmt: skip
            except Exception as exc:
                result = _failed(scenario, plan.seed, redactor.scrub(describe(exc)))
                outcome.tracebacks.append(redactor.scrub(traceback.format_exc()))
        interrupt.scenario = None
        if scope.cancelled_caught or result is None:
            result = _failed(scenario, plan.seed, None)
            result.interrupted = True
        result.seconds = time.monotonic() - began
        outcome.results.append(result)
        if metrics is not None:
            metrics.scenario(scenario.name, running=False, checks=result.checks)
        ui.scenario_done(result)


def _failed(scenario: Scenario, seed: int, error: str | None) -> ScenarioResult:
    return ScenarioResult(scenario, seed, RunRecord(), derive_bounds(scenario, None), error=error)
