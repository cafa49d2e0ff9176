"""Watches every client a run opens: pool bounds, UNUSABLE spans, leaks, and a progress line.

Sampling is cheap (``ClusterClient.connections()`` is a synchronous snapshot), so it runs every
``interval`` seconds; a summary sample is kept every ``keep_every`` seconds for the report.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TextIO

import attrs
import trio

from trio_cluster import ClusterClient, ConnState

from .records import ConnSample, RunRecord

__all__ = ["Monitor"]


class Monitor:
    """Samples the clients registered with :meth:`watch` into a :class:`RunRecord`."""

    def __init__(
        self,
        record: RunRecord,
        *,
        name: str = "",
        interval: float = 0.02,
        keep_every: float = 0.25,
        progress: TextIO | None = sys.stderr,
    ) -> None:
        self.record = record
        self.name = name
        self.interval = interval
        self.keep_every = keep_every
        self.progress = progress
        self.fault: str | None = None
        """Name of the fault active now (for the progress line)."""
        self._clients: dict[int, ClusterClient] = {}
        self._next_id = 0
        self._unusable_since: dict[int, float] = {}
        self._last_keep = -1e9

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
            per_node: Counter[str] = Counter()
            states: Counter[str] = Counter()
            for conn in rc.connections():
                per_node[conn.node] += 1
                states[conn.state.name] += 1
                if conn.state is ConnState.UNUSABLE:
                    seen_unusable.add(conn.id)
                    self._unusable_since.setdefault(conn.id, now)
            for node, count in per_node.items():
                key = f"client{cid}/{node}"
                record.max_per_node[key] = max(record.max_per_node.get(key, 0), count)
            if keep:
                record.samples.append(ConnSample(now, cid, dict(per_node), dict(states)))
        for conn_id, since in list(self._unusable_since.items()):
            span = now - since
            record.unusable_spans[conn_id] = max(record.unusable_spans.get(conn_id, 0.0), span)
            if conn_id not in seen_unusable:
                del self._unusable_since[conn_id]

    async def run(self) -> None:
        """Sample until cancelled; print a progress line every second."""
        next_line = trio.current_time() + 1.0
        shown = 0
        while True:
            self.sample()
            now = trio.current_time()
            if now >= next_line and self.progress is not None:
                shown = self._print_progress(now, shown)
                next_line = now + 1.0
            await trio.sleep(self.interval)

    def _print_progress(self, now: float, shown: int) -> int:
        ops = self.record.ops
        recent = ops[shown:]
        failed = sum(1 for op in recent if not op.ok)
        lat = sorted(op.latency for op in recent if op.ok)
        p99 = lat[int(0.99 * (len(lat) - 1))] * 1000 if lat else 0.0
        conns = sum(len(rc.connections()) for rc in self._clients.values())
        unusable = len(self._unusable_since)
        fault = f" fault={self.fault}" if self.fault else ""
        print(
            f"  [{self.name}] t={now - self.record.start:5.1f}s ops={len(ops)} "
            f"last-second={len(recent)} failed={failed} p99={p99:.1f}ms "
            f"conns={conns} unusable={unusable}{fault}",
            file=self.progress,
            flush=True,
        )
        return len(ops)
