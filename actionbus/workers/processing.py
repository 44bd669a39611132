"""One action from read to acknowledgement: decode, route, run, answer, retry or bury."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_core import to_json
from redis.exceptions import RedisError

from actionbus.dead_letters import dead_letter_fields
from actionbus.exceptions import ActionRejected, InvalidNameError
from actionbus.models.actions import (
    DomainAction,
    DomainActionResponse,
    ErrorDetail,
    utc_now,
)
from actionbus.tracing import process_span
from actionbus.workers.output import OutputBatcher
from actionbus.workers.reclaim import reclaim_for_retry
from actionbus.workers.routing import Route, is_response, result_data

if TYPE_CHECKING:
    from actionbus.connection import AnyRedis
    from actionbus.workers.base_worker import BaseWorker

__all__ = ["ActionProcessor", "WorkerStats"]

logger = logging.getLogger("actionbus.worker")

_DATA_KEYS = (b"data", "data")


@dataclass
class WorkerStats:
    """Counters of what a worker did since it started."""

    handled: int = 0
    failed_attempts: int = 0
    error_replies: int = 0
    dead_lettered: int = 0
    expired_skipped: int = 0
    duplicates_skipped: int = 0
    reclaimed: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


class _Rejected(Exception):
    """Internal: the entry is dead-lettered without (further) attempts."""

    def __init__(self, reason: str, error_type: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.error_type, self.message = reason, error_type, message


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
    }
    if action.trace_id is not None:
        reply["trace_id"] = action.trace_id
    return to_json(reply).decode()


def _error_detail(exc: BaseException) -> ErrorDetail:
    code = getattr(exc, "error_code", None)
    return ErrorDetail(error_type=type(exc).__name__, error_code=code, message=str(exc))


class ActionProcessor:
    """Runs actions for one worker; owns the bookkeeping of entries in progress."""

    def __init__(self, worker: BaseWorker, redis: AnyRedis, output: OutputBatcher) -> None:
        self.worker = worker
        self.redis = redis
        self.output = output
        self.settings = worker.settings
        self.stats = worker.stats
        self.qm = worker.queue_manager
        self.dead_stream = self.qm.get_dead_letter_stream(worker.service_name)
        self.reply_ttl = worker.app_settings.response_ttl_seconds
        self._started: dict[str, float] = {}

    @property
    def owned(self) -> set[str]:
        """Entries this worker is handling or about to retry."""
        return set(self._started)

    def older_than(self, seconds: float) -> list[str]:
        """Entries in progress for longer than ``seconds`` (they need a heartbeat)."""
        limit = time.monotonic() - seconds
        return [entry_id for entry_id, since in self._started.items() if since < limit]

    def claim(self, entry_id: str) -> None:
        """Mark an entry as ours from the moment its task is created."""
        self._started[entry_id] = time.monotonic()

    async def process(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        """Handle one entry (``claim()``-ed first), retrying with backoff until done or buried."""
        await self._process(entry_id, fields, deliveries)
        await self.output.flush()

    async def _process(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        self._started.setdefault(entry_id, time.monotonic())
        try:
            raw = next((fields[k] for k in _DATA_KEYS if k in fields), None)
            try:
                action = self._decode(raw)
            except _Rejected as rejected:
                self._bury(entry_id, raw, rejected, deliveries)
                return
            if deliveries > self.settings.max_deliveries:
                # Attempted max_deliveries times by workers that died before acknowledging.
                self._bury(entry_id, raw, _Rejected(
                    "max_deliveries", "Abandoned",
                    f"delivered {deliveries} times without being acknowledged (the workers "
                    "handling it died or hung)",
                ), deliveries)
                return
            while True:
                if await self._attempt(entry_id, raw, action, deliveries):
                    return
                await asyncio.sleep(self.settings.retry_delay(deliveries))
                if not await reclaim_for_retry(
                    self.redis, self.worker.stream, self.worker.group, self.worker.consumer,
                    entry_id,
                ):
                    logger.warning("entry %s vanished before its retry; giving up", entry_id)
                    return
                deliveries += 1
        except (RedisError, OSError) as exc:
            logger.warning(
                "Redis error while handling %s (%s); it stays pending and will be retried",
                entry_id, type(exc).__name__,
            )
        finally:
            self._started.pop(entry_id, None)

    def _decode(self, raw: bytes | str | None) -> DomainAction:
        if raw is None:
            raise _Rejected("malformed", "MissingField", "the entry has no 'data' field")
        try:
            action = DomainAction.model_validate_json(raw)
        except ValidationError as exc:
            kind = "InvalidJSON" if any(e["type"] == "json_invalid" for e in exc.errors()) \
                else "InvalidAction"
            raise _Rejected("malformed", kind, str(exc)) from exc
        try:
            self._check_reply_target(action)
        except InvalidNameError as exc:
            raise _Rejected("malformed", "InvalidReplyTarget", str(exc)) from exc
        return action

    def _check_reply_target(self, action: DomainAction) -> None:
        if action.callback_queue_name is None:
            return
        if action.callback_action_type is not None:
            self.qm.check_action_stream(action.callback_queue_name)
        else:
            self.qm.check_response_queue(action.callback_queue_name)

    def _route(self, action: DomainAction) -> Route | None:
        return self.worker.registry.get(action.action_type)

    async def _attempt(
        self, entry_id: str, raw: bytes | str | None, action: DomainAction, deliveries: int
    ) -> bool:
        """One delivery. ``True`` when finished (acked or buried), ``False`` to retry."""
        waiting = action.callback_queue_name is not None and action.callback_action_type is None
        if action.expires_at is not None and utc_now() > action.expires_at:
            self.stats.expired_skipped += 1
            logger.info(
                "skipped %s (%s): its caller stopped waiting at %s",
                action.action_id, action.action_type, action.expires_at.isoformat(),
            )
            self.output.ack(entry_id)
            return True
        route = self._route(action)
        marker = None
        if route is not None and route.idempotent:
            marker = self.qm.get_idempotency_key(self.worker.service_name, str(action.action_id))
            if await self._already_done(entry_id, action, marker, waiting):
                return True
        try:
            with process_span(action, self.worker.stream):
                if route is None:
                    result = await self.worker.handle_action(action)
                else:
                    result = await route.handler(action, route.parse_data(action))
            reply, callback = self._prepare(action, result, waiting)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler's failure is data, not a crash
            return self._failed(entry_id, raw, action, deliveries, exc, waiting)
        if marker is not None:
            # Written before anything else, so a crash from here on cannot repeat the handler.
            await self.redis.set(marker, reply or "1", ex=self.settings.idempotency_ttl_s)
        self._succeeded(entry_id, action, reply, callback)
        return True

    def _prepare(
        self, action: DomainAction, result: Any, waiting: bool
    ) -> tuple[str | None, tuple[str, str] | None]:
        """The reply JSON and/or callback (stream, JSON) for a handler's result.

        Built only for someone who reads it; a result that cannot be serialized is
        rejected here, inside the handler's error handling.
        """
        data = None if is_response(result) else result_data(result)
        if not waiting and action.callback_action_type is None:
            return None, None
        try:
            if waiting and data is not None:
                return _success_reply_json(action, data), None
            response = result if data is None else DomainActionResponse.for_action(
                action, data=data)
            if waiting:
                return response.model_dump_json(exclude_none=True), None
            return None, self._callback(action, response)
        except Exception as exc:
            raise ActionRejected(
                f"the result of the {action.action_type} handler cannot be sent: "
                f"{type(exc).__name__}: {exc}",
                error_code="unserializable_result",
            ) from exc

    async def _already_done(
        self, entry_id: str, action: DomainAction, marker: str, waiting: bool
    ) -> bool:
        stored = await self.redis.get(marker)
        if stored is None:
            return False
        self.stats.duplicates_skipped += 1
        logger.info("skipped duplicate %s (%s): already handled", action.action_id,
                    action.action_type)
        if waiting and action.callback_queue_name:
            payload = stored.decode() if isinstance(stored, bytes) else stored
            if payload.startswith("{"):
                self.output.reply(action.callback_queue_name, payload, self.reply_ttl)
        self.output.ack(entry_id)
        return True

    def _succeeded(
        self,
        entry_id: str,
        action: DomainAction,
        reply: str | None,
        callback: tuple[str, str] | None,
    ) -> None:
        self.stats.handled += 1
        if reply is not None and action.callback_queue_name:
            if action.expires_at is not None and utc_now() > action.expires_at:
                self.stats.expired_skipped += 1
                logger.info("dropped the reply to %s: its caller stopped waiting",
                            action.action_id)
            else:
                self.output.reply(action.callback_queue_name, reply, self.reply_ttl)
        if callback is not None:
            self.output.xadd(callback[0], {"data": callback[1]})
        self.output.ack(entry_id)

    def _callback(
        self, action: DomainAction, response: DomainActionResponse
    ) -> tuple[str, str] | None:
        """The stream and JSON of the callback action answering ``action``."""
        assert action.callback_action_type is not None
        origin = action.origin_service
        stream = action.callback_queue_name or (
            self.qm.get_service_action_stream(origin) if origin else None
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
        }
        if "callback_context" in action.metadata:
            metadata["callback_context"] = action.metadata["callback_context"]
        if response.error is not None:
            metadata["error"] = response.error.model_dump(exclude_none=True)
        callback = DomainAction(
            action_type=action.callback_action_type,
            target_service=self.qm.parse(stream).service,
            origin_service=self.worker.service_name,
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

    def _failed(
        self,
        entry_id: str,
        raw: bytes | str | None,
        action: DomainAction,
        deliveries: int,
        exc: Exception,
        waiting: bool,
    ) -> bool:
        self.stats.failed_attempts += 1
        if waiting and action.callback_queue_name:
            # The caller is waiting: it gets the error now instead of a timeout.
            self.stats.error_replies += 1
            logger.log(logging.INFO if isinstance(exc, ActionRejected) else logging.WARNING,
                       "%s (%s) failed: %s: %s; replied with the error",
                       action.action_id, action.action_type, type(exc).__name__, exc)
            if action.expires_at is None or utc_now() <= action.expires_at:
                error = DomainActionResponse.for_action(action, error=_error_detail(exc))
                self.output.reply(action.callback_queue_name,
                                  error.model_dump_json(exclude_none=True),
                                  self.reply_ttl)
            self.output.ack(entry_id)
            return True
        permanent = isinstance(exc, ActionRejected)
        if permanent or deliveries >= self.settings.max_deliveries:
            reason = "rejected" if permanent else "max_deliveries"
            self._bury(entry_id, raw, _Rejected(reason, type(exc).__name__, str(exc)), deliveries)
            if action.callback_action_type is not None:
                failure = DomainActionResponse.for_action(action, error=_error_detail(exc))
                callback = self._callback(action, failure)
                if callback is not None:
                    self.output.xadd(callback[0], {"data": callback[1]})
            return True
        logger.warning(
            "%s (%s) failed on delivery %d/%d: %s: %s; retrying in %.2fs",
            action.action_id, action.action_type, deliveries, self.settings.max_deliveries,
            type(exc).__name__, exc, self.settings.retry_delay(deliveries),
        )
        return False

    def _bury(
        self, entry_id: str, raw: bytes | str | None, why: _Rejected, deliveries: int
    ) -> None:
        """Move an entry to the dead-letter stream with its reason, then acknowledge it."""
        self.stats.dead_lettered += 1
        logger.error(
            "dead-lettered %s from %s after %d deliver%s (%s: %s: %.300s)",
            entry_id, self.worker.stream, deliveries, "y" if deliveries == 1 else "ies",
            why.reason, why.error_type, why.message,
        )
        self.output.xadd(
            self.dead_stream,
            dead_letter_fields(
                data=raw if raw is not None else "",
                reason=why.reason,
                error_type=why.error_type,
                error_message=why.message,
                deliveries=deliveries,
                original_id=entry_id,
                stream=self.worker.stream,
                consumer=self.worker.consumer,
            ),
        )
        self.output.ack(entry_id)
