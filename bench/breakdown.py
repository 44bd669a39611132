"""Where each microsecond of a drained action goes: scenario 2's per-component breakdown.

Each part of the worker's consume path is timed on its own, in this process, on the same
payloads the drain reads, with ``time.process_time()`` (CPU only, so a busy machine
inflates it far less than wall time, and no profiler overhead distorts it):

- decode/validate: ``ActionProcessor._admit`` (size check, ``model_validate_json`` with
  every constraint, reply-target and callback checks);
- handler and pipeline: ``Pipeline.run`` of a decoded action through the built-in layers
  to the no-op handler (metrics, expiry, reply, tracing, timeout registry);
- ack: queueing each entry's ack (``OutputBatcher.ack``) and building the XACK round from
  100 of them (the command itself is written by redis-py: Redis I/O);
- scheduling and bookkeeping: the whole path from ``_spawn_read`` through the eager runner and
  ``process()`` to the queued ack, minus the three parts above;
- Redis I/O and the event loop: what the worker process used per action in the measured
  drain (``/proc``), minus all of the above: XREADGROUP, its reply parsed by redis-py into
  entries, XACK written, the loop's polling.

The raw consumer's share is split the same way: ``json.loads`` (decode) and the rest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from actionbus import BaseWorker, CommonAppSettings, DomainAction
from actionbus.backoff import OutageLog
from actionbus.workers.output import OutputBatcher
from actionbus.workers.pipeline import Pipeline
from actionbus.workers.processing import ActionProcessor

BATCH = 100


class _AckSink:
    """Stands in for Redis where only our side of building the XACK round is timed."""

    async def xack(self, *args: Any) -> int:
        return len(args) - 2


def _per_item(fn: Callable[[], None], items: int, repeat: int) -> float:
    """CPU µs per item of ``fn()`` (which handles ``items`` items), best of ``repeat``."""
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best / items * 1e6


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends to its end, without an event loop turn."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the no-op pipeline suspended")


async def measure(service: str, payloads: list[str], rounds: int) -> dict[str, float]:
    """CPU µs per action of each in-process part of the consume path (see the module)."""

    async def noop(action: DomainAction, data: Any) -> None:
        return None

    worker = BaseWorker(CommonAppSettings(service_name=service, log_level="WARNING"))
    worker.register(f"{service}.item.process", noop)
    ctx = worker.context
    output = OutputBatcher(_AckSink(), worker.stream, worker.group,  # type: ignore[arg-type]
                           OutageLog(logging.getLogger("bench"), "bench", 60.0))
    pipeline = Pipeline(ctx, None, worker.stats, ())  # type: ignore[arg-type]
    processor = ActionProcessor(ctx, None, output, worker._dispatch,  # type: ignore[arg-type]
                                pipeline, worker.stats, worker.policy)
    fields = [{b"data": p.encode()} for p in payloads[:BATCH]]
    keys = [f"1-{i}" for i in range(len(fields))]
    n = len(fields)
    actions = [processor._admit(k, f, f[b"data"], 1) for k, f in zip(keys, fields, strict=True)]
    route = worker._dispatch(f"{service}.item.process")

    def decode() -> None:
        for _ in range(rounds):
            for key, entry in zip(keys, fields, strict=True):
                processor._admit(key, entry, entry[b"data"], 1)

    def handle() -> None:
        for _ in range(rounds):
            for action in actions:
                assert action is not None
                _drive(pipeline.run(route, action))

    def ack() -> None:
        for _ in range(rounds):
            for key in keys:
                output.ack(key)
            _drive(output._flush_once())

    async def whole(batches: int) -> None:
        worker._output, worker._processor = output, processor
        worker._runner.after = None  # the ack round is timed by ack()
        for b in range(batches):
            worker._spawn_read(worker.stream, [(f"{b}{key}", entry)
                                               for key, entry in zip(keys, fields, strict=True)])
            await asyncio.sleep(0)  # the runner task takes the batch
            output._units.clear()
            output._acks.clear()

    parts = {
        "decode/validate": _per_item(decode, rounds * n, 3),
        "handler and pipeline layers": _per_item(handle, rounds * n, 3),
        "ack (queue, build the XACK round)": _per_item(ack, rounds * n, 3),
    }
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        await whole(rounds)
        best = min(best, time.process_time() - started)
    path = best / (rounds * n) * 1e6 + parts["ack (queue, build the XACK round)"]
    parts["scheduling and bookkeeping (read loop, runner, process)"] = max(
        0.0, path - sum(parts.values()))
    parts["in-process path"] = path
    return parts


def measure_raw(payloads: list[str], rounds: int) -> float:
    """CPU µs per action of the raw consumer's ``json.loads``."""
    import json

    raws = [p.encode() for p in payloads[:BATCH]]

    def decode() -> None:
        for _ in range(rounds):
            for raw in raws:
                json.loads(raw)

    return _per_item(decode, rounds * len(raws), 3)


def breakdown(parts: dict[str, float], raw_decode: float, ab_total: float,
              raw_total: float) -> dict[str, dict[str, float]]:
    """Per component, µs per action for actionbus and raw (the rest of each measured
    total is Redis I/O and the event loop)."""
    path = parts["in-process path"]
    rows: dict[str, dict[str, float]] = {}
    for name, value in parts.items():
        if name != "in-process path":
            rows[name] = {"actionbus": value, "raw": raw_decode if name.startswith("decode")
                          else 0.0}
    rows["Redis I/O and event loop (the rest)"] = {
        "actionbus": max(0.0, ab_total - path), "raw": max(0.0, raw_total - raw_decode)}
    rows["total (measured drain, /proc)"] = {"actionbus": ab_total, "raw": raw_total}
    return rows


def render(rows: dict[str, dict[str, float]]) -> str:
    """The breakdown as a small table."""
    width = max(len(name) for name in rows)
    lines = [f"{'component (CPU µs per action)':<{width}}  actionbus     raw",
             f"{'-' * width}  ---------  ------"]
    for name, value in rows.items():
        lines.append(f"{name:<{width}}  {value['actionbus']:9.2f}  {value['raw']:6.2f}")
    return "\n".join(lines)
