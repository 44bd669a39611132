"""``FailurePolicy``: what happens to an action that could not be handled.

Every failed attempt, undecodable entry and over-delivered entry goes through one
``FailurePolicy``, which returns a decision:

- ``Retry(delay)``: attempt again after ``delay`` seconds (``FailurePolicy.retry`` says how);
- ``Bury(reason, ...)``: move the entry to the dead-letter stream (and, for a durable
  callback request, send the failure callback);
- ``ReplyError(error)``: a caller is waiting, so it gets the error now instead of a timeout.

The processor applies decisions; it does not make them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actionbus.backoff import Backoff
from actionbus.delayed import DelayedQueue, retry_payload
from actionbus.exceptions import ActionRejected
from actionbus.models.actions import DomainAction, ErrorDetail, utc_now
from actionbus.workers.reclaim import reclaim_for_retry

if TYPE_CHECKING:
    from actionbus.connection import AnyRedis
    from actionbus.workers.context import WorkerContext
    from actionbus.workers.settings import WorkerSettings

__all__ = ["Bury", "Decision", "FailurePolicy", "ReplyError", "Retry", "error_detail"]

logger = logging.getLogger("actionbus.worker")


@dataclass(frozen=True, slots=True)
class Retry:
    """Attempt the action again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Bury:
    """Dead-letter the entry, keeping it whole, with why."""

    reason: str
    """``malformed``, ``rejected`` or ``max_deliveries``."""
    error_type: str
    message: str
    failure_callback: ErrorDetail | None = None
    """Set when the action asked for a durable callback: send it this error."""


@dataclass(frozen=True, slots=True)
class ReplyError:
    """Answer the waiting caller with ``error`` (unless it stopped waiting), then acknowledge."""

    error: ErrorDetail
    send: bool
    """False when the caller's deadline passed: acknowledge without replying."""


Decision = Retry | Bury | ReplyError


def error_detail(exc: BaseException) -> ErrorDetail:
    """The ``ErrorDetail`` a caller or callback receives for ``exc``."""
    code = getattr(exc, "error_code", None)
    return ErrorDetail(error_type=type(exc).__name__, error_code=code, message=str(exc))


class FailurePolicy:
    """Settings-driven decisions for failures (``max_deliveries``, ``retry_backoff_*``)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self._backoff = Backoff(
            settings.retry_backoff_base_s, settings.retry_backoff_max_s, jitter=False
        )

    def retry_delay(self, deliveries: int) -> float:
        """Backoff before the attempt after ``deliveries`` failed ones (doubling, capped)."""
        return self._backoff.compute(deliveries - 1)

    def malformed(self, error_type: str, message: str) -> Bury:
        """An entry that is not a valid action (or names a forged reply target)."""
        return Bury("malformed", error_type, message)

    def admit(self, deliveries: int) -> Bury | None:
        """``Bury`` an entry delivered more often than allowed before any attempt runs."""
        if deliveries <= self.settings.max_deliveries:
            return None
        # Attempted max_deliveries times by workers that died before acknowledging.
        return Bury(
            "max_deliveries", "Abandoned",
            f"delivered {deliveries} times without being acknowledged (the workers "
            "handling it died or hung)",
        )

    def decide(self, action: DomainAction, exc: Exception, deliveries: int) -> Decision:
        """The decision for a failed attempt (delivery number ``deliveries``) of ``action``."""
        waiting = action.callback_queue_name is not None and action.callback_action_type is None
        if waiting and action.callback_queue_name:
            logger.log(logging.INFO if isinstance(exc, ActionRejected) else logging.WARNING,
                       "%s (%s) failed: %s: %s; replied with the error",
                       action.action_id, action.action_type, type(exc).__name__, exc)
            send = action.expires_at is None or utc_now() <= action.expires_at
            return ReplyError(error_detail(exc), send)
        permanent = isinstance(exc, ActionRejected)
        if permanent or deliveries >= self.settings.max_deliveries:
            return Bury(
                "rejected" if permanent else "max_deliveries", type(exc).__name__, str(exc),
                error_detail(exc) if action.callback_action_type is not None else None,
            )
        delay = self.retry_delay(deliveries)
        logger.warning(
            "%s (%s) failed on delivery %d/%d: %s: %s; retrying in %.2fs",
            action.action_id, action.action_type, deliveries, self.settings.max_deliveries,
            type(exc).__name__, exc, delay,
        )
        return Retry(delay)

    async def retry(
        self, redis: AnyRedis, ctx: WorkerContext, entry_id: str, decision: Retry,
        payload: bytes | str | None = None, deliveries: int = 0,
    ) -> bool:
        """Carry out a ``Retry``: ``True`` if this worker should attempt the entry again now.

        By default the attempt is re-added to the service's delayed set, due after the
        backoff, with the ``deliveries`` used so far in its envelope, and the stream entry
        acknowledged, in one script (``DelayedQueue.retry_later``); the slot is freed at
        once (returns ``False``). A crash before the script leaves the entry pending (it is
        reclaimed), never lost. With ``retry_in_slot`` (or no ``payload``) the entry stays
        pending on this consumer while we wait, then its delivery count is raised.
        """
        if payload is not None and not self.settings.retry_in_slot:
            queue = DelayedQueue(redis, ctx.queues, ctx.service)
            due_ms = int((time.time() + decision.delay) * 1000)
            if not await queue.retry_later(ctx.stream, ctx.group, entry_id,
                                           retry_payload(payload, deliveries, entry_id),
                                           due_ms):
                logger.warning("entry %s was no longer pending when parking its retry; "
                               "someone else finished it", entry_id)
            return False
        await asyncio.sleep(decision.delay)
        if not await reclaim_for_retry(redis, ctx.stream, ctx.group, ctx.consumer, entry_id):
            logger.warning("entry %s vanished before its retry; giving up", entry_id)
            return False
        return True
