"""Partitioned services on the worker side: read every partition, each with the same care.

A worker of a service with ``partitions=N`` (``CommonAppSettings.partitions``) reads
partitions ``0 .. N-1`` and any higher partition that still holds something (entries in its
stream or ordered stream, or delayed actions): left by a larger ``N`` before a switch, or
written by a sender configured with more partitions. Nothing sent is left unread; such a
partition is logged when found. Partition 0 is the service's main stream, read by the
worker's own reader; each other partition gets its own ``StreamReader`` (reads and
recovery: own lost deliveries and abandoned entries), its own mover of its delayed set
(retries come back to their partition) and its own trimming and consumer cleanup. On
Redis Cluster a read names one stream (the partitions are in different slots): one
blocking read per partition.

Slots: partition ``k`` >= 1 reads at most ``ceil(concurrency / partitions read)`` entries
beyond those it has in flight, and never more than the worker's free slots.

The workers keep ``QueueManager.get_partitions_key`` = ``N`` alive (TTL ``lanes_ttl_s``), so
senders follow the count the workers read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import RedisError

from actionbus.backoff import OutageLog
from actionbus.clients.queue_manager import QueueManager
from actionbus.connection import AnyRedis
from actionbus.partitions import MAX_PARTITIONS
from actionbus.streams import ensure_group
from actionbus.workers.context import WorkerContext
from actionbus.workers.health import Health, SlowCommands
from actionbus.workers.mover import Mover
from actionbus.workers.output import OutputBatcher
from actionbus.workers.processing import ActionProcessor
from actionbus.workers.reader import Spawn, SpawnRead, StreamReader
from actionbus.workers.stats import WorkerStats
from actionbus.workers.upkeep import maintain

__all__ = ["Partitions", "probe"]

logger = logging.getLogger("actionbus.worker")

_PROBE = """
local found = {}
for i = 1, #KEYS, 3 do
  if redis.call('XLEN', KEYS[i]) > 0 or redis.call('XLEN', KEYS[i + 1]) > 0
      or #redis.call('ZRANGE', KEYS[i + 2], 0, 0) > 0 then
    found[#found + 1] = (i - 1) / 3
  end
end
return found
"""
"""``KEYS``: each partition's stream, ordered stream and delayed set, in turn; returns the
positions (0 = the first partition asked) of those holding anything."""

Supervised = Callable[[str, Callable[[], Coroutine[Any, Any, None]]], "asyncio.Task[None]"]


async def probe(redis: AnyRedis, queues: QueueManager, service: str, first: int) -> list[int]:
    """Partitions ``first .. MAX_PARTITIONS-1`` of ``service`` that hold anything: stream or
    ordered-stream entries, or delayed actions (one script: XLEN/ZRANGE of every key inside
    Redis, only the numbers come back)."""
    found = []
    if isinstance(redis, RedisCluster):
        # Plain commands, not a cluster pipeline: redis-py answers a connection error in a
        # cluster pipeline by closing every node's connections (see clients/sender.py).
        for k in range(max(1, first), MAX_PARTITIONS):
            if any(await asyncio.gather(
                    redis.xlen(queues.get_partition_stream(service, k)),
                    redis.xlen(queues.get_ordered_stream(service, k)),
                    redis.zrange(queues.get_delayed_set(service, partition=k), 0, 0))):
                found.append(k)
        return found
    keys = [key for k in range(max(1, first), MAX_PARTITIONS) for key in (
        queues.get_partition_stream(service, k), queues.get_ordered_stream(service, k),
        queues.get_delayed_set(service, partition=k))]
    if keys:
        holding: list[Any] = await redis.register_script(_PROBE)(keys=keys)
        found += [max(1, first) + int(i) for i in holding]
    return found


def _ids_of(stream: str, keys: set[str]) -> set[str]:
    """The entry ids of ``stream`` among a worker's entry keys (``"<stream> <id>"``)."""
    prefix = f"{stream} "
    return {key[len(prefix):] for key in keys if key.startswith(prefix)}


class Partitions:
    """Reads partitions ``1 ..`` of a worker's service beside its main reader."""

    def __init__(
        self,
        ctx: WorkerContext,
        redis: AnyRedis,
        count: int,
        *,
        spawn: Spawn,
        spawn_read: SpawnRead | None = None,
        in_flight: Callable[[], int],
        supervised: Supervised,
        stopping: asyncio.Event,
        stats: WorkerStats,
        outage: OutageLog,
        health: Health,
        slow: SlowCommands,
    ) -> None:
        self.ctx = ctx
        self.redis = redis
        self.count = count
        self.spawn = spawn
        self.spawn_read = spawn_read
        self.in_flight = in_flight
        self.supervised = supervised
        self.stopping = stopping
        self.stats = stats
        self.outage = outage
        self.health = health
        self.slow = slow
        self.read: dict[int, str] = {0: ctx.stream}
        """Partition number -> stream, of every partition this worker reads."""
        self.readers: list[StreamReader] = []
        self.tasks: list[asyncio.Task[None]] = []
        """Loops started for the partitions (cancelled by the worker's ``stop()``)."""
        self.on_added: list[Callable[[int], None]] = []
        """Called with each partition number once it is read (ordered consumers hook here)."""
        self._processor: ActionProcessor | None = None
        self._output: OutputBatcher | None = None

    @property
    def key(self) -> str:
        """The descriptor the workers keep alive: the partition count they read."""
        return self.ctx.queues.get_partitions_key(self.ctx.service)

    async def prepare(self) -> list[int]:
        """At start: the partitions to read (``1 .. count-1`` and any higher one holding
        something); their consumer groups exist afterwards. Returns their numbers."""
        wanted = list(range(1, self.count))
        try:
            wanted += await probe(self.redis, self.ctx.queues, self.ctx.service, self.count)
        except (RedisError, OSError) as exc:  # found later, by the periodic probe
            logger.warning("could not look for leftover partitions of %s: %s",
                           self.ctx.service, exc)
        for k in wanted:
            await ensure_group(self.redis, self._stream(k), self.ctx.group)
        try:
            await self.announce()
        except (RedisError, OSError) as exc:  # e.g. OOM: start anyway (the loop retries)
            logger.warning("could not announce the partitions of %s yet: %s",
                           self.ctx.service, exc)
        return wanted

    def _stream(self, k: int) -> str:
        return self.ctx.queues.get_partition_stream(self.ctx.service, k)

    async def announce(self) -> None:
        """Keep the partitions descriptor alive (senders follow it)."""
        await self.redis.set(self.key, str(self.count), ex=self.ctx.settings.lanes_ttl_s)

    def start(self, partitions: list[int], processor: ActionProcessor,
              output: OutputBatcher) -> None:
        """Start reading ``partitions`` (from ``prepare``) and the upkeep loop."""
        self._processor, self._output = processor, output
        for k in partitions:
            self._add(k)
        self.tasks.append(self.supervised("partitions", self.run))

    def _share(self) -> int:
        return -(-self.ctx.settings.concurrency // len(self.read))

    def _add(self, k: int) -> None:
        """Read partition ``k``: its reader, recovery and mover loops."""
        if k in self.read:
            return
        processor, output = self._processor, self._output
        assert processor is not None
        assert output is not None
        stream = self.read[k] = self._stream(k)
        concurrency = self.ctx.settings.concurrency
        ctx = dataclasses.replace(self.ctx, stream=stream, lanes=())

        def in_flight() -> int:  # free = min(worker's free slots, share - own in flight)
            own = len(_ids_of(stream, processor.owned))
            return max(self.in_flight(), concurrency - self._share() + own)

        reader = StreamReader(
            ctx, self.redis, [stream], spawn=self.spawn, in_flight=in_flight,
            owned=lambda: _ids_of(stream, processor.owned),
            unacknowledged=lambda: _ids_of(stream, output.unacknowledged()),
            stats=self.stats, outage=self.outage, slow=self.slow, health=self.health,
            read_limit=lambda: processor.read_limit, spawn_read=self.spawn_read,
        )
        self.readers.append(reader)
        mover = Mover(self.ctx, self.redis, outage=self.outage, partition=k)
        stopping = self.stopping
        self.tasks += [
            self.supervised(f"read p{k}", lambda: reader.run(stopping)),
            self.supervised(f"recovery p{k}", lambda: reader.run_recovery(stopping)),
            self.supervised(f"mover p{k}", mover.run),
        ]
        for hook in self.on_added:
            hook(k)

    def slot_freed(self) -> None:
        """A worker slot was freed: wake the readers waiting for one."""
        for reader in self.readers:
            if reader.waiting_for_slot:
                reader.slot_free.set()

    async def run(self) -> None:
        """Announce the count; every maintenance interval, look for partitions holding
        something that are not read yet, and trim and clean up partitions ``1 ..``."""
        settings = self.ctx.settings
        beat = min(settings.lanes_ttl_s / 3, settings.maintenance_interval_s)
        next_maintenance = time.monotonic() + settings.maintenance_interval_s
        while True:
            try:
                await self.announce()
                if time.monotonic() >= next_maintenance:
                    next_maintenance = time.monotonic() + settings.maintenance_interval_s
                    await self._maintain()
            except (RedisError, OSError) as exc:
                self.outage.failure(exc)
            await asyncio.sleep(beat)

    async def _maintain(self) -> None:
        found = await probe(self.redis, self.ctx.queues, self.ctx.service, self.count)
        for k in found:
            if k not in self.read:
                logger.warning(
                    "service %s: partition %d holds actions but partitions=%d; reading it "
                    "until the worker stops (a sender may use another partition count: "
                    "check settings.partitions)", self.ctx.service, k, self.count)
                await ensure_group(self.redis, self._stream(k), self.ctx.group)
                self._add(k)
        for k, stream in list(self.read.items()):
            if k:
                await maintain(self.redis, dataclasses.replace(self.ctx, stream=stream,
                                                               lanes=()))
