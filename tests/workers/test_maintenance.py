"""Upkeep of a worker: safe trimming, gone consumers, eviction warnings, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest
from redis.asyncio import Redis

import actionbus.workers.upkeep as upkeep
from actionbus import BaseRedisClient, BaseWorker, CommonAppSettings, DomainAction, WorkerSettings
from actionbus.embedded import RedisServer
from actionbus.workers.maintenance import (
    check_eviction_policy,
    remove_gone_consumers,
    safe_trim,
    safe_trim_id,
    trim_around_pending,
)
from actionbus.workers.upkeep import maintain, trim
from tests.workers.helpers import QM, drained, noop

pytestmark = pytest.mark.backends

STREAM = "actionbus:dev:{upkeep}:streams:main"


def _settings(url: str, service: str = "upkeep") -> CommonAppSettings:
    return CommonAppSettings(service_name=service, redis_url=url)


async def _fill(redis: Redis, n: int) -> list[str]:
    payload = DomainAction(action_type="upkeep.x.y").model_dump_json()
    return [(await redis.xadd(STREAM, {"data": payload})).decode() for _ in range(n)]


async def test_trim_keeps_pending_and_undelivered_entries(redis_client: Redis) -> None:
    """safe_trim removes only entries every group has received and acknowledged."""
    ids = await _fill(redis_client, 10)
    await redis_client.xgroup_create(STREAM, "g", id="0")
    await redis_client.xreadgroup("g", "c", {STREAM: ">"}, count=6)  # 6 delivered, 4 not
    await redis_client.xack(STREAM, "g", *ids[:2], *ids[3:6])  # ids[2] stays pending
    removed = await safe_trim(redis_client, STREAM, retention=1)
    left = [e[0].decode() for e in await redis_client.xrange(STREAM)]
    assert removed == 2
    assert left == ids[2:]


async def test_trim_respects_the_slowest_group(redis_client: Redis) -> None:
    """With two groups, nothing the slower group has not received is trimmed."""
    ids = await _fill(redis_client, 5)
    await redis_client.xgroup_create(STREAM, "fast", id="0")
    await redis_client.xgroup_create(STREAM, "slow", id=ids[1])
    await redis_client.xreadgroup("fast", "c", {STREAM: ">"})
    await redis_client.xack(STREAM, "fast", *ids)
    assert await safe_trim_id(redis_client, STREAM) == ids[1].split("-")[0] + "-" + str(
        int(ids[1].split("-")[1]) + 1
    )
    await safe_trim(redis_client, STREAM, retention=1)
    assert [e[0].decode() for e in await redis_client.xrange(STREAM)] == ids[2:]


async def test_safe_trim_id_compares_entry_ids_as_numbers(redis_client: Redis) -> None:
    """The oldest id still needed is found by number, not by text: with group a needing
    9-1 and group b needing 10-1 (as text "10-1" < "9-1"), it is 9-1."""
    for ms in (8, 9, 10):
        await redis_client.xadd(STREAM, {"data": "x"}, id=f"{ms}-0")
    await redis_client.xgroup_create(STREAM, "a", id="9-0")
    await redis_client.xgroup_create(STREAM, "b", id="10-0")
    assert await safe_trim_id(redis_client, STREAM) == "9-1"


async def test_trim_does_nothing_below_retention(redis_client: Redis) -> None:
    """A stream at or under its retention is left alone."""
    ids = await _fill(redis_client, 3)
    await redis_client.xgroup_create(STREAM, "g", id="0")
    await redis_client.xreadgroup("g", "c", {STREAM: ">"})
    await redis_client.xack(STREAM, "g", *ids)
    assert await safe_trim(redis_client, STREAM, retention=3) == 0
    assert await redis_client.xlen(STREAM) == 3


async def _stuck(redis: Redis, n: int, pending: tuple[int, ...], delivered: int) -> list[str]:
    """``n`` entries; group g delivered the first ``delivered``, all acknowledged but
    ``pending`` (indexes)."""
    ids = await _fill(redis, n)
    await redis.xgroup_create(STREAM, "g", id="0")
    await redis.xreadgroup("g", "c", {STREAM: ">"}, count=delivered)
    await redis.xack(STREAM, "g", *[i for k, i in enumerate(ids[:delivered]) if k not in pending])
    return ids


async def _left(redis: Redis) -> list[str]:
    return [e[0].decode() for e in await redis.xrange(STREAM)]


async def test_trim_around_pending_deletes_the_oldest_processed_entries_up_to_the_excess(
    redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Past a stuck pending entry, exactly ``len - retention`` processed entries go, the
    oldest first, with a warning naming the stream, the stuck id and the count."""
    ids = await _stuck(redis_client, 12, pending=(0, 4), delivered=10)
    with caplog.at_level(logging.WARNING, logger="actionbus.worker"):
        removed = await trim_around_pending(redis_client, STREAM, 6, stuck_after_ms=0)
    assert removed == 6
    assert await _left(redis_client) == [ids[0], ids[4], ids[8], ids[9], ids[10], ids[11]]
    assert f"trimming {STREAM} was blocked by entries pending since {ids[0]}: deleted 6 " \
        in caplog.text


