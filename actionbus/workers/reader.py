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

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError, ResponseError

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

LANE_LAGS = """
local found = {}
if tonumber(ARGV[3]) > 0 then
  found = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                     'STREAMS', KEYS[1], '>') or {}
end
local out = {}
for i, key in ipairs(KEYS) do
  local lag = -1
  local groups = redis.pcall('XINFO', 'GROUPS', key)
  if groups.err == nil then
    for _, group in ipairs(groups) do
      local name, value = nil, nil
      for j = 1, #group, 2 do
        if group[j] == 'name' then name = group[j + 1]
        elseif group[j] == 'lag' then value = group[j + 1] end
      end
      if name == ARGV[1] and value then lag = value end
    end
  end
  out[i] = lag
end
return {out, found}
"""
"""After a read of the lanes (``KEYS``, most urgent first): first takes up to ``ARGV[3]``
(0 or 1) entries of the most urgent lane for consumer ``ARGV[2]`` of group ``ARGV[1]``, then
counts how many entries of each lane the group has not read yet (-1 where Redis cannot
tell: no stream or group, entries deleted ahead of the group, Redis before 7.0). Returns
``{counts, entries read}``, the entries as ``READ_LANES`` gives them."""

PLAN_MIN = 16
"""Lane reads of at least this many entries are planned (plain XREADGROUPs) when they can be:
Redis converts each entry a script returns for about 2 µs, 7 times the read itself, where
two commands in one round trip cost the worker a little more than one command; smaller
reads stay one READ_LANES call."""

_BulkPlan = tuple[list[tuple[int, int]], list[tuple[Any, ...]], list[Any]]

Spawn = Callable[[str, str, dict[Any, Any], int], None]
"""``spawn(stream, entry_id, fields, deliveries)``: start handling one entry."""

SpawnRead = Callable[[str, list[Any]], None]
"""``spawn_read(stream, entries)``: start handling the ``(entry_id, fields)`` entries one
read brought (first deliveries), as ``spawn`` would each, in order."""


