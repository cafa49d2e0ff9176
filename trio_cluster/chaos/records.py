"""What a run records: one ``Op`` per command, read observations, windows and samples.

These are plain data, so the invariant checkers (``trio_cluster.chaos.invariants``) are pure
functions over them and tests can feed them synthetic records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .address import Address

__all__ = [
    "CANCELLED",
    "AuthCheck",
    "ConnSample",
    "Delivery",
    "HandoffCheck",
    "Observation",
    "Op",
    "PubSubEvent",
    "PubSubRecord",
    "Publish",
    "RunRecord",
    "Window",
    "decode_message",
    "decode_value",
    "encode_message",
    "encode_value",
]

#: ``Op.error`` for a command the workload itself cancelled (its own random deadline).
CANCELLED = "Cancelled"
#: Separator inside every value the workload writes: ``<key>|<version>|<padding>``.
SEP = "|"


def encode_value(key: str, version: int, pad: int = 0) -> str:
    """The value written for ``version`` of ``key``: it names both, so a misdelivered reply
    (another key's value, an older version, or another command's reply) is detectable."""
    return f"{key}{SEP}{version}{SEP}{'x' * pad}"


def _decoded(value: object) -> str | None:
    """``value`` as text (bytes decoded as UTF-8); None if it is neither text nor UTF-8."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def decode_value(value: object) -> tuple[str, int] | None:
    """``(key, version)`` from a value written by :func:`encode_value`; None if it is not one."""
    text = _decoded(value)
    if text is None:
        return None
    parts = text.split(SEP)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


@dataclass(slots=True)
class Op:
    """One command (or pipeline) as a caller saw it."""

    worker: int
    kind: str
    start: float
    end: float
    ok: bool
    error: str | None = None
    """Exception class name, or ``"Cancelled"`` for a deadline the workload set itself."""
    slots: tuple[int, ...] = ()
    """The slots of the keys it touched (empty: none known, e.g. a publish)."""

    @property
    def latency(self) -> float:
        """Seconds the caller was blocked."""
        return self.end - self.start

    @property
    def counted(self) -> bool:
        """Whether it counts in the figures: every command except those the workload cancelled
        itself (its own deadline is not the client's doing)."""
        return self.error != CANCELLED

    @property
    def failed(self) -> bool:
        """A counted command that did not succeed: what the report and the live progress
        call an error."""
        return not self.ok and self.error != CANCELLED


@dataclass(slots=True)
class Observation:
    """A value read back for a key that has exactly one writer.

    ``lo`` is the version of the last write the writer saw acknowledged (0: none), ``hi`` the
    highest version it ever sent (acknowledged or not). A correct read names ``key`` and a
    version in ``lo..hi``; a missing key reads as ``got_key == key`` and ``got_version == -1``;
    ``got_key`` is None when the reply was not a value this workload writes at all.
    """

    key: str
    at: float
    got_key: str | None
    got_version: int
    lo: int
    hi: int
    acked_at: float
    """When version ``lo`` was acknowledged."""
    final: bool = False
    """Read in the end-of-run verification (not by a worker during the run)."""
    raw: str = ""


@dataclass(frozen=True, slots=True)
class Window:
    """A time interval: a fault being active, or a window where the server may lose writes."""

    name: str
    start: float
    end: float
    nodes: tuple[Address, ...] = ()
    """For a fault: the real addresses of the nodes it hit."""
    everywhere: bool = False
    """For a fault: it hit every node (``nodes`` is then empty)."""
    slots: frozenset[int] = frozenset()
    """For a fault on one node: the workload's slots that node served when the fault began
    (from the client's topology)."""

    def contains(self, t: float) -> bool:
        """Whether ``t`` lies in ``[start, end]``."""
        return self.start <= t <= self.end

    @property
    def target(self) -> str:
        """What the fault hit, for people: ``all``, or the real ``host:port`` of each node."""
        return "all" if self.everywhere else ", ".join(str(n) for n in self.nodes)

    @property
    def single_node(self) -> Address | None:
        """The one node the fault hit (None: several, every one, or none)."""
        return self.nodes[0] if len(self.nodes) == 1 and not self.everywhere else None


@dataclass(slots=True)
class ConnSample:
    """Connections of one client at one instant, by node (as the client names it) and
    state."""

    at: float
    client: int
    per_node: dict[Address, int]
    states: dict[str, int]


@dataclass(slots=True)
class HandoffCheck:
    """Where one node's connections were after a MOVING handoff had time to finish."""

    node: Address
    """The node, as the client names it."""
    endpoint: Address
    """The endpoint MOVING named."""
    targeted: int
    """Connections checked (those MOVING was sent to, or those open at the end of the load)."""
    stragglers: list[str]
    """Connections not on ``endpoint`` when the check was made."""
    when: str = "after MOVING"


@dataclass(slots=True)
class AuthCheck:
    """Which users the client's connections to one node were authenticated as."""

    node: Address
    """The node's real address."""
    expected: str
    users: list[str]
    """The ``user=`` field of every connection of the client, from ``CLIENT LIST``."""
    rotated_in: float | None
    """Seconds until no connection was left on the old credentials (None: never, in time)."""


@dataclass(slots=True)
class Publish:
    """One PUBLISH (or SPUBLISH) as its publisher saw it.  The payload names the channel, the
    publisher and ``seq`` (see :func:`encode_message`)."""

    publisher: int
    seq: int
    """The publisher's own counter: it grows by one with every publish, whatever the channel."""
    channel: str
    start: float
    end: float
    ok: bool
    """Acknowledged by the server (a failed publish may or may not have been delivered)."""
    error: str | None = None


