"""The sans-IO protocol: encoding, every reply kind, byte-at-a-time feeding, and fuzzing."""

from __future__ import annotations

from typing import Any

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis import exceptions as rex

from trio_cluster import errors
from trio_cluster.wire import careful
from trio_cluster.wire.careful import CarefulParser
from trio_cluster.wire.protocol import (
    NEED_DATA,
    YIELD,
    PushFrame,
    RespParser,
    encode_command,
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
    assert parser.idle


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


def test_top_level_attribute_is_dropped_and_does_not_shift_replies() -> None:
    parser = RespParser()
    wire = (
        b"|1\r\n+key-popularity\r\n*2\r\n$1\r\na\r\n,0.5\r\n"  # attribute ...
        b":7\r\n"  # ... describing this reply
        b"+next\r\n"
    )
    replies = _feed_bytewise(parser, wire[:-7])
    assert replies == [7]
    parser.feed(wire[-7:])
    assert parser.next_reply() == b"next"
    assert parser.idle


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


@pytest.mark.parametrize(
    "message",
    [
        "MOVED nonsense",
        "MOVED 99999 h:7000",
        "MOVED 16384 h:7000",
        "MOVED -1 h:7000",
        "ASK 1 h:0",
        "ASK 1 h:99999",
        "MOVED 1 h:-5",
        "MOVED 1 h:+5",
        "MOVED 1 two words:7000",
        "MOVED 1 h/x:7000",
        "ASK 1 h",
        "MOVED \u0661 h:7000",  # a non-ASCII digit
    ],
)
def test_malformed_redirect_is_a_typed_error_not_a_redirect(message: str) -> None:
    reply = errors.error_from_reply(message)
    assert type(reply) is errors.InvalidRedirectError
    assert isinstance(reply, rex.ResponseError)
    assert not isinstance(reply, rex.AskError)  # so no routing code follows it
    assert message in str(reply)


def test_redirect_bounds_are_inclusive() -> None:
    low = errors.error_from_reply("MOVED 0 h:1")
    high = errors.error_from_reply("ASK 16383 h:65535")
    assert isinstance(low, errors.MovedError) and (low.slot, low.port) == (0, 1)
    assert isinstance(high, errors.AskError) and (high.slot, high.port) == (16383, 65535)


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
        b"$x\r\n",
        b"*-2\r\n",
        b",nope\r\n",
        b"#x\r\n",
        b"*1\r\n" * 100 + b":1\r\n",
        b"|1\r\n" * 100 + b":1\r\n",
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
    """Any reply; a push frame only at the top level (anywhere else is a protocol error)."""
    nested = _nested()
    return st.one_of(nested, st.lists(nested, max_size=4).map(lambda xs: (">", xs)))


def _nested() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: ("*", xs)),
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


def _careful_parse(wire: bytes, chunk: int) -> list[Any]:
    parser = CarefulParser(max_bytes=2**30, max_depth=64, max_elements=2**30)
    replies = []
    for i in range(0, len(wire), chunk):
        parser.feed(wire[i : i + chunk])
        while (reply := parser.next_reply()) is not NEED_DATA:
            if reply is not YIELD:
                replies.append(reply)
    assert parser.idle
    return replies


@settings(max_examples=300, deadline=None)
@given(_values(), st.integers(min_value=1, max_value=9))
def test_careful_parser_builds_what_hiredis_builds(value: Any, chunk: int) -> None:
    wire = _wire(value)
    reader = hiredis.Reader()
    reader.feed(wire)
    fast = reader.gets()
    (slow,) = _careful_parse(wire, chunk)
    assert slow == fast
    assert type(slow) is type(fast)
    assert _feed_bytewise(RespParser(), wire) == [fast]


def test_push_frame_type_is_hiredis_push() -> None:
    assert PushFrame is hiredis.PushNotification


# --- limits and shapes (issue 12) ------------------------------------------------------------

MIB = 1024 * 1024


def _drain(parser: RespParser) -> list[Any]:
    replies = []
    while (reply := parser.next_reply()) is not NEED_DATA:
        if reply is not YIELD:
            replies.append(reply)
    return replies


def _feed_split(parser: Any, wire: bytes, cuts: list[int]) -> list[Any]:
    """Feed ``wire`` in pieces of the sizes in ``cuts`` (cycled), draining after each."""
    got, pos, i = [], 0, 0
    while pos < len(wire):
        step = cuts[i % len(cuts)]
        parser.feed(wire[pos : pos + step])
        pos, i = pos + step, i + 1
        got += _drain(parser)
    return got


def _feed_all(parser: RespParser, wire: bytes, chunk: int) -> list[Any]:
    replies = []
    for i in range(0, len(wire), chunk):
        parser.feed(wire[i : i + chunk])
        replies += _drain(parser)
    return replies


