"""A small RESP server on a real local socket (trio), scripted by each test, for hostile replies.

It answers the handshake (``HELLO``, ``CLIENT ...``), the cluster discovery (``CLUSTER SHARDS``
is refused, so clients fall back to ``CLUSTER SLOTS``, which names this server for every slot;
``COMMAND`` describes GET, SET and BLPOP) and ``GET``/``SET`` with correct replies: ``GET k``
answers ``v:k``.  A test passes ``reply``, called for every command first: it returns the raw
bytes to send, or None for the correct reply.  ``stream`` replaces the reply to GET, SET and
BLPOP by a coroutine that owns the socket (to keep sending forever, or to hold a reply back
as a blocking command does).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import hiredis
import trio

ReplyHook = Callable[[list[bytes]], bytes | None]
StreamHook = Callable[[list[bytes], trio.SocketStream], Awaitable[None]]

COMMAND_REPLY = (
    b"*3\r\n"
    b"*6\r\n$3\r\nget\r\n:2\r\n*1\r\n+readonly\r\n:1\r\n:1\r\n:1\r\n"
    b"*6\r\n$3\r\nset\r\n:-3\r\n*1\r\n+write\r\n:1\r\n:1\r\n:1\r\n"
    b"*6\r\n$5\r\nblpop\r\n:-3\r\n*2\r\n+write\r\n+blocking\r\n:1\r\n:-2\r\n:1\r\n"
)


def bulk(value: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class FakeRedis:
    """Serve until the nursery is cancelled; ``port`` is set once :meth:`start` returns."""

    def __init__(self, reply: ReplyHook | None = None, stream: StreamHook | None = None) -> None:
        self.reply = reply
        self.stream = stream
        self.port = 0
        #: Every command received (name and arguments), across connections, in order.
        self.commands: list[list[bytes]] = []
        #: How many connections were accepted.
        self.connections = 0

    async def start(self, nursery: trio.Nursery) -> FakeRedis:
        serve = functools.partial(trio.serve_tcp, self._serve, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def _serve(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        reader = hiredis.Reader()
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    args: list[bytes] = list(command)
                    self.commands.append(args)
                    name = args[0].upper()
                    if self.stream is not None and name in (b"GET", b"SET", b"BLPOP"):
                        await self.stream(args, stream)
                        continue
                    out = self.reply(args) if self.reply is not None else None
                    await stream.send_all(out if out is not None else self._answer(args))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def _answer(self, args: list[bytes]) -> bytes:
        name = b" ".join(a.upper() for a in args[:2])
        if name.startswith(b"HELLO"):
            return b"%1\r\n$6\r\nserver\r\n$4\r\nfake\r\n"
        if name == b"CLIENT ID":
            return b":7\r\n"
        if name.startswith(b"CLIENT MAINT"):
            return b"-ERR unknown subcommand\r\n"
        if name.startswith(b"CLIENT") or name.startswith(b"READONLY"):
            return b"+OK\r\n"
        if name == b"CLUSTER SHARDS":
            return b"-ERR unknown command 'CLUSTER|SHARDS'\r\n"
        if name == b"CLUSTER SLOTS":
            return b"*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n%s:%d\r\n" % (
                bulk(b"127.0.0.1"),
                self.port,
            )
        if name.startswith(b"COMMAND"):
            return COMMAND_REPLY
        if name.startswith(b"GET"):
            return bulk(b"v:" + args[1])
        if name.startswith(b"SET"):
            return b"+OK\r\n"
        if name.startswith(b"PING"):
            return b"+PONG\r\n"
        return b"-ERR fake server does not know " + args[0] + b"\r\n"


_PUMP = """
import socket, sys, time
raw = socket.socket(fileno=int(sys.argv[1]))
raw.setblocking(True)
header, chunk = sys.argv[2].encode("latin-1"), sys.argv[3].encode("latin-1") * int(sys.argv[4])
total = int(sys.argv[5])
try:
    raw.sendall(header)
    sent = 0
    while total < 0 or sent < total:
        raw.sendall(chunk)
        sent += len(chunk)
    time.sleep(3600)  # quiet, the connection open: as a server that stopped mid-reply
except OSError:
    pass
"""


async def pump(
    stream: trio.SocketStream, header: bytes, unit: bytes, times: int, total: int | None = None
) -> None:
    """Send ``header``, then ``unit * times`` over and over until the client hangs up, or
    until ``total`` bytes of units went out (then hold the connection open, sending nothing).

    The writes happen in a child process on the same socket, so the client's receive buffer
    stays full whatever this process does: bytes are always there to read, and the client
    never has to wait for them (nor does its event loop share any work with this server's).
    Cancelling this call kills the child.
    """
    fd = stream.socket.fileno()
    await trio.run_process(
        [sys.executable, "-c", _PUMP, str(fd), header.decode("latin-1"),
         unit.decode("latin-1"), str(times), str(-1 if total is None else total)],
        pass_fds=(fd,),
        check=False,
    )  # fmt: skip


def correct(args: list[bytes]) -> Any:
    """What a correct server answers to ``GET k`` (as the client returns it)."""
    return b"v:" + args[1]
