"""Routing: key extraction from the server's COMMAND table (captured from a real server),
movable keys, hash tags, cross-slot detection and where keyless commands go."""

from __future__ import annotations

from typing import Any

import pytest

from trio_cluster.clients.cluster import ClusterClient
from trio_cluster.errors import ClusterCrossSlotError
from trio_cluster.routing.rules import (
    CommandTable,
    Target,
    command_keys,
    key_slot,
    keyless_target,
    needs_getkeys,
    slot_of,
)

# ``COMMAND INFO ...`` from Redis 7.0 over RESP2, trimmed to the fields routing reads
# (name, arity, flags, first key, last key, step; subcommands at index 9).
COMMAND_INFO: list[Any] = [
    [b"get", 2, [b"readonly", b"fast"], 1, 1, 1, [], [], []],
    [b"set", -3, [b"write", b"denyoom"], 1, 1, 1, [], [], []],
    [b"mset", -3, [b"write", b"denyoom"], 1, -1, 2, [], [], []],
    [b"mget", -2, [b"readonly", b"fast"], 1, -1, 1, [], [], []],
    [b"del", -2, [b"write"], 1, -1, 1, [], [], []],
    [b"exists", -2, [b"readonly", b"fast"], 1, -1, 1, [], [], []],
    [
        b"eval",
        -3,
        [b"noscript", b"stale", b"skip_monitor", b"no_mandatory_keys", b"movablekeys"],
        0,
        0,
        0,
        [],
        [],
        [],
    ],
    [
        b"evalsha",
        -3,
        [b"noscript", b"stale", b"skip_monitor", b"no_mandatory_keys", b"movablekeys"],
        0,
        0,
        0,
        [],
        [],
        [],
    ],
    [b"zunionstore", -4, [b"write", b"denyoom", b"movablekeys"], 1, 1, 1, [], [], []],
    [b"xread", -4, [b"readonly", b"blocking", b"movablekeys"], 0, 0, 0, [], [], []],
    [b"sort", -2, [b"write", b"denyoom", b"movablekeys"], 1, 1, 1, [], [], []],
    [b"georadius", -6, [b"write", b"denyoom", b"movablekeys"], 1, 1, 1, [], [], []],
    [b"migrate", -6, [b"write", b"movablekeys"], 3, 3, 1, [], [], []],
    [
        b"object",
        -2,
        [],
        0,
        0,
        0,
        [],
        [],
        [],
        [
            [b"object|idletime", 3, [b"readonly"], 2, 2, 1, [], [], []],
            [b"object|encoding", 3, [b"readonly"], 2, 2, 1, [], [], []],
            [b"object|help", 2, [b"loading", b"stale"], 0, 0, 0, [], [], []],
            [b"object|freq", 3, [b"readonly"], 2, 2, 1, [], [], []],
            [b"object|refcount", 3, [b"readonly"], 2, 2, 1, [], [], []],
        ],
    ],
    [b"ping", -1, [b"fast"], 0, 0, 0, [], [], []],
    [b"keys", 2, [b"readonly"], 0, 0, 0, [], [], []],
    [b"dbsize", 1, [b"readonly", b"fast"], 0, 0, 0, [], [], []],
    [b"flushall", -1, [b"write"], 0, 0, 0, [], [], []],
    [
        b"script",
        -2,
        [],
        0,
        0,
        0,
        [],
        [],
        [],
        [
            [b"script|exists", -3, [b"noscript"], 0, 0, 0, [], [], []],
            [b"script|load", 3, [b"noscript", b"stale"], 0, 0, 0, [], [], []],
        ],
    ],
    [
        b"memory",
        -2,
        [],
        0,
        0,
        0,
        [],
        [],
        [],
        [
            [b"memory|stats", 2, [], 0, 0, 0, [], [], []],
            [b"memory|usage", -3, [b"readonly"], 2, 2, 1, [], [], []],
        ],
    ],
    [b"blmpop", -5, [b"write", b"blocking", b"movablekeys"], 0, 0, 0, [], [], []],
    [b"lmpop", -4, [b"write", b"movablekeys"], 0, 0, 0, [], [], []],
    [
        b"cluster",
        -2,
        [],
        0,
        0,
        0,
        [],
        [],
        [],
        [
            [b"cluster|info", 2, [b"stale"], 0, 0, 0, [], [], []],
            [b"cluster|slots", 2, [b"stale"], 0, 0, 0, [], [], []],
            [b"cluster|countkeysinslot", 3, [b"stale"], 0, 0, 0, [], [], []],
            [b"cluster|shards", 2, [b"stale"], 0, 0, 0, [], [], []],
        ],
    ],
]


@pytest.fixture(scope="module")
def table() -> CommandTable:
    return CommandTable(COMMAND_INFO)


def test_crc16_and_hash_tags() -> None:
    assert key_slot(b"123456789") == 0x31C3 % 16384  # the CRC16-XMODEM check value
    assert key_slot(b"foo") == 12182
    assert key_slot(b"{user1000}.following") == key_slot(b"{user1000}.followers")
    assert key_slot(b"{user1000}.following") == key_slot(b"user1000")
    assert key_slot(b"foo{}{bar}") == key_slot(b"foo{}{bar}")  # empty tag: the whole key
    assert key_slot(b"foo{}{bar}") != key_slot(b"bar")
    assert key_slot(b"foo{{bar}}zap") == key_slot(b"{bar")  # first "{" to first "}"
    assert key_slot(b"foo{bar}{zap}") == key_slot(b"bar")  # only the first tag counts


