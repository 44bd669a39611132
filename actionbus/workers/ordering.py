"""Ordering keys on the worker side: one key's actions one at a time, in send order.

Actions with an ``ordering_key`` go to their partition's ordered stream
(``QueueManager.get_ordered_stream``). Each ordered stream is handled by exactly one worker
at a time, the holder of its lease (``…:ordering:lease``: ``SET NX`` with a TTL of
``ordering_lease_ttl_s``, refreshed every third of it). The holder:

1. on taking the lease, first claims every entry still pending in the stream's consumer
   group (a dead or stopped holder's), in stream-id order, so a reclaimed action runs
   before its key's later ones;
2. then reads new entries and queues each under its key: a key's actions run one after
   another, different keys in parallel (at most ``concurrency`` entries held at once);
3. starts a key's next action only once the previous one is finished and its
   acknowledgement is in Redis. A failing action is retried in place with backoff
   (``ordering_on_failure="hold"``, the default) until it succeeds or is dead-lettered
   after ``max_deliveries``; with ``"skip"`` it is retried later through the partition's
   delayed set and main stream (losing its place) and its key goes on.

A worker only takes a lease when the ordered stream has entries, so services that never
use ordering keys get no extra keys. Stopping releases the leases (the next holder takes
over at once); a crashed holder's leases lapse after their TTL. A holder cut off from
Redis longer than the TTL may overlap with its successor for the actions it has in hand:
make ordered handlers idempotent where a duplicate matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from actionbus.backoff import Backoff, OutageLog, cancel_and_wait
from actionbus.connection import AnyRedis
from actionbus.streams import ensure_group, text
from actionbus.workers.context import Dispatch, WorkerContext, entry_key
from actionbus.workers.health import Health
from actionbus.workers.maintenance import remove_gone_consumers, safe_trim
from actionbus.workers.output import OutputBatcher
from actionbus.workers.ownership import RELEASE_LEASE
from actionbus.workers.pipeline import Pipeline
from actionbus.workers.policy import FailurePolicy
from actionbus.workers.processing import ActionProcessor
from actionbus.workers.stats import WorkerStats

__all__ = ["OrderedConsumer", "Ordering", "ordering_key_of"]

logger = logging.getLogger("actionbus.worker")

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

_POLL_S = 0.5
"""How often a worker without the lease looks for ordered work (or a lapsed lease)."""

Entry = tuple[str, dict[Any, Any], int]
"""(entry id, fields, deliveries)."""


def ordering_key_of(fields: dict[Any, Any]) -> str:
    """The ``ordering_key`` of an entry's action ("" if it has none or is unreadable:
    such an entry is queued on its own and buried by the processor)."""
    raw = fields.get(b"data", fields.get("data"))
    try:
        key = json.loads(raw).get("ordering_key") if raw is not None else None
    except (ValueError, TypeError, AttributeError):
        return ""
    return key if isinstance(key, str) else ""


class Ordering:
    """The ordered consumers of one worker (one per partition read) and what they share."""

    def __init__(
        self, ctx: WorkerContext, redis: AnyRedis, *, dispatch: Dispatch, pipeline: Pipeline,
        stats: WorkerStats, policy: FailurePolicy, outage: OutageLog, health: Health,
        supervised: Callable[..., asyncio.Task[None]], stopping: asyncio.Event,
        before_ack: Callable[[str], None] | None,
    ) -> None:
        self.ctx = ctx
        self.redis = redis
        self.supervised = supervised
        self.stopping = stopping
        self.acked: set[str] = set()
        self._before_ack = before_ack
        self.output = OutputBatcher(
            redis, ctx.stream, ctx.group, outage, before_ack=self._on_ack, health=health,
            dead_stream=ctx.dead_stream, consumer=ctx.consumer,
        )
        self.processor = ActionProcessor(ctx, redis, self.output, dispatch, pipeline, stats,
                                         policy)
        self.consumers: dict[int, OrderedConsumer] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def _on_ack(self, key: str) -> None:
        self.acked.add(key)
        if self._before_ack is not None:
            self._before_ack(key)

    def start(self) -> None:
        """Start the output loop (partitions are added with ``add``)."""
        self.output.start()
        self.tasks.append(self.supervised("ordered output", self.output.run))

    def add(self, partition: int) -> None:
        """Handle ``partition``'s ordered stream (whenever this worker holds its lease)."""
        if partition in self.consumers:
            return
        consumer = self.consumers[partition] = OrderedConsumer(self, partition)
        self.tasks.append(self.supervised(f"ordered p{partition}", consumer.run))

    @property
    def leases(self) -> int:
        """How many partitions' ordered streams this worker handles now."""
        return sum(c.holding for c in self.consumers.values())

    async def close(self, grace: float) -> None:
        """After the loops stopped: let running actions finish within ``grace``, cancel
        the rest (they stay pending for the next holder), flush, release the leases."""
        running = {t for c in self.consumers.values() for t in c.running.values()}
        if running:
            await asyncio.wait(running, timeout=grace)
            await cancel_and_wait([t for t in running if not t.done()])
        await self.output.close(timeout=0.5)
        for consumer in self.consumers.values():
            await consumer.release()


