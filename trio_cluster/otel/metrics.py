"""OpenTelemetry metrics for trio-cluster clients, named as redis-py 8 names them.

:class:`MetricsHook` is a :class:`~trio_cluster.hooks.Hook`: it records what happens per
command (``db.client.operation.duration``, ``redis.client.errors``), per dial
(``db.client.connection.create_time``) and per pool wait (``db.client.connection.wait_time``),
and it registers observable instruments that read the counters every open client already
keeps (connections per state, closes, redirects, breakers...) when the collector asks.  The
metric groups and the command filter are redis-py's ``OTelConfig``: the same switch, the same
meaning.

A client that closes leaves its cumulative counts behind in the hook (``_Observed``), so
that every counter stays monotonic when clients come and go; a client is read on its own trio
thread, whichever thread the exporter collects from.
"""

from __future__ import annotations

import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from redis.observability.config import MetricGroup, OTelConfig

from ..hooks import CommandCall, DialCall, Hook, PipelineCall, WaitCall
from . import names, readings
from .readings import Observed, Reading

Reader = Callable[[Observed], Iterator[Reading]]

#: Every observable instrument: name -> (kind, unit, group, reader, cumulative, description).
#: ``cumulative`` readings are kept when a client closes (counters); the others are current
#: values (gauges, up-down counts) that leave with it.
OBSERVABLE: dict[str, tuple[str, str, MetricGroup, Reader, bool, str]] = {
    names.CONNECTION_COUNT: (
        "updown", "{connection}", MetricGroup.CONNECTION_BASIC, readings.connection_count,
        False, "Number of connections currently in the pool by state",
    ),
    names.CONNECTION_STATES: (
        "updown", "{connection}", MetricGroup.CONNECTION_BASIC, readings.connection_states,
        False, "Connections per state of the pool's state machine",
    ),
    names.POOL_WAITERS: (
        "updown", "{request}", MetricGroup.CONNECTION_BASIC, readings.pool_waiters,
        False, "Callers parked waiting for a connection",
    ),
    names.CONNECTION_UNUSABLE_TIME: (
        "counter", "s", MetricGroup.CONNECTION_BASIC, readings.unusable_time,
        True, "Seconds connections spent UNUSABLE (draining, handoff, re-authentication)",
    ),
    names.CONNECTION_RELAXED_TIMEOUT: (
        "updown", "{relaxation}", MetricGroup.CONNECTION_BASIC, readings.relaxed_timeouts,
        False, "Connections whose timeouts are relaxed during maintenance",
    ),
    names.CONNECTION_HANDOFF: (
        "counter", "{handoff}", MetricGroup.CONNECTION_BASIC, readings.handoffs,
        True, "Connections that have been handed off (after a MOVING notification)",
    ),
    names.CONNECTION_TIMEOUTS: (
        "counter", "{timeout}", MetricGroup.CONNECTION_ADVANCED, readings.connection_timeouts,
        True, "Timeouts while obtaining a connection from the pool",
    ),
    names.CONNECTION_CLOSED: (
        "counter", "{connection}", MetricGroup.CONNECTION_ADVANCED, readings.connection_closed,
        True, "Total number of closed connections",
    ),
    names.MAINTENANCE_NOTIFICATIONS: (
        "counter", "{notification}", MetricGroup.RESILIENCY, readings.notifications,
        True, "Server-side maintenance notifications received",
    ),
    names.BREAKER_STATE: (
        "gauge", "1", MetricGroup.RESILIENCY, readings.breaker_state,
        False, "Circuit breaker state per node: 0 closed, 1 half-open, 2 open",
    ),
    names.BREAKER_REJECTIONS: (
        "counter", "{command}", MetricGroup.RESILIENCY, readings.breaker_rejections,
        True, "Commands refused at once because their node's breaker was open",
    ),
    names.REDIRECTS: (
        "counter", "{redirect}", MetricGroup.RESILIENCY, readings.redirects,
        True, "MOVED and ASK redirects followed",
    ),
    names.RETRIES: (
        "counter", "{retry}", MetricGroup.RESILIENCY, readings.retries,
        True, "Commands sent again, by reason",
    ),
    names.TOPOLOGY_REFRESHES: (
        "counter", "{refresh}", MetricGroup.RESILIENCY, readings.topology_refreshes,
        True, "Cluster topology reloads, by outcome",
    ),
    names.REAUTHS: (
        "counter", "{connection}", MetricGroup.RESILIENCY, readings.reauths,
        True, "Connections re-authenticated after a credential change, by outcome",
    ),
    names.HANDOFF_FAILURES: (
        "counter", "{handoff}", MetricGroup.RESILIENCY, readings.handoff_failures,
        True, "Handoffs to a MOVING endpoint that failed",
    ),
    names.PUBSUB_MESSAGES: (
        "counter", "{message}", MetricGroup.PUBSUB, readings.pubsub_messages,
        True, "Pub/sub messages delivered to subscribers",
    ),
}  # fmt: skip