async def test_trim_around_pending_keeps_pending_and_undelivered_entries(
    redis_client: Redis,
) -> None:
    """However far over retention, pending entries and entries not yet delivered stay."""
    ids = await _stuck(redis_client, 12, pending=(0, 4), delivered=10)
    assert await trim_around_pending(redis_client, STREAM, 1, stuck_after_ms=0) == 8
    assert await _left(redis_client) == [ids[0], ids[4], ids[10], ids[11]]


async def test_trim_around_pending_deletes_at_most_max_delete(redis_client: Redis) -> None:
    """One call deletes no more than ``max_delete`` entries, the oldest processed ones."""
    ids = await _stuck(redis_client, 12, pending=(0,), delivered=12)
    assert await trim_around_pending(
        redis_client, STREAM, 1, stuck_after_ms=0, max_delete=2) == 2
    assert await _left(redis_client) == [ids[0], *ids[3:]]


async def test_trim_around_pending_waits_until_the_entry_is_stuck(redis_client: Redis) -> None:
    """An oldest pending entry younger than ``stuck_after_ms`` (by its id) blocks nothing."""
    ids = await _stuck(redis_client, 12, pending=(0,), delivered=12)
    assert await trim_around_pending(redis_client, STREAM, 1, stuck_after_ms=600_000) == 0
    assert await _left(redis_client) == ids


async def test_trim_around_pending_does_nothing_at_retention(redis_client: Redis) -> None:
    """A stream at exactly its retention is left alone, even with a stuck entry."""
    ids = await _stuck(redis_client, 6, pending=(0,), delivered=6)
    assert await trim_around_pending(redis_client, STREAM, 6, stuck_after_ms=0) == 0
    assert await _left(redis_client) == ids


async def test_trim_around_pending_deletes_one_entry_one_over_retention(
    redis_client: Redis,
) -> None:
    """A stream one entry over its retention, past a stuck entry, loses exactly one
    processed entry (the oldest)."""
    ids = await _stuck(redis_client, 7, pending=(0,), delivered=7)
    assert await trim_around_pending(redis_client, STREAM, 6, stuck_after_ms=0) == 1
    assert await _left(redis_client) == [ids[0], *ids[2:]]


async def test_trim_around_pending_finds_the_oldest_pending_entry_by_id_not_by_text(
    redis_client: Redis,
) -> None:
    """Entry ids compare as numbers: with pending entries 9-1 (group a) and 10-1 (group b),
    the oldest is 9-1 (as text "10-1" < "9-1"), so the two oldest processed entries after
    it (9-2, 10-2) are deleted and nothing before it is touched."""
    for ms in (8, 9, 10, 11, 12):
        for seq in (1, 2):
            await redis_client.xadd(STREAM, {"data": "x"}, id=f"{ms}-{seq}")
    ids = await _left(redis_client)
    for group, stuck in (("a", "9-1"), ("b", "10-1")):
        await redis_client.xgroup_create(STREAM, group, id="0")
        await redis_client.xreadgroup(group, "c", {STREAM: ">"}, count=len(ids))
        await redis_client.xack(STREAM, group, *[i for i in ids if i != stuck])
    assert await trim_around_pending(redis_client, STREAM, 8, stuck_after_ms=0) == 2
    assert await _left(redis_client) == ["8-1", "8-2", "9-1", "10-1", "11-1", "11-2", "12-1",
                                         "12-2"]


