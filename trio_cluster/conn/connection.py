"""One trio stream to one node: open it, greet the server, run commands, account for replies.

A connection keeps exact books on what the server owes it.  ``owed_replies`` grows when a
command's bytes have all gone out and shrinks as replies are read.  A caller cancelled while
waiting for a reply leaves ``owed_replies > 0``: the pool then keeps the connection away from
every other caller until :meth:`Connection.drain` has read what is owed (the misdelivered-reply
bug of redis-py's CVE-2023-28858/28859 cannot happen).  A write that may have been cut short, a
timeout, an I/O error or a corrupt stream sets ``broken``: the connection is closed, never reused.

Replies are delivered exactly once, and a stream out of step closes the connection: the read
and write paths live in :mod:`trio_cluster.conn.stream` (:class:`ReplyStream`, the base class).

Timeouts: a command records its write, then its read deadline on the connection and joins the
client's :class:`~trio_cluster.conn.watchdog.Watchdog`, which wakes it if still in flight past
it (no cancel scope per command).  A connection without a watchdog or a socket (one-off connections,
TLS) uses one cancel scope per round trip, its deadline moved from the write to the read one.
"""

from __future__ import annotations

import itertools
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio
from redis import exceptions as rex

from ..config import ConnectionConfig
from ..errors import (
    AuthenticationError,
    CertificateVerificationError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ReadTimeoutError,
    UnknownCommandError,
    WriteTimeoutError,
)
from ..wire.protocol import (
    EncodableArg,
    PushFrame,
    encode_command,
)
from .redact import redact, redact_replies
from .state import ConnState, ConnStateMachine
from .stream import ReplyStream, close_quietly, mark_unsent, network_error, was_unsent
from .watchdog import Watchdog

__all__ = ["Connection", "PushHandler", "mark_unsent", "was_unsent"]


PushHandler = Callable[["Connection", PushFrame], None]

_ids = itertools.count(1)
#: One float object for "not relaxed" (an idle connection should not own one).
_NEVER = -math.inf


