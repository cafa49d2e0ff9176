"""redis-py's encoding rules for arguments and replies: ``encoding``, ``encoding_errors`` and
``decode_responses``, with redis-py's ``DataError`` for values that cannot be sent.

Arguments: the wire layer packs bytes, str (UTF-8), int, float and memoryview as they are.
:func:`prepare_args` is what the clients call when that fast path refuses an argument (or
always, for a non-UTF-8 encoding): ``bytearray`` becomes bytes, ``str`` is encoded as asked,
and ``None``, ``bool`` or any other type raise :class:`~trio_cluster.errors.ArgumentTypeError`
(a ``redis.exceptions.DataError``) with redis-py's message, before anything is sent.

Replies: with ``decode_responses=True`` every bulk and simple string of a reply is decoded
before the command's response callback sees it, as redis-py's parsers do (commands that ask
for raw bytes, such as DUMP, keep them).  With decoding off nothing here is on the path.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from itertools import chain
from operator import itemgetter
from typing import Any

import attrs

from ..errors import ArgumentTypeError
from ..redispy import NEVER_DECODE
from .commands import ReplyParser

__all__ = ["DecodingReplyParser", "Encoding", "decode_reply", "prepare_args", "prepare_stack"]

#: Argument types the wire layer packs as they are (exact types: subclasses take the slow path).
_AS_IS = frozenset({bytes, str, int, float, memoryview})


def _valid_encoding(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    try:
        codecs.lookup(value)  # type: ignore[arg-type]
    except (LookupError, TypeError):
        raise ValueError(f"{attribute.name} must name a Python codec; got {value!r}") from None


def _valid_errors(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{attribute.name} must be a codec error handler name; got {value!r}")
    try:
        codecs.lookup_error(value)
    except LookupError:
        raise ValueError(f"{attribute.name}: unknown codec error handler {value!r}") from None


@attrs.frozen(kw_only=True)
class Encoding:
    """redis-py's ``encoding``, ``encoding_errors`` and ``decode_responses`` options."""

    encoding: str = attrs.field(default="utf-8", validator=_valid_encoding)
    encoding_errors: str = attrs.field(default="strict", validator=_valid_errors)
    decode_responses: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool)
    )

    @classmethod
    def take_from(cls, options: dict[str, Any]) -> Encoding:
        """Remove the three options from ``options`` (a client's keywords) and return them."""
        names = ("encoding", "encoding_errors", "decode_responses")
        return cls(**{name: options.pop(name) for name in names if name in options})

    encodes_str: bool = attrs.field(init=False)
    """Whether ``str`` arguments need encoding here (the wire layer only does strict UTF-8);
    computed once: the clients read it on every command."""

    @encodes_str.default
    def _encodes_str(self) -> bool:
        try:
            utf8 = codecs.lookup(self.encoding).name == "utf-8"
        except (LookupError, TypeError):
            return True  # computed before the validators run; they raise the ValueError
        return not utf8 or self.encoding_errors != "strict"

    def reply_parser(self, protocol: int | None, *, cluster: bool = False) -> ReplyParser:
        """The reply parser a client with these options uses (``cluster`` adds
        ``RedisCluster``'s second callback layer, see :class:`ReplyParser`)."""
        if self.decode_responses:
            return DecodingReplyParser(
                protocol, self.encoding, self.encoding_errors, cluster=cluster
            )
        return ReplyParser(protocol, cluster=cluster)


def prepare_args(
    args: tuple[Any, ...], encoding: Encoding | None = None
) -> tuple[Any, ...]:  # fmt: skip
    """``args`` as the wire layer takes them (the same tuple when nothing needs changing).

    Raises ArgumentTypeError (a redis-py ``DataError``) naming the first argument of a type
    redis-py refuses: ``None``, ``bool``, or anything but bytes-like, str, int and float.
    """
    encodes_str = encoding is not None and encoding.encodes_str
    if not encodes_str and _AS_IS.issuperset(map(type, args)):
        return args  # the common case, checked at C speed
    out = []
    changed = False
    for position, arg in enumerate(args):
        if isinstance(arg, bytes | memoryview):
            pass
        elif isinstance(arg, bytearray):
            arg, changed = bytes(arg), True
        elif isinstance(arg, str):
            if encodes_str or type(arg) is not str:
                codec = encoding or _UTF8
                arg, changed = arg.encode(codec.encoding, codec.encoding_errors), True
        elif isinstance(arg, bool) or not isinstance(arg, int | float):
            raise ArgumentTypeError(
                f"Invalid input of type: '{type(arg).__name__}'. "
                f"Convert to a bytes, string, int or float first. (command argument {position}"
                f" of {args[0]!s:.40})"
            )
        elif type(arg) not in (int, float):
            arg, changed = repr(arg).encode(), True  # an IntEnum...: sent as redis-py sends it
        out.append(arg)
    return tuple(out) if changed else args


_UTF8 = Encoding()

_Command = tuple[tuple[Any, ...], dict[str, Any]]
_args = itemgetter(0)


def prepare_stack(stack: list[_Command], encoding: Encoding) -> list[_Command]:
    """:func:`prepare_args` for every queued command of a pipeline (the same list when
    nothing needs changing)."""
    if not encoding.encodes_str and _AS_IS.issuperset(
        map(type, chain.from_iterable(map(_args, stack)))
    ):
        return stack  # the common case: one pass at C speed, about 40 ns per argument
    return [(prepare_args(args, encoding), options) for args, options in stack]


def decode_reply(reply: Any, encoding: str = "utf-8", errors: str = "strict") -> Any:
    """Every bytes value in ``reply`` (nested lists, maps and sets too) decoded to str."""
    kind = type(reply)
    if kind is bytes:
        return reply.decode(encoding, errors)
    if kind is list:
        return [decode_reply(item, encoding, errors) for item in reply]
    if kind is dict:
        return {
            decode_reply(k, encoding, errors): decode_reply(v, encoding, errors)
            for k, v in reply.items()
        }
    if kind is set:
        return {decode_reply(item, encoding, errors) for item in reply}
    if kind is tuple:
        return tuple(decode_reply(item, encoding, errors) for item in reply)
    return reply  # ints, floats, None, booleans, errors carried as values


class DecodingReplyParser(ReplyParser):
    """A :class:`ReplyParser` that decodes replies before the callbacks see them
    (``decode_responses=True``): the same callbacks, looked up by full command name, with
    the same ``protocol`` and ``cluster`` layers; only the raw reply differs."""

    def __init__(
        self, protocol: int | None, encoding: str, errors: str, *, cluster: bool = False
    ) -> None:
        super().__init__(protocol, cluster=cluster)
        self.encoding = encoding
        self.errors = errors

    def apply(
        self, chain: tuple[Callable[..., Any], ...], reply: Any, options: dict[str, Any]
    ) -> Any:
        """Decode ``reply`` (unless the command asked for raw bytes), then apply ``chain``."""
        if not (options and NEVER_DECODE in options):
            reply = decode_reply(reply, self.encoding, self.errors)
        return super().apply(chain, reply, options)

    def decode(self, reply: Any) -> Any:
        """Decode a reply that bypasses :meth:`parse` (SCAN pages read node by node)."""
        return decode_reply(reply, self.encoding, self.errors)


def reply_decoder(parser: ReplyParser) -> Callable[[Any], Any] | None:
    """The decoding function of ``parser``, or None when it does not decode."""
    return parser.decode if isinstance(parser, DecodingReplyParser) else None


def text(value: Any) -> str:
    """A word of a command or reply as str, whether it came as bytes or text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
