"""redis-py's constructor and URL options, checked by their effect: the same options given to
redis-py's client and to trio-cluster's, on the same real server, and what the server (or the
socket) shows compared (issue 24, item 2).

Each check builds both clients from one option set, given as keywords and again as a URL
(``from_url``), and runs the same steps on each; redis-py's synchronous client runs in a worker
thread.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import trio
import trustme
from redis import exceptions as rex
from redis.backoff import ConstantBackoff
from redis.cluster import LoadBalancingStrategy
from redis.retry import Retry

from trio_cluster import Client, ClusterClient, ReadFrom
from trio_cluster.testing import LocalCluster, LocalServer


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    """A server of this module's own (its tests kill connections and reset statistics)."""
    with LocalServer() as own:
        yield own


def _url(server: LocalServer, query: str) -> str:
    return f"redis://{server.host}:{server.port}/0?{query}"


def _both(
    server: LocalServer, options: dict[str, Any], query: str | None
) -> tuple[redis.Redis, Client]:
    """redis-py's client and ours with ``options`` (or the URL ``query``)."""
    if query is None:
        return redis.Redis(server.host, server.port, **options), Client(
            server.host, server.port, **options
        )
    url = _url(server, query)
    return redis.Redis.from_url(url), Client.from_url(url)


def _pings(server: redis.Redis) -> int:
    stats = server.info("commandstats")
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


@pytest.mark.parametrize("query", [None, "client_name=diff-name"])
async def test_client_name(server: LocalServer, query: str | None) -> None:
    reference, ours = _both(server, {"client_name": "diff-name"}, query)
    with trio.fail_after(20):
        theirs = await trio.to_thread.run_sync(reference.client_getname)
        async with ours:
            mine = await ours.client_getname()
    reference.close()
    assert theirs == mine == "diff-name"


@pytest.mark.parametrize("query", [None, "max_connections=1"])
async def test_max_connections_bounds_the_pool(server: LocalServer, query: str | None) -> None:
    """One connection held by a WATCH: the next command finds the pool at its bound and
    fails at once with redis-py's ``MaxConnectionsError``."""
    reference, ours = _both(server, {"max_connections": 1}, query)

    def theirs() -> Any:
        pipe = reference.pipeline()
        pipe.watch("held")
        try:
            return reference.get("other")
        except Exception as error:
            return error
        finally:
            pipe.reset()

    with trio.fail_after(20):
        their_outcome = await trio.to_thread.run_sync(theirs)
        async with ours, ours.pipeline() as pipe:
            await pipe.watch("held")
            with pytest.raises(rex.RedisError) as mine:
                await ours.get("other")
            await pipe.reset()
            assert await ours.get("other") is None  # the bound, not a broken client
    reference.close()
    assert isinstance(their_outcome, rex.MaxConnectionsError)
    assert isinstance(mine.value, type(their_outcome))


async def test_single_connection_client_uses_one_connection(server: LocalServer) -> None:
    """(A ``Redis`` option, not a URL one, in redis-py.)"""
    reference, ours = _both(server, {"single_connection_client": True}, None)
    with trio.fail_after(20):
        their_ids = await trio.to_thread.run_sync(lambda: {reference.client_id() for _ in range(3)})
        async with ours:
            mine: set[int] = set()

            async def one() -> None:
                mine.add(await ours.client_id())

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(one)
            assert len(ours.connections()) == 1
    reference.close()
    assert len(their_ids) == len(mine) == 1


def _their_socket(client: redis.Redis) -> socket.socket:
    conn = client.connection or client.connection_pool.get_connection()
    conn.connect()
    sock = conn._sock
    assert sock is not None
    return sock


@pytest.mark.parametrize(
    ("options", "query"),
    [
        ({}, None),
        ({"socket_keepalive": False}, "socket_keepalive=false"),
        ({"socket_keepalive_options": {socket.TCP_KEEPIDLE: 17, socket.TCP_KEEPCNT: 4}}, None),
    ],
)
async def test_socket_keepalive(
    server: LocalServer, options: dict[str, Any], query: str | None
) -> None:
    """What the socket says: SO_KEEPALIVE (on by default in both), and the TCP keepalive
    settings."""
    reference, ours = _both(server, {**options, "single_connection_client": True}, query)

    def settings(sock: Any) -> tuple[int, int, int]:
        return (
            bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
        )

    with trio.fail_after(20):
        theirs = await trio.to_thread.run_sync(lambda: settings(_their_socket(reference)))
        async with ours:
            await ours.ping()
            (conn,) = ours.pool.live_connections()
            mine = settings(conn._stream)
    reference.close()
    assert theirs == mine
    assert mine[0] is (options.get("socket_keepalive", True))
    if "socket_keepalive_options" in options:
        assert mine[1:] == (17, 4)


