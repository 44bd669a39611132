"""One action from read to acknowledgement: decode, run the pipeline, answer, or fail.

Failures are decided by the ``FailurePolicy`` (retry, bury, reply with the error) and
carried out here; the handler runs inside the ``Pipeline``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from actionbus.connection import AnyRedis
from actionbus.dead_letters import dead_letter_fields
from actionbus.delayed import DELIVERIES_KEY, deliveries_of, without_bookkeeping
from actionbus.exceptions import InvalidNameError
from actionbus.models.actions import DomainAction, DomainActionResponse, utc_now
from actionbus.workers.context import Dispatch, WorkerContext
from actionbus.workers.output import OutputBatcher
from actionbus.workers.pipeline import Pipeline, Skipped, StepFailed
from actionbus.workers.policy import Bury, FailurePolicy, ReplyError, Retry
from actionbus.workers.results import Prepared, callback_for
from actionbus.workers.stats import WorkerStats

__all__ = ["ActionProcessor"]

logger = logging.getLogger("actionbus.worker")

_DATA_KEYS = (b"data", "data")


class _Malformed(Exception):
    """Internal: the entry is not a valid action."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type, self.message = error_type, message


class ActionProcessor:
    """Runs actions for one worker; owns the bookkeeping of entries in progress."""

    def __init__(
        self,
        ctx: WorkerContext,
        redis: AnyRedis,
        output: OutputBatcher,
        dispatch: Dispatch,
        pipeline: Pipeline,
        stats: WorkerStats,
        policy: FailurePolicy,
    ) -> None:
        self.ctx = ctx
        self.redis = redis
        self.output = output
        self.dispatch = dispatch
        self.pipeline = pipeline
        self.stats = stats
        self.policy = policy
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
            except _Malformed as bad:
                self._bury(entry_id, raw, self.policy.malformed(bad.error_type, bad.message),
                           deliveries)
                return
            deliveries += deliveries_of(action)  # used before a retry through the delayed set
            refused = self.policy.admit(deliveries)
            if refused is not None:
                self._bury(entry_id, raw, refused, deliveries)
                return
            while True:
                retry = await self._attempt(entry_id, raw, action, deliveries)
                if retry is None or not await self.policy.retry(
                    self.redis, self.ctx, entry_id, retry, raw, deliveries
                ):
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
            raise _Malformed("MissingField", "the entry has no 'data' field")
        try:
            action = DomainAction.model_validate_json(raw)
        except ValidationError as exc:
            kind = "InvalidJSON" if any(e["type"] == "json_invalid" for e in exc.errors()) \
                else "InvalidAction"
            raise _Malformed(kind, str(exc)) from exc
        try:
            self._check_reply_target(action)
        except InvalidNameError as exc:
            raise _Malformed("InvalidReplyTarget", str(exc)) from exc
        return action

    def _check_reply_target(self, action: DomainAction) -> None:
        if action.callback_queue_name is None:
            return
        if action.callback_action_type is not None:
            self.ctx.queues.check_action_stream(action.callback_queue_name)
        else:
            self.ctx.queues.check_response_queue(action.callback_queue_name)

    async def _attempt(
        self, entry_id: str, raw: bytes | str | None, action: DomainAction, deliveries: int
    ) -> Retry | None:
        """One delivery: ``None`` when finished (acked or buried), else the ``Retry``."""
        try:
            outcome = await self.pipeline.run(self.dispatch(action.action_type), action)
        except asyncio.CancelledError:
            raise
        except StepFailed as exc:
            raise exc.error from None
        except Exception as exc:  # a handler's failure is data, not a crash
            self.stats.failed_attempts += 1
            decision = self.policy.decide(action, exc, deliveries)
            if isinstance(decision, Retry):
                return decision
            if isinstance(decision, ReplyError):
                self._reply_error(entry_id, action, decision)
            else:
                self._bury(entry_id, raw, decision, deliveries, action)
            return None
        if isinstance(outcome, Skipped):
            if outcome.reply is not None and action.callback_queue_name:
                self.output.reply(action.callback_queue_name, outcome.reply, self.ctx.reply_ttl)
            self.output.ack(entry_id)
        else:
            self._succeeded(entry_id, action, outcome)
        return None

    def _succeeded(self, entry_id: str, action: DomainAction, outcome: Prepared) -> None:
        if outcome.reply is not None and action.callback_queue_name:
            if action.expires_at is not None and utc_now() > action.expires_at:
                self.stats.expired_skipped += 1
                logger.info("dropped the reply to %s: its caller stopped waiting",
                            action.action_id)
            else:
                self.output.reply(action.callback_queue_name, outcome.reply, self.ctx.reply_ttl)
        if outcome.callback is not None:
            self.output.xadd(outcome.callback[0], {"data": outcome.callback[1]})
        self.output.ack(entry_id)

    def _reply_error(self, entry_id: str, action: DomainAction, decision: ReplyError) -> None:
        """The caller is waiting: it gets the error now instead of a timeout."""
        self.stats.error_replies += 1
        if decision.send and action.callback_queue_name:
            error = DomainActionResponse.for_action(action, error=decision.error)
            self.output.reply(action.callback_queue_name,
                              error.model_dump_json(exclude_none=True), self.ctx.reply_ttl)
        self.output.ack(entry_id)

    def _bury(
        self,
        entry_id: str,
        raw: bytes | str | None,
        why: Bury,
        deliveries: int,
        action: DomainAction | None = None,
    ) -> None:
        """Move an entry to the dead-letter stream with its reason, then acknowledge it."""
        self.stats.dead_lettered += 1
        original_id = entry_id
        if action is not None and raw is not None and DELIVERIES_KEY in action.metadata:
            raw, first = without_bookkeeping(raw)  # retried: bury the action as first sent
            original_id = first or entry_id
        logger.error(
            "dead-lettered %s from %s after %d deliver%s (%s: %s: %.300s)",
            entry_id, self.ctx.stream, deliveries, "y" if deliveries == 1 else "ies",
            why.reason, why.error_type, why.message,
        )
        self.output.xadd(
            self.ctx.dead_stream,
            dead_letter_fields(
                data=raw if raw is not None else "",
                reason=why.reason,
                error_type=why.error_type,
                error_message=why.message,
                deliveries=deliveries,
                original_id=original_id,
                stream=self.ctx.stream,
                consumer=self.ctx.consumer,
            ),
        )
        if why.failure_callback is not None and action is not None:
            failure = DomainActionResponse.for_action(action, error=why.failure_callback)
            callback = callback_for(self.ctx, action, failure)
            if callback is not None:
                self.output.xadd(callback[0], {"data": callback[1]})
        self.output.ack(entry_id)
