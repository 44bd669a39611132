"""The read loop: new entries, our own lost deliveries and abandoned entries, into tasks.

``StreamReader`` reads a list of streams of one consumer group (one stream today; priority
lanes and partitions will add more) and hands every entry to ``spawn`` while the worker
has free slots. It never handles an action itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from actionbus.backoff import Backoff, OutageLog
from actionbus.connection import AnyRedis
from actionbus.streams import ensure_group, entry_fields, is_nogroup, text
from actionbus.workers.context import WorkerContext
from actionbus.workers.failures import is_transient
from actionbus.workers.health import Health, SlowCommands
from actionbus.workers.reclaim import claim_abandoned, claim_own_pending
from actionbus.workers.stats import WorkerStats

__all__ = ["Spawn", "SpawnRead", "StreamReader", "spread"]

logger = logging.getLogger("actionbus.worker")

READ_LANES = """
local left = tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  if left <= 0 then break end
  local want = math.min(left, tonumber(ARGV[3 + i]))
  local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want,
                           'STREAMS', key, '>')
  if reply then
    local entries = reply[1][2]
    left = left - #entries
    out[#out + 1] = {key, entries}
  end
end
return out
"""
"""One read of the lanes in one round trip: ``KEYS`` in read order (a lane may come twice),
``ARGV`` = group, consumer, how many entries at most, then each key's own cap. Each lane
takes what is left, so the read never brings more than asked, and the most urgent lane is
looked at in every read (the lanes share a hash slot, so this also runs on a cluster)."""

Spawn = Callable[[str, str, dict[Any, Any], int], None]
"""``spawn(stream, entry_id, fields, deliveries)``: start handling one entry."""

SpawnRead = Callable[[str, list[Any]], None]
"""``spawn_read(stream, entries)``: start handling the ``(entry_id, fields)`` entries one
read brought (first deliveries), as ``spawn`` would each, in order."""


def spread(consumer: str) -> float:
    """A fraction in [0, 1) fixed per consumer name: offsets the first reclaim of each
    worker so workers started together do not reclaim in lockstep."""
    return zlib.crc32(consumer.encode()) / 2**32


class StreamReader:
    """Feeds entries of ``streams`` to ``spawn`` as long as slots are free.

    Two loops: ``run()`` only reads; ``run_recovery()`` re-takes this consumer's lost
    deliveries and reclaims abandoned entries beside it, so reading never waits on them.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        redis: AnyRedis,
        streams: Sequence[str],
        *,
        spawn: Spawn,
        in_flight: Callable[[], int],
        owned: Callable[[], set[str]],
        unacknowledged: Callable[[], set[str]],
        stats: WorkerStats,
        outage: OutageLog,
        after_batch: Callable[[], None] = lambda: None,
        slow: SlowCommands | None = None,
        health: Health | None = None,
        read_limit: Callable[[], int] = lambda: 0,
        spawn_read: SpawnRead | None = None,
    ) -> None:
        self.ctx = ctx
        self.read_limit = read_limit
        """Entries one read may bring (0: no limit beyond ``batch_size``); lowered by the
        processor once large entries are seen, so one read stays within its byte budget."""
        self.redis = redis
        self.streams = tuple(streams)
        self.spawn = spawn
        self.spawn_read = spawn_read or self._spawn_each
        self.in_flight = in_flight
        self.owned = owned
        self.unacknowledged = unacknowledged
        self.stats = stats
        self.outage = outage
        self.after_batch = after_batch
        self.slow = slow or SlowCommands(None, 5.0)
        self.health = health
        self.slot_free = asyncio.Event()
        """Set by the worker when an entry finishes while ``waiting_for_slot``."""
        self.waiting_for_slot = False
        self.recover_now = asyncio.Event()
        """Set after a read that may have lost entries: recovery runs at once."""
        self.recover_now.set()  # at start, our own pending entries are taken back first
        self._reading = asyncio.Lock()  # a read in flight and "recover own" never overlap
        self._credits = [0] * len(self.streams)  # weighted lanes: smooth round robin
        self._lane_of = {stream: i for i, stream in enumerate(self.streams)}
        self._drained = False  # the last lane read brought less than asked: lanes empty
        lanes_in_one_slot = len(self.streams) > 1 and len(
            {key_slot(stream.encode()) for stream in self.streams}) == 1
        self._read_script = redis.register_script(READ_LANES) if lanes_in_one_slot else None
        """Lanes share a hash slot: one script reads them all. Streams of several slots
        (only a cluster cares, but any reader may be given them) are read one by one."""
        weights = tuple(ctx.settings.lane_weights)
        self._weights = (weights + (1,) * len(self.streams))[:len(self.streams)]

    def free(self) -> int:
        """Slots free for new entries."""
        return self.ctx.settings.concurrency - self.in_flight()

    async def run(self, stopping: asyncio.Event) -> None:
        """Read until ``stopping`` is set (or the task is cancelled)."""
        settings = self.ctx.settings
        backoff = Backoff(cap=2.0)
        offsets = dict.fromkeys(self.streams, ">")
        block = settings.block_ms / 1000
        while not stopping.is_set():
            free = self.free()
            if free <= 0:
                self.slot_free.clear()
                self.waiting_for_slot = True
                try:
                    await self.slot_free.wait()
                finally:
                    self.waiting_for_slot = False
                continue
            try:
                started = time.monotonic()
                count = min(free, self.read_limit() or settings.batch_size)
                async with self._reading:
                    if len(self.streams) > 1:
                        reply: Any = await self._read_lanes(count)
                    else:
                        reply = await self.redis.xreadgroup(
                            self.ctx.group, self.ctx.consumer, offsets,  # type: ignore[arg-type]
                            count=count, block=settings.block_ms,
                        )
                        self._spawn_all(reply)
                took = time.monotonic() - started
                if took > block + 1.0:
                    # Far longer than a block: the connection hung and redis-py retried the
                    # read on a new one. The lost read may have delivered entries to us.
                    self.recover_now.set()
                self.slow.check("XREADGROUP", took - block)
                self.outage.success()
                backoff.reset()
            except ResponseError as exc:
                if is_nogroup(exc):
                    if not await self.recreate_groups():  # not recreated: back off, no spin
                        await asyncio.sleep(backoff.next_delay())
                    continue
                if not is_transient(exc):
                    self._refused("XREADGROUP", exc)
                else:
                    self.outage.failure(exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            except (RedisError, OSError) as exc:
                self.outage.failure(exc)
                self.recover_now.set()
                await asyncio.sleep(backoff.next_delay())
                continue
            if reply:  # let the new tasks run (and send their replies) before the next read
                await asyncio.sleep(0)
            self.after_batch()

    def _spawn_all(self, reply: Any) -> int:
        spawned = 0
        spawn_read = self.spawn_read
        for stream, entries in reply or ():
            spawn_read(text(stream), entries)
            spawned += len(entries)
        return spawned

    def _spawn_each(self, stream: str, entries: list[Any]) -> None:
        spawn = self.spawn
        for entry_id, fields in entries:
            spawn(stream, entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
                  fields, 1)

    def _first_lane(self) -> int:
        """Weighted mode: the lane this read starts with, by smooth weighted round robin
        over ``lane_weights`` (of every 10 reads with the default 6/3/1: 6 start with
        high, 3 with normal, 1 with low)."""
        weights = self._weights
        for i, weight in enumerate(weights):
            self._credits[i] += weight
        chosen = max(range(len(weights)), key=lambda i: self._credits[i])
        self._credits[chosen] -= sum(weights)
        return chosen

    async def _read_lanes(self, count: int) -> Any:
        """Read at most ``count`` entries from the lanes, most urgent first.

        Strict: each lane in order takes what is left. Weighted: first the lane chosen by
        ``_first_lane`` takes its share (at least one), then the lanes in order take the
        rest (that lane included). All of it is one script call (``READ_LANES``): one round
        trip, and the most urgent lane is looked at in every read. Nothing in any lane, or
        the last read emptied them all: one blocking read of all lanes, each bringing at
        most ``count // lanes`` (so a read never brings more entries than free slots; it
        returns at once if entries arrived meanwhile, most urgent started first).
        """
        settings, ctx = self.ctx.settings, self.ctx
        if not self._drained:
            keys = list(self.streams)
            caps = [count] * len(keys)
            if settings.lane_mode == "weighted":
                first = self._first_lane()
                share = -(-count * self._weights[first] // sum(self._weights))
                keys.insert(0, self.streams[first])  # its share first, then every lane
                caps.insert(0, max(1, share))
            if self._read_script is not None:
                found: Any = [  # one "data" field (the usual entry): no slices, no zip
                    (stream, [(entry_id,
                               {flat[0]: flat[1]} if len(flat) == 2 else entry_fields(flat))
                              for entry_id, flat in entries])
                    for stream, entries in await self._read_script(
                        keys=keys, args=[ctx.group, ctx.consumer, count, *caps])]
            else:
                found = await self._read_one_by_one(keys, caps, count)
            if found:
                read: list[list[Any]] = [[] for _ in self.streams]
                for stream, entries in found:
                    read[self._lane_of[text(stream)]].append((stream, entries))
                got = sum(self._spawn_all(replies) for replies in read)  # most urgent first
                self._drained = got < count  # every lane gave less than it could: empty
                return True
        room = {stream: ">" for stream in self.streams[:count]}
        each = count // len(room)  # the lanes together never bring more than count
        reply: Any = await self.redis.xreadgroup(
            ctx.group, ctx.consumer, room, count=each,  # type: ignore[arg-type]
            block=settings.block_ms)
        # Woken with less than each lane could give: empty (the next read blocks at once
        # again); a read that timed out is followed by a script read of every lane.
        woken: list[Any] = [entries for _, entries in reply or ()]
        self._drained = bool(woken) and all(len(entries) < each for entries in woken)
        return self._spawn_all(reply) > 0

    async def _read_one_by_one(self, keys: list[str], caps: list[int], count: int) -> Any:
        """``READ_LANES`` done with one XREADGROUP per stream (streams of several slots)."""
        found: list[Any] = []
        for key, cap in zip(keys, caps, strict=True):
            if count <= 0:
                break
            reply: Any = await self.redis.xreadgroup(
                self.ctx.group, self.ctx.consumer, {key: ">"}, count=min(count, cap))
            for stream, entries in reply or ():
                count -= len(entries)
                found.append((stream, entries))
        return found

    async def run_recovery(self, stopping: asyncio.Event) -> None:
        """Beside ``run()``: take back our lost deliveries, reclaim abandoned entries.

        Runs at start, after a failed or hung read, and every ``reclaim_interval_s`` *
        uniform(0.5, 1.5); the first reclaim is offset by a hash of the consumer name.
        """
        interval = self.ctx.settings.reclaim_interval_s
        backoff = Backoff(cap=2.0)
        next_reclaim = time.monotonic() + interval * spread(self.ctx.consumer)
        while not stopping.is_set():
            delay = max(0.0, next_reclaim - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.recover_now.wait(), delay)
            recover = self.recover_now.is_set()
            self.recover_now.clear()
            if self.free() <= 0:
                next_reclaim = max(next_reclaim, time.monotonic() + min(interval, 0.5))
                if recover:
                    self.recover_now.set()
                    await asyncio.sleep(min(interval, 0.5))
                continue
            try:
                started = time.monotonic()
                async with self._reading:
                    await self.recover_own(self.free())
                if time.monotonic() >= next_reclaim:
                    next_reclaim = time.monotonic() + interval * random.uniform(0.5, 1.5)
                    await self.reclaim(self.free())
                self.slow.check("recovery (XPENDING/XCLAIM)", time.monotonic() - started)
                backoff.reset()
            except ResponseError as exc:
                if is_nogroup(exc):
                    await self.recreate_groups()
                elif not is_transient(exc):
                    self._refused("XPENDING/XCLAIM", exc)
                await asyncio.sleep(backoff.next_delay())
                self.recover_now.set()
            except (RedisError, OSError) as exc:
                self.outage.failure(exc)
                await asyncio.sleep(backoff.next_delay())
                self.recover_now.set()

    def _refused(self, what: str, exc: BaseException) -> None:
        """Redis refused a read-side command (e.g. NOPERM): log once, mark unhealthy."""
        operation = f"{what} {', '.join(self.streams)}"
        if self.health is not None:
            self.health.refused(operation, exc)
        else:
            logger.error("%s failed: %s", operation, exc)

    async def recreate_groups(self) -> bool:
        """Recreate missing consumer groups (Redis restarted empty, or a stream was deleted);
        ``False`` if Redis could not be reached for one of them (the caller backs off)."""
        done = True
        for stream in self.streams:
            try:
                if await ensure_group(self.redis, stream, self.ctx.group):
                    logger.warning(
                        "consumer group %s on %s was missing (Redis restarted empty or the "
                        "stream was deleted); recreated it", self.ctx.group, stream,
                    )
            except (RedisError, OSError) as exc:
                self.outage.failure(exc)
                done = False
        return done

    async def recover_own(self, free: int) -> None:
        """Re-take entries a lost read delivered to this consumer."""
        for stream in self.streams:
            if free <= 0:
                return
            claimed = await claim_own_pending(
                self.redis, stream, self.ctx.group, self.ctx.consumer, count=free,
                skip=self._skip(stream, self.owned() | self.unacknowledged()),
            )
            for entry in claimed:
                logger.info("resuming %s, delivered to this consumer by a lost read",
                            entry.entry_id)
                self.spawn(stream, entry.entry_id, entry.fields, entry.deliveries)
            free -= len(claimed)

    def _skip(self, stream: str, keys: set[str]) -> set[str]:
        """The entry ids of ``stream`` among entry keys (lane entries are "<stream> <id>")."""
        if len(self.streams) == 1:
            return keys
        ids = set()
        for key in keys:
            key_stream, entry_id = self.ctx.split(key)
            if key_stream == stream:
                ids.add(entry_id)
        return ids

    async def reclaim(self, free: int) -> None:
        """Take over entries other consumers abandoned."""
        for stream in self.streams:
            if free <= 0:
                return
            claimed = await claim_abandoned(
                self.redis, stream, self.ctx.group, self.ctx.consumer,
                min_idle_ms=self.ctx.settings.claim_idle_ms, count=free,
                skip=self._skip(stream, self.owned()),
            )
            for entry in claimed:
                self.stats.reclaimed += 1
                logger.info(
                    "reclaimed %s from %s (delivery %d)",
                    entry.entry_id, entry.previous_consumer, entry.deliveries,
                )
                self.spawn(stream, entry.entry_id, entry.fields, entry.deliveries)
            free -= len(claimed)
