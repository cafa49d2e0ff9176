"""Toxiproxy state records (proxies, toxics) and their Go-compatible JSON encoding and decoding.

Nothing here does I/O: the HTTP layer (``faults.api``) decodes requests into these records and
the data plane (``faults.proxy``) reads them.  Decoding mimics Go's ``encoding/json`` closely
enough that a client cannot tell the difference: keys match case-insensitively, unknown keys are
ignored, ``null`` leaves a field unchanged, and a value of the wrong type is a 400.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Final

import trio

__all__ = [
    "TOXIC_ATTRIBUTES",
    "ApiError",
    "ProxyInput",
    "Toxic",
    "decode_body",
    "dumps",
    "parse_stream",
    "toxic_from_json",
]

#: Attribute names and their order (the Go struct field order) for every registered toxic type.
TOXIC_ATTRIBUTES: Final[dict[str, tuple[str, ...]]] = {
    "noop": (),
    "latency": ("latency", "jitter"),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "slicer": ("average_size", "size_variation", "delay"),
    "limit_data": ("bytes",),
}

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_toxic_ids = itertools.count(1)


class ApiError(Exception):
    """An error that the API reports to the client as ``{"error": msg, "status": code}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra

    def body(self) -> bytes:
        """The error body exactly as Go's ``http.Error`` writes it (with a trailing newline)."""
        doc: dict[str, Any] = {"error": self.message, "status": self.status, **self.extra}
        return dumps(doc).encode() + b"\n"


def bad_body(detail: str) -> ApiError:
    """A 400 ``bad request body`` error with Go's decoder-style detail."""
    return ApiError(400, f"bad request body: {detail}")


def dumps(doc: Any) -> str:
    """Compact JSON as Go's ``json.Marshal`` writes it (HTML characters escaped)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    # Go escapes these three inside strings; they cannot occur outside strings in JSON.
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def decode_body(raw: bytes) -> Any:
    """Decode the first JSON value of a request body as Go's ``json.Decoder.Decode`` does."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_body("invalid character in JSON input") from exc
    stripped = text.lstrip(" \t\r\n")
    if not stripped:
        raise bad_body("EOF")
    try:
        value, _ = json.JSONDecoder().raw_decode(stripped)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(stripped):
            raise bad_body("unexpected EOF") from exc
        raise bad_body(f"invalid character {stripped[exc.pos]!r} ({exc.msg})") from exc
    return value


def _lookup(obj: dict[str, Any], key: str) -> tuple[bool, Any]:
    """Case-insensitive key lookup, as Go's decoder matches struct fields (exact match wins)."""
    if key in obj:
        return True, obj[key]
    lowered = key.lower()
    for k, v in obj.items():
        if k.lower() == lowered:
            return True, v
    return False, None


def _type_error(value: Any, go_type: str, where: str) -> ApiError:
    kind = {bool: "bool", str: "string", list: "array", dict: "object"}.get(type(value), "number")
    if kind == "number":
        kind = f"number {value}"
    return bad_body(f"json: cannot unmarshal {kind} into Go struct field {where} of type {go_type}")


def get_str(obj: dict[str, Any], key: str, where: str, default: str) -> str:
    """Read an optional string field; ``null`` or absent gives ``default``."""
    found, value = _lookup(obj, key)
    if not found or value is None:
        return default
    if not isinstance(value, str):
        raise _type_error(value, "string", where)
    return value


def get_bool(obj: dict[str, Any], key: str, where: str, default: bool) -> bool:
    """Read an optional boolean field; ``null`` or absent gives ``default``."""
    found, value = _lookup(obj, key)
    if not found or value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(value, "bool", where)
    return value


def get_int(obj: dict[str, Any], key: str, where: str, default: int) -> int:
    """Read an optional int64 field; floats, strings and out-of-range numbers are rejected."""
    found, value = _lookup(obj, key)
    if not found or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(value, "int64", where)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise _type_error(value, "int64", where)
    return value


def get_float(obj: dict[str, Any], key: str, where: str, default: float) -> float:
    """Read an optional float32 field (toxicity)."""
    found, value = _lookup(obj, key)
    if not found or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(value, "float32", where)
    return float(value)


