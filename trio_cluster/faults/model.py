"""Toxiproxy state records (proxies, toxics) and their Go-compatible JSON encoding and decoding.

Nothing here does I/O: the HTTP layer (``api``) decodes requests into these records and the data
plane (``proxy``) reads them.  Decoding mimics Go's ``encoding/json`` closely enough that a
client cannot tell the difference: keys match case-insensitively, unknown keys are ignored,
``null`` leaves a field unchanged, and a value of the wrong type is a 400.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from . import gojson
from .errors import ToxiproxyError

__all__ = [
    "TOXIC_ATTRIBUTES",
    "ProxyInput",
    "Toxic",
    "decode_body",
    "dumps",
    "parse_stream",
    "populate_input",
    "proxy_input",
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

_toxic_ids = itertools.count(1)


def bad_body(detail: str) -> ToxiproxyError:
    """A 400 ``bad request body`` error with Go's decoder-style detail."""
    return ToxiproxyError(400, f"bad request body: {detail}")


@dataclass(frozen=True)
class RawNumber:
    """A number ``dumps`` writes exactly as ``text`` (Go's float32 text, which Python's float
    formatting cannot produce: ``0.000025`` where Python writes ``2.5e-05``)."""

    text: str


# A marker no client can forge (a random nonce per process): a proxy name may hold anything.
_NONCE: Final = secrets.token_hex(8)
_RAW_MARK: Final = f"\x00raw{_NONCE}:"
# How json.dumps writes the marked string: NUL escaped, the number's characters unchanged.
_RAW_WRITTEN: Final = re.compile(rf'"\\u0000raw{_NONCE}:([-+.0-9e]+)"')


def _raw_marker(value: Any) -> str:
    if isinstance(value, RawNumber):
        return _RAW_MARK + value.text
    raise TypeError(f"not JSON serializable: {value!r}")


def dumps(doc: Any) -> str:
    """Compact JSON as Go's ``json.Marshal`` writes it (HTML characters escaped)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=_raw_marker)
    # Go escapes these three inside strings; they cannot occur outside strings in JSON.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return _RAW_WRITTEN.sub(r"\1", text)


def decode_body(raw: bytes) -> Any:
    """Decode the first JSON value of a request body as Go's ``json.Decoder.Decode`` does."""
    try:
        return gojson.decode(raw)
    except gojson.GoJsonError as exc:
        raise bad_body(str(exc)) from None


def _store(go_type: gojson.GoType, doc: Any, current: Any) -> Any:
    """Store a decoded body into a Go type; a wrong type is Go's 400."""
    try:
        return go_type.unmarshal(doc, current)
    except gojson.GoJsonError as exc:
        raise bad_body(str(exc)) from None


_PROXY_FIELDS: Final[dict[str, gojson.GoType]] = {
    "name": gojson.STRING,
    "listen": gojson.STRING,
    "upstream": gojson.STRING,
    "enabled": gojson.BOOL,
}
#: ``toxiproxy.Proxy`` (create and update bodies).
PROXY: Final = gojson.Struct("toxiproxy.Proxy", "Proxy", _PROXY_FIELDS)
_POPULATE_ENTRY: Final = gojson.Struct(
    'struct { toxiproxy.Proxy; Enabled *bool "json:\\"enabled\\"" }',
    "",
    {**_PROXY_FIELDS, "enabled": gojson.Pointer(gojson.BOOL)},
)
#: The populate body: a slice of proxies whose ``enabled`` may be null.
POPULATE: Final = gojson.Slice(_POPULATE_ENTRY, "[]" + _POPULATE_ENTRY.name)


def _toxic_struct(go_name: str, fields: dict[str, gojson.GoType]) -> gojson.Struct:
    return gojson.Struct(f"toxics.{go_name}", go_name, fields)


