"""The embedded Toxiproxy-compatible server: HTTP/1.1 over h11 on trio, plus its proxies.

``ToxiproxyServer.run`` serves until cancelled; it owns one nursery holding the API's accept
loop (which outlasts running out of fds as Go's does), one task per HTTP connection and every
proxy.  Answers are written as Go's ``net/http`` writes them: reason phrase, the handler's
headers sorted, then ``Date`` and ``Content-Length``; a request must arrive whole within Go's
``ReadTimeout`` (15 s from the connection's start, or from the first byte after an idle
keep-alive wait), and a head over Go's limit is answered 431.
"""

from __future__ import annotations

import email.utils
import http
import logging
import time
from typing import Final

import h11
import trio

from .api import Api, Response, request_id
from .collection import ProxyCollection
from .errors import ToxiproxyError
from .logs import event
from .metrics import Metrics
from .model import decode_body
from .sockets import accept, go_duration_text

__all__ = ["ToxiproxyServer"]

MAX_BODY: Final = 8 * 1024 * 1024
MAX_HEADER_BYTES: Final = 1 << 20 | 4096  # Go's DefaultMaxHeaderBytes plus its 4 KiB slack
RST_AVOIDANCE_DELAY: Final = 0.5  # Go's wait between half-closing and closing, after a 431
READ_TIMEOUT: Final = 15.0  # Go's ReadTimeout: the whole request, headers and body
IDLE_TIMEOUT: Final = 60.0  # Go's IdleTimeout: waiting for the next keep-alive request
WRITE_TIMEOUT: Final = 30.0  # Go's WriteTimeout: a client that does not read is dropped
HANDLER_TIMEOUT: Final = 25.0  # Go's http.TimeoutHandler: a slower handler answers 503
# Go's TimeoutHandler with an empty message writes this default body.
_TIMEOUT_BODY: Final = (
    b"<html><head><title>Timeout</title></head><body><h1>Timeout</h1></body></html>"
)
_HTML: Final = "text/html; charset=utf-8"
log = logging.getLogger(__name__)


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ToxiproxyServer:
    """A Toxiproxy 2.12-compatible API server and its proxies."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8474,
        *,
        seed: int | None = None,
        config: str | None = None,
        metrics: Metrics | None = None,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self.config = config
        self.metrics = metrics or Metrics()
        self.read_timeout = read_timeout
        self.collection: ProxyCollection | None = None

    @property
    def url(self) -> str:
        """The API base URL (valid once ``run`` has reported started)."""
        return f"http://{self.host}:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the API port, load the config file if any, and serve until cancelled."""
        # Go's net.Listen binds the first address "localhost" resolves to (127.0.0.1), not
        # every one (trio would add ::1).
        bind_host = "127.0.0.1" if self.host == "localhost" else self.host
        listeners = await trio.open_tcp_listeners(self.port, host=bind_host)
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self.collection = ProxyCollection(nursery, self.seed, self.metrics)
                api = Api(self.collection, self.metrics)
                if self.config:
                    await self._populate_from(self.config)
                event(
                    log,
                    logging.INFO,
                    "Starting Toxiproxy HTTP server",
                    address=f"{self.host}:{self.port}",
                )
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, api, listener.socket, nursery)
                task_status.started()
        finally:
            if self.collection is not None:
                self.collection.close()

    async def _accept_loop(
        self, api: Api, listener: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        """Serve each accepted connection in its own task.  Out of file descriptors, wait
        and retry as Go's ``net/http`` does (5 ms doubling to 1 s), logging its line."""
        try:
            while True:
                sock = await accept(listener, _log_accept_error)
                nursery.start_soon(self._serve_http, api, trio.SocketStream(sock))
        finally:
            listener.close()

    async def _populate_from(self, path: str) -> None:
        """Populate at start from a JSON file, as Go's ``-config`` does: a failure is logged
        and the server runs on without those proxies."""
        assert self.collection is not None
        try:
            with open(path, "rb") as fh:  # noqa: ASYNC230 -- startup only, a small local file
                raw = fh.read()
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            event(
                log,
                logging.ERROR,
                "Error reading config file",
                error=f"open {path}: {reason}",
                config=path,
            )
            return
        try:
            _, doc = await self.collection.populate(decode_body(raw))
        except ToxiproxyError as exc:
            event(log, logging.ERROR, "Failed to populate proxies from file", error=exc.message)
            return
        count = len(doc["proxies"] or [])
        event(log, logging.INFO, "Populated proxies from file", proxies=count)

    async def _serve_http(self, api: Api, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        try:
            peer = stream.socket.getpeername()
            client = f"{peer[0]}:{peer[1]}"
        except OSError:
            client = ""
        first = True
        try:
            while True:
                request, body = await self._read_request(conn, stream, first=first)
                first = False
                if request is None:
                    return
                headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers
                }
                method = request.method.decode("ascii")
                target = request.target.decode("latin-1")
                started = time.perf_counter()
                rid = request_id()
                response, timed_out = await self._answer(api, method, target, headers, body, rid)
                close = "close" in headers.get("connection", "").lower()
                with trio.move_on_after(WRITE_TIMEOUT) as writing:
                    await self._write(conn, stream, response, close=close)
                if writing.cancelled_caught:
                    return
                if response.route is not None:  # Go's access log runs for routed requests only
                    event(
                        log,
                        logging.DEBUG,
                        request_id=rid,
                        client=client,
                        method=method,
                        url=target,
                        user_agent=headers.get("user-agent", ""),
                        status=response.status,
                        size=len(response.body),
                        duration=round((time.perf_counter() - started) * 1000, 6),
                        handler=response.route,
                    )
                if conn.our_state is h11.MUST_CLOSE or timed_out:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    @staticmethod
    async def _answer(
        api: Api, method: str, target: str, headers: dict[str, str], body: bytes, rid: str
    ) -> tuple[Response, bool]:
        """The API's answer, or Go's ``TimeoutHandler`` 503 (and True) when it took too long."""
        with trio.move_on_after(HANDLER_TIMEOUT):
            return await api.handle(method, target, headers, body, rid), False
        # Only a routed request reaches the handler, so the 503 carries the request id.
        route = api.route(method, target)
        headers_out = [("Content-Type", _HTML), ("X-Toxiproxy-Request-Id", rid)]
        response = Response(503, _TIMEOUT_BODY, headers_out)
        response.route = route[0] if isinstance(route, tuple) else None
        return response, True

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream, *, first: bool
    ) -> tuple[h11.Request | None, bytes]:
        """Read one full request; returns ``(None, b"")`` when the client goes away or is
        too slow (``read_timeout`` for the whole request, as Go's ``ReadTimeout``)."""
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        now = trio.current_time()
        # A new connection has read_timeout for its first request; a kept-alive one may idle
        # for IDLE_TIMEOUT, and the clock restarts at the next request's first byte.
        deadline = now + (self.read_timeout if first else IDLE_TIMEOUT)
        idle = not first
        # Bytes received for this request so far (a pipelined request may already be there):
        # Go refuses a head (request line and headers) over MAX_HEADER_BYTES with a 431.
        received = len(conn.trailing_data[0])
        while True:
            try:
                event_ = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await _refuse(stream, exc.error_status_hint, str(exc))
                return None, b""
            if event_ is h11.NEED_DATA:
                data = b""
                with trio.move_on_at(deadline) as scope:
                    data = await stream.receive_some(65536)
                if scope.cancelled_caught or (not data and conn.their_state is h11.IDLE):
                    return None, b""
                if idle and data:
                    idle = False
                    deadline = trio.current_time() + self.read_timeout
                received += len(data)
                conn.receive_data(data)
                continue
            if isinstance(event_, h11.Request):
                # h11 checks its limit only while the head is incomplete: a whole head that
                # arrived in the last read may still be over it.
                if received - len(conn.trailing_data[0]) > MAX_HEADER_BYTES:
                    await _refuse(stream, 431, "")
                    return None, b""
                request = event_
            elif isinstance(event_, h11.Data):
                size += len(event_.data)
                if size > MAX_BODY:
                    await self._write(conn, stream, Response(413))
                    return None, b""
                chunks.append(bytes(event_.data))
            elif isinstance(event_, h11.EndOfMessage):
                return request, b"".join(chunks)
            else:  # ConnectionClosed (h11 yields nothing else on the server side)
                return None, b""

    @staticmethod
    async def _write(
        conn: h11.Connection, stream: trio.SocketStream, resp: Response, *, close: bool = False
    ) -> None:
        # Go writes the handler's headers sorted by name, then Connection, Date and length.
        headers = sorted(resp.headers, key=lambda h: h[0])
        if close:
            headers.append(("Connection", "close"))
        headers.append(("Date", email.utils.formatdate(usegmt=True)))
        if resp.status not in (204, 304):
            headers.append(("Content-Length", str(len(resp.body))))
        out = conn.send(
            h11.Response(status_code=resp.status, headers=headers, reason=_reason(resp.status))
        )
        if resp.body and resp.status not in (204, 304):
            out = (out or b"") + (conn.send(h11.Data(data=resp.body)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)


def _log_accept_error(error: str, delay: float) -> None:
    event(log, logging.ERROR, f"http: Accept error: {error}; retrying in {go_duration_text(delay)}")


async def _refuse(stream: trio.SocketStream, status: int, error: str) -> None:
    """Answer a request that cannot be parsed as Go's server does, raw, then hang up: after
    a 431 it half-closes and waits 500 ms first (Go's ``closeWriteAndWait``), so a client
    still sending its oversized head reads the answer before the reset of a full close."""
    if status == 431:
        public = "431 Request Header Fields Too Large"
    elif "host" in error.lower():
        public = "400 Bad Request: missing required Host header"
    else:
        public = "400 Bad Request"
    headers = "Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
    await stream.send_all(f"HTTP/1.1 {public}\r\n{headers}{public}".encode())
    if status == 431:
        await stream.send_eof()
        await trio.sleep(RST_AVOIDANCE_DELAY)
