"""Harnesses and faults for the client's maintenance features: endpoint handoff (MOVING),
relaxed timeouts (MIGRATING/MIGRATED) and credential rotation (streaming credentials, re-auth).

* :class:`Injectors` chains a ``MaintInjector`` (two listen addresses) in front of every node's
  proxy: the client reaches node N at injector address 1, which forwards to N's Toxiproxy
  proxy (so proxy faults still apply), which forwards to N.  Faults inject push frames.
* :class:`AclUsers` creates two ACL users on every node and feeds the client a streaming
  credentials provider (a trio memory channel) that starts with the first; a fault rotates to
  the second.  It changes the servers' ACLs: local clusters only.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import trio

from trio_cluster import ClusterClient
from trio_cluster.faults.inject import InjectedConnection, MaintInjector
from trio_cluster.faults.nodes import latency
from trio_cluster.testing import LocalServer

from .address import Address
from .clientspec import SLACK
from .env import Environment, SetupError
from .faultlib import FaultContext, FaultFn, Harness
from .records import AuthCheck, HandoffCheck, Window

__all__ = [
    "AclUsers",
    "Injectors",
    "moving_handoff",
    "relaxed_migration",
    "rotate_credentials",
]

#: The time a MOVING announces (the client must not need it: the endpoint is given).
MOVING_SECONDS = 15
#: Bound on the client reacting to a notification it was sent (relaxing, un-relaxing).
REACTION_TIMEOUT = 3.0
#: Bound on every connection leaving the old credentials after a rotation.
ROTATION_TIMEOUT = 10.0
_LOCAL = Address("127.0.0.1", 0)


async def _until(condition: Callable[[], bool], within: float, poll: float = 0.01) -> bool:
    """Poll ``condition`` until it holds (True) or ``within`` seconds have passed (False)."""
    with trio.move_on_after(within):
        # The client's books (maintenance_stats) and the injector's lists have no events.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(poll)
        return True
    return condition()


H = TypeVar("H", bound=Harness)


def _harness(ctx: FaultContext, kind: type[H]) -> H:
    if not isinstance(ctx.harness, kind):
        raise SetupError(f"this fault needs the {kind.__name__} harness")
    return ctx.harness


# --- maintenance notifications -----------------------------------------------------------------


class Injectors(Harness):
    """A ``MaintInjector`` with two listen addresses before every node's proxy; the client's
    ``address_remap`` sends every node to its injector's first address."""

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        self.by_upstream: dict[Address, MaintInjector] = {}
        self._by_proxy: dict[Address, Address] = {}
        """Proxy address -> the first address of the injector before it."""
        self._stack = AsyncExitStack()
        self._seq = itertools.count(1)
        self.moved: dict[Address, Address] = {}
        """Upstream -> the endpoint a MOVING sent its connections to."""

    async def _open(self) -> None:
        for node in self.env.proxies.nodes:
            injector = MaintInjector(node.listen, [_LOCAL, _LOCAL])
            await self._stack.enter_async_context(injector)
            self.by_upstream[self.env.real(node)] = injector
            self._by_proxy[Address.of(node.listen)] = Address.of(injector.addresses[0])

    async def _close(self) -> None:
        await self._stack.aclose()

    def remap(self, address: tuple[str, int]) -> Address:
        """Upstream (or proxy) address -> the first address of its injector (the client's
        ``address_remap``)."""
        proxied = Address.of(self.env.proxies.remap(address))
        return self._by_proxy.get(proxied, proxied)

    def client_options(self) -> dict[str, Any]:
        return {"address_remap": self.remap}

    def node_names(self) -> dict[Address, Address]:
        return {
            Address.of(address): upstream
            for upstream, injector in self.by_upstream.items()
            for address in injector.addresses
        }

    def injector(self, upstream: Address) -> MaintInjector:
        """The injector in front of ``upstream``."""
        return self.by_upstream[upstream]

    def node_name(self, upstream: Address) -> Address:
        """How the client names ``upstream`` (the address it dials first)."""
        return Address.of(self.injector(upstream).addresses[0])

    def next_seq(self) -> int:
        """A fresh notification sequence number."""
        return next(self._seq)

    def stragglers(self, upstream: Address) -> tuple[int, list[str]]:
        """(pooled connections to ``upstream``, those not on the endpoint it was moved to)."""
        endpoint = self.moved[upstream]
        pooled = [c for c in self.injector(upstream).connections() if c.maint_enabled]
        return len(pooled), [_describe(c) for c in pooled if c.listen != endpoint]

    async def end_of_load(self, ctx: FaultContext) -> None:
        """Connections made after a MOVING (refills, new dials) must go to the new endpoint
        too: every pooled connection is checked again with the load still running."""
        for upstream, endpoint in self.moved.items():
            count, late = self.stragglers(upstream)
            ctx.record.handoffs.append(
                HandoffCheck(self.node_name(upstream), endpoint, count, late, when="end of load")
            )


