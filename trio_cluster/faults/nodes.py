"""One proxy per cluster node, and trio context managers that inject faults into nodes.

Every fault is an async context manager over one ``ProxiedNode`` or several; it is applied on
entry and undone on exit, also when the block is cancelled or raises: the undo runs in a
shielded cancel scope with its own timeout (``UNDO_TIMEOUT``), so a cancelled caller cannot
leave a node down, and a dead Toxiproxy cannot hang the caller for ever.

Example::

    async with EmbeddedToxiproxy() as tp, NodeProxies.create(tp, [("127.0.0.1", 7000)]) as np:
        async with latency(np.nodes, 100):
            ...
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Final

import trio

from .client import Toxiproxy, ToxiproxyError

__all__ = [
    "UNDO_TIMEOUT",
    "NodeProxies",
    "ProxiedNode",
    "bandwidth",
    "hang",
    "latency",
    "limit_data",
    "node_down",
    "reset_peer",
    "slice",
]

#: Seconds an undo may take before it is abandoned with ``ToxiproxyError``.
UNDO_TIMEOUT: Final = 10.0
_names = itertools.count(1)

#: What every fault returns: use as ``async with fault as nodes:``.
AbstractFault = AbstractAsyncContextManager[list["ProxiedNode"]]


@dataclass(frozen=True)
class ProxiedNode:
    """A node reached through a proxy: ``upstream`` is the real node, ``listen`` the proxy."""

    toxiproxy: Toxiproxy
    proxy: str
    upstream: tuple[str, int]
    listen: tuple[str, int]


Nodes = ProxiedNode | Iterable[ProxiedNode]


def _as_list(nodes: Nodes) -> list[ProxiedNode]:
    return [nodes] if isinstance(nodes, ProxiedNode) else list(nodes)


class NodeProxies:
    """Maps each upstream ``(host, port)`` to the proxy in front of it.

    Create with ``async with NodeProxies.create(tp, nodes) as proxies:``; the proxies are
    deleted on exit.  ``remap`` has the signature of redis-py's ``address_remap``.
    """

    def __init__(self, toxiproxy: Toxiproxy, nodes: dict[tuple[str, int], ProxiedNode]) -> None:
        self.toxiproxy = toxiproxy
        self.by_upstream = nodes

    @classmethod
    @asynccontextmanager
    async def create(
        cls,
        toxiproxy: Toxiproxy,
        upstreams: Iterable[tuple[str, int]],
        *,
        listen_host: str = "127.0.0.1",
        prefix: str = "node",
    ) -> AsyncIterator[NodeProxies]:
        """Create one proxy per upstream on a free port; delete them all on exit."""
        made: dict[tuple[str, int], ProxiedNode] = {}
        try:
            for host, port in upstreams:
                name = f"{prefix}-{host}-{port}"
                info = await toxiproxy.create_proxy(name, f"{host}:{port}", f"{listen_host}:0")
                made[(host, port)] = ProxiedNode(toxiproxy, name, (host, port), info.listen_address)
            yield cls(toxiproxy, made)
        finally:

            async def undo() -> None:
                for node in made.values():
                    await toxiproxy.delete_proxy(node.proxy)

            await _shielded(undo)

    @property
    def nodes(self) -> list[ProxiedNode]:
        """Every proxied node, in creation order."""
        return list(self.by_upstream.values())

    def __getitem__(self, upstream: tuple[str, int]) -> ProxiedNode:
        return self.by_upstream[upstream]

    def address(self, upstream: tuple[str, int]) -> tuple[str, int]:
        """The proxy listen address for an upstream node."""
        return self.by_upstream[upstream].listen

    def remap(self, address: tuple[str, int]) -> tuple[str, int]:
        """Upstream -> proxy address; unknown addresses are returned unchanged."""
        node = self.by_upstream.get(address)
        return node.listen if node is not None else address


async def _shielded(undo: Callable[[], Awaitable[None]]) -> None:
    """Run ``undo`` even if we are being cancelled, bounded by ``UNDO_TIMEOUT``."""
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + UNDO_TIMEOUT
        await undo()
    if scope.cancelled_caught:
        raise ToxiproxyError(None, f"undoing a fault took longer than {UNDO_TIMEOUT} s")


@asynccontextmanager
async def node_down(nodes: Nodes) -> AsyncIterator[list[ProxiedNode]]:
    """Disable the nodes' proxies: live connections drop and new ones are refused."""
    targets = _as_list(nodes)
    done: list[ProxiedNode] = []
    try:
        for node in targets:
            await node.toxiproxy.set_enabled(node.proxy, False)
            done.append(node)
        yield targets
    finally:

        async def undo() -> None:
            for node in done:
                await node.toxiproxy.set_enabled(node.proxy, True)

        await _shielded(undo)


