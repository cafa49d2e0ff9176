"""What one reply may hold (``max_reply_elements``), sans-IO: counted exactly by both parsers
(checked against a count written from the documented rule, not from the code), refused at the
declaring header where the header says enough, and never outrun by what hiredis builds;
negative lengths named as what they are; large top-level maps, which the hot path reads as
arrays, give what hiredis and the careful parser give."""

from __future__ import annotations

import gc
import tracemalloc
from typing import Any

import hiredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol import (
    _careful_parse,
    _drain,
    _feed_all,
    _feed_split,
    _same,
    _values,
    _wire,
)

from trio_cluster import errors
from trio_cluster.wire.careful import CarefulParser
from trio_cluster.wire.protocol import NEED_DATA, RespParser


def _cost(node: Any) -> int:
    """A reply's cost by the rule in the docs: an aggregate (array, map, set, push, attribute)
    counts 3 plus its elements, a map's keys and values separately; any other value 1."""
    kind, value = node
    if kind in ("*", ">"):
        return 3 + sum(map(_cost, value))
    if kind == "%":  # [(key bytes, value node), ...]
        return 3 + sum(1 + _cost(v) for _, v in value)
    if kind == "|":  # (attributes {key bytes: leaf node}, the element described)
        attributes, described = value
        return 3 + sum(1 + _cost(v) for v in attributes.values()) + _cost(described)
    return 1


@st.composite
def _trees(draw: st.DrawFn) -> Any:
    """A reply as a tree (for its cost) from either strategy of test_protocol: the plain
    values, or the ones with attributes, blob errors and push frames."""
    return draw(st.one_of(_values(), _attributed()))


@st.composite
def _attributed(draw: st.DrawFn) -> Any:
    leaf = st.one_of(
        st.binary(max_size=6).map(lambda b: ("$", b)),
        st.integers(min_value=-5, max_value=5).map(lambda i: (":", i)),
        st.none().map(lambda _: ("_", None)),
    )
    described = draw(_values())
    attributes = draw(st.dictionaries(st.binary(max_size=4), leaf, min_size=1, max_size=3))
    return ("|", (attributes, described))


def _wire_tree(node: Any) -> bytes:
    kind, value = node
    if kind == "|":
        attributes, described = value
        body = b"".join(_wire(("$", k)) + _wire(v) for k, v in attributes.items())
        return b"|%d\r\n" % len(attributes) + body + _wire_tree(described)
    return _wire(node)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_trees(), min_size=1, max_size=5),
    st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=6),
)
def test_the_count_is_exact_on_both_parsers(trees: list[Any], cuts: list[int]) -> None:
    wire = b"".join(map(_wire_tree, trees))
    most = max(map(_cost, trees))
    for make in (RespParser, CarefulParser):
        options: dict[str, Any] = {"max_bytes": 2**30, "max_depth": 64}
        within = make(**options, max_elements=most)
        assert len(_feed_split(within, wire, cuts)) == len(trees), make
        if most == 1:
            continue  # no aggregate: a bound below one value is not a bound (it is >= 65,536)
        beyond = make(**options, max_elements=most - 1)
        with pytest.raises(errors.ReplyTooLargeError, match="max_reply_elements"):
            _feed_split(beyond, wire, cuts)


