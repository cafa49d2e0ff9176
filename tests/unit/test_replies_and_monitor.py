"""Reply parsing by full command name (as redis-py looks callbacks up), queue entries that
remember that name, RedisCluster's second callback layer, and MONITOR lines."""

from __future__ import annotations

import pytest
from redis.exceptions import RedisError

from trio_cluster.clients.monitor import parse_monitor_line
from trio_cluster.wire.commands import COMMAND_NAME, ReplyParser, queue_entry


def test_two_word_commands_use_their_own_callback() -> None:
    parser = ReplyParser(None)  # RESP3 on the wire, redis-py's default shapes
    assert parser.parse("CONFIG GET", {b"maxmemory": b"0"}, {}) == {"maxmemory": "0"}
    assert ReplyParser(2).parse("CONFIG GET", [b"maxmemory", b"0"], {}) == {"maxmemory": "0"}
    assert parser.parse("COMMAND COUNT", 240, {}) == 240
    assert parser.parse("SCRIPT LOAD", b"abc", {}) == "abc"
    # As in redis-py, the words sent separately name the first word's callback only.
    assert parser.parse("CONFIG", {b"maxmemory": b"0"}, {}) == {b"maxmemory": b"0"}


def test_options_reach_the_callback_and_internal_ones_do_not() -> None:
    parser = ReplyParser(None)
    seen: dict[str, object] = {}

    def callback(reply: object, **options: object) -> object:
        seen.update(options)
        return reply

    parser.set_callback("xinfo stream", callback)
    options = {"full": True, "keys": ["s"], COMMAND_NAME: "XINFO STREAM"}
    assert parser.parse("XINFO", b"r", options) == b"r"
    assert seen == {"full": True}


def test_a_callback_set_after_use_replaces_the_one_looked_up_before() -> None:
    parser = ReplyParser(None)
    assert parser.parse("SET", b"OK", {}) is True  # redis-py's callback, now remembered
    assert parser.parse("set", b"OK", {}) is True  # any case, as redis-py looks it up
    parser.set_callback("SET", lambda r, **_: "replaced")
    assert parser.parse("SET", b"OK", {}) == "replaced"
    assert parser.parse(b"SET", b"OK", {}) == "replaced"


def test_names_past_the_remembered_ones_still_get_their_callbacks() -> None:
    parser = ReplyParser(None)
    for n in range(5000):  # more distinct names than are remembered
        assert parser.parse(f"NOSUCH{n}", b"r", {}) == b"r"
    assert parser.parse("SET", b"OK", {}) is True
    assert parser.parse("CONFIG GET", {b"maxmemory": b"0"}, {}) == {"maxmemory": "0"}


def test_queue_entry_splits_the_words_and_keeps_the_name() -> None:
    wire, options = queue_entry(("CLIENT LIST", "TYPE", "normal"), {"_type": "normal"})
    assert wire == ("CLIENT", "LIST", "TYPE", "normal")
    assert options == {"_type": "normal", COMMAND_NAME: "CLIENT LIST"}
    original = {"x": 1}
    wire, options = queue_entry(("GET", "k"), original)
    assert wire == ("GET", "k") and options is original  # one word: nothing added


def test_cluster_layer_applies_after_the_node_callback() -> None:
    plain, cluster = ReplyParser(None), ReplyParser(None, cluster=True)
    reply = [[0, 16383, [b"127.0.0.1", 7000, b"id"]]]
    assert plain.parse("CLUSTER SLOTS", reply, {}) == reply
    parsed = cluster.parse("CLUSTER SLOTS", reply, {})
    assert parsed == {(0, 16383): {"primary": ("127.0.0.1", 7000), "replicas": []}}
    # set_response_callback on a cluster replaces the second layer, as RedisCluster's does:
    # the node's callback (CONFIG GET -> dict) still runs first.
    cluster.set_callback("CONFIG GET", lambda r, **_: sorted(r))
    assert cluster.parse("CONFIG GET", {b"b": b"1", b"a": b"2"}, {}) == ["a", "b"]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            b'1700000000.123456 [0 127.0.0.1:5000] "SET" "k" "say \\"hi\\""',
            ("127.0.0.1", "5000", "tcp", 'SET k say "hi"', 0),
        ),
        (
            b'1700000000.5 [3 lua] "get" "k"',
            ("lua", "", "lua", "get k", 3),
        ),
        (
            b'1700000000.5 [0 unix:/tmp/redis.sock] "PING"',
            ("unix", "/tmp/redis.sock", "unix", "PING", 0),
        ),
        (
            b'1700000000.5 [1 [::1]:6379] "ECHO" "x"',
            ("[::1]", "6379", "tcp", "ECHO x", 1),
        ),
    ],
)
def test_monitor_lines_parse_as_redis_py_does(
    line: bytes, expected: tuple[str, str, str, str, int]
) -> None:
    entry = parse_monitor_line(line)
    address, port, kind, command, db = expected
    assert entry["client_address"] == address and entry["client_port"] == port
    assert entry["client_type"] == kind and entry["command"] == command
    assert entry["db"] == db and isinstance(entry["time"], float)


def test_a_line_that_is_not_monitor_output_is_an_error() -> None:
    with pytest.raises(RedisError, match="unexpected MONITOR line"):
        parse_monitor_line(b"1700000000.5 nothing here")
