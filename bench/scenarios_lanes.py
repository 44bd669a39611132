"""Scenarios 7 and 8: a waiting caller behind bulk work, with and without priority lanes.

7. Head-of-line: N fire-and-forget actions (50,000; 10,000 with ``--quick``) wait in the
   service's stream; its consumer process starts, and 0.1 s later a caller makes one
   pseudo-sync call (first-call latency), then 20 more in a row (p50, p99, max). Sides: raw
   (a raw responder, FIFO on one stream), actionbus without lanes (the backlog and the calls
   share ``streams:main``) and actionbus with lanes (``WorkerSettings(lanes=True)``: calls
   go to ``streams:high``; the caller waits for the lanes descriptor first).
8. Under load: sequential pseudo-sync calls (200; 50 with ``--quick``) while a producer
   process adds 10,000 or 25,000 fire-and-forget entries/s to the same service, against no
   load; p50 and p99 for raw, actionbus without lanes and actionbus with lanes. Also the
   *floor*: raw calls on a stream of their own, answered by a raw responder process of its
   own, while the same producer loads another stream drained by a raw consumer (nothing
   queues behind bulk work; what is left is the machine: the cores Redis, producer,
   consumers and caller share). No library can do better than the floor in this run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common import Config, percentile, raw_json, wait_until
from procs import Child, Children
from redis.asyncio import Redis
from report import Results
from scenarios_drain import PRELOAD_BATCH
from scenarios_rpc import GROUP as RAW_GROUP
from scenarios_rpc import RAW_STREAM, Call, Tally, ab_caller, raw_caller
from scenarios_rpc import TARGET as RAW_TARGET

from actionbus import DomainAction, QueueManager

HOL = "benchhol"
LOAD = "benchload"
QM = QueueManager()
CALLS = 20
LOAD_CALL_TIMEOUT_S = 2.0
"""Scenario 8: a call unanswered this long counts as a timeout (and as 2,000 ms)."""
LOAD_MEASURE_S = 10.0
LANE_SIDES = (("raw", False), ("actionbus", False), ("actionbus", True))
FLOOR_BULK = "bench:load:floor-bulk"


async def preload(redis: Redis, stream: str, n: int, *, raw: bool, target: str) -> None:
    """``n`` entries: raw requests to a sink list (raw side) or fire-and-forget actions."""
    for start in range(0, n, PRELOAD_BATCH):
        pipe = redis.pipeline(transaction=False)
        for _ in range(min(PRELOAD_BATCH, n - start)):
            payload = raw_json(RAW_TARGET, reply_to="bench:hol:sink") if raw else DomainAction(
                action_type=f"{target}.item.process", origin_service="bench-bulk"
            ).model_dump_json()
            pipe.xadd(stream, {"data": payload})
        await pipe.execute()


async def reset(redis: Redis, target: str) -> None:
    """Remove every key of ``target`` and the raw side's stream and sink."""
    keys = [*QM.get_lane_streams(target), QM.get_lanes_key(target), RAW_STREAM,
            "bench:hol:sink", "bench:load:sink", QM.get_dead_letter_stream(target), FLOOR_BULK]
    await redis.delete(*keys)


@asynccontextmanager
async def responder(cfg: Config, redis: Redis, target: str, *, raw: bool, lanes: bool,
                    gated: bool) -> AsyncIterator[Children]:
    """The consumer process of one side (its groups made first)."""
    if raw:
        await redis.xgroup_create(RAW_STREAM, RAW_GROUP, id="0", mkstream=True)
        options: tuple[str, ...] = ("--stream", RAW_STREAM, "--group", RAW_GROUP)
        role = "raw-responder"
    else:
        for stream in QM.get_lane_streams(target) if lanes else [
                QM.get_service_action_stream(target)]:
            await redis.xgroup_create(stream, target, id="0", mkstream=True)
        options = ("--service", target, *(("--lanes",) if lanes else ()))
        role = "ab-worker"
    with Children(role, cfg.url, 1, *options, gated=gated) as children:
        yield children


