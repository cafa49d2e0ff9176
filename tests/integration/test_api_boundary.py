"""What leaves the public API is what a redis-py user expects: single exceptions (never trio's
ExceptionGroup), redis-py's error classes and DataError before anything is sent, redis-py's
options.  Against the real session servers; redis-py 8 on the same server is the oracle.

Keys are prefixed ``tb:<random>:`` so the shared servers can be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import redis.asyncio as aredis
import trio
from redis import exceptions as rex

from trio_cluster import Client, ClusterClient
from trio_cluster.errors import ClientNotOpenError
from trio_cluster.routing.rules import key_slot
from trio_cluster.testing import LocalCluster, LocalServer, free_port
from trio_cluster.testing.ctrl_c import CLUSTER_APP


class AppError(Exception):
    """The application's own exception."""


def _prefix() -> str:
    return f"tb:{uuid.uuid4().hex[:8]}:"


def _cross_slot_keys(prefix: str, count: int = 3) -> list[str]:
    """Keys in ``count`` different slots."""
    keys: dict[int, str] = {}
    i = 0
    while len(keys) < count:
        key = f"{prefix}{i}"
        keys.setdefault(key_slot(key.encode()) * 3 // 16384, key)
        i += 1
    return list(keys.values())


def _cluster(cluster: LocalCluster, **kwargs: Any) -> ClusterClient:
    return ClusterClient(startup_nodes=cluster.startup_nodes[:1], **kwargs)


def _client(server: LocalServer, **kwargs: Any) -> Client:
    return Client(host=server.host, port=server.port, **kwargs)


async def _redis_py(call: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a redis-py asyncio call (the oracle) in a thread with its own event loop; returns
    the result or the exception it raised."""

    async def wrapped() -> Any:
        try:
            return await call()
        except Exception as error:
            return error

    return await trio.to_thread.run_sync(asyncio.run, wrapped())


# --- 1. no ExceptionGroup crosses the public API ------------------------------------------------


@pytest.mark.parametrize("kind", ["client", "cluster"])
async def test_application_error_leaves_async_with_unchanged(
    kind: str, local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    client = _client(local_server) if kind == "client" else _cluster(local_cluster)
    error = AppError("mine")
    with trio.fail_after(20), pytest.raises(AppError) as caught:
        async with client:
            await client.ping()
            raise error
    assert caught.value is error
    assert caught.value.__context__ is None  # no group in the chain either


@pytest.mark.parametrize("kind", ["client", "cluster"])
async def test_library_error_leaves_async_with_as_itself(
    kind: str, local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    client = _client(local_server) if kind == "client" else _cluster(local_cluster)
    key = _prefix() + "s"
    with trio.fail_after(20):
        try:
            async with client:
                await client.set(key, "not a number")
                await client.incr(key)
        except rex.ResponseError as error:
            assert type(error) is rex.ResponseError
            assert str(error) == "value is not an integer or out of range"  # redis-py's text
        else:
            raise AssertionError("INCR of a string must fail")


@pytest.mark.parametrize("kind", ["client", "cluster"])
async def test_cancel_and_keyboard_interrupt_leave_async_with_bare(
    kind: str, local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    def make() -> Client | ClusterClient:
        return _client(local_server) if kind == "client" else _cluster(local_cluster)

    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with make() as client:
                await client.ping()
                scope.cancel()
                await trio.sleep_forever()
        assert scope.cancelled_caught
        with pytest.raises(KeyboardInterrupt) as caught:
            async with make() as client:
                await client.ping()
                raise KeyboardInterrupt
        assert type(caught.value) is KeyboardInterrupt


async def test_refused_cluster_is_redis_py_cluster_exception_naming_the_cause() -> None:
    port = free_port("127.0.0.1")
    with trio.fail_after(20), pytest.raises(rex.RedisClusterException) as caught:
        async with ClusterClient(host="127.0.0.1", port=port, connect_timeout=2.0):
            pass
    assert isinstance(caught.value, rex.ConnectionError)
    assert "Redis Cluster cannot be connected" in str(caught.value)
    assert "ECONNREFUSED" in str(caught.value)
    reference = await _redis_py(
        lambda: aredis.RedisCluster(host="127.0.0.1", port=port).initialize()
    )
    assert isinstance(reference, rex.RedisClusterException)


async def test_fan_out_failure_is_one_error_with_the_others_attached(
    local_cluster: LocalCluster,
) -> None:
    host, port = local_cluster.startup_nodes[0]
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            for call in (lambda: rc.script_load("bad lua"),
                         lambda: rc.execute_command("DBSIZE", "x")):  # fmt: skip
                with pytest.raises(rex.ResponseError) as caught:
                    await call()
                error = caught.value
                assert type(error) is rex.ResponseError
                others = error.other_errors  # type: ignore[attr-defined]
                assert len(others) == len(local_cluster.primaries) - 1
                assert all(type(o) is rex.ResponseError for o in others)
                assert len(error.__notes__) == len(others)
    reference = await _redis_py(
        lambda: aredis.RedisCluster(host=host, port=port).script_load("x y")
    )
    assert type(reference) is rex.ResponseError


# --- 2. bad values: DataError before anything is sent --------------------------------------------


async def test_none_in_cluster_calls_raises_data_error_and_sends_nothing(
    local_cluster: LocalCluster,
) -> None:
    prefix = _prefix()
    a, b, c = _cross_slot_keys(prefix)
    with trio.fail_after(30):
        async with _cluster(local_cluster) as rc:
            await rc.mset({a: 1, b: 2, c: 3})
            calls: list[Callable[[], Coroutine[Any, Any, Any]]] = [
                lambda: rc.delete(a, b, None),  # type: ignore[arg-type]
                lambda: rc.mset({a: 9, b: None, c: 9}),  # type: ignore[dict-item]
                lambda: rc.mget(a, b, None),  # type: ignore[arg-type]
                lambda: rc.set(a, None),  # type: ignore[arg-type]
                lambda: rc.execute_command("DEL", a, b, c, object()),
            ]
            for call in calls:
                with pytest.raises(rex.DataError) as caught:
                    await call()
                assert "Invalid input of type" in str(caught.value)
                repr(caught.value)
            for transaction in (False, True):
                async with rc.pipeline(transaction=transaction) as p:
                    p.delete(a)
                    p.set(b, None)  # type: ignore[arg-type]
                    p.delete(c)
                    with pytest.raises(rex.DataError):
                        await p.execute()
                    assert len(p) == 0  # reset, as redis-py's execute does
            assert await rc.mget(a, b, c) == [b"1", b"2", b"3"]  # nothing was sent
            assert await rc.ping() is True


async def test_none_in_client_pipeline_and_transaction_raises_data_error(
    local_server: LocalServer,
) -> None:
    key = _prefix() + "k"
    with trio.fail_after(20):
        async with _client(local_server) as r:
            for transaction in (False, True):
                async with r.pipeline(transaction=transaction) as p:
                    p.set(key, 1)
                    p.set(key, None)  # type: ignore[arg-type]
                    with pytest.raises(rex.DataError):
                        await p.execute()
            assert await r.exists(key) == 0
            assert [c.state.name for c in r.connections()] == ["IDLE"]
    reference = await _redis_py(
        lambda: aredis.Redis(host=local_server.host, port=local_server.port).set(key, None)  # type: ignore[arg-type]
    )
    assert type(reference) is rex.DataError


# --- 3. error classes against redis-py ---------------------------------------------------------


async def test_cross_slot_errors_match_redis_py(local_cluster: LocalCluster) -> None:
    host, port = local_cluster.startup_nodes[0]
    a, b = _cross_slot_keys(_prefix(), 2)
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            ours: list[BaseException] = []
            for call in (lambda: rc.rename(a, b), lambda: rc.sinter(a, b)):
                with pytest.raises(rex.RedisClusterException) as caught:
                    await call()
                ours.append(caught.value)
            p = rc.pipeline(transaction=True)
            p.set(a, 1)
            p.set(b, 1)
            with pytest.raises(rex.CrossSlotTransactionError) as tx:
                await p.execute()
            ours.append(tx.value)

    async def reference() -> list[BaseException]:
        ref = aredis.RedisCluster(host=host, port=port)
        await ref.ping()  # redis-py's first command takes another path (the server's CROSSSLOT)
        errors = []
        for call in (lambda: ref.rename(a, b), lambda: ref.sinter(a, b)):
            try:
                await call()
            except Exception as error:
                errors.append(error)
        rp = ref.pipeline(transaction=True)
        rp.set(a, 1)
        rp.set(b, 1)
        try:
            await rp.execute()
        except Exception as error:
            errors.append(error)
        await ref.aclose()
        return errors

    theirs = await trio.to_thread.run_sync(asyncio.run, reference())
    assert len(theirs) == 3
    for mine, ref in zip(ours, theirs, strict=True):
        assert isinstance(mine, type(ref)), (mine, ref)
        assert str(mine) == str(ref)


# --- 4. redis-py's options -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["client", "cluster"])
async def test_decode_responses_matches_redis_py(
    kind: str, local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    prefix = _prefix()
    a, b, c = _cross_slot_keys(prefix) if kind == "cluster" else [prefix + x for x in "abc"]
    host, port = local_server.address if kind == "client" else local_cluster.startup_nodes[0]
    make = (
        _client(local_server, decode_responses=True)
        if kind == "client"
        else _cluster(local_cluster, decode_responses=True)
    )

    async def calls(r: Any) -> list[Any]:
        await r.set(a, "é")
        await r.hset(b, mapping={"f": "v", "g": 2})
        await r.rpush(c, "x", "y")
        p = r.pipeline()
        p.get(a)
        p.hgetall(b)
        return [
            await r.get(a),
            await r.hgetall(b),
            await r.lrange(c, 0, -1),
            await r.mget(a, a),
            await r.dump(a),  # raw bytes even when decoding
            await p.execute(),
        ]

    with trio.fail_after(20):
        async with make as r:
            ours = await calls(r)
            await r.delete(a, b, c)

    async def reference() -> list[Any]:
        ref: Any = (
            aredis.Redis(host=host, port=port, decode_responses=True)
            if kind == "client"
            else aredis.RedisCluster(host=host, port=port, decode_responses=True)
        )
        try:
            return await calls(ref)
        finally:
            await ref.delete(a, b, c)
            await ref.aclose()

    theirs = await trio.to_thread.run_sync(asyncio.run, reference())
    assert ours == theirs
    assert ours[0] == "é" and isinstance(ours[4], bytes)


async def test_encoding_option_encodes_and_decodes(local_server: LocalServer) -> None:
    key = _prefix() + "latin"
    with trio.fail_after(20):
        async with _client(local_server, encoding="latin-1", decode_responses=True) as r:
            await r.set(key, "é")
            assert await r.get(key) == "é"
        async with _client(local_server) as raw:
            assert await raw.get(key) == b"\xe9"
            await raw.delete(key)
        with pytest.raises(ValueError, match="encoding"):
            _client(local_server, encoding="no-such-codec")


async def test_bytearray_and_memoryview_values_are_accepted(local_cluster: LocalCluster) -> None:
    a, b, c = _cross_slot_keys(_prefix())
    with trio.fail_after(20):
        async with _cluster(local_cluster) as rc:
            assert await rc.set(bytearray(a.encode()), bytearray(b"1")) is True
            assert await rc.get(a) == b"1"
            await rc.mset({b: memoryview(b"2"), c: bytearray(b"3")})
            p = rc.pipeline()
            p.set(a, bytearray(b"4"))
            p.get(bytearray(a.encode()))
            assert await p.execute() == [True, b"4"]
            assert await rc.mget(a, b, c) == [b"4", b"2", b"3"]
            await rc.delete(a, b, c)


def test_socket_timeouts_map_as_redis_py_means_them(
    local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    rc = _cluster(local_cluster, socket_timeout=1.5, socket_connect_timeout=0.25)
    assert rc._base_config.read_timeout == rc._base_config.write_timeout == 1.5
    assert rc._base_config.connect_timeout == 0.25
    with pytest.raises(TypeError, match=r"ClusterClient\(\) got unexpected keyword argument"):
        _cluster(local_cluster, no_such_option=1)
    client = _client(local_server, socket_timeout=1.5)
    assert (client.config.read_timeout, client.config.write_timeout) == (1.5, 1.5)
    assert client.config.connect_timeout == 1.5
    client = _client(local_server, socket_timeout=2.0, socket_connect_timeout=0.5)
    assert client.config.connect_timeout == 0.5
    assert client.config.read_timeout == 2.0
    with pytest.raises(ValueError, match="socket_timeout"):
        _client(local_server, socket_timeout=1.0, read_timeout=2.0)
    with pytest.raises(TypeError, match=r"Client\(\) got unexpected keyword argument"):
        _client(local_server, no_such_option=1)


@pytest.mark.parametrize("kind", ["client", "cluster"])
async def test_aclose_closes_the_client(
    kind: str, local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    client = _client(local_server) if kind == "client" else _cluster(local_cluster)
    with trio.fail_after(20):
        async with client:
            await client.ping()
            await client.aclose()
            assert client.connections() == []
            with pytest.raises(rex.ConnectionError):
                await client.get("x")


# --- 7. messages -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["client", "cluster"])
async def test_a_client_used_outside_async_with_says_so(
    kind: str, local_server: LocalServer, local_cluster: LocalCluster
) -> None:
    client = _client(local_server) if kind == "client" else _cluster(local_cluster)
    with trio.fail_after(20), pytest.raises(ClientNotOpenError, match="async with"):
        await client.get("x")


async def test_dial_failure_log_keeps_the_message(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port("127.0.0.1")
    caplog.set_level(logging.WARNING, logger="trio_cluster")
    with trio.fail_after(20):
        async with Client(host="127.0.0.1", port=port) as r:
            with pytest.raises(rex.ConnectionError) as caught:
                await r.ping()
    assert "ECONNREFUSED" in str(caught.value)
    messages = [rec.getMessage() for rec in caplog.records if "dial failed" in rec.getMessage()]
    assert messages
    assert "ECONNREFUSED" in messages[0] and "network:ConnectionError" not in messages[0]


async def test_error_classes_and_texts_match_redis_py(local_server: LocalServer) -> None:
    key = _prefix() + "str"
    commands: list[tuple[Any, ...]] = [
        ("SET", key),  # ERR wrong number of arguments
        ("NOSUCHCOMMAND", "x"),  # ERR unknown command
        ("INCR", key),  # ERR value is not an integer
        ("LPUSH", key, "x"),  # WRONGTYPE (kept whole by redis-py)
        ("EVALSHA", "0" * 40, 0),  # NOSCRIPT
        ("AUTH", "nobody", "wrong"),  # WRONGPASS
    ]

    async def run(r: Any) -> list[BaseException | None]:
        await r.set(key, "text")
        out: list[BaseException | None] = []
        for args in commands:
            try:
                await r.execute_command(*args)
                out.append(None)
            except Exception as error:
                out.append(error)
        return out

    with trio.fail_after(20):
        async with _client(local_server) as r:
            ours = await run(r)

    async def reference() -> list[BaseException | None]:
        ref = aredis.Redis(host=local_server.host, port=local_server.port)
        try:
            return await run(ref)
        finally:
            await ref.delete(key)
            await ref.aclose()

    theirs = await trio.to_thread.run_sync(asyncio.run, reference())
    for args, mine, ref in zip(commands, ours, theirs, strict=True):
        assert ref is not None and mine is not None, args
        assert isinstance(mine, type(ref)), (args, mine, ref)
        # Deliberate difference: redis-py drops every known code (NOSCRIPT, WRONGPASS...) from
        # the text; trio-cluster drops only "ERR " and keeps the others, which its own
        # handshake and users' log searches rely on.
        # redis-py 8.2 keeps WRONGTYPE in its text (its status_code too): the server's words
        # are the reference either way.
        code = getattr(ref, "status_code", None)
        kept = code in (None, "ERR") or str(ref).startswith(f"{code} ")
        expected = str(ref) if kept else f"{code} {ref}"
        assert str(mine) == expected, (args, str(mine), str(ref))


@pytest.mark.slow
async def test_a_cluster_outage_logs_a_few_warnings_not_a_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="trio_cluster")
    with trio.fail_after(50):
        async with (
            LocalCluster(masters=3, replicas_per_master=0) as cluster,
            _cluster(cluster, connect_timeout=0.5) as rc,
        ):
            await rc.set("x", 1)
            for node in cluster.nodes:
                node.kill()
            caplog.clear()
            start = trio.current_time()
            while trio.current_time() - start < 2.0:  # load during the outage, not a wait
                # Once the node is known bad, the call fails at once (isolated).
                with trio.move_on_after(0.5), contextlib.suppress(rex.ConnectionError):
                    await rc.get("x")
            elapsed = trio.current_time() - start
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    # One subject per node (its dials) plus the topology; one record per subject per 10 s.
    subjects = len(cluster.nodes) + 1
    assert 1 <= len(warnings) <= subjects * (int(elapsed // 10) + 1), warnings
    assert all("network:ConnectionError" not in w for w in warnings)


async def test_ctrl_c_traceback_is_a_plain_keyboard_interrupt(local_cluster: LocalCluster) -> None:
    import signal
    import subprocess
    import sys

    host, port = local_cluster.startup_nodes[0]
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CLUSTER_APP, host, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        with trio.fail_after(30):
            assert process.stdout is not None and process.stderr is not None
            ready = b""
            while b"ready" not in ready:
                chunk = await process.stdout.receive_some()
                assert chunk, "the app ended before it was ready"
                ready += chunk
            process.send_signal(signal.SIGINT)
            stderr = b""
            while chunk := await process.stderr.receive_some():
                stderr += chunk
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
    text = stderr.decode()
    assert process.returncode != 0
    assert text.rstrip().endswith("KeyboardInterrupt"), text
    assert "Exception Group Traceback" not in text and "ExceptionGroup:" not in text, text
