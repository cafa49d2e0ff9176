"""RESP2/RESP3 encoding and parsing, sans-IO: no sockets, no trio, only bytes in and replies out.

Parsing is incremental and linear in the bytes received.  The hot path is hiredis's own
incremental ``Reader``: every received chunk is fed to it once, and it keeps its place across
reads.  hiredis cannot be trusted with two RESP3 types: it reads an attribute (``|``) as an
ordinary aggregate (every later reply would shift by one) and refuses blob errors (``!``).  So
each chunk is first checked, at C speed, for the type bytes that need care (one
``bytes.translate`` pass; a byte matters only right after a CRLF).  When an attribute or a blob
error may start, the bytes of the replies in progress go to
:class:`~trio_cluster.wire.careful.CarefulParser` (pure Python, also incremental), which gives the
stream back to hiredis once it is between replies.

Limits, enforced on both paths: ``max_bytes`` bounds what one reply may declare or accumulate,
``max_elements`` what it may hold (counted as :mod:`~trio_cluster.wire.budget` defines it: the
careful parser counts exactly, the hot path keeps upper bounds and hands the stream over before
they could be passed), ``max_depth`` the nesting of aggregates and attributes; a push frame is
allowed only at the top level and map keys must be hashable.  Every violation raises a subclass
of :class:`~trio_cluster.errors.ProtocolError`, after which the parser is poisoned (and lets go
of what it held): the connection that owns it must be closed.  A length hiredis refuses as out
of range (``$-5``) is read again by the careful parser, which names it.  Like hiredis (and so
redis-py), the hot path does not check the CRLF after a bulk string's payload, and reads a
count of -1 of any aggregate as a null.

A large top-level map (``HGETALL`` of 10,000 fields or more) is fed to hiredis as an array and
made a ``dict`` when complete: hiredis builds maps with a Python method call per entry.

Reply values follow hiredis: bulk and simple strings are ``bytes``; integers ``int``; doubles
``float``; nulls ``None``; booleans ``bool``; big numbers ``bytes`` (their decimal digits);
verbatim strings ``bytes`` without the ``txt:`` prefix; maps ``dict``; sets ``list``; push frames
:class:`PushFrame` (a ``list``); error replies are *returned* as exception instances (see
:func:`~trio_cluster.errors.error_from_reply`) so that errors nested in arrays stay values.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any, Final

import hiredis

from ..config import (
    DEFAULT_MAX_REPLY_BYTES,
    DEFAULT_MAX_REPLY_DEPTH,
    DEFAULT_MAX_REPLY_ELEMENTS,
    MIN_MAX_REPLY_BYTES,
    MIN_MAX_REPLY_ELEMENTS,
)
from ..errors import (
    ArgumentTypeError,
    ProtocolError,
    ReplyShapeError,
    ReplyTooDeepError,
    ReplyTooLargeError,
    error_from_reply,
)
from .budget import HotBudget, declared_cost
from .careful import NEED_DATA, YIELD, CarefulParser, PushFrame

__all__ = [
    "NEED_DATA",
    "YIELD",
    "EncodableArg",
    "PushFrame",
    "RespParser",
    "encode_command",
    "is_push",
]

EncodableArg = bytes | str | int | float | memoryview

_ALLOWED_ARG_TYPES = (bytes, str, int, float, memoryview)


def encode_command(args: Sequence[EncodableArg]) -> bytes:
    """Encode one command (name and arguments) as a RESP array of bulk strings.

    Raises :class:`~trio_cluster.errors.ArgumentTypeError` (a ``TypeError`` and a redis-py
    ``DataError``) naming the position and type of the first argument that is not bytes,
    str, int, float or memoryview (``bool`` is refused: its meaning as a Redis argument is
    ambiguous), and ``ValueError`` for an empty command.
    """
    if not args:
        raise ValueError("cannot encode an empty command")
    try:
        return hiredis.pack_command(tuple(args))  # type: ignore[arg-type,no-any-return]
    except TypeError:
        _raise_for_bad_argument(args)
        raise


def _raise_for_bad_argument(args: Sequence[object]) -> None:
    for position, arg in enumerate(args):
        if isinstance(arg, bool) or not isinstance(arg, _ALLOWED_ARG_TYPES):
            raise ArgumentTypeError(
                f"command argument {position} has type {type(arg).__name__}; "
                "expected bytes, str, int, float or memoryview"
            )


def is_push(reply: object) -> bool:
    """Whether a reply is an out-of-band push frame (RESP3 ``>``), not a command's answer."""
    return type(reply) is PushFrame