def _describe(conn: InjectedConnection) -> str:
    return f"#{conn.id} from :{conn.peer[1]} on {Address.of(conn.listen)}"


def _pooled_on(address: Address) -> Callable[[InjectedConnection], bool]:
    # Pooled connections asked for notifications; the client's one-off topology connections
    # did not, and are never sent a push.
    return lambda c: c.maint_enabled and c.listen == address


def moving_handoff(handoff_timeout: float) -> FaultFn:
    """A fault: MOVING (to its injector's second address) on every pooled connection of every
    primary; wait up to ``handoff_timeout`` (+ slack) for none to be left on the first one."""

    async def fault(ctx: FaultContext) -> None:
        harness = _harness(ctx, Injectors)
        seq = harness.next_seq()
        sent: dict[Address, int] = {}
        start = trio.current_time()
        for upstream in ctx.primaries:
            ctx.hit(upstream)
            injector = harness.injector(upstream)
            first, second = (Address.of(a) for a in injector.addresses[:2])
            targets = await injector.send_moving(
                _pooled_on(first), seq, MOVING_SECONDS, str(second)
            )
            harness.moved[upstream] = second
            sent[upstream] = len(targets)

        def all_moved() -> bool:
            return all(not harness.stragglers(u)[1] for u in sent)

        done = await _until(all_moved, handoff_timeout + SLACK)
        took = trio.current_time() - start
        for upstream, count in sent.items():
            _, late = harness.stragglers(upstream)
            ctx.record.handoffs.append(
                HandoffCheck(harness.node_name(upstream), harness.moved[upstream], count, late)
            )
        if not sum(sent.values()):
            outcome = "it reached no connection"
        elif done:
            outcome = f"all were on the new endpoints in {took:.2f} s"
        else:
            outcome = f"some were still on the old endpoints after {took:.2f} s"
        ctx.note(
            f"MOVING seq {seq} sent to {sum(sent.values())} connections of {len(sent)} "
            f"primaries; {outcome}"
        )

    return fault


def _relaxed(rc: ClusterClient) -> int:
    return int(rc.maintenance_stats()["relaxed_connections"])


def relaxed_migration(latency_ms: int) -> FaultFn:
    """A fault: MIGRATING on every pooled connection of the first primary, ``latency_ms`` of
    latency (more than the read timeout, less than the relaxed one) for ``hold`` seconds,
    then MIGRATED.  The window in which every connection was relaxed is recorded; commands
    started in it must all succeed."""

    async def fault(ctx: FaultContext) -> None:
        harness = _harness(ctx, Injectors)
        rc = ctx.client()
        upstream = ctx.primaries[0]
        ctx.hit(upstream)
        injector = harness.injector(upstream)
        name = harness.node_name(upstream)
        # A handoff relaxes its connection for a while: wait for that to end, or the
        # MIGRATING would prove nothing.
        if not await _until(lambda: _relaxed(rc) == 0, REACTION_TIMEOUT * 3):
            ctx.note(f"{_relaxed(rc)} connections were still relaxed before MIGRATING")
        seq = harness.next_seq()
        slot = ctx.rng.randrange(16384)
        targets = await injector.send_migrating(lambda c: c.maint_enabled, seq, slot)

        def node_relaxed() -> bool:
            conns = [c for c in rc.connections() if Address.of(c.node) == name]
            return bool(conns) and _relaxed(rc) >= len(conns)

        if not await _until(node_relaxed, REACTION_TIMEOUT):
            ctx.note(f"MIGRATING: only {_relaxed(rc)} connections to {name} relaxed")
        start = trio.current_time()
        async with latency(ctx.env.proxied(upstream), latency_ms):
            await trio.sleep(ctx.hold)
        await trio.sleep(latency_ms / 1000 + 0.25)  # replies still delayed arrive, relaxed
        ctx.record.relaxed_windows.append(Window(f"MIGRATING {name}", start, trio.current_time()))
        await injector.send_migrated(lambda c: c.maint_enabled, harness.next_seq(), slot)
        ended = await _until(lambda: _relaxed(rc) == 0, REACTION_TIMEOUT)
        ctx.note(
            f"MIGRATING sent to {len(targets)} connections of {name}, {latency_ms} ms latency "
            f"for {ctx.hold:.1f} s; relaxed timeouts "
            + ("ended after MIGRATED" if ended else f"still on {_relaxed(rc)} connections")
        )

    return fault


