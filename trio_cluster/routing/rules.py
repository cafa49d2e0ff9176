"""Where a command goes: its keys and their slot, or the nodes its nature names.

Key positions come from the server's own COMMAND table (loaded once per client), so every
command the server knows is routed by the server's description of it.  Commands whose keys
move (EVAL, ZUNIONSTORE, XREAD, ...) have small parsers here; anything else with movable keys
asks the server (COMMAND GETKEYS).  Keyless commands are routed as redis-py's cluster client
routes them (its ``COMMAND_FLAGS`` table is the source of truth), and their replies from many
nodes are combined with redis-py's ``RESULT_CALLBACKS``.
"""

from __future__ import annotations

import enum
from binascii import crc_hqx
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..redispy import RedisCluster
from ..wire.encoding import text

__all__ = [
    "CommandTable",
    "ServerCommand",
    "Target",
    "command_keys",
    "invocation",
    "key_slot",
    "keyless_target",
    "needs_getkeys",
    "slot_of",
]


class Target(enum.Enum):
    """Where a keyless command goes."""

    DEFAULT_NODE = "default-node"
    """One primary (any will do)."""
    PRIMARIES = "primaries"
    """Every primary, results combined."""
    ALL_NODES = "all"
    """Every node, results combined."""
    RANDOM = "random"
    """Any node."""
    REPLICAS = "replicas"
    """Every replica."""
    SLOT_ID = "slot-id"
    """The node owning the slot given as the command's argument."""
    CHANNEL_SLOT = "channel-slot"
    """The node owning the slot of the channel (PUBLISH, as redis-py's cluster routes it:
    where a PubSub subscribing to that channel connects, so the reply counts it)."""


_FLAG_TARGETS = {
    RedisCluster.DEFAULT_NODE: Target.DEFAULT_NODE,
    RedisCluster.PRIMARIES: Target.PRIMARIES,
    RedisCluster.ALL_NODES: Target.ALL_NODES,
    RedisCluster.RANDOM: Target.RANDOM,
    RedisCluster.REPLICAS: Target.REPLICAS,
    "slot-id": Target.SLOT_ID,
}
_KEYLESS: dict[str, Target] = {
    name.upper(): _FLAG_TARGETS[flag]
    for name, flag in RedisCluster.COMMAND_FLAGS.items()
    if flag in _FLAG_TARGETS
}
# Where we differ from redis-py on purpose: these mean "the whole keyspace", so they address
# every primary and their replies are combined (sum, concatenation) by RESULT_CALLBACKS.
_KEYLESS.update({"DBSIZE": Target.PRIMARIES, "KEYS": Target.PRIMARIES})
_KEYLESS["PUBLISH"] = Target.CHANNEL_SLOT
#: How replies from several nodes are combined: ``callback(command, {node: reply})``.
RESULT_CALLBACKS: dict[str, Callable[[str, dict[str, Any]], Any]] = {
    name.upper(): callback for name, callback in RedisCluster.RESULT_CALLBACKS.items()
}


def keyless_target(name: str) -> Target | None:
    """The routing flag of a keyless command (``name`` may be two words), if it has one."""
    return _KEYLESS.get(name)


@attrs.frozen
class ServerCommand:
    """What the server's COMMAND table says about one command (or subcommand)."""

    name: str
    first_key: int
    last_key: int
    step: int
    movable: bool
    readonly: bool
    subcommands: dict[str, ServerCommand] = attrs.field(factory=dict, repr=False)


def _spec(entry: Sequence[Any]) -> ServerCommand:
    name = text(entry[0]).upper()
    flags = {text(f) for f in entry[2]}
    subcommands: dict[str, ServerCommand] = {}
    if len(entry) > 9 and entry[9]:
        for sub in entry[9]:
            spec = _spec(sub)
            subcommands[spec.name.split("|", 1)[-1]] = spec
    return ServerCommand(
        name=name,
        first_key=int(entry[3]),
        last_key=int(entry[4]),
        step=int(entry[5]),
        movable="movablekeys" in flags,
        readonly="readonly" in flags,
        subcommands=subcommands,
    )


def _numkeys_at(position: int) -> Callable[[Sequence[Any]], list[Any]]:
    """Keys follow a ``numkeys`` argument at ``position`` (EVAL, ZUNION, LMPOP, ...)."""

    def keys(args: Sequence[Any]) -> list[Any]:
        count = int(args[position])
        return list(args[position + 1 : position + 1 + count])

    return keys


def _destination_and_numkeys(args: Sequence[Any]) -> list[Any]:
    """ZUNIONSTORE dest numkeys key ...: the destination and the sources."""
    return [args[1], *_numkeys_at(2)(args)]