@pytest.mark.parametrize("chunk", [1, 3, 65536])
@pytest.mark.parametrize(
    "header", [b"$1099511627776\r\n", b"*1099511627776\r\n", b"%400000\r\n", b"=2000000\r\n"]
)
def test_declared_length_past_max_reply_bytes_is_refused_at_the_header(
    header: bytes, chunk: int
) -> None:
    parser = RespParser(max_bytes=MIB)
    with pytest.raises(errors.ReplyTooLargeError):
        _feed_all(parser, header + b"x" * 10, chunk)  # nothing of the body is needed
    with pytest.raises(errors.ProtocolError):
        parser.next_reply()


@pytest.mark.parametrize("careful_path", [False, True])
def test_accumulated_reply_past_max_reply_bytes_is_refused_before_it_completes(
    careful_path: bool,
) -> None:
    # The large length is nested, so only the bytes accumulated can give it away.
    prefix = b"|1\r\n+a\r\n+b\r\n" if careful_path else b""
    parser = RespParser(max_bytes=MIB)
    fed = 0
    with pytest.raises(errors.ReplyTooLargeError):
        parser.feed(prefix + b"*2\r\n:1\r\n$1099511627776\r\n")
        assert _drain(parser) == []
        while fed < 2 * MIB:
            parser.feed(b"x" * 65536)
            fed += 65536
            _drain(parser)
    # Refused within one read of the bound (the careful parser reads the nested header).
    assert fed == 0 if careful_path else MIB - 65536 <= fed <= MIB + 65536


def test_replies_below_max_reply_bytes_pass_in_a_pipeline() -> None:
    parser = RespParser(max_bytes=MIB)
    body = b"y" * (MIB - 100)
    wire = (b"$%d\r\n%s\r\n" % (len(body), body)) * 3
    assert _feed_all(parser, wire, 65536) == [body] * 3


@pytest.mark.parametrize(
    "wire",
    [
        b"*1\r\n" * 9 + b":1\r\n",  # hiredis path
        b"|1\r\n+k\r\n+v\r\n" + b"*1\r\n" * 9 + b":1\r\n",  # careful path
        b"|1\r\n" * 9 + b"+k\r\n+v\r\n" * 9 + b":1\r\n",  # a chain of attributes
        b"%1\r\n+k\r\n" * 9 + b":1\r\n",
    ],
)
@pytest.mark.parametrize("chunk", [1, 4096])
def test_nesting_past_max_reply_depth_is_a_typed_error(wire: bytes, chunk: int) -> None:
    parser = RespParser(max_depth=8)
    with pytest.raises(errors.ReplyTooDeepError):
        _feed_all(parser, wire, chunk)
    within = RespParser(max_depth=9)
    assert len(_feed_all(within, wire, chunk)) == 1


def test_hostile_attribute_chain_is_typed_not_recursion_error() -> None:
    parser = RespParser()
    with pytest.raises(errors.ReplyTooDeepError):
        _feed_all(parser, b"|1\r\n" * 100_000 + b":1\r\n", 65536)


@pytest.mark.parametrize(
    "wire",
    [
        b"%1\r\n*1\r\n:1\r\n:2\r\n",  # an array key (hiredis path)
        b"|1\r\n+k\r\n+v\r\n%1\r\n*1\r\n:1\r\n:2\r\n",  # the same, careful path
        b"%1\r\n%1\r\n:1\r\n:2\r\n:3\r\n",  # a map key
        b"*2\r\n>1\r\n+a\r\n:6\r\n",  # a push inside an array
        b"|1\r\n+k\r\n+v\r\n*2\r\n>1\r\n+a\r\n:6\r\n",  # the same, careful path
        b">2\r\n+a\r\n>1\r\n+b\r\n",  # a push inside a push
        b"%1\r\n+k\r\n>1\r\n+a\r\n",  # a push as a map value
    ],
)
@pytest.mark.parametrize("chunk", [1, 4096])
def test_impossible_shapes_are_typed_errors(wire: bytes, chunk: int) -> None:
    parser = RespParser()
    with pytest.raises(errors.ReplyShapeError):
        _feed_all(parser, wire + b"+OK\r\n", chunk)


def test_payload_bytes_that_look_like_types_stay_on_the_fast_path() -> None:
    # '|', '!' and '>' inside payloads (not after a CRLF) do not wake the careful parser.
    parser = RespParser()
    wire = b"*3\r\n$3\r\na|b\r\n$3\r\nhi!\r\n$3\r\n>>>\r\n"
    parser.feed(wire)
    assert parser._careful is None
    assert _drain(parser) == [[b"a|b", b"hi!", b">>>"]]


