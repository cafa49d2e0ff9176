"""The topology refresher: fetches the cluster's slot map in the background.

Single-flight and rate-limited: any number of requests (a MOVED, an SMIGRATED, a node that
failed) between two refreshes cost one, and a storm of them at most one per
``min_interval``; without requests, one every ``interval``.  Each refresh asks the known
primaries, then replicas, then the startup nodes, in random order (nodes known bad last: a
hung node would hold the refresh for its timeouts), until one answers with a map that covers
slots; it is fetched on a one-off connection from the client's dialer (a
saturated pool must not delay it; the newest credentials like every other connection).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence

import trio

from ..conn.dialer import Dialer
from ..errors import AuthenticationError, ClusterUnreachableError, UnknownCommandError
from ..logs import LogLimiter
from .rules import CommandTable
from .topology import SLOTS, Address, AddressRemap, Topology, parse_shards, parse_slots

__all__ = ["Refresher"]

logger = logging.getLogger(__name__)

#: Installs a fetched topology (and, on the first refresh, the server's command table).
Install = Callable[[Topology, CommandTable | None], Awaitable[None]]


class Refresher:
    """Keeps a cluster client's topology current; :meth:`run` is its background task.
    ``known_bad(address)`` says which nodes to ask last."""

    def __init__(
        self,
        *,
        dialer: Dialer,
        startup: Sequence[Address],
        remap: AddressRemap | None,
        current: Callable[[], Topology],
        install: Install,
        interval: float,
        min_interval: float,
        known_bad: Callable[[Address], bool] = lambda address: False,
        require_full_coverage: bool = True,
        dynamic_startup_nodes: bool = True,
    ) -> None:
        for name, value in (("refresh_interval", interval),
                            ("refresh_min_interval", min_interval)):  # fmt: skip
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name} must be a number of seconds > 0; got {value!r}")
        self.interval = float(interval)
        self.min_interval = float(min_interval)
        self._dialer = dialer
        self._startup = startup
        self._remap = remap
        self._current = current
        self._install = install
        self._known_bad = known_bad
        #: redis-py's ``require_full_coverage``: a slot map with a slot no node serves is
        #: refused (the next node is asked; the map in use is kept).
        self.require_full_coverage = require_full_coverage
        #: redis-py's ``dynamic_startup_nodes``: ask the nodes of the current map, not only
        #: the startup nodes.
        self.dynamic_startup_nodes = dynamic_startup_nodes
        self._wanted = trio.Event()
        self._done = trio.Event()
        self._last = -math.inf
        self._outage_log = LogLimiter(logger)
        #: Counters, for stats.
        self.refreshes = 0
        self.failures = 0

    def request(self) -> None:
        """Ask for a refresh (never blocks)."""
        self._wanted.set()

    async def refresh(self) -> None:
        """Request a refresh and wait until one has completed."""
        done = self._done
        self.request()
        await done.wait()

    async def run(self) -> None:
        """The background task: refresh on request or every ``interval``, forever."""
        while True:
            with trio.move_on_after(self.interval):
                await self._wanted.wait()
            # Rate limit: a storm of MOVED replies costs one refresh per interval.
            await trio.sleep_until(self._last + self.min_interval)
            self._wanted = trio.Event()
            try:
                await self.once()
            except Exception as exc:
                self.failures += 1
                self._outage_log.log(
                    logging.WARNING, "topology", "topology refresh failed: %s", exc
                )
            else:
                held = self._outage_log.reset("topology")
                if held:
                    logger.info("topology refresh works again after %d more failures", held)
            finally:
                done, self._done = self._done, trio.Event()
                done.set()

    async def once(self, *, initial: bool = False) -> None:
        """Fetch the slot map from the first node that answers and install it (with the
        command table too when ``initial``)."""
        self._last = trio.current_time()
        known = self._current()
        candidates = list(known.primaries) if self.dynamic_startup_nodes else []
        random.shuffle(candidates)
        replicas = [a for a in known.nodes if a not in candidates]
        random.shuffle(replicas)
        candidates += replicas if self.dynamic_startup_nodes else []
        candidates += [a for a in self._startup if a not in candidates]
        candidates.sort(key=self._known_bad)  # stable: the random order stays among equals
        failures = []
        refused: AuthenticationError | None = None
        for address in candidates:
            try:
                topology, table = await self._fetch(address, load_commands=initial)
            except Exception as exc:
                failures.append(f"{address[0]}:{address[1]}: {exc}")
                if isinstance(exc, AuthenticationError) and refused is None:
                    refused = AuthenticationError(
                        f"{address[0]}:{address[1]} refused the credentials: {exc}"
                    )
                continue
            if not topology.covered:
                failures.append(f"{address[0]}:{address[1]}: no slot is assigned")
                continue
            if self.require_full_coverage and topology.covered < SLOTS:
                failures.append(
                    f"{address[0]}:{address[1]}: only {topology.covered} of {SLOTS} slots are "
                    "served (require_full_coverage=False accepts a partial map)"
                )
                continue
            await self._install(topology, table)
            self.refreshes += 1
            return
        if refused is not None:
            # A node answered and refused the credentials: that, not reachability, is what to
            # fix (the other nodes' failures follow).
            if len(failures) > 1:
                refused.args = (f"{refused}; every node failed: {'; '.join(failures)}",)
            raise refused
        raise ClusterUnreachableError(
            "Redis Cluster cannot be connected. Please provide at least one reachable node: "
            + "; ".join(failures)
        )

    async def _fetch(
        self, address: Address, *, load_commands: bool
    ) -> tuple[Topology, CommandTable | None]:
        conn = await self._dialer.open(address, maint_notifications="disabled")
        try:
            try:
                reply = await conn.execute(["CLUSTER", "SHARDS"])
                topology = parse_shards(reply, address, self._remap)
            except UnknownCommandError:
                reply = await conn.execute(["CLUSTER", "SLOTS"])
                topology = parse_slots(reply, address, self._remap)
            table = CommandTable(await conn.execute(["COMMAND"])) if load_commands else None
            return topology, table
        finally:
            await conn.aclose()
