"""Runs one scenario: load, fault schedule, monitor, restore, verify, clean up, check."""

from __future__ import annotations

import random
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import attrs
import trio

from trio_cluster import ClusterClient, ConnState, ReadFrom

from .clientspec import ClientSpec, blocked_bound, recovery_bound, scheduling_slack
from .env import Environment
from .faultlib import FaultContext, Harness
from .invariants import (
    RECOVERY_WINDOW,
    SUCCESS_MARGIN,
    THROUGHPUT_MARGIN,
    Baseline,
    BlastRadius,
    Bounds,
    Recovery,
    Verdict,
    Violation,
    check_all,
    run_baseline,
)
from .monitor import FaultNow, MetricsSink, Monitor, ProgressSink
from .pubsubload import PubSubRunner
from .records import Observation, RunRecord
from .scenarios import Scenario
from .workload import WorkloadRunner

__all__ = ["ScenarioResult", "run_scenario"]

#: Hard cap on one scenario, setup and verification included.
SCENARIO_TIMEOUT = 120.0
#: How long the servers may take to notice that the client's sockets closed.
CLIENT_COUNT_SETTLE = 5.0
#: Longest wait for the workload's pools to reach ``min_idle`` before the faults start.
FILL_TIMEOUT = 15.0
_READY = (ConnState.IDLE, ConnState.IN_USE)


@dataclass
class ScenarioResult:
    """One scenario's record, bounds and verdict."""

    scenario: Scenario
    seed: int
    record: RunRecord
    bounds: Bounds
    verdict: Verdict | None = None
    """What the invariants found (None: the scenario did not run to its end)."""
    skipped: str | None = None
    error: str | None = None
    """The scenario could not run to the end: a one-line description of why."""
    interrupted: bool = False
    """Stopped by Ctrl-C before it finished."""
    seconds: float = 0.0
    """Wall time of the scenario."""

    @property
    def violations(self) -> list[Violation]:
        """Every broken invariant."""
        return self.verdict.violations if self.verdict is not None else []

    @property
    def checks(self) -> dict[str, str]:
        """Check code -> passed / failed / not checked: why."""
        return self.verdict.checks if self.verdict is not None else {}

    @property
    def baseline(self) -> Baseline | None:
        """What the load did before the first fault."""
        return self.verdict.baseline if self.verdict is not None else None

    @property
    def recoveries(self) -> list[Recovery]:
        """How long the load took to come back after each fault."""
        return self.verdict.recoveries if self.verdict is not None else []

    @property
    def blast(self) -> list[BlastRadius]:
        """How the rest of the cluster fared during each fault on one node."""
        return self.verdict.blast if self.verdict is not None else []

    @property
    def excused(self) -> list[Observation]:
        """Acknowledged writes lost inside a loss window (the server's right)."""
        return self.verdict.excused if self.verdict is not None else []

    @property
    def passed(self) -> bool:
        """Every invariant held (a skipped scenario passes; an error or interruption does
        not)."""
        return not self.violations and self.error is None and not self.interrupted

    @property
    def status(self) -> str:
        """``passed``, ``failed``, ``skipped``, ``error`` or ``interrupted``."""
        if self.interrupted:
            return "interrupted"
        if self.error is not None:
            return "error"
        if self.skipped is not None:
            return "skipped"
        return "passed" if self.passed else "failed"