# --- parsing ------------------------------------------------------------------------------------

# The type bytes that decide how a chunk is parsed, found at C speed.  A byte only matters at a
# type position (first byte of the stream, or right after a CRLF); payload bytes elsewhere are
# harmless.  ``|`` and ``!`` send the stream to the careful parser; the aggregate bytes bound
# how deep a reply can nest and whether a push frame can sit inside an aggregate.
_WATCHED: Final = b"|!*%~>"
_NOT_WATCHED: Final = bytes(b for b in range(256) if b not in _WATCHED)
_AGGREGATE_BYTES: Final = b"*%~>"
# Below this size a chunk is searched for the watched bytes in one ``translate`` pass; above
# it, one ``memchr`` per watched byte is several times faster.
_SMALL_CHUNK: Final = 2048
_AGGREGATE_TYPES: Final = (list, dict, PushFrame)
_AGGREGATE_SET: Final = frozenset(_AGGREGATE_TYPES)
# Replies completed inside the window while hiredis never went idle (a busy pipelined or
# subscribed stream): past this many buffered bytes the window is handed to the careful parser,
# which keeps no window, so memory stays bounded.
_MAX_WINDOW = 8 * 1024 * 1024
# Past this many bytes in the window, a large incomplete item held by hiredis (a big string)
# moves the stream to the careful parser: one copy of the bytes instead of two, and the length
# of a big string nested in an aggregate is checked before its bytes are buffered.
_BIG_ITEM = 1024 * 1024
# How far into a reply its header is looked for (a length of up to 20 digits fits).
_HEADER_PROBE: Final = 32
_BLOB_HEADERS: Final = frozenset(b"$=!")
_COUNT_HEADERS: Final = frozenset(b"*%~>|")
_MAP: Final = ord("%")
_PUSH: Final = ord(">")


