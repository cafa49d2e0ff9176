"""The WITHSCORES fast path gives exactly what redis-py's RESP3-to-legacy callback gives."""

from __future__ import annotations

import math
import random
import struct

import pytest
from redis._parsers.helpers import zset_score_pairs_resp3_to_resp2_legacy as reference

from trio_cluster.wire import commands
from trio_cluster.wire.commands import ReplyParser

TRICKY = [0.0, -0.0, 0.1, 1 / 3, 1e300, -1e-300, 5e-324, 1.7732526297292595e18, 2.0**53 + 1,
          math.inf, -math.inf]  # fmt: skip


def _scores() -> list[float]:
    rng = random.Random(7)
    bits = [struct.unpack("<d", rng.randbytes(8))[0] for _ in range(5000)]
    return TRICKY + [x for x in bits if not math.isnan(x)]


@pytest.mark.parametrize("cast", [{}, {"score_cast_func": float}])  # zrange() passes float
def test_default_cast_matches_redis_py_for_every_double(cast: dict[str, object]) -> None:
    parse = ReplyParser(None).parse
    reply = [[b"m%d" % i, score] for i, score in enumerate(_scores())]
    ours = parse("ZRANGE", [list(pair) for pair in reply], {"withscores": True, **cast})
    theirs = reference([list(pair) for pair in reply], withscores=True, **cast)
    assert ours == theirs
    assert all(
        type(a[1]) is type(b[1]) and isinstance(a, tuple) for a, b in zip(ours, theirs, strict=True)
    )
    # -0.0 == 0.0, so compare the signs too.
    assert [math.copysign(1, s) for _, s in ours] == [math.copysign(1, s) for _, s in theirs]


def test_a_custom_cast_still_sees_bytes_as_in_redis_py() -> None:
    parse = ReplyParser(None).parse
    seen: list[object] = []

    def cast(raw: object) -> object:
        seen.append(raw)
        return raw

    assert parse("ZRANGE", [[b"a", 1.5]], {"withscores": True, "score_cast_func": cast}) == [
        (b"a", b"1.5")
    ]
    assert seen == [b"1.5"]


def test_without_scores_the_reply_is_untouched() -> None:
    reply = [b"a", b"b"]
    assert ReplyParser(None).parse("ZRANGE", reply, {}) is reply


def test_the_default_cast_skips_redis_pys_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    """What zrange(withscores=True) passes takes the direct path (the speed-up is real)."""

    def slow_path(response: object, **options: object) -> object:
        raise AssertionError("redis-py's per-score round trip was used")

    monkeypatch.setattr(commands, "zset_score_pairs_resp3_to_resp2_legacy", slow_path)
    options = {"withscores": True, "score_cast_func": float}
    assert ReplyParser(None).parse("ZRANGE", [[b"a", 2.5]], options) == [(b"a", 2.5)]
