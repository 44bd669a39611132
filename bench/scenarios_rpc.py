"""Scenarios 3 and 4: request/reply against a responder in another process.

3: sequential calls (p50, p99) and 50 concurrent callers (throughput, p50, p99) for raw
   redis-py (XADD + BRPOP on a unique list), actionbus (``send_action_pseudo_sync``) and
   FastStream (``broker.request``).
4: 1,000 concurrent actionbus calls from one client whose pool has 20 connections.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from common import (
    DATA,
    Config,
    alternate,
    app_settings,
    faststream_broker,
    percentile,
    raw_json,
    raw_message,
)
from procs import started
from redis.asyncio import Redis
from report import Results

from actionbus import BaseRedisClient, DomainAction, RedisManager

TARGET = "benchrpc"
BURST_TARGET = "benchburst"
CALLER = "benchcaller"
RAW_STREAM = "bench:rpc:raw"
FS_STREAM = "bench:rpc:faststream"
GROUP = "responders"
TIMEOUT_S = 10.0
BURST_TIMEOUT_S = 30.0
WARMUP = 100

Call = Callable[[], Awaitable[bool]]
"""One request/reply; ``True`` if answered, ``False`` on timeout; raises on errors."""


@dataclass
class Tally:
    """Latencies (seconds) and failures of a batch of calls."""

    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    async def timed(self, call: Call) -> None:
        """Run one call and record how it went."""
        start = time.perf_counter()
        try:
            answered = await call()
        except Exception as exc:
            name = type(exc).__name__
            self.errors[name] = self.errors.get(name, 0) + 1
            return
        if answered:
            self.latencies.append(time.perf_counter() - start)
        else:
            self.timeouts += 1

    @property
    def error_count(self) -> int:
        """All failed calls that were not timeouts."""
        return sum(self.errors.values())


@asynccontextmanager
async def raw_caller(url: str) -> AsyncIterator[Call]:
    """XADD the request naming a fresh reply list, then BRPOP that list."""
    async with Redis.from_url(url) as redis:

        async def call() -> bool:
            reply_to = f"bench:reply:{uuid.uuid4().hex}"
            await redis.xadd(RAW_STREAM, {"data": raw_json(TARGET, reply_to=reply_to)})
            popped = await redis.brpop([reply_to], timeout=TIMEOUT_S)
            if popped is None:
                return False
            json.loads(popped[1])
            return True

        yield call


@asynccontextmanager
async def ab_caller(
    url: str, target: str, timeout: float = TIMEOUT_S, **overrides: int
) -> AsyncIterator[Call]:
    """``send_action_pseudo_sync`` from one ``BaseRedisClient``."""
    async with RedisManager(app_settings(url, CALLER, **overrides)) as manager:
        client = BaseRedisClient(CALLER, manager.get_client(), manager.settings)
        action_type = f"{target}.item.process"

        async def call() -> bool:
            action = DomainAction(action_type=action_type, data=DATA)
            response = await client.send_action_pseudo_sync(action, timeout=timeout)
            if response is None:
                return False
            if not response.success:
                raise RuntimeError(f"error reply: {response.error}")
            return True

        try:
            yield call
        finally:
            await client.close()


@asynccontextmanager
async def fs_caller(url: str) -> AsyncIterator[Call]:
    """``broker.request`` (256 pooled connections: each request holds two)."""
    broker = faststream_broker(url, max_connections=256)
    await broker.connect()

    async def call() -> bool:
        try:
            message = await broker.request(raw_message(TARGET), stream=FS_STREAM,
                                           timeout=TIMEOUT_S)
        except TimeoutError:
            return False
        await message.decode()
        return True

    try:
        yield call
    finally:
        await broker.stop()


async def sequential(call: Call, n: int) -> tuple[Tally, float]:
    """``n`` calls one after another; the tally and the elapsed seconds."""
    tally = Tally()
    start = time.perf_counter()
    for _ in range(n):
        await tally.timed(call)
    return tally, time.perf_counter() - start


async def concurrent(call: Call, callers: int, each: int) -> tuple[Tally, float]:
    """``callers`` tasks making ``each`` calls in a row; the tally and the elapsed seconds."""
    tally = Tally()

    async def caller() -> None:
        for _ in range(each):
            await tally.timed(call)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return tally, time.perf_counter() - start


def record(results: Results, prefix: str, label: str, side: str, tally: Tally,
           elapsed: float) -> None:
    """Add the rate, p50 and p99 of one measurement."""
    answered = len(tally.latencies)
    results.add(3, f"{prefix}.rate", f"{label}: calls/s", "req/s", side, answered / elapsed)
    results.add(3, f"{prefix}.p50", f"{label}: p50", "ms", side,
                percentile(tally.latencies, 50) * 1000)
    results.add(3, f"{prefix}.p99", f"{label}: p99", "ms", side,
                percentile(tally.latencies, 99) * 1000)
    results.add(3, f"{prefix}.failed", f"{label}: timeouts+errors", "calls", side,
                tally.timeouts + tally.error_count)


async def run_rpc(cfg: Config, results: Results) -> None:
    """Scenario 3: all three responders run at once; sides interleave in every repetition."""
    url = cfg.url
    seq_label = "pseudo-sync sequential"
    conc_label = f"pseudo-sync {cfg.rpc_callers} callers"
    with (
        started("ab-worker", url, "--service", TARGET),
        started("raw-responder", url, "--stream", RAW_STREAM, "--group", GROUP),
        started("fs-responder", url, "--stream", FS_STREAM, "--group", GROUP),
    ):
        async with AsyncExitStack() as stack:
            calls: dict[str, Call] = {
                "raw": await stack.enter_async_context(raw_caller(url)),
                "actionbus": await stack.enter_async_context(ab_caller(url, TARGET)),
                "faststream": await stack.enter_async_context(fs_caller(url)),
            }
            for side, call in calls.items():  # also waits until each responder reads
                tally, _ = await sequential(call, WARMUP)
                if len(tally.latencies) != WARMUP:
                    raise RuntimeError(f"{side} warm-up failed: {tally}")
            for rep in range(cfg.reps):
                order = alternate(list(calls.items()), rep)
                for side, call in order:
                    fs = side == "faststream"
                    n = cfg.rpc_seq_calls_faststream if fs else cfg.rpc_seq_calls
                    tally, elapsed = await sequential(call, n)
                    record(results, "rpc.seq", seq_label, side, tally, elapsed)
                for side, call in order:
                    fs = side == "faststream"
                    each = cfg.rpc_calls_per_caller_faststream if fs else cfg.rpc_calls_per_caller
                    tally, elapsed = await concurrent(call, cfg.rpc_callers, each)
                    record(results, "rpc.conc", conc_label, side, tally, elapsed)
    results.note("rpc_calls", {
        "sequential": cfg.rpc_seq_calls, "sequential_faststream": cfg.rpc_seq_calls_faststream,
        "callers": cfg.rpc_callers, "per_caller": cfg.rpc_calls_per_caller,
        "per_caller_faststream": cfg.rpc_calls_per_caller_faststream,
    })


async def run_burst(cfg: Config, results: Results) -> None:
    """Scenario 4: ``cfg.burst_calls`` calls at once with ``redis_max_connections=20``."""
    label = f"{cfg.burst_calls} concurrent pseudo-sync, 20 conns"
    with started("ab-worker", cfg.url, "--service", BURST_TARGET):
        async with ab_caller(cfg.url, BURST_TARGET, BURST_TIMEOUT_S,
                             redis_max_connections=20) as call:
            await sequential(call, 10)
            for _rep in range(cfg.reps):
                tally, elapsed = await concurrent(call, cfg.burst_calls, 1)
                results.add(4, "burst.time", f"{label}: total time", "s", "actionbus", elapsed)
                results.add(4, "burst.p99", f"{label}: p99", "ms", "actionbus",
                            percentile(tally.latencies, 99) * 1000)
                results.add(4, "burst.timeouts", f"{label}: timeouts", "calls", "actionbus",
                            tally.timeouts)
                results.add(4, "burst.errors", f"{label}: errors", "calls", "actionbus",
                            tally.error_count)
                if tally.errors:
                    results.note("burst_error_types", tally.errors)
