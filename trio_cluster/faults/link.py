"""One proxied connection: its two links, each a reader and a writer joined by a queue.

A connection has two links (``upstream`` = client to server, ``downstream`` = server to
client).  A link's reader waits on its source socket through trio's own I/O (no fd of its
own) and reads with one ``os.read``.  While its direction has no toxic and nothing is queued,
it writes the chunk straight on with one ``os.write`` (the fast path); otherwise the chunk,
stamped with its read time, goes through the queue, and the writer runs it through the toxic
chain as it is at that moment, so toxics can be added or removed on a live connection without
losing or reordering a byte.  Closing follows Toxiproxy: EOF in one direction fully closes the
other socket, which tears the whole connection down.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import TYPE_CHECKING, Final

import trio

from .logs import event
from .model import Toxic
from .toxics import HANDLERS, MS, Chunk, go_seconds

if TYPE_CHECKING:
    from .proxy import Proxy

__all__ = ["QUEUE_SIZE", "RECV_SIZE", "Connection", "Link"]

log = logging.getLogger(__name__)

RECV_SIZE: Final = 65536
QUEUE_SIZE: Final = 1024  # Go buffers 1024 chunks in front of latency; we do it for all toxics.
# Queue markers besides chunks: the source reached EOF; the chain changed (re-read it).
_EOF: Final = object()
_WAKE: Final = object()
_SOCKET_ERRORS: Final = (OSError, trio.ClosedResourceError, trio.BrokenResourceError)


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def _write_all(sock: trio.socket.SocketType, data: bytes) -> None:
    """``_send_all`` that first tries one plain ``os.write`` (no checkpoint when it all fits:
    callers checkpoint on their own)."""
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        await _send_all(sock, data[sent:])


def _read(sock: trio.socket.SocketType) -> bytes | None:
    """One chunk from ``sock``: ``b""`` at EOF, on an error or once it is closed; None when
    nothing is there yet."""
    # A closed socket's fileno() is -1: its old number may already belong to a new socket.
    fd = sock.fileno()
    if fd < 0:
        return b""
    try:
        return os.read(fd, RECV_SIZE)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class Link:
    """One direction of one connection: a reader, a queue, and a writer running the chain."""

    def __init__(
        self,
        conn: Connection,
        direction: str,
        src: trio.socket.SocketType,
        dst: trio.socket.SocketType,
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.src = src
        self.dst = dst
        self.state: dict[int, float] = {}
        self.rng = conn.proxy.rng
        self.rolls: dict[int, bool] = {}
        self.pending = 0
        #: Bytes read from the source and written to the destination (for the metrics).
        self.received = 0
        self.sent = 0
        #: The toxics of this direction, in order (the proxy's live list: copy to iterate).
        self.chain: list[Toxic] = conn.proxy.toxics[direction]
        self._send, self._recv = trio.open_memory_channel[Chunk | object](QUEUE_SIZE)
        self.reroll()

    def reroll(self) -> None:
        """Draw toxicity for every toxic again (Go re-rolls whenever the chain changes)."""
        self.rolls = {t.ident: self.rng.random() < t.toxicity for t in self.chain}

    def wake(self) -> None:
        """Make an idle writer re-read the chain (restarting its timeout timer)."""
        # If the queue is full the writer has work queued and re-reads the chain soon anyway.
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._send.send_nowait(_WAKE)

    def close(self, *, reset: bool = False) -> None:
        """Close the whole connection (``LinkContext`` protocol for toxics)."""
        self.conn.close(reset=reset)

    async def read_loop(self) -> None:
        """Read the source; write directly when no toxic applies, else queue stamped chunks.

        The reader waits for the source only when the last read drained it (a full read
        suggests more is there), so a busy link costs one read and one write per chunk.
        Reads and direct writes go straight to the file descriptors (``os.read``,
        ``os.write``), bypassing trio's socket layer, which costs two scheduler passes a call.
        """
        src, dst, chain, queue = self.src, self.dst, self.chain, self._send
        drained = True
        while True:
            if drained and src.fileno() >= 0:
                try:
                    await trio.lowlevel.wait_readable(src)
                except _SOCKET_ERRORS:
                    drained = False  # closed meanwhile: the read below sees EOF
            data = _read(src)
            if data is None:
                drained = True
                continue
            if not data:
                await queue.send(_EOF)
                return
            self.received += len(data)
            drained = len(data) < RECV_SIZE
            try:
                if not chain and not self.pending:
                    await _write_all(dst, data)
                    self.sent += len(data)
                    if not drained:
                        await trio.lowlevel.checkpoint()  # waiting is the checkpoint otherwise
                else:
                    self.pending += 1
                    await queue.send(Chunk(data, trio.current_time()))
            except _SOCKET_ERRORS:
                self.conn.close()
                return

    def _timeout_deadline(self) -> float:
        deadline = math.inf
        for t in self.chain:
            if t.type == "timeout" and self.rolls.get(t.ident):
                timeout = go_seconds(t.attributes["timeout"], MS)
                if timeout > 0:  # as Go: no timer otherwise
                    deadline = min(deadline, trio.current_time() + timeout)
        return deadline

    async def write_loop(self) -> None:
        """Run queued chunks through the chain; enforce the timeout toxic's idle timer."""
        while True:
            with trio.move_on_at(self._timeout_deadline()) as scope:
                item = await self._recv.receive()
            if scope.cancelled_caught:
                self.conn.close()  # timeout toxic: no data for `timeout` ms
                return
            if item is _WAKE:
                continue
            if item is _EOF:
                await self._on_eof()
                return
            assert isinstance(item, Chunk)
            try:
                await self._through(list(self.chain), 0, item)
            except _SOCKET_ERRORS:
                self.conn.close()
                return
            self.pending -= 1

    async def _through(self, chain: list[Toxic], index: int, chunk: Chunk) -> None:
        rolls = self.rolls
        while index < len(chain) and not rolls.get(chain[index].ident, False):
            index += 1
        if index == len(chain):
            await _send_all(self.dst, chunk.data)
            self.sent += len(chunk.data)
            return
        toxic = chain[index]

        async def forward(piece: Chunk) -> None:
            await self._through(chain, index + 1, piece)

        await HANDLERS[toxic.type](self, toxic, chunk, forward)

    async def _on_eof(self) -> None:
        for toxic in list(self.chain):
            if not self.rolls.get(toxic.ident):
                continue
            if toxic.type == "slow_close":
                with trio.move_on_after(max(go_seconds(toxic.attributes["delay"], MS), 0)):
                    await toxic.interrupt.wait()
            elif toxic.type == "reset_peer":
                await trio.sleep(max(go_seconds(toxic.attributes["timeout"], MS), 0))
                self.conn.close(reset=True)
                return
        # Full close, as Toxiproxy does: the peer link then reads an error and closes too.
        for link in self.conn.links.values():
            if link.src is self.dst:
                link.log_source_terminated()
        self.dst.close()

    def log_source_terminated(self) -> None:
        """Go's warning when a link's source is closed under it (the peer saw EOF)."""
        if not log.isEnabledFor(logging.WARNING):
            return
        try:
            local, remote = self.src.getsockname(), self.src.getpeername()
            where = f"{local[0]}:{local[1]}->{remote[0]}:{remote[1]}"
        except OSError:
            where = "?"
        event(
            log,
            logging.WARNING,
            "Source terminated",
            **self.conn.proxy.log_fields,
            bytes=self.received,
            error=f"read tcp {where}: use of closed network connection",
        )


