"""Maintenance-notification injection in front of a real server, read with hiredis."""

from __future__ import annotations

from typing import Any

import hiredis
import trio

from trio_cluster.faults.inject import MaintInjector
from trio_cluster.faults.resp import frame_end, push


def cmd(*args: str | bytes) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        data = a.encode() if isinstance(a, str) else a
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.pushes: list[Any] = []

    async def reply(self) -> Any:
        """The next reply; push frames met on the way are parsed (hiredis) into .pushes."""
        while True:
            end = frame_end(self.buf)
            if end is None:
                data = await self.stream.receive_some(65536)
                assert data, "EOF"
                self.buf += data
                continue
            frame = bytes(self.buf[:end])
            del self.buf[:end]
            reader = hiredis.Reader()
            reader.feed(frame)
            value = reader.gets()
            if frame.startswith(b">"):
                self.pushes.append(value)
            else:
                return value


async def connect(addr: tuple[str, int]) -> Client:
    c = Client(await trio.open_tcp_stream(*addr))
    await c.stream.send_all(
        cmd("HELLO", "3")
        + cmd("CLIENT", "MAINT_NOTIFICATIONS", "ON", "moving-endpoint-type", "internal-ip")
    )
    hello = await c.reply()
    assert isinstance(hello, dict), hello
    assert await c.reply() == b"OK"  # answered by the proxy, in order after HELLO
    return c


def test_frame_end_scanner() -> None:
    frames = [
        b"+OK\r\n",
        b"$3\r\nabc\r\n",
        b"*2\r\n:1\r\n$-1\r\n",
        b"%1\r\n+a\r\n:2\r\n",
        b">2\r\n$4\r\nping\r\n*0\r\n",
        b"|1\r\n+k\r\n+v\r\n:5\r\n",
        b"PING\r\n",
    ]
    for frame in frames:
        assert frame_end(frame + b"+next\r\n") == len(frame)
        for cut in range(len(frame)):
            assert frame_end(frame[:cut]) is None


async def test_handshake_moving_and_boundaries(redis_port: int) -> None:
    async with MaintInjector(("127.0.0.1", redis_port), listen=[("127.0.0.1", 0)] * 2) as inj:
        assert len(inj.addresses) == 2
        c = await connect(inj.addresses[0])
        await inj.wait_connections(lambda conns: len(conns) == 1)
        conn = inj.connections()[0]
        assert conn.maint_enabled and conn.listen == inj.addresses[0]
        # A large reply arrives in many chunks; the push must land before or after it, whole.
        big = "v" * 300_000
        await c.stream.send_all(cmd("SET", "k", big) + cmd("GET", "k"))
        assert await c.reply() == b"OK"
        endpoint = f"{inj.addresses[1][0]}:{inj.addresses[1][1]}"
        async with trio.open_nursery() as n:
            n.start_soon(inj.send_moving, None, 7, 15, endpoint)
            assert await c.reply() == big.encode()
        await c.stream.send_all(cmd("PING"))
        assert await c.reply() == b"PONG"
        assert c.pushes == [[b"MOVING", 7, 15, endpoint.encode()]]
        # The handoff target: a second address of the same node.
        c2 = await connect(inj.addresses[1])
        await c2.stream.send_all(cmd("GET", "k"))
        assert await c2.reply() == big.encode()


async def test_every_notification_type_and_filters(redis_port: int) -> None:
    async with MaintInjector(("127.0.0.1", redis_port)) as inj:
        a = await connect(inj.addresses[0])
        b = await connect(inj.addresses[0])
        await inj.wait_connections(lambda conns: len(conns) == 2)
        first = inj.connections()[0].id
        await inj.send_migrating([first], 1, 1234)
        await inj.send_migrated(lambda c: c.id == first, 2, 1234)
        await inj.send_failing_over([first], 3)
        await inj.send_failed_over([first], 4)
        await inj.send_smigrating([first], 5, ["100", "200-300"])
        await inj.send_smigrated([first], 6, [("127.0.0.1:1", "127.0.0.1:2", "100,200-300")])
        await inj.send_moving([first], 8, 5, None)
        for c in (a, b):
            await c.stream.send_all(cmd("PING"))
            assert await c.reply() == b"PONG"
        assert a.pushes == [
            [b"MIGRATING", 1, b"1234"],
            [b"MIGRATED", 2, b"1234"],
            [b"FAILING_OVER", 3],
            [b"FAILED_OVER", 4],
            [b"SMIGRATING", 5, b"100", b"200-300"],
            [b"SMIGRATED", 6, [[b"127.0.0.1:1", b"127.0.0.1:2", b"100,200-300"]]],
            [b"MOVING", 8, 5],
        ]
        assert b.pushes == []
        assert push("X", None) == b">2\r\n$1\r\nX\r\n_\r\n"


async def test_pipelined_handshake_keeps_reply_order(redis_port: int) -> None:
    async with MaintInjector(("127.0.0.1", redis_port)) as inj:
        c = Client(await trio.open_tcp_stream(*inj.addresses[0]))
        await c.stream.send_all(
            cmd("HELLO", "3")
            + cmd("SET", "a", "1")
            + cmd("CLIENT", "MAINT_NOTIFICATIONS", "ON")
            + cmd("GET", "a")
        )
        assert isinstance(await c.reply(), dict)
        assert [await c.reply() for _ in range(3)] == [b"OK", b"OK", b"1"]
