"""Maintenance notifications against a real server, through the faults package's injector:
endpoint handoff (MOVING), relaxed timeouts (MIGRATING/MIGRATED), and a MOVING during a
credential rotation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
from redis import exceptions as rex

from trio_cluster import Client, PoolOptions
from trio_cluster.faults import EmbeddedToxiproxy
from trio_cluster.faults.inject import InjectedConnection, MaintInjector
from trio_cluster.faults.nodes import NodeProxies, latency
from trio_cluster.jobs.maint import (
    Kind,
    MaintNotificationsOptions,
    Notification,
    parse_notification,
)
from trio_cluster.testing import LocalServer
from trio_cluster.wire.protocol import PushFrame


async def _until(condition: Callable[[], bool]) -> None:
    # Waiting on the client's own books: no event exists for these conditions.
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.005)


def _on(address: tuple[str, int]) -> Callable[[list[InjectedConnection]], bool]:
    return lambda conns: bool(conns) and all(c.listen == address for c in conns)


class _Load:
    """N tasks doing SET+GET of their own key until stopped; failures are kept."""

    def __init__(self, client: Client, tasks: int) -> None:
        self.client, self.tasks = client, tasks
        self.failures: list[BaseException] = []
        self.done = 0
        self.stop = trio.Event()

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for i in range(self.tasks):
                nursery.start_soon(self._worker, i)

    async def _worker(self, i: int) -> None:
        while not self.stop.is_set():
            value = str(self.done).encode()
            try:
                assert await self.client.set(f"load:{i}", value) is True
                assert await self.client.get(f"load:{i}") == value
                self.done += 1
            except rex.RedisError as exc:  # a wrong value fails the test
                self.failures.append(exc)
            await trio.lowlevel.checkpoint()


async def test_moving_hands_every_connection_to_the_new_endpoint() -> None:
    with LocalServer() as server, trio.fail_after(30):
        async with MaintInjector(server.address, [("127.0.0.1", 0), ("127.0.0.1", 0)]) as inj:
            first, second = inj.addresses
            options = MaintNotificationsOptions(mode="enabled", handoff_timeout=5.0)
            async with Client(*first, maint_notifications=options,
                              pool=PoolOptions(size=8)) as r:  # fmt: skip
                load = _Load(r, 16)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load.run)
                    await _until(lambda: load.done > 100)
                    assert all(c.maint_enabled for c in inj.connections())
                    await inj.send_moving(
                        None, seq=7, seconds=15, endpoint=f"{second[0]}:{second[1]}"
                    )
                    await inj.wait_connections(_on(second))
                    before = load.done
                    await _until(lambda: load.done > before + 100)
                    load.stop.set()
                stats = r.maintenance_stats()
            assert load.failures == []
            assert stats["handoff_failures"] == 0
            # Every handoff moved a connection: never more than the connections there were.
            assert 1 <= stats["handoffs"] <= r.stats().dials
            assert stats["notifications"].get("MOVING", 0) >= 1
            assert stats["longest_unusable"] < options.handoff_timeout


async def test_relaxed_timeouts_ride_out_a_migration_then_end() -> None:
    with LocalServer() as server, trio.fail_after(30):
        async with EmbeddedToxiproxy() as tp, NodeProxies.create(tp, [server.address]) as proxies:
            (node,) = proxies.nodes
            async with MaintInjector(node.listen) as inj:
                options = MaintNotificationsOptions(mode="enabled", relaxed_timeout=2.0)
                async with Client(
                    *inj.addresses[0],
                    maint_notifications=options,
                    read_timeout=0.15,
                    pool=PoolOptions(size=4, min_idle=4),
                ) as r:
                    await _until(lambda: r.stats().idle_connections == 4)
                    await inj.send_migrating(None, seq=1, slot=42)
                    await _until(lambda: r.maintenance_stats()["relaxed_connections"] == 4)
                    async with latency(node, 400):

                        async def slow_set(i: int) -> None:  # no timeout: relaxed
                            assert await r.set(f"slow:{i}", i) is True

                        async with trio.open_nursery() as nursery:
                            for i in range(8):
                                nursery.start_soon(slow_set, i)
                        await inj.send_migrated(None, seq=2, slot=42)
                        await _until(lambda: r.maintenance_stats()["relaxed_connections"] == 0)
                        with pytest.raises(rex.TimeoutError):
                            await r.get("slow:0")
                    stats = r.maintenance_stats()
                    # The writes made under relaxed timeouts all landed.
                    keys = [f"slow:{i}" for i in range(8)]
                    assert await r.mget(keys) == [str(i).encode() for i in range(8)]
        # Every connection heard both notifications; one replaced after the timeout hears none.
        assert stats["notifications"] == {"MIGRATING": 4, "MIGRATED": 4}
        assert stats["relaxed_connections"] == 0


async def test_moving_during_a_credential_rotation() -> None:
    with LocalServer() as server, trio.fail_after(30):
        for user, password in (("alice", "pw-a"), ("bob", "pw-b")):
            await server.execute("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")
        async with MaintInjector(server.address, [("127.0.0.1", 0), ("127.0.0.1", 0)]) as inj:
            first, second = inj.addresses
            async with Client(
                *first,
                maint_notifications="enabled",
                credentials=("alice", "pw-a"),
                pool=PoolOptions(size=8),
            ) as r:
                load = _Load(r, 16)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(load.run)
                    await _until(lambda: load.done > 100)
                    r.rotate_credentials("bob", "pw-b")
                    await inj.send_moving(
                        None, seq=9, seconds=15, endpoint=f"{second[0]}:{second[1]}"
                    )
                    await inj.wait_connections(_on(second))
                    await _until(lambda: r.maintenance_stats()["stale_credential_connections"] == 0)
                    await server.execute("ACL", "DELUSER", "alice")
                    before = load.done
                    await _until(lambda: load.done > before + 100)
                    load.stop.set()
            assert load.failures == []


@pytest.mark.parametrize("default_user", ["off", "on"])
async def test_moving_keeps_the_configured_user(default_user: str) -> None:
    """A handoff's new stream is opened like every connection, with the client's credentials.
    Opened without them, it is refused when the ``default`` user is off (each handoff fails,
    its connection is closed and re-dialled), and silently runs as ``default`` when it is on.
    With them every connection is moved, still runs as alice, and the stats say so."""
    with LocalServer() as server, trio.fail_after(30):
        await server.execute("ACL", "SETUSER", "alice", "on", ">pw-a", "~*", "&*", "+@all")
        await server.execute("ACL", "SETUSER", "default", default_user)
        async with MaintInjector(server.address, [("127.0.0.1", 0), ("127.0.0.1", 0)]) as inj:
            first, second = inj.addresses
            options = MaintNotificationsOptions(mode="enabled", handoff_timeout=5.0)
            async with Client(
                *first,
                maint_notifications=options,
                credentials=("alice", "pw-a"),
                client_name="mv",
                pool=PoolOptions(size=4, min_idle=4),
            ) as r:
                await _until(lambda: r.stats().idle_connections == 4)
                assert r.stats().dials == 4
                await inj.send_moving(None, seq=11, seconds=15, endpoint=f"{second[0]}:{second[1]}")
                await _until(
                    lambda: (
                        r.maintenance_stats()["handoffs"]
                        + r.maintenance_stats()["handoff_failures"]
                        == 4
                    )
                )
                await inj.wait_connections(_on(second))
                stats = r.maintenance_stats()
                assert (stats["handoffs"], stats["handoff_failures"]) == (4, 0)
                assert stats["stale_credential_connections"] == 0
                assert r.stats().dials == 4  # moved in place: nothing was closed and re-dialled
                assert await r.execute_command("ACL", "WHOAMI") == b"alice"
                listing = (await r.execute_command("CLIENT", "LIST")).decode()
        users = [
            dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
            for line in listing.splitlines()
        ]
        assert sorted(u["user"] for u in users if u.get("name") == "mv") == ["alice"] * 4


def test_notification_parsing() -> None:
    moving = parse_notification(PushFrame([b"MOVING", 3, 10, b"10.0.0.2:6380"]))
    assert moving == Notification(Kind.MOVING, 3, 10, ("10.0.0.2", 6380))
    null = parse_notification(PushFrame([b"MOVING", 4, 10, None]))
    assert null == Notification(Kind.MOVING, 4, 10, None)
    assert parse_notification(PushFrame([b"MIGRATED", 5])) == Notification(Kind.MIGRATED, 5)
    assert parse_notification(PushFrame([b"message", b"ch", b"x"])) is None
    for bad in (
        [b"MOVING", 1],
        [b"MIGRATING"],
        [b"MOVING", b"x", 1, None],
        [b"MOVING", 1, 1, b"nope"],
    ):
        with pytest.raises(ValueError):
            parse_notification(PushFrame(bad))


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="mode"):
        MaintNotificationsOptions(mode="sometimes")
    with pytest.raises(ValueError, match="relaxed_timeout"):
        MaintNotificationsOptions(relaxed_timeout=0)
