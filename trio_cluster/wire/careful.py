"""A pure-Python, incremental RESP2/RESP3 parser for the replies hiredis cannot be trusted with.

hiredis reads a RESP3 attribute (``|``) as if it were an ordinary aggregate (which shifts every
later reply by one) and refuses blob errors (``!``).
:class:`~trio_cluster.wire.protocol.RespParser` hands the stream to this parser whenever such a
type byte may be present, and takes it back once this parser is between replies again.

It keeps its place across reads (an explicit stack of open aggregates, never recursion), so
its cost is linear in the bytes received however they are split; it stops after a bounded
number of elements (:data:`YIELD`) so that its caller can let other tasks run; and it enforces
the reply size, element and depth limits and the shape rules (hashable map keys, push frames
only at the top level).  Elements are counted exactly, as :mod:`~trio_cluster.wire.budget`
defines them: every aggregate header reserves what it declares, so the count never runs behind
what is built.  Values are built exactly as hiredis builds them.
"""

from __future__ import annotations

from typing import Any, Final

import hiredis

from ..errors import (
    ProtocolError,
    ReplyShapeError,
    ReplyTooDeepError,
    ReplyTooLargeError,
    error_from_reply,
)
from .budget import AGGREGATE_COST, VALUE_COST, declared_cost

__all__ = ["NEED_DATA", "YIELD", "CarefulParser", "PushFrame"]

PushFrame = hiredis.PushNotification


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


#: No complete reply yet: feed more bytes.  (``False`` and ``None`` are real RESP3 replies.)
NEED_DATA: Final[Any] = _Sentinel("NEED_DATA")
#: Work remains but the slice is used up: let other tasks run, then ask again.
YIELD: Final[Any] = _Sentinel("YIELD")
_MORE: Final[Any] = _Sentinel("_MORE")  # the element did not complete the reply

_CRLF: Final = b"\r\n"
# Longest header or simple line accepted: real ones are far shorter, and without a cap a
# missing CRLF would buffer forever.
MAX_LINE: Final = 64 * 1024
# Elements built per call before returning YIELD: about a millisecond of work.
SLICE: Final = 2048
# Strings at least this long that are still arriving are collected as a list of chunks.
_BIG_BLOB: Final = 256 * 1024
# Fewest bytes one element can take on the wire (``_\r\n``): bounds what a count declares.
_MIN_ELEMENT: Final = 3

_SIMPLE: Final = frozenset(b"+-:_,#(")
_BLOBS: Final = frozenset(b"$=!")
_AGGREGATES: Final = frozenset(b"*~>%|")
_PAIRED: Final = frozenset(b"%|")
_ATTRIBUTE: Final = ord("|")
_PUSH: Final = ord(">")
_MAP: Final = ord("%")
_NAMES: Final = {
    ord("$"): "bulk string", ord("="): "verbatim string", ord("!"): "blob error",
    ord("*"): "array", ord("%"): "map", ord("~"): "set", ord(">"): "push", ord("|"): "attribute",
}  # fmt: skip


class _Open:
    """One aggregate still being filled."""

    __slots__ = ("items", "key", "kind", "remaining")

    def __init__(self, kind: int, count: int) -> None:
        self.kind = kind
        self.remaining = count * 2 if kind in _PAIRED else count
        self.items: Any = {} if kind in _PAIRED else []
        self.key: Any = NEED_DATA  # a map's key waiting for its value


def _number(line: bytes, what: str) -> int:
    if not line or not (line.isdigit() or (line[:1] == b"-" and line[1:].isdigit())):
        raise ProtocolError(f"bad {what} in reply: {line[:32]!r}")
    return int(line)