class Connection(ReplyStream):
    """A connection to one node.  Create it with :meth:`open`; close it with :meth:`aclose`.

    Not safe for two tasks at once: the pool hands it to one caller at a time.
    """

    # Slots: thousands of idle connections are common, and a dict per instance costs more
    # than the connection's own state.
    __slots__ = (
        "client_id",
        "created_at",
        "credentials_version",
        "handoff_to",
        "io_deadline",
        "last_used_at",
        "maint_notifications",
        "on_push",
        "protocol",
        "relaxed_timeout",
        "relaxed_until",
        "sent_at",
        "state",
    )

    def __init__(self, config: ConnectionConfig, stream: trio.abc.Stream) -> None:
        self.id = next(_ids)
        self.config = config
        self.state = ConnStateMachine()
        self.created_at = trio.current_time()
        self.last_used_at = self.created_at
        #: Replies the server still owes us (commands fully written, replies not yet read).
        self.owed_replies = 0
        #: Set when the connection must never carry another command.
        self.broken = False
        #: Set (with ``broken``) when the server sent bytes no command was owed.
        self.out_of_step = False
        #: The RESP version agreed in the handshake (2 or 3).
        self.protocol = 2
        #: The server's CLIENT ID for this connection (None if the server could not say).
        self.client_id: int | None = None
        #: Whether the server agreed to send maintenance notifications on this connection.
        self.maint_notifications = False
        #: Which credentials (a number kept by the credential manager) this connection uses.
        self.credentials_version = 0
        #: While ``trio.current_time() < relaxed_until``, ``relaxed_timeout`` replaces the read
        #: and write timeouts (a maintenance notification said the node is migrating).
        self.relaxed_until = _NEVER
        self.relaxed_timeout = 0.0
        #: Set by the owner: enforces read/write deadlines without a cancel scope per command.
        self.watchdog: Watchdog | None = None
        #: When the command in flight times out (trio clock); read by the watchdog.
        self.io_deadline = math.inf
        #: When the last round trip was written (trio clock): its reply's time counts from here.
        self.sent_at = 0.0
        self._timed_out = False
        self._spin_misses = 0
        #: Where a pending endpoint handoff should move this connection (set by the handoff
        #: manager; None when none is pending).
        self.handoff_to: tuple[str, int] | None = None
        #: Called with every push frame (RESP3 ``>``) that arrives; never given to a caller.
        self.on_push: PushHandler | None = None
        self._parser = None  # made at the first read (ReplyStream._reader)
        # A plain socket is read and written with non-blocking system calls on its fd (a
        # write then tells exactly whether any byte went out, which the books depend on; and
        # it is cheaper), so only its trio socket is kept: the ``SocketStream`` around it would
        # cost about 180 bytes of every idle connection. TLS streams go through the stream.
        self._stream: trio.abc.Stream | trio.socket.SocketType
        if isinstance(stream, trio.SocketStream):
            self._stream = stream.socket
            self._fd = stream.socket.fileno()
        else:
            self._stream = stream
            self._fd = -1
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Connection id={self.id} {self.config.address} {self.state.state.name}"
            f" owed={self.owed_replies}{' broken' if self.broken else ''}>"
        )

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    async def open(cls, config: ConnectionConfig) -> Connection:
        """Connect, and run the handshake, within ``config.connect_timeout``.

        The returned connection is IDLE.  Raises :class:`ConnectTimeoutError`,
        ``redis.exceptions.ConnectionError`` (cause chained), or the server's error (for
        example :class:`~trio_cluster.errors.AuthenticationError`).
        """
        conn: Connection | None = None
        timeout = config.connect_timeout
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            try:
                stream = await _open_stream(config)
            except (OSError, trio.BrokenResourceError) as exc:
                raise network_error(
                    f"cannot connect to {config.address}", exc, unsent=True
                ) from exc
            conn = cls(config, stream)
            try:
                conn.state.transition(ConnState.INITIALIZING)
                await conn._handshake()
                conn._drop_handshake_parser()
                conn.state.transition(ConnState.IDLE)
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
                if isinstance(exc, Exception):
                    redact(exc, config.password)  # a server may echo what AUTH/HELLO sent
                raise
            return conn
        if conn is not None:
            with trio.CancelScope(shield=True):
                await conn.aclose()
        assert scope.cancelled_caught
        raise mark_unsent(
            ConnectTimeoutError(f"connecting to {config.address} took longer than {timeout} s")
        )

    async def _handshake(self) -> None:
        config = self.config
        if config.protocol == 3:
            hello: list[EncodableArg] = ["HELLO", 3]
            if config.password is not None:
                hello += ["AUTH", config.username or "default", config.password]
            if config.client_name:
                hello += ["SETNAME", config.client_name]
            try:
                await self._call_unbounded(hello)
                self.protocol = 3
            except rex.ResponseError as exc:
                if not _hello_unsupported(exc):
                    raise
            except AuthenticationError as exc:
                # NOAUTH for a HELLO that carried AUTH means HELLO itself was not understood
                # (some servers check authentication before looking the command up).
                if config.password is None or not str(exc).startswith("NOAUTH"):
                    raise
        follow_up: list[Sequence[EncodableArg]] = []
        if self.protocol == 2:
            if config.password is not None:
                auth: list[EncodableArg] = ["AUTH", config.password]
                if config.username:
                    auth.insert(1, config.username)
                follow_up.append(auth)
            if config.client_name:
                follow_up.append(["CLIENT", "SETNAME", config.client_name])
        if config.db:
            follow_up.append(["SELECT", config.db])
        if config.readonly:
            follow_up.append(["READONLY"])
        maint_at = -1
        if self.protocol == 3 and config.maint_notifications != "disabled":
            maint_at = len(follow_up)
            follow_up.append(
                ["CLIENT", "MAINT_NOTIFICATIONS", "ON",
                 "moving-endpoint-type", config.moving_endpoint_type]
            )  # fmt: skip
        # Old servers do not know SETINFO: their errors are expected and ignored below.
        optional_from = len(follow_up)
        follow_up.append(["CLIENT", "ID"])  # lets a cancelled blocking command be unblocked
        follow_up.append(["CLIENT", "SETINFO", "LIB-NAME", config.lib_name])
        follow_up.append(["CLIENT", "SETINFO", "LIB-VER", config.lib_version])
        replies = await self._pipeline_unbounded(follow_up)
        for position, reply in enumerate(replies[:optional_from]):
            if isinstance(reply, Exception):
                if position == maint_at and config.maint_notifications == "auto":
                    continue  # the server has no maintenance notifications: carry on without
                raise reply
        self.maint_notifications = maint_at >= 0 and not isinstance(replies[maint_at], Exception)
        client_id = replies[optional_from]
        self.client_id = client_id if isinstance(client_id, int) else None

    def _drop_handshake_parser(self) -> None:
        """Drop the parser once the handshake is read (the next read makes a new one): the
        handshake's replies (the largest most idle connections ever read) would otherwise
        keep its buffers grown for as long as the connection lives, and a connection that
        then only sits idle needs no parser at all."""
        if self._parser is not None and self._parser.idle:
            self._parser = None

    async def _call_unbounded(self, args: Sequence[EncodableArg]) -> Any:
        reply = (await self._pipeline_unbounded([args]))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _pipeline_unbounded(self, commands: Sequence[Sequence[EncodableArg]]) -> list[Any]:
        # The handshake runs inside the connect timeout's scope, so no scope of its own.
        data = b"".join([encode_command(args) for args in commands])
        await self._send(data, len(commands))
        return [await self._read_reply() for _ in commands]

    # --- running commands ------------------------------------------------------------------

    async def execute(self, args: Sequence[EncodableArg], *, blocks_for: float = 0.0) -> Any:
        """Send one command and return its reply; an error reply is raised as its typed error.

        ``blocks_for``: seconds the server may legitimately hold the reply back (a blocking
        command's own timeout; ``math.inf`` for "forever"), added to the read timeout.
        """
        reply = (await self._roundtrip(encode_command(args), 1, blocks_for))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def execute_many(
        self, commands: Sequence[Sequence[EncodableArg]], *, blocks_for: float = 0.0
    ) -> list[Any]:
        """Send commands in one write and return their replies in order (errors as values).

        Bounded by the write timeout while sending, then by the read timeout (plus
        ``blocks_for``) for the replies.  With a watchdog (plain sockets), the deadlines cost
        no cancel scope; otherwise one scope serves both phases.
        """
        data = b"".join([encode_command(args) for args in commands])
        return await self._roundtrip(data, len(commands), blocks_for)

    async def execute_encoded(self, data: bytes, count: int) -> list[Any]:
        """:meth:`execute_many` for ``count`` commands already encoded into ``data`` (an
        automatic-pipelining batch): one write, replies in order, errors as values."""
        return await self._roundtrip(data, count, 0.0)

    async def _roundtrip(self, data: bytes, count: int, blocks_for: float) -> list[Any]:
        """Write ``count`` encoded commands and read their replies, within the deadlines;
        error replies have the configured password masked (:mod:`.redact`)."""
        if self.broken or self._closed:
            raise mark_unsent(
                ConnectionClosedError(f"connection {self.id} to {self.config.address} is closed")
            )
        config = self.config
        now = self.sent_at = trio.current_time()
        write_timeout = config.write_timeout
        read_timeout = config.read_timeout
        if now < self.relaxed_until:
            write_timeout = read_timeout = self.relaxed_timeout
        watchdog = self.watchdog
        if watchdog is None or self._fd < 0:
            replies = await self._execute_scoped(
                data, count, now, write_timeout, read_timeout, blocks_for
            )
            if config.password is not None:
                redact_replies(replies, config.password)
            return replies
        self.io_deadline = now + write_timeout if write_timeout is not None else math.inf
        watchdog.watch(self)
        writing = True
        try:
            if not await self._send(data, count):
                now = self.sent_at = trio.current_time()  # the write had to wait
            writing = False
            if read_timeout is None:
                self.io_deadline = math.inf
            else:
                self.io_deadline = now + read_timeout + blocks_for
                watchdog.watch(self)  # the deadline may be earlier than the write's
            if count == 1:
                replies = [await self._read_reply()]  # no comprehension frame per command
            else:
                replies = [await self._read_reply() for _ in range(count)]
        except (rex.ConnectionError, trio.ClosedResourceError):
            if not self._timed_out:
                raise
            self.broken = True
            raise _timeout_error(
                self.config.address, writing, write_timeout, read_timeout
            ) from None
        finally:
            watchdog.unwatch(self)
        if self._timed_out:
            self.broken = True  # expired just as the reply came: used, but never again
        if config.password is not None:
            redact_replies(replies, config.password)
        return replies

    async def _execute_scoped(
        self,
        data: bytes,
        count: int,
        now: float,
        write_timeout: float | None,
        read_timeout: float | None,
        blocks_for: float,
    ) -> list[Any]:
        scope = trio.CancelScope(
            deadline=now + write_timeout if write_timeout is not None else math.inf
        )
        writing = True
        replies: list[Any] = []
        with scope:
            await self._send(data, count)
            writing = False
            self.sent_at = trio.current_time()
            if read_timeout is not None:
                scope.deadline = self.sent_at + read_timeout + blocks_for
            else:
                scope.deadline = math.inf
            for _ in range(count):
                replies.append(await self._read_reply())
        if scope.cancelled_caught:
            self.broken = True
            raise _timeout_error(self.config.address, writing, write_timeout, read_timeout)
        return replies

    def expire(self) -> None:
        """Called by the watchdog when the deadline passed with a command in flight."""
        self._timed_out = True
        self.broken = True
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)

    def _dispatch_push(self, frame: PushFrame) -> None:
        handler = self.on_push
        if handler is not None:
            handler(self, frame)

    async def read_owed_reply(self) -> Any:
        """Read the next reply the server owes (errors as values), bounded by the read timeout.

        For a caller that gave up on a command but wants to see how it ended (a cancelled
        blocking command, unblocked with CLIENT UNBLOCK).
        """
        timeout = self.config.read_timeout
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            reply = await self._read_reply()
            return redact(reply, self.config.password) if isinstance(reply, Exception) else reply
        self.broken = True
        raise ReadTimeoutError(f"no reply from {self.config.address} within {timeout} s")

    # --- maintenance support ---------------------------------------------------------------

    def relax(self, timeout: float, until: float) -> None:
        """Use ``timeout`` for reads and writes until ``until`` (trio clock) or :meth:`unrelax`."""
        self.relaxed_timeout = timeout
        self.relaxed_until = until

    def unrelax(self) -> None:
        """Back to the configured timeouts."""
        self.relaxed_until = _NEVER

    @property
    def relaxed(self) -> bool:
        """Whether relaxed timeouts are in force right now."""
        return trio.current_time() < self.relaxed_until

    async def reconnect(self, dial: Callable[[], Awaitable[Connection]]) -> None:
        """Move this connection to a new endpoint (a handoff): ``dial()`` opens a new,
        greeted connection (the client's dialer: this method never opens one itself), whose
        stream is swapped in; the old stream is closed.

        The caller owns the connection (state UNUSABLE); it is INITIALIZING while this runs
        and stays INITIALIZING on return, for the owner to give back.  On failure the old
        stream is untouched and the error propagates.
        """
        if self.owed_replies or self.broken:
            raise ConnectionClosedError(f"connection {self.id} cannot be handed off in this state")
        if self.state.state is not ConnState.INITIALIZING:  # a retry stays INITIALIZING
            self.state.transition(ConnState.INITIALIZING)
        fresh = await dial()
        old_stream = self._stream
        self._stream, self._parser, self._fd = fresh._stream, fresh._parser, fresh._fd
        self.config, self.protocol, self.client_id = fresh.config, fresh.protocol, fresh.client_id
        self.maint_notifications = fresh.maint_notifications
        self.credentials_version = fresh.credentials_version
        fresh._closed = True  # its stream now belongs to this connection
        await close_quietly(old_stream)

    # --- pool support ----------------------------------------------------------------------

    async def drain(self) -> None:
        """Read and discard every reply still owed, bounded by the read timeout.

        Used for a connection whose caller was cancelled after its command went out.  Raises
        (and leaves the connection broken) if the replies do not come in time.
        """
        timeout = self.config.read_timeout
        with trio.move_on_after(timeout if timeout is not None else float("inf")):
            while self.owed_replies > 0:
                await self._read_reply()
            return
        self.broken = True
        raise ReadTimeoutError(f"draining {self.config.address} took longer than {timeout} s")

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._closed

    async def aclose(self) -> None:
        """Close the connection (idempotent); the state becomes CLOSED."""
        if not self._closed:
            self._closed = True
            self.state.transition(ConnState.CLOSED)
            await close_quietly(self._stream)