class RespParser:
    """Incremental RESP2/RESP3 reply parser.

    Feed bytes with :meth:`feed`; call :meth:`next_reply` until it returns :data:`NEED_DATA`
    (it returns :data:`YIELD` when a large reply has used up its slice: let other tasks run,
    then call again).  Error replies come back as exception instances, push frames as
    :class:`PushFrame`.  Any :class:`~trio_cluster.errors.ProtocolError` poisons the parser
    (and frees what it held).
    """

    __slots__ = (
        "_aggregates",
        "_budget",
        "_budgeted",
        "_careful",
        "_floor_chunk",
        "_held",
        "_map_pairs",
        "_max_bytes",
        "_max_depth",
        "_max_elements",
        "_poisoned",
        "_pushes",
        "_reader",
        "_reply_floor",
        "_returned",
        "_window",
        "_window_bytes",
    )

    def __init__(
        self,
        *,
        max_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        max_depth: int = DEFAULT_MAX_REPLY_DEPTH,
        max_elements: int = DEFAULT_MAX_REPLY_ELEMENTS,
    ) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._max_elements = max_elements
        self._reader: Any = _new_reader()
        self._careful: CarefulParser | None = None
        # Chunks fed to hiredis since it was last idle (the window starts on a reply boundary),
        # kept so that the careful parser can take over mid-stream.
        self._window: list[bytes] = []
        self._window_bytes = 0
        self._returned = 0  # replies hiredis returned since the window started
        self._reply_floor = 0  # window offset before which the reply in progress cannot start
        self._floor_chunk = 0  # the window chunk that starts at that offset
        self._aggregates = 0  # aggregate type bytes at type positions in the window
        self._pushes = False  # whether a push type byte is at a type position in the window
        self._held = False  # whether hiredis holds bytes not yet part of a returned reply
        self._map_pairs = False  # whether the window's first reply is a map fed as an array
        self._budget = HotBudget(max_elements)
        self._budgeted = False  # whether the budget counted anything in this window
        self._poisoned = False
        if max_elements < MIN_MAX_REPLY_ELEMENTS or max_bytes < MIN_MAX_REPLY_BYTES:
            # The hot path's cheap checks rely on the bounds' floors (a header of fewer than
            # five digits cannot break them); below them, only the careful parser is exact.
            self._careful = self._new_careful()

    @property
    def idle(self) -> bool:
        """Whether no received byte is held back (no reply in progress, nothing buffered)."""
        careful = self._careful
        return careful.idle if careful is not None else not self._held

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the server."""
        if type(data) is not bytes:
            data = bytes(data)
        if not data:
            return
        if self._careful is not None or self._poisoned:
            self._feed_careful(data)
            return
        window = self._window
        skip = 0
        if not self._held:
            # A reply boundary: the window starts afresh.
            window.clear()
            self._window_bytes = self._returned = self._reply_floor = self._floor_chunk = 0
            self._aggregates = 0
            self._pushes = self._map_pairs = False
            if self._budgeted:
                self._budget.reset()
                self._budgeted = False
            self._held = True
        window.append(data)
        before = self._window_bytes
        self._window_bytes = before + len(data)
        try:
            if before < _HEADER_PROBE and not self._returned:
                # The first reply's header is in the first bytes of the window: a length or
                # count of five digits or more is checked before anything is built (fewer
                # cannot break either bound: both have a floor).
                head = data if not before else b"".join(window)
                if head.find(b"\r\n", 0, 7) < 0:
                    self._check_header(head)
                    if head is data and data[0] == _MAP:
                        skip = self._map_as_array(data)
            if len(data) < _SMALL_CHUNK:
                watched = data.translate(None, _NOT_WATCHED)  # one pass, cheapest when small
            else:
                watched = bytes([kind for kind in _WATCHED if kind in data])  # memchr each
            nested = b""
            if watched:
                tail = (b"\r\n" + b"".join(window[-3:-1]))[-2:]
                found = self._classify(data, watched, tail + data[:2])
                if found is None:
                    self._to_careful()
                    return
                nested = found
            # A one-read reply with no nested aggregate and fewer bytes than any reply needs
            # to reach max_elements (the common case) needs no accounting.
            if (nested or before or len(data) > self._budget.quiet_bytes) and self._over_budget(
                nested
            ):
                # It may hold more than max_reply_elements: the careful parser counts exactly.
                self._to_careful()
                return
        except ProtocolError:
            self._poison()
            raise
        if skip:
            self._reader.feed(data, skip)
        else:
            self._reader.feed(data)

    def _over_budget(self, nested: bytes) -> bool:
        """Account for the chunk just added to the window (see :class:`HotBudget`): whether
        the reply in progress may now hold more than ``max_elements``."""
        self._budgeted = True
        budget = self._budget
        window = self._window
        if nested or len(window) > 1:
            budget.scan(window, nested)
        reply_bytes = self._window_bytes - self._reply_floor
        return (reply_bytes > budget.quiet_bytes or bool(budget.declared)) and budget.over(
            window, self._floor_chunk, reply_bytes, self._aggregates, not self._returned
        )

    def _map_as_array(self, data: bytes) -> int:
        """A large top-level map (``HGETALL``, ``CONFIG GET``: a count of five digits or more)
        is fed to hiredis as an array of twice the count and made a ``dict`` at C speed when
        complete: hiredis builds a map with a Python method call per entry, twice as slow.
        Feeds the array header and returns where the entries start in ``data`` (0: left to
        hiredis as it is)."""
        eol = data.find(b"\r\n", 1, _HEADER_PROBE)
        text = data[1:eol]
        if eol < 0 or not text.isdigit():
            return 0
        self._reader.feed(b"*%d\r\n" % (int(text) * 2))
        self._map_pairs = True
        return eol + 2

    def _feed_careful(self, data: bytes) -> None:
        if self._poisoned:
            return  # nothing will be parsed again: next_reply raises
        assert self._careful is not None
        try:
            self._careful.feed(data)
        except ProtocolError:
            self._poison()
            raise

    def _classify(self, data: bytes, watched: bytes, edge: bytes) -> bytes | None:
        """Count the watched bytes of ``data`` that sit at type positions.  Returns None if the
        careful parser is needed (an attribute or a blob error may start here), else the
        aggregate type bytes found inside ``data`` (after a CRLF of its own).

        ``edge`` is the two bytes before ``data`` and its first two: a CRLF split by the read
        boundary still counts.
        """
        for kind in b"|!":
            if kind in watched:
                pattern = b"\r\n" + bytes([kind])
                if pattern in data or pattern in edge[:3] or pattern in edge[1:]:
                    return None
        nested = []
        for kind in _AGGREGATE_BYTES:
            if kind in watched:
                pattern = b"\r\n" + bytes([kind])
                inside = data.count(pattern)
                found = inside + (edge[:3] == pattern) + (edge[1:] == pattern)
                self._aggregates += found
                if inside:
                    nested.append(kind)
                if found and kind == _PUSH:
                    self._pushes = True
        return bytes(nested) if nested else b""

    def _check_header(self, data: bytes) -> None:
        """A reply starts at ``data[0]``: refuse at once a length beyond ``max_bytes`` or a
        count beyond ``max_elements``."""
        kind = data[0]
        if kind not in _BLOB_HEADERS and kind not in _COUNT_HEADERS:
            return
        eol = data.find(b"\r\n", 1, 64)
        text = data[1:eol] if eol > 0 else b""
        if not text.isdigit():
            return  # incomplete or negative: the parser proper decides
        length = int(text)
        if kind in _COUNT_HEADERS:
            if declared_cost(kind, length) > self._max_elements:
                raise ReplyTooLargeError(
                    f"reply declares {length} elements, more than "
                    f"max_reply_elements={self._max_elements} allows"
                )
            length *= 3  # the fewest bytes that many elements can take
        if length > self._max_bytes:
            raise ReplyTooLargeError(
                f"reply declares {int(text)} {'bytes' if kind in _BLOB_HEADERS else 'elements'}"
                f", more than max_reply_bytes={self._max_bytes} allows"
            )

    def _new_careful(self) -> CarefulParser:
        return CarefulParser(
            max_bytes=self._max_bytes, max_depth=self._max_depth, max_elements=self._max_elements
        )

    def _to_careful(self) -> None:
        """Hand the window to the careful parser: it re-reads the replies hiredis already
        returned (discarding them) and carries on from there."""
        careful = self._new_careful()
        skip = self._returned
        for chunk in self._window:
            careful.feed(chunk)
            while skip:
                reply = careful.next_reply()
                if reply is NEED_DATA:
                    break
                if reply is not YIELD:
                    skip -= 1
        self._careful = careful
        self._reader = None
        self._window = []
        self._map_pairs = False

    def _to_hiredis(self) -> None:
        self._careful = None
        self._reader = _new_reader()
        self._held = False

    def _poison(self) -> None:
        """The stream broke the protocol: nothing will be parsed again, so let go of what was
        held (a refused reply's partial objects) now, not when the connection goes, and in
        place: the frames of the exception's traceback may still see these containers."""
        self._poisoned = True
        if self._careful is not None:
            self._careful.discard()
        self._careful = self._reader = None
        self._window.clear()

    def held_frame_is_push(self) -> bool:
        """Whether the bytes held back (a reply not yet complete) begin a push frame.

        Settles what the bytes after a connection's last owed reply are: a push frame may
        legitimately arrive there, anything else is unsolicited.
        """
        if self._poisoned:
            return False
        if self._careful is None:
            if not self._pushes:
                return False  # no push type byte anywhere in the window
            try:
                self._to_careful()
            except ProtocolError:
                self._poison()
                raise
        assert self._careful is not None
        return self._careful.frame_kind() == _PUSH

    def next_reply(self) -> Any:
        """Return the next complete reply, :data:`NEED_DATA` or :data:`YIELD`.

        Raises :class:`~trio_cluster.errors.ProtocolError` (or a subclass naming the
        violation) if the stream is corrupt or breaks a limit; from then on every call raises.
        """
        if self._careful is not None or self._poisoned:
            return self._next_careful()
        reader = self._reader
        try:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                if "nesting" in str(exc):
                    raise ReplyTooDeepError(
                        f"reply nested deeper than max_reply_depth={self._max_depth}"
                    ) from exc
                if "out of range" in str(exc):
                    # A length hiredis cannot take (negative but not -1, or a count of 2**32
                    # or more): the careful parser reads the window again and names it.
                    self._to_careful()
                    return self._next_careful()
                raise ProtocolError(f"corrupt reply from server: {exc}") from exc
            except TypeError as exc:
                raise ReplyShapeError(f"a map key of unhashable type: {exc}") from exc
            if reply is NEED_DATA:
                if self._window_bytes > _BIG_ITEM and reader.len() > _BIG_ITEM // 2:
                    # hiredis holds a large incomplete item (it keeps nothing else), so the
                    # window and hiredis hold it twice: the careful parser, cheap on so few
                    # elements, keeps one copy and reads every nested length header.
                    self._to_careful()
                    return self._next_careful()
                if self._held and self._window_bytes - self._reply_floor > self._max_bytes:
                    if not self._returned:  # the window starts where this reply starts
                        raise ReplyTooLargeError(
                            f"reply larger than max_reply_bytes={self._max_bytes}"
                            " (still incomplete)"
                        )
                    # Where this reply starts is only known to within one read: let the
                    # careful parser, which counts exactly, decide (rare: a reply near the
                    # bound behind others in one stream).
                    self._to_careful()
                    return self._next_careful()
                return NEED_DATA
            if self._map_pairs and not self._returned:
                reply = _pairs_to_map(reply)
                self._map_pairs = False
            if self._aggregates > 1 and (self._pushes or self._aggregates > self._max_depth):
                _check_shape(reply, self._aggregates, self._pushes, self._max_depth)
            if reader.has_data():
                # The next reply started in the last chunk.
                self._returned += 1
                self._reply_floor = self._window_bytes - len(self._window[-1])
                self._floor_chunk = len(self._window) - 1
                if self._budgeted:
                    self._budget.reply_moved(self._window)
                if self._window_bytes > _MAX_WINDOW:
                    self._to_careful()
            else:
                self._held = False
            return reply
        except ProtocolError:
            del reader  # this frame outlives the call in the traceback: not the reader
            self._poison()
            raise

    def _next_careful(self) -> Any:
        if self._poisoned:
            raise ProtocolError("the reply stream was corrupt earlier; the connection is unusable")
        careful = self._careful
        assert careful is not None
        try:
            reply = careful.next_reply()
        except ProtocolError:
            self._poison()
            raise
        if reply is YIELD:
            return YIELD
        if careful.idle:
            self._to_hiredis()
        return reply


def _pairs_to_map(flat: list[Any]) -> dict[Any, Any]:
    """A map hiredis read as an array of keys and values (see ``RespParser._map_as_array``);
    a repeated key keeps its last value, as the careful parser does."""
    pairs = iter(flat)
    try:
        return dict(zip(pairs, pairs, strict=True))
    except TypeError as exc:
        raise ReplyShapeError(f"a map key of unhashable type: {exc}") from None


def _check_shape(reply: Any, aggregates: int, pushes: bool, max_depth: int) -> None:
    """Depth and push placement of a reply hiredis built, level by level: a level that holds
    no aggregate is checked at C speed (``set(map(type, ...))``).  ``aggregates`` bounds how
    many aggregates it holds (type bytes counted in the window), ``pushes`` says whether a
    push type byte was among them."""
    if type(reply) not in _AGGREGATE_TYPES:
        return
    level = [reply]
    depth = 1
    # No more aggregates than type bytes counted in the window: once the levels seen hold
    # them all but ``max_depth - depth``, no deeper level can break the limit.
    unseen = aggregates - 1
    while True:
        if not pushes and depth + unseen <= max_depth:
            return
        if dict in set(map(type, level)):
            items = (item.values() if type(item) is dict else item for item in level)
            children = list(chain.from_iterable(items))
        else:
            children = list(chain.from_iterable(level))
        types = set(map(type, children))
        if PushFrame in types:
            raise ReplyShapeError("a push frame inside an aggregate")
        if list not in types and dict not in types:
            return
        depth += 1
        if depth > max_depth:
            raise ReplyTooDeepError(f"reply nested deeper than max_reply_depth={max_depth}")
        if types <= _AGGREGATE_SET:
            level = children  # all aggregates (pairs, entries): nothing to filter
        else:
            level = [item for item in children if type(item) in _AGGREGATE_TYPES]
        unseen -= len(level)


def _new_reader() -> Any:
    return hiredis.Reader(replyError=error_from_reply, notEnoughData=NEED_DATA)