def _stream_keys(args: Sequence[Any]) -> list[Any]:
    """XREAD/XREADGROUP ... STREAMS key... id...: the first half after STREAMS."""
    for index, arg in enumerate(args):
        if text(arg).upper() == "STREAMS":
            rest = args[index + 1 :]
            return list(rest[: len(rest) // 2])
    return []


def _sort_keys(args: Sequence[Any]) -> list[Any]:
    keys = [args[1]]
    for index, arg in enumerate(args):
        if text(arg).upper() == "STORE" and index + 1 < len(args):
            keys.append(args[index + 1])
    return keys


#: Parsers for commands with movable keys, by name.  Others go to COMMAND GETKEYS.
MOVABLE_KEYS: dict[str, Callable[[Sequence[Any]], list[Any]]] = {
    "EVAL": _numkeys_at(2),
    "EVALSHA": _numkeys_at(2),
    "EVAL_RO": _numkeys_at(2),
    "EVALSHA_RO": _numkeys_at(2),
    "FCALL": _numkeys_at(2),
    "FCALL_RO": _numkeys_at(2),
    "ZUNION": _numkeys_at(1),
    "ZINTER": _numkeys_at(1),
    "ZDIFF": _numkeys_at(1),
    "ZINTERCARD": _numkeys_at(1),
    "SINTERCARD": _numkeys_at(1),
    "LMPOP": _numkeys_at(1),
    "ZMPOP": _numkeys_at(1),
    "BLMPOP": _numkeys_at(2),
    "BZMPOP": _numkeys_at(2),
    "ZUNIONSTORE": _destination_and_numkeys,
    "ZINTERSTORE": _destination_and_numkeys,
    "ZDIFFSTORE": _destination_and_numkeys,
    "XREAD": _stream_keys,
    "XREADGROUP": _stream_keys,
    "SORT": _sort_keys,
    "SORT_RO": _sort_keys,
}


class CommandTable:
    """The server's COMMAND table, by upper-case name (the client's spec table,
    ``routing.specs``, reads it once per command name)."""

    def __init__(self, command_reply: Sequence[Any] = ()) -> None:
        self.specs: dict[str, ServerCommand] = {}
        for entry in command_reply:
            if entry:
                spec = _spec(entry)
                self.specs[spec.name] = spec

    def __len__(self) -> int:
        return len(self.specs)

    def spec(self, args: Sequence[Any]) -> ServerCommand | None:
        """The description of this invocation (the subcommand's, where it has one)."""
        return invocation(self.specs.get(text(args[0]).upper()), args)


def invocation(server: ServerCommand | None, args: Sequence[Any]) -> ServerCommand | None:
    """``server`` (a command's description), or its subcommand's when ``args[1]`` names one."""
    if server is not None and server.subcommands and len(args) > 1:
        sub = server.subcommands.get(text(args[1]).upper())
        if sub is not None:
            return sub
    return server


def command_keys(server: ServerCommand | None, args: Sequence[Any]) -> list[Any] | None:
    """The keys of an invocation the server describes as ``server`` (see
    :func:`invocation`); None when it has none, or when only the server can find them
    (movable keys with no local parser: :func:`needs_getkeys`)."""
    if server is None:
        return None
    if server.movable:
        parser = MOVABLE_KEYS.get(server.name)
        if parser is None:
            return None
        try:
            return parser(args)
        except (IndexError, ValueError):
            return None  # malformed: the server will say so
    if server.first_key <= 0:
        return None
    last = server.last_key if server.last_key >= 0 else len(args) + server.last_key
    step = server.step or 1
    return list(args[server.first_key : last + 1 : step])


def needs_getkeys(server: ServerCommand | None) -> bool:
    """Movable keys that only the server can find (COMMAND GETKEYS)."""
    return server is not None and server.movable and server.name not in MOVABLE_KEYS


def key_slot(key: Any) -> int:
    """The slot of one key (CRC16 of the key or of its ``{hash tag}``, modulo 16384)."""
    if type(key) is str:
        key = key.encode()
    elif type(key) is not bytes:
        key = _as_bytes(key)
    start = key.find(b"{")
    if start > -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & 16383


def slot_of(keys: Sequence[Any]) -> int | None:
    """The slot shared by ``keys``; None if they span several slots."""
    slot = key_slot(keys[0])
    for key in keys[1:]:
        if key_slot(key) != slot:
            return None
    return slot


def _as_bytes(key: Any) -> bytes:
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, memoryview):
        return key.tobytes()
    return str(key).encode()
