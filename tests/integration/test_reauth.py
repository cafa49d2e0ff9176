"""Re-authentication against a real server: rotating ACL users under load loses nothing."""

from __future__ import annotations

import pytest
import trio
from redis import exceptions as rex

from trio_cluster import Client, ClusterClient, PoolOptions
from trio_cluster.jobs.credentials import CredentialManager
from trio_cluster.testing import LocalCluster, LocalServer


async def _acl_users(server: LocalServer) -> None:
    for user, password in (("alice", "alice-pw-1"), ("bob", "bob-pw-2")):
        await server.execute("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all")


async def _users_of(server: LocalServer, name: str) -> list[str]:
    listing = (await server.execute("CLIENT", "LIST")).decode()
    users = []
    for line in listing.splitlines():
        fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
        if fields.get("name") == name:
            users.append(fields["user"])
    return users


async def _until(condition: object, what: str) -> None:
    # Waiting on the client's own books (no event exists for "every connection rotated").
    while not condition():  # type: ignore[operator]  # noqa: ASYNC110
        await trio.sleep(0.005)


class _Load:
    """Tasks that SET then GET their own ``prefix`` keys through ``client`` until
    :attr:`stop` is set; only redis errors are tolerated (recorded in :attr:`failures`), a
    wrong value fails the test."""

    def __init__(self, client: Client | ClusterClient, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.done = 0
        self.failures: list[BaseException] = []
        self.stop = trio.Event()

    def start(self, nursery: trio.Nursery, tasks: int) -> None:
        for i in range(tasks):
            nursery.start_soon(self._worker, i)

    async def _worker(self, i: int) -> None:
        key = f"{self.prefix}:{i}"
        while not self.stop.is_set():
            try:
                await self.client.set(key, i)
                assert await self.client.get(key) == str(i).encode()
                self.done += 1
            except rex.RedisError as exc:  # a wrong value fails the test
                self.failures.append(exc)
            await trio.lowlevel.checkpoint()

    async def more(self, count: int, what: str) -> None:
        """Wait until ``count`` more rounds have succeeded."""
        before = self.done
        await _until(lambda: self.done > before + count, what)


async def _rotated(client: Client | ClusterClient) -> None:
    """Wait until the client's connections all run as the second user it was given."""
    await _until(
        lambda: (
            client.maintenance_stats()["stale_credential_connections"] == 0
            and client.maintenance_stats()["credential_rotations"] == 2
        ),
        "rotation",
    )


async def test_rotation_then_deluser_under_load() -> None:
    """alice -> bob via a streaming provider while 20 tasks run, then ACL DELUSER alice (the
    server drops every connection still authenticated as alice): zero failed commands."""
    with LocalServer() as server:
        await _acl_users(server)
        send, receive = trio.open_memory_channel[tuple[str | None, str]](1)
        await send.send(("alice", "alice-pw-1"))
        with trio.fail_after(30):
            async with Client(
                server.host, server.port, credentials=receive, client_name="rot",
                pool=PoolOptions(size=10),
            ) as r:  # fmt: skip
                load = _Load(r, "rot")
                async with trio.open_nursery() as nursery:
                    load.start(nursery, 20)
                    await load.more(200, "warm-up")
                    assert set(await _users_of(server, "rot")) == {"alice"}
                    await send.send(("bob", "bob-pw-2"))
                    await _rotated(r)
                    await server.execute("ACL", "DELUSER", "alice")
                    await load.more(200, "after deluser")
                    load.stop.set()
                stats = r.maintenance_stats()
                users = await _users_of(server, "rot")
        assert load.failures == []
        assert stats["reauths"] > 0 and stats["reauth_failures"] == 0
        assert users and set(users) == {"bob"}


async def test_wrongpass_on_reauth_closes_the_connection() -> None:
    with LocalServer() as server:
        await _acl_users(server)
        with trio.fail_after(15):
            async with Client(
                server.host, server.port, credentials=("alice", "alice-pw-1"), client_name="wp"
            ) as r:
                assert await r.ping() is True
                (first,) = r.connections()
                r.rotate_credentials("bob", "not-bobs-password")
                await _until(lambda: not any(c.id == first.id for c in r.connections()), "close")
                stats = r.maintenance_stats()
                assert stats["reauth_failures"] == 1
                # New connections use the newest (wrong) credentials: they fail loudly.
                with pytest.raises(rex.AuthenticationError, match=r"WRONGPASS|invalid"):
                    await r.ping()


async def test_callable_provider_is_asked_for_each_new_connection() -> None:
    with LocalServer() as server:
        await _acl_users(server)
        calls = 0

        async def provider() -> tuple[str | None, str]:
            nonlocal calls
            calls += 1
            return ("bob", "bob-pw-2")

        with trio.fail_after(15):
            async with Client(server.host, server.port, credentials=provider, client_name="cb",
                              pool=PoolOptions(size=3)) as r:  # fmt: skip
                async with trio.open_nursery() as nursery:
                    for _ in range(3):
                        nursery.start_soon(r.execute_command, "DEBUG", "SLEEP", "0.05")
                assert calls == 3
                assert set(await _users_of(server, "cb")) == {"bob"}


def test_bad_credentials_are_rejected_by_type() -> None:
    with pytest.raises(TypeError, match="pair"):
        CredentialManager(("only-one",))  # type: ignore[arg-type]
    manager = CredentialManager(("u", "secret-value"))
    assert "secret-value" not in repr(manager)


async def test_idle_connections_reauthenticate_without_being_used() -> None:
    """The Go original waits until an idle connection is next popped; here idle connections
    move to the new user at once, with no command running."""
    with LocalServer() as server:
        await _acl_users(server)
        with trio.fail_after(15):
            async with Client(
                server.host,
                server.port,
                credentials=("alice", "alice-pw-1"),
                client_name="idle",
                pool=PoolOptions(size=4, min_idle=4),
            ) as r:
                await _until(lambda: r.stats().idle_connections == 4, "min_idle filled")
                hits = r.stats().hits
                r.rotate_credentials("bob", "bob-pw-2")
                await _until(
                    lambda: r.maintenance_stats()["stale_credential_connections"] == 0, "rotation"
                )
                assert r.stats().hits == hits  # nobody used a connection meanwhile
                assert await _users_of(server, "idle") == ["bob"] * 4


async def _blocked_clients(server: LocalServer) -> int:
    return int((await server.info("clients"))["blocked_clients"])


async def test_blpop_cancelled_after_rotation_and_deluser_is_cancelled_and_loses_nothing() -> None:
    """The connection running BLPOP was opened as alice and re-authenticated as bob; alice is
    then deleted.  Cancelling the BLPOP must unblock it from a helper connection opened with
    the newest credentials (bob): the caller sees Cancelled, not an AuthenticationError from a
    helper dialled as alice, and the server holds no ghost BLPOP that would pop a later
    element."""
    with LocalServer() as server:
        await _acl_users(server)
        with trio.fail_after(15):
            async with Client(
                server.host, server.port, credentials=("alice", "alice-pw-1"), client_name="bl",
                pool=PoolOptions(size=1),
            ) as r:  # fmt: skip
                assert await r.ping() is True
                r.rotate_credentials("bob", "bob-pw-2")
                await _until(
                    lambda: r.maintenance_stats()["stale_credential_connections"] == 0, "rotation"
                )
                await server.execute("ACL", "DELUSER", "alice")
                assert await _users_of(server, "bl") == ["bob"]
                popped: list[object] = []
                scope = trio.CancelScope()

                async def pop() -> None:
                    with scope:
                        popped.append(await r.blpop(["bl:q"], timeout=0))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pop)
                    # Polling the server's own books: it has no event for "a client blocked".
                    while await _blocked_clients(server) != 1:  # noqa: ASYNC110
                        await trio.sleep(0.005)
                    scope.cancel()
                assert scope.cancelled_caught and popped == []
                assert await _blocked_clients(server) == 0  # no ghost BLPOP left behind
                await server.execute("RPUSH", "bl:q", "kept")
                assert await r.lrange("bl:q", 0, -1) == [b"kept"]
                assert await r.execute_command("ACL", "WHOAMI") == b"bob"


async def test_cluster_rotation_then_deluser_under_load(local_cluster: LocalCluster) -> None:
    """The same rotation across every node of a cluster: zero failed commands."""
    users = (("carol", "carol-pw"), ("dave", "dave-pw"))
    with trio.fail_after(40):
        for node in local_cluster.nodes:
            for user, password in users:
                await node.execute(
                    "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all"
                )
        send, receive = trio.open_memory_channel[tuple[str | None, str]](1)
        await send.send(users[0])
        async with ClusterClient(
            startup_nodes=local_cluster.startup_nodes, credentials=receive, client_name="crot"
        ) as rc:
            load = _Load(rc, "crot")
            async with trio.open_nursery() as nursery:
                load.start(nursery, 24)
                await load.more(300, "warm-up")
                await send.send(users[1])
                await _rotated(rc)
                for node in local_cluster.primaries:
                    await node.execute("ACL", "DELUSER", "carol")
                await load.more(300, "after deluser")
                load.stop.set()
            stats = rc.maintenance_stats()
            seen = set()
            for node in local_cluster.primaries:
                seen.update(await _users_of(node, "crot"))
    assert load.failures == []
    assert stats["reauths"] > 0
    assert seen == {"dave"}
