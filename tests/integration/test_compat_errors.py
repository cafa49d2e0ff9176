"""Errors that point the way (issue 24, item 3), against real servers and, where redis-py has
an answer, checked against it: use from asyncio, a MOVED reaching a ``Client``, credentials a
cluster refuses, and no ``BlockingIOError`` in the context of an interrupted read."""

from __future__ import annotations

import asyncio

import pytest
import redis
import trio
from redis import exceptions as rex

from trio_cluster import Client, ClusterClient
from trio_cluster.errors import AuthenticationError, TrioRequiredError
from trio_cluster.routing.rules import key_slot
from trio_cluster.testing import LocalCluster, LocalServer


def _chain(error: BaseException | None) -> list[BaseException]:
    """The error and everything in its ``__context__``/``__cause__`` chain."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


@pytest.mark.parametrize("client_class", [Client, ClusterClient])
def test_use_from_asyncio_says_trio_is_needed(
    client_class: type[Client] | type[ClusterClient], local_server: LocalServer
) -> None:
    async def enter() -> None:
        async with client_class(local_server.host, local_server.port):
            pass

    async def command_without_async_with() -> None:
        await client_class(local_server.host, local_server.port).get("k")

    for main in (enter, command_without_async_with):
        with pytest.raises(TrioRequiredError) as caught:
            asyncio.run(main())
        message = str(caught.value)
        assert f"{client_class.__name__} runs under trio only" in message
        assert "under asyncio" in message
        assert "trio.run" in message and "trio-asyncio" in message
        assert not any(isinstance(e, AttributeError) for e in _chain(caught.value))


async def test_a_moved_reaching_a_client_names_cluster_client(local_cluster: LocalCluster) -> None:
    host, port = local_cluster.startup_nodes[0]
    with trio.fail_after(20):
        async with ClusterClient(host, port) as rc:
            here = f"{host}:{port}"
            assert here in {n.name for n in rc.get_primaries()}
            keys = (f"moved-{i}" for i in range(1000))
            elsewhere = next(
                k for k in keys if getattr(rc.get_node_from_key(k), "name", "") != here
            )
        reference = redis.Redis(host=host, port=port)
        try:
            with pytest.raises(rex.ResponseError) as theirs:
                await trio.to_thread.run_sync(reference.get, elsewhere)
        finally:
            reference.close()
        async with Client(host, port) as r:
            with pytest.raises(rex.ResponseError) as ours:
                await r.get(elsewhere)
            assert isinstance(ours.value, type(theirs.value))  # redis-py's class is kept
            assert str(ours.value).startswith(f"{key_slot(elsewhere.encode())} ")
            assert "use trio_cluster.ClusterClient" in str(ours.value)
            async with r.pipeline(transaction=False) as p:
                p.get(elsewhere)
                with pytest.raises(type(theirs.value), match=r"use trio_cluster\.ClusterClient"):
                    await p.execute()


async def test_a_cluster_refusing_the_credentials_raises_authentication_error() -> None:
    with trio.fail_after(50):
        async with LocalCluster(masters=3, replicas_per_master=0, password="right") as cluster:
            host, port = cluster.startup_nodes[0]
            client = ClusterClient(host, port, password="wrong", connect_timeout=2.0)
            with pytest.raises(rex.AuthenticationError) as caught:
                async with client:
                    pass
            assert isinstance(caught.value, AuthenticationError)
            assert "refused the credentials" in str(caught.value)
            assert any(f"{h}:{p} refused" in str(caught.value) for h, p in cluster.startup_nodes)
            assert "wrong" not in str(caught.value)  # the password is never echoed


async def test_an_interrupted_read_carries_no_blocking_io_error() -> None:
    """A user's ``fail_after`` around a read the server never answers (a paused server): the
    exception's context chain holds the cancellation and the timeout, nothing from the
    non-blocking read that found no data."""
    with LocalServer() as server:
        async with Client(server.host, server.port, read_timeout=30.0) as r:
            with trio.fail_after(10):
                await r.ping()  # a connection, open and idle, before the server stops
            server.pause()
            try:
                with pytest.raises(trio.TooSlowError) as caught:
                    with trio.fail_after(0.5):
                        await r.get("k")
            finally:
                server.resume()
        chain = _chain(caught.value)
        assert any(isinstance(e, trio.Cancelled) for e in chain)  # the chain was walked
        assert not [e for e in chain if isinstance(e, BlockingIOError)], chain