def derive_bounds(scenario: Scenario, baseline: Baseline | None) -> Bounds:
    """The bounds of a run: from the client's configured timeouts, with a scheduling slack
    derived from the baseline the same run measured before its faults."""
    spec = scenario.client
    p99 = baseline.p99 if baseline is not None else 0.0
    slack = scheduling_slack(p99)
    blocked = blocked_bound(spec, slack)
    unusable = spec.unusable_limit(slack)
    recovery = recovery_bound(spec, slack, scenario.recovery_extra)
    ride_out = spec.failover_wait if scenario.fails_over else 0.0
    held = spec.longest_read_timeout + ride_out + slack
    base = (
        f"baseline p99 {1000 * p99:.1f} ms -> slack {slack:.2f} s"
        if baseline is not None
        else f"slack {slack:.2f} s"
    )
    explain = {
        "pool_size": f"{spec.pool_limit}: PoolOptions size (or max_active when lower)",
        "unusable": f"{unusable:.2f} s: longest read timeout ({spec.longest_read_timeout} s) or "
        f"handoff timeout ({spec.handoff_timeout or 0} s), + {base}",
        "blocked": f"{blocked:.2f} s: retry budget + (1 + retries) x (pool wait + write + read "
        f"timeouts + refresh + backoffs), + {base}",
        "recovery": f"{recovery:.2f} s: breaker cooldown + one attempt + connect timeout"
        + (f" + {scenario.recovery_extra} s cluster reaction" if scenario.recovery_extra else "")
        + f", + {base}; recovered = over {RECOVERY_WINDOW:.0f} s, throughput >= "
        f"{100 * THROUGHPUT_MARGIN:.0f}% of baseline and success rate >= baseline - "
        f"{100 * SUCCESS_MARGIN:.0f} pt, looked for in the {scenario.tail:.1f} s of load "
        "after each fault",
        "blast_radius": f"successful ops/s on the slots the faulted node did not serve, during "
        f"the fault, / the baseline's (all slots) >= healthy share of the baseline x (1 - "
        f"{held:.2f} s / fault length) x steadiness; {held:.2f} s = longest a task may be held "
        f"by the node before the client knows it is bad: read timeout "
        f"({spec.longest_read_timeout} s)"
        + (f" + the wait for a failover expected soon ({ride_out} s)" if ride_out else "")
        + f" + {base}; steadiness = slowest quarter of the baseline / its mean",
    }
    return Bounds(
        pool_size=spec.pool_limit,
        unusable=unusable,
        blocked=blocked,
        recovery=recovery,
        zero_failures=scenario.zero_failures,
        read_timeout=spec.read_timeout,
        handoff_timeout=spec.handoff_timeout,
        longest_read_timeout=spec.longest_read_timeout,
        slack=slack,
        held=held,
        explain=explain,
    )


async def _normal_clients(env: Environment, kind: str = "normal") -> dict[int, int]:
    """Per-node count of ordinary clients (replication links excluded), ours excluded; or,
    with ``kind="pubsub"``, of clients in subscribed mode."""
    if env.cluster is None:
        return {}
    counts = {}
    for node in env.cluster.nodes:
        if node.running and not node.paused:
            listing = await node.execute("CLIENT", "LIST", "TYPE", kind)
            text = listing.decode() if isinstance(listing, bytes) else str(listing)
            # MIGRATE keeps a cached connection from node to node (cmd=restore-asking): not ours.
            lines = [ln for ln in text.splitlines() if ln.strip() and "cmd=restore" not in ln]
            counts[node.port] = len(lines) - (1 if kind == "normal" else 0)
    return counts


async def _settled_counts(
    env: Environment, baseline: dict[int, int], kind: str = "normal"
) -> dict[int, int]:
    counts = await _normal_clients(env, kind)
    with trio.move_on_after(CLIENT_COUNT_SETTLE):
        while any(counts.get(p, 0) > n for p, n in baseline.items()):
            await trio.sleep(0.1)
            counts = await _normal_clients(env, kind)
    return counts


def skipped(scenario: Scenario, seed: int, reason: str) -> ScenarioResult:
    """A result for a scenario that was not run."""
    return ScenarioResult(scenario, seed, RunRecord(), derive_bounds(scenario, None),
                          skipped=reason)  # fmt: skip