@pytest.mark.parametrize(
    "header",
    [
        b"*100000000\r\n",  # the top-level header (hot path)
        b"%60000\r\n",  # a map's keys and values count separately: 120,003
        b"*2\r\n:1\r\n*100000000\r\n",  # nested: found among the bytes fed to hiredis
        b"*2\r\n:1\r\n~70000\r\n" + b"*2\r\n:1\r\n" * 1000,  # a set, behind other aggregates
        b"|1\r\n+k\r\n+v\r\n*100000000\r\n",  # the careful parser reads every header
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_a_declared_count_past_the_bound_is_refused_at_its_header(
    header: bytes, chunk: int
) -> None:
    # Nothing but headers is fed: the refusal cannot come from anything built.
    # Bounds at or above the floor (MIN_MAX_REPLY_ELEMENTS): the hot path's own checks.
    parser = RespParser(max_elements=65_536 if b"~70000" in header else 100_000)
    assert parser._careful is None
    with pytest.raises(errors.ReplyTooLargeError, match="max_reply_elements"):
        _feed_all(parser, header, chunk)
    with pytest.raises(errors.ProtocolError):
        parser.next_reply()


def test_a_count_split_by_the_read_boundary_is_still_read() -> None:
    wire = b"*3\r\n:1\r\n:2\r\n*100000000\r\n"
    for cut in range(1, len(wire)):
        parser = RespParser(max_elements=100_000)
        with pytest.raises(errors.ReplyTooLargeError):
            parser.feed(wire[:cut])
            _drain(parser)
            parser.feed(wire[cut:])
            _drain(parser)


LIMIT = 60_000
# Each shape declares little (999 per aggregate, 100,000 at the top: both within the bound),
# so only counting what arrives can stop it; each would build millions of objects unchecked.
HOSTILE = {
    "two-byte strings": b"*999\r\n" + b"$2\r\nxx\r\n" * 999,
    "integers": b"*999\r\n" + b":1\r\n" * 999,
    "empty arrays": b"*999\r\n" + b"*0\r\n" * 999,
    "empty maps": b"*999\r\n" + b"%0\r\n" * 999,
}


@pytest.mark.parametrize("careful_path", [False, True], ids=["hiredis", "careful"])
@pytest.mark.parametrize("unit", list(HOSTILE.values()), ids=list(HOSTILE))
def test_what_is_built_stays_within_the_bound(unit: bytes, careful_path: bool) -> None:
    prefix = b"|1\r\n+k\r\n+v\r\n" if careful_path else b""
    chunk = unit * (65536 // len(unit) + 1)
    parser = RespParser(max_elements=LIMIT)
    gc.collect()
    tracemalloc.start()
    fed = 0
    try:
        with pytest.raises(errors.ReplyTooLargeError, match="max_reply_elements") as caught:
            parser.feed(prefix + b"*10000\r\n")  # 10,003: within the bound
            while fed < 8 * 2**20:
                parser.feed(chunk)
                fed += len(chunk)
                _drain(parser)
        peak = tracemalloc.get_traced_memory()[1]
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # At most LIMIT values (about 100 bytes of objects each, list slots included) plus the
    # bytes of a few reads in flight; unchecked, 8 MiB of these builds 150-400 MB.
    assert peak < LIMIT * 100 + 4 * 2**20, peak
    assert fed < LIMIT * 10  # refused within a read of the bound's worth of bytes
    # The partial reply is freed at once, though the exception (and its traceback) lives on.
    assert caught.value.__traceback__ is not None
    assert after < 2**20, after


def test_a_reply_refused_by_hiredis_is_freed_though_its_exception_lives() -> None:
    # max_reply_bytes refuses this one where hiredis holds it (about 100,000 strings built).
    parser = RespParser(max_bytes=2**20)
    tracemalloc.start()
    try:
        with pytest.raises(errors.ReplyTooLargeError, match="max_reply_bytes") as caught:
            parser.feed(b"*300000\r\n")
            for _ in range(200):
                parser.feed(b"$10\r\n0123456789\r\n" * 1000)
                _drain(parser)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert caught.value.__traceback__ is not None
    assert after < 2**20, after


def test_large_legitimate_replies_stay_on_hiredis() -> None:
    # Within the bound, flat and nested large replies are read by hiredis to the end.
    flat = b"*1000000\r\n" + b"$1\r\na\r\n" * 1_000_000
    pairs = b"*100000\r\n" + b"*2\r\n$2\r\nmm\r\n,1.5\r\n" * 100_000
    for wire, size in ((flat, 1_000_000), (pairs, 100_000)):
        parser = RespParser()
        for i in range(0, len(wire), 262144):
            parser.feed(wire[i : i + 262144])
            assert parser._careful is None
            replies = _drain(parser)
        assert len(replies) == 1 and len(replies[0]) == size


def test_big_headers_of_replies_already_returned_do_not_count_against_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A busy stream: hiredis never goes idle, so one window holds both replies.  Each fits
    # (5,006 and 3,006 of 6,000); counted together they would not.  (Had the second one's
    # header come in the read where the first one ends, before hiredis has found where that
    # is, both would count: a slower parse, never a wrong verdict.)
    handed_over = []
    real = RespParser._to_careful
    monkeypatch.setattr(RespParser, "_to_careful", lambda self: handed_over.append(1) or real(self))
    first = b"*1\r\n*5000\r\n" + b":1\r\n" * 5000
    second = b"*1\r\n*3000\r\n" + b":1\r\n" * 3000
    wire = first + second
    # The first reply ends in the second read, which also holds the second one's first line.
    parser = RespParser(max_elements=6000)
    replies = _feed_split(parser, wire, [len(first) - 8, 12, len(wire)])
    assert [len(r[0]) for r in replies] == [5000, 3000]
    assert not handed_over


@pytest.mark.parametrize(
    ("wire", "length"),
    [
        (b"$-5\r\n", "-5"),
        (b"*-5\r\n", "-5"),
        (b"%-2\r\n", "-2"),
        (b"=-3\r\n", "-3"),
        (b"!-7\r\n", "-7"),
        (b"*2\r\n:1\r\n$-9\r\n", "-9"),  # nested
        (b"+OK\r\n*2\r\n:1\r\n$-9\r\n", "-9"),  # behind another reply in the same read
    ],
)
@pytest.mark.parametrize("chunk", [1, 4096])
def test_a_negative_length_is_a_protocol_error_naming_it(
    wire: bytes, length: str, chunk: int
) -> None:
    for parser in (RespParser(), CarefulParser(max_bytes=2**20, max_depth=8, max_elements=2**20)):
        with pytest.raises(errors.ProtocolError, match=f"length {length} ") as caught:
            _feed_all(parser, wire, chunk)
        assert not isinstance(caught.value, errors.ReplyTooLargeError)


MAP_SIZE = 12_000  # maps of 10,000 entries or more are fed to hiredis as arrays


def _map_wire(entries: list[tuple[bytes, Any]]) -> bytes:
    return b"%%%d\r\n" % len(entries) + b"".join(_wire(("$", k)) + v for k, v in entries)


def _map_values() -> list[tuple[bytes, bytes]]:
    values = [
        b":7\r\n",
        b"$3\r\nabc\r\n",
        b"*2\r\n:1\r\n_\r\n",
        b"-ERR no\r\n",
        b"%1\r\n+a\r\n#t\r\n",
    ]
    return [(b"k%d" % i, values[i % len(values)]) for i in range(MAP_SIZE)]


@pytest.mark.parametrize("chunk", [1, 5, 8, 4096, 65536])
def test_a_large_map_gives_what_hiredis_and_the_careful_parser_give(chunk: int) -> None:
    wire = _map_wire(_map_values())
    reader = hiredis.Reader(replyError=errors.error_from_reply)
    reader.feed(wire)
    expected = reader.gets()
    (careful_reply,) = _careful_parse(wire, 4096)
    got, after = _feed_all(RespParser(), wire + b"+next\r\n", chunk)
    assert after == b"next"
    assert type(got) is dict and len(got) == MAP_SIZE
    assert list(got) == list(expected)  # the same keys in the same order
    assert all(_same(a, b) for a, b in zip(got.values(), expected.values(), strict=True))
    assert all(_same(a, b) for a, b in zip(got.values(), careful_reply.values(), strict=True))


def test_a_large_map_behind_another_reply_is_read_too() -> None:
    wire = b"+first\r\n" + _map_wire(_map_values())
    first, second = _feed_all(RespParser(), wire, 65536)
    assert first == b"first" and len(second) == MAP_SIZE


def test_a_repeated_map_key_keeps_its_last_value_as_the_careful_parser_does() -> None:
    half = MAP_SIZE // 2
    entries = [(b"k%d" % (i % half), b":%d\r\n" % i) for i in range(MAP_SIZE)]
    wire = _map_wire(entries)
    (got,) = _feed_all(RespParser(), wire, 65536)
    assert got == _careful_parse(wire, 65536)[0] == {b"k%d" % i: half + i for i in range(half)}


def test_a_large_map_with_an_unhashable_key_is_a_shape_error() -> None:
    wire = b"%20000\r\n" + b"*1\r\n:1\r\n:2\r\n" + b"$1\r\nk\r\n:3\r\n" * 19999
    with pytest.raises(errors.ReplyShapeError):
        _feed_all(RespParser(), wire, 65536)


def test_the_parser_gives_need_data_until_the_map_is_whole() -> None:
    wire = _map_wire(_map_values())
    parser = RespParser()
    parser.feed(wire[:-1])
    assert parser.next_reply() is NEED_DATA
    parser.feed(wire[-1:])
    assert len(parser.next_reply()) == MAP_SIZE
