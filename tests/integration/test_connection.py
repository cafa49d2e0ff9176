"""Connection against real servers: handshake, fallbacks, timeouts, errors, cancellation, TLS."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from redis import exceptions as rex

from trio_cluster import Client, PoolOptions
from trio_cluster.config import ConnectionConfig
from trio_cluster.conn.connection import Connection, was_unsent
from trio_cluster.conn.state import ConnState
from trio_cluster.conn.watchdog import Watchdog
from trio_cluster.errors import (
    AuthenticationError,
    CertificateVerificationError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    WriteTimeoutError,
)
from trio_cluster.testing import LocalServer

SECRET = "s3cret-pa55word-xyz"


@pytest.fixture(scope="module")
def auth_server() -> Iterator[LocalServer]:
    with LocalServer(password=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def resp2_server() -> Iterator[LocalServer]:
    """A server that does not know HELLO, as servers before Redis 6 did."""
    with LocalServer(password=SECRET, extra_args=["--rename-command", "HELLO", ""]) as server:
        yield server


async def test_resp3_handshake_sets_name_and_library(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config(client_name="hs-test"))
        try:
            assert conn.protocol == 3
            assert conn.state.state is ConnState.IDLE
            info = (await conn.execute(["CLIENT", "INFO"])).decode()
            assert "name=hs-test" in info
            assert "resp=3" in info
            # CLIENT SETINFO exists from Redis 7.2; older servers' errors must be ignored.
            known = await conn.execute(["COMMAND", "INFO", "CLIENT|SETINFO"])
            if known != [None]:
                assert "lib-name=trio-cluster" in info
                assert "lib-ver=0.1.0" in info
            else:
                assert "lib-name=" not in info
        finally:
            await conn.aclose()
        assert conn.state.state is ConnState.CLOSED


async def test_resp2_fallback_when_hello_is_unknown(resp2_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(resp2_server.config(client_name="old"))
        try:
            assert conn.protocol == 2
            assert await conn.execute(["SET", "k", "v"]) == b"OK"
            assert await conn.execute(["GET", "k"]) == b"v"
            info = (await conn.execute(["CLIENT", "INFO"])).decode()
            assert "name=old" in info and "resp=2" in info
        finally:
            await conn.aclose()


async def test_resp2_requested_explicitly(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config(protocol=2))
        try:
            assert conn.protocol == 2
            assert "resp=2" in (await conn.execute(["CLIENT", "INFO"])).decode()
        finally:
            await conn.aclose()


@pytest.mark.parametrize("server_name", ["auth_server", "resp2_server"])
async def test_wrong_password_is_typed_and_secret_free(
    server_name: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    server: LocalServer = request.getfixturevalue(server_name)
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-" + SECRET
    with trio.fail_after(10), pytest.raises(AuthenticationError) as info:
        await Connection.open(server.config(password=wrong))
    assert isinstance(info.value, rex.AuthenticationError)
    assert wrong not in str(info.value) and wrong not in repr(info.value)
    assert wrong not in caplog.text


async def test_password_never_in_repr(auth_server: LocalServer) -> None:
    with trio.fail_after(10):
        config = auth_server.config()
        conn = await Connection.open(config)
        try:
            assert await conn.execute(["PING"]) == b"PONG"
            assert SECRET not in repr(conn)
            assert SECRET not in repr(config)
        finally:
            await conn.aclose()


async def test_missing_password_is_noauth(auth_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(auth_server.config(password=None, protocol=2))
        try:
            with pytest.raises(AuthenticationError):
                await conn.execute(["GET", "x"])
            assert not conn.broken  # an error reply is not a broken connection
        finally:
            await conn.aclose()


async def test_connection_refused_is_connection_error_with_cause() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with trio.fail_after(10), pytest.raises(rex.ConnectionError) as info:
            await Connection.open(ConnectionConfig(port=port))
    assert isinstance(info.value.__cause__, OSError)
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_connect_timeout_covers_a_silent_handshake() -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, silent, 0)
            port = listeners[0].socket.getsockname()[1]
            with pytest.raises(ConnectTimeoutError) as info:
                await Connection.open(ConnectionConfig(port=port, connect_timeout=0.2))
            assert isinstance(info.value, rex.TimeoutError)
            nursery.cancel_scope.cancel()


async def test_read_timeout_breaks_the_connection(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config(read_timeout=0.1))
        try:
            with pytest.raises(ReadTimeoutError) as info:
                await conn.execute(["DEBUG", "SLEEP", "0.5"])
            assert isinstance(info.value, rex.TimeoutError)
            assert conn.broken
            with pytest.raises(ConnectionClosedError):
                await conn.execute(["PING"])
        finally:
            await conn.aclose()


async def test_write_timeout_when_the_peer_stops_reading() -> None:
    accepted = trio.Event()

    async def never_reads(stream: trio.SocketStream) -> None:
        await stream.send_all(b"+OK\r\n" * 3)  # answers the handshake (AUTH-less RESP2) blindly
        accepted.set()
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, never_reads, 0)
            port = listeners[0].socket.getsockname()[1]
            conn = await Connection.open(ConnectionConfig(port=port, protocol=2, write_timeout=0.2))
            await accepted.wait()
            with pytest.raises(WriteTimeoutError):
                await conn.execute(["SET", "big", b"x" * 64_000_000])
            assert conn.broken
            await conn.aclose()
            nursery.cancel_scope.cancel()


async def test_server_closing_the_connection(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config(client_name="victim"))
        try:
            assert not conn.peer_closed()
            await local_server.execute("CLIENT", "KILL", "SKIPME", "no", "ID",
                                       await conn.execute(["CLIENT", "ID"]))  # fmt: skip
            with pytest.raises(rex.ConnectionError):
                await conn.execute(["PING"])
            assert conn.broken and conn.peer_closed()
        finally:
            await conn.aclose()


async def test_peer_closed_detects_an_idle_connection_killed(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config())
        try:
            conn_id = await conn.execute(["CLIENT", "ID"])
            await local_server.execute("CLIENT", "KILL", "ID", conn_id)
            await trio.lowlevel.wait_readable(conn._fd)  # the FIN has arrived
            assert conn.peer_closed()
            assert conn.broken
        finally:
            await conn.aclose()


async def test_cancelled_after_write_owes_a_reply_and_drain_settles_it(
    local_server: LocalServer,
) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config())
        try:
            await conn.execute(["SET", "drain-key", "right"])
            with trio.move_on_after(0.05) as scope:
                await conn.execute(["DEBUG", "SLEEP", "0.3"])
            assert scope.cancelled_caught
            assert conn.owed_replies == 1 and not conn.broken
            await conn.drain()
            assert conn.owed_replies == 0
            assert await conn.execute(["GET", "drain-key"]) == b"right"
        finally:
            await conn.aclose()


async def test_cancelled_before_write_owes_nothing(local_server: LocalServer) -> None:
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config())
        try:
            with trio.CancelScope() as scope:
                scope.cancel()
                await conn.execute(["SET", "never", "written"])
            assert conn.owed_replies == 0 and not conn.broken
            assert await conn.execute(["EXISTS", "never"]) == 0
        finally:
            await conn.aclose()


async def test_push_frames_are_dispatched_not_returned(local_server: LocalServer) -> None:
    pushes: list[list[object]] = []
    with trio.fail_after(10):
        conn = await Connection.open(local_server.config())
        conn.on_push = lambda _conn, frame: pushes.append(list(frame))
        try:
            await conn.execute(["CLIENT", "TRACKING", "ON"])
            await conn.execute(["SET", "tracked", "1"])
            assert await conn.execute(["GET", "tracked"]) == b"1"
            await local_server.execute("SET", "tracked", "2")  # invalidates our cached read
            while not pushes:
                assert await conn.execute(["PING"]) == b"PONG"  # never the push frame
            assert pushes[0][0] == b"invalidate"
            assert await conn.execute(["GET", "tracked"]) == b"2"
        finally:
            await conn.aclose()


async def test_unix_socket(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with LocalServer(extra_args=["--unixsocket", str(path)]) as server:
        assert server.running
        with trio.fail_after(10):
            conn = await Connection.open(ConnectionConfig(unix_socket_path=str(path)))
            try:
                assert await conn.execute(["PING"]) == b"PONG"
                assert conn.config.address == f"unix:{path}"
            finally:
                await conn.aclose()


# --- TLS, through a real TLS terminator in front of the real server ---------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def _tls_front(
    nursery: trio.Nursery,
    ca: trustme.CA,
    upstream: LocalServer,
    hostname: str,
    accepted: list[float] | None = None,
) -> int:
    """A TLS terminator for ``upstream`` with a certificate for ``hostname`` issued by
    ``ca``; records when it accepted each connection in ``accepted``."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(hostname).configure_cert(server_ctx)

    async def handle(raw: trio.SocketStream) -> None:
        if accepted is not None:
            accepted.append(trio.current_time())
        tls = trio.SSLStream(raw, server_ctx, server_side=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            return
        up = await trio.open_tcp_stream(*upstream.address)
        async with trio.open_nursery() as pipes:
            pipes.start_soon(_pipe, tls, up)
            pipes.start_soon(_pipe, up, tls)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return int(listeners[0].socket.getsockname()[1])


async def _pipe(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(dst)


async def test_tls_verified_round_trip(ca: trustme.CA, local_server: LocalServer) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _tls_front(nursery, ca, local_server, "localhost")
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            conn = await Connection.open(
                ConnectionConfig(host="localhost", port=port, ssl_context=ctx)
            )
            assert await conn.execute(["ECHO", "over tls"]) == b"over tls"
            await conn.aclose()
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("case", ["unknown-ca", "wrong-hostname"])
async def test_tls_rejects_unverified_peers(
    case: str, ca: trustme.CA, local_server: LocalServer
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            cert_host = "other.example" if case == "wrong-hostname" else "localhost"
            port = await _tls_front(nursery, ca, local_server, cert_host)
            ctx = ssl.create_default_context()
            if case == "wrong-hostname":
                ca.configure_trust(ctx)
            with pytest.raises(CertificateVerificationError) as info:
                await Connection.open(
                    ConnectionConfig(host="localhost", port=port, ssl_context=ctx)
                )
            assert isinstance(info.value, rex.ConnectionError)
            assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
            assert was_unsent(info.value)
            nursery.cancel_scope.cancel()


# What OpenSSL says of each case (its own verify_message), said once in the error.
_WHY = {
    "unknown-ca": "unable to get local issuer certificate",
    "wrong-hostname": "Hostname mismatch, certificate is not valid for 'localhost'.",
}


@pytest.mark.parametrize("case", ["unknown-ca", "wrong-hostname"])
async def test_certificate_failure_is_a_certificate_error_said_once_and_never_retried(
    case: str, ca: trustme.CA, local_server: LocalServer
) -> None:
    """Issue 27: it was dialled 3 times in 0.16 s and reported as ``EPERM (...)`` with the SSL
    text twice. Through a client's pool: one dial, one clear typed error."""
    accepted: list[float] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            cert_host = "other.example" if case == "wrong-hostname" else "localhost"
            port = await _tls_front(nursery, ca, local_server, cert_host, accepted)
            ctx = ssl.create_default_context()
            if case == "wrong-hostname":
                ca.configure_trust(ctx)
            async with Client("localhost", port, ssl_context=ctx) as client:
                with pytest.raises(CertificateVerificationError) as info:
                    await client.ping()
                dials = client.stats().dials
            nursery.cancel_scope.cancel()
    message = str(info.value)
    assert message == f"the TLS certificate of localhost:{port} failed verification: {_WHY[case]}"
    assert "EPERM" not in message and "certificate verify failed" not in message
    assert isinstance(info.value, rex.ConnectionError)
    assert (dials, len(accepted)) == (1, 1)  # not retried


@pytest.fixture
def patient_autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only once nothing has happened for 20 real milliseconds, so
    the kernel completes a local TCP connect before the clock can move past it."""
    return trio.testing.MockClock(autojump_threshold=0.02)


async def test_connect_timeout_bounds_the_whole_dial_tls_handshake_included(
    patient_autojump_clock: trio.testing.MockClock,
) -> None:
    """Issue 27: ``connect_timeout=1.0`` against a TLS listener that never answers took
    3.15 s (three attempts of 1 s each). The whole dial takes the connect timeout, exactly."""
    accepted: list[float] = []

    async def silent(stream: trio.SocketStream) -> None:  # accepts TCP, never speaks TLS
        accepted.append(trio.current_time())
        await trio.sleep_forever()

    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, silent, 0)
            port = listeners[0].socket.getsockname()[1]
            ctx = ssl.create_default_context()
            async with Client(
                "127.0.0.1",
                port,
                ssl_context=ctx,
                connect_timeout=1.0,
                pool=PoolOptions(timeout=60.0, dial_retries=2),
            ) as client:
                start = trio.current_time()
                with pytest.raises(ConnectTimeoutError):
                    await client.ping()
                elapsed = trio.current_time() - start
                dials = client.stats().dials
            nursery.cancel_scope.cancel()
    assert elapsed == pytest.approx(1.0, abs=1e-6)
    assert dials == 1 and len(accepted) == 1  # the TCP connect worked; the budget was spent


async def test_tls_verification_off_when_the_context_says_so(
    ca: trustme.CA, local_server: LocalServer
) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await _tls_front(nursery, ca, local_server, "other.example")
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = await Connection.open(
                ConnectionConfig(host="localhost", port=port, ssl_context=ctx)
            )
            assert await conn.execute(["PING"]) == b"PONG"
            await conn.aclose()
            nursery.cancel_scope.cancel()


# --- the read deadline holds while bytes keep arriving (issue 12) --------------------------------


async def test_expired_deadline_stops_the_read_within_one_receive_while_data_waits() -> None:
    # A socket pair whose receive side is full of an endless reply: every read succeeds at
    # once, so only an explicit check between reads can notice the deadline.
    raw, theirs = socket.socketpair()
    theirs.setblocking(False)
    ours = trio.socket.from_stdlib_socket(raw)
    with ours, theirs:
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        prefilled = 0
        data = b"*100000000\r\n" + b":1\r\n" * 16384
        with contextlib.suppress(BlockingIOError):
            while True:
                prefilled += theirs.send(data)
                data = b":1\r\n" * 16384
        assert prefilled > 5 * 65536
        # 100 million elements declared: past max_reply_elements, raised (a deadline test).
        config = ConnectionConfig(read_timeout=1e-6, max_reply_elements=2**40)
        conn = Connection(config, trio.SocketStream(ours))
        async with trio.open_nursery() as nursery:
            conn.watchdog = Watchdog()
            await nursery.start(conn.watchdog.run)
            with trio.fail_after(10), pytest.raises(ReadTimeoutError):
                await conn.execute(["GET", "x"])  # the deadline passes at once
            nursery.cancel_scope.cancel()
        left = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := raw.recv(1 << 20):
                left += len(chunk)
        # The watchdog runs at the reader's next checkpoint: a read or two went on after the
        # deadline.  Without the check between reads the socket would have been emptied.
        assert left >= prefilled - 3 * 65536
        assert conn.broken