async def run_scenario(
    env: Environment,
    scenario: Scenario,
    seed: int,
    *,
    hold: float | None = None,
    duration: float | None = None,
    progress: ProgressSink | None = None,
    metrics: MetricsSink | None = None,
) -> ScenarioResult:
    """Run ``scenario`` in ``env`` and check every invariant; ``progress`` and ``metrics``
    receive what the load does as it goes."""
    if scenario.unavailable:
        return skipped(scenario, seed, scenario.unavailable)
    if scenario.needs_local and not env.local:
        return skipped(scenario, seed, "needs --cluster local (process faults, admin commands)")
    with trio.fail_after(SCENARIO_TIMEOUT):
        return await _run(_Settings(env, scenario, seed, hold, duration, progress, metrics))


@dataclass(frozen=True)
class _Settings:
    """One run's settings, as :func:`run_scenario` got them."""

    env: Environment
    scenario: Scenario
    seed: int
    hold: float | None
    duration: float | None
    progress: ProgressSink | None
    metrics: MetricsSink | None


async def _run(settings: _Settings) -> ScenarioResult:
    env, scenario, seed = settings.env, settings.scenario, settings.seed
    if env.cluster is not None:
        await env.cluster.refresh_roles()
        await env.cluster.wait_ready()
    record = RunRecord()
    record.baseline_clients = await _normal_clients(env)
    record.baseline_pubsub_clients = await _normal_clients(env, "pubsub")
    async with scenario.harness(env).entered() as harness:
        record.node_names.update(env.node_names())
        record.node_names.update(harness.node_names())
        await _load_and_verify(settings, record, harness)
        record.final_clients = await _settled_counts(env, record.baseline_clients)
        record.final_pubsub_clients = await _settled_counts(
            env, record.baseline_pubsub_clients, "pubsub"
        )
    return judge(scenario, seed, record)


def judge(scenario: Scenario, seed: int, record: RunRecord) -> ScenarioResult:
    """Check a finished run: its baseline first, the bounds derived from it, then every
    invariant once."""
    baseline = run_baseline(record)
    bounds = derive_bounds(scenario, baseline if baseline.measured else None)
    return ScenarioResult(scenario, seed, record, bounds, check_all(record, bounds, baseline))


async def _load_and_verify(settings: _Settings, record: RunRecord, harness: Harness) -> None:
    env, scenario, seed = settings.env, settings.scenario, settings.seed
    monitor = Monitor(record, name=scenario.name, progress=settings.progress,
                      metrics=settings.metrics)  # fmt: skip
    prefix = f"chaos:{env.run_id}:{scenario.name}"

    def open_client(**extra: Any) -> AbstractAsyncContextManager[ClusterClient]:
        options = {**scenario.client.kwargs(), **harness.client_options(), **extra}
        return monitor.watch(env.client(**options))

    filled = trio.Event()

    async def fill(rc: ClusterClient) -> None:
        # The client keeps min_idle connections only on the nodes its reads use.
        nodes = (
            len(env.proxies.nodes)
            if rc.read_from is not ReadFrom.PRIMARY
            else len(rc.get_primaries())
        )
        await _pools_filled(rc, scenario.client.pool.min_idle, nodes)
        record.warm_at = trio.current_time()
        filled.set()

    workload = WorkloadRunner(scenario.workload, prefix, seed, record, open_client, fill)
    pubsub: PubSubRunner | None = None
    if scenario.pubsub is not None:
        bound = scenario.pubsub.max_connections

        def open_pubsub_client() -> AbstractAsyncContextManager[ClusterClient]:
            return open_client(max_pubsub_connections=bound)

        pubsub = PubSubRunner(scenario.pubsub, prefix, seed, record, open_pubsub_client)
    ctx = FaultContext(
        filled=filled,
        env=env,
        record=record,
        rng=random.Random(f"{seed}:{scenario.name}:faults"),
        hold=settings.hold if settings.hold is not None else scenario.hold,
        keys=workload.all_keys,
        primaries=await env.primaries(),
        harness=harness,
        clients=monitor.clients,
        pubsub=pubsub,
    )
    stop = trio.Event()
    record.start = trio.current_time()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(monitor.run)
            async with trio.open_nursery() as load:
                load.start_soon(_drive, workload, stop, record)
                if pubsub is not None:
                    load.start_soon(pubsub.run, stop)
                await _schedule(scenario, ctx, monitor, stop, settings.duration)
            record.end = trio.current_time()
            monitor.publish()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(60):
            for restore in ctx.restores:
                await restore()
    monitor.progress = monitor.metrics = None  # the verification is not the load
    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor.run)
        async with open_client() as rc:
            await workload.verify(rc)
            await workload.cleanup(rc)
        nursery.cancel_scope.cancel()


