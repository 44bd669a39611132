"""``BaseWorker``: consumes a service's action stream through its consumer group.

The pieces: ``routing`` (which handler), ``processing`` (one action from read to ack),
``reclaim`` (abandoned and retried entries), ``output`` (batched replies and acks),
``maintenance`` (trimming, consumer cleanup). This module runs the loops and the
lifecycle: start, read, stop within a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from pydantic import BaseModel
from redis.exceptions import RedisError, ResponseError

from actionbus.backoff import Backoff, OutageLog
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.redis_manager import RedisManager
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.dead_letters import DeadLetterQueue
from actionbus.exceptions import ClientNotInitializedError, ConfigurationError, HandlerError
from actionbus.models.actions import DomainAction, check_service_name
from actionbus.streams import ensure_group, is_nogroup, text
from actionbus.workers.maintenance import (
    check_eviction_policy,
    remove_gone_consumers,
    safe_trim,
)
from actionbus.workers.output import OutputBatcher
from actionbus.workers.processing import ActionProcessor, WorkerStats
from actionbus.workers.reclaim import claim_abandoned, claim_own_pending, heartbeat
from actionbus.workers.routing import Handler, HandlerRegistry
from actionbus.workers.settings import WorkerSettings

__all__ = ["BaseWorker"]

logger = logging.getLogger("actionbus.worker")

_EAGER_TASKS = sys.version_info >= (3, 12)


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
        self.group = self.settings.group_name or self.service_name
        self.consumer = self.settings.consumer_name or _default_consumer_name()
        self.registry = HandlerRegistry()
        self.stats = WorkerStats()
        self._redis = redis_client
        self._manager: RedisManager | None = None
        self._processor: ActionProcessor | None = None
        self._output: OutputBatcher | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        self._start_lock: asyncio.Lock | None = None
        self._trim_task: asyncio.Task[None] | None = None
        self._acked_at_trim = 0
        retention = self.settings.stream_retention
        # Trim by volume as well as by time, so a fast stream stays near its retention.
        self._trim_every = max(100, retention // 10) if retention else 0
        self._outage = OutageLog(
            logger, f"worker {self.service_name}/{self.consumer}", self.settings.outage_log_every_s
        )

    # -- handlers -------------------------------------------------------------------

    def register(
        self,
        action_type: str,
        handler: Handler,
        *,
        data_model: type[BaseModel] | None = None,
        idempotent: bool = False,
    ) -> None:
        """Route ``action_type`` to ``async def handler(action, data)``.

        ``data_model`` validates ``action.data`` first (a mismatch is dead-lettered, not
        retried). ``idempotent=True`` records each completed ``action_id`` so a redelivered
        action is acknowledged without running the handler again.
        """
        self.registry.add(action_type, handler, data_model=data_model, idempotent=idempotent)

    def handler(
        self,
        action_type: str,
        *,
        data_model: type[BaseModel] | None = None,
        idempotent: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Decorator form of ``register()``."""

        def decorate(fn: Handler) -> Handler:
            self.register(action_type, fn, data_model=data_model, idempotent=idempotent)
            return fn

        return decorate

    async def handle_action(self, action: DomainAction) -> Any:
        """Subclass hook, called for actions with no registered handler.

        Return a dict, a Pydantic model, a ``DomainActionResponse`` or ``None``; raise to
        fail (``ActionRejected`` for failures that retrying cannot fix).
        """
        raise HandlerError(
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
        """Actions being handled (or waiting for a retry) right now."""
        return len(self._tasks)

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
        await ensure_group(redis, self.stream, self.group)
        await check_eviction_policy(redis)
        self._output = OutputBatcher(redis, self.stream, self.group, self._outage)
        self._output.start()
        self._processor = ActionProcessor(self, redis, self._output)
        self._loops = [
            asyncio.create_task(self._read_loop(), name=f"actionbus-read:{self.stream}"),
            asyncio.create_task(self._upkeep_loop(), name=f"actionbus-upkeep:{self.stream}"),
        ]
        logger.info(
            "worker %s consuming %s as %s/%s (handlers: %s)", self.service_name, self.stream,
            self.group, self.consumer, ", ".join(self.registry.action_types) or "subclass hook",
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop reading; give in-flight handlers ``grace`` seconds; leave the rest pending."""
        if not self._loops:
            return
        grace = self.settings.shutdown_grace_s if grace is None else grace
        self._stopping.set()
        loops, self._loops = self._loops, []
        if self._trim_task is not None:
            loops.append(self._trim_task)
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=0.5)
                logger.warning(
                    "shutdown grace of %.1fs passed: %d action(s) left unacknowledged for "
                    "another worker", grace, len(pending),
                )
        if self._output is not None:
            await self._output.close(timeout=0.5)
        if self._manager is not None:
            await self._manager.close()
            self._manager, self._redis = None, None
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

    def _spawn(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        assert self._processor is not None
        self._processor.claim(entry_id)
        coro = self._processor.process(entry_id, fields, deliveries)
        if _EAGER_TASKS:  # Python 3.12+: run until the first real wait, without a hop
            task: asyncio.Task[None] = asyncio.Task(  # type: ignore[call-arg,unused-ignore]
                coro, loop=asyncio.get_running_loop(), eager_start=True
            )
        else:
            task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            logger.error("action task failed unexpectedly", exc_info=task.exception())

    async def _read_loop(self) -> None:
        redis = self.redis_client
        backoff = Backoff(cap=2.0)
        streams = {self.stream: ">"}
        next_reclaim = 0.0
        recover_own = True  # at start, and after any failed read (its entries may be ours)
        slow_read = self.settings.block_ms / 1000 + 1.0
        while not self._stopping.is_set():
            free = self.settings.concurrency - len(self._tasks)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            try:
                if recover_own:
                    await self._recover_own(free)
                    recover_own = False
                    continue
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + self.settings.reclaim_interval_s
                    await self._recover_own(free)
                    await self._reclaim(self.settings.concurrency - len(self._tasks))
                    free = self.settings.concurrency - len(self._tasks)
                    if free <= 0:
                        continue
                started = time.monotonic()
                reply: Any = await redis.xreadgroup(
                    self.group, self.consumer, streams,  # type: ignore[arg-type]
                    count=min(free, self.settings.batch_size), block=self.settings.block_ms,
                )
                if time.monotonic() - started > slow_read:
                    # Far longer than a block: the connection hung and redis-py retried the
                    # read on a new one. The lost read may have delivered entries to us.
                    recover_own = True
                self._outage.success()
                backoff.reset()
            except ResponseError as exc:
                if is_nogroup(exc):
                    await self._recreate_group()
                    continue
                logger.error("reading %s failed: %s", self.stream, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            except (RedisError, OSError) as exc:
                self._outage.failure(exc)
                recover_own = True
                await asyncio.sleep(backoff.next_delay())
                continue
            for _stream, entries in reply or ():
                for entry_id, fields in entries:
                    self._spawn(text(entry_id), fields, 1)
                # Let the new tasks run (and send their replies) before the next read.
                await asyncio.sleep(0)
            self._maybe_trim()

    def _maybe_trim(self) -> None:
        """Start a trim in the background after every ``retention / 10`` acknowledgements."""
        assert self._output is not None
        acked = self._output.acknowledged
        if (
            not self._trim_every
            or self._trim_task is not None
            or acked - self._acked_at_trim < self._trim_every
        ):
            return
        self._acked_at_trim = acked
        self._trim_task = asyncio.create_task(self._trim(), name=f"actionbus-trim:{self.stream}")

    async def _trim(self) -> None:
        assert self.settings.stream_retention is not None
        try:
            await safe_trim(self.redis_client, self.stream, self.settings.stream_retention)
        except (RedisError, OSError) as exc:
            logger.debug("trimming %s skipped: %s", self.stream, exc)
        finally:
            self._trim_task = None

    async def _recreate_group(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            if await ensure_group(self.redis_client, self.stream, self.group):
                logger.warning(
                    "consumer group %s on %s was missing (Redis restarted empty or the stream "
                    "was deleted); recreated it", self.group, self.stream,
                )

    async def _recover_own(self, free: int) -> None:
        assert self._processor is not None
        assert self._output is not None
        if free <= 0:
            return
        claimed = await claim_own_pending(
            self.redis_client, self.stream, self.group, self.consumer, count=free,
            skip=self._processor.owned | self._output.unacknowledged(),
        )
        for entry in claimed:
            logger.info("resuming %s, delivered to this consumer by a lost read", entry.entry_id)
            self._spawn(entry.entry_id, entry.fields, entry.deliveries)

    async def _reclaim(self, free: int) -> None:
        assert self._processor is not None
        if free <= 0:
            return
        claimed = await claim_abandoned(
            self.redis_client, self.stream, self.group, self.consumer,
            min_idle_ms=self.settings.claim_idle_ms, count=free,
            skip=self._processor.owned,
        )
        for entry in claimed:
            self.stats.reclaimed += 1
            logger.info(
                "reclaimed %s from %s (delivery %d)",
                entry.entry_id, entry.previous_consumer, entry.deliveries,
            )
            self._spawn(entry.entry_id, entry.fields, entry.deliveries)

    async def _upkeep_loop(self) -> None:
        """Heartbeats for long-running actions, then trimming and consumer cleanup."""
        assert self._processor is not None
        beat = self.settings.claim_idle_ms / 3000
        next_maintenance = time.monotonic() + self.settings.maintenance_interval_s
        while True:
            await asyncio.sleep(min(beat, self.settings.maintenance_interval_s))
            try:
                await heartbeat(
                    self.redis_client, self.stream, self.group, self.consumer,
                    self._processor.older_than(beat),
                )
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + self.settings.maintenance_interval_s
                    await self.maintain()
            except ResponseError as exc:  # e.g. the stream is gone after a restart
                logger.debug("upkeep of %s skipped: %s", self.stream, exc)
            except (RedisError, OSError) as exc:
                self._outage.failure(exc)

    async def maintain(self) -> None:
        """Trim fully processed entries beyond the retention and remove gone consumers."""
        redis = self.redis_client
        if self.settings.stream_retention is not None:
            removed = await safe_trim(redis, self.stream, self.settings.stream_retention)
            if removed:
                logger.debug("trimmed %d processed entries from %s", removed, self.stream)
        await remove_gone_consumers(
            redis, self.stream, self.group, self.consumer,
            int(self.settings.consumer_gone_after_s * 1000),
        )
