"""Every scenario: the origin's load tests (basic, advanced, detect), scaled to run in seconds,
and the failure scenarios it only recommends (faults).  ``SCENARIOS`` is the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from trio_cluster import MaintNotificationsOptions, PoolOptions

from . import faultlib, maintenance
from .clientspec import ClientSpec
from .env import Environment
from .faultlib import FaultFn, Harness
from .pubsubload import PubSubLoad
from .workload import Workload

__all__ = ["GROUPS", "SCENARIOS", "Planned", "Scenario", "select"]

GROUPS = ("basic", "advanced", "detect", "faults")
#: Seconds every scenario spends outside its load (cluster checks, verification, clean-up),
#: measured on a 2-core machine.
PLAN_OVERHEAD = 0.3


@dataclass(frozen=True)
class Planned:
    """How long a scenario should take: the seconds its plan fixes (warm-up, fault holds,
    tails, steady duration: sleeps, whatever the machine), and the seconds it was measured to
    take beyond them (work, the cluster's reactions: these grow on a busy machine)."""

    fixed: float
    extra: float

    @property
    def seconds(self) -> float:
        """Both together."""
        return self.fixed + self.extra


@dataclass(frozen=True)
class Scenario:
    """A seeded workload, a schedule of faults, and the bounds its invariants use."""

    name: str
    group: str
    description: str
    workload: Workload = field(default_factory=Workload)
    client: ClientSpec = field(default_factory=ClientSpec)
    faults: tuple[tuple[str, FaultFn], ...] = ()
    hold: float = 2.0
    """Seconds each fault stays (``--duration`` sets it); 0 for faults that do not stay."""
    warmup: float = 1.0
    tail: float = 3.0
    """Load after each fault, to measure recovery."""
    duration: float = 3.0
    """Load time for a steady workload with no faults and no op count."""
    recovery_extra: float = 0.0
    """Seconds added to the recovery bound the client's options imply
    (``trio_cluster.chaos.clientspec.recovery_bound``): the cluster's own reaction, e.g. gossiping a
    promotion."""
    needs_local: bool = False
    harness: Callable[[Environment], Harness] = Harness
    """What the run sets up around the load besides the proxies (fault tools, ACL users)."""
    zero_failures: bool = False
    """Every command must succeed: the client must hide the fault completely."""
    unavailable: str | None = None
    """Why this scenario cannot run yet (listed, never run)."""
    origin: str = ""
    """The origin test this reproduces, and how it was scaled."""
    pubsub: PubSubLoad | None = None
    """Subscribers and publishers running beside the workload
    (``trio_cluster.chaos.pubsubload``)."""
    fails_over: bool = False
    """The fault ends in a failover the client may wait for in its last seconds
    (``RetryOptions.failover_wait``): the blast-radius bound allows that wait."""
    extra: float = 0.0
    """Seconds a run takes beyond what its plan fixes (a fixed amount of work, the cluster's
    reaction to a fault, waits): the median of three default runs on a shared 2-core machine,
    for the progress ETA."""

    def planned(self, duration: float | None = None) -> Planned:
        """How long a run of it should take (``duration``: the run's ``--duration``, which
        sets the steady load and every hold)."""
        if self.faults:
            hold = (duration if duration is not None else self.hold) if self.hold else 0.0
            fixed = self.warmup + len(self.faults) * (hold + self.tail)
        elif self.workload.shape == "steady" and self.workload.ops_per_worker is None:
            fixed = duration if duration is not None else self.duration
        else:
            fixed = 0.0  # a fixed amount of work: all of it is extra
        return Planned(fixed, PLAN_OVERHEAD + self.extra)


def _pool(
    size: int, timeout: float, *, min_idle: int = 0, max_idle: int = 0, max_active: int = 0
) -> PoolOptions:
    return PoolOptions(
        size=size, timeout=timeout, min_idle=min_idle, max_idle=max_idle, max_active=max_active
    )


def _origin_client(pool: PoolOptions) -> ClientSpec:
    # The origin keeps go-redis's 3 s read/write timeouts.
    return ClientSpec(pool=pool, read_timeout=3.0, write_timeout=3.0, connect_timeout=3.0)


SETS = (("set", 1.0),)
#: How long a fault on one node lasts: long enough for a client that lets a sick node stall
#: the healthy ones to show it (the blast-radius check), with the first read timeout small
#: beside it.
SINGLE_NODE_HOLD = 5.0
#: Load before the first fault: the baseline the fault is measured against (its first 0.2 s
#: excluded; see ``trio_cluster.chaos.invariants.timing.BASELINE_SKIP``).  Two seconds, so
#: that a stall of this busy machine is a small part of it.
FAULT_WARMUP = 2.0
#: Maintenance notifications for the handoff scenario: a handoff timeout short enough to be a
#: meaningful UNUSABLE bound, and a post-handoff relaxation over before the MIGRATING part.
HANDOFF_MAINT = MaintNotificationsOptions(
    mode="enabled", relaxed_timeout=2.5, handoff_timeout=5.0, post_handoff_relaxed=1.0
)
#: The handoff scenario's connect timeout (see there).
HANDOFF_CONNECT_TIMEOUT = 2.0
#: Above the 0.5 s read timeout, below the 2.5 s relaxed timeout.
RELAX_LATENCY_MS = 1000
FAULT_LOAD = Workload(workers=16, think=(0.001, 0.004), keys_per_worker=4)
#: The origin's "PubSub + Get/Set", scaled: 10 subscribers on 10 channels each (some shared,
#: 6 of the 20 sharded), half the publishers and workers, half the time.  The periods are
#: ceilings (each task sleeps them after its command): on 2 cores, with the proxies in the same
#: process, the closed loop reaches about 1,000 publishes/s and 1,000 GET/SET/s.
PUBSUB = PubSubLoad(subscribers=10, channels_per_subscriber=10, channels=20, sharded=6,
                    publishers=50, interval=0.010)  # fmt: skip
PUBSUB_GETSET = Workload(workers=50, mix=(("get", 0.5), ("set", 0.5)), think=(0.005, 0.005))
PUBSUB_SECONDS = 5.0
PUBSUB_ORIGIN = (
    "PubSub + Get/Set: PoolSize 100, PoolTimeout 5 s, 10 s of 10 subscribers x 10 channels, "
    "100 publishers (PUBLISH every 10 ms), 100 GET/SET workers (every 5 ms) -> "
    f"{PUBSUB.subscribers} x {PUBSUB.channels_per_subscriber} channels ({PUBSUB.sharded} of "
    f"{PUBSUB.channels} SSUBSCRIBE/SPUBLISH), {PUBSUB.publishers} publishers, "
    f"{PUBSUB_GETSET.workers} workers"
)

_LOAD = [
    Scenario("basic-concurrent", "basic", "many tasks, SETs on their own keys",
             Workload(workers=50, ops_per_worker=100, mix=SETS),
             _origin_client(PoolOptions()),
             extra=0.4,
             origin="Basic Concurrent Operations: 100 goroutines x 5000 SET -> 50 x 100"),
    Scenario("basic-stress", "basic", "high concurrency on a pool of 5, 0-99 us think time",
             Workload(workers=100, ops_per_worker=50, mix=SETS, think=(0.0, 0.0001)),
             _origin_client(_pool(5, 2.0)),
             extra=1.0,
             origin="High Concurrency Stress: PoolSize 5, PoolTimeout 2 s, 250 x 250 SET -> "
                    "100 x 50"),
    Scenario("basic-pool-load", "basic", "workers hold the pool busy for a few seconds",
             Workload(workers=50, mix=(("incr", 1.0),), think=(0.0, 0.049)),
             _origin_client(_pool(8, 3.0, min_idle=2)), duration=3.0,
             origin="Pool Behavior Under Load: PoolSize 8, MinIdle 2, 100 workers x 5 s -> "
                    "50 x 3 s"),
    Scenario("basic-mixed", "basic", "60 % GET / 40 % SET over prepopulated keys",
             Workload(workers=60, ops_per_worker=80, mix=(("get", 0.6), ("set", 0.4)),
                      keys_per_worker=4, prepopulate=True),
             _origin_client(_pool(10, 5.0)),
             extra=0.4, origin="Mixed Read/Write: PoolSize 10, 300 x 1000 ops 60/40 -> 60 x 80"),
    Scenario("advanced-contention", "advanced", "200 tasks on a pool of 2",
             Workload(workers=200, ops_per_worker=10, mix=SETS),
             _origin_client(_pool(2, 1.0)),
             extra=0.4,
             origin="Extreme Contention: PoolSize 2, PoolTimeout 1 s, 200 x 10 (unscaled)"),
    Scenario("advanced-rapid-cycles", "advanced", "acquire/release with max_idle 1",
             Workload(workers=50, ops_per_worker=100, mix=SETS),
             _origin_client(_pool(5, 2.0, max_idle=1)),
             extra=1.4, origin="Rapid Acquire/Release: PoolSize 5, MaxIdle 1, 50 x 100 (unscaled)"),
    Scenario("advanced-long-running", "advanced", "pipelines (SET, GET, INCR) with think time",
             Workload(workers=40, ops_per_worker=40, mix=(("pipeline", 1.0),),
                      think=(0.0, 0.019)),
             _origin_client(_pool(2, 3.0, max_idle=1, max_active=5)),
             extra=2.5,
             origin="Long-Running Operations: PoolSize 2, MaxIdle 1, MaxActive 5, 100 x 200 "
                    "pipelines -> 40 x 40"),
    Scenario("advanced-pipelines", "advanced", "concurrent pipelines of 50 SETs",
             Workload(workers=16, ops_per_worker=20, mix=(("pipeline", 1.0),),
                      pipeline_sets=50, keys_per_worker=50),
             _origin_client(_pool(10, 5.0, max_idle=5, min_idle=5)),
             extra=1.9, origin="Concurrent Pipelines: PoolSize 10, 64 x 100 pipelines x 100 SET -> "
                    "16 x 20 x 50"),
    Scenario("advanced-pubsub", "advanced",
             f"{PUBSUB.subscribers} subscribers x {PUBSUB.channels_per_subscriber} channels "
             f"({PUBSUB.sharded} of {PUBSUB.channels} sharded), {PUBSUB.publishers} publishers, "
             f"{PUBSUB_GETSET.workers} GET/SET workers",
             PUBSUB_GETSET, _origin_client(_pool(100, 5.0)), duration=PUBSUB_SECONDS,
             pubsub=PUBSUB, extra=1.8, origin=f"{PUBSUB_ORIGIN}, {PUBSUB_SECONDS:.0f} s"),
    Scenario("detect-thundering-herd", "detect", "100 tasks released at once on a pool of 5",
             Workload(workers=100, ops_per_worker=1, mix=SETS, shape="rounds", rounds=3,
                      pause=0.2),
             _origin_client(_pool(5, 2.0)),
             extra=0.5,
             origin="Thundering Herd: PoolSize 5, 100 goroutines x 1 SET (3 rounds here)"),
    Scenario("detect-bursty", "detect", "5 bursts of 50 tasks, 100 ms apart",
             Workload(workers=50, ops_per_worker=1, mix=SETS, shape="rounds", rounds=5,
                      pause=0.1),
             _origin_client(_pool(8, 3.0)),
             extra=0.4, origin="Bursty Traffic: PoolSize 8, 5 bursts x 50, 100 ms quiet"),
    Scenario("detect-churn", "detect", "a new client per iteration, closed after it",
             Workload(workers=20, ops_per_worker=1, mix=SETS, shape="churn", rounds=10,
                      pause=0.05),
             _origin_client(_pool(5, 2.0)),
             extra=0.9, origin="Connection Churn: 10 iterations x 20 goroutines, new client each"),
    Scenario("detect-race", "detect", "SET / GET / pipeline(SET+GET) cycled on a pool of 3",
             Workload(workers=100, ops_per_worker=20, cycle=True, shape="rounds"),
             _origin_client(_pool(3, 1.0)),
             extra=0.7,
             origin="Race Condition Detection (defined but never run by the origin): PoolSize 3, "
                    "PoolTimeout 1 s, 100 x 20"),
]  # fmt: skip


def _fault(
    name: str,
    fn: FaultFn,
    description: str,
    *,
    workload: Workload = FAULT_LOAD,
    needs_local: bool = False,
    recovery_extra: float = 0.0,
    hold: float = SINGLE_NODE_HOLD,
    extra: float = 0.0,
    fails_over: bool = False,
) -> Scenario:
    return Scenario(
        name,
        "faults",
        description,
        workload,
        faults=((name, fn),),
        fails_over=fails_over,
        needs_local=needs_local,
        recovery_extra=recovery_extra,
        hold=hold,
        warmup=FAULT_WARMUP,
        extra=extra,
    )


_FAULTS = [
    _fault("node-down", faultlib.node_down_fault,
           f"a primary's proxy disabled for {SINGLE_NODE_HOLD:.0f} s (connections refused)"),
    _fault("node-hang", faultlib.node_hang,
           f"a primary swallows all data for {SINGLE_NODE_HOLD:.0f} s (timeout toxic)"),
    _fault("node-sigstop", faultlib.sigstop_primary,
           f"a primary SIGSTOPped for {SINGLE_NODE_HOLD:.0f} s (no failover)", needs_local=True),
    _fault("latency-spike", faultlib.latency_spike,
           f"a primary 800 ms late for {SINGLE_NODE_HOLD:.0f} s, read timeout 500 ms"),
    _fault("reset-storm", faultlib.reset_storm, "half the connections to every node reset",
           hold=2.0, extra=0.5),
    _fault("slow-close", faultlib.slow_close,
           "a primary's connections cut after 2 KB, closed 1.5 s later"),
    _fault("bandwidth", faultlib.bandwidth_starvation,
           "a primary's replies trickle at 1 KB/s (400 B values)",
           workload=Workload(workers=16, think=(0.001, 0.004), value_pad=400)),
    _fault("kill-primary", faultlib.kill_primary,
           f"a primary SIGKILLed; its replica promoted after a {SINGLE_NODE_HOLD:.0f} s node "
           "timeout", needs_local=True, recovery_extra=2.0, extra=4.5, fails_over=True),
    _fault("failover", faultlib.graceful_failover, "CLUSTER FAILOVER of a shard (lossless)",
           needs_local=True, hold=0.0),
    _fault("restart-primary", faultlib.restart_primary,
           f"a primary stopped (SIGTERM) for {SINGLE_NODE_HOLD:.0f} s, then restarted with its "
           "AOF", needs_local=True, recovery_extra=2.0, extra=3.4),
    _fault("reshard", faultlib.live_reshard, "slots with live keys moved away and back (ASK/MOVED)",
           needs_local=True, workload=Workload(workers=16, think=(0.001, 0.004),
                                               keys_per_worker=8), hold=2.0, extra=0.6),
    Scenario("pubsub-node-failure", "faults",
             "the pub/sub load of advanced-pubsub; the proxy of the primary carrying most "
             f"classic subscriptions disabled for {2 * SINGLE_NODE_HOLD:.0f} s",
             # This load saturates its process (p99 0.5-0.8 s before the fault beside four CPU
             # hogs, over 2 s while 100 connections redial after it): 0.5/1 s timeouts then
             # fail healthy commands.  Timeouts are not what this tests (pub/sub recovery is).
             PUBSUB_GETSET,
             ClientSpec(pool=_pool(100, 3.0), read_timeout=2.0, write_timeout=2.0,
                        connect_timeout=2.0),
             faults=(("pubsub-node-down", faultlib.pubsub_node_down),), pubsub=PUBSUB, tail=4.0,
             # Its 2 s read timeout (and the slack of a busy baseline) would take up most of a
             # 5 s fault, and the blast-radius bound with it: twice as long.
             hold=2 * SINGLE_NODE_HOLD, warmup=FAULT_WARMUP, extra=1.7,
             origin=f"{PUBSUB_ORIGIN}, 1 s + the fault + 3 s (the origin has no fault)"),
    Scenario("cancel-storm", "faults",
             "every command under a random 0-20 ms move_on_after deadline",
             Workload(workers=24, think=(0.0, 0.002), cancel=(0.0, 0.02), keys_per_worker=4),
             duration=4.0),
    Scenario("maintenance-handoff", "faults",
             "MOVING: every primary's connections handed to a second endpoint; then MIGRATING "
             f"around {RELAX_LATENCY_MS} ms latency (read timeout 0.5 s, relaxed "
             f"{HANDOFF_MAINT.relaxed_timeout:.1f} s)",
             # Every connection is dialled up front (min_idle = size >= workers): one dialled
             # during the latency would not have been told of the migration.
             Workload(workers=12, think=(0.001, 0.004), keys_per_worker=4),
             # Dials go through two relays in this process (injector, then proxy): on a busy
             # 2-core machine a handshake can take longer than 0.5 s, and here a failed dial
             # (a refill, a handoff) is a failed command.  Dialling is not what this tests.
             # A pool wait during a handoff is expected (connections are out of use); its
             # timeout is not the subject either.
             ClientSpec(pool=_pool(12, 3.0, min_idle=12), maint=HANDOFF_MAINT,
                        connect_timeout=HANDOFF_CONNECT_TIMEOUT),
             faults=(("moving", maintenance.moving_handoff(HANDOFF_MAINT.handoff_timeout)),
                     ("migrating", maintenance.relaxed_migration(RELAX_LATENCY_MS))),
             harness=maintenance.Injectors, zero_failures=True, hold=1.5, tail=2.5, extra=2.6),
    Scenario("credential-rotation", "faults",
             "streaming credentials rotated to a second ACL user under load, then the first "
             "user deleted", FAULT_LOAD,
             # Timeouts are not what this tests, and every failure counts: timeouts a busy
             # machine meets (its p99 reached 0.8 s in a run beside four CPU hogs).
             ClientSpec(read_timeout=2.0, write_timeout=2.0, connect_timeout=2.0),
             faults=(("rotate", maintenance.rotate_credentials),),
             harness=maintenance.AclUsers, zero_failures=True, needs_local=True),
]  # fmt: skip

SCENARIOS: dict[str, Scenario] = {s.name: s for s in [*_LOAD, *_FAULTS]}


def select(names: list[str], mode: str) -> list[Scenario]:
    """The scenarios named (any order kept), or every scenario of ``mode`` ("all": all)."""
    if names:
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise KeyError(", ".join(unknown))
        return [SCENARIOS[n] for n in names]
    groups = GROUPS if mode == "all" else (mode,)
    return [s for s in SCENARIOS.values() if s.group in groups]
