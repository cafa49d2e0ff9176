"""A RESP-aware proxy that adds maintenance notifications to any real Redis/Valkey node.

``MaintInjector`` sits in front of one upstream node, on one or more listen addresses (a
second address lets a test send MOVING pointing at "another endpoint" of the same node).  It:

* answers ``CLIENT MAINT_NOTIFICATIONS ...`` with ``+OK`` itself (the server may not know the
  command) and does not forward it; the ``+OK`` keeps its place in the reply order;
* frames the server->client stream into complete RESP replies and writes only whole replies,
  so an injected push frame always lands between two replies, never inside one;
* lists its live client connections, so a test can target them;
* injects MOVING, MIGRATING, MIGRATED, FAILING_OVER, FAILED_OVER, SMIGRATING and SMIGRATED
  RESP3 push frames, in go-redis's formats (``MOVING seq seconds [host:port]``,
  ``MIGRATING seq slot``...).

Reply order bookkeeping assumes one reply per forwarded command (true for RESP3 and for
everything a handshake sends); in RESP2 pub/sub mode a local ``+OK`` could be misplaced.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from .lifetime import TaskOwner
from .resp import ProtocolError, frame_end, parse_command, push

__all__ = ["ConnFilter", "InjectedConnection", "MaintInjector"]

RECV_SIZE: Final = 65536
_OK: Final = b"+OK\r\n"
_UPSTREAM: Final = None  # marker in the reply-order queue: "the next upstream reply"
_ids = itertools.count(1)


@dataclass(eq=False)
class InjectedConnection:
    """One live client connection through the injector."""

    id: int
    peer: tuple[str, int]
    listen: tuple[str, int]
    #: Arguments of the last ``CLIENT MAINT_NOTIFICATIONS`` the client sent (None: never).
    maint_args: list[bytes] | None = None
    client: trio.SocketStream | None = field(default=None, repr=False)
    write_lock: trio.Lock = field(default_factory=trio.Lock, repr=False)
    #: Replies owed to the client, in order: _UPSTREAM for one upstream reply, or local bytes.
    order: deque[bytes | None] = field(default_factory=deque, repr=False)

    @property
    def maint_enabled(self) -> bool:
        """True when the client sent ``CLIENT MAINT_NOTIFICATIONS ON ...``."""
        return bool(self.maint_args) and self.maint_args[0].upper() == b"ON"  # type: ignore[index]


async def _frames(stream: trio.SocketStream) -> AsyncIterator[list[bytes]]:
    """The whole RESP frames each read from ``stream`` completes (a partial frame waits for
    the next read), until the peer closes."""
    buf = bytearray()
    while data := await stream.receive_some(RECV_SIZE):
        buf += data
        frames = []
        pos = 0
        while (end := frame_end(buf, pos)) is not None:
            frames.append(bytes(buf[pos:end]))
            pos = end
        del buf[:pos]
        yield frames


#: Which connections to inject into: None (all), a predicate, or a collection of ids.
ConnFilter = Callable[[InjectedConnection], bool] | Collection[int] | None


def _select(
    conns: Sequence[InjectedConnection], conn_filter: ConnFilter
) -> list[InjectedConnection]:
    if conn_filter is None:
        return list(conns)
    if callable(conn_filter):
        return [c for c in conns if conn_filter(c)]
    wanted = set(conn_filter)
    return [c for c in conns if c.id in wanted]


class MaintInjector(TaskOwner):
    """``async with MaintInjector(("127.0.0.1", 6379)) as inj:`` proxies and injects."""

    def __init__(
        self, upstream: tuple[str, int], listen: Sequence[tuple[str, int]] = (("127.0.0.1", 0),)
    ) -> None:
        self.upstream = upstream
        self._listen = list(listen)
        self.addresses: list[tuple[str, int]] = []
        self._conns: dict[int, InjectedConnection] = {}
        self._changed = trio.Event()

    async def _start(self, nursery: trio.Nursery) -> None:
        for host, port in self._listen:
            await self.add_listener(host, port)

    async def add_listener(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on one more address for the same upstream; returns the real address."""
        assert self._nursery is not None, "use MaintInjector in an async with block"
        listeners = await trio.open_tcp_listeners(port, host=host)
        sockname = listeners[0].socket.getsockname()
        address = (str(sockname[0]), int(sockname[1]))
        self.addresses.append(address)

        async def handler(stream: trio.SocketStream) -> None:
            await self._handle(stream, address)

        await self._nursery.start(trio.serve_listeners, handler, listeners)
        return address

    # --- connections -----------------------------------------------------------------------

    def connections(self) -> list[InjectedConnection]:
        """The live client connections, oldest first."""
        return list(self._conns.values())

    async def wait_connections(self, predicate: Callable[[list[InjectedConnection]], bool]) -> None:
        """Wait until ``predicate(self.connections())`` holds (re-checked on every change)."""
        while not predicate(self.connections()):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _handle(self, client: trio.SocketStream, listen: tuple[str, int]) -> None:
        peer = client.socket.getpeername()
        conn = InjectedConnection(next(_ids), (str(peer[0]), int(peer[1])), listen, client=client)
        try:
            upstream = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            await client.aclose()
            return
        self._conns[conn.id] = conn
        self._notify()
        try:
            async with upstream, client, trio.open_nursery() as nursery:

                async def client_to_server() -> None:
                    await self._client_to_server(conn, client, upstream)
                    nursery.cancel_scope.cancel()

                async def server_to_client() -> None:
                    await self._server_to_client(conn, upstream, client)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(client_to_server)
                nursery.start_soon(server_to_client)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError, OSError):
            pass  # either side went away or spoke garbage: the connection is over
        finally:
            del self._conns[conn.id]
            self._notify()

    async def _client_to_server(
        self, conn: InjectedConnection, client: trio.SocketStream, upstream: trio.SocketStream
    ) -> None:
        async for frames in _frames(client):
            out = bytearray()
            for frame in frames:
                args = parse_command(frame)
                if (
                    len(args) >= 2
                    and args[0].upper() == b"CLIENT"
                    and args[1].upper() == b"MAINT_NOTIFICATIONS"
                ):
                    conn.maint_args = args[2:]
                    if out:  # earlier commands first: their replies are owed before our +OK
                        await upstream.send_all(bytes(out))
                        out.clear()
                    await self._reply_locally(conn, _OK)
                    continue
                conn.order.append(_UPSTREAM)
                out += frame
            if out:
                await upstream.send_all(bytes(out))

    async def _reply_locally(self, conn: InjectedConnection, reply: bytes) -> None:
        async with conn.write_lock:
            if conn.order:
                conn.order.append(reply)  # written right after the replies owed before it
            else:
                assert conn.client is not None
                await conn.client.send_all(reply)

    async def _server_to_client(
        self, conn: InjectedConnection, upstream: trio.SocketStream, client: trio.SocketStream
    ) -> None:
        async for frames in _frames(upstream):
            # Hold the lock from popping the reply order to writing: a local +OK decided
            # meanwhile must see either the reply still owed or already written.  Only whole
            # replies are written under this lock, and injections take it too, so an injected
            # frame always falls between two replies.
            async with conn.write_lock:
                out = bytearray()
                for frame in frames:
                    out += frame
                    if not frame.startswith(b">") and conn.order:  # a reply, not a push
                        conn.order.popleft()
                        while conn.order and conn.order[0] is not _UPSTREAM:
                            out += conn.order.popleft() or b""
                if out:
                    await client.send_all(bytes(out))

    # --- injection ---------------------------------------------------------------------------

    async def inject(self, conn_filter: ConnFilter, frame: bytes) -> list[InjectedConnection]:
        """Write ``frame`` to each selected connection at a reply boundary; returns them."""
        targets = _select(self.connections(), conn_filter)
        for conn in targets:
            async with conn.write_lock:
                if conn.client is not None and conn.id in self._conns:
                    # If it closed meanwhile there is nobody left to notify.
                    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await conn.client.send_all(frame)
        return targets

    async def send_moving(
        self, conn_filter: ConnFilter, seq: int, seconds: int, endpoint: str | None
    ) -> list[InjectedConnection]:
        """``MOVING seq seconds endpoint`` (3-element form when ``endpoint`` is None)."""
        elements: list[bytes | str | int | None] = ["MOVING", seq, seconds]
        if endpoint is not None:
            elements.append(endpoint)
        return await self.inject(conn_filter, push(*elements))

    async def send_migrating(
        self, conn_filter: ConnFilter, seq: int, slot: int | str = 0
    ) -> list[InjectedConnection]:
        """``MIGRATING seq slot`` (the slot as a bulk string, as the e2e injector sends)."""
        return await self.inject(conn_filter, push("MIGRATING", seq, str(slot)))

    async def send_migrated(
        self, conn_filter: ConnFilter, seq: int, slot: int | str = 0
    ) -> list[InjectedConnection]:
        """``MIGRATED seq slot``."""
        return await self.inject(conn_filter, push("MIGRATED", seq, str(slot)))

    async def send_failing_over(
        self, conn_filter: ConnFilter, seq: int
    ) -> list[InjectedConnection]:
        """``FAILING_OVER seq``."""
        return await self.inject(conn_filter, push("FAILING_OVER", seq))

    async def send_failed_over(self, conn_filter: ConnFilter, seq: int) -> list[InjectedConnection]:
        """``FAILED_OVER seq``."""
        return await self.inject(conn_filter, push("FAILED_OVER", seq))

    async def send_smigrating(
        self, conn_filter: ConnFilter, seq: int, slots: Sequence[str | int]
    ) -> list[InjectedConnection]:
        """``SMIGRATING seq slot-or-range...`` (e.g. ``["1000", "2000-2999"]``)."""
        return await self.inject(conn_filter, push("SMIGRATING", seq, *[str(s) for s in slots]))

    async def send_smigrated(
        self, conn_filter: ConnFilter, seq: int, moves: Sequence[tuple[str, str, str]]
    ) -> list[InjectedConnection]:
        """``SMIGRATED seq [[src, dst, "s1,s2,a-b"], ...]`` (the handler's triplet form)."""
        triplets = [[src, dst, slots] for src, dst, slots in moves]
        return await self.inject(conn_filter, push("SMIGRATED", seq, triplets))
