"""What a command does when its node is known bad: fail at once, or wait for a failover.

A node is *known bad* while its circuit breaker is not closed (``pooling/breaker.py``: enough
consecutive failures, timeouts included, opened it; one probe at a time readmits it).  For
that node's slots the retry policy (:mod:`.policy`) asks :meth:`Isolation.rides_out`:

* ``failover_wait="never"``: the command fails at once (``CircuitOpenError`` naming the node
  and why it is known bad, or the error its own call got), whatever the cluster does;
* ``"always"``: it waits, as for any command that never reached a server (a fresh map, a
  backoff, within ``RetryOptions.budget``);
* ``"auto"`` (the default): it waits only when a failover can end the outage soon: the node
  is a primary with a replica, the cluster itself sees the node failing, **and** the
  cluster should promote the replica within ``soon`` seconds (``RetryOptions.
  failover_wait_max``, 2 s), and is not overdue by more than that.  Anything else (no
  replica; a node the cluster finds healthy: the fault lies between this client and the
  node, a proxy, a partition; a failover still far off, or long overdue) is isolated: its
  slots fail at once, the rest of the cluster is untouched.  So a dead primary under the
  production node timeout (15 s) costs its slots' commands fast errors for about 14 s, then
  they wait for the last seconds of its failover instead of failing.

"The cluster sees it failing" is read from another node's ``CLUSTER NODES`` (with ``TIME``
and ``CONFIG GET cluster-node-timeout``, one round trip on a healthy node's pool): the node's
line says ``fail`` or ``fail?``, its cluster-bus link is ``disconnected`` (a dead process: at
once), or a ping to it has gone unanswered for more than :data:`PING_OVERDUE` seconds (a hung
process).  The promotion is expected :data:`ELECTION` seconds after the node has been silent
for the node timeout (since its oldest unanswered ping), at once after ``fail``.  The answer
is kept for :data:`VERDICT_TTL` seconds per node, and asked by one caller at a time.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ..config import FAILOVER_WAITS
from ..pooling.breaker import BreakerState
from ..wire.encoding import text
from .slotmap import Node, SlotMap
from .topology import Address

__all__ = [
    "ELECTION",
    "PING_OVERDUE",
    "VERDICT_TTL",
    "Isolation",
    "cluster_sees_failing",
    "failover_eta",
    "known_bad",
]

#: A ping the cluster sent the node, unanswered for this long, means the node is not
#: answering (a healthy node answers within milliseconds).
PING_OVERDUE = 0.5
#: How long a verdict on one node is reused (seconds).
VERDICT_TTL = 1.0
#: Seconds from the cluster agreeing a primary failed to its first replica being promoted
#: (a replica waits 0.5 s plus up to 0.5 s at random before asking for votes).
ELECTION = 1.0

#: Asks one node a batch of commands; replies in order, errors as values.
Ask = Callable[[Node, Sequence[Sequence[Any]]], Awaitable[list[Any]]]


def known_bad(node: Node) -> bool:
    """Whether ``node`` is known bad: its breaker is open or probing."""
    return node.breaker.state is not BreakerState.CLOSED


class Isolation:
    """The verdicts of one cluster client (see the module's docstring)."""

    def __init__(self, slots: SlotMap, mode: str, ask: Ask, soon: float = 2.0) -> None:
        if mode not in FAILOVER_WAITS:
            raise ValueError(f"failover_wait must be one of {', '.join(FAILOVER_WAITS)}")
        self.slots = slots
        self.mode = mode
        #: How close (seconds, either way) the expected promotion must be to wait for it.
        self.soon = soon
        self._ask = ask
        self._verdicts: dict[Address, tuple[float, bool]] = {}
        self._pending: dict[Address, trio.Event] = {}

    def rides_out_now(self, node: Node) -> bool | None:
        """Whether a command for ``node``'s slots (``node`` known bad) waits for a failover
        (True) or fails at once (False), when that is known without asking the cluster;
        None when :meth:`rides_out` must ask.  On the path of every command refused while
        the node is known bad: no I/O, no coroutine."""
        mode = self.mode
        if mode != "auto":
            return mode == "always"
        if not self.slots.has_replica(node):
            return False  # a replica, or a primary nothing can replace
        verdict = self._verdicts.get(node.address)
        if verdict is not None and trio.current_time() < verdict[0] + VERDICT_TTL:
            return verdict[1]
        return None

    async def rides_out(self, node: Node) -> bool:
        """:meth:`rides_out_now`, asking the cluster (one caller at a time) when needed."""
        address = node.address
        while True:
            known = self.rides_out_now(node)
            if known is not None:
                return known
            pending = self._pending.get(address)
            if pending is None:
                break
            await pending.wait()  # one caller asks; the others take its answer
        done = self._pending[address] = trio.Event()
        try:
            failing = await self._ask_cluster(node)
            self._verdicts[address] = (trio.current_time(), failing)
        finally:
            del self._pending[address]
            done.set()
        return failing

    async def _ask_cluster(self, node: Node) -> bool:
        """Whether a healthy primary expects ``node``'s failover soon (False if none can
        say)."""
        for witness in self.slots.primaries():
            if witness is node or known_bad(witness):
                continue
            try:
                nodes, now, timeout = await self._ask(
                    witness,
                    [("CLUSTER", "NODES"), ("TIME",), ("CONFIG", "GET", "cluster-node-timeout")],
                )
            except Exception:
                continue
            if isinstance(nodes, Exception) or isinstance(now, Exception):
                continue
            seconds = int(now[0]) + int(now[1]) / 1e6
            eta = failover_eta(
                text(nodes), node.address, self.slots.remap, seconds, _seconds(timeout)
            )
            return eta is not None and -self.soon <= eta <= self.soon
        return False


def _seconds(config_reply: Any) -> float | None:
    """``cluster-node-timeout`` in seconds from a ``CONFIG GET`` reply (a map, or a flat list
    in RESP2), None when refused (a managed service may disable CONFIG) or unreadable."""
    if isinstance(config_reply, dict):
        values = list(config_reply.values())
    elif isinstance(config_reply, list):
        values = config_reply[1::2]
    else:
        return None
    try:
        return int(values[0]) / 1000
    except (IndexError, TypeError, ValueError):
        return None


def _line(nodes: str, address: Address, remap: Callable[[Address], Address]) -> list[str] | None:
    """The fields of the ``CLUSTER NODES`` line naming the node at ``address``."""
    for line in nodes.splitlines():
        fields = line.split()
        if len(fields) >= 8 and _names(fields[1], address, remap):
            return fields
    return None


def _failing(fields: list[str], now: float) -> bool:
    """Whether a ``CLUSTER NODES`` line (read when the witness's clock said ``now``) shows
    its node failing."""
    flags = set(fields[2].split(","))
    if "myself" in flags:
        return False
    ping_sent, pong_received = int(fields[4]), int(fields[5])
    overdue = ping_sent > pong_received and now - ping_sent / 1000 > PING_OVERDUE
    return bool(flags & {"fail", "fail?"}) or fields[7] == "disconnected" or overdue


def cluster_sees_failing(
    nodes: str, address: Address, remap: Callable[[Address], Address], now: float
) -> bool:
    """Whether the ``CLUSTER NODES`` reply ``nodes`` (from another node, whose clock reads
    ``now`` seconds) shows the node at ``address`` (as the client reaches it, after
    ``remap``) failing: flagged ``fail``/``fail?``, its bus link down, or a ping to it
    unanswered for more than :data:`PING_OVERDUE` seconds."""
    fields = _line(nodes, address, remap)
    return fields is not None and _failing(fields, now)


def failover_eta(
    nodes: str,
    address: Address,
    remap: Callable[[Address], Address],
    now: float,
    node_timeout: float | None,
) -> float | None:
    """Seconds until the cluster should promote a replica of the node at ``address``
    (negative: overdue by that much), by :func:`cluster_sees_failing`'s reading of
    ``nodes``; None when the cluster does not see it failing.  ``node_timeout``: the
    cluster's, in seconds (None: unknown, so only a node already flagged ``fail`` has an
    expected promotion, :data:`ELECTION` away)."""
    fields = _line(nodes, address, remap)
    if fields is None or not _failing(fields, now):
        return None
    flagged = "fail" in fields[2].split(",")
    if node_timeout is None:
        return ELECTION if flagged else math.inf
    ping_sent = int(fields[4]) / 1000
    silent = now - ping_sent if ping_sent > 0 else 0.0
    eta = node_timeout - silent + ELECTION
    return min(eta, ELECTION) if flagged else eta


def _names(endpoint: str, address: Address, remap: Callable[[Address], Address]) -> bool:
    """Whether ``ip:port@cport[,hostname]`` names the node the client reaches at
    ``address``."""
    where, _, hostname = endpoint.partition(",")
    host, _, rest = where.rpartition(":")
    try:
        port = int(rest.partition("@")[0])
    except ValueError:
        return False
    candidates = {(host.strip("[]"), port)}
    if hostname:
        candidates.add((hostname, port))
    return any(remap(candidate) == address for candidate in candidates)
