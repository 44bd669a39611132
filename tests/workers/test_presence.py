"""Worker presence (workers/presence.py): who is alive, as ``status`` reads it."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import actionbus.workers.presence as presence
from actionbus.workers.presence import (
    BUCKET_S,
    handled_key,
    handled_per_second,
    interval_s,
    presence_key,
    read_presence,
)
from actionbus.workers.presence import run as presence_run
from actionbus.workers.stats import WorkerStats
from tests.workers.helpers import QM


async def test_read_presence_tells_alive_from_gone_by_deadline(redis_client: Any) -> None:
    """A consumer whose deadline is ahead is alive, one whose deadline passed is gone."""
    now_ms = int(time.time() * 1000)
    await redis_client.hset(presence_key(QM, "inventory"),
                            mapping={"c-alive": now_ms + 60_000, "c-gone": now_ms - 60_000})
    assert await read_presence(redis_client, QM, "inventory") == {
        "c-alive": True, "c-gone": False}
    assert await read_presence(redis_client, QM, "orders") == {}


async def test_handled_per_second_is_the_last_minute_of_buckets_over_60(
    redis_client: Any,
) -> None:
    """handled_per_second sums the counters of the current and past buckets of the last
    minute and divides by 60 s: 120 now and 60 a bucket ago are 3.0/s; a bucket a minute
    old and one in the future are not counted."""
    bucket = int(time.time()) // BUCKET_S
    await redis_client.set(handled_key(QM, "inventory", bucket), 120)
    await redis_client.set(handled_key(QM, "inventory", bucket - 1), 60)
    await redis_client.set(handled_key(QM, "inventory", bucket - 60 // BUCKET_S - 1), 6000)
    await redis_client.set(handled_key(QM, "inventory", bucket + 3), 6000)
    assert await handled_per_second(redis_client, QM, "inventory") == 3.0


async def test_running_worker_is_present_and_gone_once_stopped(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running worker's heartbeat shows its consumer alive; stopping removes it at once."""
    monkeypatch.setenv("ACTIONBUS_PRESENCE_INTERVAL_S", "0.05")
    worker = bus.worker("inventory", consumer_name="c-1")
    await worker.start()
    await eventually(lambda: _present(bus.redis))
    await worker.stop(grace=0.5)
    assert await read_presence(bus.redis, QM, "inventory") == {}


async def _present(redis: Any) -> bool:
    return await read_presence(redis, QM, "inventory") == {"c-1": True}


@pytest.mark.parametrize(("value", "expected"), [
    (None, 2.0), ("0.5", 0.5), ("0.01", 0.05), ("nonsense", 2.0),
])
def test_presence_interval_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: float
) -> None:
    """The heartbeat interval is ACTIONBUS_PRESENCE_INTERVAL_S seconds, 2 when unset or not
    a number, and never under 0.05."""
    if value is None:
        monkeypatch.delenv("ACTIONBUS_PRESENCE_INTERVAL_S", raising=False)
    else:
        monkeypatch.setenv("ACTIONBUS_PRESENCE_INTERVAL_S", value)
    assert interval_s() == expected


async def _beating(bus: Any, stats: WorkerStats, eventually: Any) -> tuple[Any, asyncio.Task[None]]:
    """presence.run() of consumer c-1 of inventory (consumer_gone_after_s=100), once its
    first heartbeat is written."""
    ctx = bus.worker("inventory", consumer_name="c-1", consumer_gone_after_s=100).context
    task = asyncio.create_task(presence_run(ctx, bus.redis, stats))
    await eventually(lambda: bus.redis.hexists(presence_key(QM, "inventory"), "c-1"))
    return ctx, task


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel ``task``; it must end cancelled within 10 s."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


