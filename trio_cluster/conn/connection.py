"""One trio stream to one node: open it, greet the server, run commands, account for replies.

A connection keeps exact books on what the server owes it.  ``owed_replies`` grows when a
command's bytes have all gone out and shrinks as replies are read.  A caller cancelled while
waiting for a reply leaves ``owed_replies > 0``: the pool then keeps the connection away from
every other caller until :meth:`Connection.drain` has read what is owed (the misdelivered-reply
bug of redis-py's CVE-2023-28858/28859 cannot happen).  A write that may have been cut short, a
timeout, an I/O error or a corrupt stream sets ``broken``: the connection is closed, never reused.

Replies are delivered exactly once.  After the last reply owed, anything the parser still
holds must be (the start of) a RESP3 push frame, which goes to ``on_push``; any other byte,
there or on an idle connection, means the stream is out of step: the caller gets
:class:`~trio_cluster.errors.UnsolicitedReplyError` (its own reply may be the stray one), a
warning is logged, and the connection is closed.  A reply that needs more than one read is read
with a cancellable checkpoint and a deadline check between reads, so the read timeout bounds
the whole reply even while bytes keep arriving.

Timeouts: a command records its write, then its read deadline on the connection and joins the
client's :class:`~trio_cluster.conn.watchdog.Watchdog`, which wakes it if still in flight past
it (no cancel scope per command).  A connection without a watchdog or a socket (one-off connections,
TLS) uses one cancel scope per round trip, its deadline moved from the write to the read one.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import select
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import trio
from redis import exceptions as rex

from ..config import ConnectionConfig
from ..errors import (
    AuthenticationError,
    ConnectionClosedError,
    ConnectTimeoutError,
    ProtocolError,
    ReadTimeoutError,
    UnknownCommandError,
    UnsolicitedReplyError,
    WriteTimeoutError,
)
from ..wire.protocol import (
    NEED_DATA,
    YIELD,
    EncodableArg,
    PushFrame,
    RespParser,
    encode_command,
    is_push,
)
from .state import ConnState, ConnStateMachine
from .watchdog import Watchdog

__all__ = ["Connection", "PushHandler", "mark_unsent", "was_unsent"]

logger = logging.getLogger("trio_cluster.connection")

PushHandler = Callable[["Connection", PushFrame], None]

_RECEIVE_SIZE = 65536
_LARGE_RECEIVE_SIZE = 262144
_ids = itertools.count(1)
#: One float object for "not relaxed" (an idle connection should not own one).
_NEVER = -math.inf


def _network_error(
    message: str, cause: BaseException, *, unsent: bool = False
) -> rex.ConnectionError:
    error = rex.ConnectionError(f"{message}: {type(cause).__name__}: {cause}")
    error.__cause__ = cause
    if unsent:
        mark_unsent(error)
    return error


def mark_unsent(error: BaseException) -> BaseException:
    """Record on ``error`` that the command provably never reached the server."""
    error.command_unsent = True  # type: ignore[attr-defined]
    return error


def was_unsent(error: BaseException) -> bool:
    """Whether ``error`` proves its command never reached the server (safe to retry for any
    command): the connection could not be made, or not one byte of the command was written."""
    return bool(getattr(error, "command_unsent", False))


class Connection:
    """A connection to one node.  Create it with :meth:`open`; close it with :meth:`aclose`.

    Not safe for two tasks at once: the pool hands it to one caller at a time.
    """

    # Slots: thousands of idle connections are common, and a dict per instance costs more
    # than the connection's own state.
    __slots__ = (
        "_closed",
        "_fd",
        "_parser",
        "_stream",
        "_timed_out",
        "broken",
        "client_id",
        "config",
        "created_at",
        "credentials_version",
        "handoff_to",
        "id",
        "io_deadline",
        "last_used_at",
        "maint_notifications",
        "on_push",
        "owed_replies",
        "protocol",
        "relaxed_timeout",
        "relaxed_until",
        "state",
        "watchdog",
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
        self._timed_out = False
        #: Where a pending endpoint handoff should move this connection (set by the handoff
        #: manager; None when none is pending).
        self.handoff_to: tuple[str, int] | None = None
        #: Called with every push frame (RESP3 ``>``) that arrives; never given to a caller.
        self.on_push: PushHandler | None = None
        self._parser = RespParser(
            max_bytes=config.max_reply_bytes, max_depth=config.max_reply_depth
        )
        # On plain sockets we read and write the file descriptor with non-blocking system
        # calls: a write then tells exactly whether any byte went out (the cancel-safety books
        # depend on it), and both are cheaper than trio's stream layers.  So a plain socket
        # keeps only its trio socket (the ``SocketStream`` around it and its two conflict
        # detectors would cost about 180 bytes of every idle connection); TLS streams keep
        # the stream and go through ``send_all`` / ``receive_some``.
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
                raise _network_error(
                    f"cannot connect to {config.address}", exc, unsent=True
                ) from exc
            conn = cls(config, stream)
            try:
                conn.state.transition(ConnState.INITIALIZING)
                await conn._handshake()
                conn._fresh_parser()
                conn.state.transition(ConnState.IDLE)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
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

    def _fresh_parser(self) -> None:
        """Swap in a new parser once the handshake is read: the handshake's replies (the
        largest most idle connections ever read) would otherwise keep the parser's buffers
        grown for as long as the connection lives."""
        if self._parser.idle:
            self._parser = RespParser(
                max_bytes=self.config.max_reply_bytes, max_depth=self.config.max_reply_depth
            )

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
        """Write ``count`` encoded commands and read their replies, within the deadlines."""
        if self.broken or self._closed:
            raise mark_unsent(
                ConnectionClosedError(f"connection {self.id} to {self.config.address} is closed")
            )
        config = self.config
        now = trio.current_time()
        write_timeout = config.write_timeout
        read_timeout = config.read_timeout
        if now < self.relaxed_until:
            write_timeout = read_timeout = self.relaxed_timeout
        watchdog = self.watchdog
        if watchdog is None or self._fd < 0:
            return await self._execute_scoped(
                data, count, now, write_timeout, read_timeout, blocks_for
            )
        self.io_deadline = now + write_timeout if write_timeout is not None else math.inf
        watchdog.watch(self)
        writing = True
        try:
            if not await self._send(data, count):
                now = trio.current_time()  # the write had to wait
            writing = False
            if read_timeout is None:
                self.io_deadline = math.inf
            else:
                self.io_deadline = now + read_timeout + blocks_for
                watchdog.watch(self)  # the deadline may be earlier than the write's
            replies = [await self._read_reply() for _ in range(count)]
        except (rex.ConnectionError, trio.ClosedResourceError):
            if not self._timed_out:
                raise
            raise self._timeout_error(writing, write_timeout, read_timeout) from None
        finally:
            watchdog.unwatch(self)
        if self._timed_out:
            self.broken = True  # expired just as the reply came: used, but never again
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
            if read_timeout is not None:
                scope.deadline = trio.current_time() + read_timeout + blocks_for
            else:
                scope.deadline = math.inf
            for _ in range(count):
                replies.append(await self._read_reply())
        if scope.cancelled_caught:
            raise self._timeout_error(writing, write_timeout, read_timeout)
        return replies

    def _timeout_error(
        self, writing: bool, write_timeout: float | None, read_timeout: float | None
    ) -> Exception:
        self.broken = True
        if writing:
            return WriteTimeoutError(
                f"writing to {self.config.address} took longer than {write_timeout} s"
            )
        return ReadTimeoutError(f"no reply from {self.config.address} within {read_timeout} s")

    def expire(self) -> None:
        """Called by the watchdog when the deadline passed with a command in flight."""
        self._timed_out = True
        self.broken = True
        if self._fd >= 0:
            trio.lowlevel.notify_closing(self._fd)

    async def _send(self, data: bytes, count: int) -> bool:
        """Write ``data`` (``count`` commands); on success the server owes ``count`` replies.

        Returns whether it went out at once (no waiting for the socket).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        sent = 0
        try:
            if self._fd >= 0:
                try:
                    sent = os.write(self._fd, data)
                except BlockingIOError:
                    sent = 0
                if sent < len(data):
                    # Whatever happens from here (cancel, error), a partial command may be on
                    # the wire: only closing the connection is safe.
                    self.broken = True
                    await self._send_rest(memoryview(data)[sent:])
                    self.broken = False
            else:
                self.broken = True
                await self._tls().send_all(data)
                self.broken = False
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            unsent = self._fd >= 0 and sent == 0 and not self.broken
            self.broken = True
            raise _network_error(
                f"writing to {self.config.address} failed", exc, unsent=unsent
            ) from exc
        self.owed_replies += count
        return sent == len(data)

    async def _send_rest(self, rest: memoryview) -> None:
        """Write what the first write left over, waiting for the socket to take it (the
        watchdog's ``notify_closing`` ends a wait past the deadline)."""
        fd = self._fd
        while rest:
            await trio.lowlevel.wait_writable(fd)
            try:
                rest = rest[os.write(fd, rest) :]
            except BlockingIOError:
                continue

    def _tls(self) -> trio.abc.Stream:
        stream = self._stream
        assert isinstance(stream, trio.abc.Stream)  # only connections without a fd get here
        return stream

    async def _read_reply(self) -> Any:
        """Read the next reply that answers a command, dispatching push frames on the way.

        After the last owed reply, whatever the parser still holds must be push frames:
        anything else raises :class:`UnsolicitedReplyError` (see :meth:`_settle`).
        """
        parser = self._parser
        reads = 0
        while True:
            try:
                reply = parser.next_reply()
            except ProtocolError as exc:
                raise self._violation(exc) from None
            if reply is NEED_DATA:
                await self._receive(reads)
                reads += 1
                continue
            if reply is YIELD:
                # A large reply used up its slice: let the other tasks run.
                await self._continue_reading()
                continue
            if is_push(reply):
                self._dispatch_push(reply)
                continue
            self.owed_replies -= 1
            if self.owed_replies <= 0 and not parser.idle:
                self._settle()
            return reply

    def _settle(self) -> None:
        """No reply is owed: dispatch the complete push frames the parser holds, and make sure
        any partial frame it holds is a push.  Anything else is unsolicited: no reply on this
        stream can be trusted any more (the one just read may be the stray one), so it raises
        :class:`UnsolicitedReplyError` and the connection is closed."""
        parser = self._parser
        while True:
            try:
                reply = parser.next_reply()
            except ProtocolError as exc:
                raise self._violation(exc) from None
            if reply is NEED_DATA:
                break
            if reply is YIELD:
                continue
            if not is_push(reply):
                raise self._violation(
                    UnsolicitedReplyError(
                        f"{self.config.address} sent a reply that no command was owed"
                    )
                )
            self._dispatch_push(reply)
        try:
            partial_push = parser.idle or parser.held_frame_is_push()
        except ProtocolError as exc:
            raise self._violation(exc) from None
        if not partial_push:
            raise self._violation(
                UnsolicitedReplyError(f"{self.config.address} sent bytes that no command was owed")
            )

    def _violation(self, error: ProtocolError) -> ProtocolError:
        """The stream broke the protocol: log it, mark the connection for closing."""
        if not self.broken:
            logger.warning(
                "closing connection %d to %s: %s: %s",
                self.id, self.config.address, type(error).__name__, error,
            )  # fmt: skip
        self.broken = True
        return error

    async def _continue_reading(self) -> None:
        """Between two slices of one reply: a checkpoint that honours cancellation, then the
        watchdog's verdict, so a reply that keeps arriving cannot outlive its deadline."""
        await trio.lowlevel.checkpoint()
        if self._timed_out:
            self.broken = True
            raise _network_error(
                f"reading from {self.config.address} failed",
                trio.ClosedResourceError("deadline passed"),
            )

    async def _receive(self, reads: int = 0) -> None:
        data: bytes | bytearray
        if reads:
            # Not the first read of this reply: the deadline holds even while bytes keep
            # coming (a successful read is no checkpoint of its own).
            await self._continue_reading()
        try:
            if self._fd >= 0:
                # Straight to the socket: trio's stream layers add several microseconds per
                # read, and nothing else reads this socket.  Let the other tasks run first
                # (their commands go out meanwhile), then try the read: under load the reply
                # is usually there already, which saves arming epoll and a wake-up.
                if not reads:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                while True:
                    try:
                        # A reply that needs more than one read is a large one: read more
                        # at a time (fewer wake-ups; each slice still parses in well under a
                        # millisecond).
                        data = os.read(self._fd, _LARGE_RECEIVE_SIZE if reads else _RECEIVE_SIZE)
                        break
                    except BlockingIOError:
                        if self._timed_out:  # the watchdog fired while we were not waiting
                            raise trio.ClosedResourceError("deadline passed") from None
                        await trio.lowlevel.wait_readable(self._fd)
            else:
                data = await self._tls().receive_some(_RECEIVE_SIZE)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.broken = True
            raise _network_error(f"reading from {self.config.address} failed", exc) from exc
        if not data:
            self.broken = True
            raise ConnectionClosedError(f"{self.config.address} closed the connection")
        try:
            self._parser.feed(data)
        except ProtocolError as exc:
            raise self._violation(exc) from None

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
            return await self._read_reply()
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

    async def reconnect(self, config: ConnectionConfig) -> None:
        """Move this connection to a new endpoint (a handoff): open and greet a new stream
        with ``config``, then swap it in and close the old one.

        The caller owns the connection (state UNUSABLE); it is INITIALIZING while this runs
        and stays INITIALIZING on return, for the owner to give back.  On failure the old
        stream is untouched and the error propagates.
        """
        if self.owed_replies or self.broken:
            raise ConnectionClosedError(f"connection {self.id} cannot be handed off in this state")
        if self.state.state is not ConnState.INITIALIZING:  # a retry stays INITIALIZING
            self.state.transition(ConnState.INITIALIZING)
        fresh = await Connection.open(config)
        old_stream = self._stream
        self._stream, self._parser, self._fd = fresh._stream, fresh._parser, fresh._fd
        self.config, self.protocol, self.client_id = fresh.config, fresh.protocol, fresh.client_id
        self.maint_notifications = fresh.maint_notifications
        fresh._closed = True  # its stream now belongs to this connection
        await _close_quietly(old_stream)

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

    def peer_closed(self) -> bool:
        """Cheap, non-blocking: is this idle connection unfit to hand out?

        One ``poll`` call.  An idle connection normally has nothing to read; if it does, the
        bytes are read: push frames are dispatched (maintenance notifications arrive on idle
        connections), while EOF, an error, garbage or an unsolicited reply mean it is unfit.
        """
        if self._closed or self.broken:
            return True
        if self._fd < 0:
            return False
        try:
            if not self._readable():
                return False
            data = os.read(self._fd, _RECEIVE_SIZE)
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            self.broken = True
            return True
        if not data:
            self.broken = True
            return True
        try:
            self._parser.feed(data)
            self._settle()
        except ProtocolError as exc:
            self._violation(exc)
            return True
        return False

    def _readable(self) -> bool:
        """Whether the socket has bytes (or EOF, or an error) to read, without waiting.

        One ``poll`` object shared by all the connections of a client (the watchdog's): a
        registration, a poll and an unregistration cost less than ``select.select``, and a
        poll object per connection would cost about 300 bytes of each idle connection.
        """
        fd = self._fd
        watchdog = self.watchdog
        if watchdog is None:
            return bool(select.select([fd], (), (), 0)[0])
        poller = watchdog.poller
        poller.register(fd, select.POLLIN)
        try:
            return bool(poller.poll(0))
        finally:
            poller.unregister(fd)

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has run."""
        return self._closed

    async def aclose(self) -> None:
        """Close the connection (idempotent); the state becomes CLOSED."""
        if not self._closed:
            self._closed = True
            self.state.transition(ConnState.CLOSED)
            await _close_quietly(self._stream)

    # --- subscribed mode (pub/sub) -----------------------------------------------------------

    async def read_push(self, *, send: Sequence[Sequence[EncodableArg]] = ()) -> Any:
        """Subscribed mode: write ``send`` (if any), then return the next frame the server sends.

        For a connection that one task owns outside every pool (a pub/sub connection).  The
        server answers subscribe commands with push frames, so nothing is booked in
        ``owed_replies``: the caller matches answers itself.  Push frames are returned (not
        given to ``on_push``), and so are plain replies (``PONG``, error replies as values).
        No read timeout: it waits as long as the caller's cancel scope allows, and a cancel
        while waiting for bytes loses nothing (a later call returns the frame).
        """
        if self.broken or self._closed:
            raise ConnectionClosedError(f"connection {self.id} to {self.config.address} is closed")
        if send:
            await self._send(b"".join([encode_command(args) for args in send]), 0)
        parser = self._parser
        reads = 0
        while True:
            try:
                reply = parser.next_reply()
            except ProtocolError as exc:
                raise self._violation(exc) from None
            if reply is YIELD:
                await trio.lowlevel.checkpoint()
            elif reply is not NEED_DATA:
                return reply
            else:
                await self._receive(reads)
                reads += 1


async def _close_quietly(stream: trio.abc.Stream | trio.socket.SocketType) -> None:
    """Close a stream (as ``trio.aclose_forcefully``: no TLS goodbye) or a trio socket."""
    if isinstance(stream, trio.abc.Stream):
        await trio.aclose_forcefully(stream)
    else:
        stream.close()  # wakes any task waiting on it (ClosedResourceError)
        await trio.lowlevel.cancel_shielded_checkpoint()


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
            raise _network_error(f"TLS handshake with {config.address} failed", cause) from cause
        stream = tls
    return stream
