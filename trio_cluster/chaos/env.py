"""Where a run happens: a cluster (local, or an external one by URL) behind one proxy per node.

The client always reaches the nodes through proxies chaos created itself (named
``chaos-<run id>-...``), via ``address_remap``; nothing else on a shared Toxiproxy is touched.
Process faults (SIGSTOP, kill, restart) and admin commands (failover, resharding) need the
local cluster, whose processes this run started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from trio_cluster import ClusterClient, redact_url
from trio_cluster.faults import EmbeddedToxiproxy, Toxiproxy
from trio_cluster.faults.nodes import NodeProxies, ProxiedNode
from trio_cluster.testing import LocalCluster, LocalServer

from .address import Address
from .redact import Redactor
from .target import ClusterTarget

__all__ = ["Environment", "SetupError", "open_environment"]


class SetupError(RuntimeError):
    """The cluster or the proxies could not be set up (exit status 2)."""


@dataclass
class Environment:
    """A cluster, its proxies and how to reach them."""

    proxies: NodeProxies
    upstreams: list[Address]
    run_id: str
    cluster: LocalCluster | None = None
    client_options: Mapping[str, Any] = field(default_factory=dict)
    """Connection keywords from the cluster URL (credentials, TLS, db): ``target.options``."""
    redactor: Redactor = field(default_factory=Redactor)
    """Every secret of the run (see ``chaos.redact``)."""

    @property
    def local(self) -> bool:
        """Whether chaos started the cluster itself (process faults allowed)."""
        return self.cluster is not None

    @property
    def startup_nodes(self) -> list[Address]:
        """Proxy addresses of every node."""
        return [Address.of(self.proxies.address(a)) for a in self.upstreams]

    def node_names(self) -> dict[Address, Address]:
        """Proxy address (how the client names a node) -> the node's real address."""
        return {Address.of(n.listen): Address.of(n.upstream) for n in self.proxies.nodes}

    def proxied(self, address: Address) -> ProxiedNode:
        """The proxied node for an upstream *or* a proxy address."""
        if address in self.proxies.by_upstream:
            return self.proxies[address]
        for node in self.proxies.nodes:
            if node.listen == address:
                return node
        raise KeyError(f"no proxy for {address}")

    def real(self, node: ProxiedNode) -> Address:
        """The real address of a proxied node."""
        return Address.of(node.upstream)

    def server(self, address: Address) -> LocalServer:
        """The local process behind an upstream or proxy address (local clusters only)."""
        if self.cluster is None:
            raise SetupError("process faults need --cluster local")
        return self.cluster.node(self.proxied(address).upstream[1])

    def client(self, **options: Any) -> ClusterClient:
        """A client that reaches every node through its proxy (unless ``options`` give
        another ``address_remap``, e.g. one through fault tools chained before the proxies)."""
        kwargs: dict[str, Any] = {
            "startup_nodes": self.startup_nodes,
            "address_remap": self.proxies.remap,
            **self.client_options,
            **options,
        }
        return ClusterClient(**kwargs)

    async def primaries(self) -> list[Address]:
        """Upstream addresses of the current primaries (asked of the cluster itself)."""
        if self.cluster is not None:
            await self.cluster.refresh_roles()
            return [Address.of(p.address) for p in self.cluster.primaries]
        async with self.client() as rc:
            shards = rc.topology.shards
            return [self.real(self.proxied(Address.of(s.primary))) for s in shards]

    async def client_counts(self) -> dict[int, int]:
        """Per-node client counts (local clusters only; empty otherwise)."""
        if self.cluster is None:
            return {}
        return await self.cluster.client_counts()


async def _discover(target: ClusterTarget) -> list[Address]:
    """Every node of the cluster ``target`` names, primaries first."""
    assert target.seed is not None
    with trio.fail_after(15):
        async with ClusterClient(startup_nodes=[target.seed], **target.options) as rc:
            return [Address.of(node) for node in rc.topology.nodes]


@asynccontextmanager
async def _toxiproxy(spec: str) -> AsyncIterator[Toxiproxy]:
    if spec == "embedded":
        async with EmbeddedToxiproxy() as tp:
            yield tp
        return
    tp = Toxiproxy(spec)
    try:
        with trio.fail_after(10):
            await tp.version()
    except Exception as exc:
        raise SetupError(
            f"Toxiproxy at {redact_url(spec)} does not answer: {_one_line(exc)}"
        ) from exc
    yield tp


@asynccontextmanager
async def open_environment(
    target: ClusterTarget, toxiproxy: str, run_id: str, *, masters: int = 3
) -> AsyncIterator[Environment]:
    """Start (a local target) or discover (a URL) a cluster and put a proxy in front of every
    node; undo it all on exit.  An external cluster is reached before any proxy is started,
    so a wrong URL fails fast whatever the proxy mode."""
    if not target.local:
        try:
            upstreams = await _discover(target)
        except Exception as exc:
            raise SetupError(f"cannot reach the cluster at {target.shown}: "
                             f"{_one_line(exc)}") from exc  # fmt: skip
        async with (
            _toxiproxy(toxiproxy) as tp,
            NodeProxies.create(tp, upstreams, prefix=f"chaos-{run_id}") as proxies,
        ):
            yield Environment(proxies, upstreams, run_id, None, target.options)
        return
    try:
        # AOF, so that a restarted primary comes back with its data (as in production).
        local = LocalCluster(
            masters=masters,
            replicas_per_master=1,
            cluster_node_timeout_ms=1000,
            extra_args=("--appendonly", "yes"),
        )
    except Exception as exc:
        raise SetupError(f"cannot start a local cluster: {_one_line(exc)}") from exc
    async with (
        _toxiproxy(toxiproxy) as tp,
        local,
        NodeProxies.create(tp, local.startup_nodes, prefix=f"chaos-{run_id}") as proxies,
    ):
        upstreams = [Address.of(node) for node in local.startup_nodes]
        yield Environment(proxies, upstreams, run_id, local)


def _one_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
