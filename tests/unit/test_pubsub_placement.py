"""The pure parts of PubSub, with no server: where subscriptions go (placement, a function of
the topology) and what was asked for (subscription bookkeeping)."""

from __future__ import annotations

from typing import Any

import pytest

from trio_cluster.clients.pubsub_placement import (
    CLASSIC,
    by_slot,
    classic_address,
    new_links,
    shard_link,
)
from trio_cluster.clients.pubsub_subscriptions import Subscriptions, parse_names
from trio_cluster.errors import ClusterDownError
from trio_cluster.routing.rules import key_slot
from trio_cluster.routing.topology import Shard, Topology

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)
ONE_NODE = ("127.0.0.1", 6379)
#: Three shards of even thirds, as the test harness forms them.
THREE = Topology.from_shards(
    [Shard(A, (), ((0, 5460),)), Shard(B, (), ((5461, 10922),)), Shard(C, (), ((10923, 16383),))]
)


def _owner(slot: int) -> tuple[str, int]:
    return A if slot <= 5460 else B if slot <= 10922 else C


def _name_on(address: tuple[str, int], prefix: str = "n") -> bytes:
    """A name whose slot ``address`` owns in ``THREE``."""
    i = 0
    while _owner(key_slot(f"{prefix}{i}".encode())) != address:
        i += 1
    return f"{prefix}{i}".encode()


def _never(choices: Any) -> Any:
    raise AssertionError(f"no choice was needed; offered {choices}")


# --- placement -------------------------------------------------------------------------------


def test_single_node_puts_everything_on_the_classic_connection() -> None:
    assert classic_address(None, ONE_NODE, b"news", avoid=ONE_NODE, choose=_never) == ONE_NODE
    assert shard_link(None, b"orders") == CLASSIC
    assert new_links(None, [b"a", b"b"], existing=set()) == {CLASSIC}
    assert new_links(None, [b"a", b"b"], existing={CLASSIC}) == set()


def test_classic_goes_to_the_primary_of_the_first_names_slot() -> None:
    for owner in (A, B, C):
        home = _name_on(owner)
        assert classic_address(THREE, ONE_NODE, home, choose=_never) == owner


def test_classic_avoids_the_node_that_just_failed() -> None:
    home = _name_on(B)
    offered: list[list[tuple[str, int]]] = []

    def first(choices: Any) -> Any:
        offered.append(list(choices))
        return choices[0]

    assert classic_address(THREE, ONE_NODE, home, avoid=B, choose=first) == A
    assert offered == [[A, C]]
    # No home (a ping before any subscription): any primary.
    assert classic_address(THREE, ONE_NODE, None, choose=first) == A
    assert offered[-1] == [A, B, C]
    # Every primary is to be avoided: the failed one is still better than none.
    lone = Topology.from_shards([Shard(A, (), ((0, 16383),))])
    assert classic_address(lone, ONE_NODE, _name_on(A), avoid=A, choose=first) == A


def test_classic_with_no_primary_is_a_cluster_down_error() -> None:
    empty = Topology.from_shards([])
    with pytest.raises(ClusterDownError, match="no primary"):
        classic_address(empty, ONE_NODE, b"x")


def test_shard_channels_go_to_their_slots_primary() -> None:
    for owner in (A, B, C):
        assert shard_link(THREE, _name_on(owner, "s")) == owner
    half = Topology.from_shards([Shard(A, (), ((0, 5460),))])  # slots of B and C unserved
    assert shard_link(half, _name_on(B)) is None
    names = [_name_on(A), _name_on(B), _name_on(C), _name_on(B, "t")]
    assert new_links(THREE, names, existing={A}) == {B, C}
    assert new_links(half, names, existing=set()) == {A}  # homeless names open nothing


def test_ssubscribe_commands_are_one_per_slot_in_order() -> None:
    same = [b"{x}1", b"{x}2"]
    other = b"{y}1"
    assert key_slot(other) != key_slot(same[0])
    assert by_slot([same[0], other, same[1]]) == [same, [other]]
    assert by_slot([]) == []


# --- subscriptions ---------------------------------------------------------------------------


def test_names_are_parsed_as_redis_py_does() -> None:
    def handler(message: dict[str, Any]) -> None:
        pass

    assert parse_names(("a", b"b", 3), {}) == {b"a": None, b"b": None, b"3": None}
    assert parse_names((["a", "b"], "c"), {}) == {b"a": None, b"b": None, b"c": None}
    assert parse_names(("a",), {"a": handler, "h": handler}) == {b"a": handler, b"h": handler}
    with pytest.raises(TypeError, match="handler of 'h' must be a function"):
        parse_names((), {"h": "not callable"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="str or bytes"):
        parse_names((None,), {})


def test_subscriptions_are_kept_per_family_with_handlers() -> None:
    def handler(message: dict[str, Any]) -> None:
        pass

    subs = Subscriptions()
    assert not subs.subscribed and not subs.classic
    subs.add("shard", {b"s": None})
    assert subs.subscribed and not subs.classic
    subs.add("channel", {b"b": None, b"a": handler})
    subs.add("pattern", {b"p*": None})
    assert subs.classic
    assert subs.names("channel") == [b"b", b"a"]  # the order of subscription
    assert subs.wants("pattern", b"p*") and not subs.wants("channel", b"p*")
    # Subscribing again replaces the handler, as redis-py's dictionary update does.
    subs.add("channel", {b"a": None})
    assert subs.view("channel", None) == {b"b": None, b"a": None}
    subs.add("channel", {b"a": handler})
    assert subs.remove("channel", [b"b", b"never"]) == [b"b"]
    assert subs.view("channel", bytes.decode) == {"a": handler}
    assert subs.unhandled() == [("pattern", b"p*"), ("shard", b"s")]


def test_handlers_are_found_by_the_messages_family() -> None:
    calls: list[str] = []
    subs = Subscriptions()
    subs.add("channel", {b"c": lambda m: calls.append("channel")})
    subs.add("pattern", {b"c*": lambda m: calls.append("pattern")})
    subs.add("shard", {b"s": lambda m: calls.append("shard")})
    message = {"type": "message", "pattern": None, "channel": b"c", "data": b"d"}
    pmessage = {"type": "pmessage", "pattern": b"c*", "channel": b"c", "data": b"d"}
    smessage = {"type": "smessage", "pattern": None, "channel": b"s", "data": b"d"}
    for item in (message, pmessage, smessage):
        handler = subs.handler_for(item)
        assert handler is not None
        handler(item)
    assert calls == ["channel", "pattern", "shard"]
    # A channel message for a shard channel's name, or a confirmation, has no handler.
    assert subs.handler_for({**message, "channel": b"s"}) is None
    assert subs.handler_for({"type": "subscribe", "pattern": None, "channel": b"c"}) is None
    assert subs.remove("channel", [b"c"]) == [b"c"]
    assert subs.handler_for(message) is None
