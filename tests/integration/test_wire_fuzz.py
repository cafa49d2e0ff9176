"""Hypothesis: a fake server mixes arbitrary bytes into its replies to concurrent callers.

Every reply the fake server sends goes out with bytes of hypothesis's choosing before and/or
after it, in the same write.  Many tasks call ``GET`` on keys of their own at once through one
client (connections are shared in turn through the pool).  Whatever the bytes, each call must
end in one of three ways: the caller's own value, a redis-py ``RedisError`` (typed protocol
errors and timeouts included), or a value that is plainly garbage; never a value carrying
another caller's key, which would mean a reply reached the wrong caller.  The injected bytes
never contain the ``v:k`` marker of the correct replies, so the marker of another caller can only
come from that caller's real reply.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import trio
from fake_resp import FakeRedis, bulk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import exceptions as rex

from trio_cluster import Client, ClusterClient, PoolOptions

# RESP fragments and whole frames, so that the junk often parses: replies, pushes, attributes,
# headers promising more, nesting, and raw noise.
_FRAGMENTS = [
    b"+OK\r\n", b"$3\r\nabc\r\n", b":1\r\n", b"*2\r\n", b"*1\r\n", b"%1\r\n", b"|1\r\n",
    b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nz\r\n", b">1\r\n", b"!3\r\nERR\r\n", b"-ERR x\r\n",
    b"$", b"\r\n", b"_\r\n", b"#t\r\n", b"~1\r\n", b"$-1\r\n", b"*-1\r\n", b"=5\r\ntxt:a\r\n",
    b"$100\r\n", b"*3\r\n:1\r\n", b"-MOVED 99999 h:1\r\n", b",1.5\r\n", b"(12\r\n",
]  # fmt: skip
_junk = (
    st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.binary(max_size=6)), max_size=4)
    .map(b"".join)
    .filter(lambda b: b"v:k" not in b)
)
_injection = st.tuples(_junk, _junk)  # (before, after) one reply

_OWN = re.compile(rb"v:k(\d+)")


def _markers(value: Any) -> set[bytes]:
    found: set[bytes] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes | str):
            text = item.encode() if isinstance(item, str) else item
            found.update(m.group(1) for m in _OWN.finditer(text))
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set):
            stack.extend(item)
        elif isinstance(item, BaseException):
            stack.append(str(item))
    return found


async def _run(kind: str, injections: list[tuple[bytes, bytes]]) -> list[tuple[int, Any]]:
    sent = 0

    def hostile(args: list[bytes]) -> bytes | None:
        nonlocal sent
        if args[0].upper() != b"GET":
            return None
        before, after = injections[sent % len(injections)]
        sent += 1
        return before + bulk(b"v:" + args[1]) + after

    outcomes: list[tuple[int, Any]] = []
    async with trio.open_nursery() as nursery:
        server = await FakeRedis(hostile).start(nursery)
        options: dict[str, Any] = {"read_timeout": 0.3, "pool": PoolOptions(size=3)}
        client: Any = (
            Client("127.0.0.1", server.port, **options)
            if kind == "client"
            else ClusterClient("127.0.0.1", server.port, **options)
        )
        async with client:

            async def caller(task: int) -> None:
                for round_ in range(3):
                    key = 100 * task + round_
                    try:
                        outcomes.append((key, await client.get(f"k{key}")))
                    except rex.RedisError as error:
                        outcomes.append((key, error))

            async with trio.open_nursery() as callers:
                for task in range(6):
                    callers.start_soon(caller, task)
        nursery.cancel_scope.cancel()
    return outcomes


@pytest.mark.parametrize("kind", ["client", "cluster"])
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(injections=st.lists(_injection, min_size=1, max_size=6))
def test_callers_never_see_another_callers_reply(
    kind: str, injections: list[tuple[bytes, bytes]]
) -> None:
    async def main() -> list[tuple[int, Any]]:
        with trio.fail_after(40):
            return await _run(kind, injections)

    outcomes = trio.run(main)
    assert len(outcomes) == 18  # every call ended, none escaped as a non-Redis error
    for key, outcome in outcomes:
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, rex.RedisError)
            continue
        assert _markers(outcome) <= {b"%d" % key}, (key, outcome)