# --- credential rotation -----------------------------------------------------------------------

Credentials = tuple[str | None, str]


class AclUsers(Harness):
    """Two ACL users on every node; the first client streams credentials from a channel that
    starts with the first user (later clients get the current user as a static pair).  Both
    users are deleted on exit."""

    def __init__(self, env: Environment) -> None:
        super().__init__(env)
        prefix = f"chaos-{env.run_id}"
        self.users: tuple[tuple[str, str], tuple[str, str]] = (
            (f"{prefix}-a", secrets.token_hex(12)),
            (f"{prefix}-b", secrets.token_hex(12)),
        )
        for _, password in self.users:
            env.redactor.add(password)
        self.client_name = f"{prefix}-rotation"
        self.current: Credentials = self.users[0]
        self.rotated = False
        self.rotated_in: float | None = None
        """Seconds from the rotation until no connection was on the old credentials."""
        # Room for both pairs: feeding the provider never waits on the client.
        self._send, self._receive = trio.open_memory_channel[Credentials](len(self.users))
        self._streamed = False

    def _servers(self) -> list[LocalServer]:
        if self.env.cluster is None:
            raise SetupError("credential rotation changes ACLs: it needs --cluster local")
        return [n for n in self.env.cluster.nodes if n.running]

    async def _open(self) -> None:
        for server in self._servers():
            for user, password in self.users:
                await server.execute(
                    "ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all"
                )
        self._send.send_nowait(self.users[0])

    async def _close(self) -> None:
        """Delete the users (shielded, bounded)."""
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            self._send.close()
            self._receive.close()
            for server in self._servers():
                if not server.paused:
                    await server.execute("ACL", "DELUSER", *(user for user, _ in self.users))

    def client_options(self) -> dict[str, Any]:
        """The first client (the workload's) streams; later ones use the current pair."""
        source: Any = self.current
        if not self._streamed:
            self._streamed = True
            source = self._receive
        return {"credentials": source, "client_name": self.client_name}

    def rotate(self) -> None:
        """Stream the second user to the client."""
        self.current = self.users[1]
        self.rotated = True
        self._send.send_nowait(self.users[1])

    async def delete_first_user(self) -> None:
        """``ACL DELUSER`` the first user everywhere (the servers drop its connections)."""
        for server in self._servers():
            await server.execute("ACL", "DELUSER", self.users[0][0])

    async def users_of_client(self, server: LocalServer) -> list[str]:
        """The ``user=`` of every connection the client named ``client_name`` has there."""
        listing = await server.execute("CLIENT", "LIST")
        text = listing.decode() if isinstance(listing, bytes) else str(listing)
        users = []
        for line in text.splitlines():
            fields = dict(f.split("=", 1) for f in line.split(" ") if "=" in f)
            if fields.get("name") == self.client_name:
                users.append(fields.get("user", "?"))
        return users

    async def end_of_load(self, ctx: FaultContext) -> None:
        """Every connection the client holds, on every node, is the second user's."""
        if not self.rotated:
            return
        primaries = {port for _, port in ctx.primaries}
        for server in self._servers():
            users = await self.users_of_client(server)
            if users or server.port in primaries:
                ctx.record.auth_checks.append(
                    AuthCheck(Address.of(server.address), self.users[1][0], users, self.rotated_in)
                )


async def rotate_credentials(ctx: FaultContext) -> None:
    """A fault: stream the second user; wait until no connection is left on the first; delete
    the first user everywhere (the servers drop its connections); hold."""
    harness = _harness(ctx, AclUsers)
    ctx.hit_all()
    rc = ctx.client()
    start = trio.current_time()
    harness.rotate()

    def rotated() -> bool:
        stats = rc.maintenance_stats()
        return bool(
            stats["credential_rotations"] >= 2 and stats["stale_credential_connections"] == 0
        )

    if await _until(rotated, ROTATION_TIMEOUT):
        harness.rotated_in = trio.current_time() - start
    await harness.delete_first_user()
    stats = rc.maintenance_stats()
    if harness.rotated_in is not None:
        took = f"no connection on the old one after {harness.rotated_in:.2f} s"
    else:
        took = f"connections still on the old one after {ROTATION_TIMEOUT:.0f} s"
    ctx.note(
        f"rotated {harness.users[0][0]} -> {harness.users[1][0]}: {took} "
        f"({stats['reauths']} re-authentications); {harness.users[0][0]} deleted"
    )
    await trio.sleep(ctx.hold)