@pytest.mark.parametrize(("query", "interval"), [(None, 0.2), ("health_check_interval=1", 1)])
async def test_health_check_interval_pings_an_idle_connection(
    server: LocalServer, query: str | None, interval: float
) -> None:
    """A connection idle longer than the interval is sent a PING before its next command:
    one PING shows in the server's statistics, for each client.  (redis-py's URL takes
    whole seconds.)"""
    reference, ours = _both(server, {"health_check_interval": interval}, query)
    idle = interval * 1.5  # the time the option is about, not a synchronisation

    def theirs() -> list[int]:
        first = _pings(reference)
        second = _pings(reference)  # not idle: no PING
        threading.Event().wait(idle)
        return [second - first, _pings(reference) - second]

    with trio.fail_after(20):
        their_pings = await trio.to_thread.run_sync(theirs)
        async with ours:
            first = _count(await ours.info("commandstats"))
            second = _count(await ours.info("commandstats"))
            await trio.sleep(idle)
            my_pings = [second - first, _count(await ours.info("commandstats")) - second]
    reference.close()
    assert their_pings == my_pings == [0, 1]


def _count(stats: dict[str, Any]) -> int:
    return int(stats.get("cmdstat_ping", {}).get("calls", 0))


@pytest.mark.parametrize(("retries", "answered"), [(3, True), (0, False)])
async def test_retry_sends_a_read_again_after_a_timeout(
    server: LocalServer, retries: int, answered: bool
) -> None:
    """``retry=Retry(backoff, n)``: a read that timed out on a server paused for 0.8 s is sent
    again, and answered once the server is back, by both clients; with no retries both
    raise redis-py's ``TimeoutError``."""
    options = {"retry": Retry(ConstantBackoff(0.05), retries), "socket_timeout": 0.3}
    reference, ours = _both(server, options, None)

    def theirs() -> Any:
        reference.set("retried", "v")
        server.pause()
        threading.Timer(0.8, server.resume).start()
        try:
            return reference.get("retried")
        except Exception as error:
            return error

    async def mine() -> Any:
        async with ours:
            await ours.set("retried", "v")
            server.pause()
            outcome: list[Any] = []

            async def get() -> None:
                try:
                    outcome.append(await ours.get("retried"))
                except Exception as error:
                    outcome.append(error)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(_resume_after, server, 0.8)
                nursery.start_soon(get)
            return outcome[0]

    try:
        with trio.fail_after(30):
            their_outcome = await trio.to_thread.run_sync(theirs)
            await trio.sleep(1.0)  # resumed (the timer's thread) before ours starts
            my_outcome = await mine()
    finally:
        server.resume()
        reference.close()
    if answered:
        assert their_outcome == my_outcome == b"v"
    else:
        assert isinstance(their_outcome, rex.TimeoutError), their_outcome
        assert isinstance(my_outcome, type(their_outcome)), my_outcome


async def _resume_after(server: LocalServer, seconds: float) -> None:
    await trio.sleep(seconds)
    server.resume()


