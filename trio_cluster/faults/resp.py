"""A small RESP2/RESP3 frame scanner and encoders (no parsing of values, only boundaries).

The maintenance-notification proxy must insert push frames only between complete replies, so it
needs to know where each reply ends without decoding it.  ``frame_end`` finds that point.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["ProtocolError", "bulk", "frame_end", "parse_command", "push"]

_LINE: Final = frozenset(b"+-:_,#(")
_BLOB: Final = frozenset(b"$!=")
_AGGREGATE: Final = frozenset(b"*~>")
_MAP: Final = frozenset(b"%|")


class ProtocolError(ValueError):
    """The byte stream is not valid RESP."""


def frame_end(buf: bytes | bytearray, pos: int = 0) -> int | None:
    """Index just past the complete RESP value that starts at ``pos``, or None if incomplete.

    Lines that do not start with a RESP type byte are inline commands (``PING\\r\\n``).
    """
    need = 1
    size = len(buf)
    while need:
        if pos >= size:
            return None
        kind = buf[pos]
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        if kind in _LINE:
            pos = eol + 2
            need -= 1
            continue
        if kind in _BLOB or kind in _AGGREGATE or kind in _MAP:
            try:
                count = int(buf[pos + 1 : eol])
            except ValueError:
                if buf[pos + 1 : eol] == b"?":
                    raise ProtocolError("streamed RESP3 aggregates are not supported") from None
                raise ProtocolError(f"bad length in {bytes(buf[pos:eol])!r}") from None
            pos = eol + 2
            if kind in _BLOB:
                if count >= 0:
                    pos += count + 2
                    if pos > size:
                        return None
                need -= 1
            elif kind in _AGGREGATE:
                need += max(count, 0) - 1
            elif kind == ord("%"):
                need += 2 * max(count, 0) - 1
            else:  # "|" attribute: its pairs come first, then the value it annotates
                need += 2 * max(count, 0)
            continue
        pos = eol + 2  # inline command
        need -= 1
    return pos


def parse_command(frame: bytes) -> list[bytes]:
    """The arguments of one client command frame (an array of bulk strings, or inline)."""
    if not frame.startswith(b"*"):
        return frame.strip().split()
    args: list[bytes] = []
    eol = frame.find(b"\r\n")
    pos = eol + 2
    for _ in range(int(frame[1:eol])):
        eol = frame.find(b"\r\n", pos)
        if frame[pos : pos + 1] != b"$":
            args.append(frame[pos + 1 : eol])
            pos = eol + 2
            continue
        length = int(frame[pos + 1 : eol])
        args.append(frame[eol + 2 : eol + 2 + length])
        pos = eol + 2 + length + 2
    return args


def bulk(value: bytes | str) -> bytes:
    """A RESP bulk string."""
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%s\r\n" % (len(data), data)


Element = bytes | str | int | None | Sequence["Element"]


def _encode(value: Element) -> bytes:
    if value is None:
        return b"_\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes | str):
        return bulk(value)
    return b"*%d\r\n" % len(value) + b"".join(_encode(v) for v in value)


def push(*elements: Element) -> bytes:
    """A RESP3 push frame (``>``) of the given elements (ints, strings, None, nested lists)."""
    return b">%d\r\n" % len(elements) + b"".join(_encode(e) for e in elements)