@dataclass(slots=True)
class Delivery:
    """A published message as one subscriber's stream gave it."""

    subscriber: int
    pos: int
    """Position in that subscriber's stream (deliveries and events share the numbering)."""
    at: float
    kind: str
    """``message``, ``smessage`` or ``pmessage``."""
    channel: str
    """The channel it arrived on."""
    named: str | None
    """The channel its payload names (None: not a payload any publisher sends)."""
    publisher: int = -1
    seq: int = -1
    raw: str = ""


@dataclass(slots=True)
class PubSubEvent:
    """Anything but a message in a subscriber's stream: a confirmation (``subscribe``,
    ``ssubscribe``), a ``gap`` (with the channels it lists), an unsubscription, or an error the
    stream raised (``error``)."""

    subscriber: int
    pos: int
    at: float
    kind: str
    channels: tuple[str, ...] = ()
    detail: str = ""


@dataclass
class PubSubRecord:
    """What the pub/sub load did and saw (``trio_cluster.chaos.pubsubload``)."""

    subscriptions: dict[int, tuple[str, ...]] = field(default_factory=dict)
    """Subscriber -> the channels it subscribed to."""
    sharded: frozenset[str] = frozenset()
    """The channels used with SSUBSCRIBE/SPUBLISH (the others: SUBSCRIBE/PUBLISH)."""
    publishes: list[Publish] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)
    events: list[PubSubEvent] = field(default_factory=list)
    publishing: Window | None = None
    """From the first publish to the last (publishers start once every subscription is
    confirmed)."""
    peak_connections: int = 0
    """Most pub/sub connections the client had open at once (sampled)."""
    stats: dict[str, Any] = field(default_factory=dict)
    """The client's ``pubsub_stats()`` before the PubSubs were closed."""
    open_after_close: int | None = None
    """``pubsub_stats().open_connections`` once every PubSub was closed (None: not measured)."""
    notes: list[str] = field(default_factory=list)


#: Separator inside every payload the publishers send: ``<channel>#<publisher>#<seq>``.
MSG_SEP = "#"


def encode_message(channel: str, publisher: int, seq: int) -> str:
    """The payload of message ``seq`` of ``publisher`` on ``channel``."""
    return f"{channel}{MSG_SEP}{publisher}{MSG_SEP}{seq}"


def decode_message(data: object) -> tuple[str, int, int] | None:
    """``(channel, publisher, seq)`` from a payload of :func:`encode_message`, else None."""
    text = _decoded(data)
    if text is None:
        return None
    parts = text.rsplit(MSG_SEP, 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


@dataclass
class RunRecord:
    """Everything one scenario run recorded, in the time base of ``trio.current_time()``."""

    start: float = 0.0
    end: float = 0.0
    load_end: float | None = None
    """When the load was told to stop (``end`` is later: draining, closing)."""
    warm_at: float | None = None
    """When the pools were filled and the warm-up began (None: no wait; see the runner)."""
    ops: list[Op] = field(default_factory=list)
    anomalies: list[Observation] = field(default_factory=list)
    """Reads whose value was outside ``lo..hi`` or named another key."""
    final_reads: list[Observation] = field(default_factory=list)
    reads_checked: int = 0
    fault_windows: list[Window] = field(default_factory=list)
    loss_windows: list[Window] = field(default_factory=list)
    samples: list[ConnSample] = field(default_factory=list)
    max_per_node: dict[tuple[int, Address], int] = field(default_factory=dict)
    """(client, node as the client names it) -> most connections seen open at once."""
    unusable_spans: dict[int, float] = field(default_factory=dict)
    """Connection id -> longest time it was seen UNUSABLE (seconds)."""
    leaked_connections: list[str] = field(default_factory=list)
    """Connections a client still listed after it was closed."""
    baseline_clients: dict[int, int] = field(default_factory=dict)
    final_clients: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    client_stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per client: its last ``ClusterStats`` (per-node pools, redirects, retries, errors)."""
    maintenance: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per client: its last ``maintenance_stats()`` (handoffs, re-authentications...)."""
    handoffs: list[HandoffCheck] = field(default_factory=list)
    """Set by MOVING faults: where connections were once their handoff had time to finish."""
    relaxed_windows: list[Window] = field(default_factory=list)
    """Set by relaxed-timeout faults: every connection to the slowed node was relaxed, and
    replies were slower than the read timeout but faster than the relaxed one."""
    auth_checks: list[AuthCheck] = field(default_factory=list)
    """Set by credential-rotation faults: the users the client's connections ended on."""
    baseline_pubsub_clients: dict[int, int] = field(default_factory=dict)
    """Per node: clients in subscribed mode (``CLIENT LIST TYPE pubsub``) before the run."""
    final_pubsub_clients: dict[int, int] = field(default_factory=dict)
    pubsub: PubSubRecord | None = None
    """Set by scenarios with a pub/sub load."""
    stalls: list[Window] = field(default_factory=list)
    """When this process's event loop did not run (the monitor woke up late): the machine was
    too busy to serve anything, whatever the client does."""
    node_names: dict[Address, Address] = field(default_factory=dict)
    """How the client names a node (a proxy or injector address) -> the node's real address
    (set before the load starts)."""

    def node(self, name: Address | str) -> Address:
        """The real address of a node the client calls ``name`` (``host:port`` as the client's
        stats name it, or an Address); unchanged if unknown."""
        address = Address.of(name)
        return self.node_names.get(address, address)