class _Observed:
    """The clients a hook watches, and the cumulative counts of those that closed.

    Collection runs on the exporter's thread (a periodic reader's, or the Prometheus HTTP
    server's), while the clients live on their trio thread: a client is read on its own
    thread (``trio.from_thread``, the collector's thread waiting meanwhile), so that nothing
    is read while trio changes it and nothing that needs trio's clock runs off it.  A client
    read from its own thread (an in-memory reader collected from trio code) is read directly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[int, tuple[weakref.ref[Any], trio.lowlevel.TrioToken, int]] = {}
        self._retired: dict[str, dict[tuple[tuple[str, Any], ...], float]] = defaultdict(
            lambda: defaultdict(float)
        )

    def add(self, client: Any) -> None:
        """Start reading ``client`` (called on its trio thread, as it opens)."""
        entry = (weakref.ref(client), trio.lowlevel.current_trio_token(), threading.get_ident())
        with self._lock:
            self._open[id(client)] = entry

    def read(self, name: str, reader: Reader, cumulative: bool) -> dict[Any, float]:
        """The summed readings of every open client (plus, for counters, closed ones)."""
        totals: dict[Any, float] = defaultdict(float)
        with self._lock:
            entries = list(self._open.values())
            if cumulative:
                for key, value in self._retired[name].items():
                    totals[key] += value
        for ref, token, thread in entries:
            client = ref()
            if client is not None:
                for key, value in _read(client, reader, token, thread):
                    totals[key] += value
        return totals

    def retire(self, client: Any) -> None:
        """Keep what ``client`` counted, then stop reading it (called on its trio thread)."""
        final = {
            name: list(reader(client))
            for name, (_kind, _unit, _group, reader, cumulative, _doc) in OBSERVABLE.items()
            if cumulative
        }
        with self._lock:
            for name, readings_ in final.items():
                for key, value in readings_:
                    self._retired[name][key] += value
            self._open.pop(id(client), None)


def _read(
    client: Any, reader: Reader, token: trio.lowlevel.TrioToken, thread: int
) -> list[Reading]:
    """``reader(client)`` on the client's own trio thread; nothing if its run has ended."""
    if threading.get_ident() == thread:
        return list(reader(client))
    try:
        return trio.from_thread.run_sync(lambda: list(reader(client)), trio_token=token)
    except trio.RunFinishedError:
        return []