async def test_a_heartbeat_holds_three_intervals_and_the_key_outlives_gone_consumers(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat writes a deadline of now + 3 intervals (ms since the epoch); the hash
    expires consumer_gone_after_s + 60 s after the last beat; a worker that handled nothing
    writes no throughput counter."""
    monkeypatch.setenv("ACTIONBUS_PRESENCE_INTERVAL_S", "1000")
    before = int(time.time() * 1000)
    _, task = await _beating(bus, WorkerStats(), eventually)
    after = int(time.time() * 1000)
    key = presence_key(QM, "inventory")
    deadline = int(await bus.redis.hget(key, "c-1"))
    assert before + 3_000_000 <= deadline <= after + 3_000_000
    assert 150_000 < await bus.redis.pttl(key) <= 160_000
    now_bucket = int(time.time()) // BUCKET_S
    for bucket in (now_bucket - 1, now_bucket):
        assert not await bus.redis.exists(handled_key(QM, "inventory", bucket))
    await _stop(task)


async def test_a_heartbeat_counts_what_was_handled_since_the_last_one(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each heartbeat adds the actions handled since the previous one to the current
    10-second bucket, which expires after two minutes: 3 then 2 more make 5, not 8."""
    monkeypatch.setenv("ACTIONBUS_PRESENCE_INTERVAL_S", "0.05")
    stats = WorkerStats(handled=3)

    async def total() -> int:
        return round(await handled_per_second(bus.redis, QM, "inventory") * 60)

    _, task = await _beating(bus, stats, eventually)
    await eventually(lambda: _is(total(), 3))
    stats.handled = 5
    await eventually(lambda: _is(total(), 5))
    bucket = handled_key(QM, "inventory", int(time.time()) // BUCKET_S)
    if await bus.redis.exists(bucket):
        assert 110_000 < await bus.redis.pttl(bucket) <= 120_000
    await _stop(task)
    assert await total() == 5


async def _is(value: Any, expected: int) -> bool:
    return await value == expected


async def test_the_first_heartbeat_prunes_consumers_gone_for_consumer_gone_after_s(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's first heartbeat removes the fields whose deadline passed more than
    consumer_gone_after_s (100 s) ago, and keeps one gone for less."""
    monkeypatch.setenv("ACTIONBUS_PRESENCE_INTERVAL_S", "1000")
    key = presence_key(QM, "inventory")
    now_ms = int(time.time() * 1000)
    await bus.redis.hset(key, mapping={"long-gone": now_ms - 130_000,
                                       "just-gone": now_ms - 70_000})
    _, task = await _beating(bus, WorkerStats(), eventually)
    await eventually(lambda: _not(bus.redis.hexists(key, "long-gone")))
    assert await read_presence(bus.redis, QM, "inventory") == {"c-1": True, "just-gone": False}
    await _stop(task)
    assert await read_presence(bus.redis, QM, "inventory") == {"just-gone": False}


async def _not(value: Any) -> bool:
    return not await value


def test_presence_keys_are_under_the_services_hash_tag() -> None:
    """The heartbeat hash and the throughput counters are ``…:{service}:consumers:main`` and
    ``…:{service}:handled:<bucket>``: in the service's hash slot, readable by other tools."""
    assert presence_key(QM, "inventory") == "actionbus:dev:{inventory}:consumers:main"
    assert handled_key(QM, "inventory", 5) == "actionbus:dev:{inventory}:handled:5"


class _CountedBeats:
    """Stats whose ``handled`` counts how many times the heartbeat loop read it (once per
    beat), handling nothing."""

    def __init__(self) -> None:
        self.beats = 0

    @property
    def handled(self) -> int:
        self.beats += 1
        return 0


async def test_gone_consumers_are_pruned_on_the_first_beat_and_every_hundredth(
    bus: Any, eventually: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heartbeat prunes the fields of long-gone consumers on its 1st beat, then on every
    100th (101st, 201st …), not on the others."""
    monkeypatch.setenv("ACTIONBUS_PRESENCE_INTERVAL_S", "0.05")
    stats = _CountedBeats()
    pruned_at: list[int] = []
    prune = presence._prune

    async def counted(redis: Any, ctx: Any) -> None:
        pruned_at.append(stats.beats)
        await prune(redis, ctx)

    monkeypatch.setattr(presence, "_prune", counted)
    ctx = bus.worker("inventory", consumer_name="c-1").context
    task = asyncio.create_task(presence_run(ctx, bus.redis, stats))  # type: ignore[arg-type]
    await eventually(lambda: stats.beats >= 103, timeout=60)
    await _stop(task)
    assert pruned_at[:2] == [1, 101]
    assert all(beat % 100 == 1 for beat in pruned_at)


async def test_a_heartbeat_cancelled_while_redis_does_not_answer_ends_cancelled(
    bus: Any, eventually: Any
) -> None:
    """With Redis not answering (connections accepted, no reply ever), a cancelled heartbeat
    ends as cancelled, and soon: the removal of its field gives up after 1 s and raises
    nothing."""
    with socket.socket() as silent:  # listens, never accepts nor answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        mute = Redis(host=host, port=port, retry=Retry(NoBackoff(), 0))
        stats = _CountedBeats()
        ctx = bus.worker("inventory", consumer_name="c-1").context
        task = asyncio.create_task(presence_run(ctx, mute, stats))  # type: ignore[arg-type]
        await eventually(lambda: stats.beats >= 1)
        await _stop(task)
        await mute.aclose()


async def test_a_stopping_heartbeat_gives_up_removing_its_field_after_a_second(
    bus: Any, eventually: Any
) -> None:
    """With Redis not answering and the client's own socket timeout long (30 s), a cancelled
    heartbeat gives up removing its field after 1 s: it ends, cancelled, within 3 s."""
    with socket.socket() as silent:  # listens, never accepts nor answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host, port = silent.getsockname()
        mute = Redis(host=host, port=port, retry=Retry(NoBackoff(), 0), socket_timeout=30)
        stats = _CountedBeats()
        ctx = bus.worker("inventory", consumer_name="c-1").context
        task = asyncio.create_task(presence_run(ctx, mute, stats))  # type: ignore[arg-type]
        await eventually(lambda: stats.beats >= 1)
        task.cancel()
        try:
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(task, 3)
        finally:
            await mute.aclose()


async def test_a_heartbeat_cancelled_while_redis_refuses_connections_ends_cancelled(
    bus: Any, eventually: Any
) -> None:
    """With Redis down (connections refused), the heartbeat keeps going (beats are not
    written) and, when cancelled, ends as cancelled: the failed removal of its field (a
    redis-py ConnectionError) raises nothing."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        host, port = probe.getsockname()
    down = Redis(host=host, port=port, retry=Retry(NoBackoff(), 0))
    stats = _CountedBeats()
    ctx = bus.worker("inventory", consumer_name="c-1").context
    task = asyncio.create_task(presence_run(ctx, down, stats))  # type: ignore[arg-type]
    await eventually(lambda: stats.beats >= 2)
    await _stop(task)
    await down.aclose()
