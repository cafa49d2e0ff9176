"""The sans-IO protocol: encoding, every reply kind, byte-at-a-time feeding, and fuzzing."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import exceptions as rex

from trio_cluster import errors
from trio_cluster.protocol import (
    NEED_DATA,
    PushFrame,
    RespParser,
    _SlowParser,
    encode_command,
    encode_commands,
    is_push,
)

# --- encoding ----------------------------------------------------------------------------------


def test_encode_accepts_every_documented_type() -> None:
    wire = encode_command(["SET", b"k", 1, 2.5, memoryview(b"mv")])
    assert wire == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n$3\r\n2.5\r\n$2\r\nmv\r\n"


def test_encode_non_ascii_text_as_utf8() -> None:
    assert encode_command(["ECHO", "é"]) == b"*2\r\n$4\r\nECHO\r\n$2\r\n\xc3\xa9\r\n"


@pytest.mark.parametrize("bad", [None, True, [1], {"a": 1}, object(), bytearray(b"x")])
def test_encode_rejects_other_types_naming_position_and_type(bad: object) -> None:
    with pytest.raises(TypeError) as info:
        encode_command(["SET", "k", bad])  # type: ignore[list-item]
    assert "argument 2" in str(info.value)
    assert type(bad).__name__ in str(info.value)


def test_encode_rejects_empty_command() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_command([])


def test_encode_pipeline_concatenates_in_order() -> None:
    assert encode_commands([["PING"], ["GET", "a"]]) == (
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
    )


# --- every reply kind, whole and byte by byte ---------------------------------------------------

REPLY_CASES: list[tuple[bytes, Any]] = [
    (b"+OK\r\n", b"OK"),
    (b":-42\r\n", -42),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"_\r\n", None),
    (b"*3\r\n:1\r\n$1\r\na\r\n*0\r\n", [1, b"a", []]),
    (b",3.25\r\n", 3.25),
    (b",inf\r\n", float("inf")),
    (b"#t\r\n", True),
    (b"#f\r\n", False),
    (
        b"(3492890328409238509324850943850943825024385\r\n",
        b"3492890328409238509324850943850943825024385",
    ),
    (b"=15\r\ntxt:Some string\r\n", b"Some string"),
    (b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n", {b"a": 1, b"b": [2]}),
    (b"~2\r\n:1\r\n:2\r\n", [1, 2]),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),
]


def _feed_bytewise(parser: RespParser, wire: bytes) -> list[Any]:
    replies = []
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
        while (reply := parser.next_reply()) is not NEED_DATA:
            replies.append(reply)
    return replies


@pytest.mark.parametrize(("wire", "expected"), REPLY_CASES)
def test_every_reply_kind_whole(wire: bytes, expected: Any) -> None:
    parser = RespParser()
    parser.feed(wire)
    assert parser.next_reply() == expected
    assert parser.next_reply() is NEED_DATA
    assert parser.buffered == 0


@pytest.mark.parametrize(("wire", "expected"), REPLY_CASES)
def test_every_reply_kind_one_byte_at_a_time(wire: bytes, expected: Any) -> None:
    parser = RespParser()
    replies = _feed_bytewise(parser, wire + wire)
    assert replies == [expected, expected]


def test_push_frame_is_distinguishable_from_an_array() -> None:
    parser = RespParser()
    wire = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n*1\r\n:1\r\n"
    replies = _feed_bytewise(parser, wire)
    assert replies == [[b"message", b"ch", b"hi"], [1]]
    assert is_push(replies[0]) and not is_push(replies[1])


def test_top_level_attribute_is_kept_and_does_not_shift_replies() -> None:
    parser = RespParser()
    wire = (
        b"|1\r\n+key-popularity\r\n*2\r\n$1\r\na\r\n,0.5\r\n"  # attribute ...
        b":7\r\n"  # ... describing this reply
        b"+next\r\n"
    )
    replies = _feed_bytewise(parser, wire[:-7])
    assert replies == [7]
    assert parser.last_attributes == {b"key-popularity": [b"a", 0.5]}
    parser.feed(wire[-7:])
    assert parser.next_reply() == b"next"
    assert parser.last_attributes is None


def test_nested_attribute_is_dropped_without_shifting_elements() -> None:
    parser = RespParser()
    parser.feed(b"*2\r\n|1\r\n+a\r\n:1\r\n:2\r\n:3\r\n+after\r\n")
    assert parser.next_reply() == [2, 3]
    assert parser.next_reply() == b"after"


def test_blob_error_becomes_typed_exception() -> None:
    parser = RespParser()
    replies = _feed_bytewise(parser, b"!21\r\nSYNTAX invalid syntax\r\n")
    assert isinstance(replies[0], rex.ResponseError)
    assert str(replies[0]) == "SYNTAX invalid syntax"


# --- errors --------------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, type[Exception], type[Exception]]] = [
    ("ERR wrong number of arguments", rex.ResponseError, rex.ResponseError),
    ("ERR unknown command 'HELLO'", errors.UnknownCommandError, rex.ResponseError),
    ("WRONGTYPE Operation against a key", rex.ResponseError, rex.ResponseError),
    ("NOAUTH Authentication required.", errors.AuthenticationError, rex.AuthenticationError),
    (
        "WRONGPASS invalid username-password pair",
        errors.AuthenticationError,
        rex.AuthenticationError,
    ),
    ("NOPERM no permission", errors.NoPermissionError, rex.NoPermissionError),
    ("TRYAGAIN Multiple keys request during rehashing", errors.TryAgainError, rex.TryAgainError),
    ("CLUSTERDOWN The cluster is down", errors.ClusterDownError, rex.ClusterDownError),
    ("MASTERDOWN Link with MASTER is down", errors.MasterDownError, rex.MasterDownError),
    ("LOADING Redis is loading the dataset", errors.BusyLoadingError, rex.BusyLoadingError),
    (
        "READONLY You can't write against a read only replica.",
        errors.ReadOnlyError,
        rex.ReadOnlyError,
    ),
    ("BUSY Redis is busy running a script.", errors.BusyError, rex.ResponseError),
    ("NOSCRIPT No matching script.", errors.NoScriptError, rex.NoScriptError),
    ("EXECABORT Transaction discarded", errors.ExecAbortError, rex.ExecAbortError),
    ("OOM command not allowed", errors.OutOfMemoryError, rex.OutOfMemoryError),
    (
        "CROSSSLOT Keys don't hash to the same slot",
        errors.ClusterCrossSlotError,
        rex.ClusterCrossSlotError,
    ),
]


@pytest.mark.parametrize(("message", "cls", "redis_cls"), ERROR_CASES)
def test_error_replies_become_typed_exceptions(
    message: str, cls: type[Exception], redis_cls: type[Exception]
) -> None:
    parser = RespParser()
    parser.feed(f"-{message}\r\n".encode())
    reply = parser.next_reply()
    assert type(reply) is cls
    assert isinstance(reply, redis_cls)
    assert message.removeprefix("ERR ") in str(reply)  # redis-py drops "ERR "


@pytest.mark.parametrize(
    ("message", "slot", "host", "port"),
    [
        ("MOVED 3999 127.0.0.1:6381", 3999, "127.0.0.1", 6381),
        ("MOVED 12 ::1:7000", 12, "::1", 7000),
        ("MOVED 5 :7001", 5, "", 7001),
        ("ASK 16383 node-3.example:6379", 16383, "node-3.example", 6379),
    ],
)
def test_redirects_carry_slot_host_and_port(message: str, slot: int, host: str, port: int) -> None:
    reply = errors.error_from_reply(message)
    cls = errors.MovedError if message.startswith("MOVED") else errors.AskError
    assert type(reply) is cls
    assert isinstance(reply, rex.AskError)  # redis-py's MovedError subclasses AskError too
    assert (reply.slot, reply.host, reply.port) == (slot, host, port)  # type: ignore[attr-defined]
    assert reply.slot_id == slot and reply.node_addr == (host, port)  # type: ignore[attr-defined]


def test_malformed_redirect_is_a_plain_response_error() -> None:
    reply = errors.error_from_reply("MOVED nonsense")
    assert type(reply) is rex.ResponseError


def test_errors_nested_in_arrays_stay_values() -> None:
    parser = RespParser()
    parser.feed(b"*2\r\n+OK\r\n-MOVED 1 h:2\r\n")
    reply = parser.next_reply()
    assert reply[0] == b"OK"
    assert isinstance(reply[1], errors.MovedError) and reply[1].port == 2


# --- corrupt streams -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"?what\r\n",
        b":12a\r\n",
        b"$3\r\nabcXY",
        b"$x\r\n",
        b"*-2\r\n",
        b"~-1\r\n",
        b",nope\r\n",
        b"#x\r\n",
        b"+" + b"a" * 70000,
        b"*1\r\n" * 100 + b":1\r\n",
    ],
)
def test_corrupt_stream_raises_and_poisons_the_parser(garbage: bytes) -> None:
    parser = RespParser()
    parser.feed(garbage)
    with pytest.raises(errors.ProtocolError):
        parser.next_reply()
    parser.feed(b"+OK\r\n")
    with pytest.raises(errors.ProtocolError):
        parser.next_reply()  # never resynchronises onto a guessed boundary


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=17))
def test_arbitrary_bytes_only_give_replies_need_data_or_protocol_error(
    data: bytes, chunk: int
) -> None:
    parser = RespParser()
    try:
        for i in range(0, len(data), chunk):
            parser.feed(data[i : i + chunk])
            while parser.next_reply() is not NEED_DATA:
                pass
    except errors.ProtocolError:
        pass


# --- hiredis and the fallback parser agree -------------------------------------------------------

scalars = st.one_of(
    st.binary(max_size=20).map(lambda b: ("$", b)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda i: (":", i)),
    st.none().map(lambda _: ("_", None)),
    st.booleans().map(lambda b: ("#", b)),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: (",", f)),
)


def _values() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: ("*", xs)),
            st.lists(inner, max_size=4).map(lambda xs: (">", xs)),
            st.dictionaries(st.binary(max_size=5), inner, max_size=3).map(
                lambda d: ("%", list(d.items()))
            ),
        ),
        max_leaves=12,
    )


def _wire(node: Any) -> bytes:
    kind, value = node
    if kind == "$":
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if kind == ":":
        return b":%d\r\n" % value
    if kind == "_":
        return b"_\r\n"
    if kind == "#":
        return b"#t\r\n" if value else b"#f\r\n"
    if kind == ",":
        return b"," + repr(value).encode() + b"\r\n"
    if kind == "%":
        body = b"".join(b"$%d\r\n%s\r\n" % (len(k), k) + _wire(v) for k, v in value)
        return b"%%%d\r\n" % len(value) + body
    return kind.encode() + b"%d\r\n" % len(value) + b"".join(_wire(v) for v in value)


@settings(max_examples=300, deadline=None)
@given(_values())
def test_fallback_parser_builds_what_hiredis_builds(value: Any) -> None:
    wire = _wire(value)
    reader = hiredis.Reader()
    reader.feed(wire)
    fast = reader.gets()
    slow = _SlowParser(bytearray(wire), 0).parse()
    assert slow == fast
    assert type(slow) is type(fast)
    parser = RespParser()
    assert _feed_bytewise(parser, wire) == [fast]


def test_push_frame_type_is_hiredis_push() -> None:
    assert PushFrame is hiredis.PushNotification
