"""The embedded Toxiproxy-compatible server: HTTP/1.1 over h11 on trio, plus its proxies.

``ToxiproxyServer.run`` serves until cancelled; it owns one nursery holding the API listener,
one task per HTTP connection and every proxy.
"""

from __future__ import annotations

import json
from typing import Final

import h11
import trio

from faults.api import Api, Response
from faults.collection import ProxyCollection
from faults.model import ApiError

__all__ = ["ToxiproxyServer"]

MAX_BODY: Final = 8 * 1024 * 1024
READ_TIMEOUT: Final = 15.0  # Go's ReadTimeout
IDLE_TIMEOUT: Final = 60.0  # Go's IdleTimeout
HANDLER_TIMEOUT: Final = 25.0  # Go's http.TimeoutHandler: a slower handler answers 503


class ToxiproxyServer:
    """A Toxiproxy 2.12-compatible API server and its proxies."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8474,
        *,
        seed: int | None = None,
        config: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.seed = seed
        self.config = config
        self.collection: ProxyCollection | None = None

    @property
    def url(self) -> str:
        """The API base URL (valid once ``run`` has reported started)."""
        return f"http://{self.host}:{self.port}"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind the API port, load the config file if any, and serve until cancelled."""
        listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        try:
            async with trio.open_nursery() as nursery:
                self.collection = ProxyCollection(nursery, self.seed)
                api = Api(self.collection)
                if self.config:
                    await self._populate_from(self.config)
                await nursery.start(
                    trio.serve_listeners, lambda stream: self._serve_http(api, stream), listeners
                )
                task_status.started()
        finally:
            if self.collection is not None:
                self.collection.close()

    async def _populate_from(self, path: str) -> None:
        """Populate at start from a JSON file, as Go's ``-config`` does."""
        assert self.collection is not None
        with open(path, "rb") as fh:  # noqa: ASYNC230 -- startup only, a small local file
            doc = json.loads(fh.read())
        try:
            await self.collection.populate(doc)
        except ApiError as exc:
            raise RuntimeError(f"populating from {path} failed: {exc.message}") from exc

    async def _serve_http(self, api: Api, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        try:
            while True:
                request, body = await self._read_request(conn, stream)
                if request is None:
                    return
                headers = {
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers
                }
                with trio.move_on_after(HANDLER_TIMEOUT):
                    response = await api.handle(
                        request.method.decode("ascii"),
                        request.target.decode("latin-1"),
                        headers,
                        body,
                    )
                    await self._write(conn, stream, response)
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                    continue
                await self._write(conn, stream, Response(503))
                return
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()

    async def _read_request(
        self, conn: h11.Connection, stream: trio.SocketStream
    ) -> tuple[h11.Request | None, bytes]:
        """Read one full request; returns ``(None, b"")`` when the client goes away."""
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        deadline = trio.current_time() + IDLE_TIMEOUT
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await self._write(conn, stream, Response(status, b"Bad Request\n"))
                return None, b""
            if event is h11.NEED_DATA:
                data = b""
                with trio.move_on_at(deadline):
                    data = await stream.receive_some(65536)
                if not data and conn.their_state is h11.IDLE:
                    return None, b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
                deadline = trio.current_time() + READ_TIMEOUT
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    await self._write(conn, stream, Response(413))
                    return None, b""
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""
            else:  # pragma: no cover -- h11 yields nothing else on the server side
                return None, b""

    @staticmethod
    async def _write(conn: h11.Connection, stream: trio.SocketStream, resp: Response) -> None:
        headers = [*resp.headers, ("Content-Length", str(len(resp.body)))]
        if resp.status in (204, 304):
            headers = [h for h in headers if h[0] != "Content-Length"]
        out = conn.send(h11.Response(status_code=resp.status, headers=headers))
        if resp.body and resp.status not in (204, 304):
            out = (out or b"") + (conn.send(h11.Data(data=resp.body)) or b"")
        out = (out or b"") + (conn.send(h11.EndOfMessage()) or b"")
        await stream.send_all(out)
