"""The byte level of a connection: write commands, read replies with exact books, dispatch
push frames, and notice a stream that is out of step.

:class:`ReplyStream` is the base class of :class:`~trio_cluster.conn.connection.Connection`;
it holds the read and write paths, which the connection's commands, its handshake, draining
and pub/sub all share. A base class rather than an object the connection owns, so that the
hot path (one write, one read per command) costs no extra hop.

Replies are delivered exactly once.  After the last reply owed, anything the parser still
holds must be (the start of) a RESP3 push frame, which goes to ``on_push``; any other byte,
there or on an idle connection, means the stream is out of step: the caller gets
:class:`~trio_cluster.errors.UnsolicitedReplyError` (its own reply may be the stray one), a
warning is logged, and the connection is closed.  A reply that needs more than one read is read
with a cancellable checkpoint and a deadline check between reads, so the read timeout bounds
the whole reply even while bytes keep arriving.
"""

from __future__ import annotations

import logging
import os
import select
from collections.abc import Sequence
from typing import Any

import trio
from redis import exceptions as rex

from ..config import ConnectionConfig
from ..errors import ConnectionClosedError, ProtocolError, UnsolicitedReplyError
from ..wire.protocol import (
    NEED_DATA,
    YIELD,
    EncodableArg,
    PushFrame,
    RespParser,
    encode_command,
    is_push,
)
from .redact import redact
from .watchdog import Watchdog

logger = logging.getLogger(__name__)

_RECEIVE_SIZE = 65536
_LARGE_RECEIVE_SIZE = 262144
#: Misses in a row after which a connection stops spinning, and reads that slept after which
#: it tries again (see ``ReplyStream._spin_missed``).
_SPIN_MISSES = 3
_SPIN_RETRY = 64


