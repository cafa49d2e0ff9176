"""``client.monitor()``: the MONITOR stream of one node, as redis-py's ``Monitor``.

``async with client.monitor() as m:`` opens a dedicated connection (never a pooled one: a
monitoring connection can do nothing else) and sends MONITOR; ``await m.next_command()``
returns one command the server ran, ``async for c in m.listen():`` all of them.  Leaving the
block closes the connection, which ends MONITOR on the server.  Waits last as long as the
caller's cancel scope allows.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from ..conn.connection import Connection
from ..lifetime import Scoped

__all__ = ["Monitor"]

# The line the server sends: `<time> [<db> <client>] "<arg>" "<arg>" ...`.
_LINE = re.compile(r"\[(\d+) (.*?)\] (.*)")
_ARG = re.compile(r'"(.*?)(?<!\\)"')


class Monitor(Scoped):
    """The commands one node runs, one dict per command: ``time``, ``db``,
    ``client_address``, ``client_port``, ``client_type`` and ``command`` (as redis-py)."""

    def __init__(self, dial: Callable[[], Awaitable[Connection]]) -> None:
        self._dial = dial
        self._conn: Connection | None = None

    async def _open(self) -> None:
        self._conn = await self._dial()
        reply = await self._conn.read_push(send=[("MONITOR",)])
        if isinstance(reply, Exception):
            raise reply
        if reply not in (b"OK", "OK"):
            raise RedisError(f"MONITOR failed: {reply!r}")

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    async def next_command(self) -> dict[str, Any]:
        """The next command the server ran."""
        if self._conn is None:
            raise RuntimeError("use the monitor inside `async with client.monitor() as m:`")
        reply = await self._conn.read_push()
        if isinstance(reply, Exception):
            raise reply
        return parse_monitor_line(reply)

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Every command the server runs, as it runs them."""
        while True:
            yield await self.next_command()


def parse_monitor_line(line: Any) -> dict[str, Any]:
    """One MONITOR line as redis-py's ``Monitor.next_command`` returns it."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else str(line)
    when, rest = text.split(" ", 1)
    match = _LINE.match(rest)
    if match is None:
        raise RedisError(f"unexpected MONITOR line: {text!r}")
    db, client, arguments = match.groups()
    # Each argument is quoted and inner quotes escaped; unescape them as redis-py does.
    command = " ".join(_ARG.findall(arguments)).replace('\\"', '"')
    if client == "lua":
        address, port, kind = "lua", "", "lua"
    elif client.startswith("unix"):
        address, port, kind = "unix", client[5:], "unix"
    else:
        address, port = client.rsplit(":", 1)  # rsplit: IPv6 addresses hold colons
        kind = "tcp"
    return {
        "time": float(when),
        "db": int(db),
        "client_address": address,
        "client_port": port,
        "client_type": kind,
        "command": command,
    }
