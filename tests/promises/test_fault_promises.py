"""README promises under Redis faults: no output lost, outage log lines, eviction warning."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from actionbus import ActionRejected, BaseRedisClient, DomainAction, QueueManager, RedisManager
from actionbus.embedded import RedisServer

from .conftest import pending_count, wait_for


@pytest_asyncio.fixture
async def fresh(fresh_redis_server: RedisServer, make_settings: Any) -> AsyncIterator[Any]:
    """A client on a server of this test's own (its config may be changed freely)."""
    async with RedisManager(make_settings(redis_url=fresh_redis_server.url)) as manager:
        yield manager.get_client()


async def _oom_errors(redis: Any) -> int:
    stats: Any = await redis.info("errorstats")
    return int(stats.get("errorstat_OOM", {}).get("count", 0))


async def test_redis_error_during_an_output_round_loses_no_output(
    fresh: Any, make_worker: Any, make_settings: Any, qm: QueueManager
) -> None:
    """Writes refused by Redis (OOM) are retried: the dead letter and both callbacks arrive,
    and no entry is acknowledged before its outputs are in Redis."""
    worker = make_worker("oom", redis=fresh)
    started: list[str] = []
    release = asyncio.Event()

    @worker.handler("oom.op.run")
    async def run(action: DomainAction, data: dict[str, Any]) -> dict[str, Any]:
        started.append(str(action.action_id))
        await release.wait()
        if data["fail"]:
            raise ActionRejected("out of stock", error_code="stock")
        return {"ok": True}

    await worker.start()
    client = BaseRedisClient("caller", fresh, make_settings(service_name="caller"))
    failing = await client.send_action_async_with_callback(
        DomainAction(action_type="oom.op.run", data={"fail": True}), "caller.op.done")
    await client.send_action_async_with_callback(
        DomainAction(action_type="oom.op.run", data={"fail": False}), "caller.op.done")
    await wait_for(lambda: len(started) == 2, "both handlers started")
    await fresh.config_set("maxmemory-policy", "noeviction")
    await fresh.config_set("maxmemory", 1)
    try:
        before = await _oom_errors(fresh)
        release.set()
        await wait_for(lambda: _more(fresh, before), "Redis refused the output round")
        assert await pending_count(fresh, worker.stream, worker.group) == 2
    finally:
        await fresh.config_set("maxmemory", 0)
    dead = qm.get_dead_letter_stream("oom")
    callbacks = qm.get_service_action_stream("caller")
    await wait_for(lambda: _lengths(fresh, dead, callbacks, (1, 2)), "dead letter and callbacks")
    await wait_for(lambda: _no_pending(fresh, worker), "both acknowledged")
    [(_, fields)] = await fresh.xrange(dead)
    assert fields[b"original_id"].decode() == failing
    results = sorted(DomainAction.model_validate_json(f[b"data"]).metadata["success"]
                     for _, f in await fresh.xrange(callbacks))
    assert results == [False, True]
    await client.close()


async def test_outage_is_logged_at_start_periodically_and_at_the_end(
    fresh_redis_server: RedisServer, make_worker: Any, make_settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker logs an outage when it starts, every outage_log_every_s, and when it ends."""
    caplog.set_level(logging.WARNING, logger="actionbus.worker")
    worker = make_worker(
        "outage", app={"redis_url": fresh_redis_server.url, "redis_retries": 0}, redis=None,
        outage_log_every_s=0.2,
    )
    await worker.start()
    fresh_redis_server.stop()
    try:
        await wait_for(lambda: _logged(caplog, "Redis unavailable"), "the outage start line")
        await wait_for(lambda: _logged(caplog, "Redis still unavailable"), "a periodic line")
    finally:
        fresh_redis_server.start()
    await wait_for(lambda: _logged(caplog, "Redis available again"), "the outage end line")
    await worker.stop(grace=0.5)
    starts = [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert len(starts) == 1


async def test_eviction_policy_warning_at_worker_start(
    fresh: Any, make_worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker starting on a server with an allkeys-* eviction policy warns about it."""
    await fresh.config_set("maxmemory-policy", "allkeys-lru")
    caplog.set_level(logging.WARNING, logger="actionbus.worker")
    await make_worker("evict", redis=fresh).start()
    assert any("maxmemory-policy is 'allkeys-lru'" in r.getMessage() for r in caplog.records)


async def _more(redis: Any, before: int) -> bool:
    return await _oom_errors(redis) > before


async def _lengths(redis: Any, dead: str, callbacks: str, expected: tuple[int, int]) -> bool:
    return (await redis.xlen(dead), await redis.xlen(callbacks)) == expected


async def _no_pending(redis: Any, worker: Any) -> bool:
    return await pending_count(redis, worker.stream, worker.group) == 0


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)