class CarefulParser:
    """Incremental parser: :meth:`feed` bytes, call :meth:`next_reply` until
    :data:`NEED_DATA` (or :data:`YIELD`: call again after letting other tasks run)."""

    __slots__ = (
        "_big",
        "_big_have",
        "_big_kind",
        "_big_length",
        "_buf",
        "_fed",
        "_max_bytes",
        "_max_depth",
        "_max_elements",
        "_pending_attributes",
        "_pos",
        "_reply_start",
        "_reserved",
        "_stack",
    )

    def __init__(self, *, max_bytes: int, max_depth: int, max_elements: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._stack: list[_Open] = []
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._max_elements = max_elements
        # The cost (see budget) of the reply being read once complete, as far as the headers
        # read so far declare it: the reply itself, plus what each aggregate header declares.
        self._reserved = VALUE_COST
        self._fed = 0  # bytes fed in all
        self._reply_start = 0  # where (in bytes fed in all) the reply being read began
        self._pending_attributes: dict[Any, Any] | None = None
        # A large string being collected (see _start_big).
        self._big: list[bytes] | None = None
        self._big_have = self._big_length = self._big_kind = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the server."""
        self._fed += len(data)
        big = self._big
        if big is not None:
            need = self._big_length + 2 - self._big_have
            if need > 0:
                piece = bytes(data[:need])
                big.append(piece)
                self._big_have += len(piece)
                data = data[need:]
        self._buf += data

    def discard(self) -> None:
        """Drop everything held (the stream is abandoned): emptied in place, so that a frame
        of a traceback that still sees this parser holds nothing large."""
        self._stack.clear()
        del self._buf[:]
        self._pos = 0
        self._big = self._pending_attributes = None

    @property
    def idle(self) -> bool:
        """Whether no byte is held: between replies, with nothing buffered."""
        return (
            self._pos >= len(self._buf)
            and not self._stack
            and self._pending_attributes is None
            and self._big is None
        )

    def frame_kind(self) -> int | None:
        """The type byte of the top-level reply being read (None if none has started)."""
        if self._stack:
            return self._stack[0].kind
        if self._big is not None:
            return self._big_kind
        return self._buf[self._pos] if self._pos < len(self._buf) else None

    def next_reply(self) -> Any:
        """The next complete reply, :data:`NEED_DATA`, or :data:`YIELD`."""
        buf = self._buf
        budget = SLICE
        while True:
            budget -= 1
            if budget < 0:
                return YIELD
            if self._big is not None:
                if self._big_have < self._big_length + 2:
                    return self._need_data()
                reply = self._attach(self._finish_big())
                if reply is not _MORE:
                    return reply
                continue
            pos = self._pos
            if pos >= len(buf):
                return self._need_data()
            kind = buf[pos]
            eol = buf.find(_CRLF, pos + 1, pos + MAX_LINE + 3)
            if eol < 0:
                if len(buf) - pos > MAX_LINE + 2:
                    raise ProtocolError("reply header or simple line too long")
                return self._need_data()
            line = bytes(buf[pos + 1 : eol])
            if kind in _SIMPLE:
                value = self._simple(kind, line)
                self._pos = eol + 2
            elif kind in _BLOBS:
                length = _number(line, "blob length")
                if length < 0:
                    if length != -1 or kind != ord("$"):
                        raise ProtocolError(
                            f"bad {_NAMES[kind]} length {length} in reply: only a bulk string "
                            "may have a negative length, and only -1 (a null)"
                        )
                    value = None
                    self._pos = eol + 2
                else:
                    if length > self._max_bytes:
                        raise ReplyTooLargeError(
                            f"reply declares a {length}-byte string, "
                            f"more than max_reply_bytes={self._max_bytes}"
                        )
                    end = eol + 2 + length
                    if end + 2 > len(buf):
                        if length >= _BIG_BLOB:
                            self._start_big(kind, length, eol + 2)
                        return self._need_data()
                    if buf[end : end + 2] != _CRLF:
                        raise ProtocolError("blob not terminated by CRLF")
                    with memoryview(buf) as view:  # one copy, not two
                        value = self._blob(kind, bytes(view[eol + 2 : end]))
                    self._pos = end + 2
            elif kind in _AGGREGATES:
                count = _number(line, "aggregate length")
                self._pos = eol + 2
                if count < 0:
                    if count != -1 or kind != ord("*"):
                        raise ProtocolError(
                            f"bad {_NAMES[kind]} length {count} in reply: only an array may "
                            "have a negative length, and only -1 (a null)"
                        )
                    value = None
                elif self._open(kind, count):
                    continue
                else:
                    value = {} if kind == _MAP else PushFrame([]) if kind == _PUSH else []
            else:
                raise ProtocolError(f"invalid reply type byte {bytes([kind])!r}")
            reply = self._attach(value)
            if reply is not _MORE:
                return reply

    def _open(self, kind: int, count: int) -> bool:
        """An aggregate header declaring ``count`` elements: check it against the limits and,
        unless it is empty, open it (True: its elements follow; False: it is an empty array,
        map, set or push, complete already)."""
        # Its own first unit was reserved by its parent (or by the reply), except an
        # attribute's: an attribute is not an element of anything.
        cost = declared_cost(kind, count)
        self._reserved += cost if kind == _ATTRIBUTE else cost - VALUE_COST
        if self._reserved > self._max_elements:
            raise ReplyTooLargeError(
                f"reply would hold more than max_reply_elements={self._max_elements} "
                f"elements (an aggregate counts {AGGREGATE_COST}, any other value 1): "
                f"{_NAMES[kind]} header declaring {count}"
            )
        stack = self._stack
        if kind == _PUSH and stack:
            raise ReplyShapeError("a push frame inside an aggregate")
        if not count:
            return kind == _ATTRIBUTE  # an empty attribute: the element it describes follows
        if count * _MIN_ELEMENT > self._max_bytes:
            raise ReplyTooLargeError(
                f"reply declares {count} elements, "
                f"more than max_reply_bytes={self._max_bytes} can hold"
            )
        stack.append(_Open(kind, count))
        if len(stack) > self._max_depth:
            raise ReplyTooDeepError(f"reply nested deeper than max_reply_depth={self._max_depth}")
        return True

    def _attach(self, value: Any) -> Any:
        """One element is complete: put it in its aggregate, closing those it completes.
        Returns the top-level reply once it is complete, else ``_MORE``."""
        stack = self._stack
        while stack:
            top = stack[-1]
            if type(top.items) is dict:
                if top.key is NEED_DATA:
                    try:
                        hash(value)
                    except TypeError:
                        raise ReplyShapeError(
                            f"a map key of unhashable type {type(value).__name__}"
                        ) from None
                    top.key = value
                else:
                    top.items[top.key] = value
                    top.key = NEED_DATA
            else:
                top.items.append(value)
            top.remaining -= 1
            if top.remaining:
                return _MORE
            stack.pop()
            if top.kind == _ATTRIBUTE:
                # Not an element: the element it describes follows.  Attributes are dropped,
                # as RESP3 allows (nobody reads them); a top-level one is remembered until its
                # reply ends, so the parser is not idle in between.
                if not stack:
                    self._pending_attributes = top.items
                return _MORE
            value = PushFrame(top.items) if top.kind == _PUSH else top.items
        self._pending_attributes = None
        self._reply_start = self._fed - (len(self._buf) - self._pos)
        self._reserved = VALUE_COST
        return value

    def _start_big(self, kind: int, length: int, start: int) -> None:
        """A large string whose bytes have not all come: collect them in a list of chunks
        (joined once at the end) instead of growing the buffer (a copy per growth)."""
        buf = self._buf
        with memoryview(buf) as view:
            self._big = [bytes(view[start:])]
        self._big_have = len(buf) - start
        self._big_length = length
        self._big_kind = kind
        del buf[:]
        self._pos = 0

    def _finish_big(self) -> Any:
        parts = self._big
        assert parts is not None
        self._big = None
        tail = (parts[-2][-2:] if len(parts) > 1 else b"") + parts[-1][-2:]
        if tail[-2:] != _CRLF:
            raise ProtocolError("blob not terminated by CRLF")
        cut = 2
        while cut:  # drop the CRLF from the last chunks, then join once
            last = parts.pop()
            if len(last) > cut:
                parts.append(last[:-cut])
                cut = 0
            else:
                cut -= len(last)
        return self._blob(self._big_kind, b"".join(parts))

    def _need_data(self) -> Any:
        # Checked here, once the replies completed by the last bytes fed are out.
        if self._fed - self._reply_start > self._max_bytes:
            raise ReplyTooLargeError(
                f"reply larger than max_reply_bytes={self._max_bytes} (still incomplete)"
            )
        self._compact()
        return NEED_DATA

    def _compact(self) -> None:
        # Drop consumed bytes once they are most of the buffer: amortised linear.
        if self._pos > 65536 and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0

    @staticmethod
    def _simple(kind: int, line: bytes) -> Any:
        if kind == ord("+"):
            return line
        if kind == ord("-"):
            return error_from_reply(line.decode("utf-8", "replace"))
        if kind == ord(":"):
            return _number(line, "integer")
        if kind == ord("_"):
            if line:
                raise ProtocolError(f"null with a payload: {line[:32]!r}")
            return None
        if kind == ord(","):
            try:
                return float(line)
            except ValueError:
                raise ProtocolError(f"bad double in reply: {line[:32]!r}") from None
        if kind == ord("#"):
            if line not in (b"t", b"f"):
                raise ProtocolError(f"bad boolean in reply: {line[:32]!r}")
            return line == b"t"
        _number(line, "big number")  # validated, but returned as digits, as hiredis does
        return line

    @staticmethod
    def _blob(kind: int, data: bytes) -> Any:
        if kind == ord("="):
            if len(data) < 4 or data[3:4] != b":":
                raise ProtocolError(f"bad verbatim string: {data[:32]!r}")
            return data[4:]
        if kind == ord("!"):
            return error_from_reply(data.decode("utf-8", "replace"))
        return data
