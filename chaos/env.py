"""Where a run happens: a cluster (local, or an external one by URL) behind one proxy per node.

The client always reaches the nodes through proxies chaos created itself (named
``chaos-<run id>-...``), via ``address_remap``; nothing else on a shared Toxiproxy is touched.
Process faults (SIGSTOP, kill, restart) and admin commands (failover, resharding) need the
local cluster, whose processes this run started.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from faults import EmbeddedToxiproxy, Toxiproxy
from faults.nodes import NodeProxies, ProxiedNode
from trio_cluster import ClusterClient
from trio_cluster.config import parse_url, redact_url
from trio_cluster.testing import LocalCluster
from trio_cluster.testing.servers import LocalServer

from .redact import Redactor

__all__ = ["Environment", "SetupError", "open_environment"]

Address = tuple[str, int]


class SetupError(RuntimeError):
    """The cluster or the proxies could not be set up (exit status 2)."""


@dataclass
class Environment:
    """A cluster, its proxies and how to reach them."""

    proxies: NodeProxies
    upstreams: list[Address]
    run_id: str
    cluster: LocalCluster | None = None
    client_options: dict[str, Any] = field(default_factory=dict)
    """Connection keywords from the cluster URL (credentials, TLS, db)."""
    redactor: Redactor = field(default_factory=Redactor)
    """Every secret of the run (see ``chaos.redact``)."""

    @property
    def local(self) -> bool:
        """Whether chaos started the cluster itself (process faults allowed)."""
        return self.cluster is not None

    @property
    def startup_nodes(self) -> list[Address]:
        """Proxy addresses of every node."""
        return [self.proxies.address(a) for a in self.upstreams]

    def node_names(self) -> dict[str, str]:
        """Proxy ``host:port`` (how the client names a node) -> the node's real ``host:port``."""
        return {
            f"{n.listen[0]}:{n.listen[1]}": f"{n.upstream[0]}:{n.upstream[1]}"
            for n in self.proxies.nodes
        }

    def proxied(self, address: Address) -> ProxiedNode:
        """The proxied node for an upstream *or* a proxy address."""
        if address in self.proxies.by_upstream:
            return self.proxies[address]
        for node in self.proxies.nodes:
            if node.listen == address:
                return node
        raise KeyError(f"no proxy for {address}")

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
            return [p.address for p in self.cluster.primaries]
        async with self.client() as rc:
            shards = rc.topology.shards
            return [self.proxied(s.primary).upstream for s in shards]

    async def client_counts(self) -> dict[int, int]:
        """Per-node client counts (local clusters only; empty otherwise)."""
        if self.cluster is None:
            return {}
        return await self.cluster.client_counts()


async def _discover(url: str) -> tuple[list[Address], dict[str, Any]]:
    options = parse_url(url)
    options.pop("host", None)
    options.pop("port", None)
    with trio.fail_after(15):
        async with ClusterClient.from_url(url) as rc:
            nodes: list[Address] = []
            for shard in rc.topology.shards:
                nodes += [shard.primary, *shard.replicas]
    return nodes, options


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
    cluster: str, toxiproxy: str, run_id: str, *, masters: int = 3
) -> AsyncIterator[Environment]:
    """Start (``cluster="local"``) or discover (a ``redis://`` URL) a cluster and put a proxy
    in front of every node; undo it all on exit.  An external cluster is reached before any
    proxy is started, so a wrong URL fails fast whatever the proxy mode."""
    if cluster != "local":
        try:
            upstreams, options = await _discover(cluster)
        except Exception as exc:
            raise SetupError(f"cannot reach the cluster at {redact_url(cluster)}: "
                             f"{_one_line(exc)}") from exc  # fmt: skip
        async with (
            _toxiproxy(toxiproxy) as tp,
            NodeProxies.create(tp, upstreams, prefix=f"chaos-{run_id}") as proxies,
        ):
            yield Environment(proxies, upstreams, run_id, None, options)
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
        yield Environment(proxies, local.startup_nodes, run_id, local)


def _one_line(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
