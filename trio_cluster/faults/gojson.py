"""JSON decoding and float32 encoding as Go's ``encoding/json`` does them, errors included.

Toxiproxy decodes request bodies with ``json.NewDecoder(body).Decode(&v)``: the first JSON
value is scanned byte by byte (a syntax error, ``EOF`` or ``unexpected EOF`` comes first, and
nesting deeper than 10,000 is an error, never a crash), then stored into Go types, where the
first value of the wrong type, in document order, is the error.  ``decode`` is the scanning
half; ``Struct.unmarshal`` and the scalar types are the storing half.  Decoded objects keep
their key order and duplicates (``GoObject``), numbers keep their literal text
(``GoNumber``): Go's messages quote both.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "BOOL",
    "FLOAT32",
    "INT",
    "INT64",
    "STRING",
    "GoJsonError",
    "GoNumber",
    "GoObject",
    "Interface",
    "Pointer",
    "Slice",
    "Struct",
    "decode",
    "format_float32",
    "to_float32",
]

MAX_DEPTH: Final = 10_000  # Go's scanner maxNestingDepth


class GoJsonError(Exception):
    """A decoding error; ``str()`` is Go's ``err.Error()`` text."""


class GoNumber(str):
    """A JSON number, as its literal text."""


class GoObject(list[tuple[str, Any]]):
    """A JSON object, as its ``(key, value)`` pairs in document order."""


# --- scanning -------------------------------------------------------------------------------

_SPACE: Final = b" \t\r\n"
_ESCAPES: Final = {
    ord('"'): '"',
    ord("\\"): "\\",
    ord("/"): "/",
    ord("b"): "\b",
    ord("f"): "\f",
    ord("n"): "\n",
    ord("r"): "\r",
    ord("t"): "\t",
}
_SHORT: Final = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def _quote_char(c: int) -> str:
    """Go's ``quoteChar``: the byte as Go's ``strconv.Quote(string(rune(c)))`` in ``'``."""
    if c == ord("'"):
        return "'\\''"
    if c == ord('"'):
        return "'\"'"
    if c in _SHORT:
        return f"'{_SHORT[c]}'"
    if c == ord("\\"):
        return "'\\\\'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    if 0x80 <= c <= 0xA0 or c == 0xAD:  # not printable for Go's strconv.IsPrint
        return f"'\\u{c:04x}'"
    return f"'{chr(c)}'"


