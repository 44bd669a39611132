"""Scenario 2: drain a pre-loaded stream through a consumer group with a no-op handler.

Each measurement: create the group at id 0, start the consumer process(es) (they connect
and wait for a go token), pre-load N entries, release the consumers, and time until the
group has read everything and has nothing pending (XINFO GROUPS: lag 0, pending 0).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import breakdown
from common import (
    DATA,
    ORIGIN,
    RESULTS_DIR,
    Config,
    alternate,
    faststream_broker,
    field,
    raw_message,
    to_int,
    wait_until,
)
from procs import Children
from redis.asyncio import Redis
from report import Results

from actionbus import DomainAction, QueueManager

if TYPE_CHECKING:
    from faststream.redis import RedisBroker

TARGET = "benchdrain"
PRELOAD_BATCH = 1_000
POLL_S = 0.005
AB_STREAM = QueueManager().get_service_action_stream(TARGET)
RAW_STREAM = "bench:drain:raw"
FS_STREAM = "bench:drain:faststream"
GROUP = TARGET
BREAKDOWN = RESULTS_DIR / "drain-breakdown.txt"
"""Where scenario 2 writes its per-component breakdown (also in the JSON's notes)."""

Preload = Callable[[Redis, str, int], Awaitable[None]]


def action_payloads(n: int) -> list[str]:
    """``n`` distinct actions as actionbus sends them (also what the raw loop reads)."""
    return [
        DomainAction(
            action_type=f"{TARGET}.item.process", origin_service=ORIGIN, data=DATA
        ).model_dump_json(exclude_none=True)
        for _ in range(n)
    ]


def json_preloader(payloads: Sequence[str]) -> Preload:
    """XADD the pre-built ``payloads`` (field ``data``) in pipelines."""

    async def preload(redis: Redis, stream: str, n: int) -> None:
        for start in range(0, n, PRELOAD_BATCH):
            pipe = redis.pipeline(transaction=False)
            for payload in payloads[start:start + PRELOAD_BATCH]:
                pipe.xadd(stream, {"data": payload})
            await pipe.execute()

    return preload


def faststream_preloader(broker: RedisBroker) -> Preload:
    """Publish through FastStream (its own envelope), pipelined."""

    async def preload(redis: Redis, stream: str, n: int) -> None:
        for start in range(0, n, PRELOAD_BATCH):
            pipe = redis.pipeline(transaction=False)
            for _ in range(min(PRELOAD_BATCH, n - start)):
                await broker.publish(raw_message(TARGET), stream=stream, pipeline=pipe)
            await pipe.execute()

    return preload


async def drained(redis: Redis, stream: str, n: int) -> bool:
    """True once ``GROUP`` has read all ``n`` entries of ``stream`` and acknowledged them."""
    for info in await redis.xinfo_groups(stream):
        name = field(info, "name")
        if name in (GROUP, GROUP.encode()):
            read = to_int(field(info, "entries-read"))
            return read >= n and to_int(field(info, "pending")) == 0
    return False


async def drain_once(
    cfg: Config, admin: Redis, role: str, processes: int, stream: str, preload: Preload,
    n: int,
) -> tuple[float, float]:
    """One timed drain of ``n`` entries by ``processes`` children: entries/s and the
    children's CPU µs per entry (user + system, from the go signal to the end)."""
    await admin.delete(stream)
    await admin.xgroup_create(stream, GROUP, id="0", mkstream=True)
    lanes = role == "ab-worker+lanes"  # the same worker reading its priority lanes
    role = "ab-worker" if lanes else role
    options = (
        ("--service", TARGET, *(("--lanes",) if lanes else ())) if role == "ab-worker"
        else ("--stream", stream, "--group", GROUP)
    )
    with Children(role, cfg.url, processes, *options, gated=True) as children:
        await preload(admin, stream, n)  # meanwhile the children import and connect
        if (length := await admin.xlen(stream)) != n:
            raise RuntimeError(f"pre-loaded {length} entries into {stream}, expected {n}")
        children.wait_ready()
        cpu = children.cpu_seconds()
        start = time.perf_counter()
        await children.go(admin)
        await wait_until(
            lambda: drained(admin, stream, n), timeout=max(60.0, n / 200), interval=POLL_S,
            what=f"draining {n} entries with {processes} {role}",
        )
        elapsed = time.perf_counter() - start
        cpu = children.cpu_seconds() - cpu
    await admin.delete(stream)
    return n / elapsed, cpu / n * 1e6


async def add_breakdown(cfg: Config, results: Results) -> None:
    """Where the 1-process drain's CPU per action goes, per component (``breakdown.py``),
    scaled to this run's measured totals; printed, noted and written to ``BREAKDOWN``."""
    cpu = results.figures.get("drain.1.cpu")
    ab = cpu.summary("actionbus") if cpu else None
    raw = cpu.summary("raw") if cpu else None
    if ab is None or raw is None:
        return
    payloads = action_payloads(breakdown.BATCH)
    rounds = 20 if cfg.quick else 100
    parts = await breakdown.measure(TARGET, payloads, rounds)
    rows = breakdown.breakdown(parts, breakdown.measure_raw(payloads, rounds), ab.median,
                               raw.median)
    results.note("drain_breakdown_us", rows)
    text = breakdown.render(rows)
    BREAKDOWN.parent.mkdir(parents=True, exist_ok=True)
    BREAKDOWN.write_text(text + "\n")
    print(text, flush=True)


async def run_drain(cfg: Config, results: Results) -> None:
    """Raw loop, actionbus worker (1 and 2 processes) and FastStream, interleaved."""
    admin = Redis.from_url(cfg.url)
    broker = faststream_broker(cfg.url)
    await broker.connect()
    jsons = json_preloader(action_payloads(cfg.drain_n))
    fs = faststream_preloader(broker)
    one, two = "drain, 1 process (no-op)", "drain, 2 processes (no-op)"
    plan: list[tuple[str, str, str, str, int, str, Preload, int]] = [
        ("drain.1", one, "raw", "raw-drain", 1, RAW_STREAM, jsons, cfg.drain_n),
        ("drain.1", one, "actionbus", "ab-worker", 1, AB_STREAM, jsons, cfg.drain_n),
        ("drain.1.lanes", "drain, 1 process, ab reading lanes", "actionbus", "ab-worker+lanes",
         1, AB_STREAM, jsons, cfg.drain_n),
        ("drain.1", one, "faststream", "fs-drain", 1, FS_STREAM, fs, cfg.drain_n_faststream),
        ("drain.2", two, "raw", "raw-drain", 2, RAW_STREAM, jsons, cfg.drain_n),
        ("drain.2", two, "actionbus", "ab-worker", 2, AB_STREAM, jsons, cfg.drain_n),
    ]
    try:
        for rep in range(cfg.reps):
            for key, label, side, role, processes, stream, preload, n in alternate(plan, rep):
                rate, cpu_us = await drain_once(cfg, admin, role, processes, stream, preload, n)
                results.add(2, key, label, "msg/s", side, rate)
                results.add(2, f"{key}.cpu", f"{label.split(' (')[0]}: CPU per action", "µs",
                            side, cpu_us)
        await add_breakdown(cfg, results)
        dead = await admin.xlen(QueueManager().get_dead_letter_stream(TARGET))
        results.note("drain_n", {"raw_actionbus": cfg.drain_n,
                                 "faststream": cfg.drain_n_faststream})
        results.note("drain_dead_letters_actionbus", dead)
    finally:
        await broker.stop()
        await admin.aclose()
