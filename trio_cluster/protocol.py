"""RESP2/RESP3 encoding and parsing, sans-IO: no sockets, no trio, only bytes in and replies out.

Parsing is split in two steps.  A small scanner finds where each top-level reply ends (it only
reads type bytes and lengths), and hands complete replies to ``hiredis`` to build the Python
objects.  Framing first costs a little, and buys two things hiredis alone cannot give:

* hiredis returns a RESP3 *attribute* (``|``) as if it were an ordinary array, which would shift
  every later reply by one; and it rejects blob errors (``!``).  The scanner sees those type
  bytes, and such replies go to a pure-Python parser instead.
* a corrupt stream is always caught at a frame boundary we know, so the parser either returns a
  reply, asks for more data, or raises :class:`~trio_cluster.errors.ProtocolError`.  After a
  protocol error the parser is poisoned: the connection that owns it must be closed.

Reply values follow hiredis: bulk and simple strings are ``bytes``; integers ``int``; doubles
``float``; nulls ``None``; booleans ``bool``; big numbers ``bytes`` (their decimal digits);
verbatim strings ``bytes`` without the ``txt:`` prefix; maps ``dict``; sets ``list``; push frames
:class:`PushFrame` (a ``list``); error replies are *returned* as exception instances (see
:func:`~trio_cluster.errors.error_from_reply`) so that errors nested in arrays stay values.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

import hiredis

from .errors import ArgumentTypeError, ProtocolError, error_from_reply

__all__ = [
    "NEED_DATA",
    "EncodableArg",
    "PushFrame",
    "RespParser",
    "encode_command",
    "encode_commands",
    "is_push",
]

EncodableArg = bytes | str | int | float | memoryview

#: The push frame type.  hiredis builds these for ``>`` replies; the fallback parser too.
PushFrame = hiredis.PushNotification


class _NeedData:
    """Sentinel type: the buffer holds no complete reply yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`RespParser.next_reply` when more bytes are needed.  (``False`` and
#: ``None`` are real RESP3 replies, so they cannot serve as the sentinel.)
NEED_DATA: Final = _NeedData()

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


def encode_commands(commands: Iterable[Sequence[EncodableArg]]) -> bytes:
    """Encode several commands back to back (a pipeline), in order."""
    return b"".join([encode_command(args) for args in commands])


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


# --- framing -----------------------------------------------------------------------------------

_CRLF: Final = b"\r\n"
# Longest header or simple line we accept before deciding the stream is garbage.  Real simple
# replies and length headers are far shorter; without a cap a missing CRLF would buffer forever.
_MAX_LINE: Final = 64 * 1024
# Deepest aggregate nesting accepted (real replies nest a handful of levels).
_MAX_DEPTH: Final = 64

_LINE_TYPES: Final = frozenset(b"+-:_,#(")
_BLOB_TYPES: Final = frozenset(b"$=!")
_AGGREGATE_TYPES: Final = frozenset(b"*~>%|")
_PAIRED_TYPES: Final = frozenset(b"%|")
# Types hiredis cannot be trusted with: attributes (it returns them as arrays) and blob errors.
_EXOTIC_TYPES: Final = frozenset(b"|!")
_ATTRIBUTE: Final = ord("|")
_NULLABLE_BLOB: Final = ord("$")
_NULLABLE_ARRAY: Final = ord("*")


def _length(buf: bytearray, start: int, end: int) -> int:
    text = bytes(buf[start:end])
    if not text or not (text.isdigit() or (text[:1] == b"-" and text[1:].isdigit())):
        raise ProtocolError(f"bad length in reply header: {text[:32]!r}")
    return int(text)


def _scan_frame(buf: bytearray, pos: int) -> tuple[int, bool]:
    """Find the end of the complete top-level reply starting at ``pos``.

    Returns ``(end, exotic)``: ``end`` is -1 when the reply is incomplete, and ``exotic`` says
    whether the reply holds a type byte hiredis mishandles.  Raises ProtocolError on garbage.
    Iterative, so hostile nesting cannot exhaust the Python stack.
    """
    size = len(buf)
    remaining: list[int] = []  # elements still owed by each open aggregate, innermost last
    is_attribute: list[bool] = []  # whether that aggregate is an attribute map
    exotic = False
    while True:
        if pos >= size:
            return -1, exotic
        kind = buf[pos]
        eol = buf.find(_CRLF, pos + 1, pos + 1 + _MAX_LINE)
        if eol < 0:
            if size - pos > _MAX_LINE:
                raise ProtocolError("reply header or simple line too long")
            return -1, exotic
        if kind in _LINE_TYPES:
            pos = eol + 2
        elif kind in _BLOB_TYPES:
            length = _length(buf, pos + 1, eol)
            exotic = exotic or kind in _EXOTIC_TYPES
            if length < 0:
                if length != -1 or kind != _NULLABLE_BLOB:
                    raise ProtocolError(f"bad blob length {length}")
                pos = eol + 2
            else:
                end = eol + 2 + length
                if end + 2 > size:
                    return -1, exotic
                if buf[end : end + 2] != _CRLF:
                    raise ProtocolError("blob not terminated by CRLF")
                pos = end + 2
        elif kind in _AGGREGATE_TYPES:
            count = _length(buf, pos + 1, eol)
            pos = eol + 2
            if count < -1 or (count == -1 and kind != _NULLABLE_ARRAY):
                raise ProtocolError(f"bad aggregate length {count}")
            if count > 0:
                remaining.append(count * 2 if kind in _PAIRED_TYPES else count)
                is_attribute.append(kind == _ATTRIBUTE)
                exotic = exotic or kind == _ATTRIBUTE
                if len(remaining) > _MAX_DEPTH:
                    raise ProtocolError("reply nested too deeply")
                continue
            if kind == _ATTRIBUTE:
                continue  # an empty attribute map: the element it describes still follows
        else:
            raise ProtocolError(f"invalid reply type byte {bytes([kind])!r}")
        # One element is complete: close every aggregate it completes.
        while remaining:
            remaining[-1] -= 1
            if remaining[-1]:
                break
            remaining.pop()
            if is_attribute.pop():
                break  # a finished attribute is not an element: what it describes follows
        else:
            return pos, exotic


# --- the fallback parser for replies hiredis cannot build ---------------------------------------


class _SlowParser:
    """Builds one complete, already-framed reply in pure Python (attributes, blob errors)."""

    def __init__(self, buf: bytearray, pos: int) -> None:
        self.buf = buf
        self.pos = pos
        self.attributes: dict[Any, Any] | None = None

    def _line(self) -> bytes:
        eol = self.buf.find(_CRLF, self.pos)
        line = bytes(self.buf[self.pos + 1 : eol])
        self.pos = eol + 2
        return line

    def parse(self, depth: int = 0) -> Any:
        kind = chr(self.buf[self.pos])
        line = self._line()
        try:
            return self._parse(kind, line, depth)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"bad {kind!r} reply: {line[:32]!r}") from exc

    def _parse(self, kind: str, line: bytes, depth: int) -> Any:
        if kind == "+":
            return line
        if kind == "-":
            return error_from_reply(line.decode("utf-8", "replace"))
        if kind == ":":
            return int(line)
        if kind == "_":
            if line:
                raise ValueError("null with payload")
            return None
        if kind == ",":
            return float(line)
        if kind == "#":
            if line not in (b"t", b"f"):
                raise ValueError("bad boolean")
            return line == b"t"
        if kind == "(":
            int(line)  # validate, but return digits as hiredis does
            return line
        if kind in "$=!":
            length = int(line)
            if length == -1:
                return None
            data = bytes(self.buf[self.pos : self.pos + length])
            self.pos += length + 2
            if kind == "=":
                return data[4:]
            if kind == "!":
                return error_from_reply(data.decode("utf-8", "replace"))
            return data
        if depth >= _MAX_DEPTH:
            raise ProtocolError("reply nested too deeply")
        count = int(line)
        if kind == "*" and count == -1:
            return None
        if kind in "%|":
            mapping = {}
            for _ in range(count):
                key = self.parse(depth + 1)
                mapping[_hashable(key)] = self.parse(depth + 1)
            if kind == "|":
                # Attributes describe the reply that follows.  Top-level ones are kept for
                # the caller; nested ones are dropped, as RESP3 allows a client to do.
                if depth == 0:
                    self.attributes = mapping
                return self.parse(depth)
            return mapping
        items = [self.parse(depth + 1) for _ in range(count)]
        return PushFrame(items) if kind == ">" else items


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        return tuple((k, _hashable(v)) for k, v in key.items())
    return key


