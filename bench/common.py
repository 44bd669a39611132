"""Shared pieces of the benchmark: payloads, settings, statistics, uvloop, polling helpers."""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import uvloop

from actionbus import CommonAppSettings

if TYPE_CHECKING:
    from faststream.redis import RedisBroker

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
CHILD_SCRIPT = BENCH_DIR / "children.py"

SIDES = ("raw", "actionbus", "faststream")
ORIGIN = "bench-sender"
DATA: dict[str, Any] = {"sku": "SKU-000123", "qty": 3, "warehouse": "eu-west-1"}
"""``data`` of every benchmark message; the whole action JSON is about 230 bytes."""

T = TypeVar("T")


def quiet_logging() -> None:
    """Library and broker logging at WARNING, in every process."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("actionbus", "faststream", "redis"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on uvloop (every benchmark process uses it)."""
    return uvloop.run(coro)


def app_settings(url: str, service: str, **overrides: Any) -> CommonAppSettings:
    """actionbus settings for ``service`` on the benchmark's own Redis, logging at WARNING."""
    return CommonAppSettings(
        service_name=service, redis_url=url, log_level="WARNING", **overrides
    )


def faststream_broker(url: str, **options: Any) -> RedisBroker:
    """A FastStream Redis broker with its logging off (``logger=None``)."""
    from faststream.redis import RedisBroker  # only the FastStream side pays its import

    return RedisBroker(url, logger=None, **options)  # type: ignore[arg-type]  # None = off


def raw_message(target: str, **extra: Any) -> dict[str, Any]:
    """The dict a hand-written service would send: same fields and size as a DomainAction."""
    return {
        "action_id": str(uuid.uuid4()),
        "action_type": f"{target}.item.process",
        "timestamp": datetime.now(UTC).isoformat(),
        "origin_service": ORIGIN,
        "data": DATA,
        "metadata": {},
        **extra,
    }


def raw_json(target: str, **extra: Any) -> str:
    """``raw_message`` as JSON."""
    return json.dumps(raw_message(target, **extra), separators=(",", ":"))


def field(info: dict[Any, Any], name: str) -> Any:
    """A field of a redis-py info dict whether its keys are ``str`` or ``bytes``."""
    if name in info:
        return info[name]
    return info.get(name.encode())


def to_int(value: Any) -> int:
    """``int`` of a Redis reply value (``None`` counts as 0)."""
    if value is None:
        return 0
    return int(value.decode() if isinstance(value, bytes) else value)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank; ``nan`` for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Summary:
    """Median and range of one figure's repetitions."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """Summarise the repetitions ``values`` (at least one)."""
        return cls(statistics.median(values), min(values), max(values), tuple(values))


def alternate(plan: Sequence[T], rep: int) -> list[T]:
    """``plan`` in order on even repetitions and reversed on odd ones (no side always first)."""
    return list(plan) if rep % 2 == 0 else list(reversed(plan))


async def wait_until(
    check: Callable[[], Awaitable[bool]], *, timeout: float, interval: float, what: str
) -> float:
    """Poll ``check`` until true; return the elapsed seconds; ``TimeoutError`` naming ``what``."""
    start = time.perf_counter()
    deadline = start + timeout
    while not await check():
        if time.perf_counter() >= deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(interval)
    return time.perf_counter() - start


@dataclass(frozen=True)
class Config:
    """How big and how often: the default run, ``--quick`` or ``--long``."""

    url: str
    reps: int
    quick: bool
    send_n: int
    drain_n: int
    drain_n_faststream: int
    rpc_seq_calls: int
    rpc_seq_calls_faststream: int
    rpc_callers: int
    rpc_calls_per_caller: int
    rpc_calls_per_caller_faststream: int
    burst_calls: int
    long_total: int

    @classmethod
    def make(cls, url: str, *, quick: bool, reps: int | None) -> Config:
        """Sizes for a full run, or small ones (and one repetition) for ``--quick``."""
        if quick:
            return cls(url, reps or 1, True, 2_000, 2_000, 1_000, 300, 200, 50, 10, 5, 1_000,
                       200_000)
        return cls(url, reps or 3, False, 20_000, 100_000, 5_000, 2_000, 1_000, 50, 100, 40,
                   1_000, 1_000_000)
