"""What a handler's result becomes: a reply JSON for a waiting caller, a callback action."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic_core import to_json

from actionbus.exceptions import ActionRejected
from actionbus.models.actions import DomainAction, DomainActionResponse, utc_now
from actionbus.tracing import trace_carrier
from actionbus.workers.context import WorkerContext
from actionbus.workers.routing import is_response, result_data

__all__ = [
    "NOTHING", "Prepared", "callback_for", "callback_refusal", "is_expired", "is_waiting",
    "prepare",
]

logger = logging.getLogger("actionbus.worker")


@dataclass(frozen=True, slots=True)
class Prepared:
    """A finished attempt: the reply JSON and/or callback ``(stream, JSON)`` to send."""

    reply: str | None
    callback: tuple[str, str] | None


NOTHING = Prepared(None, None)
"""Nothing to send: what ``prepare`` returns when no one reads the result."""


def is_expired(expires_at: Any, skew_s: float) -> bool:
    """True if ``expires_at`` (UTC datetime or ``None``) passed more than ``skew_s`` ago."""
    if expires_at is None:
        return False
    try:
        return bool(utc_now() - timedelta(seconds=skew_s) > expires_at)
    except (OverflowError, TypeError):
        return False


def is_waiting(action: DomainAction) -> bool:
    """True if a caller waits on a reply list (pseudo-sync), not for a callback action."""
    return action.callback_queue_name is not None and action.callback_action_type is None


def _success_reply_json(action: DomainAction, data: dict[str, Any]) -> str:
    """The JSON of a successful ``DomainActionResponse``, built without re-validating
    values that are already valid (the hot path of request/reply)."""
    reply: dict[str, Any] = {
        "action_id": uuid.uuid4(),
        "correlation_id": action.reply_correlation_id,
        "action_type_response_to": action.action_type,
        "success": True,
        "timestamp": utc_now(),
        "data": data,
        "trace_id": action.trace_id,
        "error": None,
    }
    return to_json(reply).decode()


def prepare(ctx: WorkerContext, action: DomainAction, result: Any) -> Prepared:
    """The reply JSON and/or callback for a handler's result.

    Built only for someone who reads it; a result that cannot be serialized is rejected
    here (``ActionRejected``), inside the handler's error handling.
    """
    if action.callback_queue_name is None and action.callback_action_type is None:
        if result is not None and not isinstance(result, dict) and not is_response(result):
            result_data(result)  # a result of a type no reply could carry is still an error
        return NOTHING
    waiting = is_waiting(action)
    data = None if is_response(result) else result_data(result)
    try:
        if waiting and data is not None:
            return Prepared(_success_reply_json(action, data), None)
        response = result if data is None else DomainActionResponse.for_action(
            action, data=data)
        if waiting:
            return Prepared(response.model_dump_json(exclude_none=True), None)
        return Prepared(None, callback_for(ctx, action, response))
    except Exception as exc:
        raise ActionRejected(
            f"the result of the {action.action_type} handler cannot be sent: "
            f"{type(exc).__name__}: {exc}",
            error_code="unserializable_result",
        ) from exc


def callback_refusal(ctx: WorkerContext, action: DomainAction) -> str | None:
    """Why the callback ``action`` asks for is not allowed (``None`` if it is, or if none).

    The rule (no confused deputy): a callback goes to the requesting action's
    ``origin_service`` stream, with a ``callback_action_type`` in that service's namespace.
    Other target services need ``WorkerSettings.callback_targets`` (``"*"``: any service,
    any type).
    """
    if action.callback_action_type is None:
        return None
    allowed = ctx.settings.callback_targets
    origin = action.origin_service
    queue = action.callback_queue_name
    target = ctx.queues.parse(queue).service if queue else origin
    if target is None:
        return None  # nowhere to send it: logged when the callback is built
    if "*" in allowed:
        return None
    if target != origin and target not in allowed:
        return (
            f"callback to service {target!r} refused: callbacks go to the requesting action's "
            f"origin_service ({origin!r}); list {target!r} in WorkerSettings.callback_targets "
            "to allow it"
        )
    namespace = action.callback_action_type.split(".", 1)[0]
    if namespace != target:
        return (
            f"callback_action_type {action.callback_action_type!r} refused: a callback sent to "
            f"{target!r} must have a type of that service ('{target}.…')"
        )
    return None


def callback_for(
    ctx: WorkerContext, action: DomainAction, response: DomainActionResponse
) -> tuple[str, str] | None:
    """The stream and JSON of the callback action answering ``action``."""
    assert action.callback_action_type is not None
    qm = ctx.queues
    origin = action.origin_service
    stream = action.callback_queue_name or (
        qm.get_service_action_stream(origin) if origin else None
    )
    if stream is None:
        logger.error(
            "cannot send callback %s for %s: neither callback_queue_name nor origin_service",
            action.callback_action_type, action.action_id,
        )
        return None
    metadata: dict[str, Any] = {
        "response_to": action.action_type,
        "response_to_action_id": str(action.action_id),
        "success": response.success,
        "callback_context": action.metadata.get("callback_context"),
        "error": None if response.error is None else response.error.model_dump(
            mode="json", exclude_none=True),
    }
    metadata.update(trace_carrier(action))  # the callback's handler joins the same trace
    callback = DomainAction(
        action_type=action.callback_action_type,
        target_service=qm.parse(stream).service,
        origin_service=ctx.service,
        correlation_id=action.reply_correlation_id,
        trace_id=action.trace_id,
        tenant_id=action.tenant_id,
        session_id=action.session_id,
        task_id=action.task_id,
        user_id=action.user_id,
        data=response.data,
        metadata=metadata,
    )
    return stream, callback.model_dump_json(exclude_none=True)