def parse_stream(stream: str) -> str:
    """Normalise a stream name, case-insensitively, or raise the Go 400 for an invalid one."""
    lowered = stream.lower()
    if lowered not in ("upstream", "downstream"):
        raise ApiError(400, "stream was invalid, can be either upstream or downstream")
    return lowered


def _number(value: float) -> int | float:
    """Render a float32 as Go does: ``1`` rather than ``1.0``."""
    return int(value) if value.is_integer() else value


@dataclass
class Toxic:
    """One toxic on one proxy.  ``direction`` is the normalised stream; ``stream`` is as sent."""

    name: str
    type: str
    stream: str
    direction: str
    toxicity: float
    attributes: dict[str, int]
    #: Unique identity used by the data plane to key per-connection state and toxicity rolls.
    ident: int = field(default_factory=lambda: next(_toxic_ids))
    #: Set (and replaced) whenever the toxic is updated or removed: interrupts in-flight waits.
    interrupt: trio.Event = field(default_factory=trio.Event)

    def to_json(self) -> dict[str, Any]:
        """The toxic's JSON object, in ``ToxicWrapper`` field order."""
        return {
            "attributes": dict(self.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": _number(self.toxicity),
        }

    def poke(self) -> None:
        """Wake anything waiting on this toxic (after an update or on removal)."""
        self.interrupt.set()
        self.interrupt = trio.Event()

    def update_from_json(self, doc: Any) -> None:
        """Merge an update body: only ``attributes`` and ``toxicity`` change (Go semantics)."""
        if not isinstance(doc, dict):
            raise _type_error(doc, "toxics.ToxicWrapper", "")
        attributes = _decode_attributes(self.type, doc, self.attributes)
        self.toxicity = get_float(doc, "toxicity", "ToxicWrapper.toxicity", self.toxicity)
        self.attributes = attributes


def _decode_attributes(
    toxic_type: str, doc: dict[str, Any], base: dict[str, int]
) -> dict[str, int]:
    found, raw = _lookup(doc, "attributes")
    result = dict(base)
    if not found or raw is None:
        return result
    if not isinstance(raw, dict):
        raise _type_error(raw, f"toxics.{toxic_type}", "ToxicWrapper.attributes")
    for attr in TOXIC_ATTRIBUTES[toxic_type]:
        result[attr] = get_int(raw, attr, f"{toxic_type}.{attr}", result[attr])
    return result


def toxic_from_json(doc: Any) -> Toxic:
    """Decode a toxic-create body, applying Go's defaults and checks in Go's order."""
    if not isinstance(doc, dict):
        raise _type_error(doc, "toxics.ToxicWrapper", "")
    stream = get_str(doc, "stream", "ToxicWrapper.stream", "downstream")
    toxic_type = get_str(doc, "type", "ToxicWrapper.type", "")
    name = get_str(doc, "name", "ToxicWrapper.name", "")
    toxicity = get_float(doc, "toxicity", "ToxicWrapper.toxicity", 1.0)
    direction = parse_stream(stream)
    if not name:
        name = f"{toxic_type}_{stream}"
    if toxic_type not in TOXIC_ATTRIBUTES:
        raise ApiError(400, "invalid toxic type")
    zero = dict.fromkeys(TOXIC_ATTRIBUTES[toxic_type], 0)
    attributes = _decode_attributes(toxic_type, doc, zero)
    return Toxic(name, toxic_type, stream, direction, toxicity, attributes)


@dataclass
class ProxyInput:
    """A decoded proxy create/update/populate entry."""

    name: str
    listen: str
    upstream: str
    enabled: bool


def proxy_input(
    doc: Any, *, name: str = "", listen: str = "", upstream: str = "", enabled: bool = True
) -> ProxyInput:
    """Decode a proxy body on top of defaults (the current values, for an update)."""
    if not isinstance(doc, dict):
        raise _type_error(doc, "main.Proxy", "")
    return ProxyInput(
        name=get_str(doc, "name", "Proxy.name", name),
        listen=get_str(doc, "listen", "Proxy.listen", listen),
        upstream=get_str(doc, "upstream", "Proxy.upstream", upstream),
        enabled=get_bool(doc, "enabled", "Proxy.enabled", enabled),
    )
