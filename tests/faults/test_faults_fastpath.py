"""The no-toxic fast path (a link writes each chunk straight on) and its hand-offs to the
toxic chain and back, without losing or reordering a byte."""

from __future__ import annotations

import functools

import trio
from faults_helpers import Backend, read_exactly, read_until_eof, roundtrip

from trio_cluster.faults import Toxiproxy


async def test_backpressure_short_writes_lose_nothing(toxi: Toxiproxy, backend: Backend) -> None:
    # The client does not read for a while: the proxy's writes to it come up short, and the
    # rest of each chunk must still go out, in order.
    info = await toxi.create_proxy("p", backend.address)
    s = await trio.open_tcp_stream(*info.listen_address)
    payload = b"".join(i.to_bytes(4, "big") for i in range(2_000_000))  # 8 MB
    async with trio.open_nursery() as n:
        n.start_soon(s.send_all, payload)
        await trio.sleep(0.3)
        assert await read_exactly(s, len(payload)) == payload


async def test_toxic_churn_both_directions_while_streaming(
    toxi: Toxiproxy, backend: Backend
) -> None:
    info = await toxi.create_proxy("p", backend.address)
    s = await trio.open_tcp_stream(*info.listen_address)
    payload = b"".join(i.to_bytes(3, "big") for i in range(200_000))
    received = bytearray()

    async def churn() -> None:
        for i in range(30):
            stream = ("upstream", "downstream")[i % 2]
            kind = ("latency", "slicer", "noop", "bandwidth")[i % 4]
            name = await toxi.add_toxic(
                "p",
                kind,
                stream=stream,
                attributes={"latency": 1, "average_size": 500, "delay": 5, "rate": 100_000},
            )
            await trio.sleep(0.005)
            await toxi.remove_toxic("p", name)

    async def reader() -> None:
        received.extend(await read_exactly(s, len(payload)))

    async with trio.open_nursery() as n:
        n.start_soon(churn)
        n.start_soon(reader)
        for i in range(0, len(payload), 3000):
            await s.send_all(payload[i : i + 3000])
    assert received == payload


async def test_reconnect_after_disable_no_crosstalk(toxi: Toxiproxy, backend: Backend) -> None:
    # Closed sockets give their numbers to new ones: no new link may see an old one's bytes.
    info = await toxi.create_proxy("p", backend.address)
    for round_ in range(3):
        streams = [await trio.open_tcp_stream(*info.listen_address) for _ in range(10)]
        for i, s in enumerate(streams):
            await roundtrip(s, b"round %d stream %d" % (round_, i))
        await toxi.set_enabled("p", False)
        for s in streams:
            assert await read_until_eof(s) == b""
            await s.aclose()
        await toxi.set_enabled("p", True)


async def test_server_close_reaches_client(toxi: Toxiproxy, nursery: trio.Nursery) -> None:
    async def handler(stream: trio.SocketStream) -> None:
        await stream.receive_some(100)
        await stream.send_all(b"bye")
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    info = await toxi.create_proxy("p", f"127.0.0.1:{port}")
    s = await trio.open_tcp_stream(*info.listen_address)
    await s.send_all(b"hi")
    assert await read_until_eof(s) == b"bye"
