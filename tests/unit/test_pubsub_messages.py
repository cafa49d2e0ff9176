"""PubSub pieces that need no server: message shapes, frame kinds, the bound, validation,
and get_message's return at once (under the autojump clock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from redis import exceptions as rex

from trio_cluster import Client
from trio_cluster.clients.pubsub import PubSubLimitError, PubSubRegistry
from trio_cluster.clients.pubsub_links import backoff
from trio_cluster.clients.pubsub_messages import frame_kind, gap_message, message, name_bytes
from trio_cluster.wire.protocol import PushFrame


def test_messages_have_redis_py_shapes() -> None:
    assert message("message", [b"message", b"ch", b"hi"]) == {
        "type": "message", "pattern": None, "channel": b"ch", "data": b"hi"}  # fmt: skip
    assert message("pmessage", [b"pmessage", b"c*", b"ch", b"hi"]) == {
        "type": "pmessage", "pattern": b"c*", "channel": b"ch", "data": b"hi"}  # fmt: skip
    assert message("smessage", [b"smessage", b"ch", b"hi"])["type"] == "smessage"
    # Confirmations: the channel (or pattern) under "channel", the count under "data".
    assert message("psubscribe", [b"psubscribe", b"c*", 2]) == {
        "type": "psubscribe", "pattern": None, "channel": b"c*", "data": 2}  # fmt: skip


def test_frame_kinds_in_resp3_and_resp2() -> None:
    assert frame_kind(PushFrame([b"message", b"c", b"d"])) == "message"
    assert frame_kind([b"SUBSCRIBE", b"c", 1]) == "subscribe"  # RESP2 arrays, any case
    assert frame_kind([b"pong", b""]) == "pong"  # RESP2's PING answer in subscribed mode
    assert frame_kind(b"PONG") is None
    assert frame_kind(PushFrame([b"MOVING", 1, b"x"])) is None  # not a pub/sub frame
    assert frame_kind([]) is None and frame_kind(None) is None


def test_names_become_bytes() -> None:
    assert name_bytes("é") == "é".encode()
    assert (
        name_bytes(b"x") == b"x" and name_bytes(7) == b"7" and name_bytes(memoryview(b"m")) == b"m"
    )
    with pytest.raises(TypeError, match="str or bytes"):
        name_bytes(None)
    with pytest.raises(TypeError):
        name_bytes(True)


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
    assert all(0.025 <= backoff(0) <= 0.05 for _ in range(100))
    assert all(0.5 <= backoff(50) <= 1.0 for _ in range(100))


def test_options_are_validated() -> None:
    client = Client()
    for bad in (0, True, 2.5):
        with pytest.raises(ValueError, match="buffer"):
            client.pubsub(buffer=bad)
    with pytest.raises(ValueError, match="health_check_interval"):
        client.pubsub(health_check_interval=0)


async def test_use_outside_async_with_is_refused() -> None:
    with trio.fail_after(5):
        ps = Client().pubsub(registry=PubSubRegistry(1))
        with pytest.raises(RuntimeError, match="async with"):
            await ps.subscribe("c")
        with pytest.raises(RuntimeError, match="async with"):
            await ps.get_message()
        assert not ps.subscribed and ps.registry.open == 0


async def test_closed_pubsub_ends_iteration_without_touching_the_network() -> None:
    with trio.fail_after(5):
        async with Client(port=1).pubsub(registry=PubSubRegistry(1)) as ps:
            await ps.aclose()
            assert [m async for m in ps] == []
            with pytest.raises(RuntimeError):
                await ps.subscribe("c")


def test_gap_event_has_redis_py_keys_and_what_was_lost() -> None:
    gap = gap_message("h:1", "connection lost", [b"c"], [], [b"s"])
    assert {k: gap[k] for k in ("type", "pattern", "channel", "data")} == {
        "type": "gap", "pattern": None, "channel": None, "data": "connection lost"}  # fmt: skip
    assert (gap["node"], gap["channels"], gap["patterns"], gap["shard_channels"]) == (
        "h:1", [b"c"], [], [b"s"])  # fmt: skip


async def test_get_message_without_timeout_returns_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No timeout returns at once (redis-py's default ``timeout=0.0``): under the autojump
    clock any wait would move the clock; ``timeout=s`` waits exactly ``s``."""
    async with Client(port=1).pubsub(registry=PubSubRegistry(1)) as ps:
        start = trio.current_time()
        with trio.fail_after(1000):
            assert await ps.get_message() is None
            assert await ps.get_message(True) is None
            assert await ps.get_sharded_message() is None
        assert trio.current_time() == start
        assert await ps.get_message(timeout=7.5) is None
        assert trio.current_time() == start + 7.5
        with trio.move_on_after(30) as scope:
            await ps.get_message(timeout=None)  # waits for the caller's deadline
        assert scope.cancelled_caught and trio.current_time() == start + 37.5
