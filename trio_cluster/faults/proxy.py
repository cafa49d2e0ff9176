"""A named proxy: its configuration, its toxics, its listener and its live connections.

A proxy holds one file descriptor while it runs (its listener) and two per live connection.
Its accept loop serves in a nursery of its own serving period (``start`` to ``stop``), so a
connection never outlives the period that accepted it.  Out of file descriptors, the accept
loop logs Go's warning and waits before it tries again (``sockets.accept``), so the proxy
serves again once fds are free; an upstream that cannot be dialled closes only that client, as
in Go.  The data plane of a connection is ``link``.
"""

from __future__ import annotations

import logging
import random
import socket as stdsocket
import struct
from typing import Any, Final

import trio

from .link import Connection
from .logs import event
from .metrics import Metrics
from .model import Toxic
from .sockets import DialError, accept, bind_listener, dial, display

__all__ = ["Proxy"]

log = logging.getLogger(__name__)

_LINGER_ZERO: Final = struct.pack("ii", 1, 0)


class Proxy:
    """A named proxy: its configuration, its toxics, its listener and its live connections."""

    def __init__(
        self,
        name: str,
        listen: str,
        upstream: str,
        rng: random.Random,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.rng = rng
        self.metrics = metrics or Metrics()
        #: The fields of every log line about this proxy (fixed at creation, as in Go).
        self.log_fields = {"name": name, "listen": listen, "upstream": upstream}
        self.toxics: dict[str, list[Toxic]] = {"upstream": [], "downstream": []}
        self.connections: set[Connection] = set()
        self._sock: trio.socket.SocketType | None = None
        self._scope: trio.CancelScope | None = None

    def to_json(self) -> dict[str, Any]:
        """The proxy's JSON object in Go's field order (``Logger`` included, as 2.5+ emits)."""
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "Logger": {},
            "toxics": [t.to_json() for t in self.all_toxics()],
        }

    def all_toxics(self) -> list[Toxic]:
        """Upstream chain first, then downstream, each in insertion order (as Go lists them)."""
        return self.toxics["upstream"] + self.toxics["downstream"]

    def find_toxic(self, name: str) -> Toxic | None:
        """The toxic with this name in either direction, if any."""
        return next((t for t in self.all_toxics() if t.name == name), None)

    async def start(self, nursery: trio.Nursery) -> None:
        """Listen (a no-op when running) and serve in ``nursery``; bind errors are 500s."""
        if self._sock is not None:
            return
        sock, self.listen = await bind_listener(self.listen)
        self._sock = sock
        self._scope = await nursery.start(self._serve, sock)
        self.enabled = True
        event(log, logging.INFO, "Started proxy", **self.log_fields)

    def stop(self, *, log_it: bool = True) -> None:
        """Close the listener (new clients are refused) and every live connection, now.

        ``log_it=False`` at server shutdown, where Go writes no "Terminated proxy" line.
        """
        was_enabled = self.enabled and log_it
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for conn in list(self.connections):
            conn.close()
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None
        self.enabled = False
        if was_enabled:
            event(log, logging.INFO, "Terminated proxy", **self.log_fields)

    async def _serve(
        self, sock: trio.socket.SocketType, task_status: trio.TaskStatus[trio.CancelScope]
    ) -> None:
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    task_status.started(scope)
                    while True:
                        try:
                            client = await accept(sock, self._accept_failed)
                        except (OSError, trio.ClosedResourceError):
                            return  # the listener was closed: the proxy stopped
                        nursery.start_soon(self._handle, client)
        finally:
            sock.close()

    def _accept_failed(self, error: str, delay: float) -> None:
        # Go logs this and stops accepting for good (the proxy still shows enabled); this
        # proxy waits and serves again once file descriptors are free.
        event(log, logging.WARNING, "Error while accepting client", **self.log_fields, error=error)

    async def _handle(self, client: trio.socket.SocketType) -> None:
        try:
            peer = client.getpeername()
            client_addr = display(client.family, str(peer[0]), int(peer[1]))
        except OSError:
            client_addr = ""
        event(log, logging.INFO, "Accepted client", **self.log_fields, client=client_addr)
        try:
            upstream = await dial(self.upstream)
        except DialError as exc:
            # Upstream unreachable: the client just sees the connection close (Go behaviour).
            event(
                log,
                logging.ERROR,
                "Unable to open connection to upstream",
                **self.log_fields,
                error=str(exc),
                client=client_addr,
            )
            client.close()
            return
        except BaseException:
            client.close()
            raise
        try:
            for s in (client, upstream):
                s.setsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY, 1)
                if any(t.type == "reset_peer" for t in self.all_toxics()):
                    s.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, _LINGER_ZERO)
        except OSError:  # the client already went away
            client.close()
            upstream.close()
            return
        conn = Connection(self, client, upstream)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)

    # --- toxic changes on live connections -------------------------------------------------

    def add_toxic(self, toxic: Toxic) -> None:
        """Append to its direction's chain and splice into every live link."""
        self.toxics[toxic.direction].append(toxic)
        self._chain_changed(toxic.direction)

    def toxic_updated(self, toxic: Toxic) -> None:
        """Interrupt in-flight waits of the toxic and re-roll toxicity on live links."""
        toxic.poke()
        self._chain_changed(toxic.direction)

    def remove_toxic(self, toxic: Toxic) -> None:
        """Remove from the chain; removing a timeout closes the connections it was holding."""
        self.toxics[toxic.direction].remove(toxic)
        toxic.poke()
        for conn in list(self.connections):
            if toxic.type == "timeout" and conn.links[toxic.direction].rolls.get(toxic.ident):
                conn.close()
        self._chain_changed(toxic.direction)

    def remove_all_toxics(self) -> None:
        """Remove every toxic (reset)."""
        for toxic in self.all_toxics():
            self.remove_toxic(toxic)

    def _chain_changed(self, direction: str) -> None:
        for conn in self.connections:
            link = conn.links[direction]
            link.reroll()
            link.wake()
