"""Sockets as Go's ``net`` package handles them, for the proxies and the API server.

Listen addresses are split, resolved and reported as Go does (``[::]:p`` for a wildcard on a
dual-stack host), upstreams are dialled the same way, and every failure carries Go's error
text (``listen tcp 127.0.0.1:0: socket: too many open files``, ``dial tcp host:p: connect:
connection refused``), which the API and the log lines show.  ``accept`` outlasts a process
that has run out of file descriptors as Go's HTTP server does: it waits (5 ms, doubling up to
1 s) and tries again, so a server at its fd limit recovers as soon as an fd is free.
"""

from __future__ import annotations

import errno
import os
import socket as stdsocket
from collections.abc import Callable
from typing import Final

import trio

from .errors import ToxiproxyError

__all__ = [
    "DialError",
    "accept",
    "bind_listener",
    "dial",
    "display",
    "go_duration_text",
    "os_error_text",
    "resolve_listen",
    "split_host_port",
]

#: accept() errors that mean "no capacity right now" (out of fds or memory): wait and retry.
CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_FIRST_DELAY: Final = 0.005  # Go's net/http: 5 ms, doubling, at most 1 s
_MAX_DELAY: Final = 1.0


class DialError(Exception):
    """An upstream could not be dialled; the text is Go's (``dial tcp a:p: connect: ...``)."""


def os_error_text(exc: OSError) -> str:
    """An OS error in Go's words: the lower-case system message (``too many open files``)."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    return (exc.strerror or str(exc)).lower()


def split_host_port(addr: str, kind: str) -> tuple[str, str]:
    """Split like Go's ``net.SplitHostPort``, with Go's error text (a 500)."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0 or not addr[end + 1 :].startswith(":"):
            raise ToxiproxyError(500, f"{kind} tcp: address {addr}: missing port in address")
        return addr[1:end], addr[end + 2 :]
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ToxiproxyError(500, f"{kind} tcp: address {addr}: missing port in address")
    if ":" in host:
        raise ToxiproxyError(500, f"{kind} tcp: address {addr}: too many colons in address")
    return host, port


def display(family: int, host: str, port: int) -> str:
    """``host:port``, bracketed for IPv6, as Go's ``TCPAddr.String``."""
    return f"[{host}]:{port}" if family == stdsocket.AF_INET6 else f"{host}:{port}"


async def resolve_listen(listen: str) -> tuple[int, str, int, str]:
    """Resolve a listen string to ``(family, host, port, display)`` as Go's resolver would.

    Hostnames resolve (IPv4 preferred, so ``localhost:p`` shows as ``127.0.0.1:p``); an empty
    or wildcard host means every interface.  Errors are 500s carrying Go's error text.
    """
    # Go's net.Listen accepts an empty address: every interface, a random port.
    host, port_text = split_host_port(listen, "listen") if listen else ("", "0")
    try:
        port = int(port_text) if port_text else 0
    except ValueError:
        raise ToxiproxyError(500, f"listen tcp: lookup tcp/{port_text}: unknown port") from None
    if not 0 <= port <= 65535:
        raise ToxiproxyError(500, f"listen tcp: address {port}: invalid port")
    if host in ("", "0.0.0.0", "::"):
        if stdsocket.has_ipv6:
            return stdsocket.AF_INET6, "::", port, display(stdsocket.AF_INET6, "::", port)
        return stdsocket.AF_INET, "0.0.0.0", port, display(stdsocket.AF_INET, "0.0.0.0", port)
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=stdsocket.SOCK_STREAM)
    except OSError:
        raise ToxiproxyError(500, f"listen tcp: lookup {host}: no such host") from None
    infos.sort(key=lambda info: info[0] != stdsocket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    ip = str(sockaddr[0])
    return int(family), ip, port, display(int(family), ip, port)


async def bind_listener(listen: str) -> tuple[trio.socket.SocketType, str]:
    """Bind and listen; return the socket and the real address (``:0`` gets a real port).

    A failure is a 500 naming the step that failed, as Go's ``net.Listen`` does
    (``listen tcp 127.0.0.1:0: socket: too many open files``, ``...: bind: address already in
    use``).
    """
    family, host, port, shown = await resolve_listen(listen)
    step = "socket"
    sock: trio.socket.SocketType | None = None
    try:
        sock = trio.socket.socket(family, stdsocket.SOCK_STREAM)
        step = "setsockopt"
        sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_REUSEADDR, 1)
        if family == stdsocket.AF_INET6 and host == "::":
            sock.setsockopt(stdsocket.IPPROTO_IPV6, stdsocket.IPV6_V6ONLY, 0)
        step = "bind"
        await sock.bind((host, port))
        step = "listen"
        sock.listen(1024)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise ToxiproxyError(500, f"listen tcp {shown}: {step}: {os_error_text(exc)}") from None
    return sock, display(family, host, sock.getsockname()[1])


async def dial(upstream: str) -> trio.socket.SocketType:
    """Connect to ``upstream`` (``host:port``, IPv4 preferred); ``DialError`` with Go's text."""
    try:
        host, port_text = split_host_port(upstream, "dial")
        port = int(port_text)
    except ToxiproxyError as exc:
        raise DialError(exc.message) from None
    except ValueError:
        raise DialError(f"dial tcp: lookup tcp/{port_text}: unknown port") from None
    try:
        infos = await trio.socket.getaddrinfo(host or None, port, type=stdsocket.SOCK_STREAM)
    except OSError:
        raise DialError(f"dial tcp: lookup {host}: no such host") from None
    infos.sort(key=lambda info: info[0] != stdsocket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    step = "socket"
    sock: trio.socket.SocketType | None = None
    try:
        sock = trio.socket.socket(family, stdsocket.SOCK_STREAM)
        step = "connect"
        await sock.connect(sockaddr)
    except OSError as exc:
        if sock is not None:
            sock.close()
        raise DialError(f"dial tcp {upstream}: {step}: {os_error_text(exc)}") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    return sock


def go_duration_text(seconds: float) -> str:
    """A short duration as Go prints it (``5ms``, ``640ms``, ``1s``)."""
    return f"{seconds:g}s" if seconds >= 1 else f"{round(seconds * 1000)}ms"


async def accept(
    listener: trio.socket.SocketType, on_retry: Callable[[str, float], None]
) -> trio.socket.SocketType:
    """Accept one connection.  Out of fds (or memory), call ``on_retry(error text, delay)``,
    wait ``delay`` (5 ms, doubling up to 1 s) and try again, as Go's HTTP server does; any
    other error (the listener closed) is raised."""
    delay = 0.0
    while True:
        try:
            sock, _ = await listener.accept()
        except OSError as exc:
            if exc.errno not in CAPACITY_ERRNOS:
                raise
            delay = min(delay * 2 or _FIRST_DELAY, _MAX_DELAY)
            try:
                where = display(listener.family, *listener.getsockname()[:2])
            except OSError:
                where = "?"
            on_retry(f"accept tcp {where}: accept4: {os_error_text(exc)}", delay)
            await trio.sleep(delay)
        else:
            return sock
