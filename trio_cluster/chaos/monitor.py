"""Watches every client a run opens: pool bounds, UNUSABLE spans, leaks; and, every
``PROGRESS_EVERY`` seconds, hands what the load did since to the progress line and to the
metrics (``chaos.metrics``), with the fault in progress.

Sampling is cheap (``ClusterClient.connections()`` is a synchronous snapshot), so it runs every
``interval`` seconds; a summary sample is kept every ``keep_every`` seconds for the report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import attrs
import trio

from trio_cluster import ClusterClient, ConnState

from .address import Address
from .invariants import Partition
from .records import ConnSample, Op, RunRecord, Window

__all__ = ["PROGRESS_EVERY", "FaultNow", "Hit", "MetricsSink", "Monitor", "ProgressSink",
           "Snapshot"]  # fmt: skip

#: A wake-up this late (seconds) is recorded as a stall of the event loop.
STALL = 0.1
#: Seconds between two progress snapshots.
PROGRESS_EVERY = 0.5


@dataclass(frozen=True)
class Snapshot:
    """How the running scenario is doing (for live progress)."""

    scenario: str
    elapsed: float
    ops: int
    ops_per_s: float
    """Over the last ``PROGRESS_EVERY`` seconds."""
    errors: int
    """Failed operations so far (``Op.failed``: as the report counts them, so those the
    workload cancelled itself are not errors)."""
    p99_ms: float
    """Over the last ``PROGRESS_EVERY`` seconds."""
    connections: int
    unusable: int
    fault: str | None


#: Receives a snapshot every ``PROGRESS_EVERY`` seconds while a scenario's load runs.
ProgressSink = Callable[[Snapshot], None]


class Hit(NamedTuple):
    """What a fault hit: real node addresses, or every node; and, for one node, the workload's
    slots it served when the fault began."""

    nodes: tuple[Address, ...]
    everywhere: bool
    slots: frozenset[int]


@dataclass(frozen=True)
class FaultNow:
    """The fault in progress: its name, when it began, and what it has hit so far (asked
    again at each report: a fault names its nodes once it has begun)."""

    name: str
    start: float
    hit: Callable[[], Hit]


class MetricsSink(Protocol):
    """Where the monitor sends the load's figures as it goes (``chaos.metrics``)."""

    def observe(self, scenario: str, ops: Sequence[tuple[Op, str | None]]) -> None:
        """Operations that ended since the last call, each with its part (``healthy``,
        ``faulted``, or None without a key: see ``trio_cluster.chaos.invariants.Partition``)."""

    def fault(self, scenario: str, name: str, hit: Hit, active: bool) -> None:
        """A fault is in progress (``active``), or has ended."""