def test_payload_that_starts_like_an_attribute_is_parsed_exactly() -> None:
    # After a CRLF the careful parser takes over mid-stream, re-reading what hiredis returned.
    parser = RespParser()
    wire = b"+first\r\n*2\r\n$2\r\n|x\r\n$2\r\n!y\r\n+after\r\n"
    replies = _feed_all(parser, wire, 7)
    assert replies == [b"first", [b"|x", b"!y"], b"after"]
    assert parser.idle and parser._careful is None  # back on hiredis between replies


def test_each_received_byte_is_fed_to_hiredis_once() -> None:
    n = 200_000
    wire = b"*%d\r\n" % n + b"$1\r\na\r\n" * n
    parser = RespParser()
    fed: list[int] = []
    real = parser._reader

    class Counting:
        def feed(self, data: bytes) -> None:
            fed.append(len(data))
            real.feed(data)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    parser._reader = Counting()
    (reply,) = _feed_all(parser, wire, 4096)
    assert len(reply) == n
    assert sum(fed) == len(wire)


def test_careful_parser_reads_each_header_once_and_yields_in_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    n = 20_000
    wire = b"|1\r\n+k\r\n+v\r\n" + b"*%d\r\n" % n + b":7\r\n" * n
    headers = 0
    real_number = careful._number

    def counting(line: bytes, what: str) -> int:
        nonlocal headers
        headers += 1
        return real_number(line, what)

    monkeypatch.setattr(careful, "_number", counting)
    parser = RespParser()
    assert _feed_all(parser, wire, 512) == [[7] * n]
    # Linear: one header read per element however the bytes were split (a rescan from the
    # aggregate's start on every read would read about n * reads / 2 headers).
    assert headers == n + 2
    # Bounded slices: fed at once, the reply comes in slices of careful.SLICE elements.
    parser = RespParser()
    parser.feed(wire)
    slices = []
    headers = 0
    while (reply := parser.next_reply()) is YIELD:
        slices.append(headers)
        headers = 0
    assert reply == [7] * n
    assert len(slices) >= n // careful.SLICE
    assert max(slices) <= careful.SLICE


# Payloads made of the bytes that steer the parser, so that type bytes after a CRLF inside
# payloads, real attributes, blob errors and push frames all meet random read boundaries.
_tricky = st.binary(max_size=12).map(
    lambda b: b.translate(bytes(b"\r\n|!>*%~ax"[i % 10] for i in range(256)))
)
_leaves = st.one_of(
    _tricky.map(lambda b: ("$", b)),
    st.integers(min_value=-5, max_value=5).map(lambda i: (":", i)),
    _tricky.map(lambda b: ("!", b"ERR " + b)),
    st.none().map(lambda _: ("_", None)),
)


def _stream_item() -> st.SearchStrategy[bytes]:
    nested = st.recursive(
        _leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3).map(lambda xs: ("*", xs)),
            st.tuples(st.dictionaries(_tricky, _leaves, min_size=1, max_size=2), inner).map(
                lambda pair: ("|", pair)
            ),
        ),
        max_leaves=8,
    )
    top = st.one_of(nested, st.lists(nested, max_size=3).map(lambda xs: (">", xs)))
    return top.map(_wire_ext)


def _wire_ext(node: Any) -> bytes:
    kind, value = node
    if kind == "!":
        return b"!%d\r\n%s\r\n" % (len(value), value)
    if kind == "|":
        attributes, described = value
        body = b"".join(_wire_ext(("$", k)) + _wire_ext(v) for k, v in attributes.items())
        return b"|%d\r\n" % len(attributes) + body + _wire_ext(described)
    if kind in "*>":
        return kind.encode() + b"%d\r\n" % len(value) + b"".join(_wire_ext(v) for v in value)
    return _wire(node)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Exception):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, list):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_stream_item(), min_size=1, max_size=6),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8),
    st.booleans(),
)
def test_any_stream_any_split_gives_what_the_careful_parser_gives_whole(
    items: list[bytes], cuts: list[int], tiny_window: bool
) -> None:
    wire = b"".join(items)
    expected = _careful_parse(wire, len(wire))
    assert len(expected) == len(items)
    parser = RespParser()
    if tiny_window:  # hand over to the careful parser as soon as a reply completes
        import trio_cluster.wire.protocol as protocol

        old, protocol._MAX_WINDOW = protocol._MAX_WINDOW, 0  # type: ignore[misc]
    try:
        got = _feed_split(parser, wire, cuts)
    finally:
        if tiny_window:
            protocol._MAX_WINDOW = old  # type: ignore[misc]
    assert len(got) == len(expected) and all(map(_same, got, expected))
    assert parser.idle


