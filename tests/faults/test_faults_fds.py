"""At its file-descriptor limit the server under test (embedded or Go, run under a low
``ulimit -n``) refuses a proxy with a clear error, keeps its API answering, and recovers
fully once proxies are deleted; a proxy costs it one file descriptor."""

from __future__ import annotations

import pytest
import trio
from faults_helpers import Backend, ServerProcess, embedded_only, http, read_exactly

from trio_cluster.faults import Toxiproxy

MAX_FDS = 64
EMFILE_ANSWER = {"error": "listen tcp 127.0.0.1:0: socket: too many open files", "status": 500}


async def _create(url: str, name: str, backend: Backend) -> tuple[int, object]:
    body = {"name": name, "listen": "127.0.0.1:0", "upstream": backend.address}
    resp = await http(url, "POST", "/proxies", body)
    return resp.status, resp.json()


async def _fill(url: str, backend: Backend, prefix: str = "p") -> int:
    """Create proxies until one is refused (with Go's answer); how many were made."""
    made = 0
    while True:
        status, doc = await _create(url, f"{prefix}{made}", backend)
        if status != 201:
            assert (status, doc) == (500, EMFILE_ANSWER)
            return made
        made += 1
        assert made < MAX_FDS, "the fd limit was never reached"


async def test_at_the_fd_limit_a_proxy_is_refused_clearly_and_deletes_recover(
    backend: Backend,
) -> None:
    async with ServerProcess(max_fds=MAX_FDS) as server:
        made = await _fill(server.url, backend)
        # One fd per proxy: all but the process's own few (Go: 56 of 64).  At two per proxy
        # (a listener and a private epoll set) it would stop near 27.
        assert made >= MAX_FDS - 16, made

        # The API still answers, and refuses new proxies the same way (one more may fit
        # when a connection of the server's closed meanwhile: Go closes them in the
        # background).
        assert (await http(server.url, "GET", "/version")).status == 200
        assert await _fill(server.url, backend, "again") <= 1

        # Deletes give the fds back: new proxies, and traffic through them.
        client = Toxiproxy(server.url)
        for i in range(4):
            await client.delete_proxy(f"p{i}")
        infos = [await client.create_proxy(f"new{i}", backend.address) for i in range(2)]
        stream = await trio.open_tcp_stream(*infos[0].listen_address)
        async with stream:
            await stream.send_all(b"ping")
            assert await read_exactly(stream, 4) == b"ping"
        assert server.alive()


async def test_the_api_answers_again_once_fds_are_free(backend: Backend) -> None:
    async with ServerProcess(max_fds=MAX_FDS) as server:
        await _fill(server.url, backend)
        # Hold every fd that is left with connections that never send a request; the
        # server's accepts now fail with EMFILE, and further connections wait in its backlog.
        held = [await trio.open_tcp_stream("127.0.0.1", server.port) for _ in range(8)]
        waiting = trio.Event()
        answers: list[int] = []

        async def probe() -> None:
            waiting.set()
            answers.append((await http(server.url, "GET", "/version")).status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            await waiting.wait()
            for stream in held:  # the server reads EOF, closes, and can accept again
                await stream.aclose()
        assert answers == [200]
        assert server.alive()


@embedded_only("deliberate difference: Go's proxy stops accepting for good at the fd limit")
async def test_a_proxy_serves_again_once_fds_are_free(backend: Backend) -> None:
    async with ServerProcess(max_fds=MAX_FDS) as server:
        client = Toxiproxy(server.url)
        info = await client.create_proxy("p", backend.address)
        # Each proxied connection costs the server two fds (client and upstream): open them
        # until the proxy cannot accept (or dial) any more.
        streams: list[trio.SocketStream] = []
        while True:
            stream = await trio.open_tcp_stream(*info.listen_address)
            streams.append(stream)
            await stream.send_all(b"x")
            with trio.move_on_after(1) as waited:
                got = await _echo_or_closed(stream)
            if waited.cancelled_caught or not got:
                break
            assert len(streams) < MAX_FDS
        for stream in streams:
            await stream.aclose()
        # Once fds are free (within Go's 1 s accept back-off) the same proxy serves again.
        stream = await trio.open_tcp_stream(*info.listen_address)
        async with stream:
            await stream.send_all(b"back")
            assert await read_exactly(stream, 4) == b"back"
        assert server.alive()


async def _echo_or_closed(stream: trio.SocketStream) -> bytes:
    try:
        return await stream.receive_some(1)
    except trio.BrokenResourceError:
        return b""


pytestmark = pytest.mark.slow
