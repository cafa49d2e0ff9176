"""OpenTelemetry traces for trio-cluster: one span per command, one parent span per pipeline
or transaction, span events for redirects, retries and reconnects.

Span names are the command (``GET``) or ``PIPELINE`` / ``MULTI``; attributes follow the
database semantic conventions (``db.system.name=redis``, ``db.operation.name``,
``server.address``/``server.port`` of the node that actually answered, ``db.namespace``,
``error.type``; ``db.operation.batch.size`` on a batch).  Argument values are never recorded:
keys and values can be secrets, and span attributes travel far.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from ..hooks import CommandCall, Hook, PipelineCall
from . import names

#: Child spans drawn under a pipeline's span at most (the rest are counted in its size).
MAX_PIPELINE_CHILDREN = 128


class TracingHook(Hook):
    """Creates the spans through ``tracer`` for every client it is registered on."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def before_command(self, call: CommandCall) -> Any:
        """Start the command's span (a child of the caller's current span)."""
        return self._tracer.start_span(
            call.name,
            kind=SpanKind.CLIENT,
            attributes={
                names.DB_SYSTEM_NAME: "redis",
                names.DB_OPERATION_NAME: call.name,
                names.DB_NAMESPACE: str(call.db),
            },
        )

    def after_command(self, call: CommandCall, token: Any) -> None:
        """Finish the span: where the command went, what happened on the way, how it ended."""
        if token is not None:
            _finish(token, call, call.error)

    def before_pipeline(self, call: PipelineCall) -> Any:
        """Start the batch's span and make it current, so each command's span is its child."""
        span = self._tracer.start_span(
            call.name,
            kind=SpanKind.CLIENT,
            attributes={
                names.DB_SYSTEM_NAME: "redis",
                names.DB_OPERATION_NAME: call.name,
                names.DB_NAMESPACE: str(call.db),
                names.BATCH_SIZE: call.size,
            },
        )
        return span, context.attach(trace.set_span_in_context(span))

    def after_pipeline(self, call: PipelineCall, token: Any) -> None:
        """A span per command (up to ``MAX_PIPELINE_CHILDREN``) under the batch's, then the
        batch's own end."""
        if token is None:
            return
        span, attached = token
        context.detach(attached)
        parent = trace.set_span_in_context(span)
        start = span.start_time if hasattr(span, "start_time") else None
        for command in call.commands[:MAX_PIPELINE_CHILDREN]:
            child = self._tracer.start_span(
                command.name,
                context=parent,
                kind=SpanKind.CLIENT,
                start_time=start,
                attributes={
                    names.DB_SYSTEM_NAME: "redis",
                    names.DB_OPERATION_NAME: command.name,
                    names.DB_NAMESPACE: str(command.db),
                },
            )
            _finish(child, command, command.error)
        span.set_attribute(names.BATCH_SIZE, call.size)
        if call.error is not None:
            _fail(span, call.error)
        span.end()


def _finish(span: Any, call: CommandCall, error: BaseException | None) -> None:
    if call.server is not None:
        span.set_attribute(names.SERVER_ADDRESS, call.server[0])
        span.set_attribute(names.SERVER_PORT, call.server[1])
    for timestamp, name, attributes in call.events:
        span.add_event(name, attributes=attributes, timestamp=timestamp)
    if error is not None:
        _fail(span, error)
    span.end()


def _fail(span: Any, error: BaseException) -> None:
    span.set_attribute(names.ERROR_TYPE, type(error).__name__)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