def _streams(stream: str) -> list[str]:
    return ["upstream", "downstream"] if stream == "both" else [stream]


@asynccontextmanager
async def _toxic(
    nodes: Nodes, toxic_type: str, attributes: dict[str, int], stream: str, toxicity: float
) -> AsyncIterator[list[ProxiedNode]]:
    targets = _as_list(nodes)
    added: list[tuple[ProxiedNode, str]] = []
    try:
        for node in targets:
            for direction in _streams(stream):
                name = f"faults_{toxic_type}_{direction}_{next(_names)}"
                await node.toxiproxy.add_toxic(
                    node.proxy,
                    toxic_type,
                    stream=direction,
                    name=name,
                    toxicity=toxicity,
                    attributes=attributes,
                )
                added.append((node, name))
        yield targets
    finally:

        async def undo() -> None:
            for node, name in reversed(added):
                try:
                    await node.toxiproxy.remove_toxic(node.proxy, name)
                except ToxiproxyError as exc:
                    if exc.status != 404:  # already gone (e.g. a reset): nothing to undo
                        raise

        await _shielded(undo)


def hang(nodes: Nodes, *, stream: str = "both", timeout_ms: int = 0) -> AbstractFault:
    """The nodes stop answering: data is dropped and connections held (a ``timeout`` toxic).

    With ``timeout_ms > 0`` the proxy closes a connection after that long with no data.  On
    exit the toxic is removed, which closes the held connections (Toxiproxy semantics).
    """
    return _toxic(nodes, "timeout", {"timeout": timeout_ms}, stream, 1.0)


def latency(
    nodes: Nodes, ms: int, *, jitter_ms: int = 0, stream: str = "downstream", toxicity: float = 1.0
) -> AbstractFault:
    """Delay data by ``ms`` ± ``jitter_ms`` (pipelined: throughput is not capped)."""
    return _toxic(nodes, "latency", {"latency": ms, "jitter": jitter_ms}, stream, toxicity)


def reset_peer(
    nodes: Nodes, *, timeout_ms: int = 0, stream: str = "downstream", toxicity: float = 1.0
) -> AbstractFault:
    """Reset connections (RST for connections made while active) on first data."""
    return _toxic(nodes, "reset_peer", {"timeout": timeout_ms}, stream, toxicity)


def bandwidth(
    nodes: Nodes, rate_kb: int, *, stream: str = "downstream", toxicity: float = 1.0
) -> AbstractFault:
    """Limit throughput to ``rate_kb`` KB/s (KB = 1000 bytes)."""
    return _toxic(nodes, "bandwidth", {"rate": rate_kb}, stream, toxicity)


def slice(
    nodes: Nodes,
    average_size: int,
    *,
    size_variation: int = 0,
    delay_us: int = 0,
    stream: str = "downstream",
    toxicity: float = 1.0,
) -> AbstractFault:
    """Cut data into pieces of about ``average_size`` bytes, ``delay_us`` µs apart."""
    attrs = {"average_size": average_size, "size_variation": size_variation, "delay": delay_us}
    return _toxic(nodes, "slicer", attrs, stream, toxicity)


def limit_data(
    nodes: Nodes, nbytes: int, *, stream: str = "downstream", toxicity: float = 1.0
) -> AbstractFault:
    """Close each connection after ``nbytes`` bytes in ``stream``."""
    return _toxic(nodes, "limit_data", {"bytes": nbytes}, stream, toxicity)
