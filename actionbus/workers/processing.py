"""One action from read to acknowledgement: decode, run the pipeline, answer, or fail.

Failures are decided by the ``FailurePolicy`` (retry, bury, reply with the error) and
carried out here; the handler runs inside the ``Pipeline``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from itertools import repeat
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from actionbus.connection import AnyRedis
from actionbus.dead_letters import dead_letter_fields
from actionbus.delayed import DELIVERIES_KEY, deliveries_of, without_bookkeeping
from actionbus.exceptions import InvalidNameError
from actionbus.models.actions import DomainAction, DomainActionResponse
from actionbus.workers.context import Dispatch, WorkerContext
from actionbus.workers.output import OutputBatcher
from actionbus.workers.pipeline import Pipeline, Skipped, StepFailed
from actionbus.workers.policy import (
    Bury,
    FailurePolicy,
    ReplyError,
    Retry,
    safe_text,
)
from actionbus.workers.results import (
    NOTHING,
    Prepared,
    callback_for,
    callback_refusal,
    is_expired,
)
from actionbus.workers.stats import WorkerStats

__all__ = ["ActionProcessor"]

logger = logging.getLogger("actionbus.worker")

_DATA_KEYS = (b"data", "data")
_VALIDATE_JSON = DomainAction.__pydantic_validator__.validate_json
_ENTRY_SLACK = 65_536
"""Room for field names and other fields beyond ``max_payload_bytes`` of ``data``."""
_LARGE_MEMORY_S = 60.0
"""The read limit is lifted this long after the last large entry."""


def _size(value: Any, limit: int) -> int:
    """Bytes of a field name or value (exact up to ``limit``, a lower bound above)."""
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, str):
        return len(value) if len(value) > limit else len(value.encode("utf-8", "replace"))
    return 0


_Job = tuple[str, dict[Any, Any], int]
"""``process()``'s arguments: entry id, fields, deliveries."""


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
        self._large_until = 0.0
        settings = ctx.settings
        self._small = min(ctx.max_payload_bytes,
                          settings.read_budget_bytes // settings.batch_size - 4)
        """A "data" field up to this many bytes is neither oversize nor large (``_note_size``)."""
        self.read_limit = 0
        """When > 0, read at most this many entries at once: large entries were seen
        within the last minute (``WorkerSettings.read_budget_bytes``)."""

    @property
    def owned(self) -> set[str]:
        """Entries this worker is handling or about to retry."""
        return set(self._started)

    def owns(self, entry_id: str) -> bool:
        """Is ``entry_id`` being handled (or about to be retried) by this worker?"""
        return entry_id in self._started

    def older_than(self, seconds: float) -> list[str]:
        """Entries in progress for longer than ``seconds`` (they need a heartbeat)."""
        limit = time.monotonic() - seconds
        return [entry_id for entry_id, since in self._started.items() if since < limit]

    def claim(self, entry_id: str) -> bool:
        """Mark an entry as ours from the moment its task is created; ``False`` (and
        nothing changed) if it already is."""
        started = self._started
        if entry_id in started:
            return False
        started[entry_id] = time.monotonic()
        return True

    def claim_all(self, keys: list[str], jobs: list[_Job]) -> list[_Job]:
        """``claim()`` the entry of each ``(entry_id, fields, deliveries)`` (at one time);
        those newly claimed, in order. ``keys``: the jobs' entry ids, in the same order. A
        read never names an entry twice."""
        started, now = self._started, time.monotonic()
        if started.keys().isdisjoint(keys):  # the usual case
            started.update(zip(keys, repeat(now)))
            return jobs
        claimed = []
        for job in jobs:
            if job[0] not in started:
                started[job[0]] = now
                claimed.append(job)
        return claimed

    async def process(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        """Handle one entry, retrying with backoff until done or buried.

        The caller claims it first (``claim()`` or ``claim_all()``): ``owned`` and the
        heartbeat see it from then on, and the claim ends here. Its writes and
        acknowledgement are queued on the output batcher; the caller sends them
        (``OutputBatcher.flush()``), once for many entries.
        """
        try:
            raw = fields.get(b"data")
            if raw is None:
                raw = fields.get("data")
            action = self._admit(entry_id, fields, raw, deliveries)
            if action is None:
                return
            prior = deliveries_of(action) if action.metadata else 0  # retried via the delayed set
            if prior:
                deliveries += prior
                refused = self.policy.admit(deliveries)
                if refused is not None:
                    self._bury(entry_id, fields, refused, deliveries, action)
                    return
            while True:  # one delivery per turn
                try:
                    outcome = await self.pipeline.run(self.dispatch(action.action_type), action)
                except asyncio.CancelledError:
                    raise
                except StepFailed as exc:
                    raise exc.error from None
                except Exception as exc:  # a handler's failure is data, not a crash
                    retry = self._failed(entry_id, fields, action, exc, deliveries)
                    if retry is None or not await self.policy.retry(
                        self.redis, self.ctx, entry_id, retry, raw, deliveries
                    ):
                        return
                    deliveries += 1
                    continue
                if outcome is NOTHING:  # the usual outcome: nothing to send but the ack
                    self.output.ack(entry_id)
                elif isinstance(outcome, Skipped):
                    if outcome.reply is not None and action.callback_queue_name:
                        self.output.reply(action.callback_queue_name, outcome.reply,
                                          self.ctx.reply_ttl)
                    self.output.ack(entry_id, deliveries)
                else:
                    self._succeeded(entry_id, action, outcome, deliveries)
                return
        except (RedisError, OSError) as exc:
            logger.warning(
                "Redis error while handling %s (%s); it stays pending and will be retried",
                entry_id, type(exc).__name__,
            )
        except Exception as exc:  # a bug here must not leave the entry pending forever
            self._bury(entry_id, fields, Bury("internal_error", type(exc).__name__,
                                              safe_text(exc)), deliveries)
        finally:
            self._started.pop(entry_id, None)

    def _admit(
        self, entry_id: str, fields: dict[Any, Any], raw: bytes | str | None, deliveries: int
    ) -> DomainAction | None:
        """The decoded action, or ``None`` once the entry is buried (before any attempt)."""
        if deliveries == 1 and type(raw) is bytes and len(raw) <= self._small and len(fields) == 1:
            # The usual entry, one small "data" field on its first delivery: neither refused
            # by the policy nor too large, nor large enough to lower the read limit.
            if self.read_limit:
                self._note_size(4 + len(raw))
        elif not self._admissible(entry_id, fields, raw, deliveries):
            return None
        try:
            try:
                action: DomainAction = _VALIDATE_JSON(b"" if raw is None else raw)
            except Exception:  # not a valid action: _decode says why (raises _Malformed)
                action = self._decode(raw)
            if action.callback_queue_name is not None:
                self._check_reply_target(action)
            if action.callback_action_type is not None:
                refusal = callback_refusal(self.ctx, action)
                if refusal is not None:
                    self._bury(entry_id, fields, self.policy.forbidden_callback(refusal),
                               deliveries)
                    return None
        except _Malformed as bad:
            self._bury(entry_id, fields, self.policy.malformed(bad.error_type, bad.message),
                       deliveries)
            return None
        except Exception as exc:  # e.g. OverflowError from a year-9999 timestamp
            self._bury(entry_id, fields, self.policy.malformed(
                "InvalidAction", f"{type(exc).__name__}: {safe_text(exc)}"), deliveries)
            return None
        return action

    def _admissible(
        self, entry_id: str, fields: dict[Any, Any], raw: bytes | str | None, deliveries: int
    ) -> bool:
        """May the entry be decoded? If not, it is buried (delivered too often, too large)."""
        refused = self.policy.admit(deliveries)  # also for entries that never decode
        if refused is None:
            refused = self._check_size(fields, raw)
            if refused is not None:
                self._bury(entry_id, fields, refused, deliveries,
                           max_body=self.ctx.settings.dead_letter_body_bytes)
                return False
        if refused is not None:
            self._bury(entry_id, fields, refused, deliveries)
            return False
        return True

    def _check_size(self, fields: dict[Any, Any], raw: bytes | str | None) -> Bury | None:
        """``Bury`` an entry above ``max_payload_bytes`` before decoding it; note large ones."""
        limit = self.ctx.max_payload_bytes
        if len(fields) == 1 and type(raw) is bytes:  # the usual entry: one bytes field "data"
            size = 4 + len(raw)
        else:
            size = 0
            for key, value in fields.items():
                size += _size(key, limit) + _size(value, limit)
        self._note_size(size)
        data = 0 if raw is None else _size(raw, limit)
        if data > limit or size > limit + _ENTRY_SLACK:
            return self.policy.oversize(max(data, size), limit)
        return None

    def _note_size(self, size: int) -> None:
        """Keep ``read_limit`` so one read brings at most ``read_budget_bytes``."""
        settings = self.ctx.settings
        if size * settings.batch_size > settings.read_budget_bytes:
            self.stats.large_entries_seen += 1
            limit = max(1, settings.read_budget_bytes // max(size, 1))
            self.read_limit = min(self.read_limit or settings.batch_size, limit)
            self._large_until = time.monotonic() + _LARGE_MEMORY_S
        elif self.read_limit and time.monotonic() > self._large_until:
            self.read_limit = 0

    def _decode(self, raw: bytes | str | None) -> DomainAction:
        """``raw`` validated as an action; ``_Malformed`` says why it is not one."""
        if raw is None:
            raise _Malformed("MissingField", "the entry has no 'data' field")
        try:
            action: DomainAction = _VALIDATE_JSON(raw)
        except ValidationError as exc:
            kind = "InvalidJSON" if any(e["type"] == "json_invalid" for e in exc.errors()) \
                else "InvalidAction"
            raise _Malformed(kind, safe_text(exc)) from exc
        return action

    def _check_reply_target(self, action: DomainAction) -> None:
        """``_Malformed`` unless the reply target is one of our response or action streams."""
        queue = action.callback_queue_name
        assert queue is not None
        try:
            if action.callback_action_type is not None:
                self.ctx.queues.check_action_stream(queue)
            else:
                self.ctx.queues.check_response_queue(queue)
        except InvalidNameError as exc:
            raise _Malformed("InvalidReplyTarget", safe_text(exc)) from exc

    def _failed(
        self, entry_id: str, fields: dict[Any, Any], action: DomainAction, exc: Exception,
        deliveries: int,
    ) -> Retry | None:
        """A failed attempt: the ``Retry`` to make, or ``None`` once answered or buried."""
        self.stats.failed_attempts += 1
        decision = self.policy.decide(action, exc, deliveries)
        if isinstance(decision, Retry):
            return decision
        if isinstance(decision, ReplyError):
            self._reply_error(entry_id, action, decision, fields, deliveries)
        else:
            self._bury(entry_id, fields, decision, deliveries, action)
        return None

    def _succeeded(
        self, entry_id: str, action: DomainAction, outcome: Prepared, deliveries: int
    ) -> None:
        if outcome.reply is not None and action.callback_queue_name:
            if is_expired(action.expires_at, self.ctx.settings.clock_skew_s):
                self.stats.expired_skipped += 1
                logger.info("dropped the reply to %s: its caller stopped waiting",
                            action.action_id)
            else:
                self.output.reply(action.callback_queue_name, outcome.reply, self.ctx.reply_ttl)
        if outcome.callback is not None:
            self.output.xadd(outcome.callback[0], {"data": outcome.callback[1]})
        self.output.ack(entry_id, deliveries)

    def _reply_error(
        self, entry_id: str, action: DomainAction, decision: ReplyError,
        fields: dict[Any, Any], deliveries: int,
    ) -> None:
        """The caller is waiting: it gets the error now instead of a timeout; bad input
        (``decision.bury``) is dead-lettered too."""
        self.stats.error_replies += 1
        if decision.send and action.callback_queue_name:
            try:
                error = DomainActionResponse.for_action(action, error=decision.error)
                self.output.reply(action.callback_queue_name,
                                  error.model_dump_json(exclude_none=True), self.ctx.reply_ttl)
            except Exception as exc:  # pragma: no cover - for_action gets valid values
                logger.error("could not build the error reply to %s: %s", action.action_id,
                             safe_text(exc))
        if decision.bury is not None:
            self._bury(entry_id, fields, decision.bury, deliveries)
        else:
            self.output.ack(entry_id, deliveries)

    def _bury(
        self,
        entry_id: str,
        fields: dict[Any, Any],
        why: Bury,
        deliveries: int,
        action: DomainAction | None = None,
        *,
        max_body: int | None = None,
    ) -> None:
        """Move an entry to the dead-letter stream with its reason, then acknowledge it.

        Never raises: whatever the entry or the error holds, the entry is buried and acked.
        """
        self.stats.dead_lettered += 1
        if why.bad_input:
            self.stats.bad_input += 1
        message = safe_text(why.message)
        stream, raw_id = self.ctx.split(entry_id)
        logger.error(
            "dead-lettered %s from %s after %d deliver%s (%s: %s: %.300s)",
            raw_id, stream, deliveries, "y" if deliveries == 1 else "ies",
            why.reason, why.error_type, message,
        )
        raw = next((fields[k] for k in _DATA_KEYS if k in fields), None)
        original_id = raw_id
        if action is not None and raw is not None and DELIVERIES_KEY in action.metadata:
            try:  # retried through the delayed set: bury the action as first sent
                raw, first = without_bookkeeping(raw)
                original_id = first or raw_id
            except Exception as exc:
                logger.debug("kept the retry bookkeeping of %s: %s", entry_id, safe_text(exc))
        try:
            letter = dead_letter_fields(
                data=raw, reason=why.reason, error_type=why.error_type, error_message=message,
                deliveries=deliveries, original_id=original_id, stream=stream,
                consumer=self.ctx.consumer, entry=fields, max_body=max_body,
            )
        except Exception as exc:  # last resort: still bury, with what can be written
            letter = dead_letter_fields(
                data=None, reason=why.reason, error_type=why.error_type,
                error_message=f"{message} (entry not copied: {type(exc).__name__})",
                deliveries=deliveries, original_id=original_id, stream=stream,
                consumer=self.ctx.consumer,
            )
        self.output.xadd(self.ctx.dead_stream, letter)
        if why.failure_callback is not None and action is not None:
            try:
                failure = DomainActionResponse.for_action(action, error=why.failure_callback)
                callback = callback_for(self.ctx, action, failure)
            except Exception as exc:
                logger.error("could not build the failure callback of %s: %s",
                             action.action_id, safe_text(exc))
                callback = None
            if callback is not None:
                self.output.xadd(callback[0], {"data": callback[1]})
        self.output.ack(entry_id, deliveries)