class MetricsHook(Hook):
    """Records trio-cluster's metrics into ``meter`` for every client it is registered on.

    ``config`` is redis-py's ``OTelConfig``: its metric groups choose the instruments (each
    instrument belongs to redis-py's group of that name; trio-cluster's own ones to the group
    closest in spirit, listed in docs/observability.md) and its include/exclude lists filter
    ``db.client.operation.duration`` by command, as in redis-py.
    """

    def __init__(self, meter: Meter, config: OTelConfig) -> None:
        self.config = config
        self._clients = _Observed()
        groups = config.metric_groups
        self._duration = (
            meter.create_histogram(
                names.OPERATION_DURATION,
                unit="s",
                description="Command execution duration",
                explicit_bucket_boundaries_advisory=list(config.buckets_operation_duration),
            )
            if MetricGroup.COMMAND in groups
            else None
        )
        self._errors = (
            meter.create_counter(
                names.CLIENT_ERRORS,
                unit="{error}",
                description="Errors returned to the user and handled internally",
            )
            if MetricGroup.RESILIENCY in groups
            else None
        )
        self._create_time = (
            meter.create_histogram(
                names.CONNECTION_CREATE_TIME,
                unit="s",
                description="Time to create a new connection",
                explicit_bucket_boundaries_advisory=list(config.buckets_connection_create_time),
            )
            if MetricGroup.CONNECTION_BASIC in groups
            else None
        )
        self._wait_time = (
            meter.create_histogram(
                names.CONNECTION_WAIT_TIME,
                unit="s",
                description="Time to obtain an open connection from the pool",
                explicit_bucket_boundaries_advisory=list(config.buckets_connection_wait_time),
            )
            if MetricGroup.CONNECTION_ADVANCED in groups
            else None
        )
        self._tracked: dict[str, bool] = {}
        for name, (kind, unit, group, reader, cumulative, doc) in OBSERVABLE.items():
            if group in groups:
                self._observe(meter, name, kind, unit, reader, cumulative, doc)

    def _observe(
        self,
        meter: Meter,
        name: str,
        kind: str,
        unit: str,
        reader: Reader,
        cumulative: bool,
        description: str,
    ) -> None:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            totals = self._clients.read(name, reader, cumulative)
            return [Observation(value, dict(key)) for key, value in totals.items()]

        create = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }[kind]
        create(name, callbacks=[callback], unit=unit, description=description)

    # --- the hook -----------------------------------------------------------------------------

    def client_opened(self, client: Any) -> None:
        """Start reading ``client``'s counters."""
        self._clients.add(client)

    def client_closed(self, client: Any) -> None:
        """Keep ``client``'s final counts; stop reading it."""
        self._clients.retire(client)

    def _tracks(self, command: str) -> bool:
        tracked = self._tracked.get(command)
        if tracked is None:
            tracked = self._tracked[command] = self.config.should_track_command(command)
        return tracked

    def wants(self, event: str) -> bool:
        """Only what the configured groups need: without the COMMAND group (redis-py's
        default), nothing is done for a command that succeeds."""
        if event == "command":
            return self._duration is not None
        if event == "failure":
            return self._errors is not None
        if event == "pipeline":
            return self._duration is not None or self._errors is not None
        if event == "dial":
            return self._create_time is not None or self._errors is not None
        if event == "wait":
            return self._wait_time is not None
        return event == "client"

    def after_command(self, call: CommandCall, token: Any) -> None:
        """Record the command's duration (the COMMAND group)."""
        if self._duration is not None and self._tracks(call.name):
            self._duration.record(call.duration, command_attributes(call, call.error))

    def command_failed(self, call: CommandCall) -> None:
        """Count an error that reached a caller (the RESILIENCY group)."""
        if self._errors is not None and call.error is not None:
            self._errors.add(1, error_attributes(call.server, call.error, internal=False))

    def after_pipeline(self, call: PipelineCall, token: Any) -> None:
        """Record a pipeline or transaction as one operation (``PIPELINE`` / ``MULTI``), as
        redis-py does, and its error if it raised."""
        error = call.error
        if self._duration is not None and self._tracks(call.name):
            attributes: dict[str, Any] = {
                **_BASE,
                names.DB_NAMESPACE: str(call.db),
                names.DB_OPERATION_NAME: call.name,
            }
            servers = {command.server for command in call.commands}
            if len(servers) == 1 and (server := servers.pop()) is not None:
                attributes[names.SERVER_ADDRESS] = server[0]
                attributes[names.SERVER_PORT] = server[1]
            if error is not None:
                attributes.update(_error_only(error))
            self._duration.record(call.duration, attributes)
        if error is not None and self._errors is not None:
            self._errors.add(1, error_attributes(None, error, internal=False))

    def after_dial(self, call: DialCall) -> None:
        """Record how long opening a connection took (and a failed dial as an internal
        error: the caller may never see it if a retry succeeds)."""
        pool = f"{call.server[0]}:{call.server[1]}"
        if call.error is None and self._create_time is not None:
            self._create_time.record(call.duration, {names.POOL_NAME: pool, **_BASE})
        if call.error is not None and self._errors is not None:
            self._errors.add(1, error_attributes(call.server, call.error, internal=True))

    def after_pool_wait(self, call: WaitCall) -> None:
        """Record how long a caller was parked for a connection."""
        if self._wait_time is not None:
            pool = f"{call.server[0]}:{call.server[1]}"
            self._wait_time.record(call.duration, {names.POOL_NAME: pool, **_BASE})


_BASE = {names.DB_SYSTEM: "redis", names.CLIENT_LIBRARY: names.LIBRARY}


def command_attributes(call: CommandCall, error: BaseException | None) -> dict[str, Any]:
    """redis-py's attributes of ``db.client.operation.duration`` for one command."""
    attributes: dict[str, Any] = {
        **_BASE,
        names.DB_NAMESPACE: str(call.db),
        names.DB_OPERATION_NAME: call.name,
    }
    if call.server is not None:
        attributes[names.SERVER_ADDRESS] = call.server[0]
        attributes[names.SERVER_PORT] = call.server[1]
    if call.retries:
        attributes[names.RETRY_ATTEMPTS] = call.retries
    if call.blocking:
        attributes[names.BLOCKING] = True
    if error is not None:
        attributes.update(_error_only(error))
    return attributes


def error_attributes(
    server: tuple[str, int] | None, error: BaseException, *, internal: bool
) -> dict[str, Any]:
    """redis-py's attributes of ``redis.client.errors``."""
    attributes: dict[str, Any] = {**_BASE, **_error_only(error), names.ERROR_INTERNAL: internal}
    if server is not None:
        attributes[names.SERVER_ADDRESS] = server[0]
        attributes[names.SERVER_PORT] = server[1]
    return attributes


def _error_only(error: BaseException) -> dict[str, Any]:
    status = getattr(error, "status_code", None)
    category = getattr(getattr(error, "error_type", None), "value", None)
    return {
        names.ERROR_TYPE: type(error).__name__,
        names.DB_RESPONSE_STATUS_CODE: status if isinstance(status, str) else "error",
        names.ERROR_CATEGORY: category if isinstance(category, str) else "other",
    }
