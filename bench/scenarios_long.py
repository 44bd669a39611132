"""Scenario 5 (``--long``): worker memory and stream length over 1,000,000 actions.

One actionbus worker process (``stream_retention=100_000``, maintenance every 5 s) handles
actions sent in pipelined batches. Sending pauses at every 100,000 until the worker has
acknowledged everything, then the worker's RSS and the stream length are read. At the end
the benchmark waits for the worker's next maintenance round to trim the stream.
"""

from __future__ import annotations

import time

from common import DATA, ORIGIN, Config, app_settings, field, to_int, wait_until
from procs import started
from redis.asyncio import Redis
from report import Results

from actionbus import BaseRedisClient, DomainAction, QueueManager, RedisManager

TARGET = "benchlong"
RETENTION = 100_000
MAINTENANCE_S = 5.0
CHECKPOINT = 100_000
BATCH = 100
CHUNK = 5_000
MAX_BACKLOG = 30_000
STREAM = QueueManager().get_service_action_stream(TARGET)


async def progress(redis: Redis) -> tuple[int, int]:
    """(entries the worker's group has read, entries it has not acknowledged yet)."""
    for info in await redis.xinfo_groups(STREAM):
        if field(info, "name") in (TARGET, TARGET.encode()):
            return to_int(field(info, "entries-read")), to_int(field(info, "pending"))
    return 0, 0


async def run_long(cfg: Config, results: Results) -> None:
    """Scenario 5, repeated ``cfg.reps`` times (each with a fresh worker process)."""
    for rep in range(cfg.reps):
        print(f"  long: repetition {rep + 1}/{cfg.reps}", flush=True)
        await _run_long_once(cfg, results)


async def _run_long_once(cfg: Config, results: Results) -> None:
    """Send ``cfg.long_total`` actions; record RSS and stream length at each 100,000."""
    admin = Redis.from_url(cfg.url)
    await admin.delete(STREAM)
    manager = RedisManager(app_settings(cfg.url, ORIGIN))
    client = BaseRedisClient(ORIGIN, await manager.initialize(), manager.settings)
    options = ("--service", TARGET, "--retention", str(RETENTION),
               "--maintenance", str(MAINTENANCE_S))
    sent, longest = 0, 0
    rss: dict[int, float] = {}
    lengths: dict[int, int] = {}

    async def handled() -> int:
        read, pending = await progress(admin)
        return read - pending

    async def all_handled() -> bool:
        return await handled() >= sent

    async def backlog_small() -> bool:
        return sent - await handled() < MAX_BACKLOG // 3

    try:
        with started("ab-worker", cfg.url, *options) as worker:
            rss[0] = worker.rss_mib()
            start = time.perf_counter()
            while sent < cfg.long_total:
                batch = [DomainAction(action_type=f"{TARGET}.item.process", data=DATA)
                         for _ in range(BATCH)]
                await client.send_actions_async(batch)
                sent += BATCH
                if sent % CHUNK == 0:
                    longest = max(longest, await admin.xlen(STREAM))
                    if sent - await handled() > MAX_BACKLOG:
                        await wait_until(backlog_small, timeout=120, interval=0.05,
                                         what="worker catching up")
                if sent % CHECKPOINT == 0:
                    await wait_until(all_handled, timeout=120, interval=0.05,
                                     what=f"worker handling {sent} actions")
                    rss[sent] = worker.rss_mib()
                    lengths[sent] = await admin.xlen(STREAM)
                    longest = max(longest, lengths[sent])
                    print(f"  long: {sent:>9,} handled, worker RSS {rss[sent]:.1f} MiB, "
                          f"stream length {lengths[sent]:,}", flush=True)
            elapsed = time.perf_counter() - start

            async def trimmed() -> bool:
                return int(await admin.xlen(STREAM)) <= RETENTION

            await wait_until(trimmed, timeout=3 * MAINTENANCE_S + 5, interval=0.2,
                             what="the worker trimming its stream")
            final = int(await admin.xlen(STREAM))
    finally:
        await client.close()
        await manager.close()
        await admin.delete(STREAM)
        await admin.aclose()
    first, last = rss[CHECKPOINT], rss[max(rss)]
    label = f"{cfg.long_total:,} actions"
    results.add(5, "long.rate", f"{label}: send+handle rate", "msg/s", "actionbus",
                sent / elapsed)
    results.add(5, "long.rss_100k", f"{label}: worker RSS at 100k", "MiB", "actionbus", first)
    results.add(5, "long.rss_end", f"{label}: worker RSS at end", "MiB", "actionbus", last)
    results.add(5, "long.rss_growth", f"{label}: RSS growth 100k->end", "%", "actionbus",
                (last - first) / first * 100)
    results.add(5, "long.xlen_max", f"{label}: longest stream seen", "entries", "actionbus",
                longest)
    results.add(5, "long.xlen_final", f"{label}: stream length after trim", "entries",
                "actionbus", final)
    results.add(5, "long.over_retention", f"{label}: entries above retention", "entries",
                "actionbus", max(0, final - RETENTION))
    results.note("long", {"retention": RETENTION, "maintenance_interval_s": MAINTENANCE_S,
                          "rss_mib": rss, "stream_length": lengths})
