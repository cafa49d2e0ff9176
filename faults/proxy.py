"""The TCP data plane: one listener per proxy, one upstream dial per accepted client.

Each connection has two links (``upstream`` = client to server, ``downstream`` = server to
client).  A link is a reader task and a writer task joined by a memory channel.  While a
direction has no toxic and nothing is queued, the link is *parked* in the proxy's ``Pump``: one
task for all such links, which moves each ready chunk with one ``os.read`` and one ``os.write``
(the fast path: no trio call and no per-chunk task wake-up), and hands the link back to its
reader task for anything else.  Otherwise chunks, stamped
with their read time, go through the queue and the writer runs them through the toxic chain as
it is at that moment, so toxics can be added or removed on a live connection without losing or
reordering a byte.  Closing follows Toxiproxy: EOF in one direction fully closes the other
socket, which tears the whole connection down.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import select
import socket as stdsocket
import struct
from typing import Any, Final

import outcome
import trio

from faults.errors import ToxiproxyError
from faults.logs import event
from faults.metrics import Metrics
from faults.model import Toxic
from faults.toxics import HANDLERS, Chunk

__all__ = ["Connection", "Proxy", "bind_listener", "resolve_listen"]

log = logging.getLogger("faults.proxy")

RECV_SIZE: Final = 65536
QUEUE_SIZE: Final = 1024  # Go buffers 1024 chunks in front of latency; we do it for all toxics.
_EOF: Final = object()
_WAKE: Final = object()


def _split_host_port(addr: str, kind: str) -> tuple[str, str]:
    """Split like Go's ``net.SplitHostPort``, with Go's error text."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or not addr[end + 1 :].startswith(":"):
            raise ToxiproxyError(500, f"{kind} tcp: address {addr}: missing port in address")
        return addr[1:end], addr[end + 2 :]
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ToxiproxyError(500, f"{kind} tcp: address {addr}: missing port in address")
    if ":" in host:
        raise ToxiproxyError(500, f"{kind} tcp: address {addr}: too many colons in address")
    return host, port