class OrderedConsumer:
    """Handles one ordered stream while holding its lease."""

    def __init__(self, ordering: Ordering, partition: int) -> None:
        ctx = ordering.ctx
        self.ordering = ordering
        self.ctx = ctx
        self.redis = ordering.redis
        self.partition = partition
        self.stream = ctx.queues.get_ordered_stream(ctx.service, partition)
        self.lease = ctx.queues.get_ordering_lease_key(ctx.service, partition)
        self.instance = uuid.uuid4().hex
        self.ttl_ms = max(300, int(ctx.settings.ordering_lease_ttl_s * 1000))
        self.holding = False
        self.queues: dict[str, deque[Entry]] = {}
        self.running: dict[str, asyncio.Task[None]] = {}
        self.held = 0
        self.slot_free = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._refresh = self.redis.register_script(_REFRESH)
        self._release = self.redis.register_script(RELEASE_LEASE)

    async def run(self) -> None:
        """Take the lease when there is ordered work, then recover and read until stopped."""
        settings, stopping = self.ctx.settings, self.ordering.stopping
        backoff = Backoff(cap=2.0)
        next_upkeep = time.monotonic() + settings.maintenance_interval_s
        while not stopping.is_set():
            try:
                if not self.holding:
                    if not await self._take():
                        await asyncio.sleep(_POLL_S * random.uniform(0.5, 1.5))
                        continue
                    await self._recover()
                if self.held >= settings.concurrency:
                    self.slot_free.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.slot_free.wait(), self.ttl_ms / 3000)
                    continue
                await self._read(min(settings.concurrency - self.held, settings.batch_size))
                if time.monotonic() >= next_upkeep:
                    next_upkeep = time.monotonic() + settings.maintenance_interval_s
                    await self._upkeep()
                backoff.reset()
            except (RedisError, OSError) as exc:
                logger.debug("ordered stream %s: %s", self.stream, exc)
                await asyncio.sleep(backoff.next_delay())

    async def _take(self) -> bool:
        """Take the lease if the stream has entries and nobody holds it."""
        if not int(await self.redis.xlen(self.stream) or 0):
            return False
        held = self.ordering.leases
        if held:  # leave other workers a chance to take some partitions
            await asyncio.sleep(random.uniform(0, 0.2) * held)
        if not await self.redis.set(self.lease, self.instance, nx=True, px=self.ttl_ms):
            return False
        await ensure_group(self.redis, self.stream, self.ctx.group)
        self.holding = True
        self._keeper = asyncio.create_task(self._keep(), name=f"actionbus-lease:{self.lease}")
        logger.info("worker %s handles the ordered actions of %s", self.ctx.consumer,
                    self.stream)
        return True

    async def _keep(self) -> None:
        """Refresh the lease every third of its TTL; on losing it, stop taking work."""
        while self.holding:
            await asyncio.sleep(self.ttl_ms / 3000)
            try:
                held = await self._refresh(keys=[self.lease], args=[self.instance, self.ttl_ms])
            except (RedisError, OSError) as exc:
                logger.debug("could not refresh %s: %s", self.lease, exc)
                continue
            if not held:
                logger.error("lost the lease of %s to another worker; its ordered actions "
                             "not started here are left to it", self.stream)
                self.holding = False

    async def _recover(self) -> None:
        """Claim every pending entry (a previous holder's), oldest first, and queue them."""
        start = "-"
        while self.holding:
            rows: Any = await self.redis.xpending_range(
                self.stream, self.ctx.group, min=start, max="+", count=100)
            if not rows:
                return
            delivered = {text(r["message_id"]): int(r["times_delivered"]) for r in rows}
            queued = {entry for q in self.queues.values() for entry, _, _ in q}
            ids = [i for i in delivered if i not in queued]
            if ids:
                claimed: Any = await self.redis.xclaim(
                    self.stream, self.ctx.group, self.ctx.consumer, 0, list[Any](ids))
                for entry_id, fields in sorted(claimed, key=lambda e: _id(text(e[0]))):
                    if fields is not None:
                        entry = text(entry_id)
                        self._queue(entry, fields, delivered.get(entry, 0) + 1)
                    else:  # deleted meanwhile (trimmed): nothing to run
                        await self.redis.xack(self.stream, self.ctx.group, entry_id)
            last = _id(text(rows[-1]["message_id"]))
            start = f"{last[0]}-{last[1] + 1}"
            if len(rows) < 100:
                return

    async def _read(self, count: int) -> None:
        reply: Any = await self.redis.xreadgroup(
            self.ctx.group, self.ctx.consumer, {self.stream: ">"}, count=count,
            block=min(self.ctx.settings.block_ms, self.ttl_ms // 3))
        for _, entries in reply or ():
            for entry_id, fields in entries:
                self._queue(text(entry_id), fields, 1)

    def _queue(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        key = ordering_key_of(fields)
        self.queues.setdefault(key, deque()).append((entry_id, fields, deliveries))
        self.held += 1
        if key not in self.running:
            self.running[key] = asyncio.create_task(
                self._run_key(key), name=f"actionbus-ordered:{self.stream}")

    async def _run_key(self, key: str) -> None:
        """Handle ``key``'s queued entries one after another."""
        queue = self.queues[key]
        try:
            while queue and self.holding:
                entry_id, fields, deliveries = queue[0]
                await self._handle(entry_id, fields, deliveries)
                queue.popleft()
                self.held -= 1
                self.slot_free.set()
        except Exception:  # never silently: the rest stays pending for the next holder
            logger.exception("ordered actions of key %r in %s stopped", key, self.stream)
            self.holding = False
        finally:
            self.held -= len(queue)  # lease lost: the rest stays pending for the next holder
            queue.clear()
            self.queues.pop(key, None)
            self.running.pop(key, None)
            self.slot_free.set()

    async def _handle(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        """Run one entry until it is acknowledged (in Redis) or parked for a later retry."""
        ordering, processor = self.ordering, self.ordering.processor
        key = entry_key(self.ctx.stream, self.stream, entry_id)
        backoff = Backoff(cap=5.0)
        while self.holding:
            ordering.acked.discard(key)
            processor.claim(key)
            await processor.process(key, fields, deliveries)
            if key in ordering.acked:
                ordering.acked.discard(key)
                landed = Backoff(base=0.001, cap=1.0)  # 1 ms steps, slower in an outage
                while key in ordering.output.unacknowledged() and self.holding:
                    await ordering.output.flush()  # the next one starts once this ack landed
                    if key in ordering.output.unacknowledged():
                        await asyncio.sleep(landed.next_delay())
                return
            # Not acknowledged: parked for a later retry ("skip"), or a Redis error left it
            # pending here; in the latter case run it again before the key's next one.
            try:
                rows: Any = await self.redis.xpending_range(
                    self.stream, self.ctx.group, min=entry_id, max=entry_id, count=1)
            except (RedisError, OSError):
                rows = [{"times_delivered": deliveries}]
            if not rows:
                return
            deliveries += 1  # counts towards max_deliveries, so it cannot loop forever
            await asyncio.sleep(backoff.next_delay())

    async def _upkeep(self) -> None:
        """The holder trims the ordered stream and removes gone consumers from its group."""
        settings = self.ctx.settings
        if settings.stream_retention is not None:
            await safe_trim(self.redis, self.stream, settings.stream_retention)
        await remove_gone_consumers(self.redis, self.stream, self.ctx.group, self.ctx.consumer,
                                    int(settings.consumer_gone_after_s * 1000))

    async def release(self) -> None:
        """Give the lease up (the next holder takes over without waiting for the TTL)."""
        was, self.holding = self.holding, False
        if self._keeper is not None:
            await cancel_and_wait([self._keeper])
            self._keeper = None
        if was:
            with contextlib.suppress(Exception):
                await self._release(keys=[self.lease], args=[self.instance])


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)
