"""PubSub pieces that need no server: message shapes, frame kinds, the bound, validation."""

from __future__ import annotations

import pytest
import trio
from redis import exceptions as rex

from trio_cluster import Client
from trio_cluster.clients.pubsub import PubSub, PubSubLimitError, PubSubRegistry
from trio_cluster.clients.pubsub_base import _backoff, _kind, _message, _name
from trio_cluster.wire.protocol import PushFrame


def test_messages_have_redis_py_shapes() -> None:
    assert _message("message", [b"message", b"ch", b"hi"]) == {
        "type": "message", "pattern": None, "channel": b"ch", "data": b"hi"}  # fmt: skip
    assert _message("pmessage", [b"pmessage", b"c*", b"ch", b"hi"]) == {
        "type": "pmessage", "pattern": b"c*", "channel": b"ch", "data": b"hi"}  # fmt: skip
    assert _message("smessage", [b"smessage", b"ch", b"hi"])["type"] == "smessage"
    # Confirmations: the channel (or pattern) under "channel", the count under "data".
    assert _message("psubscribe", [b"psubscribe", b"c*", 2]) == {
        "type": "psubscribe", "pattern": None, "channel": b"c*", "data": 2}  # fmt: skip


def test_frame_kinds_in_resp3_and_resp2() -> None:
    assert _kind(PushFrame([b"message", b"c", b"d"])) == "message"
    assert _kind([b"SUBSCRIBE", b"c", 1]) == "subscribe"  # RESP2 arrays, any case
    assert _kind([b"pong", b""]) == "pong"  # RESP2's PING answer in subscribed mode
    assert _kind(b"PONG") is None
    assert _kind(PushFrame([b"MOVING", 1, b"x"])) is None  # not a pub/sub frame
    assert _kind([]) is None and _kind(None) is None


def test_names_become_bytes() -> None:
    assert _name("é") == "é".encode()
    assert _name(b"x") == b"x" and _name(7) == b"7" and _name(memoryview(b"m")) == b"m"
    with pytest.raises(TypeError, match="str or bytes"):
        _name(None)
    with pytest.raises(TypeError):
        _name(True)


def test_registry_bounds_connections_with_a_clear_error() -> None:
    registry = PubSubRegistry(max_connections=2)
    registry.acquire()
    registry.acquire()
    with pytest.raises(PubSubLimitError, match=r"at most 2 \(max_pubsub_connections\)") as info:
        registry.acquire()
    assert isinstance(info.value, rex.MaxConnectionsError)
    assert registry.open == 2
    registry.release()
    registry.acquire()
    stats = registry.stats()
    assert (stats.open_connections, stats.max_connections, stats.limit_rejections) == (2, 2, 1)
    for bad in (0, -1, True, 1.5, "3"):
        with pytest.raises(ValueError, match="max_pubsub_connections"):
            PubSubRegistry(max_connections=bad)  # type: ignore[arg-type]


def test_backoff_grows_and_is_capped() -> None:
    assert all(0.025 <= _backoff(0) <= 0.05 for _ in range(100))
    assert all(0.5 <= _backoff(50) <= 1.0 for _ in range(100))


def test_options_are_validated() -> None:
    client = Client()
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="buffer"):
            PubSub(client, buffer=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="health_check_interval"):
        PubSub(client, health_check_interval=0)


async def test_use_outside_async_with_is_refused() -> None:
    with trio.fail_after(5):
        ps = PubSub(Client(), registry=PubSubRegistry(1))
        with pytest.raises(RuntimeError, match="async with"):
            await ps.subscribe("c")
        with pytest.raises(RuntimeError, match="async with"):
            ps.get_message_nowait()
        assert not ps.subscribed and ps.registry.open == 0


async def test_closed_pubsub_ends_iteration_without_touching_the_network() -> None:
    with trio.fail_after(5):
        async with PubSub(Client(port=1), registry=PubSubRegistry(1)) as ps:
            await ps.aclose()
            assert [m async for m in ps] == []
            with pytest.raises(RuntimeError):
                await ps.subscribe("c")
