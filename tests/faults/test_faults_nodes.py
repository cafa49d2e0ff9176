"""The trio fault API: one proxy per node, faults applied and always undone."""

from __future__ import annotations

import pytest
import trio
from faults_helpers import Backend, read_exactly, read_until_eof

from trio_cluster.faults import Toxiproxy
from trio_cluster.faults.nodes import (
    NodeProxies,
    bandwidth,
    hang,
    latency,
    limit_data,
    node_down,
    reset_peer,
    slice,
)


async def rt(addr: tuple[str, int], payload: bytes = b"ping") -> float:
    s = await trio.open_tcp_stream(*addr)
    async with s:
        start = trio.current_time()
        await s.send_all(payload)
        assert await read_exactly(s, len(payload)) == payload
        return trio.current_time() - start


async def test_node_proxies_map_and_cleanup(toxi: Toxiproxy, backend: Backend) -> None:
    upstream = ("127.0.0.1", backend.port)
    async with NodeProxies.create(toxi, [upstream]) as np:
        listen = np.address(upstream)
        assert np.remap(upstream) == listen and np.remap(("h", 1)) == ("h", 1)
        assert await rt(listen) < 0.5
        assert len(await toxi.proxies()) == 1
    assert await toxi.proxies() == {}


async def test_node_down_undone_even_when_cancelled(toxi: Toxiproxy, backend: Backend) -> None:
    async with NodeProxies.create(toxi, [("127.0.0.1", backend.port)]) as np:
        node = np.nodes[0]
        with trio.move_on_after(0.2):
            async with node_down(node):
                with pytest.raises(OSError):
                    await trio.open_tcp_stream(*node.listen)
                await trio.sleep_forever()
        assert (await toxi.proxies())[node.proxy].enabled
        assert await rt(node.listen) < 0.5


async def test_latency_and_hang_over_nodes(toxi: Toxiproxy, nursery: trio.Nursery) -> None:
    backends = [Backend(), Backend()]
    import functools

    for b in backends:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, b.handler, 0, host="127.0.0.1")
        )
        b.port = listeners[0].socket.getsockname()[1]
    async with NodeProxies.create(toxi, [("127.0.0.1", b.port) for b in backends]) as np:
        async with latency(np.nodes, 100):
            for node in np.nodes:
                assert 0.09 <= await rt(node.listen) < 1.0
        assert await toxi.toxics(np.nodes[0].proxy) == {}
        async with hang(np.nodes[1]):
            s = await trio.open_tcp_stream(*np.nodes[1].listen)
            await s.send_all(b"x")
            with trio.move_on_after(0.2) as held:
                await s.receive_some(1)
            assert held.cancelled_caught
        assert await read_until_eof(s) == b""  # removing the hang closes held connections
        assert await rt(np.nodes[1].listen) < 0.5


@pytest.mark.parametrize("fault", ["bandwidth", "slice", "limit_data", "reset_peer"])
async def test_other_faults_apply_and_undo(toxi: Toxiproxy, backend: Backend, fault: str) -> None:
    async with NodeProxies.create(toxi, [("127.0.0.1", backend.port)]) as np:
        node = np.nodes[0]
        cm = {
            "bandwidth": lambda: bandwidth(node, 100),
            "slice": lambda: slice(node, 2, delay_us=10),
            "limit_data": lambda: limit_data(node, 2),
            "reset_peer": lambda: reset_peer(node),
        }[fault]()
        async with cm:
            toxics = await toxi.toxics(node.proxy)
            assert len(toxics) == 1
        assert await toxi.toxics(node.proxy) == {}
        assert await rt(node.listen) < 0.5