class Connection:
    """One accepted client and its upstream socket; its link tasks run in ``run``."""

    def __init__(
        self, proxy: Proxy, client: trio.socket.SocketType, upstream: trio.socket.SocketType
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.scope = trio.CancelScope()
        self.links = {
            "upstream": Link(self, "upstream", client, upstream),
            "downstream": Link(self, "downstream", upstream, client),
        }

    def close(self, *, reset: bool = False) -> None:
        """Close both sockets now and stop the link tasks.

        A reset is an RST only if linger 0 was set at accept time (a reset_peer toxic existed
        then); otherwise it is a normal close, exactly as in Toxiproxy.
        """
        self.client.close()
        self.upstream.close()
        self.scope.cancel()

    async def run(self) -> None:
        """Pump both directions until the connection closes.

        An unexpected error in a link closes this connection and is logged; it never reaches
        the proxy's nursery, where it would take down every connection and the API server.
        """
        proxy = self.proxy
        listen = proxy.listen
        for direction in self.links:
            event(log, logging.DEBUG, "Setup connection", **proxy.log_fields, direction=direction)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    for link in self.links.values():
                        nursery.start_soon(link.read_loop)
                        nursery.start_soon(link.write_loop)
        except* Exception as group:
            log.error("proxy %s: closing a connection after an error", proxy.name, exc_info=group)
        finally:
            self.close()
            for direction, link in self.links.items():
                proxy.metrics.link_done(
                    direction, proxy.name, listen, proxy.upstream, link.received, link.sent
                )
