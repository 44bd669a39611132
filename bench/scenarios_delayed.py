"""Scenario 6: delayed sends vs plain sends, and mover lateness at ~10k due per second."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time

from common import DATA, ORIGIN, Config, app_settings
from redis.asyncio import Redis
from report import Results

from actionbus import BaseRedisClient, BaseWorker, DomainAction, QueueManager, RedisManager
from actionbus.backoff import OutageLog
from actionbus.workers.mover import Mover

TARGET = "benchdelay"
ACTION_TYPE = f"{TARGET}.item.process"
RATE = 10_000  # due per second in the lateness run
DELAY_S = 3600  # the throughput run's actions never come due


def action() -> DomainAction:
    return DomainAction(action_type=ACTION_TYPE, data=DATA)


def _pct(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


async def _send_rates(cfg: Config, results: Results, client: BaseRedisClient,
                      admin: Redis) -> None:
    qm = QueueManager()
    stream, delayed = qm.get_service_action_stream(TARGET), qm.get_delayed_set(TARGET)
    n = cfg.send_n // 2
    for rep in range(cfg.reps):
        order = [("raw", None), ("actionbus", DELAY_S)]
        for side, delay in order if rep % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(n):
                await client.send_action_async(action(), delay=delay)
            elapsed = time.perf_counter() - start
            counted = await (admin.zcard(delayed) if delay else admin.xlen(stream))
            if counted != n:
                raise RuntimeError(f"delayed send ({side}): {counted} entries, expected {n}")
            await admin.delete(stream, delayed)
            results.add(6, "delayed.send", "send_action_async(delay=) [raw col: plain send]",
                        "msg/s", side, n / elapsed)


async def _lateness(cfg: Config, results: Results, redis: Redis, admin: Redis) -> None:
    """Load RATE due per second for a few seconds, run one worker's mover, read lateness."""
    seconds = 1 if cfg.quick else 3
    worker = BaseWorker(app_settings(cfg.url, TARGET), redis)
    member = action().model_copy(update={"origin_service": ORIGIN}).model_dump_json()
    for _rep in range(cfg.reps):
        now_s, now_us = await admin.time()
        first_due = now_s * 1000 + now_us // 1000 + 1500  # loading takes under 1.5 s
        total = RATE * seconds
        pipe = admin.pipeline(transaction=False)
        for i in range(total):  # distinct members: the action id differs per entry
            body = member.replace('"action_id":"', f'"action_id":"{i:08x}', 1)
            pipe.zadd(QueueManager().get_delayed_set(TARGET), {body: first_due + i * 1000 // RATE})
            if len(pipe) >= 1000:
                await pipe.execute()
        await pipe.execute()
        mover = Mover(worker.context, redis,
                      outage=OutageLog(logging.getLogger("actionbus.worker"), "bench mover"))
        task = asyncio.create_task(mover.run())
        deadline = time.monotonic() + seconds + 30
        while mover.moved < total and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        late = mover.lateness_ms
        if mover.moved < total:
            raise RuntimeError(f"mover moved {mover.moved}/{total} within the bound")
        results.add(6, "delayed.late.p50", f"mover lateness p50 at {RATE:,} due/s", "ms",
                    "actionbus", statistics.median(late))
        results.add(6, "delayed.late.p99", f"mover lateness p99 at {RATE:,} due/s", "ms",
                    "actionbus", _pct(late, 0.99))
        await admin.delete(QueueManager().get_service_action_stream(TARGET))
    results.note("delayed_lateness_due", RATE * seconds)


async def run_delayed(cfg: Config, results: Results) -> None:
    """Delayed vs plain send throughput, then the mover's lateness under ~10k due/s."""
    admin = Redis.from_url(cfg.url)
    manager = RedisManager(app_settings(cfg.url, ORIGIN))
    redis = await manager.initialize()
    client = BaseRedisClient(ORIGIN, redis, manager.settings)
    try:
        await _send_rates(cfg, results, client, admin)
        await _lateness(cfg, results, redis, admin)
    finally:
        await client.close()
        await manager.close()
        await admin.aclose()
