"""``BaseRedisClient``: send ``DomainAction``s to other services in three patterns."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from redis.exceptions import RedisError

from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.replies import ReplyListener
from actionbus.clients.sender import DATA_FIELD, StreamWriter
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.delayed import DelayedQueue
from actionbus.exceptions import (
    ConfigurationError,
    DelayedActionError,
    InvalidNameError,
    PayloadTooLargeError,
    SendError,
)
from actionbus.models.actions import (
    DomainAction,
    DomainActionResponse,
    check_action_type,
    check_service_name,
    utc_now,
)
from actionbus.tracing import inject_context

__all__ = ["BaseRedisClient"]

logger = logging.getLogger("actionbus.client")


def _expire(future: asyncio.Future[DomainActionResponse]) -> None:
    """End a pseudo-sync wait whose timeout passed."""
    if not future.done():
        future.set_exception(TimeoutError())


class BaseRedisClient:
    """Sends actions: fire-and-forget, pseudo-synchronous request/reply, or with a callback.

    Every action goes by ``XADD`` to its target service's stream (field ``data`` holds the
    action's JSON). Replies to pseudo-sync calls come back on one response list owned by
    this client and are read by a single listener, however many calls are in flight.
    """

    def __init__(
        self,
        service_name: str,
        redis_client: AnyRedis,
        settings: CommonAppSettings,
        *,
        queue_manager: QueueManager | None = None,
    ) -> None:
        try:
            self.service_name = check_service_name(service_name)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if redis_client is None:
            raise ConfigurationError(
                "BaseRedisClient needs a redis.asyncio client: pass RedisManager.get_client()"
            )
        self.redis = redis_client
        self.settings = settings
        self.queue_manager = queue_manager or QueueManager(
            settings.environment, settings.key_prefix
        )
        self._writer = StreamWriter(redis_client)
        self._delayed: dict[str, DelayedQueue] = {}
        self._replies = ReplyListener(
            redis_client,
            self.queue_manager.get_response_queue(self.service_name, uuid.uuid4().hex),
        )

    @property
    def response_queue(self) -> str:
        """The list this client's pseudo-sync replies arrive on."""
        return self._replies.queue

    @staticmethod
    def _check(action: DomainAction) -> None:
        if not isinstance(action, DomainAction):
            raise TypeError(
                f"expected a DomainAction, got {type(action).__name__}; build one with "
                "DomainAction(action_type='service.entity.verb', data={...})"
            )

    def _encode(self, action: DomainAction) -> tuple[str, str]:
        """Stream name and JSON of ``action``, after stamping the origin and checking size."""
        self._check(action)
        # Fields may have been reassigned after validation; the key parts are re-checked.
        try:
            check_action_type(action.action_type)
        except ValueError as exc:
            raise InvalidNameError(f"nothing was sent: {exc}") from None
        if action.origin_service is None:
            action.origin_service = self.service_name
        inject_context(action)
        stream = self.queue_manager.get_service_action_stream(action.target)
        payload = action.model_dump_json(exclude_none=True)
        size = len(payload.encode()) if not payload.isascii() else len(payload)
        if size > self.settings.max_payload_bytes:
            raise PayloadTooLargeError(
                f"action {action.action_id} ({action.action_type}) is {size} bytes, above "
                f"max_payload_bytes={self.settings.max_payload_bytes}; nothing was sent. "
                "Store large data elsewhere and send a reference, or raise the limit."
            )
        return stream, payload

    async def _xadd(self, stream: str, payload: str, action: DomainAction) -> str:
        try:
            return await self._writer.xadd(stream, payload)
        except (RedisError, OSError) as exc:
            raise SendError(
                f"could not send action {action.action_id} ({action.action_type}) to "
                f"{stream}: {type(exc).__name__}: {exc}"
            ) from exc

    async def send_action_async(
        self, action: DomainAction, *, delay: timedelta | float | None = None,
        at: datetime | None = None,
    ) -> str:
        """Fire and forget: append ``action`` to its target's stream; return the entry id.

        With ``delay`` (seconds or timedelta, by the Redis server's clock) or ``at`` (an
        aware datetime) the action waits in the target's delayed set and enters its stream
        when due; then the action id is returned (cancel it with ``DelayedQueue.cancel``).
        """
        if delay is None and at is None:
            stream, payload = self._encode(action)
            return await self._xadd(stream, payload, action)
        return await self._send_later(action, delay, at)

    async def _send_later(
        self, action: DomainAction, delay: timedelta | float | None, at: datetime | None,
    ) -> str:
        if delay is not None and at is not None:
            raise DelayedActionError("give delay= or at=, not both; nothing was sent")
        if at is not None and not isinstance(at, datetime):
            raise DelayedActionError(f"at= must be an aware datetime, got {at!r}")
        if delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
            if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
                raise DelayedActionError(
                    f"delay must be zero or a positive number of seconds (or a timedelta), "
                    f"got {delay!r}; nothing was sent"
                )
        _, payload = self._encode(action)
        queue = self._delayed.get(action.target)
        if queue is None:
            queue = DelayedQueue(self.redis, self.queue_manager, action.target)
            if len(self._delayed) < 1000:
                self._delayed[action.target] = queue
        try:
            if at is not None:
                await queue.add(payload, at)
            else:
                await queue.add_after(payload, delay or 0)
        except (RedisError, OSError) as exc:
            raise SendError(
                f"could not send delayed action {action.action_id} ({action.action_type}) to "
                f"{queue.key}: {type(exc).__name__}: {exc}"
            ) from exc
        return str(action.action_id)

    async def send_actions_async(self, actions: Iterable[DomainAction]) -> list[str]:
        """Send many actions in one pipelined round trip; return their entry ids in order.

        Every action is validated and encoded before anything is sent.
        """
        encoded = [(action, *self._encode(action)) for action in actions]
        if not encoded:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for _, stream, payload in encoded:
            pipe.xadd(stream, {DATA_FIELD: payload})
        try:
            ids = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise SendError(
                f"could not send a batch of {len(encoded)} actions: {type(exc).__name__}: {exc}. "
                "Some may have been sent; resend with the same action_ids and let "
                "idempotent handlers skip duplicates."
            ) from exc
        return [i.decode() if isinstance(i, bytes) else i for i in ids]

    async def send_action_pseudo_sync(
        self, action: DomainAction, timeout: float = 30
    ) -> DomainActionResponse | None:
        """Send ``action`` and wait up to ``timeout`` seconds for its response.

        Returns the ``DomainActionResponse`` (``success=False`` with an ``error`` when the
        handler failed) or ``None`` when the timeout passes. The action carries its
        ``expires_at`` so a worker that picks it up later skips it.
        """
        if not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(
                f"timeout must be a positive number of seconds (finite), got {timeout!r}"
            )
        self._check(action)
        action.callback_queue_name = self._replies.queue
        if action.correlation_id is None:
            action.correlation_id = str(action.action_id)
        action.expires_at = utc_now() + timedelta(seconds=timeout)
        stream, payload = self._encode(action)
        correlation_id = action.correlation_id
        future = self._replies.expect(correlation_id)
        expiry = asyncio.get_running_loop().call_later(timeout, _expire, future)
        try:
            await self._xadd(stream, payload, action)
            return await future
        except TimeoutError:
            logger.info(
                "no response to %s (%s) from %s within %ss",
                action.action_id, action.action_type, action.target, timeout,
            )
            return None
        finally:
            expiry.cancel()
            self._replies.forget(correlation_id)

    async def send_action_async_with_callback(
        self,
        action: DomainAction,
        callback_event_name: str,
        callback_context: str | None = None,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
    ) -> str:
        """Send ``action``; when done, the target sends a ``callback_event_name`` action back.

        The callback is an ordinary ``DomainAction`` appended to this service's own stream,
        so it is handled by this service's workers even if they were down when it was sent.
        ``callback_context`` is carried in ``metadata["callback_context"]``. ``delay``/``at``
        as for ``send_action_async``.
        """
        self._check(action)
        check_action_type(callback_event_name, "callback_event_name")
        action.callback_action_type = callback_event_name
        action.callback_queue_name = self.queue_manager.get_callback_queue(
            self.service_name, callback_context
        )
        if action.correlation_id is None:
            action.correlation_id = str(action.action_id)
        if callback_context is not None:
            action.metadata["callback_context"] = callback_context
        return await self.send_action_async(action, delay=delay, at=at)

    async def close(self) -> None:
        """Stop the reply listener and delete this client's response list."""
        await self._replies.close()
