"""The handler pipeline: layers around every handler call, outermost first.

A layer is any ``async def __call__(action, data, call_next)`` (or plain coroutine
function of the same shape) that calls ``await call_next(action, data)`` at most once
and returns its result, or returns without calling it to short-circuit. Per action the
chain is, from the outside in::

    metrics -> logging -> expiry -> idempotency -> reply -> tracing -> validation -> timeout
        -> user layers (in worker.use() order: the first used is the outermost)
        -> the handler

so user layers see validated ``data`` and the handler's raw result, and run inside the
tracing span. The failure policy sits outside the whole chain: whatever a layer or the
handler raises is one failed attempt (``FailurePolicy.decide``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from redis.exceptions import RedisError

from actionbus import tracing
from actionbus.connection import AnyRedis
from actionbus.exceptions import HandlerTimeout
from actionbus.models.actions import DomainAction
from actionbus.tracing import process_span
from actionbus.workers.context import WorkerContext
from actionbus.workers.results import NOTHING, Prepared, is_expired, is_waiting, prepare
from actionbus.workers.routing import Route
from actionbus.workers.stats import WorkerStats
from actionbus.workers.timings import BUCKETS, HANDLED, timings_for

__all__ = [
    "CallNext", "ExpiryLayer", "IdempotencyLayer", "Layer", "LoggingLayer", "MetricsLayer",
    "Pipeline", "ReplyLayer", "Skipped", "StepFailed", "TimeoutLayer", "TracingLayer",
    "ValidationLayer", "chain",
]

logger = logging.getLogger("actionbus.worker")

_FIRST_BUCKET = BUCKETS[0]

CallNext = Callable[[DomainAction, Any], Awaitable[Any]]
"""The rest of the chain: ``await call_next(action, data)`` returns the inner result."""


class Layer(Protocol):
    """One layer of the handler pipeline."""

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        """Run around the inner chain; return its result (or your own)."""
        ...


@dataclass(frozen=True, slots=True)
class Skipped:
    """An action acknowledged without running its handler (and, if set, this reply sent)."""

    reason: Literal["expired", "duplicate"]
    reply: str | None = None


class StepFailed(Exception):
    """A built-in layer's Redis command failed: not a handler failure, the entry stays
    pending and is delivered again."""

    def __init__(self, error: RedisError | OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _bind(layer: Layer, call_next: CallNext) -> CallNext:
    async def step(action: DomainAction, data: Any) -> Any:
        return await layer(action, data, call_next)

    return step


def chain(layers: Sequence[Layer], endpoint: CallNext) -> CallNext:
    """``endpoint`` wrapped in ``layers``, ``layers[0]`` outermost."""
    call = endpoint
    for layer in reversed(layers):
        call = _bind(layer, call)
    return call


class MetricsLayer:
    """Counts handled, expired and duplicate actions in ``WorkerStats`` and times each
    handler run by action type and outcome (``timings_for(service)``)."""

    def __init__(self, stats: WorkerStats, service: str = "") -> None:
        self.stats = stats
        self.timings = timings_for(service)

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        started = time.perf_counter()
        try:
            result = await call_next(action, data)
        except Exception:
            self.failed(action, started)
            raise
        self.finished(action, result, started)
        return result

    def failed(self, action: DomainAction, started: float) -> None:
        """Record a failed run that started at ``started`` (``perf_counter``)."""
        self.timings.observe(action.action_type, "failed", time.perf_counter() - started)

    def finished(self, action: DomainAction, result: Any, started: float) -> None:
        """Record a run that returned ``result`` (a ``Skipped`` or what to send)."""
        if isinstance(result, Skipped):
            if result.reason == "expired":
                self.stats.expired_skipped += 1
            else:
                self.stats.duplicates_skipped += 1
            outcome: str = result.reason
        else:
            self.stats.handled += 1
            outcome = "handled"
        self.timings.observe(action.action_type, outcome, time.perf_counter() - started)


class LoggingLayer:
    """One DEBUG line per handled action and an INFO line per failed attempt, each with
    the action's fields as ``extra`` (type, id, correlation id, duration, outcome)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def _extra(self, action: DomainAction, started: float, outcome: str) -> dict[str, Any]:
        return {
            "service": self.service, "action_type": action.action_type,
            "action_id": str(action.action_id), "correlation_id": action.correlation_id,
            "trace_id": action.trace_id, "outcome": outcome,
            "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        }

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        started = time.perf_counter()
        try:
            result = await call_next(action, data)
        except Exception as exc:
            self.failed(action, started, exc)
            raise
        if logger.isEnabledFor(logging.DEBUG):
            self.finished(action, result, started)
        return result

    def failed(self, action: DomainAction, started: float, exc: Exception) -> None:
        """The INFO line of a failed attempt."""
        extra = self._extra(action, started, "failed")
        extra["error_type"] = type(exc).__name__
        logger.info("%s %s failed: %s: %.200s", action.action_type, action.action_id,
                    type(exc).__name__, exc, extra=extra)

    def finished(self, action: DomainAction, result: Any, started: float) -> None:
        """The DEBUG line of a finished run (call it only if DEBUG is enabled)."""
        outcome = result.reason if isinstance(result, Skipped) else "handled"
        extra = self._extra(action, started, outcome)
        logger.debug("%s %s %s in %.1f ms", action.action_type, action.action_id, outcome,
                     extra["duration_ms"], extra=extra)


class ExpiryLayer:
    """Skips an action whose pseudo-sync caller stopped waiting (``expires_at`` passed
    more than ``skew_s`` ago: callers' clocks may run a little ahead)."""

    def __init__(self, skew_s: float = 0.0) -> None:
        self.skew_s = skew_s

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        if action.expires_at is not None and self.expired(action):
            return Skipped("expired")
        return await call_next(action, data)

    def expired(self, action: DomainAction) -> bool:
        """Has the caller of ``action`` stopped waiting? (Logged when it has.)"""
        if not is_expired(action.expires_at, self.skew_s):
            return False
        logger.info("skipped %s (%s): its caller stopped waiting at %s",
                    action.action_id, action.action_type, action.expires_at.isoformat()
                    if action.expires_at is not None else None)
        return True


class IdempotencyLayer:
    """For ``idempotent=True`` routes: skip an ``action_id`` already handled (replaying its
    stored reply to a waiting caller); after success, record it with the reply."""

    def __init__(self, redis: AnyRedis, ctx: WorkerContext) -> None:
        self.redis = redis
        self.ctx = ctx

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        marker = self.ctx.idempotency_key(str(action.action_id))
        try:
            stored = await self.redis.get(marker)
        except (RedisError, OSError) as exc:
            raise StepFailed(exc) from exc
        if stored is not None:
            logger.info("skipped duplicate %s (%s): already handled", action.action_id,
                        action.action_type)
            payload = stored.decode() if isinstance(stored, bytes) else stored
            replay = is_waiting(action) and payload.startswith("{")
            return Skipped("duplicate", payload if replay else None)
        result = await call_next(action, data)
        reply = result.reply if isinstance(result, Prepared) else None
        try:
            # Written before anything else, so a crash from here on cannot repeat the handler.
            await self.redis.set(marker, reply or "1", ex=self.ctx.settings.idempotency_ttl_s)
        except (RedisError, OSError) as exc:
            raise StepFailed(exc) from exc
        return result


class ReplyLayer:
    """Turns the handler's result into the reply/callback to send (``Prepared``)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        return prepare(self.ctx, action, await call_next(action, data))


class TracingLayer:
    """Runs the inner chain in the action's CONSUMER span (a no-op unless tracing is on)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        with process_span(action, self.stream):
            return await call_next(action, data)


class ValidationLayer:
    """Replaces ``data`` by the route's ``data_model`` instance (``ActionRejected`` if invalid)."""

    def __init__(self, route: Route) -> None:
        self.route = route

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        return await call_next(action, self.route.parse_data(action))


class TimeoutLayer:
    """Cancels the inner chain after ``timeout`` seconds (``HandlerTimeout``); without a
    timeout, warns once when it runs longer than ``warn_after`` seconds.

    The warning costs no timer per action: running actions are noted in a dict with their
    ``perf_counter()`` start (the pipeline reuses the metrics' one) and one sweep, scheduled
    only while some run, warns about those older than ``warn_after`` (within a quarter of
    it).
    """

    def __init__(self, timeout: float | None, warn_after: float) -> None:
        self.timeout = timeout
        self.warn_after = warn_after
        self.running: dict[int, tuple[float, DomainAction]] = {}
        self.sweep: asyncio.TimerHandle | None = None

    async def __call__(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        if self.timeout is None:
            key = id(action)
            self.running[key] = (time.perf_counter(), action)
            if self.sweep is None:
                self.schedule_sweep()
            try:
                return await call_next(action, data)
            finally:
                self.running.pop(key, None)
        return await self.bounded(action, data, call_next)

    async def bounded(self, action: DomainAction, data: Any, call_next: CallNext) -> Any:
        """``call_next`` cancelled after ``timeout`` seconds (``HandlerTimeout``)."""
        assert self.timeout is not None
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                return await call_next(action, data)
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the handler's own TimeoutError
            raise HandlerTimeout(
                f"handler for {action.action_type} {action.action_id} ran longer than its "
                f"timeout of {self.timeout:g}s and was cancelled; raise the timeout "
                "(register(..., timeout=) or WorkerSettings.handler_timeout_s) if it needs more"
            ) from exc

    def schedule_sweep(self) -> None:
        self.sweep = asyncio.get_running_loop().call_later(self.warn_after / 4, self._check)

    def _check(self) -> None:
        """Warn once about each action running longer than ``warn_after``."""
        self.sweep = None
        limit = time.perf_counter() - self.warn_after
        for key, (since, action) in list(self.running.items()):
            if since <= limit:
                _warn_slow(action, self.warn_after)
                self.running[key] = (float("inf"), action)  # warned: never again
        if self.running:
            self.schedule_sweep()


def _warn_slow(action: DomainAction, seconds: float) -> None:
    logger.warning(
        "handler for %s (%s) has been running for %.0fs without a timeout; it stays "
        "pending on this worker (set register(..., timeout=) to bound it)",
        action.action_id, action.action_type, seconds,
    )


@dataclass(frozen=True, slots=True)
class _Compiled:
    """What ``Pipeline.run`` needs for one route, built once."""

    route: Route
    inner: CallNext  # the user layers around the handler
    timeout: TimeoutLayer
    idempotency: IdempotencyLayer | None
    validate: bool


class Pipeline:
    """Runs each handler inside the built-in layers, then the user layers.

    ``layers(route)`` lists them in order. ``run()`` does what that chain does, with the
    built-in layers fused into one coroutine frame (a no-op handler pays for one frame,
    not ten); only the user layers are chained with ``chain()``.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        redis: AnyRedis,
        stats: WorkerStats,
        user_layers: Sequence[Layer] = (),
    ) -> None:
        self.ctx = ctx
        self.redis = redis
        self.stats = stats
        self.user_layers = tuple(user_layers)
        self._metrics = MetricsLayer(stats, ctx.service)
        self._timings = self._metrics.timings
        self._logging = LoggingLayer(ctx.service)
        self._expiry = ExpiryLayer(ctx.settings.clock_skew_s)
        self._compiled: dict[int, _Compiled] = {}  # by id(route): a Route hashes in Python

    def layers(self, route: Route) -> list[Layer]:
        """Every layer ``route``'s handler runs in, outermost first."""
        layers: list[Layer] = [self._metrics, self._logging, self._expiry]
        if route.idempotent:
            layers.append(IdempotencyLayer(self.redis, self.ctx))
        layers += [ReplyLayer(self.ctx), TracingLayer(self.ctx.stream)]
        if route.data_model is not None:
            layers.append(ValidationLayer(route))
        layers.append(self._timeout_layer(route))
        return layers + list(self.user_layers)

    def _timeout_layer(self, route: Route) -> TimeoutLayer:
        settings = self.ctx.settings
        warn = settings.slow_handler_warn_s or 2 * settings.claim_idle_ms / 1000
        return TimeoutLayer(
            route.timeout if route.timeout is not None else settings.handler_timeout_s, warn)

    def _compile(self, route: Route) -> _Compiled:
        compiled = self._compiled[id(route)] = _Compiled(
            route=route,
            inner=chain(self.user_layers, route.handler),
            timeout=self._timeout_layer(route),
            idempotency=IdempotencyLayer(self.redis, self.ctx) if route.idempotent else None,
            validate=route.data_model is not None,
        )
        return compiled

    async def run(self, route: Route, action: DomainAction) -> Prepared | Skipped:
        """Run ``action`` through ``route``'s chain: what to send, or why it was skipped.

        Metrics and logging see every outcome; then expiry, idempotency, reply, tracing,
        validation and timeout, as ``layers()`` lists them.
        """
        compiled = self._compiled.get(id(route))
        if compiled is None or compiled.route is not route:
            compiled = self._compile(route)
        started = time.perf_counter()
        try:
            result: Prepared | Skipped
            if action.expires_at is not None and self._expiry.expired(action):
                result = Skipped("expired")
            elif compiled.idempotency is not None:
                result = await compiled.idempotency(action, action.data, self._reply_step(
                    route, compiled))
            elif tracing.tracing_on:
                result = prepare(self.ctx, action, await self._traced(route, compiled, action))
            else:  # _traced() inlined without its span: one coroutine frame less per action
                data = route.parse_data(action) if compiled.validate else action.data
                timeout = compiled.timeout
                if timeout.timeout is not None:
                    value = await timeout.bounded(action, data, compiled.inner)
                else:
                    running, key = timeout.running, id(action)
                    running[key] = (started, action)
                    if timeout.sweep is None:
                        timeout.schedule_sweep()
                    try:
                        value = await compiled.inner(action, data)
                    finally:
                        running.pop(key, None)
                if value is None and action.callback_queue_name is None \
                        and action.callback_action_type is None:
                    result = NOTHING  # prepare()'s answer, without the call
                else:
                    result = prepare(self.ctx, action, value)
        except Exception as exc:
            self._metrics.failed(action, started)
            self._logging.failed(action, started, exc)
            raise
        if result.__class__ is Prepared:  # MetricsLayer.finished, for the usual outcome
            self.stats.handled += 1
            seconds = time.perf_counter() - started
            series = self._timings.durations.get(action.action_type)
            if series is not None and seconds <= _FIRST_BUCKET:  # Timings.observe inlined
                series.counts[0] += 1
                series.total += seconds
                series.handled += 1
            else:
                self._timings.observe(action.action_type, HANDLED, seconds)
        else:
            self._metrics.finished(action, result, started)
        if logger.isEnabledFor(logging.DEBUG):
            self._logging.finished(action, result, started)
        return result

    def _reply_step(self, route: Route, compiled: _Compiled) -> CallNext:
        """What the idempotency layer wraps: reply, then the traced inner chain."""

        async def step(action: DomainAction, data: Any) -> Any:
            return prepare(self.ctx, action, await self._traced(route, compiled, action))

        return step

    async def _traced(self, route: Route, compiled: _Compiled, action: DomainAction) -> Any:
        """Tracing span, validation, timeout, user layers and the handler."""
        with process_span(action, self.ctx.stream):
            data = route.parse_data(action) if compiled.validate else action.data
            timeout = compiled.timeout
            if timeout.timeout is not None:
                return await timeout.bounded(action, data, compiled.inner)
            running, key = timeout.running, id(action)
            running[key] = (time.perf_counter(), action)
            if timeout.sweep is None:
                timeout.schedule_sweep()
            try:
                return await compiled.inner(action, data)
            finally:
                running.pop(key, None)
