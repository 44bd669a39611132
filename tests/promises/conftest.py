"""Helpers of the promise tests: key names from QueueManager, workers that are always stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from actionbus import BaseWorker, CommonAppSettings, QueueManager, WorkerSettings


@pytest.fixture
def qm(make_settings: Callable[..., CommonAppSettings]) -> QueueManager:
    """The QueueManager of the test settings: every key name in these tests comes from it."""
    settings = make_settings()
    return QueueManager(settings.environment, settings.key_prefix)


@pytest_asyncio.fixture
async def make_worker(
    conn: Any, make_settings: Callable[..., CommonAppSettings]
) -> AsyncIterator[Callable[..., BaseWorker]]:
    """Build fast workers (app settings in ``app``, worker settings as keywords); all stopped."""
    workers: list[BaseWorker] = []

    def make(
        service: str, *, app: dict[str, Any] | None = None, redis: Any = "conn", **worker: Any
    ) -> BaseWorker:
        values: dict[str, Any] = {
            "block_ms": 100,
            "retry_backoff_base_s": 0.01,
            "retry_backoff_max_s": 0.05,
            "shutdown_grace_s": 1.0,
        }
        values.update(worker)
        built = BaseWorker(
            make_settings(service_name=service, **(app or {})),
            conn if redis == "conn" else redis,
            worker_settings=WorkerSettings(**values),
        )
        workers.append(built)
        return built

    yield make
    for built in workers:
        await built.stop(grace=0.5)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll a sync or async predicate until truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


async def pending_count(redis: Any, stream: str, group: str) -> int:
    """Entries delivered to ``group`` and not yet acknowledged."""
    summary: Any = await redis.xpending(stream, group)
    return int(summary["pending"])