class ReplyStream:
    """The socket side of a connection (see the module docstring); not used on its own.

    The subclass sets every attribute below in its ``__init__``.
    """

    # Slots: thousands of idle connections are common (see ``Connection``).
    __slots__ = (
        "_closed",
        "_fd",
        "_parser",
        "_spin_misses",
        "_stream",
        "_timed_out",
        "broken",
        "config",
        "id",
        "out_of_step",
        "owed_replies",
        "watchdog",
    )

    id: int
    config: ConnectionConfig
    #: Replies the server still owes us (commands fully written, replies not yet read).
    owed_replies: int
    #: Set when the connection must never carry another command.
    broken: bool
    #: Set (with ``broken``) when the server sent bytes no command was owed: an unsolicited
    #: reply, or anything but a push frame on an idle connection.
    out_of_step: bool
    watchdog: Watchdog | None
    _timed_out: bool
    _closed: bool
    _fd: int
    _parser: RespParser | None
    #: Reads in a row whose reply the spin did not catch (see :meth:`_receive`).
    _spin_misses: int
    _stream: trio.abc.Stream | trio.socket.SocketType

    def _dispatch_push(self, frame: PushFrame) -> None:
        """Hand a push frame to the connection's ``on_push`` handler."""
        raise NotImplementedError

    # --- writing ---------------------------------------------------------------------------

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
            raise network_error(
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

    # --- reading replies -------------------------------------------------------------------

    async def _read_reply(self, subscribed: bool = False) -> Any:
        """Read the next reply that answers a command, dispatching push frames on the way.

        After the last owed reply, whatever the parser still holds must be push frames:
        anything else raises :class:`UnsolicitedReplyError` (see :meth:`_settle`).
        ``subscribed``: return the next frame, whatever it is, and book nothing (see
        :meth:`read_push`).
        """
        parser = self._parser
        if parser is None:
            parser = self._reader()
        reads = 0
        while True:
            try:
                reply = parser.next_reply()
            except ProtocolError as exc:
                raise self._violation(exc) from None
            if reply is NEED_DATA:
                await self._receive(parser, reads)
                reads += 1
                continue
            if reply is YIELD:
                # A large reply used up its slice: let the other tasks run.
                await self._continue_reading()
                continue
            if subscribed:
                return reply
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
        parser = self._reader()
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

    def _reader(self) -> RespParser:
        """The connection's parser, made when it first reads: a parser is about 1.1 kB (most
        of it hiredis's reader), more than half of what an idle connection costs, and a
        connection that only sits idle in a pool never needs one."""
        parser = self._parser
        if parser is None:
            config = self.config
            parser = self._parser = RespParser(
                max_bytes=config.max_reply_bytes,
                max_depth=config.max_reply_depth,
                max_elements=config.max_reply_elements,
            )
        return parser

    def _violation(self, error: ProtocolError) -> ProtocolError:
        """The stream broke the protocol: log it, mark the connection for closing (and as out
        of step if the bytes were unsolicited).  The error may quote the server's bytes: the
        password is masked before it is logged and raised."""
        redact(error, self.config.password)
        if isinstance(error, UnsolicitedReplyError):
            self.out_of_step = True
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
            raise network_error(
                f"reading from {self.config.address} failed",
                trio.ClosedResourceError("deadline passed"),
            )

    async def _receive(self, parser: RespParser, reads: int) -> None:
        """Read what the socket has into ``parser`` (the connection's own)."""
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
                spin = 0
                slept = False
                if not reads:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    if self._spin_misses < _SPIN_MISSES:
                        spin = self.config.read_spin
                spun = spin
                while True:
                    try:
                        # A reply that needs more than one read is a large one: read more
                        # at a time (fewer wake-ups; each slice still parses in well under a
                        # millisecond).
                        data = os.read(self._fd, _LARGE_RECEIVE_SIZE if reads else _RECEIVE_SIZE)
                        break
                    except BlockingIOError:
                        pass
                    # Nothing to read yet.  The waits are outside the ``except`` block: an
                    # exception raised while waiting (a cancellation, Ctrl-C, a timeout)
                    # would otherwise carry the BlockingIOError as its context.
                    if self._timed_out:  # the watchdog fired while we were not waiting
                        raise trio.ClosedResourceError("deadline passed")
                    if spin:
                        # Not there yet: let the other tasks run once more and try again
                        # rather than sleep (``read_spin``; see _spin_missed).
                        spin -= 1
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        continue
                    slept = True
                    await trio.lowlevel.wait_readable(self._fd)
                if slept:
                    if not reads:
                        self._spin_missed()
                elif spun and self._spin_misses:
                    self._spin_misses = 0  # the spin caught it: keep spinning
            else:
                data = await self._tls().receive_some(_RECEIVE_SIZE)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.broken = True
            raise network_error(f"reading from {self.config.address} failed", exc) from exc
        if not data:
            self.broken = True
            raise ConnectionClosedError(f"{self.config.address} closed the connection")
        try:
            parser.feed(data)
        except ProtocolError as exc:
            raise self._violation(exc) from None

    def _spin_missed(self) -> None:
        """The first read of a reply had to sleep (after spinning, or without: the connection
        had stopped spinning).

        After :data:`_SPIN_MISSES` misses in a row a connection stops spinning: its replies
        come later than a spin lasts (a distant or busy server, a blocking command, pub/sub),
        and spinning would only burn time.  After :data:`_SPIN_RETRY` reads that slept, it
        tries again, so a server that became quick again is noticed.
        """
        misses = self._spin_misses + 1
        self._spin_misses = 0 if misses >= _SPIN_RETRY else misses

    # --- idle checks -----------------------------------------------------------------------

    def peer_closed(self) -> bool:
        """Cheap, non-blocking: is this idle connection unfit to hand out?

        One ``poll`` call.  An idle connection normally has nothing to read; if it does, the
        bytes are read: push frames are dispatched (maintenance notifications arrive on idle
        connections), while EOF, an error, garbage or an unsolicited reply mean it is unfit
        (the last two also set ``out_of_step``, so the pool counts why it closed it).

        The poll uses one ``poll`` object shared by all the connections of a client (the
        watchdog's): a registration, a poll and an unregistration cost less than
        ``select.select``, and a poll object per connection would cost about 300 bytes of
        each idle connection.  It is written out here, on every hand-out's path.
        """
        if self._closed or self.broken:
            return True
        fd = self._fd
        if fd < 0:
            return False
        try:
            watchdog = self.watchdog
            if watchdog is None:
                readable = bool(select.select([fd], (), (), 0)[0])
            else:
                poller = watchdog.poller
                poller.register(fd, select.POLLIN)
                try:
                    readable = bool(poller.poll(0))
                finally:
                    poller.unregister(fd)
            if not readable:
                return False
            data = os.read(fd, _RECEIVE_SIZE)
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            self.broken = True
            return True
        if not data:
            self.broken = True
            return True
        try:
            self._reader().feed(data)
            self._settle()
        except ProtocolError as exc:
            self.out_of_step = True  # whatever they were, no command was owed those bytes
            self._violation(exc)
            return True
        return False

    # --- subscribed mode (pub/sub) ---------------------------------------------------------

    async def read_push(self, *, send: Sequence[Sequence[EncodableArg]] = ()) -> Any:
        """Subscribed mode: write ``send`` (if any), then return the next frame the server sends.

        For a connection that one task owns outside every pool (a pub/sub connection).  The
        server answers subscribe commands with push frames, so nothing is booked in
        ``owed_replies``: the caller matches answers itself.  Push frames are returned (not
        given to ``on_push``), and so are plain replies (``PONG``, error replies as values, with
        the configured password masked).
        No read timeout: it waits as long as the caller's cancel scope allows, and a cancel
        while waiting for bytes loses nothing (a later call returns the frame).
        """
        if self.broken or self._closed:
            raise ConnectionClosedError(f"connection {self.id} to {self.config.address} is closed")
        if send:
            await self._send(b"".join([encode_command(args) for args in send]), 0)
        frame = await self._read_reply(subscribed=True)
        return redact(frame, self.config.password) if isinstance(frame, Exception) else frame


def network_error(
    message: str, cause: BaseException, *, unsent: bool = False
) -> rex.ConnectionError:
    """A redis ``ConnectionError`` for an I/O failure, ``cause`` chained, marked unsent if
    ``unsent``."""
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


async def close_quietly(stream: trio.abc.Stream | trio.socket.SocketType) -> None:
    """Close a stream (as ``trio.aclose_forcefully``: no TLS goodbye) or a trio socket."""
    if isinstance(stream, trio.abc.Stream):
        await trio.aclose_forcefully(stream)
    else:
        stream.close()  # wakes any task waiting on it (ClosedResourceError)
        await trio.lowlevel.cancel_shielded_checkpoint()
