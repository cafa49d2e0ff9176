"""Configured secrets never come back through what a server says (issue 27, item 5).

A fake server on a real socket echoes what it was sent, as a hostile or broken server (or a
proxy) may: the AUTH/HELLO arguments in its error reply, the password inside a malformed line,
in a later command's error, or in the reply to a re-authentication. The password (configured,
or returned by a credential provider) must reach neither the exception the caller sees (its
whole chain and notes) nor any log record, while the echo itself still shows (masked), which
proves the server did echo it.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from fake_resp import FakeRedis, ReplyHook
from redis import exceptions as rex

from trio_cluster import Client, ClusterClient

SECRET = "hunter2-Sekr3t-xyz"
NEW_SECRET = "rotated-Sekr3t-abc"


def echo_auth(args: list[bytes]) -> bytes | None:
    """Refuse AUTH (alone, or inside HELLO) with an error that echoes every argument."""
    names = [a.upper() for a in args]
    if names[0] == b"AUTH" or (names[0] == b"HELLO" and b"AUTH" in names):
        return b"-WRONGPASS invalid username-password pair, you sent: " + b" ".join(args) + b"\r\n"
    return None


def everything(error: BaseException | None, caplog: pytest.LogCaptureFixture) -> str:
    """The error's whole chain and notes, and every log record as it was written out (a
    handler formats a record when it is emitted, so a secret masked later still leaked)."""
    shown = "".join(traceback.format_exception(error)) if error is not None else ""
    return shown + caplog.text


@asynccontextmanager
async def fake(reply: ReplyHook) -> AsyncIterator[FakeRedis]:
    async with trio.open_nursery() as nursery:
        yield await FakeRedis(reply).start(nursery)
        nursery.cancel_scope.cancel()


def _client(kind: str, port: int, **options: Any) -> Client | ClusterClient:
    if kind == "client":
        return Client("127.0.0.1", port, **options)
    return ClusterClient("127.0.0.1", port, **options)


@pytest.mark.parametrize("kind", ["client", "cluster"])
@pytest.mark.parametrize("protocol", [3, 2])
@pytest.mark.parametrize("source", ["password", "provider"])
async def test_an_echoed_handshake_keeps_the_secret_out(
    kind: str, protocol: int, source: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_cluster")
    options: dict[str, Any] = {"protocol": protocol}
    if source == "password":
        options["password"] = SECRET
    else:
        options["credentials"] = lambda: ("alice", SECRET)
    with trio.fail_after(20):
        async with fake(echo_auth) as server:
            # The client's AuthenticationError; the cluster's ClusterUnreachableError quoting
            # it (both redis-py ConnectionErrors).
            with pytest.raises(rex.ConnectionError) as info:
                async with _client(kind, server.port, **options) as client:
                    await client.ping()
    assert any(
        a[0].upper() in (b"AUTH", b"HELLO") and SECRET.encode() in a for a in server.commands
    )
    text = everything(info.value, caplog)
    assert SECRET not in text
    assert "you sent:" in str(info.value) and "***" in str(info.value)  # echoed, masked
    if kind == "client":  # the pool's dial failure is logged, masked too
        (dial_failed,) = [line for line in caplog.text.splitlines() if "dial failed" in line]
        assert dial_failed.startswith("WARNING") and "you sent:" in dial_failed
        assert "***" in dial_failed


async def test_later_error_replies_are_masked_in_exceptions_and_pipelines() -> None:
    def echo_on_get(args: list[bytes]) -> bytes | None:
        if args[0].upper() == b"GET":
            return b"-ERR your password is " + SECRET.encode() + b"\r\n"
        return None

    with trio.fail_after(20):
        async with (
            fake(echo_on_get) as server,
            Client("127.0.0.1", server.port, password=SECRET) as client,
        ):
            with pytest.raises(rex.ResponseError) as info:
                await client.get("k")
            assert str(info.value) == "your password is ***"
            async with client.pipeline(transaction=False) as pipe:
                pipe.set("k", "v")
                pipe.get("k")
                replies = await pipe.execute(raise_on_error=False)
            assert replies[0] is True and isinstance(replies[1], rex.ResponseError)
            assert str(replies[1]) == "your password is ***"


async def test_a_pubsub_error_reply_is_masked() -> None:
    """A refused SUBSCRIBE reaches the consumer from ``get_message``, as redis-py raises it:
    with the password masked, as on every other connection."""

    def echo_on_subscribe(args: list[bytes]) -> bytes | None:
        if args[0].upper() == b"SUBSCRIBE":
            return b"-NOPERM your password %s may not read %s\r\n" % (SECRET.encode(), args[1])
        return None

    with trio.fail_after(20):
        async with (
            fake(echo_on_subscribe) as server,
            Client("127.0.0.1", server.port, password=SECRET) as client,
            client.pubsub() as pubsub,
        ):
            await pubsub.subscribe("ch")
            with pytest.raises(rex.ResponseError) as info:
                await pubsub.get_message(timeout=10)
    assert any(a[0].upper() == b"SUBSCRIBE" for a in server.commands)
    assert SECRET not in "".join(traceback.format_exception(info.value))
    assert str(info.value) == "NOPERM your password *** may not read ch"


async def test_a_malformed_reply_quoting_the_secret_is_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def garble_hello(args: list[bytes]) -> bytes | None:
        if args[0].upper() == b"HELLO":
            return b"!" + SECRET.encode() + b"\r\n"  # a blob length that is the password
        return None

    caplog.set_level(logging.DEBUG, logger="trio_cluster")
    with trio.fail_after(20):
        async with fake(garble_hello) as server:
            with pytest.raises(rex.InvalidResponse) as info:
                async with Client("127.0.0.1", server.port, password=SECRET) as client:
                    await client.ping()
    text = everything(info.value, caplog)
    assert SECRET not in text
    assert "bad blob length in reply: b'***'" in str(info.value)
    assert any(
        "closing connection" in r.getMessage() and "***" in r.getMessage() for r in caplog.records
    )


async def test_a_reauthentication_echo_keeps_the_new_secret_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def echo_reauth(args: list[bytes]) -> bytes | None:
        return echo_auth(args) if args[0].upper() == b"AUTH" else None

    caplog.set_level(logging.DEBUG, logger="trio_cluster")
    with trio.fail_after(20):
        async with (
            fake(echo_reauth) as server,
            Client("127.0.0.1", server.port, credentials=("alice", SECRET)) as client,
        ):
            assert await client.ping() is True
            client.rotate_credentials("bob", NEW_SECRET)
            await _until(lambda: client.maintenance_stats()["reauth_failures"] == 1)
            assert await client.ping() is True  # a new connection, on the new credentials
    assert [b"AUTH", b"bob", NEW_SECRET.encode()] in server.commands
    text = everything(None, caplog)
    assert NEW_SECRET not in text and SECRET not in text
    (failed,) = [line for line in caplog.text.splitlines() if "re-authentication" in line]
    assert "you sent: AUTH bob ***" in failed


async def _until(condition: Callable[[], bool]) -> None:
    # Waiting on the client's own books: no event exists for "the re-auth job failed".
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.005)