class Monitor:
    """Samples the clients registered with :meth:`watch` into a :class:`RunRecord`."""

    def __init__(
        self,
        record: RunRecord,
        *,
        name: str = "",
        interval: float = 0.02,
        keep_every: float = 0.25,
        progress: ProgressSink | None = None,
        metrics: MetricsSink | None = None,
    ) -> None:
        self.record = record
        self.name = name
        self.interval = interval
        self.keep_every = keep_every
        self.progress = progress
        self.metrics = metrics
        self.fault: FaultNow | None = None
        """The fault in progress (see :meth:`begin_fault`)."""
        self._clients: dict[int, ClusterClient] = {}
        self._next_id = 0
        self._unusable_since: dict[int, float] = {}
        self._last_keep = -1e9
        self._shown = 0
        """Operations already handed on (``record.ops[:_shown]``)."""
        self._errors = 0
        """Of those, how many failed (``Op.failed``)."""
        self._partition = Partition()
        self._hit: Hit | None = None

    @asynccontextmanager
    async def watch(self, client: ClusterClient) -> AsyncIterator[ClusterClient]:
        """Open ``client``, sample it while open, and check it leaves nothing open."""
        cid = self._next_id
        self._next_id += 1
        async with client as rc:
            self._clients[cid] = rc
            try:
                yield rc
            finally:
                self.sample()
                del self._clients[cid]
                self.record.client_stats[f"client{cid}"] = attrs.asdict(rc.stats())
                self.record.maintenance[f"client{cid}"] = rc.maintenance_stats()
        leftover = client.connections()
        self.record.leaked_connections += [
            f"client {cid} connection {c.id} to {c.node} in {c.state.name}" for c in leftover
        ]

    def clients(self) -> list[ClusterClient]:
        """The clients open now, oldest first."""
        return list(self._clients.values())

    def sample(self) -> None:
        """Take one sample of every open client now."""
        now = trio.current_time()
        record = self.record
        seen_unusable: set[int] = set()
        keep = now - self._last_keep >= self.keep_every
        if keep:
            self._last_keep = now
        for cid, rc in self._clients.items():
            per_node: Counter[Address] = Counter()
            states: Counter[str] = Counter()
            for conn in rc.connections():
                per_node[Address.of(conn.node)] += 1
                states[conn.state.name] += 1
                if conn.state is ConnState.UNUSABLE:
                    seen_unusable.add(conn.id)
                    self._unusable_since.setdefault(conn.id, now)
            for node, count in per_node.items():
                key = (cid, node)
                record.max_per_node[key] = max(record.max_per_node.get(key, 0), count)
            if keep:
                record.samples.append(ConnSample(now, cid, dict(per_node), dict(states)))
        for conn_id, since in list(self._unusable_since.items()):
            span = now - since
            record.unusable_spans[conn_id] = max(record.unusable_spans.get(conn_id, 0.0), span)
            if conn_id not in seen_unusable:
                del self._unusable_since[conn_id]

    def begin_fault(self, fault: FaultNow) -> None:
        """A fault starts (shown and exported until :meth:`end_fault`)."""
        self.publish()
        self.fault, self._hit = fault, None

    def end_fault(self) -> None:
        """The fault in progress has ended."""
        self.publish()
        fault, hit = self.fault, self._hit
        self.fault = self._hit = None
        if fault is not None and hit is not None and self.metrics is not None:
            self.metrics.fault(self.name, fault.name, hit, active=False)

    async def run(self) -> None:
        """Sample until cancelled; publish (:meth:`publish`) twice a second."""
        next_report = trio.current_time() + PROGRESS_EVERY
        due = trio.current_time()
        while True:
            self.sample()
            now = trio.current_time()
            if now - due >= STALL:
                # This task was due at ``due`` and ran only now: the whole event loop (workload
                # and in-process proxies included) was starved in between.
                self.record.stalls.append(Window("event loop stalled", due, now))
            due = now + self.interval
            if now >= next_report:
                self.publish()
                next_report = now + PROGRESS_EVERY
            await trio.sleep(self.interval)

    def publish(self) -> None:
        """Hand the operations that ended since the last call, and the fault in progress, to
        the metrics, and a snapshot to the progress line."""
        now = trio.current_time()
        ops = self.record.ops
        recent = ops[self._shown :]
        self._shown = len(ops)
        self._errors += sum(1 for op in recent if op.failed)
        fault = self.fault
        if fault is not None:
            hit = fault.hit()
            if hit != self._hit:
                if len(hit.nodes) == 1 and (self._hit is None or not self._hit.slots):
                    self._partition.add(fault.start, hit.slots)
                self._hit = hit
            if self.metrics is not None and (hit.nodes or hit.everywhere):
                self.metrics.fault(self.name, fault.name, hit, active=True)
        if self.metrics is not None:
            self.metrics.observe(self.name, [(op, self._partition.part(op)) for op in recent])
        if self.progress is None:
            return
        lat = sorted(op.latency for op in recent if op.ok)
        self.progress(
            Snapshot(
                scenario=self.name,
                elapsed=now - self.record.start,
                ops=len(ops),
                ops_per_s=len(recent) / PROGRESS_EVERY,
                errors=self._errors,
                p99_ms=lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else 0.0,
                connections=sum(len(rc.connections()) for rc in self._clients.values()),
                unusable=len(self._unusable_since),
                fault=fault.name if fault is not None else None,
            )
        )