def test_slot_of_detects_cross_slot() -> None:
    assert slot_of(["{t}a", b"{t}b", "t"]) == key_slot(b"t")
    assert slot_of(["a", "b"]) is None  # 15495 and 3300
    assert slot_of([memoryview(b"{x}1"), "{x}2"]) == key_slot(b"x")


@pytest.mark.parametrize(
    ("args", "keys"),
    [
        (("GET", "k"), ["k"]),
        (("SET", "k", "v", "EX", 10), ["k"]),
        (("MSET", "a", 1, "b", 2), ["a", "b"]),
        (("MGET", "a", "b", "c"), ["a", "b", "c"]),
        (("DEL", "a"), ["a"]),
        (("EVAL", "return 1", 2, "k1", "k2", "arg"), ["k1", "k2"]),
        (("EVALSHA", "abc", 0, "arg"), []),
        (("ZUNIONSTORE", "dst", 2, "s1", "s2", "WEIGHTS", 1, 2), ["dst", "s1", "s2"]),
        (("XREAD", "COUNT", 2, "STREAMS", "s1", "s2", "0", "0"), ["s1", "s2"]),
        (("SORT", "src", "BY", "w_*", "STORE", "dst"), ["src", "dst"]),
        (("LMPOP", 2, "l1", "l2", "LEFT"), ["l1", "l2"]),
        (("BLMPOP", 0, 1, "l1", "LEFT"), ["l1"]),
        (("OBJECT", "ENCODING", "k"), ["k"]),  # the subcommand's own key spec
        (("MEMORY", "USAGE", "k"), ["k"]),
    ],
)
def test_keys(table: CommandTable, args: tuple[Any, ...], keys: list[Any]) -> None:
    assert not needs_getkeys(table.spec(args))
    assert (command_keys(table.spec(args), args) or []) == keys


def test_movable_keys_without_a_parser_ask_the_server(table: CommandTable) -> None:
    for args in (("MIGRATE", "h", 1, "", 0, 5000, "KEYS", "a", "b"),
                 ("GEORADIUS", "g", 0, 0, 1, "km", "STORE", "dst")):  # fmt: skip
        assert needs_getkeys(table.spec(args))
        assert command_keys(table.spec(args), args) is None


def test_keyless_and_unknown(table: CommandTable) -> None:
    for args in (("PING",), ("DBSIZE",), ("SCRIPT", "LOAD", "return 1"), ("NOSUCH", "x")):
        assert command_keys(table.spec(args), args) is None
    malformed = ("EVAL", "x", "notanumber")
    assert command_keys(table.spec(malformed), malformed) is None  # the server will say


def test_readonly_flags(table: CommandTable) -> None:
    def readonly(*args: Any) -> bool:
        spec = table.spec(args)
        return spec is not None and spec.readonly

    assert readonly("GET", "k")
    assert readonly("MGET", "k")
    assert readonly("OBJECT", "ENCODING", "k")  # the subcommand's flag
    assert not readonly("SET", "k", "v")
    assert not readonly("EVAL", "return 1", 0)
    assert not readonly("NOSUCH")


def test_keyless_targets_follow_redis_py() -> None:
    assert keyless_target("PING") is Target.DEFAULT_NODE
    assert keyless_target("FLUSHALL") is Target.PRIMARIES
    assert keyless_target("SCRIPT LOAD") is Target.PRIMARIES
    assert keyless_target("FUNCTION LOAD") is Target.PRIMARIES
    assert keyless_target("CLUSTER COUNTKEYSINSLOT") is Target.SLOT_ID
    # Deliberate differences: the whole keyspace is on every primary.
    assert keyless_target("DBSIZE") is Target.PRIMARIES
    assert keyless_target("KEYS") is Target.PRIMARIES


def test_client_routes_by_slot_and_refuses_cross_slot(table: CommandTable) -> None:
    rc = ClusterClient("127.0.0.1", 1)  # never opened: routing needs no I/O
    rc.router.specs.install(table)

    def slot_for(*args: Any) -> int | Target:
        return rc.router.slot_for(args, rc.router.specs.get(args[0]))

    assert slot_for("GET", "{t}x") == key_slot(b"t")
    assert slot_for("MSET", "{t}a", 1, "{t}b", 2) == key_slot(b"t")
    assert slot_for("EVAL", "s", 1, "foo") == 12182
    assert slot_for("PING") is Target.DEFAULT_NODE
    assert slot_for("DBSIZE") is Target.PRIMARIES
    assert slot_for("SCRIPT", "LOAD", "return 1") is Target.PRIMARIES
    assert slot_for("CLUSTER", "COUNTKEYSINSLOT", 42) == 42
    assert slot_for("EVALSHA", "abc", 0) is Target.DEFAULT_NODE
    assert slot_for("PUBLISH", "news", "hi") == key_slot(b"news")  # the channel's slot
    with pytest.raises(ClusterCrossSlotError):
        slot_for("EVAL", "s", 2, "a", "b")
    with pytest.raises(ClusterCrossSlotError):
        slot_for("ZUNIONSTORE", "dst", 1, "src")


def test_key_slot_matches_redis_py_for_every_key_shape() -> None:
    from redis.crc import key_slot as redis_key_slot

    from trio_cluster.routing.rules import key_slot

    for key in ["", "a", "{user}1", "{user}2", "a{}b", "{}x", "a{b", "x}{y}", "é", "{{a}}"]:
        assert key_slot(key) == redis_key_slot(key.encode()), key
        assert key_slot(key.encode()) == redis_key_slot(key.encode())
    assert key_slot(memoryview(b"{t}k")) == redis_key_slot(b"{t}k")
    assert key_slot(12345) == redis_key_slot(b"12345")