# --- the parser ---------------------------------------------------------------------------------


class RespParser:
    """Incremental RESP2/RESP3 reply parser.

    Feed bytes with :meth:`feed`; call :meth:`next_reply` until it returns :data:`NEED_DATA`.
    Error replies come back as exception instances, push frames as :class:`PushFrame`.
    """

    __slots__ = ("_buf", "_poisoned", "_pos", "_reader", "last_attributes")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._reader = hiredis.Reader(replyError=error_from_reply)
        self._poisoned = False
        #: The attribute map (RESP3 ``|``) that preceded the last reply returned, if any.
        self.last_attributes: dict[Any, Any] | None = None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the server."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """How many received bytes are not yet part of a returned reply."""
        return len(self._buf) - self._pos

    def next_reply(self) -> Any:
        """Return the next complete reply, or :data:`NEED_DATA`.

        Raises :class:`~trio_cluster.errors.ProtocolError` if the stream is corrupt; from then
        on every call raises again (the stream cannot be resynchronised).
        """
        if self._poisoned:
            raise ProtocolError("the reply stream was corrupt earlier; the connection is unusable")
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            return NEED_DATA
        try:
            end, exotic = _scan_frame(buf, pos)
            if end < 0:
                return NEED_DATA
            if exotic:
                slow = _SlowParser(buf, pos)
                reply = slow.parse()
                self.last_attributes = slow.attributes
            else:
                self._reader.feed(buf, pos, end - pos)  # type: ignore[arg-type]
                reply = self._reader.gets()
                self.last_attributes = None
        except ProtocolError:
            self._poisoned = True
            raise
        except (hiredis.ProtocolError, ValueError) as exc:
            self._poisoned = True
            raise ProtocolError(f"corrupt reply from server: {exc}") from exc
        if reply is False and buf[pos] != ord("#"):
            # The scanner and hiredis disagree about where the reply ends: never guess.
            self._poisoned = True
            raise ProtocolError("reply framing mismatch")
        if end == len(buf):
            buf.clear()
            self._pos = 0
        elif end > 65536:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return reply
