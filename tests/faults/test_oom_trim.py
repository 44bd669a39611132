"""Redis at maxmemory (noeviction) with one stuck pending entry: trimming still frees memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from actionbus import BaseWorker, CommonAppSettings, DomainAction
from actionbus.embedded import RedisServer
from actionbus.workers import WorkerSettings
from actionbus.workers.failures import is_transient
from actionbus.workers.upkeep import maintain


async def test_one_stuck_entry_does_not_block_trimming_at_maxmemory(
    fresh_redis_server: RedisServer,
) -> None:
    """An entry pending since long before keeps its data, and the processed entries after
    it are deleted, so a server refusing writes with OOM accepts them again."""
    redis: Any = Redis.from_url(fresh_redis_server.url)
    worker = BaseWorker(
        CommonAppSettings(_env_file=None, service_name="oom", redis_url=fresh_redis_server.url),
        redis, worker_settings=WorkerSettings(stream_retention=100, trim_stuck_after_s=0),
    )
    ctx = worker.context
    try:
        await redis.xgroup_create(ctx.stream, ctx.group, id="0", mkstream=True)
        for _ in range(3):
            pipe = redis.pipeline(transaction=False)
            for i in range(1000):
                pipe.xadd(ctx.stream, {"data": f"{i}:" + "x" * 1000})
            await pipe.execute()
        read: Any = await redis.xreadgroup(ctx.group, "c1", {ctx.stream: ">"}, count=3000)
        ids = [entry_id for entry_id, _ in read[0][1]]
        stuck = ids[0]
        await redis.xack(ctx.stream, ctx.group, *ids[1:])  # all done but the first
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", used + 200_000)
        refused = None
        for i in range(2000):  # fill up to maxmemory
            try:
                await redis.set(f"filler:{i}", "y" * 10_000)
            except OutOfMemoryError as exc:
                refused = exc
                break
        assert refused is not None
        assert is_transient(refused)  # an outage for the worker's output: retried
        rounds = 0
        pushed = False
        while not pushed and rounds < 5:  # bounded: a few maintenance rounds
            rounds += 1
            await maintain(redis, ctx)
            try:
                await redis.lpush("actionbus:dev:{caller}:responses:x", "z" * 10_000)
                pushed = True
            except OutOfMemoryError:
                pass
        length = await redis.xlen(ctx.stream)
        print(f"writes accepted again after {rounds} maintenance round(s); stream "
              f"{len(ids)} -> {length} entries; stuck entry kept: "
              f"{bool(await redis.xrange(ctx.stream, stuck, stuck))}")
        assert pushed
        assert await redis.xrange(ctx.stream, stuck, stuck)  # the stuck entry, whole
        assert int((await redis.xpending(ctx.stream, ctx.group))["pending"]) == 1
    finally:
        await redis.aclose()


async def test_an_oom_refused_reply_never_lets_its_ack_through(
    fresh_redis_server: RedisServer,
) -> None:
    """While Redis refuses the reply with OOM the request stays pending (retried with
    backoff, the worker in outage); once memory frees, the reply lands, then the ack."""
    redis: Any = Redis.from_url(fresh_redis_server.url)
    settings = CommonAppSettings(_env_file=None, service_name="oomack",
                                 redis_url=fresh_redis_server.url)
    worker = BaseWorker(settings, redis, worker_settings=WorkerSettings(
        block_ms=100, check_permissions=False))

    async def answer(action: DomainAction, data: Any) -> dict[str, Any]:
        return {"ok": True}

    worker.register("oomack.item.get", answer)
    reply_to = worker.queue_manager.get_response_queue("caller", "r1")
    try:
        await redis.xgroup_create(worker.stream, worker.group, id="0", mkstream=True)
        action = DomainAction(action_type="oomack.item.get", data={},
                              callback_queue_name=reply_to)
        await redis.xadd(worker.stream, {"data": action.model_dump_json(exclude_none=True)})
        used = int((await redis.info("memory"))["used_memory"])
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", used + 200_000)
        with contextlib.suppress(OutOfMemoryError):
            for i in range(2000):
                await redis.set(f"filler:{i}", "y" * 10_000)
        await worker.start()
        deadline = time.monotonic() + 15
        while not worker.health.in_outage:  # barrier: the reply was refused at least once
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        pending_in_outage = int((await redis.xpending(worker.stream, worker.group))["pending"])
        await redis.config_set("maxmemory", 0)  # memory available again
        while int((await redis.xpending(worker.stream, worker.group))["pending"]):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        replies = await redis.lrange(reply_to, 0, -1)
        print(f"pending while OOM: {pending_in_outage}; replies after memory freed: "
              f"{len(replies)}")
        assert pending_in_outage == 1
        assert len(replies) == 1
    finally:
        await worker.stop(grace=0.5)
        await redis.aclose()


def _held_reply_worker(
    server: RedisServer, redis: Any, service: str
) -> tuple[BaseWorker, asyncio.Event, asyncio.Event, str]:
    """A worker of ``service`` (not started) whose ``<service>.item.get`` handler sets
    ``running``, then answers once ``finish`` is set; and the reply list it answers to."""
    settings = CommonAppSettings(_env_file=None, service_name=service, redis_url=server.url)
    worker = BaseWorker(settings, redis, worker_settings=WorkerSettings(
        block_ms=100, check_permissions=False))
    running, finish = asyncio.Event(), asyncio.Event()

    async def answer(action: DomainAction, data: Any) -> dict[str, Any]:
        running.set()
        await finish.wait()
        return {"ok": True}

    worker.register(f"{service}.item.get", answer)
    return worker, running, finish, worker.queue_manager.get_response_queue("caller", "r1")


async def _request(redis: Any, worker: BaseWorker, service: str, reply_to: str) -> None:
    """Append a ``<service>.item.get`` request answering to ``reply_to``."""
    action = DomainAction(action_type=f"{service}.item.get", data={}, callback_queue_name=reply_to)
    await redis.xadd(worker.stream, {"data": action.model_dump_json(exclude_none=True)})


async def _until_output_outage(worker: BaseWorker) -> None:
    """Wait (at most 15 s) until the worker's output is in outage."""
    deadline = time.monotonic() + 15
    while not worker._output_outage.in_outage:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_a_reply_refused_after_the_worker_idled_is_retried_without_more_traffic(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    """The output's background loop keeps running while nothing is queued: a reply refused
    with OOM after the worker sat idle past a sweep (1 s) is retried by it once memory
    frees, with no further action arriving to flush it, and the end of the output outage
    is logged."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    redis: Any = Redis.from_url(fresh_redis_server.url)
    worker, running, finish, reply_to = _held_reply_worker(fresh_redis_server, redis, "oomidle")
    try:
        await worker.start()
        await _request(redis, worker, "oomidle", reply_to)
        await asyncio.wait_for(running.wait(), 10)
        await asyncio.sleep(1.5)  # the output sits idle past its 1 s sweep
        await redis.config_set("maxmemory-policy", "noeviction")
        await redis.config_set("maxmemory", 1)  # every write that may grow memory: OOM
        finish.set()
        await _until_output_outage(worker)  # barrier: the reply was refused
        assert await redis.llen(reply_to) == 0
        await redis.config_set("maxmemory", 0)  # memory available again
        deadline = time.monotonic() + 15
        while int((await redis.xpending(worker.stream, worker.group))["pending"]):
            assert time.monotonic() < deadline, "the refused reply was never retried"
            await asyncio.sleep(0.02)
        assert len(await redis.lrange(reply_to, 0, -1)) == 1
        assert any("output: Redis available again" in r.getMessage() for r in caplog.records)
    finally:
        finish.set()
        await worker.stop(grace=0.5)
        await redis.aclose()


async def _refuse_the_held_reply(redis: Any, worker: BaseWorker, name: str, reply_to: str,
                                 running: asyncio.Event, finish: asyncio.Event) -> None:
    """Start ``worker``, let its held handler finish once Redis refuses writes (OOM), and
    return when the refused reply has started an output outage."""
    await worker.start()
    await _request(redis, worker, name, reply_to)
    await asyncio.wait_for(running.wait(), 10)
    await redis.config_set("maxmemory-policy", "noeviction")
    await redis.config_set("maxmemory", 1)  # the reply (LPUSH) is refused: OOM
    finish.set()
    await _until_output_outage(worker)  # barrier: the reply was refused


async def test_an_output_outage_is_logged_with_the_error_redis_gave(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply refused with OOM starts an output outage logged once, as a warning naming
    Redis's own error (OutOfMemoryError, not the batcher's internal wrapper), and nothing
    is logged as an error."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    redis: Any = Redis.from_url(fresh_redis_server.url)
    worker, running, finish, reply_to = _held_reply_worker(fresh_redis_server, redis, "oomlog")
    try:
        await _refuse_the_held_reply(redis, worker, "oomlog", reply_to, running, finish)
        lines = [r.getMessage() for r in caplog.records if "output: Redis unavailable" in
                 r.getMessage()]
        assert len(lines) == 1
        assert "(OutOfMemoryError: " in lines[0]
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        finish.set()
        await redis.config_set("maxmemory", 0)
        await worker.stop(grace=0.5)
        await redis.aclose()


async def test_stop_tries_output_redis_keeps_refusing_for_half_a_second(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """At stop, a reply Redis keeps refusing (OOM) is tried for half a second, then left
    unsent with a warning (its request stays pending for another worker): the whole stop
    takes well under a second."""
    caplog.set_level(logging.WARNING, "actionbus.worker")
    redis: Any = Redis.from_url(fresh_redis_server.url)
    worker, running, finish, reply_to = _held_reply_worker(fresh_redis_server, redis, "oomstop")
    try:
        await _refuse_the_held_reply(redis, worker, "oomstop", reply_to, running, finish)
        started = time.monotonic()
        await worker.stop(grace=0.5)
        elapsed = time.monotonic() - started
        await redis.config_set("maxmemory", 0)
        print(f"stop took {elapsed:.2f} s")
        assert elapsed < 1.0, f"stop took {elapsed:.2f} s"  # about 0.5 s (1.5 s given 1.5 s)
        assert any("writes/acks unsent" in r.getMessage() for r in caplog.records)
        assert int((await redis.xpending(worker.stream, worker.group))["pending"]) == 1
        assert await redis.llen(reply_to) == 0
    finally:
        finish.set()
        await redis.config_set("maxmemory", 0)
        await worker.stop(grace=0.5)
        await redis.aclose()