# --- TLS: redis-py's ssl_* options, through a real TLS terminator -----------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def _tls_front(
    nursery: trio.Nursery, ca: trustme.CA, upstream: LocalServer, name: str
) -> int:
    """A TLS terminator for ``upstream`` with ``ca``'s certificate for ``name``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)

    async def handle(raw: trio.SocketStream) -> None:
        tls = trio.SSLStream(raw, context, server_side=True)
        try:
            await tls.do_handshake()
            up = await trio.open_tcp_stream(*upstream.address)
        except (trio.BrokenResourceError, OSError):
            return
        async with trio.open_nursery() as pipes:
            pipes.start_soon(_pipe, tls, up)
            pipes.start_soon(_pipe, up, tls)

    listeners = await nursery.start(trio.serve_tcp, handle, 0)
    return int(listeners[0].socket.getsockname()[1])


async def _pipe(source: trio.abc.Stream, sink: trio.abc.Stream) -> None:
    try:
        while data := await source.receive_some(65536):
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(sink)


@pytest.mark.parametrize(
    ("certificate_for", "options", "verified"),
    [
        ("localhost", {"ssl_ca_certs": "CA"}, True),
        ("localhost", {}, False),  # unknown CA: refused
        ("localhost", {"ssl_cert_reqs": "none"}, True),
        ("other.example", {"ssl_ca_certs": "CA"}, False),  # wrong host name
        ("other.example", {"ssl_ca_certs": "CA", "ssl_check_hostname": False}, True),
    ],
)
async def test_ssl_options(
    server: LocalServer,
    ca: trustme.CA,
    tmp_path: Any,
    certificate_for: str,
    options: dict[str, Any],
    verified: bool,
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    options = {k: (str(ca_file) if v == "CA" else v) for k, v in options.items()}
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await _tls_front(nursery, ca, server, certificate_for)
            kwargs = {"ssl": True, "socket_timeout": 5, **options}

            def theirs() -> Any:
                client = redis.Redis("localhost", port, **kwargs)
                try:
                    return client.echo("tls")
                except Exception as error:
                    return error
                finally:
                    client.close()

            their_outcome = await trio.to_thread.run_sync(theirs)
            try:
                async with Client("localhost", port, **kwargs) as ours:
                    my_outcome: Any = await ours.echo("tls")
            except Exception as error:
                my_outcome = error
            nursery.cancel_scope.cancel()
    if verified:
        assert their_outcome == my_outcome == b"tls"
    else:
        assert isinstance(their_outcome, rex.ConnectionError), their_outcome
        assert isinstance(my_outcome, type(their_outcome)), my_outcome


# --- cluster options -----------------------------------------------------------------------


def _gets(node: redis.Redis) -> int:
    return int(node.info("commandstats").get("cmdstat_get", {}).get("calls", 0))


@pytest.mark.parametrize(
    ("options", "ours_read_from", "replica_share"),
    [
        ({"read_from_replicas": True}, None, "some"),
        ({"load_balancing_strategy": LoadBalancingStrategy.ROUND_ROBIN}, None, "some"),
        ({"load_balancing_strategy": LoadBalancingStrategy.RANDOM_REPLICA}, None, "all"),
        ({"load_balancing_strategy": LoadBalancingStrategy.ROUND_ROBIN_REPLICAS}, None, "all"),
        ({}, ReadFrom.PRIMARY, "none"),
    ],
)
async def test_reads_from_replicas(
    local_cluster: LocalCluster,
    options: dict[str, Any],
    ours_read_from: ReadFrom | None,
    replica_share: str,
) -> None:
    """Where GETs are served, as each node's statistics count them (CONFIG RESETSTAT
    first): by the replica of the key's slot, for some, all or none of them."""
    host, port = local_cluster.startup_nodes[0]
    key = "{replica-reads}k"
    reads = 8

    async def served(run: Callable[[], Any]) -> tuple[int, int]:
        async with ClusterClient(host, port) as admin:
            primary = admin.get_node_from_key(key)
            replica = admin.get_node_from_key(key, replica=True)
            assert primary is not None and replica is not None
            nodes = [redis.Redis(n.host, n.port) for n in (primary, replica)]
            for node in nodes:
                await trio.to_thread.run_sync(node.config_resetstat)
            await run()
            counts = [await trio.to_thread.run_sync(_gets, node) for node in nodes]
            for node in nodes:
                node.close()
            return counts[0], counts[1]

    def theirs() -> None:
        client = redis.RedisCluster(host, port, **options)
        for _ in range(reads):
            client.get(key)
        client.close()

    async def mine() -> None:
        extra = {"read_from": ours_read_from} if ours_read_from is not None else {}
        async with ClusterClient(host, port, **options, **extra) as client:
            for _ in range(reads):
                await client.get(key)

    with trio.fail_after(40):
        their_counts = await served(lambda: trio.to_thread.run_sync(theirs))
        my_counts = await served(mine)
    for primary_gets, replica_gets in (their_counts, my_counts):
        assert primary_gets + replica_gets >= reads
        if replica_share == "none":
            assert replica_gets == 0
        elif replica_share == "all":
            assert primary_gets == 0
        else:
            assert primary_gets > 0 and replica_gets > 0


@pytest.mark.parametrize("required", [True, False])
async def test_require_full_coverage(required: bool) -> None:
    """A cluster with one slot unassigned (its servers still serving the others): redis-py and
    ours both refuse to start when full coverage is required, and both serve a covered slot
    when it is not."""
    extra = ("--cluster-require-full-coverage", "no")
    with trio.fail_after(60):
        async with LocalCluster(masters=3, replicas_per_master=0, extra_args=extra) as cluster:
            host, port = cluster.startup_nodes[0]
            async with ClusterClient(host, port) as admin:
                zero = admin.slot_map.primary(0)
                assert zero is not None
            owner = redis.Redis(*zero.address)
            await trio.to_thread.run_sync(owner.execute_command, "CLUSTER", "DELSLOTS", 0)
            owner.close()

            def theirs() -> Any:
                try:
                    client = redis.RedisCluster(host, port, require_full_coverage=required)
                except Exception as error:
                    return error
                try:
                    return client.set("{x}", "covered")
                finally:
                    client.close()

            their_outcome = await trio.to_thread.run_sync(theirs)
            try:
                async with ClusterClient(host, port, require_full_coverage=required) as ours:
                    my_outcome: Any = await ours.set("{x}", "covered")
            except Exception as error:
                my_outcome = error
    if required:
        assert isinstance(their_outcome, rex.RedisClusterException), their_outcome
        assert isinstance(my_outcome, type(their_outcome)), my_outcome
        assert "16383 of 16384 slots" in str(my_outcome)
    else:
        assert their_outcome is my_outcome is True
