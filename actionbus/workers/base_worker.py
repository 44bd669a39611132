"""``BaseWorker``: consumes a service's action stream through its consumer group.

The pieces: ``routing`` (which handler), ``reader`` (the read loop), ``processing`` (one
action from read to ack), ``pipeline`` (layers around each handler), ``policy`` (retry,
bury or reply with the error), ``reclaim`` (abandoned and retried entries), ``output``
(batched replies and acks), ``maintenance`` (trimming, consumer cleanup). This module
owns the handlers, the tasks and the lifecycle: start, run, stop within a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from itertools import repeat
from types import TracebackType
from typing import Any, Literal, overload

from pydantic import BaseModel
from redis.asyncio import RedisCluster

from actionbus.backoff import OutageLog, cancel_and_wait
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.redis_manager import RedisManager
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.dead_letters import DeadLetterQueue, trim_dead_letters
from actionbus.exceptions import (
    ClientNotInitializedError,
    ConfigurationError,
    HandlerError,
    UnknownActionType,
    WorkerFailedError,
)
from actionbus.models.actions import DomainAction, check_service_name
from actionbus.partitions import check_partitions
from actionbus.permissions import check_permissions
from actionbus.schedule import Schedule
from actionbus.streams import ensure_group, fast_stream_reads
from actionbus.workers import presence
from actionbus.workers.context import WorkerContext, entry_key
from actionbus.workers.eager import EagerRunner
from actionbus.workers.health import Health, HealthStatus, SlowCommands
from actionbus.workers.maintenance import check_eviction_policy
from actionbus.workers.mover import Mover
from actionbus.workers.ordering import Ordering
from actionbus.workers.output import OutputBatcher
from actionbus.workers.ownership import ConsumerLease
from actionbus.workers.partitions import Partitions
from actionbus.workers.pipeline import Layer, Pipeline
from actionbus.workers.policy import FailurePolicy
from actionbus.workers.processing import ActionProcessor
from actionbus.workers.reader import StreamReader
from actionbus.workers.routing import (
    DictHandler,
    Handler,
    HandlerRegistry,
    M,
    ModelHandler,
    R,
    Route,
)
from actionbus.workers.settings import WorkerSettings
from actionbus.workers.stats import WorkerStats
from actionbus.workers.supervisor import supervise
from actionbus.workers.upkeep import Upkeep, announce_lanes, maintain

__all__ = ["BaseWorker"]

logger = logging.getLogger("actionbus.worker")


def _entry_ids(ids: tuple[Any, ...]) -> list[str]:
    """The entry ids of one read as text: one ``decode()`` for all (an id has no space)."""
    if type(ids[0]) is bytes:
        with contextlib.suppress(TypeError):  # not all bytes: one by one
            return b" ".join(ids).decode().split(" ")
    return [i.decode() if type(i) is bytes else i for i in ids]


def _default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class BaseWorker:
    """Reads its service's actions, runs their handlers, answers, then acknowledges.

    Register handlers with ``register()`` or the ``@worker.handler(...)`` decorator, or
    override ``handle_action(action)`` in a subclass. Then ``await worker.run()`` (stops
    on SIGINT/SIGTERM), or ``start()``/``stop()``, or ``async with worker:``.
    """

    def __init__(
        self,
        app_settings: CommonAppSettings,
        redis_client: AnyRedis | None = None,
        *,
        worker_settings: WorkerSettings | None = None,
        service_name: str | None = None,
    ) -> None:
        self.app_settings = app_settings
        self.settings = worker_settings or WorkerSettings()
        try:
            self.service_name = check_service_name(service_name or app_settings.service_name)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if app_settings.redis_socket_timeout * 1000 <= self.settings.block_ms + 500:
            raise ConfigurationError(
                f"redis_socket_timeout ({app_settings.redis_socket_timeout}s) must exceed the "
                f"worker's block_ms ({self.settings.block_ms} ms) by at least 0.5 s, or every "
                "blocking read would time out"
            )
        self.queue_manager = QueueManager(app_settings.environment, app_settings.key_prefix)
        self.stream = self.queue_manager.get_service_action_stream(self.service_name)
        self.partitions = check_partitions(app_settings.partitions.get(self.service_name, 1),
                                           f"partitions[{self.service_name!r}]")
        """How many partitions this service has (``CommonAppSettings.partitions``)."""
        if self.partitions > 1 and self.settings.lanes:
            raise ConfigurationError(
                f"service {self.service_name!r}: priority lanes and partitions cannot be "
                "combined; use one or the other")
        self._partitions: Partitions | None = None
        self._ordering: Ordering | None = None
        self.group = self.settings.group_name or self.service_name
        self.consumer = self.settings.consumer_name or _default_consumer_name()
        self.registry = HandlerRegistry()
        self.stats = WorkerStats()
        self._redis = redis_client
        self._manager: RedisManager | None = None
        self.policy = FailurePolicy(self.settings)
        """Decides what happens to failed attempts (retry, bury, reply with the error)."""
        self.before_ack: Callable[[str], None] | None = None
        """Fault-injection seam for tests: called with each entry id before its ack is queued."""
        self._layers: list[Layer] = []
        self.schedules: list[Schedule] = []
        """Periodic actions this worker ticks (``schedule()``), with the delayed-set mover."""
        self._fallback = Route("*", self._call_hook)
        self._processor: ActionProcessor | None = None
        self._reader: StreamReader | None = None
        self._output: OutputBatcher | None = None
        self._active = 0  # entries claimed and not finished
        self._runner = EagerRunner(self._entry_done, after=self._flush_output)
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._start_lock: asyncio.Lock | None = None
        self._upkeep: Upkeep | None = None
        self._lease: ConsumerLease | None = None  # one process per consumer name
        self._outage = OutageLog(
            logger, f"worker {self.service_name}/{self.consumer}", self.settings.outage_log_every_s
        )
        self._output_outage = OutageLog(  # its own: reads may work while writes fail (OOM)
            logger, f"worker {self.service_name}/{self.consumer} output",
            self.settings.outage_log_every_s,
        )
        self._health = Health(logger, f"worker {self.service_name}/{self.consumer}")

    # -- handlers -------------------------------------------------------------------

    @overload
    def register(
        self, action_type: str, handler: ModelHandler[M, Any], *, data_model: type[M],
        idempotent: bool = False, timeout: float | timedelta | None = None,
    ) -> None: ...

    @overload
    def register(
        self, action_type: str, handler: DictHandler[Any], *, data_model: None = None,
        idempotent: bool = False, timeout: float | timedelta | None = None,
    ) -> None: ...

    def register(
        self,
        action_type: str,
        handler: Handler,
        *,
        data_model: type[BaseModel] | None = None,
        idempotent: bool = False,
        timeout: float | timedelta | None = None,
    ) -> None:
        """Route ``action_type`` to ``async def handler(action, data)``.

        ``data_model`` validates ``action.data`` first (a mismatch is dead-lettered, not
        retried) and the handler gets the model (``data: Order``); without it, the dict.
        ``idempotent=True`` records each completed ``action_id`` so a redelivered action
        is acknowledged without running the handler again. ``timeout`` (seconds or
        timedelta; default ``WorkerSettings.handler_timeout_s``) cancels an overrunning
        handler: a failed attempt with ``HandlerTimeout``.
        """
        self.registry.add(action_type, handler, data_model=data_model, idempotent=idempotent,
                          timeout=timeout)

    @overload
    def handler(
        self, action_type: str, *, data_model: type[M], idempotent: bool = False,
        timeout: float | timedelta | None = None,
    ) -> Callable[[ModelHandler[M, R]], ModelHandler[M, R]]: ...

    @overload
    def handler(
        self, action_type: str, *, data_model: None = None, idempotent: bool = False,
        timeout: float | timedelta | None = None,
    ) -> Callable[[DictHandler[R]], DictHandler[R]]: ...

    def handler(
        self,
        action_type: str,
        *,
        data_model: type[BaseModel] | None = None,
        idempotent: bool = False,
        timeout: float | timedelta | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator form of ``register()``."""

        def decorate(fn: Handler) -> Handler:
            self.registry.add(action_type, fn, data_model=data_model, idempotent=idempotent,
                              timeout=timeout)
            return fn

        return decorate

    def schedule(
        self,
        cron: str | None = None,
        action_type: str = "",
        *,
        every: timedelta | None = None,
        data: dict[str, Any] | None = None,
        name: str = "",
        missed: Literal["skip", "fire_once"] = "fire_once",
        grace: timedelta = timedelta(seconds=60),
    ) -> Schedule:
        """Send ``action_type`` to this service periodically: ``schedule("*/5 * * * *", t)``
        or ``schedule(action_type=t, every=timedelta(...))``. Each tick fires once however
        many workers run (see ``actionbus.schedule``). Add schedules before ``start()``."""
        if self._loops:
            raise HandlerError("add schedules before start(); the worker is running")
        added = Schedule(action_type=action_type, cron=cron, every=every, data=data or {},
                         name=name, missed=missed, grace=grace)
        if any(s.name == added.name for s in self.schedules):
            raise ConfigurationError(f"a schedule named {added.name!r} already exists; "
                                     "give each a distinct name=")
        self.schedules.append(added)
        return added

    def use(self, layer: Layer) -> None:
        """Add a pipeline layer ``async def __call__(action, data, call_next)``.

        Layers run inside the built-in ones (metrics, expiry, idempotency, reply, tracing,
        validation), around the handler, in ``use()`` order: the first is the outermost.
        Add them before ``start()``.
        """
        if self._loops:
            raise HandlerError("add pipeline layers before start(); the worker is running")
        self._layers.append(layer)

    def _dispatch(self, action_type: str) -> Route:
        return self.registry.get(action_type) or self._fallback

    async def _call_hook(self, action: DomainAction, data: Any) -> Any:
        return await self.handle_action(action)

    async def handle_action(self, action: DomainAction) -> Any:
        """Subclass hook, called for actions with no registered handler.

        Return a dict, a Pydantic model, a ``DomainActionResponse`` or ``None``; raise to
        fail (``ActionRejected`` for failures that retrying cannot fix).
        """
        raise UnknownActionType(
            f"service {self.service_name!r} has no handler for {action.action_type!r}; "
            f"registered: {', '.join(self.registry.action_types) or 'none'}"
        )

    # -- accessors ------------------------------------------------------------------

    @property
    def redis_client(self) -> AnyRedis:
        """The Redis client the worker uses (its own if none was given)."""
        if self._redis is None:
            raise ClientNotInitializedError(
                f"worker {self.service_name!r} has no Redis client yet: call start() first"
            )
        return self._redis

    @property
    def dead_letters(self) -> DeadLetterQueue:
        """This service's dead-letter stream (list, replay, delete)."""
        return DeadLetterQueue(self.redis_client, self.queue_manager, self.service_name)

    @property
    def in_flight(self) -> int:
        """Actions being handled right now (or waiting for an in-slot retry)."""
        return self._active

    @property
    def health(self) -> HealthStatus:
        """Healthy unless Redis refused an operation (``NOPERM``, ``WRONGTYPE`` …) or a
        background loop died; ``in_outage`` while Redis is unreachable."""
        return self._health.status(
            in_outage=self._outage.in_outage or self._output_outage.in_outage
        )

    @property
    def failed(self) -> BaseException | None:
        """Why the worker stopped for good (a background loop died), else ``None``."""
        return self._health.failed

    @property
    def context(self) -> WorkerContext:
        """The frozen facts the worker's parts share (service, stream, group, keys…)."""
        return WorkerContext(
            service=self.service_name, stream=self.stream, group=self.group,
            consumer=self.consumer, settings=self.settings, queues=self.queue_manager,
            dead_stream=self.queue_manager.get_dead_letter_stream(self.service_name),
            reply_ttl=self.app_settings.response_ttl_seconds,
            max_payload_bytes=self.app_settings.max_payload_bytes,
            lanes=tuple(self.queue_manager.get_lane_streams(self.service_name))
            if self.settings.lanes else (),
        )

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connect if needed, join the consumer group and start consuming in the background."""
        if self._loops:
            return
        self._stopping.clear()  # before any await: a stop requested while starting must hold
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:  # a second concurrent start() waits, then returns
            if not self._loops:
                await self._start()

    async def _start(self) -> None:
        if self._redis is None:
            self._manager = RedisManager(self.app_settings)
            self._redis = await self._manager.initialize()
        redis = self._redis
        fast_stream_reads(redis)
        try:
            streams = list(self.context.lanes or (self.stream,))
            for stream in streams:
                await ensure_group(redis, stream, self.group)
            if self.settings.check_permissions:
                await check_permissions(redis, "worker", [*streams, self.context.dead_stream])
            await check_eviction_policy(redis)
            await announce_lanes(redis, self.context)  # senders may route to lanes now
            partitions = self._partitions = Partitions(
                self.context, redis, self.partitions, spawn=self._spawn,
                spawn_read=self._spawn_read,
                in_flight=lambda: self._active, supervised=self._supervised,
                stopping=self._stopping, stats=self.stats, outage=self._outage,
                health=self._health,
                slow=SlowCommands(self._health, float(self.app_settings.redis_socket_timeout)))
            extra_partitions = await partitions.prepare()
            self._lease = await ConsumerLease.take(redis, self.context)  # last: nothing to undo
        except BaseException:
            if self._manager is not None:  # our own connection: do not leak it
                manager, self._manager, self._redis = self._manager, None, None
                with contextlib.suppress(Exception):
                    await manager.close()
            raise
        self._health.failed = None
        ctx = self.context
        slow = SlowCommands(self._health, float(self.app_settings.redis_socket_timeout))
        output = self._output = OutputBatcher(
            redis, self.stream, self.group, self._output_outage, before_ack=self.before_ack,
            health=self._health, dead_stream=ctx.dead_stream, consumer=self.consumer,
        )
        output.start()
        self._runner.urgent = output.callers_waiting
        pipeline = Pipeline(ctx, redis, self.stats, self._layers)
        processor = self._processor = ActionProcessor(
            ctx, redis, output, self._dispatch, pipeline, self.stats, self.policy
        )
        upkeep = self._upkeep = Upkeep(
            ctx, redis, in_progress=processor.older_than,
            acknowledged=lambda: output.acknowledged, maintain=self.maintain, outage=self._outage,
        )
        reader = self._reader = StreamReader(
            ctx, redis, ctx.lanes or [self.stream], spawn=self._spawn,
            spawn_read=self._spawn_read,
            in_flight=lambda: self._active,
            owned=lambda: processor.owned, unacknowledged=output.unacknowledged,
            stats=self.stats, outage=self._outage, after_batch=upkeep.maybe_trim, slow=slow,
            health=self._health, read_limit=lambda: processor.read_limit,
        )
        mover = Mover(ctx, redis, schedules=self.schedules, outage=self._outage)
        ordering = self._ordering = Ordering(
            ctx, redis, dispatch=self._dispatch, pipeline=pipeline, stats=self.stats,
            policy=self.policy, outage=self._output_outage, health=self._health,
            supervised=self._supervised, stopping=self._stopping, before_ack=self.before_ack)
        ordering.start()
        ordering.add(0)
        partitions.on_added.append(ordering.add)
        partitions.start(extra_partitions, processor, output)
        stopping = self._stopping
        self._loops = [
            self._supervised("read", lambda: reader.run(stopping)),
            self._supervised("recovery", lambda: reader.run_recovery(stopping)),
            self._supervised("upkeep", upkeep.run),
            self._supervised("mover", mover.run),
            self._supervised("output", output.run),
            self._supervised("presence", lambda: presence.run(ctx, redis, self.stats)),
        ]
        logger.info(
            "worker %s consuming %s as %s/%s (handlers: %s)", self.service_name, self.stream,
            self.group, self.consumer, ", ".join(self.registry.action_types) or "subclass hook",
        )

    def _supervised(
        self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]
    ) -> asyncio.Task[None]:
        """A background loop under ``supervise()``: restarted after errors; if it dies for
        good, the worker stops and ``run()`` raises ``WorkerFailedError``."""
        return asyncio.create_task(
            supervise(f"worker {self.service_name} {name} loop", loop,
                      on_death=self._loop_died, on_error=self._after_loop_error),
            name=f"actionbus-{name}:{self.stream}",
        )

    def _loop_died(self, exc: BaseException) -> None:
        self._health.died(exc)
        self._stopping.set()

    async def _after_loop_error(self, exc: BaseException) -> None:
        """On Redis Cluster, move the client's default node (where redis-py resolves the
        keys of commands like XREADGROUP) to another primary, in case it was the one lost."""
        redis = self._redis
        if isinstance(redis, RedisCluster):
            current = redis.get_default_node()
            others = [n for n in redis.get_primaries() if n is not current]
            if others:
                redis.set_default_node(random.choice(others))

    async def stop(self, grace: float | None = None) -> None:
        """Stop reading; give in-flight handlers ``grace`` seconds; leave the rest pending.

        Never raises a Redis client error: a failure while closing is logged.
        """
        if not self._loops:
            return
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self._stopping.set()
        loops, self._loops = self._loops, []
        if self._partitions is not None:
            loops += self._partitions.tasks
        if self._ordering is not None:
            loops += self._ordering.tasks
        if self._upkeep is not None and self._upkeep.trim_task is not None:
            loops.append(self._upkeep.trim_task)
        await cancel_and_wait(loops)
        started = asyncio.get_running_loop().time()
        await self._drain_entries(grace)
        if self._ordering is not None:
            left = grace - (asyncio.get_running_loop().time() - started)
            await self._ordering.close(max(0.0, left))
        if self._output is not None:
            await self._output.close(timeout=0.5)
        if self._lease is not None:
            await self._lease.release()
        if self._manager is not None:
            manager, self._manager, self._redis = self._manager, None, None
            try:
                await manager.close()
            except Exception as exc:  # stop() never raises a client error
                logger.warning("worker %s/%s: closing the Redis connection failed (%s: %s)",
                               self.service_name, self.consumer, type(exc).__name__, exc)
        logger.info("worker %s/%s stopped (%s)", self.service_name, self.consumer, self.stats)

    async def run(self) -> None:
        """Start, then run until SIGINT/SIGTERM (or ``stop()``), then shut down gracefully."""
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
                installed.append(sig)
        try:
            await self.start()
            await self._stopping.wait()
            await self.stop()
            if self._health.failed is not None:
                failed = self._health.failed
                raise WorkerFailedError(
                    f"worker {self.service_name}/{self.consumer} stopped: a background loop "
                    f"died ({type(failed).__name__}: {failed}); see the log for the traceback",
                    cause=failed,
                ) from failed
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    def request_stop(self) -> None:
        """Ask a running ``run()`` to shut down (what SIGTERM does)."""
        logger.info("worker %s/%s: stop requested", self.service_name, self.consumer)
        self._stopping.set()

    async def __aenter__(self) -> BaseWorker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- loops ----------------------------------------------------------------------

    async def _drain_entries(self, grace: float) -> None:
        """Give the entries in progress ``grace`` seconds, then cancel the rest."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        runner = self._runner
        while runner.tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(runner.tasks), timeout=left)
        if runner.tasks:
            pending = set(runner.tasks)
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.5)
            left_over = self._active
            logger.warning(
                "shutdown grace of %.1fs passed: %d action(s) left unacknowledged for "
                "another worker", grace, left_over,
            )
        runner.drop_queued()

    def _spawn(self, stream: str, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        processor = self._processor
        assert processor is not None
        key = entry_id if stream == self.stream else entry_key(self.stream, stream, entry_id)
        if not processor.claim(key):
            return  # already being handled (a recovery raced a read)
        self._active += 1
        self._runner.submit(processor.process, key, fields, deliveries)

    def _spawn_read(self, stream: str, entries: list[Any]) -> None:
        """``_spawn`` of every ``(entry_id, fields)`` one read brought, in one go."""
        processor = self._processor
        assert processor is not None
        if not entries:
            return
        ids, fields = zip(*entries, strict=True)
        keys = _entry_ids(ids)
        if stream != self.stream:
            keys = [entry_key(self.stream, stream, key) for key in keys]
        jobs = processor.claim_all(keys, list(zip(keys, fields, repeat(1))))
        self._active += len(jobs)
        self._runner.submit_all(processor.process, jobs)

    async def _flush_output(self) -> None:
        if self._output is not None:
            await self._output.flush()

    def _entry_done(self) -> None:
        self._active -= 1
        reader = self._reader
        if reader is not None and reader.waiting_for_slot:
            reader.slot_free.set()
        partitions = self._partitions
        if partitions is not None and partitions.readers:  # partition readers may wait
            partitions.slot_freed()

    async def maintain(self) -> None:
        """Trim fully processed entries beyond the retention, remove gone consumers, and
        trim dead letters (``dead_letter_max_len`` / ``dead_letter_max_age_s``)."""
        await maintain(self.redis_client, self.context)
        s, ctx = self.settings, self.context
        self.stats.dead_letters_trimmed += await trim_dead_letters(
            self.redis_client, ctx.dead_stream, s.dead_letter_max_len, s.dead_letter_max_age_s)