def test_a_big_nested_string_is_held_once_and_its_declared_length_read() -> None:
    # Past protocol._BIG_ITEM buffered bytes of one incomplete string, the careful parser takes
    # over: it reads the nested length header, so the 2^40 declaration is refused long before
    # max_reply_bytes (512 MiB) have been buffered.
    import trio_cluster.wire.protocol as protocol

    parser = RespParser()
    parser.feed(b"*2\r\n:1\r\n$1099511627776\r\n")
    fed = 0
    with pytest.raises(errors.ReplyTooLargeError, match="declares"):
        while fed < 64 * MIB:
            parser.feed(b"x" * 65536)
            fed += 65536
            _drain(parser)
    assert fed <= protocol._BIG_ITEM + 65536


def test_a_big_legitimate_string_survives_the_hand_over() -> None:
    body = bytes(range(256)) * (20 * MIB // 256)  # every byte value, CRLFs included
    wire = b"*2\r\n:1\r\n" + b"$%d\r\n%s\r\n" % (len(body), body) + b"+next\r\n"
    parser = RespParser()
    assert _feed_all(parser, wire, 65536) == [[1, body], b"next"]
    assert parser.idle and parser._careful is None


@pytest.mark.parametrize("chunk", [3, 4093, 65536, 10**7])
@pytest.mark.parametrize("kind", [b"$", b"=", b"!"])
def test_careful_parser_collects_large_strings_exactly(chunk: int, kind: bytes) -> None:
    size = careful._BIG_BLOB + 12345
    body = (b"txt:" if kind == b"=" else b"ERR ") + bytes(range(256)) * (size // 256)
    wire = (
        b"|1\r\n+k\r\n+v\r\n*2\r\n"  # an attribute: the careful parser reads what follows
        + kind
        + b"%d\r\n%s\r\n" % (len(body), body)
        + b":5\r\n+next\r\n"
    )
    if chunk == 3:
        wire_chunks = [wire[:200], *(wire[i : i + 99991] for i in range(200, len(wire), 99991))]
    else:
        wire_chunks = [wire[i : i + chunk] for i in range(0, len(wire), chunk)]
    parser = RespParser()
    replies = []
    for piece in wire_chunks:
        parser.feed(piece)
        replies += _drain(parser)
    first, second = replies
    if kind == b"!":
        # str() drops the ERR code, as redis-py's does.
        assert isinstance(first[0], rex.ResponseError) and str(first[0]) == body[4:].decode(
            "utf-8", "replace"
        )
    else:
        assert first[0] == (body[4:] if kind == b"=" else body)
    assert first[1] == 5 and second == b"next"
    assert parser.idle


def test_careful_parser_refuses_a_large_string_without_its_crlf() -> None:
    size = careful._BIG_BLOB * 2
    parser = RespParser()
    parser.feed(b"|1\r\n+k\r\n+v\r\n$%d\r\n" % size)
    parser.feed(b"y" * size + b"XY+OK\r\n")
    with pytest.raises(errors.ProtocolError, match="CRLF"):
        _drain(parser)


@pytest.mark.parametrize("depth", [63, 64, 65, 200])
@pytest.mark.parametrize("wide_first", [True, False])
def test_depth_is_exact_in_wide_replies(depth: int, wide_first: bool) -> None:
    # Many small aggregates (as ZRANGE ... WITHSCORES sends) beside one deep chain: the depth
    # check may not stop early on the width.
    wide = b"*500\r\n" + b"*2\r\n$1\r\nm\r\n,1.5\r\n" * 500
    deep = b"*1\r\n" * (depth - 1) + b":1\r\n"
    wire = b"*2\r\n" + (wide + deep if wide_first else deep + wide)
    parser = RespParser(max_depth=64)
    if depth > 64:  # the top array and depth - 1 arrays under it: depth levels
        with pytest.raises(errors.ReplyTooDeepError):
            _feed_all(parser, wire, 4096)
    else:
        (reply,) = _feed_all(parser, wire, 4096)
        assert len(reply) == 2


@pytest.mark.parametrize("careful_path", [False, True])
def test_many_small_elements_past_max_reply_bytes_are_refused(careful_path: bool) -> None:
    # Nothing declares too much (300,000 elements could fit in 1 MiB): only the bytes
    # accumulated by the incomplete reply give it away.
    prefix = b"|1\r\n+a\r\n+b\r\n" if careful_path else b""
    parser = RespParser(max_bytes=MIB)
    parser.feed(prefix + b"*300000\r\n")
    element = b"$10\r\n0123456789\r\n" * 1000
    fed = 0
    with pytest.raises(errors.ReplyTooLargeError, match="still incomplete"):
        while fed < 4 * MIB:
            parser.feed(element)
            fed += len(element)
            _drain(parser)
    assert MIB - len(element) <= fed <= MIB + len(element)
