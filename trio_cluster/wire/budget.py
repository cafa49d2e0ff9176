"""What one reply may hold: the cost model both parsers count against ``max_reply_elements``,
and the hot path's sound upper bounds on what hiredis has built so far.

Bytes received do not bound memory: a reply of ``*0`` elements takes 4 bytes of the wire and
about 80 bytes of Python objects each, and every object built must also be garbage-collected
and freed, which stalls the event loop in proportion to how many there are.  So a reply is
bounded by what it builds:

* every value counts :data:`VALUE_COST` (1): a string, number, null or boolean, each key and
  each value of a map, each element of an array, set or push frame;
* an aggregate (array, map, set, push frame, attribute) counts :data:`AGGREGATE_COST` (3): a
  container costs about three times as much as a string to build, to traverse in a garbage
  collection and to free (measured: ``benchmarks/large_replies.py``);
* an aggregate's declared elements count as soon as its header is read (each is at least one
  value), so a declared count that cannot fit is refused before anything is built.

The careful parser counts exactly.  hiredis builds in C without saying how far it got, so
:class:`HotBudget` keeps upper bounds computed at C speed from the bytes fed to it, and the
parser hands the stream to the careful parser (which then decides exactly) whenever the bound
could be exceeded.  Replies whose only aggregate is their own top-level header (``LRANGE``,
``HGETALL``, ``GET``...) are known exactly from that header and cost nothing more.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["AGGREGATE_COST", "VALUE_COST", "HotBudget", "declared_cost"]

VALUE_COST: Final = 1
AGGREGATE_COST: Final = 3
# Fewest bytes a value takes on the wire (``_\r\n``) and an aggregate (``*0\r\n``).
_MIN_VALUE_BYTES: Final = 3
_MIN_AGGREGATE_BYTES: Final = 4
# A nested aggregate header declaring at least 1000 elements (hiredis allocates a slot for each
# at once) is found by one search per aggregate type byte; smaller ones are bounded by depth:
# at most 1024 aggregates are open at once in hiredis, so those hold fewer than 1024 * 1000
# slots not yet filled (filled ones are values, counted as such).
_AGGREGATE_BYTES: Final = b"*%~>"
_BIG_COUNTS: Final = {
    kind: re.compile(re.escape(bytes([kind])) + rb"([0-9]{4,})") for kind in _AGGREGATE_BYTES
}
_PAIRED: Final = frozenset(b"%|")
_COUNTED: Final = frozenset(b"*%~>|")
# Bytes looked at on each side of a read boundary for a header split by it: a CRLF, a type
# byte and at most 19 digits (hiredis refuses leading zeros and longer counts).
_JOINT: Final = 24


def declared_cost(kind: int, count: int) -> int:
    """What an aggregate of type byte ``kind`` declaring ``count`` elements will hold: itself
    and at least one value per element (a map's keys and values count separately)."""
    return AGGREGATE_COST + count * (2 if kind in _PAIRED else 1)


class HotBudget:
    """Upper bounds on the cost of the reply hiredis is building, from the bytes fed to it.

    The parser owns one and keeps its window (every chunk fed since hiredis was last idle)
    and its type-byte census; this class only adds what the bound needs.  Every figure is an
    upper bound, so a reply judged within the bound is within it; one judged possibly beyond
    goes to the careful parser, never refused on an estimate.
    """

    __slots__ = ("_lines", "_max_elements", "_top_cost", "declared", "quiet_bytes")

    def __init__(self, max_elements: int) -> None:
        self._max_elements = max_elements
        #: Below this many bytes no reply can reach the bound (5/6 of a unit per byte at most:
        #: a value per 3 bytes and 2 more per aggregate per 4 bytes).
        self.quiet_bytes = max_elements * 6 // 5
        #: Elements declared by the big nested aggregate headers found (see :meth:`scan`).
        self.declared = 0
        self._lines = -1  # newlines in the reply's chunks (each value ends one), -1: not counted
        self._top_cost: int | None = None  # the first reply's cost as its header declares

    def reset(self) -> None:
        """A new window: nothing counted."""
        self.declared = 0
        self._lines = -1
        self._top_cost = None

    def reply_moved(self, window: list[bytes]) -> None:
        """A reply completed inside the window's last chunk, where the next one starts: that
        one's lines are counted afresh, and only the big headers from that chunk on count."""
        self._lines = -1
        if self.declared:  # rare: a big nested header was found earlier in the window
            self.declared = 0
            self.scan(window, _AGGREGATE_BYTES)

    def scan(self, window: list[bytes], kinds: bytes) -> None:
        """Add the elements declared by nested aggregate headers of at least 1000 in the last
        chunk of ``window`` (``kinds``: the aggregate type bytes found at type positions inside
        it), and by any such header split between it and the chunks before.  A header counts
        only right after a CRLF (a type position); one cut by the end of the chunk is counted
        again, whole, with the next chunk: an overcount, never an undercount."""
        data = window[-1]
        declared = 0
        if len(window) > 1:
            # The bytes just before ``data`` (enough for a CRLF, a type byte and 19 digits:
            # hiredis refuses longer counts) and its first bytes: headers starting before
            # data[2:] are counted here, the rest below.
            before = _tail(window)
            joint = before + data[:_JOINT]
            for kind in _BIG_COUNTS:
                if kind in joint:
                    declared += _sum_counts(joint, kind, 0, len(before) + 2)
        for kind in kinds:
            declared += _sum_counts(data, kind, 2, len(data))
        self.declared += declared

    def over(
        self, window: list[bytes], floor_chunk: int, reply_bytes: int, aggregates: int, first: bool
    ) -> bool:
        """Whether the reply in progress may hold more than the bound (hand it to the careful
        parser): what may be built so far, or what the big nested headers found declare, past
        it.  Raises nothing itself.

        ``window[floor_chunk:]`` holds every byte of the reply in progress (and maybe the end
        of the one before); ``reply_bytes`` is their count, ``aggregates`` the aggregate type
        bytes at type positions in the whole window, ``first`` whether the reply began the
        window (its header is ``window[0]``'s first line).
        """
        limit = self._max_elements
        if first and aggregates <= 1 and not self.declared:
            # The reply's own header is its only aggregate: exactly what the header declares.
            return self.top_cost(window) > limit
        if self._lines < 0:
            self._lines = sum(chunk.count(b"\n") for chunk in window[floor_chunk:])
        else:
            self._lines += window[-1].count(b"\n")
        values = min(reply_bytes // _MIN_VALUE_BYTES, self._lines)
        containers = min(aggregates, reply_bytes // _MIN_AGGREGATE_BYTES)
        built = values * VALUE_COST + containers * (AGGREGATE_COST - VALUE_COST)
        # What is built, and what the big headers make hiredis set aside (one slot each, far
        # cheaper than a value; once filled, the slots are values counted above), apart: a
        # reply declaring more than the bound cannot fit, whatever is built so far.
        return built > limit or self.declared > limit

    def top_cost(self, window: list[bytes]) -> int:
        """The first reply's cost as its header declares it (kept once the header is whole):
        a string or other simple value is one value; an aggregate its :func:`declared_cost`;
        nothing while the header is incomplete (hiredis builds nothing before it is whole)."""
        if self._top_cost is None:
            head = window[0] if len(window[0]) >= _JOINT else b"".join(window)[:_JOINT]
            kind = head[0]
            if kind not in _COUNTED:
                self._top_cost = VALUE_COST
            else:
                eol = head.find(b"\r\n", 1)
                if eol < 0 and len(head) < _JOINT:
                    return 0
                text = head[1:eol] if eol > 0 else b""
                # Not a count (a null, or a line hiredis refuses): one value at most.
                self._top_cost = declared_cost(kind, int(text)) if text.isdigit() else VALUE_COST
        return self._top_cost


def _tail(window: list[bytes]) -> bytes:
    """The last :data:`_JOINT` bytes before the window's last chunk (fewer at its start)."""
    parts: list[bytes] = []
    have = 0
    for index in range(len(window) - 2, -1, -1):  # no copy of the window: it may be long
        chunk = window[index]
        parts.append(chunk[-(_JOINT - have) :])
        have += len(parts[-1])
        if have >= _JOINT:
            break
    return b"".join(reversed(parts))


def _sum_counts(text: bytes, kind: int, start: int, stop: int) -> int:
    """The counts of the ``kind`` headers of at least 4 digits that start in
    ``text[start:stop]`` right after a CRLF (doubled for maps)."""
    total = 0
    for match in _BIG_COUNTS[kind].finditer(text, start):
        at = match.start()
        if at >= stop:
            break
        if at >= 2 and text[at - 2 : at] == b"\r\n":
            count = int(match.group(1))
            total += count * 2 if kind in _PAIRED else count
    return total