class _Scanner:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.depth = 0

    def fail(self, context: str) -> GoJsonError:
        if self.pos >= len(self.data):
            return GoJsonError("unexpected EOF")
        return GoJsonError(f"invalid character {_quote_char(self.data[self.pos])} {context}")

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def skip_space(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _SPACE:
            pos += 1
        self.pos = pos

    def value(self) -> Any:
        """One value, iteratively (a deep document never touches Python's recursion limit)."""
        # Each open container: (GoObject or list, pending key or None).
        stack: list[tuple[Any, str | None]] = []
        while True:
            self.skip_space()
            c = self.peek()
            if c in (ord("{"), ord("[")):
                self.depth += 1
                if self.depth > MAX_DEPTH:
                    raise self.fail("exceeded max depth")
                self.pos += 1
                container: Any = GoObject() if c == ord("{") else []
                self.skip_space()
                close = ord("}") if c == ord("{") else ord("]")
                if self.peek() == close:
                    self.pos += 1
                    self.depth -= 1
                    result: Any = container
                elif c == ord("{"):
                    stack.append((container, self._key(first=True)))
                    continue
                else:
                    stack.append((container, None))
                    continue
            else:
                result = self._scalar(c)
            # Close every container this value completes.
            while True:
                if not stack:
                    return result
                container, key = stack[-1]
                if isinstance(container, GoObject):
                    assert key is not None
                    container.append((key, result))
                    self.skip_space()
                    c = self.peek()
                    if c == ord(","):
                        self.pos += 1
                        stack[-1] = (container, self._key(first=False))
                        break
                    if c != ord("}"):
                        raise self.fail("after object key:value pair")
                else:
                    container.append(result)
                    self.skip_space()
                    c = self.peek()
                    if c == ord(","):
                        self.pos += 1
                        break
                    if c != ord("]"):
                        raise self.fail("after array element")
                self.pos += 1
                self.depth -= 1
                stack.pop()
                result = container

    def _key(self, *, first: bool) -> str:
        self.skip_space()
        if self.peek() != ord('"'):
            raise self.fail("looking for beginning of object key string")
        key = self._string()
        self.skip_space()
        if self.peek() != ord(":"):
            raise self.fail("after object key")
        self.pos += 1
        return key

    def _scalar(self, c: int) -> Any:
        if c == ord('"'):
            return self._string()
        if c == ord("-") or ord("0") <= c <= ord("9"):
            return self._number()
        for word, value in (("true", True), ("false", False), ("null", None)):
            if c == ord(word[0]):
                self.pos += 1
                for expected in word[1:]:
                    if self.peek() != ord(expected):
                        raise self.fail(f"in literal {word} (expecting '{expected}')")
                    self.pos += 1
                return value
        raise self.fail("looking for beginning of value")

    def _digits(self) -> int:
        start = self.pos
        while ord("0") <= self.peek() <= ord("9"):
            self.pos += 1
        return self.pos - start

    def _number(self) -> GoNumber:
        start = self.pos
        if self.peek() == ord("-"):
            self.pos += 1
            if not ord("0") <= self.peek() <= ord("9"):
                raise self.fail("in numeric literal")
        if self.peek() == ord("0"):
            self.pos += 1
        else:
            self._digits()
        if self.peek() == ord("."):
            self.pos += 1
            if not self._digits():
                raise self.fail("after decimal point in numeric literal")
        if self.peek() in (ord("e"), ord("E")):
            self.pos += 1
            if self.peek() in (ord("+"), ord("-")):
                self.pos += 1
            if not self._digits():
                raise self.fail("in exponent of numeric literal")
        return GoNumber(self.data[start : self.pos].decode("ascii"))

    def _string(self) -> str:
        self.pos += 1  # the opening quote
        data = self.data
        out = bytearray()
        while True:
            c = self.peek()
            if c < 0:
                raise self.fail("in string literal")
            if c == ord('"'):
                self.pos += 1
                return _decode_utf8(bytes(out))
            if c < 0x20:
                raise self.fail("in string literal")
            if c != ord("\\"):
                out.append(c)
                self.pos += 1
                continue
            self.pos += 1
            e = self.peek()
            if e in _ESCAPES:
                out += _ESCAPES[e].encode()
                self.pos += 1
            elif e == ord("u"):
                self.pos += 1
                code = self._hex4()
                if 0xD800 <= code < 0xDC00 and data[self.pos : self.pos + 2] == b"\\u":
                    save = self.pos
                    self.pos += 2
                    low = self._hex4()
                    if 0xDC00 <= low < 0xE000:
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    else:
                        self.pos = save  # not a pair: the second escape stands alone
                        code = 0xFFFD
                elif 0xD800 <= code < 0xE000:
                    code = 0xFFFD
                out += chr(code).encode()
            else:
                raise self.fail("in string escape code")

    def _hex4(self) -> int:
        code = 0
        for _ in range(4):
            c = self.peek()
            digit = (
                c - ord("0")
                if ord("0") <= c <= ord("9")
                else c - ord("a") + 10
                if ord("a") <= c <= ord("f")
                else c - ord("A") + 10
                if ord("A") <= c <= ord("F")
                else -1
            )
            if digit < 0:
                raise self.fail("in \\u hexadecimal character escape")
            code = code * 16 + digit
            self.pos += 1
        return code


def _decode_utf8(raw: bytes) -> str:
    # Go replaces each invalid byte with U+FFFD; Python's "replace" does the same per byte.
    return raw.decode("utf-8", "replace")


def decode(data: bytes) -> Any:
    """The first JSON value of ``data``, as ``json.Decoder.Decode`` reads it (rest ignored).

    Raises ``GoJsonError`` with Go's text: ``EOF`` (nothing but space), ``unexpected EOF``
    (cut short), or ``invalid character 'x' <context>``.
    """
    scanner = _Scanner(data)
    scanner.skip_space()
    if scanner.pos >= len(data):
        raise GoJsonError("EOF")
    return scanner.value()


# --- storing into Go types ------------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, GoNumber):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, GoObject):
        return "object"
    return "array"


@dataclass
class _Context:
    """Go's ``errorContext``: the innermost struct and the field path from the top."""

    struct: Struct | None = None
    path: tuple[str, ...] = ()

    def error(self, value: str, go_type: str) -> GoJsonError:
        if self.struct is not None or self.path:
            where = f"{self.struct.short if self.struct else ''}.{'.'.join(self.path)}"
            return GoJsonError(
                f"json: cannot unmarshal {value} into Go struct field {where} of type {go_type}"
            )
        return GoJsonError(f"json: cannot unmarshal {value} into Go value of type {go_type}")


class GoType:
    """A Go type a JSON value can be stored into (``name``: as Go's messages print it)."""

    name: str

    def store(self, value: Any, current: Any, ctx: _Context) -> Any:
        """The new value of a variable holding ``current`` after storing ``value``."""
        raise NotImplementedError

    def unmarshal(self, value: Any, current: Any = None) -> Any:
        """``json.Unmarshal`` of a decoded document into a variable holding ``current``."""
        return self.store(value, current, _Context())


@dataclass(frozen=True)
class _Scalar(GoType):
    name: str

    def store(self, value: Any, current: Any, ctx: _Context) -> Any:
        if value is None:
            return current
        kind = _kind(value)
        textual = self.name in ("string", "bool")
        if kind != (self.name if textual else "number"):
            raise ctx.error(kind, self.name)
        if textual:
            return value
        if self.name == "float32":
            number = to_float32(float(value))
            if math.isinf(number):
                raise ctx.error(f"number {value}", self.name)
            return number
        try:
            integer = int(value)  # only plain integer literals parse, as with strconv.ParseInt
        except ValueError:
            raise ctx.error(f"number {value}", self.name) from None
        if not -(2**63) <= integer < 2**63:
            raise ctx.error(f"number {value}", self.name)
        return integer


STRING: Final = _Scalar("string")
BOOL: Final = _Scalar("bool")
INT64: Final = _Scalar("int64")
INT: Final = _Scalar("int")
FLOAT32: Final = _Scalar("float32")


@dataclass(frozen=True)
class Pointer(GoType):
    """``*T``: ``null`` stores nil (``None``), anything else stores into ``T``."""

    target: GoType

    def store(self, value: Any, current: Any, ctx: _Context) -> Any:
        if value is None:
            return None
        return self.target.store(value, current, ctx)


@dataclass(frozen=True)
class Interface(Pointer):
    """An ``interface{}`` holding a pointer to a struct: values store into that struct, and
    ``null`` sets the interface to nil (as a pointer; the struct it held is untouched)."""

    target: Struct
    name: str = "interface {}"


@dataclass(frozen=True)
class Slice(GoType):
    """``[]T``: ``null`` leaves nil, an array stores element by element."""

    element: GoType
    name: str = ""

    def store(self, value: Any, current: Any, ctx: _Context) -> Any:
        if value is None:
            return current
        if not isinstance(value, list) or isinstance(value, GoObject):
            raise ctx.error(_kind(value), self.name)
        return [self.element.store(item, None, ctx) for item in value]


@dataclass(frozen=True)
class Struct(GoType):
    """A Go struct: ``name`` as ``reflect.Type.String()``, ``short`` as ``Name()``, and its
    JSON fields (embedded structs' fields promoted, as Go promotes them)."""

    name: str
    short: str
    fields: dict[str, GoType] = field(default_factory=dict)

    def store(self, value: Any, current: Any, ctx: _Context) -> Any:
        result: dict[str, Any] = dict(current or {})
        if value is None:
            return current
        if not isinstance(value, GoObject):
            raise ctx.error(_kind(value), self.name)
        for key, item in value:
            name = self._field(key)
            if name is None:
                continue  # unknown keys are ignored
            inner = _Context(self, (*ctx.path, name))
            result[name] = self.fields[name].store(item, result.get(name), inner)
        return result

    def _field(self, key: str) -> str | None:
        """The field a key names: an exact match first, else a case-insensitive one."""
        if key in self.fields:
            return key
        folded = key.casefold()
        return next((name for name in self.fields if name.casefold() == folded), None)


# --- float32 --------------------------------------------------------------------------------


def to_float32(value: float) -> float:
    """Round to the nearest float32 (infinite when out of range, as ParseFloat(s, 32))."""
    try:
        return float(struct.unpack("f", struct.pack("f", value))[0])
    except OverflowError:
        return math.copysign(math.inf, value)


# Go compares the float32 with the constants converted to float32.
_SMALLEST_PLAIN: Final = to_float32(1e-6)
_LARGEST_PLAIN: Final = to_float32(1e21)


def format_float32(value: float) -> str:
    """A float32 as Go's ``json.Marshal`` writes it: the fewest significant digits that read
    back to the same float32, in plain notation from 1e-6 to 1e21, else ``1e-7``/``1e+21``."""
    if value == 0:
        return "0" if math.copysign(1, value) > 0 else "-0"
    # Nine significant digits always identify a float32.
    digits = next(d for d in range(1, 10) if to_float32(float(f"{value:.{d}g}")) == value)
    mantissa, _, exponent_text = f"{value:.{digits - 1}e}".partition("e")
    exponent = int(exponent_text)
    if _SMALLEST_PLAIN <= abs(value) < _LARGEST_PLAIN:
        plain = f"{value:.{max(0, digits - 1 - exponent)}f}"
        return plain.rstrip("0").rstrip(".") if "." in plain else plain
    # Go cleans strconv's "e-07" to "e-7" but keeps "e+21".
    suffix = f"-{-exponent}" if exponent < 0 else f"+{exponent:02d}"
    return f"{mantissa}e{suffix}"
