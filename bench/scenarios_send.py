"""Scenario 1: sending, one by one and in pipelined batches of 100."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from common import (
    DATA,
    ORIGIN,
    Config,
    alternate,
    app_settings,
    faststream_broker,
    raw_json,
    raw_message,
)
from redis.asyncio import Redis
from report import Results

from actionbus import BaseRedisClient, DomainAction, QueueManager, RedisManager

TARGET = "benchsend"
ACTION_TYPE = f"{TARGET}.item.process"
BATCH = 100
WARMUP = 200
RAW_STREAM = "bench:send:raw"
FS_STREAM = "bench:send:faststream"

Sender = Callable[[int], Awaitable[None]]


def action() -> DomainAction:
    """A fresh action, as a service builds one before sending it."""
    return DomainAction(action_type=ACTION_TYPE, data=DATA)


async def run_send(cfg: Config, results: Results) -> None:
    """Time each sender over ``cfg.send_n`` messages, ``cfg.reps`` times, interleaved."""
    admin = Redis.from_url(cfg.url)
    raw = Redis.from_url(cfg.url)
    manager = RedisManager(app_settings(cfg.url, ORIGIN))
    client = BaseRedisClient(ORIGIN, await manager.initialize(), manager.settings)
    ab_stream = QueueManager().get_service_action_stream(TARGET)
    broker = faststream_broker(cfg.url)
    await broker.connect()

    async def raw_seq(n: int) -> None:
        for _ in range(n):
            await raw.xadd(RAW_STREAM, {"data": raw_json(TARGET)})

    async def raw_batch(n: int) -> None:
        for _ in range(0, n, BATCH):
            pipe = raw.pipeline(transaction=False)
            for _ in range(BATCH):
                pipe.xadd(RAW_STREAM, {"data": raw_json(TARGET)})
            await pipe.execute()

    async def ab_seq(n: int) -> None:
        for _ in range(n):
            await client.send_action_async(action())

    async def ab_batch(n: int) -> None:
        for _ in range(0, n, BATCH):
            await client.send_actions_async([action() for _ in range(BATCH)])

    async def fs_seq(n: int) -> None:
        for _ in range(n):
            await broker.publish(raw_message(TARGET), stream=FS_STREAM)

    plan: list[tuple[str, str, str, Sender, str]] = [
        ("send.seq", "send one by one", "raw", raw_seq, RAW_STREAM),
        ("send.seq", "send one by one", "actionbus", ab_seq, ab_stream),
        ("send.seq", "send one by one", "faststream", fs_seq, FS_STREAM),
        ("send.batch", "send in pipelines of 100", "raw", raw_batch, RAW_STREAM),
        ("send.batch", "send in pipelines of 100", "actionbus", ab_batch, ab_stream),
    ]
    try:
        for _key, _label, _side, sender, stream in plan:
            await sender(WARMUP)
            await admin.delete(stream)
        for rep in range(cfg.reps):
            for key, label, side, sender, stream in alternate(plan, rep):
                start = time.perf_counter()
                await sender(cfg.send_n)
                elapsed = time.perf_counter() - start
                sent = await admin.xlen(stream)
                if sent != cfg.send_n:
                    raise RuntimeError(f"{side} {key}: {sent} entries, expected {cfg.send_n}")
                await admin.delete(stream)
                results.add(1, key, label, "msg/s", side, cfg.send_n / elapsed)
        payload = action().model_copy(update={"origin_service": ORIGIN})
        results.note("payload_bytes", len(payload.model_dump_json(exclude_none=True)))
        results.note("send_n", cfg.send_n)
    finally:
        await broker.stop()
        await client.close()
        await manager.close()
        await raw.aclose()
        await admin.aclose()