def _reason_text(exc: BaseException) -> str:
    """Go's lower-case error text for a failed dial (``connect: connection refused``)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"connect: {exc.strerror.lower()}"
    return str(exc)


def _display(family: int, host: str, port: int) -> str:
    return f"[{host}]:{port}" if family == stdsocket.AF_INET6 else f"{host}:{port}"


async def resolve_listen(listen: str) -> tuple[int, str, int, str]:
    """Resolve a listen string to ``(family, host, port, display)`` as Go's resolver would.

    Hostnames resolve (IPv4 preferred, so ``localhost:p`` shows as ``127.0.0.1:p``); an empty
    or wildcard host means every interface.  Errors are 500s carrying Go's error text.
    """
    # Go's net.Listen accepts an empty address: every interface, a random port.
    host, port_text = _split_host_port(listen, "listen") if listen else ("", "0")
    try:
        port = int(port_text) if port_text else 0
    except ValueError:
        raise ToxiproxyError(500, f"listen tcp: lookup tcp/{port_text}: unknown port") from None
    if not 0 <= port <= 65535:
        raise ToxiproxyError(500, f"listen tcp: address {port}: invalid port")
    if host in ("", "0.0.0.0", "::"):
        if stdsocket.has_ipv6:
            return stdsocket.AF_INET6, "::", port, _display(stdsocket.AF_INET6, "::", port)
        return stdsocket.AF_INET, "0.0.0.0", port, _display(stdsocket.AF_INET, "0.0.0.0", port)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=stdsocket.SOCK_STREAM)
    except OSError:
        raise ToxiproxyError(500, f"listen tcp: lookup {host}: no such host") from None
    infos.sort(key=lambda info: info[0] != stdsocket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    ip = str(sockaddr[0])
    return int(family), ip, port, _display(int(family), ip, port)


async def bind_listener(listen: str) -> tuple[trio.socket.SocketType, str]:
    """Bind and listen; return the socket and the real address (``:0`` gets a real port)."""
    family, host, port, display = await resolve_listen(listen)
    sock = trio.socket.socket(family, stdsocket.SOCK_STREAM)
    try:
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        if family == stdsocket.AF_INET6 and host == "::":
            sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 0)
        await sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ToxiproxyError(500, f"listen tcp {display}: bind: {reason}") from None
    real_port = sock.getsockname()[1]
    return sock, _display(family, host, real_port)


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def _write_all(sock: trio.socket.SocketType, data: bytes) -> None:
    """``_send_all`` that first tries one plain ``os.write`` (no checkpoint when it all fits).

    Callers must checkpoint on their own now and then.
    """
    fd = sock.fileno()
    if fd < 0:
        raise trio.ClosedResourceError
    try:
        sent = os.write(fd, data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        await _send_all(sock, data[sent:])


_SOCKET_ERRORS: Final = (OSError, trio.ClosedResourceError, trio.BrokenResourceError)


class Pump:
    """Moves the bytes of every idle no-toxic link of one proxy, in one task.

    A link whose direction has no toxic and nothing queued *parks* here: its source socket is
    registered (level-triggered) in a private epoll set, and its reader task sleeps.  The pump
    task waits until that set is readable, then for each ready source does one ``os.read`` and
    one ``os.write`` to the destination, with no trio call in between: one scheduler pass
    serves every ready link, instead of a wake-up, an ``epoll_ctl`` and a failed read per
    chunk.  Anything out of the ordinary (a toxic in the chain, a queued chunk, a short write,
    EOF, an error) unparks the link and hands the event to its reader task, which deals with
    it exactly as it would have without the pump, so no byte is lost or reordered.

    Lifetime: the pump belongs to one serving period of one proxy (``Proxy._serve``), and so
    do the connections that use it.  ``run`` may end (cancelled) while link tasks of that
    period still run their last steps -- a connection whose upstream dial completed just as
    the proxy stopped starts its links *after* the pump task is gone -- so a pump that no
    longer runs refuses to park (the link reads on its own), and its epoll set is closed only
    by ``close``, once every task of the period has finished.
    """

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._links: dict[int, Link] = {}
        self._serving = True

    def park(self, link: Link, fd: int) -> bool:
        """Watch ``fd`` (the link's source) on behalf of ``link``; False if not serving."""
        if not self._serving:
            return False
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:  # a stale entry of a closed socket: never expected, but safe
            self._epoll.modify(fd, select.EPOLLIN)
        self._links[fd] = link
        return True

    def unpark(self, link: Link) -> None:
        """Stop watching the link's source (it is still open when this is called)."""
        fd = link.parked_fd
        if self._links.get(fd) is link:
            del self._links[fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

    async def run(self) -> None:
        """Serve ready links until cancelled; then hand every parked link back to its task."""
        epoll, links = self._epoll, self._links
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    link = links.get(fd)
                    if link is None:
                        continue
                    try:
                        self._serve_one(link, fd)
                    except Exception:
                        # A bug in one link's hand-off must cost that connection, not the
                        # proxy (and with it every other connection and the API server).
                        log.exception("proxy %s: closing a connection after an error", link.name)
                        self._drop(link, fd)
        finally:
            self._serving = False
            for link in list(links.values()):
                link.hand_back(_RESUME, b"")

    @staticmethod
    def _serve_one(link: Link, fd: int) -> None:
        """Move one ready chunk of ``link``, or hand the event back to its reader task."""
        try:
            data = os.read(fd, RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            link.hand_back(_EOF, b"")
            return
        if not data:
            link.hand_back(_EOF, b"")
            return
        link.received += len(data)
        if link.chain or link.pending:
            link.hand_back(_DATA, data)
        else:
            try:
                sent = os.write(link.dst_fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                link.hand_back(_BROKEN, b"")
                return
            link.sent += sent
            if sent < len(data):
                link.hand_back(_REST, data[sent:])

    def _drop(self, link: Link, fd: int) -> None:
        """Stop watching a failed link and give it back to its task as broken (its
        connection then closes); nothing here may stop the pump."""
        if self._links.get(fd) is link:  # never spin on an fd nobody will serve
            del self._links[fd]
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)
        try:
            link.hand_back(_BROKEN, b"")
        except Exception:
            log.exception("proxy %s: could not hand a failed link back", link.name)

    def close(self) -> None:
        """Release the epoll set (once no task of the pump's serving period is left)."""
        self._serving = False
        self._epoll.close()


# What a parked link's reader is handed back with.
_DATA: Final = 0  # a chunk read, not yet written (a toxic or a queued chunk appeared)
_REST: Final = 1  # the unwritten tail of a chunk (the destination was full)
_BROKEN: Final = 2  # writing to the destination failed
_RESUME: Final = 3  # the pump stopped: read on your own from now on
# ... or _EOF: the source reached EOF, failed, or is about to be closed.


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
        self.dst_fd = dst.fileno()
        self.state: dict[int, float] = {}
        self.rng = conn.proxy.rng
        self.rolls: dict[int, bool] = {}
        self.pending = 0
        #: Bytes read from the source and written to the destination (for the metrics).
        self.received = 0
        self.sent = 0
        #: The toxics of this direction, in order (the proxy's live list: copy to iterate).
        self.chain: list[Toxic] = conn.proxy.toxics[direction]
        self._send, self._recv = trio.open_memory_channel[Any](QUEUE_SIZE)
        # While parked in the connection's pump: that pump, the fd it watches, the reader task.
        self._pump: Pump | None = None
        self.parked_fd = -1
        self._task: trio.lowlevel.Task | None = None
        self._ts = 0.0
        self.reroll()

    @property
    def name(self) -> str:
        """The proxy's name (for log lines)."""
        return self.conn.proxy.name

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

    def hand_back(self, kind: object, data: bytes) -> None:
        """Unpark: leave the pump and wake the reader task with ``(kind, data)``."""
        pump, task = self._pump, self._task
        if pump is None or task is None:
            return
        pump.unpark(self)
        self._pump = self._task = None
        self.parked_fd = -1
        self._ts = trio.current_time()
        trio.lowlevel.reschedule(task, outcome.Value((kind, data)))

    async def _park(self, pump: Pump, fd: int) -> tuple[object, bytes]:
        """Sleep in ``pump`` until it hands the link back; return what it handed.

        A pump that has stopped refuses the link: ``(_RESUME, b"")`` at once.
        """
        if not pump.park(self, fd):
            return _RESUME, b""
        self._pump, self.parked_fd = pump, fd
        self._task = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            pump.unpark(self)
            self._pump = self._task = None
            self.parked_fd = -1
            return trio.lowlevel.Abort.SUCCEEDED

        result: tuple[object, bytes] = await trio.lowlevel.wait_task_rescheduled(abort)
        return result

    async def _read(self, fd: int) -> bytes:
        """One chunk from the source (``b""`` at EOF or on error), waiting if need be."""
        while True:
            try:
                return os.read(fd, RECV_SIZE)
            except BlockingIOError:
                pass
            except OSError:
                return b""
            try:
                await trio.lowlevel.wait_readable(self.src)
            except _SOCKET_ERRORS:
                return b""
            fd = self.src.fileno()  # closed (-1) meanwhile: os.read fails, which reads as EOF

    async def read_loop(self) -> None:
        """Read the source; write directly when no toxic applies, else queue stamped chunks.

        While the direction has no toxic and nothing is queued the link parks in the proxy's
        pump, which does the reading and writing; otherwise this task reads, and either writes
        the chunk directly (chain empty, nothing queued) or queues it for the writer.  Reads
        and direct writes go straight to the file descriptors (``os.read``/``os.write``),
        bypassing trio's socket layer, which costs two scheduler passes per call.
        """
        src, dst, chain, queue = self.src, self.dst, self.chain, self._send
        pump = self.conn.pump
        while True:
            # A closed socket reads -1 here; its number may already belong to a new socket.
            fd = src.fileno()
            if fd < 0:
                kind, data = _EOF, b""
            elif not chain and not self.pending and pump is not None:
                kind, data = await self._park(pump, fd)
                if kind is _RESUME:
                    pump = None  # the pump has stopped: read on our own from now on
                    continue
            else:
                data = await self._read(fd)
                kind = _DATA if data else _EOF
                self.received += len(data)
                self._ts = trio.current_time()
            if kind is _EOF:
                await queue.send(_EOF)
                return
            try:
                if kind is _BROKEN:
                    raise trio.BrokenResourceError
                if kind is _REST:
                    await _send_all(dst, data)
                    self.sent += len(data)
                elif not chain and not self.pending:
                    await _write_all(dst, data)
                    self.sent += len(data)
                    await trio.lowlevel.checkpoint()
                else:
                    self.pending += 1
                    await queue.send(Chunk(data, self._ts))
            except _SOCKET_ERRORS:
                self.conn.close()
                return

    def _timeout_deadline(self) -> float:
        deadline = math.inf
        for t in self.chain:
            if t.type == "timeout" and self.rolls.get(t.ident) and t.attributes["timeout"] > 0:
                deadline = min(deadline, trio.current_time() + t.attributes["timeout"] / 1000)
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
                with trio.move_on_after(max(toxic.attributes["delay"], 0) / 1000):
                    await toxic.interrupt.wait()
            elif toxic.type == "reset_peer":
                await trio.sleep(max(toxic.attributes["timeout"], 0) / 1000)
                self.conn.close(reset=True)
                return
        # Full close, as Toxiproxy does: the peer link then reads an error and closes too.
        # (A peer parked in the pump must leave it first: the socket's number may be reused.)
        for link in self.conn.links.values():
            if link.src is self.dst:
                link.hand_back(_EOF, b"")
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
    """One accepted client and its upstream socket.

    ``pump`` is the pump of the serving period that accepted the connection (None where
    epoll is not available); the connection's tasks run in that period's nursery, so they
    never outlive it.
    """

    def __init__(
        self,
        proxy: Proxy,
        client: trio.socket.SocketType,
        upstream: trio.socket.SocketType,
        pump: Pump | None = None,
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.pump = pump
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
        for link in self.links.values():
            link.hand_back(_EOF, b"")  # out of the pump before the numbers can be reused
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
            log.error(
                "proxy %s: closing a connection after an error",
                self.proxy.name,
                exc_info=group,
            )
        finally:
            self.close()
            for direction, link in self.links.items():
                proxy.metrics.link_done(
                    direction, proxy.name, listen, proxy.upstream, link.received, link.sent
                )


_LINGER_ZERO: Final = struct.pack("ii", 1, 0)


class Proxy:
    """A named proxy: its configuration, its toxics, its listener and its live connections."""

    def __init__(
        self,
        name: str,
        listen: str,
        upstream: str,
        rng: random.Random,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.rng = rng
        self.metrics = metrics or Metrics()
        #: The fields of every log line about this proxy (fixed at creation, as in Go).
        self.log_fields = {"name": name, "listen": listen, "upstream": upstream}
        self.toxics: dict[str, list[Toxic]] = {"upstream": [], "downstream": []}
        self.connections: set[Connection] = set()
        self._sock: trio.socket.SocketType | None = None
        self._scope: trio.CancelScope | None = None

    def to_json(self) -> dict[str, Any]:
        """The proxy's JSON object in Go's field order (``Logger`` included, as 2.5+ emits)."""
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [t.to_json() for t in self.all_toxics()],
        }

    def all_toxics(self) -> list[Toxic]:
        """Upstream chain first, then downstream, each in insertion order (as Go lists them)."""
        return self.toxics["upstream"] + self.toxics["downstream"]

    def find_toxic(self, name: str) -> Toxic | None:
        """The toxic with this name in either direction, if any."""
        return next((t for t in self.all_toxics() if t.name == name), None)

    async def start(self, nursery: trio.Nursery) -> None:
        """Listen (a no-op when running) and serve in ``nursery``; bind errors are 500s."""
        if self._sock is not None:
            return
        sock, display = await bind_listener(self.listen)
        self.listen = display
        self._sock = sock
        self._scope = await nursery.start(self._serve, sock)
        self.enabled = True
        event(log, logging.INFO, "Started proxy", **self.log_fields)

    def stop(self, *, log_it: bool = True) -> None:
        """Close the listener (new clients are refused) and every live connection, now.

        ``log_it=False`` at server shutdown, where Go writes no "Terminated proxy" line.
        """
        was_enabled = self.enabled and log_it
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for conn in list(self.connections):
            conn.close()
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self.enabled = False
        if was_enabled:
            event(log, logging.INFO, "Terminated proxy", **self.log_fields)

    async def _serve(
        self, sock: trio.socket.SocketType, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        # The pump lives exactly as long as this serving period: the connections it accepts
        # run in the nursery below, so its epoll set is closed only after the last of them.
        pump = Pump() if hasattr(select, "epoll") else None
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    if pump is not None:
                        nursery.start_soon(pump.run)
                    task_status.started(scope)
                    while True:
                        try:
                            client, _ = await sock.accept()
                        except _SOCKET_ERRORS:
                            return
                        nursery.start_soon(self._handle, client, pump)
        finally:
            if pump is not None:
                pump.close()
            sock.close()

    async def _handle(self, client: trio.socket.SocketType, pump: Pump | None) -> None:
        try:
            peer = client.getpeername()
            client_addr = _display(client.family, str(peer[0]), int(peer[1]))
        except OSError:
            client_addr = ""
        event(log, logging.INFO, "Accepted client", **self.log_fields, client=client_addr)
        upstream = trio.socket.socket(stdsocket.AF_INET, stdsocket.SOCK_STREAM)
        try:
            host, port_text = _split_host_port(self.upstream, "dial")
            infos = await trio.socket.getaddrinfo(
                host or None, int(port_text), type=stdsocket.SOCK_STREAM
            )
            infos.sort(key=lambda info: info[0] != stdsocket.AF_INET)
            family, _, _, _, sockaddr = infos[0]
            if family != upstream.family:
                upstream.close()
                upstream = trio.socket.socket(family, stdsocket.SOCK_STREAM)
            await upstream.connect(sockaddr)
        except (*_SOCKET_ERRORS, ToxiproxyError, ValueError, IndexError) as exc:
            # Upstream unreachable: the client just sees the connection close (Go behaviour).
            event(
                log,
                logging.ERROR,
                "Unable to open connection to upstream",
                **self.log_fields,
                error=f"dial tcp {self.upstream}: {_reason_text(exc)}",
                client=client_addr,
            )
            client.close()
            upstream.close()
            return
        try:
            for s in (client, upstream):
                s.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
                if any(t.type == "reset_peer" for t in self.all_toxics()):
                    s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, _LINGER_ZERO)
        except OSError:  # the client already went away
            client.close()
            upstream.close()
            return
        conn = Connection(self, client, upstream, pump)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    # --- toxic changes on live connections -------------------------------------------------

    def add_toxic(self, toxic: Toxic) -> None:
        """Append to its direction's chain and splice into every live link."""
        self.toxics[toxic.direction].append(toxic)
        self._chain_changed(toxic.direction)

    def toxic_updated(self, toxic: Toxic) -> None:
        """Interrupt in-flight waits of the toxic and re-roll toxicity on live links."""
        toxic.poke()
        self._chain_changed(toxic.direction)

    def remove_toxic(self, toxic: Toxic) -> None:
        """Remove from the chain; removing a timeout closes the connections it was holding."""
        self.toxics[toxic.direction].remove(toxic)
        toxic.poke()
        for conn in list(self.connections):
            if toxic.type == "timeout" and conn.links[toxic.direction].rolls.get(toxic.ident):
                conn.close()
        self._chain_changed(toxic.direction)

    def remove_all_toxics(self) -> None:
        """Remove every toxic (reset)."""
        for toxic in self.all_toxics():
            self.remove_toxic(toxic)

    def _chain_changed(self, direction: str) -> None:
        for conn in self.connections:
            link = conn.links[direction]
            link.reroll()
            link.wake()
