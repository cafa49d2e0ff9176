"""redis-py's encoding rules: which argument values are sent, converted or refused (with
redis-py's DataError and message), and how replies are decoded."""

from __future__ import annotations

import enum

import pytest
from redis import exceptions as rex
from redis._parsers.encoders import Encoder

from trio_cluster.wire.encoding import Encoding, decode_reply, prepare_args, prepare_stack


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize("value", [None, True, False, object(), [1], {"a": 1}, 1j])
def test_refused_values_raise_redis_py_data_error_with_its_message(value: object) -> None:
    with pytest.raises(rex.DataError) as caught:
        prepare_args(("SET", "k", value))
    with pytest.raises(rex.DataError) as reference:
        Encoder("utf-8", "strict", False).encode(value)
    assert str(caught.value).startswith(str(reference.value))
    assert "command argument 2 of SET" in str(caught.value)


@pytest.mark.parametrize(
    "value", [b"x", "é", 7, 1.5, memoryview(b"mv"), bytearray(b"ba"), Color.RED]
)
def test_accepted_values_are_sent_as_redis_py_sends_them(value: object) -> None:
    (_, _, sent) = prepare_args(("SET", "k", value))
    expected = Encoder("utf-8", "strict", False).encode(value)
    if isinstance(sent, str | int | float) and not isinstance(sent, enum.Enum):
        sent = str(sent if not isinstance(sent, float) else repr(sent)).encode()
    assert bytes(sent) == bytes(expected)


def test_nothing_to_change_returns_the_same_objects() -> None:
    args = ("SET", "k", 1)
    assert prepare_args(args) is args
    stack = [(args, {}), (("GET", b"k"), {})]
    assert prepare_stack(stack, Encoding()) is stack
    converted = prepare_stack([(("SET", "k", bytearray(b"v")), {})], Encoding())
    assert converted == [(("SET", "k", b"v"), {})]


def test_a_non_utf8_encoding_encodes_str_arguments() -> None:
    latin = Encoding(encoding="latin-1")
    assert latin.encodes_str and not Encoding().encodes_str
    assert prepare_args(("SET", "k", "é"), latin) == (b"SET", b"k", b"\xe9")
    with pytest.raises(ValueError, match="encoding"):
        Encoding(encoding="no-such-codec")
    with pytest.raises(ValueError, match="encoding_errors"):
        Encoding(encoding_errors="no-such-handler")


def test_decode_reply_decodes_nested_shapes_and_leaves_the_rest() -> None:
    reply = [b"a", {b"k": [b"v", 1]}, {b"s"}, None, 2.5, rex.ResponseError("x")]
    decoded = decode_reply(reply)
    assert decoded[:5] == ["a", {"k": ["v", 1]}, {"s"}, None, 2.5]
    assert decoded[5] is reply[5]
    assert decode_reply(b"\xe9", "latin-1") == "é"