async def test_trim_around_pending_stops_at_the_slowest_groups_delivery_by_number(
    redis_client: Redis,
) -> None:
    """The last entry every group received is found by number, not by text: with group a
    at 9-2 and group b at 10-2 (as text "10-2" < "9-2"), only the processed entries up to
    9-2 go; 10-1 and 10-2, which group a has not received, stay."""
    for ms in (8, 9, 10, 11, 12, 13):
        for seq in (1, 2):
            await redis_client.xadd(STREAM, {"data": "x"}, id=f"{ms}-{seq}")
    for group, last in (("a", "9-2"), ("b", "10-2")):
        await redis_client.xgroup_create(STREAM, group, id="0")
        received = [i for i in await _left(redis_client) if _num(i) <= _num(last)]
        await redis_client.xreadgroup(group, "c", {STREAM: ">"}, count=len(received))
        await redis_client.xack(STREAM, group, *[i for i in received if i != "8-1"])
    assert await trim_around_pending(redis_client, STREAM, 2, stuck_after_ms=0) == 3
    assert await _left(redis_client) == ["8-1", "10-1", "10-2", "11-1", "11-2", "12-1",
                                         "12-2", "13-1", "13-2"]


def _num(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


async def _many(redis: Redis, n: int, pending: int) -> list[str]:
    """``n`` entries all delivered to group g, the first ``pending`` of them unacknowledged."""
    pipe = redis.pipeline(transaction=False)
    for _ in range(n):
        pipe.xadd(STREAM, {"data": "x"})
    ids = [i.decode() for i in await pipe.execute()]
    await redis.xgroup_create(STREAM, "g", id="0")
    await redis.xreadgroup("g", "c", {STREAM: ">"}, count=n)
    await redis.xack(STREAM, "g", *ids[pending:])
    return ids


async def test_trim_around_pending_deletes_at_most_1000_by_default(redis_client: Redis) -> None:
    """Without max_delete, one call deletes at most 1,000 entries however far over its
    retention the stream is."""
    ids = await _many(redis_client, 1010, pending=1)
    assert await trim_around_pending(redis_client, STREAM, 1, stuck_after_ms=0) == 1000
    assert await _left(redis_client) == [ids[0], *ids[1001:]]


async def test_trim_around_pending_looks_at_most_1000_entries_past_the_excess(
    redis_client: Redis,
) -> None:
    """One call reads at most ``excess + 1000`` entries from the oldest pending one: when
    all of those are pending it deletes nothing, even if processed entries follow."""
    ids = await _many(redis_client, 1006, pending=1001)
    assert await trim_around_pending(redis_client, STREAM, 1005, stuck_after_ms=0) == 0
    assert await _left(redis_client) == ids


@pytest.mark.standalone_only("counts one server's commands (INFO commandstats)")
async def test_trim_around_pending_at_retention_reads_nothing_but_the_length(
    redis_client: Redis,
) -> None:
    """At its retention, even with a stuck entry, it sends XLEN only: no XINFO, XPENDING,
    XRANGE or XDEL (it runs at maxmemory, every command counts)."""
    await _stuck(redis_client, 6, pending=(0,), delivered=6)
    await redis_client.config_resetstat()
    assert await trim_around_pending(redis_client, STREAM, 6, stuck_after_ms=0) == 0
    stats = await redis_client.info("commandstats")
    assert sorted(k for k in stats if k.startswith("cmdstat_x")) == ["cmdstat_xlen"]


async def test_trim_around_pending_without_pending_entries_leaves_it_to_safe_trim(
    redis_client: Redis,
) -> None:
    """With nothing pending there is nothing stuck: it deletes nothing."""
    ids = await _stuck(redis_client, 6, pending=(), delivered=6)
    assert await trim_around_pending(redis_client, STREAM, 1, stuck_after_ms=0) == 0
    assert await _left(redis_client) == ids


async def test_trim_around_pending_respects_every_group(redis_client: Redis) -> None:
    """With two groups, it stops at the slower group's last delivered entry and keeps the
    entries pending in either group."""
    ids = await _fill(redis_client, 12)
    await redis_client.xgroup_create(STREAM, "fast", id="0")
    await redis_client.xgroup_create(STREAM, "slow", id=ids[5])
    await redis_client.xreadgroup("fast", "c", {STREAM: ">"})
    await redis_client.xack(STREAM, "fast", *ids[1:])
    await redis_client.xreadgroup("slow", "c", {STREAM: ">"}, count=2)  # ids[6], ids[7]
    assert await trim_around_pending(redis_client, STREAM, 1, stuck_after_ms=0) == 5
    assert await _left(redis_client) == [ids[0], *ids[6:]]


async def test_worker_keeps_its_stream_within_retention(redis_url: str) -> None:
    """A worker with stream_retention trims processed entries during maintenance."""
    worker = BaseWorker(_settings(redis_url), worker_settings=WorkerSettings(
        block_ms=100, stream_retention=50, maintenance_interval_s=0.1))

    @worker.handler("upkeep.x.y")
    async def noop(action: DomainAction, data: dict[str, object]) -> None:
        return None

    redis = worker_redis = Redis.from_url(redis_url)
    client = BaseRedisClient("sender", worker_redis, _settings(redis_url, "sender"))
    await client.send_actions_async([DomainAction(action_type="upkeep.x.y") for _ in range(300)])
    async with worker:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if worker.stats.handled == 300 and await redis.xlen(STREAM) <= 50:
                break
    assert worker.stats.handled == 300
    assert await redis.xlen(STREAM) <= 50
    await redis.aclose()


async def test_gone_consumers_are_removed_only_without_pending(redis_client: Redis) -> None:
    """Idle consumers with pending entries are kept; idle ones with none are removed."""
    await _fill(redis_client, 2)
    await redis_client.xgroup_create(STREAM, "g", id="0")
    await redis_client.xreadgroup("g", "holder", {STREAM: ">"}, count=1)
    await redis_client.xgroup_createconsumer(STREAM, "g", "empty")
    await asyncio.sleep(0.05)
    removed = await remove_gone_consumers(redis_client, STREAM, "g", "me", idle_ms=10)
    names = {c["name"].decode() for c in await redis_client.xinfo_consumers(STREAM, "g")}
    assert removed == ["empty"]
    assert names == {"holder"}


async def test_eviction_policy_warning(caplog: pytest.LogCaptureFixture) -> None:
    """A server whose maxmemory-policy can evict streams gets a clear warning at start."""
    with RedisServer(extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        redis = Redis.from_url(server.url)
        with caplog.at_level(logging.WARNING, logger="actionbus.worker"):
            assert await check_eviction_policy(redis) == "allkeys-lru"
        await redis.aclose()
    assert "may evict action streams" in caplog.text


async def test_no_eviction_warning_for_noeviction(
    redis_client: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The default noeviction policy produces no warning."""
    with caplog.at_level(logging.WARNING, logger="actionbus.worker"):
        assert await check_eviction_policy(redis_client) == "noeviction"
    assert caplog.text == ""


async def test_heartbeat_stops_others_stealing_a_slow_action(redis_url: str) -> None:
    """An action running longer than claim_idle_ms is not reclaimed by another worker."""
    fast = {"block_ms": 100, "claim_idle_ms": 300, "reclaim_interval_s": 0.05}
    runs: list[str] = []

    def make(name: str) -> BaseWorker:
        worker = BaseWorker(_settings(redis_url), worker_settings=WorkerSettings(
            consumer_name=name, **fast))

        @worker.handler("upkeep.x.y")
        async def slow(action: DomainAction, data: dict[str, object]) -> None:
            runs.append(name)
            await asyncio.sleep(1.2)

        return worker

    first, second = make("first"), make("second")
    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("sender", redis, _settings(redis_url, "sender"))
    async with first:
        await client.send_action_async(DomainAction(action_type="upkeep.x.y"))
        for _ in range(40):
            await asyncio.sleep(0.05)
            if runs:
                break
        async with second:
            await asyncio.sleep(1.5)
    assert runs == ["first"]
    assert first.stats.handled == 1
    await redis.aclose()



async def test_heartbeat_selection_takes_only_entries_running_longer_than_asked(
    bus: Any, eventually: Any
) -> None:
    """older_than(s) lists the entries in progress for more than s seconds: a running entry
    is in older_than(0) once some time passed, never in older_than(3600)."""
    worker = bus.worker("inventory")
    release = asyncio.Event()

    @worker.handler("inventory.item.n")
    async def hang(action: DomainAction, data: dict[str, object]) -> None:
        await release.wait()

    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.n"))
    await eventually(lambda: worker.in_flight == 1)
    processor = worker._processor
    assert processor is not None
    await eventually(lambda: len(processor.older_than(0)) == 1)
    assert processor.older_than(3600) == []
    release.set()
    await eventually(lambda: worker.stats.handled == 1)
    assert processor.older_than(0) == []


async def test_busy_stream_is_trimmed_by_volume_not_only_by_time(redis_url: str) -> None:
    """With a long maintenance interval, trimming still follows the acknowledgements."""
    worker = BaseWorker(_settings(redis_url), worker_settings=WorkerSettings(
        block_ms=100, stream_retention=200, maintenance_interval_s=3600))

    @worker.handler("upkeep.x.y")
    async def noop(action: DomainAction, data: dict[str, object]) -> None:
        return None

    redis = Redis.from_url(redis_url)
    client = BaseRedisClient("sender", redis, _settings(redis_url, "sender"))
    longest = 0
    async with worker:
        for _ in range(10):
            await client.send_actions_async(
                [DomainAction(action_type="upkeep.x.y") for _ in range(200)])
            for _ in range(100):
                await asyncio.sleep(0.02)
                if worker.stats.handled % 200 == 0 and worker.in_flight == 0:
                    break
            longest = max(longest, await redis.xlen(STREAM))
    assert worker.stats.handled == 2000
    assert longest <= 400  # retention plus one unprocessed batch, never the whole 2,000
    await redis.aclose()


async def test_maintain_trims_processed_entries_only(bus: Any, eventually: Any) -> None:
    """maintain() trims acknowledged entries beyond stream_retention but keeps undelivered ones."""
    worker = bus.worker("inventory", stream_retention=5)
    worker.register("inventory.item.n", noop)
    await worker.start()
    client = bus.client("orders")
    await client.send_actions_async(
        [DomainAction(action_type="inventory.item.n") for _ in range(20)]
    )
    await eventually(lambda: worker.stats.handled == 20)
    await eventually(lambda: drained(bus.redis, "inventory"))
    await worker.maintain()
    stream = QM.get_service_action_stream("inventory")
    assert await bus.redis.xlen(stream) <= 5
    await worker.stop()
    await client.send_actions_async(
        [DomainAction(action_type="inventory.item.n") for _ in range(8)]
    )
    await worker.maintain()
    assert await bus.redis.xlen(stream) >= 8


async def test_maintain_removes_gone_consumers(bus: Any, eventually: Any) -> None:
    """maintain() removes consumers idle longer than consumer_gone_after_s with nothing pending."""
    worker = bus.worker("inventory", consumer_gone_after_s=0.05, consumer_name="alive")
    worker.register("inventory.item.n", noop)
    await worker.start()
    await bus.client("orders").send_action_async(DomainAction(action_type="inventory.item.n"))
    await eventually(lambda: worker.stats.handled == 1)
    stream = QM.get_service_action_stream("inventory")
    await bus.redis.execute_command("XGROUP", "CREATECONSUMER", stream, "inventory", "gone")
    await asyncio.sleep(0.15)
    await worker.maintain()
    names = {c["name"] for c in await bus.redis.xinfo_consumers(stream, "inventory")}
    assert names == {b"alive"}


async def test_maintain_keeps_consumers_idle_for_less_than_consumer_gone_after_s(
    bus: Any,
) -> None:
    """consumer_gone_after_s is in seconds: a consumer idle for a moment stays when it is 60."""
    worker = bus.worker("inventory", consumer_gone_after_s=60)
    stream = QM.get_service_action_stream("inventory")
    await bus.redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await bus.redis.xgroup_createconsumer(stream, "inventory", "recent")
    await asyncio.sleep(0.05)
    await maintain(bus.redis, worker.context)
    names = {c["name"] for c in await bus.redis.xinfo_consumers(stream, "inventory")}
    assert names == {b"recent"}


async def test_maintain_removes_gone_consumers_from_every_lane(bus: Any) -> None:
    """With lanes, gone consumers are removed from the group of each lane."""
    worker = bus.worker("inventory", lanes=True, consumer_gone_after_s=0.01)
    lanes = worker.context.lanes
    assert len(lanes) == 3
    for stream in lanes:
        await bus.redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
        await bus.redis.xgroup_createconsumer(stream, "inventory", "gone")
    await asyncio.sleep(0.05)
    await maintain(bus.redis, worker.context)
    for stream in lanes:
        assert await bus.redis.xinfo_consumers(stream, "inventory") == []


async def test_maintain_passes_consumer_gone_after_s_as_milliseconds(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """maintain() removes consumers idle for consumer_gone_after_s seconds: 2.5 s is an idle
    bound of exactly 2,500 ms (XINFO CONSUMERS counts idle time in milliseconds)."""
    bounds: list[int] = []

    async def recording(redis: Any, stream: str, group: str, me: str, idle_ms: int) -> list[str]:
        bounds.append(idle_ms)
        return await remove_gone_consumers(redis, stream, group, me, idle_ms)

    monkeypatch.setattr(upkeep, "remove_gone_consumers", recording)
    worker = bus.worker("inventory", consumer_gone_after_s=2.5)
    stream = QM.get_service_action_stream("inventory")
    await bus.redis.xgroup_create(stream, "inventory", id="0", mkstream=True)
    await maintain(bus.redis, worker.context)
    assert bounds == [2500]


async def _acked(redis: Any, stream: str, ids: list[str], pending: tuple[int, ...] = ()) -> None:
    """Group ``inventory`` on ``stream`` received ``ids`` and acknowledged all but ``pending``
    (indexes)."""
    for entry_id in ids:
        await redis.xadd(stream, {"data": "x"}, id=entry_id)
    await redis.xgroup_create(stream, "inventory", id="0")
    await redis.xreadgroup("inventory", "c", {stream: ">"}, count=len(ids))
    await redis.xack(stream, "inventory", *[i for k, i in enumerate(ids) if k not in pending])


async def test_trim_returns_how_many_entries_it_removed(bus: Any) -> None:
    """upkeep.trim() returns the number of entries it removed from the stream."""
    worker = bus.worker("inventory", stream_retention=5)
    stream = QM.get_service_action_stream("inventory")
    await _acked(bus.redis, stream, [f"1-{seq}" for seq in range(1, 11)])
    assert await trim(bus.redis, worker.context) == 10
    assert await bus.redis.xlen(stream) == 0


async def test_trim_takes_trim_stuck_after_s_in_seconds(bus: Any) -> None:
    """trim_stuck_after_s is in seconds, scaled by exactly 1,000 to compare with the
    entry's id time: an entry pending since 100,050 s ago is stuck for a bound of 100,000 s,
    so the processed entries after it are deleted down to the retention."""
    worker = bus.worker("inventory", stream_retention=6, trim_stuck_after_s=100_000)
    stream = QM.get_service_action_stream("inventory")
    since = int(time.time() * 1000) - 100_050_000
    ids = [f"{since}-{seq}" for seq in range(1, 13)]
    await _acked(bus.redis, stream, ids, pending=(0,))
    assert await trim(bus.redis, worker.context) == 6
    assert [e[0].decode() for e in await bus.redis.xrange(stream)] == [ids[0], *ids[7:]]


async def test_recently_active_consumer_without_pending_is_kept(redis_client: Redis) -> None:
    """A consumer with nothing pending is removed only once idle for idle_ms: one just
    created stays."""
    await redis_client.xgroup_create(STREAM, "g", id="0", mkstream=True)
    await redis_client.xgroup_createconsumer(STREAM, "g", "fresh")
    assert await remove_gone_consumers(redis_client, STREAM, "g", "me", idle_ms=60_000) == []
    names = {c["name"].decode() for c in await redis_client.xinfo_consumers(STREAM, "g")}
    assert names == {"fresh"}


def _upkeep(
    bus: Any, acked: list[int], service: str = "inventory", *,
    in_progress: Any = lambda age: [], maintain: Any = None, **settings: Any,
) -> upkeep.Upkeep:
    """An Upkeep of ``service`` whose acknowledgement count is ``acked[0]``."""
    from actionbus.backoff import OutageLog

    async def nothing() -> None:
        return None

    worker = bus.worker(service, **settings)
    return upkeep.Upkeep(worker.context, bus.redis, in_progress=in_progress,
                         acknowledged=lambda: acked[0], maintain=maintain or nothing,
                         outage=OutageLog(logging.getLogger("test"), "upkeep"))


async def test_maybe_trim_starts_one_trim_per_tenth_of_the_retention_acknowledged(
    bus: Any,
) -> None:
    """With stream_retention 2000, a trim starts once 200 more entries were acknowledged
    since the last one (not at 190, at exactly 200), never a second one while one runs,
    and the next only 200 acknowledgements after the count the last one started at."""
    acked = [190]
    keeper = _upkeep(bus, acked, stream_retention=2000)
    keeper.maybe_trim()
    assert keeper.trim_task is None
    acked[0] = 200
    keeper.maybe_trim()
    first = keeper.trim_task
    assert first is not None
    acked[0] = 450
    keeper.maybe_trim()
    assert keeper.trim_task is first  # one at a time
    await asyncio.wait_for(first, 10)
    assert keeper.trim_task is None
    acked[0] = 350
    keeper.maybe_trim()
    assert keeper.trim_task is None  # 150 since the last trim started
    acked[0] = 400
    keeper.maybe_trim()
    assert keeper.trim_task is not None
    await asyncio.wait_for(keeper.trim_task, 10)


async def test_maybe_trim_trims_at_least_every_100_acknowledgements(bus: Any) -> None:
    """A retention under 1000 still trims by volume every 100 acknowledgements, not every
    tenth of the retention: with stream_retention 500 the first trim starts at 100."""
    acked = [99]
    keeper = _upkeep(bus, acked, stream_retention=500)
    keeper.maybe_trim()
    assert keeper.trim_task is None
    acked[0] = 100
    keeper.maybe_trim()
    assert keeper.trim_task is not None
    await asyncio.wait_for(keeper.trim_task, 10)


async def test_maybe_trim_never_trims_without_a_retention(bus: Any) -> None:
    """Without stream_retention, acknowledgements never start a trim."""
    acked = [0]
    keeper = _upkeep(bus, acked, stream_retention=None)
    for count in (1, 100, 10_000):
        acked[0] = count
        keeper.maybe_trim()
        assert keeper.trim_task is None


async def test_upkeep_maintains_only_after_maintenance_interval_s(bus: Any) -> None:
    """The first maintenance waits a whole maintenance_interval_s (here an hour): the
    heartbeat beats that come first (every claim_idle_ms / 3) do not maintain."""
    beats, maintained = asyncio.Event(), []
    calls: list[float] = []

    def in_progress(age: float) -> list[str]:
        calls.append(age)
        if len(calls) >= 3:
            beats.set()
        return []

    async def maintain() -> None:
        maintained.append(1)

    keeper = _upkeep(bus, [0], in_progress=in_progress, maintain=maintain,
                     claim_idle_ms=300, maintenance_interval_s=3600)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.wait_for(beats.wait(), 10)  # two beats fully done
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert maintained == []


async def test_upkeep_heartbeats_a_long_running_entry_of_a_lane(bus: Any) -> None:
    """An entry of a lane still in progress is heartbeated in its lane's stream: the
    XCLAIM makes it this consumer's (here taken from another) with its idle time reset."""
    from actionbus.workers.context import entry_key

    worker = bus.worker("lanes", lanes=True)
    ctx = worker.context
    high = QM.get_lane_stream("lanes", "high")
    await bus.redis.xgroup_create(high, ctx.group, id="0", mkstream=True)
    entry_id = (await bus.redis.xadd(high, {"data": "{}"})).decode()
    await bus.redis.xreadgroup(ctx.group, "another", {high: ">"}, count=1)
    beats = asyncio.Event()
    calls: list[float] = []

    def in_progress(age: float) -> list[str]:
        calls.append(age)
        if len(calls) >= 2:
            beats.set()
        return [entry_key(ctx.stream, high, entry_id)]

    keeper = _upkeep(bus, [0], "lanes", in_progress=in_progress, lanes=True,
                     claim_idle_ms=300)
    task = asyncio.create_task(keeper.run())
    try:
        await asyncio.wait_for(beats.wait(), 10)  # the first beat's heartbeat is done
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    [pending] = await bus.redis.xpending_range(high, ctx.group, "-", "+", 10)
    assert pending["consumer"].decode() == keeper.ctx.consumer