@asynccontextmanager
async def caller(cfg: Config, target: str, *, raw: bool, timeout: float = 60.0
                 ) -> AsyncIterator[Call]:
    if raw:
        async with raw_caller(cfg.url) as call:
            yield call
    else:
        async with ab_caller(cfg.url, target, timeout=timeout) as call:
            yield call


async def hol_once(cfg: Config, redis: Redis, n: int, side: str, lanes: bool) -> Tally:
    """One head-of-line measurement: the first call's latency first in the tally."""
    raw = side == "raw"
    await reset(redis, HOL)
    async with responder(cfg, redis, HOL, raw=raw, lanes=lanes, gated=True) as children:
        await preload(redis, RAW_STREAM if raw else QM.get_service_action_stream(HOL), n,
                      raw=raw, target=HOL)
        children.wait_ready()
        async with caller(cfg, HOL, raw=raw) as call:
            await children.go(redis)
            started = time.perf_counter()
            if lanes:  # the caller learns the lanes once the worker announced them
                await wait_until(lambda: _exists(redis, QM.get_lanes_key(HOL)), timeout=30,
                                 interval=0.005, what="the lanes descriptor")
            await asyncio.sleep(max(0.0, 0.1 - (time.perf_counter() - started)))
            tally = Tally()
            for _ in range(1 + CALLS):
                await tally.timed(call)
    return tally


async def _exists(redis: Redis, key: str) -> bool:
    return bool(await redis.exists(key))


def add_hol(results: Results, tally: Tally, side: str, lanes: bool) -> None:
    """The first call and the p50/p99/max of the next 20; the raw side's figures are
    recorded beside both actionbus variants (so each gets its ratio to raw)."""
    keys = ("hol.plain", "hol.lanes") if side == "raw" else (
        ("hol.lanes",) if lanes else ("hol.plain",))
    first, rest = tally.latencies[:1], tally.latencies[1:]
    for key in keys:
        label = "behind a backlog, ab " + ("with lanes" if key == "hol.lanes" else "no lanes")
        results.add(7, f"{key}.first", f"{label}: first call", "ms", side,
                    first[0] * 1000 if first else float("nan"))
        for q in (50, 99, 100):
            name = "max" if q == 100 else f"p{q}"
            results.add(7, f"{key}.{name}", f"{label}: 20 calls {name}", "ms", side,
                        percentile(rest, q) * 1000 if rest else float("nan"))


async def run_hol(cfg: Config, results: Results) -> None:
    """Scenario 7: head-of-line blocking behind a fire-and-forget backlog."""
    n = 10_000 if cfg.quick else 50_000
    async with Redis.from_url(cfg.url) as redis:
        for rep in range(cfg.reps):
            plan = list(LANE_SIDES) if rep % 2 == 0 else list(reversed(LANE_SIDES))
            for side, lanes in plan:
                tally = await hol_once(cfg, redis, n, side, lanes)
                add_hol(results, tally, side, lanes)
        await reset(redis, HOL)
    results.note("hol_backlog", n)


async def load_once(cfg: Config, redis: Redis, rate: int, side: str, lanes: bool,
                    calls: int) -> Tally:
    """Sequential calls while a producer adds ``rate`` entries/s (0: idle)."""
    raw = side == "raw"
    await reset(redis, LOAD)
    async with responder(cfg, redis, LOAD, raw=raw, lanes=lanes, gated=False) as children:
        children.wait_ready()
        async with caller(cfg, LOAD, raw=raw, timeout=LOAD_CALL_TIMEOUT_S) as call:
            if lanes:
                await wait_until(lambda: _exists(redis, QM.get_lanes_key(LOAD)), timeout=30,
                                 interval=0.005, what="the lanes descriptor")
            stream = RAW_STREAM if raw else QM.get_service_action_stream(LOAD)
            return await _timed_under_load(cfg, call, calls, rate, stream, raw=raw)