def _timeout_error(
    address: str, writing: bool, write_timeout: float | None, read_timeout: float | None
) -> Exception:
    """The typed timeout of a round trip that ran out of time while writing or reading."""
    if writing:
        return WriteTimeoutError(f"writing to {address} took longer than {write_timeout} s")
    return ReadTimeoutError(f"no reply from {address} within {read_timeout} s")


def _hello_unsupported(exc: Exception) -> bool:
    """Whether a HELLO error means "no RESP3 here" (old server), not a real failure."""
    return isinstance(exc, UnknownCommandError) or str(exc).startswith("NOPROTO")


async def _open_stream(config: ConnectionConfig) -> trio.abc.Stream:
    stream: trio.abc.Stream
    if config.unix_socket_path is not None:
        stream = await trio.open_unix_socket(config.unix_socket_path)
    else:
        stream = await trio.open_tcp_stream(config.host, config.port)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if config.socket_keepalive:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
            for option, setting in config.socket_keepalive_options:
                stream.setsockopt(socket.IPPROTO_TCP, option, setting)
    if config.ssl_context is not None:
        hostname = config.server_hostname or (
            None if config.unix_socket_path is not None else config.host
        )
        tls = trio.SSLStream(stream, config.ssl_context, server_hostname=hostname)
        try:
            await tls.do_handshake()
        except (ssl.SSLError, trio.BrokenResourceError) as exc:
            await trio.aclose_forcefully(stream)
            cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
            if isinstance(cause, ssl.SSLCertVerificationError):
                # Said once, as what it is (the SSL error's own text repeats itself); not
                # worth retrying, which the error's class tells the pool.
                why = cause.verify_message or cause.reason or "certificate verify failed"
                raise mark_unsent(
                    CertificateVerificationError(
                        f"the TLS certificate of {config.address} failed verification: {why}"
                    )
                ) from cause
            raise network_error(f"TLS handshake with {config.address} failed", cause) from cause
        stream = tls
    return stream
