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
from typing import TYPE_CHECKING, Any

from actionbus.backoff import Backoff
from actionbus.clients.queue_manager import MAIN, ORDERED, ORDERED_SUFFIX
from actionbus.delayed import DelayedQueue, retry_payload
from actionbus.exceptions import ActionRejected, UnknownActionType
from actionbus.models.actions import DomainAction, ErrorDetail
from actionbus.workers.reclaim import reclaim_for_retry
from actionbus.workers.results import is_expired

if TYPE_CHECKING:
    from actionbus.connection import AnyRedis
    from actionbus.workers.context import WorkerContext
    from actionbus.workers.settings import WorkerSettings

__all__ = [
    "Bury",
    "Decision",
    "FailurePolicy",
    "ReplyError",
    "Retry",
    "error_detail",
    "safe_text",
]

logger = logging.getLogger("actionbus.worker")


@dataclass(frozen=True, slots=True)
class Retry:
    """Attempt the action again after ``delay`` seconds."""

    delay: float


@dataclass(frozen=True, slots=True)
class Bury:
    """Dead-letter the entry, keeping it whole, with why."""

    reason: str
    """A reason of docs/wire-format.md's rejection table (``malformed``, ``rejected``…)."""
    error_type: str
    message: str
    failure_callback: ErrorDetail | None = None
    """Set when the action asked for a durable callback: send it this error."""
    bad_input: bool = False
    """Refused as input (counted in ``WorkerStats.bad_input``), not a handler failure."""


@dataclass(frozen=True, slots=True)
class ReplyError:
    """Answer the waiting caller with ``error`` (unless it stopped waiting), then acknowledge."""

    error: ErrorDetail
    send: bool
    """False when the caller's deadline passed: acknowledge without replying."""
    bury: Bury | None = None
    """Bad input (unknown type, data not matching the model): also dead-letter it."""


Decision = Retry | Bury | ReplyError


MAX_ERROR_MESSAGE = 4000
"""Error messages (replies, callbacks, dead letters, logs) are cut to this many characters."""
_BAD_INPUT_CODES = frozenset({"invalid_data", "unknown_action_type"})


def safe_text(value: Any, limit: int = MAX_ERROR_MESSAGE) -> str:
    """``str(value)`` cut to ``limit`` characters; never raises (a hostile ``__str__``
    gives a placeholder naming the type)."""
    try:
        text = value if isinstance(value, str) else str(value)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except Exception as exc:  # a failure path must not be able to fail
        try:
            name = type(value).__name__
        except Exception:
            name = "object"
        text = f"<unprintable {name}: str() raised {type(exc).__name__}>"
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text)} characters, cut)"
    return text


def _error_code(exc: BaseException) -> str | None:
    try:
        code = getattr(exc, "error_code", None)
    except Exception:
        return None
    return None if code is None else safe_text(code, 200)


def error_detail(exc: BaseException) -> ErrorDetail:
    """The ``ErrorDetail`` a caller or callback receives for ``exc``; never raises.

    ``error_code`` becomes text whatever its type (``503`` → ``"503"``); the message is
    ``str(exc)`` cut to ``MAX_ERROR_MESSAGE`` characters.
    """
    error_type = safe_text(type(exc).__name__, 200)
    try:
        return ErrorDetail(
            error_type=error_type, error_code=_error_code(exc), message=safe_text(exc)
        )
    except Exception:  # pragma: no cover - every value above is already a string
        return ErrorDetail.model_construct(
            error_type=error_type, error_code=None, message="(unreadable error)", details=None
        )


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
        return Bury("malformed", error_type, message, bad_input=True)

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

    def oversize(self, size: int, limit: int) -> Bury:
        """An entry larger than ``max_payload_bytes``: buried before it is decoded."""
        return Bury("oversize", "PayloadTooLarge",
                    f"the entry is {size} bytes, above max_payload_bytes ({limit})",
                    bad_input=True)

    def forbidden_callback(self, message: str) -> Bury:
        """A callback request naming a target the callback rule does not allow."""
        return Bury("callback_not_allowed", "CallbackNotAllowed", message, bad_input=True)

    def decide(self, action: DomainAction, exc: Exception, deliveries: int) -> Decision:
        """The decision for a failed attempt (delivery number ``deliveries``) of ``action``.

        Never raises: it runs on the failure path.
        """
        detail = error_detail(exc)
        name, message = detail.error_type, detail.message
        bad_input = isinstance(exc, ActionRejected) and detail.error_code in _BAD_INPUT_CODES
        bury = None
        if bad_input:
            reason = "unknown_action_type" if isinstance(exc, UnknownActionType) else "rejected"
            bury = Bury(reason, name, message, bad_input=True)
        waiting = action.callback_queue_name is not None and action.callback_action_type is None
        if waiting and action.callback_queue_name:
            quiet = isinstance(exc, ActionRejected) and not bad_input
            logger.log(logging.INFO if quiet else logging.WARNING,
                       "%s (%s) failed: %s: %s; replied with the error",
                       action.action_id, action.action_type, name, message)
            send = not is_expired(action.expires_at, self.settings.clock_skew_s)
            return ReplyError(detail, send, bury)
        permanent = isinstance(exc, ActionRejected)
        if permanent or deliveries >= self.settings.max_deliveries:
            base = bury or Bury("rejected" if permanent else "max_deliveries", name, message)
            callback = detail if action.callback_action_type is not None else None
            return Bury(base.reason, name, message, callback, base.bad_input)
        delay = self.retry_delay(deliveries)
        logger.warning(
            "%s (%s) failed on delivery %d/%d: %s: %s; retrying in %.2fs",
            action.action_id, action.action_type, deliveries, self.settings.max_deliveries,
            name, message, delay,
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

        An ordered entry (``ordering_key``) is retried in its slot under
        ``ordering_on_failure="hold"``, so its key's later actions wait; under ``"skip"`` it
        is parked like an unordered one and comes back through its partition's stream.
        """
        stream, entry_id = ctx.split(entry_id)  # a lane's entry goes back to its lane
        hold = self.settings.ordering_on_failure == "hold" and stream.endswith(ORDERED_SUFFIX)
        if payload is not None and not self.settings.retry_in_slot and not hold:
            lane, partition = None, 0
            if stream != ctx.stream:  # a lane or a partition (its ordered stream included)
                parts = ctx.queues.parse(stream)
                lane = None if parts.context in (MAIN, ORDERED) else parts.context
                partition = parts.partition
            queue = DelayedQueue(redis, ctx.queues, ctx.service, lane, partition)
            due_ms = int((time.time() + decision.delay) * 1000)
            if not await queue.retry_later(stream, ctx.group, entry_id,
                                           retry_payload(payload, deliveries, entry_id),
                                           due_ms):
                logger.warning("entry %s was no longer pending when parking its retry; "
                               "someone else finished it", entry_id)
            return False
        await asyncio.sleep(decision.delay)
        if not await reclaim_for_retry(redis, stream, ctx.group, ctx.consumer, entry_id):
            logger.warning("entry %s vanished before its retry; giving up", entry_id)
            return False
        return True
