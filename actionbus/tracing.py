"""OpenTelemetry tracing (``pip install 'actionbus[otel]'``), off until enabled.

``enable_tracing()`` turns it on for the process:

- every send opens a PRODUCER span ``"<action_type> publish"`` (child of the caller's span,
  or the root of a new trace), whose context is written to the action's
  ``metadata["traceparent"]`` (W3C Trace Context, plus ``tracestate`` when present);
  ``trace_id`` is set to the trace's id unless the sender set one;
- a worker runs each handler inside a CONSUMER span named ``"<action_type> process"``,
  child of that PRODUCER span, recording failures, with ``actionbus.delivery`` (1 for a
  first delivery, 2+ for a retry that went through the delayed set);
- a callback action carries the original action's ``traceparent``, so its handler joins
  the same trace.

Exporters need the SDK: ``pip install opentelemetry-sdk`` (the ``[otel]`` extra installs
only the API).

Any service that forwards ``traceparent`` joins the same trace. Disabled, it costs one
check per action.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from actionbus.models.actions import DomainAction

__all__ = [
    "disable_tracing", "enable_tracing", "inject_context", "process_span", "publish_span",
    "trace_carrier", "tracing_enabled",
]

_CARRIER_KEYS = ("traceparent", "tracestate")

_tracer: Any = None
tracing_on = False
"""``tracing_enabled()`` as a plain flag, for the worker's per-action check."""


def enable_tracing(tracer_provider: Any = None) -> None:
    """Trace sends and handling with ``tracer_provider`` (default: the global one)."""
    global _tracer, tracing_on
    from opentelemetry import trace

    _tracer = trace.get_tracer("actionbus", tracer_provider=tracer_provider)
    tracing_on = True


def disable_tracing() -> None:
    """Stop tracing."""
    global _tracer, tracing_on
    _tracer, tracing_on = None, False


def tracing_enabled() -> bool:
    """Whether ``enable_tracing()`` is in effect (sends then run the tracing layer)."""
    return _tracer is not None


def inject_context(action: DomainAction) -> None:
    """Carry a PRODUCER span's context in the action (no-op unless tracing is enabled)."""
    with publish_span(action):
        pass


def publish_span(action: DomainAction) -> contextlib.AbstractContextManager[Any]:
    """The PRODUCER span around one send, its context written into ``action`` (a shared
    no-op unless enabled). The client's tracing publish layer runs the send inside it."""
    if _tracer is None:
        return _NO_SPAN
    return _publish(action)


@contextlib.contextmanager
def _publish(action: DomainAction) -> Iterator[None]:
    from opentelemetry import propagate, trace

    attributes = {
        "messaging.system": "redis",
        "messaging.destination.name": action.target,
        "messaging.operation": "publish",
        "messaging.message.id": str(action.action_id),
        "actionbus.action_type": action.action_type,
    }
    with _tracer.start_as_current_span(
        f"{action.action_type} publish", kind=trace.SpanKind.PRODUCER, attributes=attributes,
        record_exception=True, set_status_on_exception=True,
    ) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        action.metadata.update(carrier)
        span_context = span.get_span_context()
        if action.trace_id is None and span_context.is_valid:
            action.trace_id = format(span_context.trace_id, "032x")
        yield


def _deliveries_before(action: DomainAction) -> int:
    # metadata["actionbus_deliveries"], as actionbus.delayed.deliveries_of reads it
    value = action.metadata.get("actionbus_deliveries", 0)
    return value if isinstance(value, int) and value > 0 else 0


def trace_carrier(action: DomainAction) -> dict[str, str]:
    """The action's ``traceparent``/``tracestate``, for a message that continues its trace."""
    return {k: v for k in _CARRIER_KEYS if isinstance(v := action.metadata.get(k), str)}


_NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def process_span(action: DomainAction, stream: str) -> contextlib.AbstractContextManager[Any]:
    """The span a handler runs in, child of the sender's (a shared no-op unless enabled)."""
    if _tracer is None:
        return _NO_SPAN
    return _span(action, stream)


@contextlib.contextmanager
def _span(action: DomainAction, stream: str) -> Iterator[None]:
    from opentelemetry import propagate, trace

    parent = propagate.extract({k: v for k, v in action.metadata.items() if isinstance(v, str)})
    attributes = {
        "messaging.system": "redis",
        "messaging.destination.name": stream,
        "messaging.operation": "process",
        "messaging.message.id": str(action.action_id),
        "actionbus.action_type": action.action_type,
        "actionbus.delivery": _deliveries_before(action) + 1,
    }
    with _tracer.start_as_current_span(
        f"{action.action_type} process", context=parent, kind=trace.SpanKind.CONSUMER,
        attributes=attributes, record_exception=True, set_status_on_exception=True,
    ):
        yield