#: The Go struct behind each toxic type's attributes.
TOXIC_STRUCTS: Final[dict[str, gojson.Struct]] = {
    "noop": _toxic_struct("NoopToxic", {}),
    "latency": _toxic_struct("LatencyToxic", {"latency": gojson.INT64, "jitter": gojson.INT64}),
    "bandwidth": _toxic_struct("BandwidthToxic", {"rate": gojson.INT64}),
    "slow_close": _toxic_struct("SlowCloseToxic", {"delay": gojson.INT64}),
    "timeout": _toxic_struct("TimeoutToxic", {"timeout": gojson.INT64}),
    "reset_peer": _toxic_struct("ResetToxic", {"timeout": gojson.INT64}),
    "slicer": _toxic_struct(
        "SlicerToxic",
        {"average_size": gojson.INT, "size_variation": gojson.INT, "delay": gojson.INT},
    ),
    "limit_data": _toxic_struct("LimitDataToxic", {"bytes": gojson.INT64}),
}
_WRAPPER: Final = gojson.Struct(
    "toxics.ToxicWrapper",
    "ToxicWrapper",
    {
        "attributes": gojson.Interface(TOXIC_STRUCTS["noop"]),
        "name": gojson.STRING,
        "type": gojson.STRING,
        "stream": gojson.STRING,
        "toxicity": gojson.FLOAT32,
    },
)
_ATTRS_TAG: Final = 'Attributes interface {} "json:\\"attributes\\""'
_TOXICITY_TAG: Final = 'Toxicity float32 "json:\\"toxicity\\""'


def _attributes_body(toxic_type: str, *, with_toxicity: bool) -> gojson.Struct:
    """The anonymous structs Go decodes attributes (and, on update, toxicity) into."""
    fields: dict[str, gojson.GoType] = {"attributes": gojson.Interface(TOXIC_STRUCTS[toxic_type])}
    name = f"struct {{ {_ATTRS_TAG} }}"
    if with_toxicity:
        fields["toxicity"] = gojson.FLOAT32
        name = f"struct {{ {_ATTRS_TAG}; {_TOXICITY_TAG} }}"
    return gojson.Struct(name, "", fields)


def parse_stream(stream: str) -> str:
    """Normalise a stream name, case-insensitively, or raise the Go 400 for an invalid one."""
    lowered = stream.lower()
    if lowered not in ("upstream", "downstream"):
        raise ToxiproxyError(400, "stream was invalid, can be either upstream or downstream")
    return lowered


def _number(value: float) -> RawNumber:
    """A float32 as Go writes it: ``1`` rather than ``1.0``, ``0.1`` rather than 0.1000..."""
    return RawNumber(gojson.format_float32(value))


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
        body = _attributes_body(self.type, with_toxicity=True)
        result = _store(body, doc, {"attributes": self.attributes, "toxicity": self.toxicity})
        self.toxicity = result["toxicity"]
        self.attributes = {**self.attributes, **(result.get("attributes") or {})}


def toxic_from_json(doc: Any, exists: Callable[[str], bool]) -> Toxic:
    """Decode a toxic-create body with Go's defaults and checks, in Go's order.

    ``exists(name)`` tells whether the proxy already has a toxic of that name: Go checks it
    (409) before it decodes the attributes.
    """
    wrapper = _store(_WRAPPER, doc, {"stream": "downstream", "toxicity": 1.0})
    stream, toxic_type = wrapper.get("stream", ""), wrapper.get("type", "")
    direction = parse_stream(stream)
    name = wrapper.get("name") or f"{toxic_type}_{stream}"
    if toxic_type not in TOXIC_ATTRIBUTES:
        raise ToxiproxyError(400, "invalid toxic type")
    if exists(name):
        raise ToxiproxyError(409, "toxic already exists")
    zero = dict.fromkeys(TOXIC_ATTRIBUTES[toxic_type], 0)
    body = _store(_attributes_body(toxic_type, with_toxicity=False), doc, {"attributes": zero})
    attributes = {**zero, **(body.get("attributes") or {})}
    return Toxic(name, toxic_type, stream, direction, wrapper["toxicity"], attributes)


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
    current: dict[str, Any] = {
        "name": name,
        "listen": listen,
        "upstream": upstream,
        "enabled": enabled,
    }
    result = _store(PROXY, doc, current) or current
    return ProxyInput(result["name"], result["listen"], result["upstream"], result["enabled"])


def populate_input(doc: Any) -> list[ProxyInput]:
    """Decode a populate body (``null`` is an empty list; a null ``enabled`` means true)."""
    # A null element is a zero proxy (Go's struct stays empty): it fails validation later.
    entries = [e or {} for e in _store(POPULATE, doc, None) or []]
    return [
        ProxyInput(
            e.get("name", ""),
            e.get("listen", ""),
            e.get("upstream", ""),
            True if e.get("enabled") is None else e["enabled"],
        )
        for e in entries
    ]
