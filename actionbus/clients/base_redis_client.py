"""``BaseRedisClient``: send ``DomainAction``s to other services in three patterns.

A send never changes the caller's ``DomainAction``: the client stamps, validates and
encodes its own copy, so one object can be sent again, or in another pattern.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from actionbus.clients.batch import send_batch
from actionbus.clients.durable import DurableWriter, check_durability
from actionbus.clients.encoding import ActionEncoder
from actionbus.clients.guard import (
    CLIENT_FAILURES,
    check_open,
    describe_failure,
    outcome_unknown,
)
from actionbus.clients.lanes import LaneRouter, check_priority
from actionbus.clients.layers import PublishLayer, PublishNext, build_chain, tracing_layer
from actionbus.clients.partitions import PartitionRouter
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.replies import ReplyListener
from actionbus.clients.sender import StreamWriter
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.delayed import DelayedQueue
from actionbus.exceptions import (
    ActionBusError,
    ConfigurationError,
    DelayedActionError,
    SendError,
)
from actionbus.models.actions import (
    DomainAction,
    DomainActionResponse,
    check_action_type,
    check_service_name,
    utc_now,
)
from actionbus.tracing import tracing_enabled

__all__ = ["BaseRedisClient"]

logger = logging.getLogger("actionbus.client")

_LANES: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "actionbus_lanes", default=None)
"""Within one send: target service -> the priority lane its action goes to."""



_new = object.__new__
_set = object.__setattr__
"""A copy is built like ``BaseModel.__copy__`` does, without its generic ``copy()`` calls."""


def _check_timeout(timeout: object) -> float:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds (finite), got {timeout!r}")
    return float(timeout)


class BaseRedisClient:
    """Sends actions: fire-and-forget, pseudo-synchronous request/reply, or with a callback.

    Every action goes by ``XADD`` to its target service's stream (field ``data`` holds the
    action's JSON). Replies to pseudo-sync calls come back on one response list owned by
    this client and are read by a single listener, however many calls are in flight.
    Publish layers (``use()``) run around each send.
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
        self._replies = ReplyListener(
            redis_client,
            self.queue_manager.get_response_queue(self.service_name, uuid.uuid4().hex),
        )
        self._encoder = ActionEncoder(self.queue_manager, settings)
        self._who = f"client of service {self.service_name!r}"
        self._layers: list[PublishLayer] = [tracing_layer]
        self._chain: PublishNext = build_chain(self._layers, self._write)
        self._delayed: dict[str, DelayedQueue] = {}
        self._router = LaneRouter(redis_client, self.queue_manager, settings.lanes_cache_s)
        self._partitions = PartitionRouter(redis_client, self.queue_manager, settings)

    @property
    def response_queue(self) -> str:
        """The list this client's pseudo-sync replies arrive on."""
        return self._replies.queue

    def use(self, layer: PublishLayer) -> None:
        """Add a publish layer: ``async def layer(action, call_next) -> str``.

        Layers run in registration order, the first outermost, after the built-in tracing
        layer; each gets the client's copy of the action and returns ``await
        call_next(action)`` (or raises to stop the send: nothing is written).
        """
        if not callable(layer):
            raise ConfigurationError(f"a publish layer must be callable, got {layer!r}")
        self._layers.append(layer)
        self._chain = build_chain(self._layers, self._write)

    @staticmethod
    def _check(action: DomainAction) -> None:
        if not isinstance(action, DomainAction):
            raise TypeError(
                f"expected a DomainAction, got {type(action).__name__}; build one with "
                "DomainAction(action_type='service.entity.verb', data={...})"
            )

    def _copy(self, action: DomainAction, **changes: Any) -> DomainAction:
        """The client's own copy of ``action`` (new metadata dict), origin stamped.

        A shallow copy with ``changes`` set as they are, without validation: they are
        the client's own values, and ``_encode`` re-checks every name before writing.
        """
        self._check(action)
        changes.setdefault("metadata", dict(action.metadata))
        if action.origin_service is None:
            changes["origin_service"] = self.service_name
        if action.__pydantic_private__ is not None:  # a subclass with private attributes
            copy = action.__copy__()
            copy.__dict__.update(changes)
            copy.__pydantic_fields_set__.update(changes)
            return copy
        cls = type(action)
        copy = _new(cls)
        _set(copy, "__dict__", {**action.__dict__, **changes})
        extra = action.__pydantic_extra__
        _set(copy, "__pydantic_extra__", None if extra is None else dict(extra))
        _set(copy, "__pydantic_fields_set__", action.__pydantic_fields_set__.union(changes))
        _set(copy, "__pydantic_private__", None)
        return copy

    def _encode(self, action: DomainAction, *, checked: bool = False) -> tuple[str, bytes]:
        """Stream name and wire JSON of ``action`` (the client's copy), after every check
        (``checked``: names already checked): the lane ``_in_lanes`` chose, else the
        target's partition (or ordered stream)."""
        if not checked:
            self._encoder.check(action)
        lane = self._lane(action)
        if lane is None or action.ordering_key is not None:  # ordered: never a lane
            stream = self._partitions.stream(action)
        else:
            stream = self.queue_manager.get_lane_stream(action.target, lane)
        return stream, self._encoder.payload(action)

    async def _learn(self, actions: Iterable[DomainAction]) -> None:
        """Learn the partition counts of the actions' targets not known lately."""
        for target in {action.target for action in actions}:
            if self._partitions.stale(target):
                self._check_open()  # a closed client must not reconnect to look
                await self._partitions.refresh(target)

    @staticmethod
    def _lane(action: DomainAction) -> str | None:
        lanes = _LANES.get()
        return None if lanes is None else lanes.get(action.target)

    async def _in_lanes(
        self, actions: list[DomainAction], priority: str | None, chain: PublishNext | None,
        writer: DurableWriter | StreamWriter | None = None,
    ) -> Any:
        """Run the send (``chain`` for one action, else the batch) with each target's lane
        for ``priority`` known to ``_encode``, and its partitions learnt."""
        targets = list({action.target for action in actions})
        lanes: dict[str, str] = {}
        if priority is None or priority == "normal":
            await self._learn(actions)
        elif any(self._partitions.stale(t) or self._router.stale(t) for t in targets):
            found = await asyncio.gather(  # partitions and lanes learnt in one round trip
                self._learn(actions), *(self._router.lane(t, priority) for t in targets))
            lanes = {target: lane for target, lane in zip(targets, found[1:], strict=True)
                     if lane is not None}
        else:  # all known: no task, no suspension
            for target in targets:
                lane = await self._router.lane(target, priority)
                if lane is not None:
                    lanes[target] = lane
        token = _LANES.set(lanes or None)
        try:
            if chain is not None:
                return await chain(actions[0])
            return await send_batch(
                actions, layers=self._layers if self._layered() else (), encode=self._encode,
                before_write=self._check_open, writer=writer or self._writer,
                send_error=self._send_error,
            )
        finally:
            _LANES.reset(token)

    def _layered(self) -> bool:
        """Whether a publish layer would do anything: one was added with ``use()``, or
        tracing is on. Otherwise a send skips the onion and calls its innermost step."""
        return len(self._layers) > 1 or tracing_enabled()

    def _send_error(self, action: DomainAction, stream: str, exc: BaseException) -> SendError:
        unknown = outcome_unknown(exc)
        fate = ("it may have been delivered (the connection broke after the write)"
                if unknown else "it was not sent")
        return SendError(
            f"could not send action {action.action_id} ({action.action_type}) to {stream}: "
            f"{describe_failure(exc)}; {fate}",
            outcome_unknown=unknown,
        )

    def _durable(
        self, wait_replicas: int | None, wait_timeout_ms: int | None
    ) -> DurableWriter | None:
        """The writer that WAITs for replicas (call arguments over settings), or None."""
        replicas = self.settings.wait_replicas if wait_replicas is None else wait_replicas
        timeout_ms = self.settings.wait_timeout_ms if wait_timeout_ms is None else wait_timeout_ms
        if replicas.__class__ is int and timeout_ms.__class__ is int and replicas == 0 \
                and timeout_ms >= 1:
            return None  # the usual case, known valid without check_durability's loop
        replicas, timeout_ms = check_durability(replicas, timeout_ms)
        return DurableWriter(self.redis, replicas, timeout_ms) if replicas else None

    async def _write(
        self, action: DomainAction, durable: DurableWriter | StreamWriter | None = None
    ) -> str:
        """Innermost publish step: validate, encode and XADD the action (then WAIT for
        replicas when ``durable`` is given or ``settings.wait_replicas`` is set)."""
        self._encoder.check(action)  # before a bad name could be looked up
        target = action.target
        if self._partitions.stale(target):
            self._check_open()  # a closed client must not reconnect to look
            await self._partitions.refresh(target)
        stream, payload = self._encode(action, checked=True)
        self._check_open()
        writer = durable or self._durable(None, None) or self._writer
        try:
            return await writer.xadd(stream, payload)
        except ActionBusError:
            raise
        except CLIENT_FAILURES as exc:
            raise self._send_error(action, stream, exc) from exc

    async def _write_later(
        self, delay: timedelta | float | None, at: datetime | None, action: DomainAction,
    ) -> str:
        """Innermost step of a delayed send: encode, then ZADD to the target's delayed set
        (partition 0's for a partitioned target)."""
        if action.ordering_key is not None:
            raise DelayedActionError(
                f"action {action.action_id} has an ordering_key and cannot be delayed (its "
                "place in its key's order is when it is sent); nothing was sent")
        _, payload = self._encode(action)
        self._check_open()
        lane = self._lane(action)
        queue = self._delayed.get(action.target) if lane is None else DelayedQueue(
            self.redis, self.queue_manager, action.target, lane)
        if queue is None:
            queue = DelayedQueue(self.redis, self.queue_manager, action.target)
            if len(self._delayed) < 1000:
                self._delayed[action.target] = queue
        try:
            if at is not None:
                await queue.add(payload, at)
            else:
                await queue.add_after(payload, delay or 0)
        except ActionBusError:
            raise
        except CLIENT_FAILURES as exc:
            raise self._send_error(action, queue.key, exc) from exc
        return str(action.action_id)

    def _chain_for(
        self, delay: timedelta | float | None, at: datetime | None,
        wait_replicas: int | None = None, wait_timeout_ms: int | None = None,
    ) -> PublishNext:
        """The publish chain: plain XADD (with a WAIT for replicas when asked), or
        (``delay``/``at``) the delayed set; only that innermost step if no layer is active."""
        if delay is None and at is None:
            if wait_replicas is None and wait_timeout_ms is None:
                return self._chain if self._layered() else self._write
            writer = self._durable(wait_replicas, wait_timeout_ms) or self._writer
            step: PublishNext = partial(self._write, durable=writer)
            return build_chain(self._layers, step) if self._layered() else step
        if delay is not None and at is not None:
            raise DelayedActionError("give delay= or at=, not both; nothing was sent")
        if at is not None and not isinstance(at, datetime):
            raise DelayedActionError(f"at= must be an aware datetime, got {at!r}")
        if at is not None and at.tzinfo is None:
            raise DelayedActionError(
                f"at={at.isoformat()} has no timezone; nothing was sent: pass an aware "
                "datetime (e.g. datetime.now(UTC) + timedelta(minutes=5))"
            )
        if delay is not None:
            seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
            if (isinstance(seconds, bool) or not isinstance(seconds, int | float)
                    or not math.isfinite(seconds) or seconds < 0):
                raise DelayedActionError(
                    f"delay must be zero or a positive number of seconds (or a timedelta), "
                    f"got {delay!r}; nothing was sent"
                )
        step = partial(self._write_later, delay, at)
        return build_chain(self._layers, step) if self._layered() else step

    async def send_action_async(
        self, action: DomainAction, *, delay: timedelta | float | None = None,
        at: datetime | None = None, priority: str | None = None,
        wait_replicas: int | None = None, wait_timeout_ms: int | None = None,
    ) -> str:
        """Fire and forget: append ``action`` to its target's stream; return the entry id.

        With ``delay`` (seconds or timedelta, by the Redis server's clock) or ``at`` (an
        aware datetime) the action waits in the target's delayed set and enters its stream
        when due; then its action id is returned (for ``DelayedQueue.cancel``).
        ``priority`` (``"high"``, ``"normal"``, ``"low"``) picks the target's lane when
        its workers read lanes (else its main stream; see README "Priority lanes").

        ``wait_replicas=n`` (default ``settings.wait_replicas``) returns only after ``n``
        replicas have the entry (``WAIT``, at most ``wait_timeout_ms``); fewer raise
        ``NotReplicatedError`` (the entry is written). Not applied to delayed sends.
        """
        chain = self._chain_for(delay, at, wait_replicas, wait_timeout_ms)
        check_priority(priority)
        if priority is None:
            return await chain(self._copy(action))
        result: str = await self._in_lanes([self._copy(action)], priority, chain)
        return result

    async def send_actions_async(
        self, actions: Iterable[DomainAction], *, priority: str | None = None,
        wait_replicas: int | None = None, wait_timeout_ms: int | None = None,
    ) -> list[str]:
        """Send many actions in pipelined round trips; return their entry ids in order.

        Every action passes the publish layers and is validated and encoded before
        anything is sent. On a cluster, each node's share is sent on its own.
        ``priority`` and ``wait_replicas``/``wait_timeout_ms`` as for
        ``send_action_async``.
        """
        durable = self._durable(wait_replicas, wait_timeout_ms)
        check_priority(priority)
        copies = [self._copy(action) for action in actions]
        if priority is not None:
            ids: list[str] = await self._in_lanes(
                copies, priority, None, writer=durable or self._writer)
            return ids
        await self._learn(copies)
        return await send_batch(
            copies,
            layers=self._layers if self._layered() else (),
            encode=self._encode,
            before_write=self._check_open,
            writer=durable or self._writer,
            send_error=self._send_error,
        )

    def _check_open(self) -> None:
        check_open(self.redis, self._who)

    async def send_action_pseudo_sync(
        self, action: DomainAction, timeout: float = 30, *, priority: str | None = None,
    ) -> DomainActionResponse | None:
        """Send ``action`` and wait up to ``timeout`` seconds for its response.

        Returns the ``DomainActionResponse`` (``success=False`` with an ``error`` when the
        handler failed) or ``None`` when the timeout passes. The timeout bounds the whole
        call, the write included. The action carries its ``expires_at`` so a worker that
        picks it up later skips it. It goes to the target's ``priority`` lane (default
        ``settings.pseudo_sync_priority``, ``"high"``) when the target's workers read
        lanes, else to its main stream.
        """
        seconds = _check_timeout(timeout)
        check_priority(priority)
        self._check(action)
        copy = self._copy(
            action,
            callback_queue_name=self._replies.queue,
            callback_action_type=None,
            correlation_id=action.correlation_id or str(action.action_id),
            expires_at=utc_now() + timedelta(seconds=seconds),
        )
        correlation_id = copy.reply_correlation_id
        future = self._replies.expect(correlation_id)
        try:
            async with asyncio.timeout(seconds):
                await self._in_lanes([copy], priority or self.settings.pseudo_sync_priority,
                                     self._chain_for(None, None))
                return await future
        except TimeoutError:
            logger.info(
                "no response to %s (%s) from %s within %ss",
                copy.action_id, copy.action_type, copy.target, timeout,
            )
            return None
        finally:
            self._replies.forget(correlation_id)

    async def send_action_async_with_callback(
        self,
        action: DomainAction,
        callback_event_name: str,
        callback_context: str | None = None,
        *,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        priority: str | None = None,
        wait_replicas: int | None = None,
        wait_timeout_ms: int | None = None,
    ) -> str:
        """Send ``action``; when done, the target sends a ``callback_event_name`` action back.

        The callback is an ordinary ``DomainAction`` appended to this service's own stream,
        so it is handled by this service's workers even if they were down when it was sent.
        ``callback_context`` is carried in ``metadata["callback_context"]``. ``delay``/``at``
        and ``priority`` as for ``send_action_async`` (the callback comes back to this
        service's main stream), and ``wait_replicas``/``wait_timeout_ms`` too.
        """
        chain = self._chain_for(delay, at, wait_replicas, wait_timeout_ms)
        check_priority(priority)
        self._check(action)
        check_action_type(callback_event_name, "callback_event_name")
        metadata = dict(action.metadata)
        if callback_context is not None:
            metadata["callback_context"] = callback_context
        copy = self._copy(
            action,
            metadata=metadata,
            callback_action_type=callback_event_name,
            callback_queue_name=self.queue_manager.get_callback_queue(
                self.service_name, callback_context
            ),
            correlation_id=action.correlation_id or str(action.action_id),
        )
        if priority is None:
            return await chain(copy)
        result: str = await self._in_lanes([copy], priority, chain)
        return result

    async def close(self) -> None:
        """Stop the reply listener and delete this client's response list."""
        await self._replies.close()