async def _drive(workload: WorkloadRunner, stop: trio.Event, record: RunRecord) -> None:
    await workload.run(stop)
    _stop(stop, record)


def _stop(stop: trio.Event, record: RunRecord) -> None:
    """End the load (the first call records when)."""
    if not stop.is_set():
        record.load_end = trio.current_time()
    stop.set()


async def _schedule(
    scenario: Scenario,
    ctx: FaultContext,
    monitor: Monitor,
    stop: trio.Event,
    duration: float | None,
) -> None:
    """Warm up, run each fault (recording its window), leave a tail of load, stop."""
    record = ctx.record
    if scenario.faults:
        # The load starts once the workload's pools are filled (see _pools_filled).
        with trio.move_on_after(FILL_TIMEOUT + 5):
            await ctx.filled.wait()
        await trio.sleep(scenario.warmup)
        for name, fault in scenario.faults:
            ctx.begin()
            owners = ctx.owners()
            start = trio.current_time()
            monitor.begin_fault(FaultNow(name, start, partial(ctx.hit_now, owners)))
            try:
                await fault(ctx)
            finally:
                record.fault_windows.append(ctx.window(name, start, owners))
                monitor.end_fault()
            await trio.sleep(scenario.tail)
        if ctx.harness is not None and not stop.is_set():
            await ctx.harness.end_of_load(ctx)
        _stop(stop, record)
        return
    spec = scenario.workload
    if spec.shape == "steady" and spec.ops_per_worker is None:
        await trio.sleep(duration if duration is not None else scenario.duration)
        _stop(stop, record)
        return
    await stop.wait()  # a fixed amount of work: the workload sets stop when done


async def _pools_filled(rc: ClusterClient, need: int, nodes: int) -> None:
    """With ``min_idle``, wait (at most ``FILL_TIMEOUT``) until ``rc`` has ``need`` ready
    connections per node, before the workers start: on a busy machine dialling them all takes a
    while, and a fault must find the pools it was designed for.  The baseline starts then."""
    if not need or not nodes:
        return

    def filled() -> bool:
        return sum(1 for c in rc.connections() if c.state in _READY) >= need * nodes

    with trio.move_on_after(FILL_TIMEOUT):
        # The pools have no "filled" event: poll the client's synchronous snapshot.
        while not filled():  # noqa: ASYNC110
            await trio.sleep(0.02)


def result_summary(result: ScenarioResult) -> dict[str, object]:
    """The scenario's static description, for reports (JSON-ready)."""
    s = result.scenario
    return {
        "name": s.name,
        "group": s.group,
        "description": s.description,
        "origin": s.origin,
        "workload": attrs.asdict(s.workload),
        "client": client_json(s.client),
        "pubsub": attrs.asdict(s.pubsub) if s.pubsub is not None else None,
    }


def _jsonable(value: object) -> object:
    """attrs classes and dataclasses as dicts, tuples as lists, the rest unchanged."""
    if attrs.has(type(value)):
        return {k: _jsonable(v) for k, v in attrs.asdict(cast(Any, value), recurse=False).items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def client_json(spec: ClientSpec) -> dict[str, object]:
    """The client's options as a JSON object (nested options as objects, not reprs)."""
    return {k: _jsonable(v) for k, v in spec.kwargs().items()}
