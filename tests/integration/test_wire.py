"""The wire layer against a hostile fake server (real sockets): exactly-once delivery, reply
size and depth limits, read deadlines while bytes keep arriving, redirect validation, shapes.

Every test runs through the standalone ``Client`` and the ``ClusterClient``; each shows that
the caller gets a typed error (or its own correct reply), never someone else's, that a log
record names the violation, and that the next command, on a fresh connection, gets its own
reply.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
from fake_resp import FakeRedis, ReplyHook, StreamHook, bulk, pump
from redis import exceptions as rex

from trio_cluster import Client, ClusterClient
from trio_cluster import errors as tce

CLIENTS = ["client", "cluster"]


@asynccontextmanager
async def connected(
    kind: str, reply: ReplyHook | None = None, stream: StreamHook | None = None, **options: Any
) -> AsyncIterator[tuple[Any, FakeRedis]]:
    async with trio.open_nursery() as nursery:
        server = await FakeRedis(reply, stream).start(nursery)
        client: Any
        if kind == "client":
            client = Client("127.0.0.1", server.port, **options)
        else:
            client = ClusterClient("127.0.0.1", server.port, **options)
        async with client:
            yield client, server
        nursery.cancel_scope.cancel()


async def _get_fails_then_next_works(kind: str, wire: bytes, error: type[Exception]) -> None:
    """``wire`` answering ``GET a`` raises ``error`` (typed); the next command, ``GET b``, on
    the same client still gets its own reply."""
    with trio.fail_after(20):
        async with connected(kind, once(get_of(b"a"), wire)) as (client, _):
            with pytest.raises(error):
                await client.get("a")
            assert await client.get("b") == b"v:b"


def once(match: Callable[[list[bytes]], bool], wire: bytes) -> ReplyHook:
    """Answer the first command that ``match`` accepts with ``wire``; the rest correctly."""
    used = False

    def hook(args: list[bytes]) -> bytes | None:
        nonlocal used
        if not used and match(args):
            used = True
            return wire
        return None

    return hook


def get_of(key: bytes) -> Callable[[list[bytes]], bool]:
    return lambda args: args[0].upper() == b"GET" and args[1] == key


def violations(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "trio_cluster.conn.stream" and r.levelno == logging.WARNING
    ]


# --- 1. exactly-once delivery -----------------------------------------------------------------


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "wire",
    [
        bulk(b"v:a") + b"+EXTRA\r\n",  # an extra reply after the real one, same segment
        b"+EXTRA\r\n" + bulk(b"v:a"),  # ... before it: the caller cannot tell which is real
        bulk(b"v:a") + b"+EXT",  # a partial extra reply
        bulk(b"v:a") + bulk(b"v:b"),  # the reply the next command would expect
    ],
)
async def test_bytes_after_the_owed_reply_are_never_delivered(
    kind: str, wire: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_cluster.conn.stream")
    with trio.fail_after(20):
        async with connected(kind, once(get_of(b"a"), wire)) as (client, server):
            with pytest.raises(tce.UnsolicitedReplyError) as caught:
                await client.get("a")
            assert isinstance(caught.value, rex.InvalidResponse)
            assert any("UnsolicitedReplyError" in m for m in violations(caplog))
            before = server.connections
            assert await client.get("b") == b"v:b"
            assert await client.get("c") == b"v:c"
            assert server.connections == before + 1  # the poisoned connection was replaced


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_push_frame_after_the_reply_goes_to_the_push_handler(kind: str) -> None:
    # A top-level push is not unsolicited: it is dispatched, and the caller keeps its reply.
    push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nz\r\n"
    with trio.fail_after(20):
        async with connected(kind, once(get_of(b"a"), bulk(b"v:a") + push)) as (client, server):
            assert await client.get("a") == b"v:a"
            assert await client.get("b") == b"v:b"
            assert server.connections == (1 if kind == "client" else 2)  # no reconnect


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_partial_push_frame_after_the_reply_is_completed_later(kind: str) -> None:
    # The rest of the push arrives with the next reply: still dispatched, never delivered.
    push = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nz\r\n"
    hook_a = once(get_of(b"a"), bulk(b"v:a") + push[:9])
    hook_b = once(get_of(b"b"), push[9:] + bulk(b"v:b"))

    def hook(args: list[bytes]) -> bytes | None:
        return hook_a(args) or hook_b(args)

    with trio.fail_after(20):
        async with connected(kind, hook) as (client, _):
            assert await client.get("a") == b"v:a"
            assert await client.get("b") == b"v:b"


def _closes(kind: str, client: Any) -> dict[str, int]:
    """The client's connection closes by reason, over every node's pool."""
    stats = client.stats()
    total: dict[str, int] = {}
    for pool in [stats] if kind == "client" else list(stats.nodes.values()):
        for reason, count in pool.closes.items():
            total[reason] = total.get(reason, 0) + count
    return total


@pytest.mark.parametrize("kind", CLIENTS)
async def test_unsolicited_reply_on_an_idle_connection_closes_it(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_cluster.conn.stream")
    release, sent = trio.Event(), trio.Event()

    async def stray(args: list[bytes], stream: trio.SocketStream) -> None:
        await stream.send_all(bulk(b"v:" + args[1]) if args[0].upper() == b"GET" else b"+OK\r\n")
        if args[1] == b"a":
            await release.wait()  # the client has its reply: the connection is idle
            await stream.send_all(b"+STRAY\r\n")
            sent.set()

    with trio.fail_after(20):
        async with connected(kind, stream=stray) as (client, _):
            assert await client.get("a") == b"v:a"
            release.set()
            await sent.wait()
            # The stray reply may still be in flight: the next caller either sees it rejected
            # at checkout, or (if it lands after the check) the stream is caught out of step.
            for key in ("b", "c", "d"):
                with suppress(tce.UnsolicitedReplyError):
                    assert await client.get(key) == b"v:" + key.encode()
            assert await client.get("e") == b"v:e"
            assert any("UnsolicitedReplyError" in m for m in violations(caplog))
            # Wherever it was caught, the close is counted under its own reason: not
            # "peer_closed" (the server closed nothing), not "broken".
            assert _closes(kind, client) == {"unsolicited_reply": 1}


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_reply_after_the_owed_one_closes_its_connection_as_unsolicited(kind: str) -> None:
    # Caught while the command is in use (its own reply then a stray one, in one segment).
    with trio.fail_after(20):
        async with connected(kind, once(get_of(b"a"), bulk(b"v:a") + b"+EXTRA\r\n")) as (
            client,
            _,
        ):
            with pytest.raises(tce.UnsolicitedReplyError):
                await client.get("a")
            assert await client.get("b") == b"v:b"
            assert _closes(kind, client) == {"unsolicited_reply": 1}


@pytest.mark.parametrize("kind", CLIENTS)
async def test_push_frame_inside_an_array_is_a_protocol_error(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_cluster.conn.stream")
    wire = b"*2\r\n>1\r\n$1\r\nb\r\n$1\r\nb\r\n"  # the case: it left "$1 b" behind
    await _get_fails_then_next_works(kind, wire, tce.ReplyShapeError)
    assert any("ReplyShapeError" in m for m in violations(caplog))


# --- 3. size and depth limits -----------------------------------------------------------------


async def _flood(args: list[bytes], stream: trio.SocketStream, header: bytes) -> None:
    """Declare a huge reply and keep sending its body until the client hangs up."""
    if args[1] != b"big":
        await stream.send_all(bulk(b"v:" + args[1]) if args[0].upper() == b"GET" else b"+OK\r\n")
        return
    await stream.send_all(header)
    chunk = b"x" * 65536
    try:
        while True:
            await stream.send_all(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    ("header", "options"),
    [
        (b"$1099511627776\r\n", {}),  # declared: refused at the header, default bound
        (b"*1099511627776\r\n", {}),
        (b"*2\r\n:1\r\n$1099511627776\r\n", {"max_reply_bytes": 2**20}),  # accumulated
    ],
)
async def test_reply_past_max_reply_bytes_is_refused_and_the_connection_closed(
    kind: str, header: bytes, options: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_cluster.conn.stream")

    async def flood(args: list[bytes], stream: trio.SocketStream) -> None:
        await _flood(args, stream, header)

    with trio.fail_after(30):
        async with connected(kind, stream=flood, **options) as (client, _):
            with pytest.raises(tce.ReplyTooLargeError):
                await client.get("big")
            assert any("ReplyTooLargeError" in m for m in violations(caplog))
            assert await client.get("small") == b"v:small"


# Issue 27's shapes: a reply declaring 100 million elements, then endless small ones (unchecked,
# 60 MiB of two-byte strings took the client to 522 MiB).  Each nested shape declares little at
# every level (999 per aggregate), so only counting what arrives can stop it.
_MANY = {
    "two-byte strings": (b"*100000000\r\n", b"$2\r\nxx\r\n"),
    "integers": (b"*100000000\r\n", b":1\r\n"),
    "empty arrays": (b"*100000000\r\n", b"*0\r\n"),
    "nested two-byte strings": (b"*100000\r\n", b"*999\r\n" + b"$2\r\nxx\r\n" * 999),
    "nested empty arrays": (b"*100000\r\n", b"*999\r\n" + b"*0\r\n" * 999),
    "nested empty maps": (b"*100000\r\n", b"*999\r\n" + b"%0\r\n" * 999),
}


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(("header", "unit"), list(_MANY.values()), ids=list(_MANY))
async def test_reply_past_max_reply_elements_is_refused_and_the_connection_closed(
    kind: str, header: bytes, unit: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "trio_cluster.conn.stream")

    async def flood(args: list[bytes], stream: trio.SocketStream) -> None:
        if args[1] != b"big":
            await stream.send_all(bulk(b"v:" + args[1]))
            return
        await pump(stream, header, unit, max(1, 65536 // len(unit)))

    with trio.fail_after(30):
        # The read timeout is far off: the refusal comes from the count, not from a deadline.
        async with connected(kind, stream=flood, read_timeout=25) as (client, server):
            with pytest.raises(tce.ReplyTooLargeError, match="max_reply_elements=1048576"):
                await client.get("big")
            assert any("ReplyTooLargeError" in m for m in violations(caplog))
            before = server.connections
            assert await client.get("small") == b"v:small"
            assert server.connections == before + 1  # the connection was replaced


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("wire", [b"$-5\r\n", b"*2\r\n:1\r\n$-5\r\n", b"*-5\r\n"])
async def test_a_negative_length_is_a_protocol_error_naming_it(kind: str, wire: bytes) -> None:
    with trio.fail_after(20):
        async with connected(kind, once(get_of(b"a"), wire)) as (client, _):
            with pytest.raises(tce.ProtocolError, match="length -5 ") as caught:
                await client.get("a")
            assert not isinstance(caught.value, tce.ReplyTooLargeError)
            assert await client.get("b") == b"v:b"


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "wire",
    [b"*1\r\n" * 100_000 + b":1\r\n", b"|1\r\n" * 100_000 + b"+k\r\n+v\r\n" * 100_000 + b":1\r\n"],
    ids=["arrays", "attributes"],
)
async def test_nesting_past_the_depth_limit_is_typed(kind: str, wire: bytes) -> None:
    await _get_fails_then_next_works(kind, wire, tce.ReplyTooDeepError)


@pytest.mark.parametrize(
    "options",
    [{"max_reply_bytes": 1000}, {"max_reply_bytes": -1}, {"max_reply_depth": 0},
     {"max_reply_depth": 5000}, {"max_reply_bytes": 2.5e9}, {"max_reply_elements": 1000},
     {"max_reply_elements": 2.0**20}, {"max_reply_elements": True}],
)  # fmt: skip
@pytest.mark.parametrize("cls", [Client, ClusterClient])
async def test_limits_are_validated_at_construction(cls: Any, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="max_reply_"):
        cls("127.0.0.1", 6379, **options)


# --- 4. the read timeout is a deadline for the whole reply ---------------------------------------


# 100 million one-byte strings declared (one-byte bytes objects are shared, so only the list
# grows), then sent without end by a child process: the reply never completes, bytes are always
# waiting in the socket, so reading never has to wait (where a cancel would be noticed anyway).
# max_reply_elements is raised past that count: these tests are about deadlines.
_ENDLESS_HEADER = b"*100000000\r\n"
_ENDLESS_OPTIONS = {"max_reply_elements": 2**40}


async def _endless(args: list[bytes], stream: trio.SocketStream) -> None:
    if args[1] != b"slow":
        await stream.send_all(bulk(b"v:" + args[1]))
        return
    await pump(stream, _ENDLESS_HEADER, b"$1\r\nx\r\n", 65536)


@pytest.mark.parametrize("kind", CLIENTS)
async def test_read_timeout_holds_while_bytes_keep_arriving(kind: str) -> None:
    with trio.fail_after(30):
        async with connected(kind, stream=_endless, read_timeout=0.2, **_ENDLESS_OPTIONS) as (
            client,
            _,
        ):
            with pytest.raises(tce.ReadTimeoutError):
                await client.get("slow")
            assert await client.get("fast") == b"v:fast"


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_reply_that_keeps_arriving_can_still_be_cancelled(kind: str) -> None:
    with trio.fail_after(30):
        async with connected(kind, stream=_endless, read_timeout=None, **_ENDLESS_OPTIONS) as (
            client,
            _,
        ):
            with trio.move_on_after(0.2) as scope:
                await client.get("slow")
            assert scope.cancelled_caught
            assert await client.get("fast") == b"v:fast"


@pytest.mark.parametrize("kind", CLIENTS)
async def test_blocking_commands_keep_their_extension(kind: str) -> None:
    async def hold(args: list[bytes], stream: trio.SocketStream) -> None:
        if args[0].upper() == b"BLPOP":
            await trio.sleep(0.6)  # the server's own wait, longer than the read timeout
            await stream.send_all(b"*2\r\n" + bulk(args[1]) + bulk(b"popped"))
        else:
            await stream.send_all(bulk(b"v:" + args[1]))

    with trio.fail_after(30):
        async with connected(kind, stream=hold, read_timeout=0.2) as (client, _):
            assert await client.blpop(["q"], timeout=5) in ([b"q", b"popped"], (b"q", b"popped"))
            assert await client.get("after") == b"v:after"


# --- 5. redirects and shapes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "redirect",
    [b"MOVED 99999 127.0.0.1:{port}", b"MOVED -1 127.0.0.1:{port}", b"ASK 5 127.0.0.1:0",
     b"MOVED 5 127.0.0.1:99999", b"MOVED 5 not an address", b"ASK 5 127.0.0.1"],
)  # fmt: skip
async def test_bad_redirect_is_typed_and_leaves_routing_untouched(redirect: bytes) -> None:
    port = 0

    def hook(args: list[bytes]) -> bytes | None:
        if args[0].upper() == b"GET" and args[1] == b"a":
            return b"-" + redirect.replace(b"{port}", b"%d" % port) + b"\r\n"
        return None

    with trio.fail_after(20):
        async with connected("cluster", hook) as (client, server):
            port = server.port
            slots_before = [client.slot_map.primary(slot) for slot in range(16384)]
            with pytest.raises(tce.InvalidRedirectError) as caught:
                await client.get("a")
            assert isinstance(caught.value, rex.ResponseError)
            assert [client.slot_map.primary(slot) for slot in range(16384)] == slots_before
            assert await client.get("b") == b"v:b"


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "wire",
    [b"%1\r\n*1\r\n:1\r\n:2\r\n", b"%1\r\n%1\r\n:1\r\n:2\r\n:3\r\n",
     b"|1\r\n+k\r\n+v\r\n%1\r\n*1\r\n:1\r\n:2\r\n"],
    ids=["array-key", "map-key", "array-key-after-attribute"],
)  # fmt: skip
async def test_map_with_unhashable_key_is_typed(kind: str, wire: bytes) -> None:
    await _get_fails_then_next_works(kind, wire, tce.ReplyShapeError)