def script_entries(reply: list[Any]) -> list[Any]:
    """``[(stream, [(entry_id, fields), …]), …]`` of a script's ``[[stream, [[entry_id,
    [field, value, …]], …]], …]``; the usual entry (one ``data`` field) with no slices."""
    return [(stream, [(entry_id, {flat[0]: flat[1]} if len(flat) == 2 else entry_fields(flat))
                      for entry_id, flat in entries])
            for stream, entries in reply]


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
        self._drained = False  # the last lane read left every lane empty
        self._lags: list[int] | None = None
        """Unread entries of each lane right after the last lane read (``LANE_LAGS``); None
        when unknown, or stale (a wait for a slot or a blocking read came after it)."""
        self._full = False  # the last lane read brought all it asked, PLAN_MIN or more
        self._bulk: int | None = None
        """The one lane known to hold entries (the others were found empty by the last read
        or counted empty): reads of ``PLAN_MIN`` or more are ``_read_bulk``. None: unknown,
        or stale (a wait for a slot came after it)."""
        self._bulk_plans: dict[tuple[int, int, int], _BulkPlan] = {}
        self._scripts_loaded = False
        lanes_in_one_slot = len(self.streams) > 1 and len(
            {key_slot(stream.encode()) for stream in self.streams}) == 1
        self._scripts = (redis.register_script(READ_LANES), redis.register_script(LANE_LAGS)
                         ) if lanes_in_one_slot else None
        """Lanes share a hash slot: a script reads them all, another counts what they hold.
        Streams of several slots (only a cluster cares, but any reader may be given them)
        are read one by one."""
        self._pool = redis.connection_pool if isinstance(redis, Redis) and (
            redis.connection is None) else None
        """Where lane read rounds take a connection of their own (``_round``); None: by a
        redis-py pipeline (a cluster, a single-connection client)."""
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
                self._lags = self._bulk = None  # what the lanes held goes stale meanwhile
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
        weights, credits = self._weights, self._credits
        for i, weight in enumerate(weights):
            credits[i] += weight
        chosen = credits.index(max(credits))  # the first of equals
        credits[chosen] -= sum(weights)
        return chosen

    async def _read_lanes(self, count: int) -> Any:
        """Read at most ``count`` entries from the lanes, most urgent first.

        Strict: each lane in order takes what is left. Weighted: first the lane chosen by
        ``_first_lane`` takes its share (at least one), then the lanes in order take the
        rest (that lane included). One round trip (``_read_with_lags``), and the most urgent
        lane is looked at in every read. Nothing in any lane, or the last read emptied them
        all: one blocking read of all lanes, each bringing at most ``count // lanes`` (so a
        read never brings more entries than free slots; it returns at once if entries
        arrived meanwhile, most urgent started first).
        """
        settings, ctx = self.ctx.settings, self.ctx
        if self._bulk is not None and count >= PLAN_MIN:
            return await self._read_bulk(self._bulk, count)
        self._bulk = None
        if not self._drained:
            keys = list(self.streams)
            caps = [count] * len(keys)
            if settings.lane_mode == "weighted":
                first = self._first_lane()
                share = -(-count * self._weights[first] // sum(self._weights))
                keys.insert(0, self.streams[first])  # its share first, then every lane
                caps.insert(0, max(1, share))
            lags = None
            counts = self._lags if count >= PLAN_MIN else None  # a planned read, if any
            if self._scripts is not None:
                found, lags = await self._read_with_lags(*self._scripts, keys, caps, count,
                                                         counts)
            else:
                found = await self._read_one_by_one(keys, caps, count)
            self._lags = lags
            if lags is not None and sum(lag > 0 for lag in lags) == 1:
                self._bulk = next(i for i, lag in enumerate(lags) if lag > 0)
            if found:
                read: list[list[Any]] = [[] for _ in self.streams]
                for stream, entries in found:
                    read[self._lane_of[text(stream)]].append((stream, entries))
                got = sum(self._spawn_all(replies) for replies in read)  # most urgent first
                self._full = got == count >= PLAN_MIN
                # Every lane empty after it; without counts, a script read that brought
                # less than asked (a planned one asks the high lane for one it may not get)
                self._drained = not any(lags) if lags is not None else (
                    got < count and counts is None)
                return True
        self._lags = None
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

    async def _read_bulk(self, bulk: int, count: int) -> bool:
        """A read while one lane (``bulk``) alone is known to hold entries: plain XREADGROUPs,
        no script, no counting (``LANE_LAGS`` costs Redis about 3 XINFO per read).

        Each lane more urgent than ``bulk`` is asked for one entry (so an urgent entry that
        came since the read before is the first of this one, as with a planned read);
        weighted, a less urgent lane is asked for its share when this read starts with it
        (what a planned read would take of a lane holding that many), otherwise nothing, as
        a planned read of a lane counted empty; ``bulk`` for the rest. A lane that brings
        less than asked is empty now. One that brings all it was asked may hold more: the
        next read counts the lanes again (``READ_LANES`` with ``LANE_LAGS``, then planned
        reads). ``bulk`` empty and the others too: the next read blocks.
        """
        first = self._first_lane() if self.ctx.settings.lane_mode == "weighted" else -1
        plan = self._bulk_plans.get((bulk, first, count)) or self._bulk_plan(bulk, first, count)
        self._bulk = None  # until this read shows that it still holds
        replies = await self._round(plan[1], plan[2])
        found: list[Any] = []
        full: list[int] = []  # lanes that brought all they were asked: may hold more
        for (lane, ask), reply in zip(plan[0], replies, strict=True):
            if isinstance(reply, Exception):
                self.recover_now.set()  # the reads before it may have delivered entries
                raise reply
            if reply:
                found.append(reply[0])
                if len(reply[0][1]) == ask:
                    full.append(lane)
        self._spawn_all(found)
        if full == [bulk]:
            self._bulk = bulk
        self._lags = None
        self._full = bool(full)
        self._drained = not full
        return bool(found)

    def _bulk_plan(
        self, bulk: int, first: int, count: int
    ) -> _BulkPlan:
        """``_read_bulk``'s ``(lane, entries asked)``, most urgent first, its commands and
        where their bytes are kept once packed; kept per ``(bulk, first, count)``."""
        asks: list[tuple[int, int]] = []
        for lane in range(len(self.streams)):
            if lane < bulk:
                asks.append((lane, 1))
            elif lane > bulk and lane == first:
                share = -(-count * self._weights[first] // sum(self._weights))
                asks.append((lane, max(1, share)))
        asks.append((bulk, count - sum(ask for _, ask in asks)))
        asks.sort()  # most urgent first: the entries start in that order
        group, consumer = self.ctx.group, self.ctx.consumer
        plan: _BulkPlan = (asks, [("XREADGROUP", "GROUP", group, consumer, "COUNT", ask, "STREAMS",
                        self.streams[lane], ">") for lane, ask in asks], [])
        if len(self._bulk_plans) >= 64:
            self._bulk_plans.clear()
        self._bulk_plans[bulk, first, count] = plan
        return plan

    async def _read_with_lags(
        self, read_script: AsyncScript, lags_script: AsyncScript, keys: list[str],
        caps: list[int], count: int, counts: list[int] | None,
    ) -> tuple[list[Any], list[int] | None]:
        """One pipeline: the lanes' entries, then ``LANE_LAGS`` (what each lane still holds).

        With ``counts`` (what the lanes held right after the read before, for a read of
        ``PLAN_MIN`` or more): one plain XREADGROUP per lane that gives any, each asked for
        what ``READ_LANES`` would take of lanes holding that many; the high lane, found
        empty then, is still asked for one entry (by ``LANE_LAGS``), so an urgent entry
        that came since is not skipped. Without: ``READ_LANES`` reads them all in Redis,
        with ``LANE_LAGS`` only after a read that brought all it asked, ``PLAN_MIN`` or
        more (other reads stay one command: no counts, none needed).
        """
        group, consumer = self.ctx.group, self.ctx.consumer
        if counts is None and not self._full:
            return script_entries(await read_script(
                keys=keys, args=[group, consumer, count, *caps])), None
        if not self._scripts_loaded:
            for script in (read_script, lags_script):
                await self.redis.script_load(script.script)
            self._scripts_loaded = True
        commands: list[tuple[Any, ...]] = []
        probe = 0
        if counts is not None:
            takes = dict(self._plan(keys, caps, count, counts))
            if counts[0] == 0:  # found empty: its one entry is read by the script
                probe = takes.pop(self.streams[0], 0)
            commands.extend(("XREADGROUP", "GROUP", group, consumer, "COUNT", take,
                             "STREAMS", stream, ">") for stream, take in takes.items())
        else:
            commands.append(
                ("EVALSHA", read_script.sha, len(keys), *keys, group, consumer, count, *caps))
        commands.append(("EVALSHA", lags_script.sha, len(self.streams), *self.streams, group,
                         consumer, probe))
        *replies, counted = await self._round(commands)
        for reply in [*replies, counted]:
            if isinstance(reply, NoScriptError):  # Redis lost its scripts: load them again
                self._scripts_loaded = False
            elif isinstance(reply, Exception):
                self.recover_now.set()  # the reads before it may have delivered entries
                raise reply
        found: list[Any] = []
        for reply in replies:
            if counts is not None:
                found.extend(reply or ())
            elif not isinstance(reply, NoScriptError):
                found.extend(script_entries(reply))
        if isinstance(counted, NoScriptError):
            return found, None
        lags, probed = counted
        found.extend(script_entries(probed))
        return found, ([int(lag) for lag in lags] if min(lags) >= 0 else None)

    async def _round(
        self, commands: list[tuple[Any, ...]], packed: list[Any] | None = None
    ) -> list[Any]:
        """``commands``' replies, in one round trip; an error reply is its exception in place
        (as a pipeline's ``execute(raise_on_error=False)`` gives it), an XREADGROUP reply
        parsed by the client's callback for it.

        On a plain client (not a cluster, not a single-connection client) the commands are
        written on one of its pool's connections and their replies read back there
        (redis-py's public ``pack_commands``/``send_packed_command``/``read_response``):
        redis-py's ``Pipeline`` costs the worker about 0.2M instructions more per round, 2
        µs per action of a read of 100 (callgrind). A failure on the connection drops it
        (no retry: the reader backs off and recovers what the round may have delivered).
        ``packed``: where these commands' bytes are kept once packed (the same for every
        connection of the pool), for a round sent again and again.
        """
        redis, pool = self.redis, self._pool
        if pool is None:
            pipe = redis.pipeline(transaction=False)
            for command in commands:  # not pipe.evalsha: blocked on a cluster's pipelines
                pipe.execute_command(*command)
            return await pipe.execute(raise_on_error=False)
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:  # a failed or cancelled write or read drops the connection (redis-py does)
            if packed is None:
                await conn.send_packed_command(conn.pack_commands(commands))
            else:
                if not packed:
                    packed.append(conn.pack_commands(commands))
                await conn.send_packed_command(packed[0])
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # the reply was read: the connection is in sync
                    replies.append(exc)
        finally:
            await pool.release(conn)
        parse = redis.response_callbacks.get("XREADGROUP")
        if parse is not None:
            for i, command in enumerate(commands):
                if command[0] == "XREADGROUP" and not isinstance(replies[i], Exception):
                    replies[i] = parse(replies[i])
        return replies

    def _plan(
        self, keys: list[str], caps: list[int], count: int, lags: list[int]
    ) -> list[tuple[str, int]]:
        """``READ_LANES``'s takes (``keys``, ``caps``, ``count``) from lanes holding ``lags``
        entries, the high lane counted as holding at least one; lanes taking none left out."""
        unread = dict(zip(self.streams, lags, strict=True))
        unread[self.streams[0]] = max(1, unread[self.streams[0]])
        takes = dict.fromkeys(self.streams, 0)
        left = count
        for key, cap in zip(keys, caps, strict=True):
            take = min(left, cap, unread[key] - takes[key])
            takes[key] += take
            left -= take
        return [(stream, take) for stream, take in takes.items() if take > 0]

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