async def _timed_under_load(cfg: Config, call: Call, calls: int, rate: int, stream: str, *,
                            raw: bool) -> Tally:
    """Warm up, then time up to ``calls`` sequential calls (at most ``LOAD_MEASURE_S``)
    while a producer adds ``rate`` entries/s to ``stream`` (0: no producer)."""
    for _ in range(20):  # warm up
        await call()
    options = ("--stream", stream, "--rate", str(rate), "--service", LOAD,
               *(("--raw",) if raw else ()))
    producer = Child("producer", cfg.url, *options) if rate else None
    try:
        if producer is not None:
            producer.wait_ready()
            await asyncio.sleep(0.5)
        tally = Tally()
        deadline = time.perf_counter() + LOAD_MEASURE_S
        for _ in range(calls):  # bounded: a call waits at most LOAD_CALL_TIMEOUT_S
            await tally.timed(call)
            if time.perf_counter() > deadline:
                break
    finally:
        if producer is not None:
            producer.stop()
    return tally


def _add_load(results: Results, key: str, label: str, side: str, tally: Tally) -> None:
    """p50 and p99 of one scenario-8 measurement (a timeout counts as its timeout)."""
    waits = tally.latencies + [LOAD_CALL_TIMEOUT_S] * tally.timeouts
    for q in (50, 99):
        results.add(8, f"{key}.p{q}", f"{label}: p{q}", "ms", side,
                    percentile(waits, q) * 1000 if waits else float("nan"))


async def floor_once(cfg: Config, redis: Redis, rate: int, calls: int) -> Tally:
    """The floor: raw calls to a responder of their own while the producer loads another
    stream, drained by a raw consumer (0: idle)."""
    await reset(redis, LOAD)
    for stream in (RAW_STREAM, FLOOR_BULK):
        await redis.xgroup_create(stream, RAW_GROUP, id="0", mkstream=True)
    with Children("raw-responder", cfg.url, 1, "--stream", RAW_STREAM, "--group", RAW_GROUP,
                  gated=False) as responder, \
            Children("raw-drain", cfg.url, 1, "--stream", FLOOR_BULK, "--group", RAW_GROUP,
                     gated=False) as drain:
        responder.wait_ready()
        drain.wait_ready()
        async with caller(cfg, LOAD, raw=True, timeout=LOAD_CALL_TIMEOUT_S) as call:
            return await _timed_under_load(cfg, call, calls, rate, FLOOR_BULK, raw=True)


async def run_load(cfg: Config, results: Results) -> None:
    """Scenario 8: pseudo-sync latency while a producer loads the same service."""
    calls = 50 if cfg.quick else 200
    async with Redis.from_url(cfg.url) as redis:
        for rep in range(cfg.reps):
            for rate in (0, 10_000, 25_000):
                plan = list(LANE_SIDES) if rep % 2 == 0 else list(reversed(LANE_SIDES))
                for side, lanes in plan:
                    tally = await load_once(cfg, redis, rate, side, lanes, calls)
                    load = f"{rate // 1000}k/s" if rate else "idle"
                    keys = [f"load.{load}.{'lanes' if lanes else 'plain'}"] if side != "raw" \
                        else [f"load.{load}.plain", f"load.{load}.lanes"]
                    for key in keys:
                        what = "with lanes" if key.endswith("lanes") else "no lanes"
                        _add_load(results, key, f"pseudo-sync, {load} bulk, ab {what}", side,
                                  tally)
                tally = await floor_once(cfg, redis, rate, calls)
                _add_load(results, f"load.{load}.floor",
                          f"pseudo-sync, {load} bulk, raw floor (own stream, own responder)",
                          "raw", tally)
        await reset(redis, LOAD)
    results.note("load_calls", calls)


__all__ = ["run_hol", "run_load"]
